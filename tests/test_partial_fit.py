"""partial_fit: out-of-core training one chunk at a time, against fit as the reference."""

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from vaeanom import VAEDetector, VQVAEDetector
from vaeanom.datasets import breast_cancer_one_class
from vaeanom.estimators.base import Reservoir


def _stream(det: VAEDetector, chunks, passes: int) -> VAEDetector:
    for _ in range(passes):
        for chunk in chunks:
            det.partial_fit(chunk)
    return det


@pytest.fixture(scope="module")
def cancer_split():
    return breast_cancer_one_class(n_train=200, seed=0)


@pytest.fixture(scope="module")
def streamed(cancer_split):
    """The core protocol's 200 training rows in 10 chunks of 20, 100 passes: the 1000
    gradient steps that fit's default takes on them."""
    X_train = cancer_split[0]
    return _stream(VAEDetector(random_state=0), np.array_split(X_train, 10), passes=100)


def test_ten_chunks_come_within_a_hundredth_of_fit(streamed, cancer_split):
    X_train, X_test, y_test = cancer_split
    fitted = VAEDetector(random_state=0).fit(X_train)
    auc_fit = roc_auc_score(y_test, -fitted.score_samples(X_test))
    auc_stream = roc_auc_score(y_test, -streamed.score_samples(X_test))
    assert abs(auc_stream - auc_fit) <= 0.01, (auc_stream, auc_fit)
    assert len(streamed.history_) == 1000
    np.testing.assert_array_equal(streamed.center_, X_train[:20].mean(axis=0))  # first chunk


def test_the_same_chunks_in_the_same_order_give_the_same_bits(streamed, cancer_split):
    X_train, X_test, _ = cancer_split
    again = _stream(VAEDetector(random_state=0), np.array_split(X_train, 10), passes=100)
    np.testing.assert_array_equal(again.score_samples(X_test), streamed.score_samples(X_test))
    assert again.offset_ == streamed.offset_


def test_a_stream_survives_pickling_and_fit_starts_afresh(cancer_split):
    X_train, X_test, _ = cancer_split
    chunks = np.array_split(X_train, 4)
    straight = _stream(VAEDetector(random_state=0, hidden_dims=(16,)), chunks, passes=2)
    det = _stream(VAEDetector(random_state=0, hidden_dims=(16,)), chunks, passes=1)
    det = _stream(pickle.loads(pickle.dumps(det)), chunks, passes=1)
    np.testing.assert_array_equal(det.score_samples(X_test), straight.score_samples(X_test))
    det.fit(X_train)
    assert not hasattr(det, "_stream_")


def test_tables_stream_with_the_first_chunks_categories():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=300), "color": rng.choice(["r", "g"], 300)})
    frame.loc[::9, "a"] = np.nan
    det = VAEDetector(random_state=0, hidden_dims=(16,)).partial_fit(frame[:100])
    det.partial_fit(frame[100:].assign(color=["b"] + list(frame.color[101:])))  # unseen "b"
    assert np.isfinite(det.score_samples(frame)).all()
    with pytest.raises(ValueError, match="0 sample"):
        det.partial_fit(frame[:0])


def test_the_reservoir_is_uniform_and_bounded():
    reservoir = Reservoir(100)
    generator = torch.Generator().manual_seed(0)
    for start in range(0, 10_000, 1000):
        reservoir.add(torch.arange(start, start + 1000).float()[:, None], generator)
    kept = reservoir.rows.flatten().numpy()
    assert len(kept) == 100 and len(set(kept)) == 100 and reservoir.seen == 10_000
    assert 3000 < kept.mean() < 7000    # uniform over the stream, not its head or tail


def test_the_reservoir_keeps_a_row_with_holes_once():
    """NaN != NaN: torch.unique kept every copy of a row with a hole, so a stream read in
    many passes filled the reservoir (and the kNN bank) with copies of its holed rows."""
    reservoir = Reservoir(100)
    rows = torch.tensor([[1.0, float("nan")], [2.0, 3.0], [float("nan"), float("nan")]])
    for _ in range(5):
        reservoir.add(rows, torch.Generator().manual_seed(0))
    distinct = reservoir.distinct_rows()
    assert len(distinct) == 3
    assert torch.equal(torch.isnan(distinct).sum(1).sort().values, torch.tensor([0, 1, 2]))


def test_a_category_first_seen_in_a_later_chunk_does_not_train_the_unknown_slot(cancer):
    """Such a category takes the "unknown" slot; trained as it, the slot learned mass and
    a category never seen at all scored as typical (-0.14 nats, against 7.0 now)."""
    X = cancer[0].iloc[:400, :6].copy()
    X["size"] = np.where(X["mean radius"] > 14, "big", "small")
    later = X["mean radius"] > 17
    later.iloc[:100] = False                            # "huge" is not in the first chunk
    X.loc[later, "size"] = "huge"
    det = VAEDetector(hidden_dims=(16,), latent_dim=2, random_state=0, learning_rate=1e-2,
                      batch_size=32)
    for _ in range(15):
        for start in range(0, 400, 100):
            det.partial_fit(X.iloc[start:start + 100])
    probe = X.loc[later].iloc[[0]].assign(size="never seen")
    assert det.explain(probe)["size"].iloc[0] > 3.0


