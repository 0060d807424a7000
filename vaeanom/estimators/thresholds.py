"""Thresholds from scores of rows the scoring model did not see (``threshold_folds``).

``contamination`` sets ``offset_`` from the training rows' own scores, as
scikit-learn does: its estimator checks test that exactly that share of the
training rows is flagged. A network scores the rows it was fitted on as more
normal than new rows of the same distribution, so on new rows that threshold
flags more than the share, on small tables far more (88% of new zeros at 0.1
on the digits demo; ``benchmarks/threshold_new_rows.py``).

Cross-fitting takes the threshold from out-of-fold scores instead, as
cross-conformal predictors do (Vovk, "Cross-conformal predictors", 2015):
the training rows are split into K folds, a copy of the detector is fitted on
all folds but one and scores the one it did not see, and the contamination
rule runs on those n out-of-fold scores. The detector itself is fitted on every
row as before, so its scores are the same bits with or without cross-fitting;
only the thresholds move. It costs K more fits.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.utils import _safe_indexing

if TYPE_CHECKING:
    from .base import BaseDetector


def check_folds(n_rows: int, folds: int, labels: np.ndarray | None = None) -> None:
    """Refuse, before any training, folds that cannot work: fewer than two rows per
    fold, or (conditional models) a label on one row, which the member fitted
    without its fold would never have seen."""
    if n_rows < 2 * folds:
        raise ValueError(f"threshold_folds={folds} needs at least {2 * folds} training rows (two "
                         f"per fold); got {n_rows}. Use fewer folds, or threshold_folds=None.")
    if labels is None:
        return
    values, counts = np.unique(labels, return_counts=True)
    if (counts < 2).any():
        alone = values[counts < 2].tolist()
        raise ValueError(f"threshold_folds={folds} fits each member on all folds but one, so a "
                         f"conditional model needs every label on two rows at least; "
                         f"{len(alone)} label(s) have one row: {alone[:5]}"
                         f"{' ...' if len(alone) > 5 else ''}. Give more rows of them, or set "
                         "threshold_folds=None.")


def fold_splits(n_rows: int, folds: int, seed: int, labels: np.ndarray | None = None
                ) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """(training rows, held-out rows) of each fold: shuffled by ``seed``, and stratified
    by ``labels`` when given, so that each member of a conditional model knows every label."""
    rows = np.zeros(n_rows)
    if labels is None:
        return KFold(folds, shuffle=True, random_state=seed).split(rows)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():   # fewer rows of a label than folds is fine: two suffice
        warnings.filterwarnings("ignore", message="The least populated class")
        return list(splitter.split(rows, labels))


def out_of_fold_thresholds(detector: BaseDetector, X, y, n_rows: int, seed: int,
                           labels: np.ndarray | None = None) -> dict[str, float]:
    """Each threshold attribute of ``detector`` (``offset_``, ...) set by its contamination
    rule on out-of-fold scores: ``threshold_folds`` members, each a clone fitted on the
    other folds with the detector's parameters and seed, score the rows they did not see.
    ``labels`` (a conditional model's training labels) stratify the folds, and only then is
    ``y`` passed on: other detectors ignore it."""
    folds = detector.threshold_folds
    y = y if labels is not None else None
    scores: dict[str, np.ndarray] = {}
    seed %= 2**32        # random_state=None drew 63 bits; an int random_state is below this
    for fold, (train, held_out) in enumerate(fold_splits(n_rows, folds, seed, labels)):
        member = clone(detector).set_params(threshold_folds=None, random_state=seed)
        try:
            member.fit(_safe_indexing(X, train), _rows(y, train))
        except ValueError as error:   # e.g. a column observed only in this fold's rows
            raise ValueError(f"threshold_folds={folds}: the copy fitted without fold "
                             f"{fold + 1} refused its rows: {error}") from error
        fold_scores = detector._fold_scores(member, _safe_indexing(X, held_out),
                                            _rows(y, held_out))
        for name, values in fold_scores.items():
            scores.setdefault(name, np.empty(n_rows))[held_out] = values
    return {name: detector._offset_from(values) for name, values in scores.items()}


def _rows(y, rows: np.ndarray):
    return None if y is None else _safe_indexing(y, rows)
