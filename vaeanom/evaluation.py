"""How good is a fitted detector on labelled data: one tidy table from sklearn.metrics."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import (average_precision_score, f1_score, precision_score, recall_score,
                             roc_auc_score)
from sklearn.utils.validation import check_consistent_length, column_or_1d

from .checks import is_outlier, rankable_scores


def anomaly_roc_auc(detector, X, y) -> float:
    """A scorer for ``GridSearchCV(..., scoring=anomaly_roc_auc)`` and ``cross_val_score``:
    ROC-AUC of ``-score_samples(X)`` against ``y`` with anomalies as the positive class
    (1, True, or -1 as ``predict`` marks them), as :func:`evaluate` reads labels.

    scikit-learn's ``scoring="roc_auc"`` ranks ``decision_function``, which is higher
    for *normal* rows: with anomalies labelled 1 (PyOD's habit) it gives 1 - AUC, and a
    search picks the worst setting. Higher is better here, as scorers need.
    """
    labels, scores = _labels_and_scores(detector, X, y)
    return float(roc_auc_score(labels, -rankable_scores(scores)))


def _labels_and_scores(detector, X, y) -> tuple[np.ndarray, np.ndarray]:
    """``y`` read as 0/1 anomaly labels, and ``score_samples(X)``, checked to match."""
    labels = anomaly_labels(y)
    scores = np.asarray(detector.score_samples(X), dtype=np.float64)
    check_consistent_length(scores, labels)
    return labels, scores


def anomaly_labels(y, *, both_classes: bool = True) -> np.ndarray:
    """y as 0/1 with 1 = anomaly; accepts bool, 0/1 and scikit-learn's +1/-1. A single
    class is refused where a metric needs both (``both_classes``); otherwise all 1s are
    refused too, since they are anomalies as 0/1 and inliers as ``predict`` marks them."""
    y = column_or_1d(np.asarray(y, dtype=object) if isinstance(y, list) else y)
    missing = pd.isna(y)
    if missing.any():
        raise ValueError(f"y has {int(missing.sum())} missing labels (first at row "
                         f"{int(np.argmax(missing))}); label every row, or leave those out.")
    values = set(np.unique(y).tolist())
    if values <= {0, 1}:
        labels = y.astype(int)
    elif values <= {-1, 1}:
        labels = (y == -1).astype(int)  # scikit-learn's outlier convention: -1 = outlier
    else:
        raise ValueError(f"y must mark anomalies with 1 (or True, or -1 as predict does) and "
                         f"normal rows with 0; got values {sorted(values)[:5]}.")
    if not both_classes and values == {1} and not isinstance(next(iter(values)), bool):
        raise ValueError("y is all 1: anomalies as 0/1 labels, inliers as predict's -1/+1. "
                         "Pass True for anomalies (or -1 as predict does), False for normal "
                         "rows.")
    if both_classes and labels.min() == labels.max():
        raise ValueError("y holds one class only; ROC-AUC needs normal rows and anomalies.")
    return labels


def evaluate(detector, X, y, *, plots_to: str | os.PathLike | None = None) -> pd.DataFrame:
    """Metrics of a fitted detector on (X, y), one row per metric.

    ``y`` marks anomalies with 1 (or True) and normal rows with 0, or anomalies with -1
    and normal rows with +1, as ``predict`` does. Threshold-free
    metrics rank by ``-score_samples`` (ROC-AUC, average precision,
    precision@n with n the number of true anomalies); precision, recall and F1
    use the fitted threshold, i.e. ``predict``; then the counts n_anomalies, n_flagged and
    n_rows. With ``plots_to``, the ROC
    curve (``roc.png``) and the score histograms by class (``scores.png``)
    are saved there.
    """
    labels, scores = _labels_and_scores(detector, X, y)
    offset = _threshold_of(detector, X, scores)
    anomaly_score = -rankable_scores(scores)
    flagged = is_outlier(scores, offset).astype(int)
    n_true = int(labels.sum())
    metrics = {
        "roc_auc": roc_auc_score(labels, anomaly_score),
        "average_precision": average_precision_score(labels, anomaly_score),
        "precision_at_n": precision_at_n(labels, anomaly_score),
        "precision": precision_score(labels, flagged, zero_division=0.0),
        "recall": recall_score(labels, flagged, zero_division=0.0),
        "f1": f1_score(labels, flagged, zero_division=0.0),
        "n_anomalies": n_true,
        "n_flagged": int(flagged.sum()),
        "n_rows": len(labels),
    }
    if plots_to is not None:
        from .plotting import save_roc_curve, save_score_histograms

        folder = Path(plots_to)
        save_roc_curve(labels, anomaly_score, folder / "roc.png")
        save_score_histograms(scores, labels, offset, folder / "scores.png")
    return pd.DataFrame({"value": metrics}).rename_axis("metric")


def precision_at_n(labels: np.ndarray, anomaly_score: np.ndarray) -> float:
    """The share of anomalies among the n highest anomaly scores, n the number of anomalies.

    Rows tied with the n-th score share the places left among them: each counts
    by the fraction of places left, so the figure does not depend on row order.
    """
    n = int(labels.sum())
    cut = np.sort(anomaly_score)[::-1][n - 1]
    above, tied = anomaly_score > cut, anomaly_score == cut
    places_left = n - int(above.sum())
    hits = labels[above].sum() + places_left * labels[tied].mean()
    return float(hits / n)


def _threshold_of(detector, X, scores: np.ndarray) -> float:
    """The threshold ``predict`` applies: a vaeanom estimator refuses one set under
    another score kind than it now computes; an ``OnnxModel`` keeps its own; a
    Pipeline or a search ending in a detector shows it as ``score_samples(X) -
    decision_function(X)``, as scikit-learn's outlier detectors define it."""
    final = _final_detector(detector)
    threshold = getattr(final, "_threshold", None)
    if threshold is not None:
        return threshold("evaluate")
    if hasattr(final, "offset_"):
        return final.offset_
    if not hasattr(detector, "decision_function"):
        raise TypeError(f"evaluate needs a fitted outlier detector with score_samples and "
                        f"decision_function; {type(detector).__name__} has no threshold.")
    gap = scores - np.asarray(detector.decision_function(X), dtype=np.float64)
    finite = np.isfinite(gap)
    return float(np.median(gap[finite])) if finite.any() else float("-inf")


def _final_detector(detector):
    """The detector at the end of a Pipeline or a fitted search, whose threshold is the
    whole's: read there, it costs no second pass over X."""
    while True:
        if hasattr(detector, "best_estimator_"):
            detector = detector.best_estimator_
        elif hasattr(detector, "steps") and detector.steps:
            detector = detector.steps[-1][1]
        else:
            return detector