def test_partial_fit_after_fit_or_load_trains_an_unseen_category_as_a_hole(tmp_path):
    """The first partial_fit on a fitted or loaded model skipped the rule: three chunks
    of a new category taught the unknown slot, and a category never seen at all then
    explained 0 nats and scored above the known rows."""
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300),
                      "c": rng.choice(["x", "y", "z"], 300)})
    probe = X.iloc[:50].assign(c="never seen anywhere")
    det = VAEDetector(hidden_dims=(16,), latent_dim=2, epochs=2, random_state=0).fit(X)
    det.save(tmp_path / "m.safetensors")
    for model in (det, VAEDetector.load(tmp_path / "m.safetensors")):
        for _ in range(3):
            model.partial_fit(X.assign(c="new"))
        assert model.explain(probe)["c"].median() > 0.1
        assert np.median(model.score_samples(probe)) < np.median(model.score_samples(X[:50]))


def test_looking_mid_stream_changes_nothing_later(cancer_split):
    X_train, X_test, _ = cancer_split
    chunks = np.array_split(X_train, 4)
    unseen = _stream(VAEDetector(random_state=0, hidden_dims=(16,)), chunks, passes=2)
    looked = VAEDetector(random_state=0, hidden_dims=(16,))
    for chunk in chunks * 2:
        looked.partial_fit(chunk).score_samples(X_test[:5])    # scoring state, mid-stream
    np.testing.assert_array_equal(looked.score_samples(X_test), unseen.score_samples(X_test))
    assert looked.offset_ == unseen.offset_


def test_a_streamed_model_saves_and_its_file_scores_the_same(cancer_split, tmp_path):
    X_train, X_test, _ = cancer_split
    det = _stream(VAEDetector(random_state=0, hidden_dims=(16,)), np.array_split(X_train, 4), 1)
    det.save(tmp_path / "streamed.safetensors")
    loaded = VAEDetector.load(tmp_path / "streamed.safetensors")
    np.testing.assert_array_equal(loaded.score_samples(X_test), det.score_samples(X_test))
    np.testing.assert_array_equal(loaded.predict(X_test), det.predict(X_test))


def test_the_vq_detector_streams_too(cancer_split):
    X_train, X_test, _ = cancer_split
    det = _stream(VQVAEDetector(random_state=0, hidden_dims=(16,)),
                  np.array_split(X_train, 4), passes=2)
    assert len(det.history_) == 8 and det.code_counts_.sum() == 200 * det.n_codes
    assert np.isfinite(det.score_samples(X_test)).all()


def test_a_chunk_that_fails_midway_leaves_the_stream_as_it_was(cancer_split, monkeypatch):
    """partial_fit trains the network and Adam's state in place: a chunk that fails after
    its steps (a divergence, Ctrl-C) must not leave them changed under the old threshold.
    Going on afterwards gives the bits of a stream that never saw the failed call."""
    from vaeanom import training

    X_train, X_test, _ = cancer_split
    chunks = np.array_split(X_train, 4)
    det, twin = (VAEDetector(epochs=2, random_state=0).partial_fit(chunks[0]) for _ in range(2))
    before = det.score_samples(X_test)
    train_chunk = training.train_chunk

    def steps_then_fails(*args, **kwargs):
        train_chunk(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_chunk", steps_then_fails)
    with pytest.raises(KeyboardInterrupt):
        det.partial_fit(chunks[1])
    monkeypatch.setattr(training, "train_chunk", train_chunk)
    np.testing.assert_array_equal(det.score_samples(X_test), before)
    assert len(det.history_) == 1
    for chunk in chunks[1:]:
        det.partial_fit(chunk)
        twin.partial_fit(chunk)
    np.testing.assert_array_equal(det.score_samples(X_test), twin.score_samples(X_test))


def test_a_threshold_that_fails_to_compute_is_computed_on_the_next_use(cancer_split,
                                                                       monkeypatch):
    X_train, X_test, _ = cancer_split
    det = VAEDetector(epochs=2, random_state=0).partial_fit(X_train)
    set_state = VAEDetector._set_scoring_state

    def interrupted(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(VAEDetector, "_set_scoring_state", interrupted)
    with pytest.raises(KeyboardInterrupt):
        det.score_samples(X_test)
    monkeypatch.setattr(VAEDetector, "_set_scoring_state", set_state)
    twin = VAEDetector(epochs=2, random_state=0).partial_fit(X_train)
    np.testing.assert_array_equal(det.predict(X_test), twin.predict(X_test))
    assert det.offset_ == twin.offset_
