"""What fit promises beyond its defaults, checked on real fits of scikit-learn's embedded data:
the "auto" threshold, early stopping's restored weights, and the Bernoulli likelihood."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from vaeanom import VAEDetector
from vaeanom.datasets import digits_one_class
from vaeanom.models.likelihoods import BernoulliLikelihood

from .conftest import FAST


# ------------------------------------------------------- contamination="auto"
def test_contamination_auto_is_tukeys_lower_fence_of_the_training_scores(cancer):
    X, _ = cancer
    det = VAEDetector(**{**FAST, "epochs": 20, "contamination": "auto"}).fit(X)
    scores = det.score_samples(X)
    q1, q3 = np.percentile(scores, [25, 75])
    assert det.offset_ == pytest.approx(q1 - 1.5 * (q3 - q1), rel=1e-12)
    assert det.offset_ != pytest.approx(np.percentile(scores, 10))  # not the 0.1 quantile
    below = scores < det.offset_
    assert below.any()  # else "exactly the rows below" would hold for any threshold under all
    np.testing.assert_array_equal(det.predict(X) == -1, below)
    np.testing.assert_array_equal(det.decision_function(X) < 0, below)


# ------------------------------------------------ parameters set after fit
def test_a_threshold_is_not_applied_to_a_score_kind_it_was_not_set_for(cancer, tmp_path):
    """score_samples computes any kind set after fit; predict, score_frame, save and export
    refuse until the model is refitted or the kind set back (offset_ belongs to the other)."""
    X, _ = cancer
    det = VAEDetector(**FAST).fit(X)
    flagged = det.predict(X)
    det.set_params(score_kind="elbo")
    assert np.isfinite(det.score_samples(X)).all()
    for action in (lambda: det.predict(X), lambda: det.decision_function(X),
                   lambda: det.score_frame(X), lambda: det.save(tmp_path / "m.st"),
                   lambda: det.export_onnx(tmp_path / "m.onnx")):
        with pytest.raises(ValueError, match="score_kind='elbo' was set after fit"):
            action()
    assert not any(tmp_path.iterdir())
    det.set_params(score_kind=det._fitted_params_["score_kind"])   # the kind "auto" resolved to
    np.testing.assert_array_equal(det.predict(X), flagged)
    det.set_params(contamination=0.3)
    with pytest.raises(ValueError, match="contamination"):
        det.predict(X)


def test_an_architecture_set_after_fit_is_refused_by_save_and_partial_fit(cancer, tmp_path):
    X, _ = cancer
    det = VAEDetector(**FAST).fit(X)
    det.set_params(n_score_samples=8)
    with pytest.raises(ValueError, match="n_score_samples=8 was set after fit"):
        det.save(tmp_path / "m.st")                      # it wrote a file load called corrupt
    det.set_params(n_score_samples=FAST.get("n_score_samples", 16), latent_dim=5)
    with pytest.raises(ValueError, match="latent_dim=5 was set after fit"):
        det.partial_fit(X)
    with pytest.raises(ValueError, match="latent_dim=5 was set after fit"):
        det.get_feature_names_out()           # gave 5 names for a model of 2 columns
    det.set_params(latent_dim=FAST.get("latent_dim", 16), learning_rate=-1.0)
    with pytest.raises(ValueError, match="learning_rate"):   # validated on every call
        det.partial_fit(X)
    det.set_params(learning_rate=1e-3, score_kind="elbo", verbose=0)
    det.partial_fit(X)                     # training again sets the threshold under the new kind
    assert (det.predict(X) == -1).mean() == pytest.approx(0.1, abs=0.01)
    det.save(tmp_path / "m.st")
    assert VAEDetector.load(tmp_path / "m.st").get_params() == det.get_params()


def test_a_refused_refit_leaves_the_fitted_model_as_it_was(cancer, tmp_path):
    """fit sets the standardisation and the columns before the checks that need them; a
    refit they refused left new center_ over the old network (scores off by 11 nats, or
    a torch shape error) and a file that load called corrupt."""
    X, _ = cancer
    det = VAEDetector(**FAST).fit(X)
    before = det.score_samples(X)
    with pytest.raises(ValueError, match="needs a model fitted on images"):
        det.set_params(score_kind="elbo_complexity").fit(X * 100 + 50)
    det.set_params(score_kind="auto")
    with pytest.raises(ValueError, match="every entry missing"):   # another width, all holes
        det.fit(np.full((5, 3), np.nan))
    np.testing.assert_array_equal(det.score_samples(X), before)
    assert det.n_features_in_ == X.shape[1]
    det.save(tmp_path / "m.st")
    np.testing.assert_array_equal(VAEDetector.load(tmp_path / "m.st").score_samples(X), before)
    fresh = VAEDetector(**{**FAST, "score_kind": "elbo_complexity"})
    with pytest.raises(ValueError, match="needs a model fitted on images"):
        fresh.fit(X)
    assert not [name for name in vars(fresh) if name.endswith("_")]   # still unfitted


def test_a_streamed_threshold_is_set_under_the_parameters_it_was_trained_with(cancer):
    """partial_fit computes the threshold on first use; comparing kinds or contaminations
    with score_samples before that first use used to set it under the other value, and
    predict, which checks the fitted ones, then flagged 40% of the training rows."""
    X, _ = cancer
    twin = VAEDetector(**FAST).partial_fit(X)
    for changed in ({"score_kind": "latent_knn"}, {"contamination": 0.4}):
        det = VAEDetector(**FAST).partial_fit(X)
        det.set_params(**changed).score_samples(X)
        det.set_params(score_kind="auto", contamination=0.1)
        assert det.offset_ == twin.offset_
        assert (det.predict(X) == -1).mean() == pytest.approx(0.1, abs=0.01)


def test_a_threshold_set_on_held_out_rows_is_kept_by_save_and_the_export(cancer, tmp_path):
    """README's recipe for a share of *new* rows: offset_ from held-out normal rows."""
    from vaeanom import OnnxModel

    X, y = cancer
    benign = X[y == 1]
    det = VAEDetector(**FAST).fit(benign.iloc[:150])
    held_out = det.score_samples(benign.iloc[150:250])
    det.offset_ = float(np.percentile(held_out, 10))
    assert (det.predict(benign.iloc[150:250]) == -1).mean() == pytest.approx(0.1, abs=0.01)
    det.save(tmp_path / "m.st")
    runtime = OnnxModel(det.export_onnx(tmp_path / "m.onnx"))
    for model in (VAEDetector.load(tmp_path / "m.st"), runtime):
        assert model.offset_ == pytest.approx(det.offset_, rel=1e-6)
        np.testing.assert_array_equal(model.predict(X), det.predict(X))


