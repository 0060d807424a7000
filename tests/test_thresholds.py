"""threshold_folds: the contamination rule on out-of-fold scores, checked on real fits."""

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import KFold, StratifiedKFold

from vaeanom import VAEDetector, VQVAEDetector
from vaeanom.datasets import digits_one_class

from .conftest import FAST


def test_on_the_demo_the_folds_threshold_flags_the_share_of_new_zeros():
    """The digits demo's model fits its training zeros far closer than new ones: at 0.1
    the training rows' threshold flags most new zeros (88% over seeds 0-2,
    benchmarks/threshold_new_rows.py), the out-of-fold one about a tenth, while the
    scores, and so the ranking, stay the same bits and the other digits stay flagged."""
    split = digits_one_class(0, 0)
    zeros, others = split.X_test[split.y_test == 0], split.X_test[split.y_test == 1]
    plain = VAEDetector(random_state=0).fit(split.X_train)
    folds = VAEDetector(random_state=0, threshold_folds=3).fit(split.X_train)
    np.testing.assert_array_equal(folds.score_samples(split.X_test),
                                  plain.score_samples(split.X_test))
    assert np.mean(plain.predict(zeros) == -1) > 0.5
    assert 0.02 <= np.mean(folds.predict(zeros) == -1) <= 0.25
    assert np.mean(folds.predict(others) == -1) >= 0.95


def test_offset_is_the_contamination_rule_on_scores_of_rows_each_member_did_not_see(cancer):
    """The documented recipe, redone by hand: K clones with the detector's parameters and
    seed, each fitted on the other folds (KFold, shuffled by the seed), score their fold."""
    X = cancer[0].iloc[:120]
    det = VAEDetector(**FAST, threshold_folds=3, contamination=0.2).fit(X)
    out_of_fold = np.empty(len(X))
    for train, held_out in KFold(3, shuffle=True, random_state=0).split(X):
        member = clone(det).set_params(threshold_folds=None).fit(X.iloc[train])
        out_of_fold[held_out] = member.score_samples(X.iloc[held_out])
    assert det.offset_ == np.percentile(out_of_fold, 20)
    plain = clone(det).set_params(threshold_folds=None).fit(X)
    np.testing.assert_array_equal(det.score_samples(X), plain.score_samples(X))
    assert det.offset_ != plain.offset_


def test_a_conditional_model_gets_both_thresholds_from_stratified_folds():
    X, y = load_digits(return_X_y=True)
    X, y = X[:200] / 16.0, y[:200]
    det = VAEDetector(**FAST, conditional=True, threshold_folds=2).fit(X, y)
    marginal, given = np.empty(len(X)), np.empty(len(X))
    for train, held_out in StratifiedKFold(2, shuffle=True, random_state=0).split(X, y):
        member = clone(det).set_params(threshold_folds=None).fit(X[train], y[train])
        marginal[held_out] = member.score_samples(X[held_out])
        given[held_out] = member.score_samples(X[held_out], y[held_out])
    assert det.offset_ == np.percentile(marginal, 10)
    assert det.label_offset_ == np.percentile(given, 10)
    plain = clone(det).set_params(threshold_folds=None).fit(X, y)
    np.testing.assert_array_equal(det.score_samples(X, y), plain.score_samples(X, y))
    np.testing.assert_array_equal(det.predict(X, y),
                                  np.where(det.score_samples(X, y) < det.label_offset_, -1, 1))


def _column_seen_once() -> pd.DataFrame:
    table = pd.DataFrame(np.random.default_rng(0).normal(size=(60, 3)), columns=list("abc"))
    table["rare"] = np.nan
    table.loc[10, "rare"] = 1.0
    return table


NORMAL = np.random.default_rng(0).normal(size=(20, 3))


