"""The Markovian hierarchical VAE (``VAEDetector(latent_dim=(d_1, ..., d_T))``).

Its bounds are checked against what they must be (IWAE >= ELBO on average, the
KL summed over layers, llr = L^{>1} - L), its codes and samples have the
promised shapes, it saves, loads and exports like the one-layer model, and it
refuses what it cannot do yet with errors that say so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from vaeanom import OnnxModel, VAEDetector
from vaeanom.models.hierarchical import HierarchicalVAE


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return x[y != 0][:600], x[600:900], (y[600:900] == 0).astype(int)


@pytest.fixture(scope="module")
def hvae(digits):
    train, _, _ = digits
    return VAEDetector(latent_dim=(8, 4), epochs=40, n_score_samples=32,
                       random_state=0).fit(train)


def test_it_is_a_chain_with_one_kl_term_per_layer(hvae):
    assert isinstance(hvae.model_, HierarchicalVAE)
    assert hvae.model_.latent_dims == (8, 4)
    last = hvae.history_[-1]
    assert {"kl_1", "kl_2"} <= set(last)
    assert last["kl_1"] + last["kl_2"] == pytest.approx(last["kl"], rel=1e-4)
    assert last["kl_1"] > 0.5      # the bottom layer carries information about x


def test_bounds_are_ordered_and_detect(digits, hvae):
    _, test, truth = digits
    elbo = hvae.set_params(score_kind="elbo").score_samples(test)
    iwae = hvae.set_params(score_kind="iwae").score_samples(test)
    hvae.set_params(score_kind="auto")
    assert iwae.mean() > elbo.mean()                      # tighter, with K = 32
    assert roc_auc_score(truth, -iwae) > 0.8              # zeros never seen in fit


def test_llr_is_the_difference_of_two_bounds(digits, hvae):
    _, test, _ = digits
    x = torch.from_numpy(hvae.preprocessing_.to_model_units(test[:20]))
    eps = torch.from_numpy(hvae.noise_)[:, None, :]
    with torch.no_grad():
        full = hvae.model_.iwae(x, eps)
        above = hvae.model_.iwae_above_bottom(x, eps)
    llr = hvae.set_params(score_kind="llr").score_samples(test[:20])
    hvae.set_params(score_kind="auto")
    np.testing.assert_allclose(llr, (above - full).numpy(), rtol=1e-5, atol=1e-4)


def test_bound_above_the_bottom_proposes_from_x_alone(digits, hvae):
    """L^{>1}'s proposal for z_2 starts at the mean of q(z_1 | x), a density of x alone (a
    proper bound): the bottom layer's posterior noise does not move it, its prior noise does."""
    _, test, _ = digits
    x = torch.from_numpy(hvae.preprocessing_.to_model_units(test[:20]))
    eps = torch.from_numpy(hvae.noise_)[:, None, :]
    d1 = hvae.model_.latent_dims[0]
    other_bottom, other_prior = eps.clone(), eps.clone()
    other_bottom[..., :d1] = torch.randn_like(eps[..., :d1])
    other_prior[..., -d1:] = torch.randn_like(eps[..., -d1:])
    with torch.no_grad():
        above = hvae.model_.iwae_above_bottom(x, eps)
        assert torch.equal(above, hvae.model_.iwae_above_bottom(x, other_bottom))
        assert not torch.equal(above, hvae.model_.iwae_above_bottom(x, other_prior))


def test_codes_span_every_layer_and_decode(digits, hvae):
    _, test, _ = digits
    codes = hvae.transform(test[:5])
    assert codes.shape == (5, 12)
    assert list(hvae.get_feature_names_out()) == [f"z{i}" for i in range(12)]
    np.testing.assert_array_equal(hvae.decode(codes), hvae.reconstruct(test[:5]))
    ends = hvae.interpolate(test[0], test[1], n_steps=4)
    np.testing.assert_array_equal(ends[[0, -1]], hvae.reconstruct(test[:2]))
    samples = hvae.sample(7, random_state=0)
    assert samples.shape == (7, 64) and np.isfinite(samples).all()
    np.testing.assert_array_equal(samples, hvae.sample(7, random_state=0))


def test_scores_depend_on_the_row_alone(digits, hvae):
    _, test, _ = digits
    for kind in ("elbo", "iwae", "llr"):
        hvae.set_params(score_kind=kind)
        full = hvae.score_samples(test)
        np.testing.assert_array_equal(hvae.score_samples(test[7:8]), full[7:8])
        np.testing.assert_array_equal(hvae.score_samples(test[::-1]), full[::-1])
    hvae.set_params(score_kind="auto")


def test_save_load_and_onnx(tmp_path, digits):
    train, test, _ = digits
    llr = VAEDetector(latent_dim=(8, 4), epochs=10, n_score_samples=32, score_kind="llr",
                      random_state=0).fit(train)     # fitted for llr: its threshold is llr's
    llr.save(tmp_path / "h.safetensors")
    loaded = VAEDetector.load(tmp_path / "h.safetensors")
    np.testing.assert_array_equal(loaded.score_samples(test), llr.score_samples(test))
    np.testing.assert_array_equal(loaded.predict(test), llr.predict(test))
    llr.export_onnx(tmp_path / "h.onnx")
    onnx_scores = OnnxModel(tmp_path / "h.onnx").score_samples(test)
    np.testing.assert_allclose(onnx_scores, llr.score_samples(test), rtol=1e-4, atol=1e-3)
    llr.export_onnx(tmp_path / "decoder.onnx", part="decoder")
    decoded = OnnxModel(tmp_path / "decoder.onnx").decode(llr.transform(test[:3]))
    np.testing.assert_allclose(decoded, llr.reconstruct(test[:3]), rtol=1e-4, atol=1e-4)


