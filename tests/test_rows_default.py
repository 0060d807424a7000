"""The rows default: the three-term vote, the latent kNN term, step-counted training, bf16."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from vaeanom import VAEDetector
from vaeanom.datasets import breast_cancer_one_class
from vaeanom.estimators import vae as vae_module
from vaeanom.scoring import LatentNeighbours

from .conftest import FAST


@pytest.fixture(scope="module")
def voted(cancer):
    X, _ = cancer
    return VAEDetector(**{**FAST, "epochs": 20}).fit(X.iloc[:300]), X


def test_latent_neighbours_is_the_mean_distance_to_the_k_nearest_codes():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(50, 3)), rng.normal(size=(7, 3))
    module = LatentNeighbours(torch.from_numpy(bank), k=4)
    distances = np.linalg.norm(queries[:, None] - bank[None], axis=2)
    expected = np.sort(distances, axis=1)[:, :4].mean(1)
    got = module(torch.from_numpy(queries).float()).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    # the bank's own rows, leaving themselves out: the 2nd to 5th nearest
    own = np.linalg.norm(bank[:, None] - bank[None], axis=2)
    leave_one_out = np.sort(own, axis=1)[:, 1:5].mean(1)
    got = module(torch.from_numpy(bank).float(), exclude_self=True).numpy()
    np.testing.assert_allclose(got, leave_one_out, rtol=1e-4, atol=1e-5)


def test_default_for_rows_is_the_three_term_vote(voted):
    det, _ = voted
    assert det._resolved_score_kind() == "elbo_kl_knn" and det._resolved_beta() == 2.0
    assert det.score_reference_.shape == (3, 2)
    assert det.latent_bank_.shape == (300, det.latent_dim)


def test_vote_is_the_sum_of_three_terms_in_robust_training_units(voted):
    det, X = voted
    train = X.iloc[:300]
    frame = det.score_frame(train)
    codes = det.encode(train)
    own = np.linalg.norm(codes[:, None] - codes[None], axis=2)
    distance = np.sort(own, axis=1)[:, 1:6].mean(1)  # leave-one-out: every row is in the bank
    for row, term in enumerate((-frame["elbo"], frame["kl"], distance)):
        q1, median, q3 = np.percentile(term, [25, 50, 75])
        np.testing.assert_allclose(det.score_reference_[row], [median, q3 - q1],
                                   rtol=2e-4, atol=1e-5)
    test = X.iloc[300:]
    frame = det.score_frame(test)
    codes = det.encode(test)
    distance = np.sort(np.linalg.norm(codes[:, None] - det.latent_bank_[None], axis=2),
                       axis=1)[:, :5].mean(1)
    units = det.score_reference_.astype(np.float64)
    expected = -sum((term - mid) / iqr for term, (mid, iqr) in
                    zip((-frame["elbo"], frame["kl"], distance), units))
    np.testing.assert_allclose(frame["score"], expected, atol=1e-4)
    np.testing.assert_allclose(
        det.set_params(score_kind="latent_knn").score_samples(test), -distance, atol=1e-5)
    det.set_params(score_kind="auto")


def test_the_bank_keeps_at_most_bank_size_codes(cancer, monkeypatch):
    X, _ = cancer
    monkeypatch.setattr(vae_module, "BANK_SIZE", 64)
    det = VAEDetector(**FAST).fit(X)
    assert det.latent_bank_.shape == (64, det.latent_dim)
    np.testing.assert_array_equal(det.score_samples(X), clone(det).fit(X).score_samples(X))


@pytest.mark.parametrize("n_rows, batch_size", [(90, 128), (300, 128), (5000, 128), (300, 32)])
def test_auto_epochs_count_gradient_steps(n_rows, batch_size):
    det = VAEDetector(batch_size=batch_size)
    det.is_image_ = False
    steps_per_epoch = -(-n_rows // batch_size)
    epochs = det._resolved_epochs(n_rows)
    assert abs(epochs * steps_per_epoch - vae_module.ROW_STEPS) <= steps_per_epoch
    assert VAEDetector(epochs=7)._resolved_epochs(n_rows) == 7


def test_bf16_training_runs_the_networks_in_bfloat16_and_scores_in_float32(cancer,
                                                                           monkeypatch):
    X, _ = cancer
    seen = set()
    original = VAEDetector._loss

    def spy(self, model, batch, generator, progress):
        seen.add(model.encoder(batch)[0].dtype)
        return original(self, model, batch, generator, progress)

    monkeypatch.setattr(VAEDetector, "_loss", spy)
    det = VAEDetector(**{**FAST, "precision": "bf16"}).fit(X)
    monkeypatch.undo()
    assert seen == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in det.model_.parameters())
    scores = det.score_samples(X)
    assert scores.dtype == np.float64 and np.isfinite(scores).all()
    np.testing.assert_array_equal(scores, det.score_samples(X.iloc[::-1])[::-1])


def test_bf16_detects_as_well_as_fp32_on_breast_cancer():
    split = breast_cancer_one_class(n_train=200, seed=0)
    aucs = {}
    for precision in ("fp32", "bf16"):
        det = VAEDetector(precision=precision, random_state=0).fit(split.X_train)
        aucs[precision] = roc_auc_score(split.y_test, -det.score_samples(split.X_test))
    assert abs(aucs["bf16"] - aucs["fp32"]) <= 0.01, aucs