# ------------------------------------------------------------- early stopping
def test_early_stopping_restores_the_best_epochs_weights(cancer):
    """The val_loss of history_ is a one-sample Monte-Carlo ELBO drawn afresh each epoch,
    so it cannot be recomputed after fit. Instead: the same seed with epochs cut at the
    best epoch follows the same trajectory and ends on the weights that scored the best
    val_loss; the early-stopped model must hold exactly those weights."""
    X, _ = cancer
    params = {**FAST, "epochs": 200, "validation_fraction": 0.2, "patience": 5}
    det = VAEDetector(**params).fit(X)
    val_loss = [record["val_loss"] for record in det.history_]
    best = int(np.argmin(val_loss))
    assert len(val_loss) == best + 1 + params["patience"] < params["epochs"]  # stopped early
    assert val_loss[-1] > val_loss[best]  # the last epoch's weights are not the best ones

    at_best = VAEDetector(**{**params, "epochs": best + 1}).fit(X)
    assert at_best.history_ == det.history_[:best + 1]
    assert at_best.history_[-1]["val_loss"] == min(val_loss)
    restored, expected = det.model_.state_dict(), at_best.model_.state_dict()
    assert restored.keys() == expected.keys()
    for name, weights in restored.items():
        torch.testing.assert_close(weights, expected[name], rtol=0, atol=0, msg=name)


# ------------------------------------------------------------------ Bernoulli
@pytest.fixture(scope="module")
def bernoulli():
    """likelihood="bernoulli" on load_digits / 16 (pixels in [0, 1]), digit 0 normal."""
    split = digits_one_class(0, seed=0)
    return VAEDetector(likelihood="bernoulli", epochs=30, random_state=0).fit(split.X_train), split


def test_bernoulli_fits_unstandardised_and_detects(bernoulli):
    """ROC-AUC 0.996 measured at seed 0 (30 epochs, rows defaults otherwise)."""
    det, split = bernoulli
    assert isinstance(det.model_.likelihood, BernoulliLikelihood)
    assert np.all(det.center_ == 0) and np.all(det.scale_ == 1)  # pixels as they are
    assert all(np.isfinite(record["loss"]) for record in det.history_)
    scores = det.score_samples(split.X_test)
    assert np.isfinite(scores).all()
    assert roc_auc_score(split.y_test, -scores) >= 0.98


def test_bernoulli_refuses_to_fit_data_outside_the_unit_range(bernoulli):
    det, split = bernoulli
    with pytest.raises(ValueError, match=r"likelihood='bernoulli' needs data in \[0, 1\]; "
                                         r"got values in \[0, 16\]\. Scale X to \[0, 1\]"):
        clone(det).fit(split.X_train * 16)  # load_digits' raw 0..16 pixels


def test_bernoulli_refuses_to_score_data_outside_the_unit_range(bernoulli):
    det, split = bernoulli
    with pytest.raises(ValueError, match=r"needs data in \[0, 1\]"):
        det.score_samples(split.X_test[:5] * 16)


def test_bernoulli_save_load_round_trip_is_bit_identical(bernoulli, tmp_path):
    det, split = bernoulli
    det.save(tmp_path / "bernoulli.safetensors")
    loaded = VAEDetector.load(tmp_path / "bernoulli.safetensors")
    assert loaded.likelihood == "bernoulli"
    assert isinstance(loaded.model_.likelihood, BernoulliLikelihood)
    assert loaded.offset_ == det.offset_
    np.testing.assert_array_equal(loaded.score_samples(split.X_test),
                                  det.score_samples(split.X_test))
    np.testing.assert_array_equal(loaded.predict(split.X_test), det.predict(split.X_test))
