"""Per-feature explanations: right where the truth is known, and consistent with the score."""

import numpy as np
import pandas as pd
import pytest

from vaeanom import VAEDetector
from vaeanom.plotting import save_explanation


@pytest.fixture(scope="module")
def planted():
    """A correlated 8-column table; 60 test rows each get one known column shifted by 5 sd."""
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(8, 8))
    columns = [f"c{i}" for i in range(8)]
    train = pd.DataFrame(rng.normal(size=(600, 8)) @ mixing, columns=columns)
    test = pd.DataFrame(rng.normal(size=(60, 8)) @ mixing, columns=columns,
                        index=[f"r{i}" for i in range(60)])
    planted_in = rng.integers(0, 8, size=60)
    spread = train.std().to_numpy()
    for row, column in enumerate(planted_in):
        test.iat[row, column] += rng.choice([-5.0, 5.0]) * spread[column]
    det = VAEDetector(random_state=0).fit(train)
    return det, train, test, planted_in


def test_the_planted_column_is_the_top_explained_feature(planted):
    det, _, test, planted_in = planted
    contributions = det.explain(test)
    assert list(contributions.columns) == list(test.columns)
    assert contributions.index.equals(test.index)
    hits = (contributions.to_numpy().argmax(axis=1) == planted_in).mean()
    assert hits >= 0.95, hits


def test_contributions_are_centred_on_the_training_rows(planted):
    det, train, _, _ = planted
    medians = det.explain(train).median()
    assert np.abs(medians).max() < 0.05


def test_score_frame_names_the_top_features(planted):
    det, _, test, planted_in = planted
    frame = det.score_frame(test, explain=2)
    assert list(frame.columns[-4:]) == ["feature_1", "contribution_1", "feature_2",
                                        "contribution_2"]
    assert (frame["contribution_1"] >= frame["contribution_2"]).all()
    assert (frame["feature_1"] == det.explain(test).idxmax(axis=1)).all()
    with pytest.raises(TypeError, match="explain"):
        det.score_frame(test, explain=1.5)


def test_explanations_survive_save_and_load(planted, tmp_path):
    det, _, test, _ = planted
    det.save(tmp_path / "m.safetensors")
    loaded = VAEDetector.load(tmp_path / "m.safetensors")
    pd.testing.assert_frame_equal(loaded.explain(test), det.explain(test))


def test_images_get_per_pixel_maps(digit_images):
    X, _ = digit_images
    det = VAEDetector(hidden_dims=(16,), latent_dim=2, epochs=3, random_state=0).fit(X[:200])
    maps = det.explain(X[:5])
    assert maps.shape == (5, 8, 8) and np.isfinite(maps).all()
    with pytest.raises(ValueError, match="for rows"):
        det.score_frame(X[:5], explain=1)


def test_one_rows_explanation_plots(planted, tmp_path):
    det, _, test, _ = planted
    save_explanation(det.explain(test).iloc[0], tmp_path / "row.png", top=5)
    assert (tmp_path / "row.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    save_explanation(det.explain(test.iloc[[3]]), tmp_path / "frame.png", top=5)  # a 1-row frame
    assert (tmp_path / "frame.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="draw one row, e.g. det.explain"):
        save_explanation(det.explain(test.iloc[:2]), tmp_path / "two.png")


@pytest.mark.parametrize("with_category", [True, False], ids=["table model", "numbers"])
def test_a_wild_entry_keeps_the_blame(with_category, tmp_path):
    """A sentinel thousands of standard deviations out (99999 for "unknown") is the top
    feature, and the other columns stay near their training medians: the encoder sees
    it capped, so it cannot throw the code, and the blame, onto them. It used to give
    the normal columns 300 times its own contribution. The ONNX explainer agrees."""
    from vaeanom import OnnxModel

    rng = np.random.default_rng(1)
    table = pd.DataFrame({"a": rng.normal(size=100), "b": rng.normal(size=100),
                          "d": rng.normal(size=100) * 10 + 50})
    if with_category:
        table["c"] = rng.choice(["x", "y"], 100)
    det = VAEDetector(hidden_dims=(32,), random_state=0).fit(table)
    rows = table.head(4).assign(d=[90.0, 999.0, 99999.0, 1e7])
    contributions = det.explain(rows)
    assert (contributions.idxmax(axis=1) == "d").all()
    others = contributions.drop(columns="d")
    assert (others.abs() < 5).all().all(), others
    runtime = OnnxModel(det.export_onnx(tmp_path / "m.onnx", explain=True))
    np.testing.assert_allclose(runtime.explain(rows), contributions, rtol=1e-4, atol=1e-3)


def test_a_model_saved_before_explanations_loads_and_says_to_refit(planted, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    det, _, test, _ = planted
    det.save(tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as handle:
        metadata = {**handle.metadata(), "format_version": "1"}
        tensors = {k: handle.get_tensor(k) for k in handle.keys()
                   if k != "array.explain_reference_"}
    del metadata["sha256"]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=metadata)
    old = VAEDetector.load(tmp_path / "old.safetensors")
    np.testing.assert_array_equal(old.score_samples(test), det.score_samples(test))
    with pytest.raises(ValueError, match="refit it to use explain"):
        old.explain(test)
    old.save(tmp_path / "again.safetensors")
    assert not hasattr(VAEDetector.load(tmp_path / "again.safetensors"), "explain_reference_")


def test_a_frame_with_integer_column_labels_gets_them_back(planted, tmp_path):
    """scikit-learn keeps feature_names_in_ for string names only; a frame labelled 0..7
    should still be explained by 0..7, not x0..x7, by the detector and the runtime alike."""
    from vaeanom import OnnxModel

    _, train, test, _ = planted
    numbered = VAEDetector(epochs=2, random_state=0).fit(train.set_axis(range(8), axis=1))
    rows = test.set_axis(range(8), axis=1)
    runtime = OnnxModel(numbered.export_onnx(tmp_path / "numbered.onnx", explain=True))
    for model in (numbered, runtime):
        assert list(model.explain(rows).columns) == list(range(8))
        assert set(model.score_frame(rows, explain=1)["feature_1"]) <= set(range(8))
        assert list(model.explain(rows.to_numpy()).columns) == [f"x{i}" for i in range(8)]


def test_a_table_with_integer_column_labels_reconstructs_with_them():
    rng = np.random.default_rng(0)
    table = pd.DataFrame({0: rng.normal(size=120), 1: rng.choice(["a", "b"], 120)},
                         index=[f"r{i}" for i in range(120)])
    det = VAEDetector(epochs=2, random_state=0).fit(table)
    rebuilt = det.reconstruct(table.iloc[:5])
    assert list(rebuilt.columns) == [0, 1] and rebuilt.index.equals(table.index[:5])