def test_images_score_llr_and_elbo_complexity():
    x, _ = load_digits(return_X_y=True)
    images = (x[:300].reshape(-1, 8, 8) / 16.0).astype(np.float32)
    detector = VAEDetector(latent_dim=(6, 3), epochs=5, random_state=0).fit(images)
    assert detector._resolved_score_kind() == "elbo_complexity"
    for kind in ("elbo_complexity", "llr"):
        assert np.isfinite(detector.set_params(score_kind=kind).score_samples(images)).all()


@pytest.mark.parametrize("params, match", [
    ({"latent_dim": (8,)}, "at least 2 positive ints"),
    ({"latent_dim": (8, 0)}, "at least 2 positive ints"),
    ({"latent_dim": (8, 4), "score_kind": "elbo_kl_knn"}, "not defined for a hierarchical"),
    ({"score_kind": "llr"}, r"latent_dim=\(32, 8\)"),
    ({"latent_dim": (8, 4), "score_kind": "elbo_complexity"}, "Use 'elbo' or 'auto'"),
])
def test_bad_settings_say_what_to_do(digits, params, match):
    train, _, _ = digits
    with pytest.raises(ValueError, match=match):
        VAEDetector(epochs=1, **params).fit(train[:50])


def test_tables_with_holes_and_conditional_are_refused(digits):
    train, _, _ = digits
    holes = train[:50].copy()
    holes[0, 3] = np.nan
    with pytest.raises(ValueError, match="contains NaN"):
        VAEDetector(latent_dim=(8, 4), epochs=1).fit(holes)
    with pytest.raises(ValueError, match="conditional=False"):
        VAEDetector(latent_dim=(8, 4), conditional=True, epochs=1).fit(
            train[:50], np.arange(50) % 2)


def test_what_is_not_there_yet_is_refused(digits, hvae):
    _, test, _ = digits
    for method in (hvae.explain, lambda rows: hvae.score_frame(rows, explain=1)):
        with pytest.raises(ValueError, match="hierarchical"):
            method(test[:3])


def test_score_frame_gives_the_bound_and_its_verdict(digits, hvae):
    """Like its ONNX scorer: score and is_outlier, with the caller's index."""
    _, test, _ = digits
    rows = pd.DataFrame(test[:6], index=list("abcdef"))
    frame = hvae.score_frame(rows)
    assert list(frame.columns) == ["score", "is_outlier"] and list(frame.index) == list("abcdef")
    np.testing.assert_array_equal(frame["score"], hvae.score_samples(test[:6]))
    np.testing.assert_array_equal(frame["is_outlier"], hvae.predict(test[:6]) == -1)


def test_partial_fit_streams_a_hierarchy(digits):
    """Chunks train it as fit does; the kNN bank it never keeps is missing, not an error."""
    train, test, _ = digits
    detector = VAEDetector(latent_dim=(8, 4), random_state=0)
    for chunk in np.array_split(train, 3):
        detector.partial_fit(chunk)
    assert np.isfinite(detector.score_samples(test[:5])).all()
    assert np.isfinite(detector.offset_) and not hasattr(detector, "latent_bank_")


def test_kl_weight_warms_up_over_the_first_third(digits):
    """A hierarchy's loss weighs the KL less than the ELBO does while it warms up (by default
    the first third of training), then exactly as much; a one-layer model has no warm-up."""
    train, _, _ = digits
    history = VAEDetector(latent_dim=(8, 4), beta=1.0, epochs=6, random_state=0).fit(
        train).history_
    assert history[0]["loss"] < -history[0]["elbo"] - 0.01
    for epoch in history[2:]:
        assert epoch["loss"] == pytest.approx(-epoch["elbo"], rel=1e-5)
    first = VAEDetector(epochs=1, beta=1.0, random_state=0).fit(train).history_[0]
    assert first["loss"] == pytest.approx(-first["elbo"], rel=1e-5)
    warm = VAEDetector(epochs=1, beta=1.0, kl_warmup=1.0, random_state=0).fit(train).history_[0]
    assert warm["loss"] < -warm["elbo"] - 0.01


def test_early_stopping_waits_for_the_warm_up(digits):
    """Validation losses use the full KL weight, so they rise while it warms up: early
    stopping neither keeps nor counts those epochs."""
    train, _, _ = digits
    detector = VAEDetector(latent_dim=(8, 4), epochs=30, validation_fraction=0.2, patience=1,
                           random_state=0).fit(train)
    assert len(detector.history_) > 10                      # warm-up: the first 10 epochs


def test_partial_fit_warms_up_whatever_the_chunk_sizes(digits, monkeypatch):
    """A stream's schedule is fixed by its first chunk: a smaller chunk later (whose own
    epochs="auto" would be more) does not set the warm-up back."""
    train, _, _ = digits
    seen = []
    original = VAEDetector._kl_weight
    monkeypatch.setattr(VAEDetector, "_kl_weight",
                        lambda self, progress: seen.append(progress) or original(self, progress))
    detector = VAEDetector(latent_dim=(8, 4), random_state=0)
    for chunk in (train[:250], train[250:500], train[500:]):   # 100 rows last
        detector.partial_fit(chunk)
    assert seen == sorted(seen) and seen[-1] > 0
