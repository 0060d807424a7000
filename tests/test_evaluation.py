"""vaeanom.evaluate: the metrics table and its plots."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from vaeanom import VAEDetector, evaluate
from vaeanom.evaluation import precision_at_n
from vaeanom.datasets import breast_cancer_one_class

from .conftest import FAST


@pytest.fixture(scope="module")
def case():
    split = breast_cancer_one_class(seed=0)
    det = VAEDetector(**{**FAST, "epochs": 20}).fit(split.X_train)
    return det, split


def test_metrics_match_sklearn(case):
    det, split = case
    table = evaluate(det, split.X_test, split.y_test)
    assert table.index.name == "metric" and list(table.columns) == ["value"]
    value = table["value"]
    anomaly = -det.score_samples(split.X_test)
    assert value["roc_auc"] == roc_auc_score(split.y_test, anomaly)
    assert value["average_precision"] == average_precision_score(split.y_test, anomaly)
    assert value["f1"] == f1_score(split.y_test, det.predict(split.X_test) == -1)
    n = split.y_test.sum()
    assert value["precision_at_n"] == split.y_test[np.argsort(-anomaly)[:n]].mean()
    assert value["n_anomalies"] == n and value["n_rows"] == len(split.y_test)
    assert value["roc_auc"] > 0.85


def test_label_conventions_agree(case):
    det, split = case
    expected = evaluate(det, split.X_test, split.y_test)
    for y in (split.y_test.astype(bool), np.where(split.y_test == 1, -1, 1)):
        assert evaluate(det, split.X_test, y).equals(expected)


def test_bad_labels_are_named(case):
    det, split = case
    with pytest.raises(ValueError, match="one class"):
        evaluate(det, split.X_test, np.zeros(len(split.y_test)))
    with pytest.raises(ValueError, match="mark anomalies"):
        evaluate(det, split.X_test, np.arange(len(split.y_test)))
    holed = split.y_test.astype(object)
    holed[4] = None
    with pytest.raises(ValueError, match="1 missing labels.*row 4"):
        evaluate(det, split.X_test, holed)


def test_a_pipeline_ending_in_the_detector_is_evaluated_as_the_detector(case):
    """A Pipeline has no offset_; its threshold is score_samples - decision_function."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    det, split = case
    passes = []
    counted = FunctionTransformer(lambda X: passes.append(1) or X)   # fitted identity, counting
    pipe = make_pipeline(counted, det)
    expected = evaluate(det, split.X_test, split.y_test)
    assert evaluate(pipe, split.X_test, split.y_test).equals(expected)
    assert len(passes) == 1            # the threshold is read off the detector: one pass over X


def test_a_pipeline_ending_in_another_detector_uses_its_decision_function():
    """No offset_ anywhere: the threshold is score_samples - decision_function."""
    from sklearn.base import BaseEstimator, OutlierMixin
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    class Detector(OutlierMixin, BaseEstimator):         # scores and a threshold of 1
        def fit(self, X, y=None):
            self.fitted_ = True
            return self

        def score_samples(self, X):
            return -np.abs(X[:, 0])

        def decision_function(self, X):
            return self.score_samples(X) + 1.0

    X = np.arange(20.0).reshape(10, 2)
    pipe = make_pipeline(StandardScaler(), Detector()).fit(X)
    y = np.r_[np.ones(2), np.zeros(6), np.ones(2)]
    assert evaluate(pipe, X, y)["value"]["n_flagged"] == 4     # |z| > 1: two rows at each end


def test_plots_are_written(case, tmp_path):
    det, split = case
    evaluate(det, split.X_test, split.y_test, plots_to=tmp_path / "plots")
    for name in ("roc.png", "scores.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=40)
       .filter(lambda rows: 0 < sum(flag for _, flag in rows) < len(rows)),
       st.randoms(use_true_random=False))
def test_precision_at_n_ignores_row_order_among_ties(rows, rng):
    """Tied scores share the places at the cut: the figure is the same in any row order,
    lies in [0, 1], and is the plain top-n share when the n-th score is not tied."""
    score = np.array([s for s, _ in rows], dtype=float)
    labels = np.array([flag for _, flag in rows], dtype=int)
    value = precision_at_n(labels, score)
    order = list(range(len(rows)))
    rng.shuffle(order)
    assert value == pytest.approx(precision_at_n(labels[order], score[order]), abs=1e-12)
    assert 0.0 <= value <= 1.0
    n = labels.sum()
    ranked = np.sort(score)[::-1]
    if n == len(rows) or ranked[n - 1] != ranked[n]:
        assert value == pytest.approx(labels[np.argsort(-score, kind="stable")[:n]].mean())


def test_anomaly_roc_auc_is_the_scorer_a_search_needs(case):
    """scikit-learn's "roc_auc" ranks decision_function (higher = normal): with anomalies
    labelled 1 it gives 1 - AUC. anomaly_roc_auc reads labels as evaluate does."""
    from sklearn.model_selection import GridSearchCV, KFold, cross_val_score

    from vaeanom import anomaly_roc_auc

    det, split = case
    expected = evaluate(det, split.X_test, split.y_test)["value"]["roc_auc"]
    for y in (split.y_test, split.y_test.astype(bool), np.where(split.y_test == 1, -1, 1)):
        assert anomaly_roc_auc(det, split.X_test, y) == expected
    folds = KFold(2, shuffle=True, random_state=0)
    ours = cross_val_score(det, split.X_test, split.y_test, scoring=anomaly_roc_auc, cv=folds)
    theirs = cross_val_score(det, split.X_test, split.y_test, scoring="roc_auc", cv=folds)
    np.testing.assert_allclose(ours, 1 - theirs)
    search = GridSearchCV(det, {"latent_dim": [2, 3]}, scoring=anomaly_roc_auc, cv=folds)
    assert search.fit(split.X_test, split.y_test).best_score_ > 0.5
