"""Thresholds from scores of rows the scoring model did not see (``threshold_folds``).

``contamination`` sets ``offset_`` from the training rows' own scores, as
scikit-learn does: its estimator checks test that exactly that share of the
training rows is flagged. A network scores the rows it was fitted on as more
normal than new rows of the same distribution, so on new rows that threshold
flags more than the share, on small tables far more (88% of new zeros at 0.1
on the digits demo; ``benchmarks/threshold_new_rows.py``).

A cross-fitted threshold takes the rule to out-of-fold scores instead: the
training rows are split into K folds, a copy of the detector is fitted on all
folds but one and scores the one it did not see, and the contamination rule
runs on those n out-of-fold scores. The detector itself is fitted on every row
as before, so its scores are the same bits with or without it; only the
thresholds move. It costs K more fits. The folds resemble cross-conformal
calibration (Vovk, "Cross-conformal predictors", 2015), but the threshold is
applied to the full model's scores, not to each copy's, so it carries no
coverage guarantee: it is a measured heuristic (9-11% of new normal rows at
0.1 for the rows default on the benchmark's three tables; 11-15% for
``"latent_knn"``).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import KFold, StratifiedKFold

from ..checks import column_names
from ..training import TrainingDivergedError

if TYPE_CHECKING:
    from .base import BaseDetector

#: (training rows, held-out rows) of each fold
Folds = list[tuple[np.ndarray, np.ndarray]]


def folds_for(detector: BaseDetector, x: np.ndarray, seed: int,
              labels: np.ndarray | None = None) -> Folds:
    """The folds of ``threshold_folds`` over the preprocessed rows ``x`` (NaN: a hole),
    checked before any training: shuffled by ``seed``, stratified by ``labels`` (a
    conditional model's), and refused where a copy could not be fitted."""
    folds = detector.threshold_folds
    if len(x) < 2 * folds:
        raise ValueError(f"threshold_folds={folds} needs at least {2 * folds} training rows (two "
                         f"per fold); got {len(x)}. Use fewer folds, or threshold_folds=None.")
    if labels is not None:
        _check_labels(labels, folds)
    rows = np.zeros(len(x))
    if labels is None:
        splits = list(KFold(folds, shuffle=True, random_state=_seed(seed)).split(rows))
    else:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=_seed(seed))
        with warnings.catch_warnings():   # fewer rows of a label than folds: two suffice
            warnings.filterwarnings("ignore", message="The least populated class")
            splits = list(splitter.split(rows, labels))
    _check_observed(detector, x, splits)
    return splits


def _check_labels(labels: np.ndarray, folds: int) -> None:
    """Every label on two rows at least, so that no copy misses one its fold holds
    out; and one label on ``folds`` rows at least, which stratified folds need."""
    values, counts = np.unique(labels, return_counts=True)
    alone = values[counts < 2].tolist()
    if alone:
        raise ValueError(f"threshold_folds={folds} fits each copy on all folds but one, so a "
                         f"conditional model needs every label on two rows at least; "
                         f"{len(alone)} label(s) have one row: {alone[:5]}"
                         f"{' ...' if len(alone) > 5 else ''}. Give more rows of them, or set "
                         "threshold_folds=None.")
    if counts.max() < folds:
        raise ValueError(f"threshold_folds={folds} stratifies the folds by label, and no label "
                         f"has {folds} rows (the most: {counts.max()}). Use threshold_folds="
                         f"{max(2, int(counts.max()))} or fewer, or threshold_folds=None.")


def _check_observed(detector: BaseDetector, x: np.ndarray, splits: Folds) -> None:
    """Each copy sees an entry of every column (fit refuses a column with none)."""
    if x.ndim != 2:
        return
    observed = ~np.isnan(x)
    for fold, (train, _) in enumerate(splits):
        empty = np.flatnonzero(~observed[train].any(axis=0) & observed.any(axis=0))
        if len(empty):
            names = column_names(getattr(detector, "feature_names_in_", None), x.shape[1])
            counts = observed.sum(axis=0)
            shown = ", ".join(f"{names[j]!r} ({counts[j]} rows)" for j in empty[:5])
            raise ValueError(f"threshold_folds={detector.threshold_folds}: the copy fitted "
                             f"without fold {fold + 1} would see no entry of column(s) {shown}, "
                             "which fit refuses. Use fewer folds, drop the column, or set "
                             "threshold_folds=None.")


def out_of_fold_thresholds(detector: BaseDetector, X, y, splits: Folds, seed: int,
                           conditional: bool = False) -> dict[str, float]:
    """Each threshold attribute of ``detector`` (``offset_``, ...) set by its contamination
    rule on out-of-fold scores: one copy per fold, fitted on the other folds with the
    detector's parameters and ``seed`` (reduced below 2**32 when random_state=None drew
    it), scores the rows it did not see. ``y`` goes to the copies of a conditional model
    only; other detectors ignore it. The copies train silently: the detector's own fit
    has shown its warnings and progress once."""
    scores: dict[str, np.ndarray] = {}
    n_rows = sum(len(held_out) for _, held_out in splits)
    y = y if conditional else None
    for fold, (train, held_out) in enumerate(splits):
        member = clone(detector).set_params(threshold_folds=None, random_state=_seed(seed),
                                            verbose=0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                member.fit(_take(X, train), _rows(y, train))
        except (ValueError, TrainingDivergedError) as error:
            raise type(error)(f"threshold_folds={detector.threshold_folds}: the copy fitted "
                              f"without fold {fold + 1} failed ({error}). Use fewer folds, or "
                              "set threshold_folds=None.") from error
        fold_scores = detector._fold_scores(member, _take(X, held_out), _rows(y, held_out))
        for name, values in fold_scores.items():
            scores.setdefault(name, np.empty(n_rows))[held_out] = values
    return {name: detector._offset_from(values) for name, values in scores.items()}


def _seed(seed: int) -> int:
    """``seed`` as a random_state: random_state=None drew 63 bits; an int one is below 2**32."""
    return seed % 2**32


def _rows(y, rows: np.ndarray):
    return None if y is None else _take(y, rows)


def _take(X, rows: np.ndarray):
    """The rows of X, in a container fit takes as it took X: pandas by position, a
    pyarrow Table by ``take``, a list or tuple as a list, anything else (arrays, tensors,
    array-likes with ``__array__`` only) as a numpy array."""
    if hasattr(X, "iloc"):
        return X.iloc[rows]
    if hasattr(X, "schema") and hasattr(X, "take"):
        return X.take(rows)
    if isinstance(X, (list, tuple)):
        return [X[i] for i in rows]
    return np.asarray(X)[rows]