@pytest.mark.parametrize("fit, named", [
    (lambda: VAEDetector(**FAST, threshold_folds=5).fit(NORMAL[:9]), "got 9"),
    (lambda: VAEDetector(**FAST, threshold_folds=2, conditional=True).fit(
        NORMAL, [0] * 10 + [1] * 9 + [7]), "[7]"),
    (lambda: VAEDetector(**FAST, threshold_folds=5, conditional=True).fit(
        NORMAL[:12], np.repeat(["a", "b", "c"], 4)), "threshold_folds=4 or fewer"),
    (lambda: VAEDetector(**FAST, threshold_folds=3).fit(_column_seen_once()), "'rare' (1 rows)"),
], ids=["too few rows", "a label on one row", "no label on K rows", "a column seen once"])
def test_folds_that_cannot_work_are_refused_before_training(fit, named, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing")
    monkeypatch.setattr("vaeanom.training.fit", no_training)
    with pytest.raises(ValueError, match=r"threshold_folds=\d") as error:
        fit()
    assert "threshold_folds=None" in str(error.value)
    assert named in str(error.value)


def test_the_copies_train_silently_and_old_pickles_still_score(cancer, recwarn, capsys):
    """Warnings and progress come once, from the detector's own fit; a detector pickled
    before the parameter existed reads it as None."""
    X = cancer[0].iloc[:60].assign(id=[f"u{i}" for i in range(60)])   # warns: an identifier
    VAEDetector(**FAST, verbose=1).fit(X)
    once, bars = len(recwarn), capsys.readouterr().err.count("?epoch/s]")   # a bar's first line
    recwarn.clear()
    det = VAEDetector(**FAST, verbose=1, threshold_folds=3).fit(X)
    assert once >= 1 and len(recwarn) == once
    assert bars == 1 and capsys.readouterr().err.count("?epoch/s]") == 1
    del det.__dict__["threshold_folds"]                     # as pickled before it existed
    det._fitted_params_.pop("threshold_folds")
    old = pickle.loads(pickle.dumps(det))
    assert old.threshold_folds is None
    np.testing.assert_array_equal(old.predict(X), np.where(old.score_samples(X) < old.offset_,
                                                           -1, 1))


def test_partial_fit_refuses_folds_and_set_params_after_fit_is_caught(cancer, tmp_path):
    X = cancer[0].iloc[:60]
    unseeded = VAEDetector(**{**FAST, "random_state": None}, threshold_folds=2).fit(X)
    assert np.isfinite(unseeded.offset_)    # its 63-bit seed is not a random_state: reduced
    with pytest.raises(ValueError, match="partial_fit .* threshold_folds=2"):
        VAEDetector(**FAST, threshold_folds=2).partial_fit(X)
    det = VAEDetector(**FAST, threshold_folds=2).fit(X)
    det.save(tmp_path / "m.safetensors")
    loaded = VAEDetector.load(tmp_path / "m.safetensors")
    assert loaded.threshold_folds == 2 and loaded.offset_ == det.offset_
    det.set_params(threshold_folds=None)
    with pytest.raises(ValueError, match="threshold_folds=None was set after fit"):
        det.predict(X)


def test_an_array_like_without_indexing_is_split_too(cancer):
    """scikit-learn's _NotAnArray: only __array__, as fit accepts."""
    class OnlyArray:
        def __init__(self, values):
            self.values = values

        def __array__(self, dtype=None, copy=None):
            return self.values if dtype is None else self.values.astype(dtype)

    X = cancer[0].to_numpy()[:60]
    det = VAEDetector(**FAST, threshold_folds=2).fit(OnlyArray(X))
    assert det.offset_ == VAEDetector(**FAST, threshold_folds=2).fit(X).offset_


def test_vq_detector_takes_folds_too(digit_images):
    images = digit_images[0][:80]
    det = VQVAEDetector(epochs=1, conv_channels=(4,), code_dim=2, codebook_size=4,
                        random_state=0, threshold_folds=2).fit(images)
    out_of_fold = np.empty(len(images))
    for train, held_out in KFold(2, shuffle=True, random_state=0).split(images):
        member = clone(det).set_params(threshold_folds=None).fit(images[train])
        out_of_fold[held_out] = member.score_samples(images[held_out])
    assert det.offset_ == np.percentile(out_of_fold, 10)
    plain = clone(det).set_params(threshold_folds=None).fit(images)
    np.testing.assert_array_equal(det.score_samples(images), plain.score_samples(images))
