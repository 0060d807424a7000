"""Class labels of a conditional model: checked, and mapped to codes 0..K-1.

A conditional VAE learns p(x | y) for the labels (or any categorical context
column) given to ``fit``. Its classes are the distinct labels seen there, in
sorted order (``np.unique``), as scikit-learn classifiers keep ``classes_``;
scoring with a label outside them is refused, naming it.

numpy and pandas only: the torch-free runtime maps labels with it too.
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd


def _label_array(y, n_rows: int, name: str = "y") -> np.ndarray:
    """``y`` as a 1-D array of ``n_rows`` labels, none missing."""
    values = y.to_numpy() if isinstance(y, (pd.Series, pd.Index)) else y
    labels = np.asarray(values)
    as_given = np.asarray(values, dtype=object)   # numpy makes a NaN among strings 'nan'
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels, as_given = labels[:, 0], as_given[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"{name} must be one label per row (1-D); got shape {labels.shape}.")
    if len(labels) != n_rows:
        raise ValueError(f"{name} has {len(labels)} labels for {n_rows} rows; give one per row.")
    missing = pd.isna(as_given)
    if missing.any():
        raise ValueError(f"{name} has {int(missing.sum())} missing labels (first at row "
                         f"{int(np.argmax(missing))}); drop those rows or give them a label.")
    if labels.dtype == object:
        kinds = {type(v).__name__ for v in labels}
        if len({"str" if k in ("str", "str_") else "number" for k in kinds}) > 1:
            raise ValueError(f"{name} mixes strings and numbers ({sorted(kinds)}); "
                             "use one kind of label.")
    return labels


def fit_labels(y, n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes, codes, log prior) of the training labels: the sorted distinct labels, each
    row's index among them (int64) and the log of each class's share of the rows (float32)."""
    if y is None:
        raise ValueError("conditional=True learns p(x | y): pass the labels, fit(X, y).")
    labels = _label_array(y, n_rows)
    _check_savable(labels)
    _check_classes(labels)
    classes, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return classes, codes.astype(np.int64), np.log(counts / n_rows).astype(np.float32)


def _check_classes(labels: np.ndarray) -> None:
    """Refuse continuous labels at fit: a float with a fraction is a measurement, not a
    class, and each distinct value would become a class of its own (scikit-learn's
    classifiers refuse them too)."""
    if labels.dtype.kind != "f" or np.all(np.mod(labels, 1) == 0):
        return
    example = labels[np.mod(labels, 1) != 0][0]
    raise ValueError(f"y holds continuous values (e.g. {float(example):g}); a conditional model "
                     "learns p(x | y) for classes. Give class labels, or bin the values first, "
                     "e.g. pd.qcut(y, 4, labels=False).")


def _check_savable(labels: np.ndarray) -> None:
    """Refuse, at fit, labels a saved model or an export cannot hold (they are stored as
    JSON): only strings, numbers and booleans are."""
    kind = labels.dtype.kind
    if kind in "biufU":
        return
    savable = (str, bool, np.bool_, numbers.Real)
    example = next((v for v in labels if kind != "O" or not isinstance(v, savable)), None)
    if example is None:
        return
    raise ValueError(f"y holds {type(example).__name__} labels (e.g. {example!r}); a "
                     "conditional model takes strings, numbers or booleans, which it can save "
                     "and export: convert them first, e.g. y.astype(str).")


def label_codes(y, classes: np.ndarray, n_rows: int, name: str = "y") -> np.ndarray:
    """Each label's index in ``classes`` (int64); a label fit never saw is refused."""
    labels = _label_array(y, n_rows, name)
    try:
        codes = np.clip(np.searchsorted(classes, labels), 0, len(classes) - 1)
        known = classes[codes] == labels
    except TypeError:   # strings against numbers: numpy cannot order them
        known = np.zeros(len(labels), dtype=bool)
        codes = np.zeros(len(labels), dtype=np.int64)
    other_kind = _are_booleans(labels) != _are_booleans(classes)   # numpy has True == 1
    if other_kind:
        known = np.zeros(len(labels), dtype=bool)
    if not np.all(known):
        unseen = list(dict.fromkeys(labels[~known].tolist()))[:3]
        texts = {str(c) for c in classes.tolist()}
        hint = (" Labels match by value and type: 1 is not '1', nor True; convert them to "
                "the classes' type." if other_kind or any(str(u) in texts for u in unseen)
                else "")
        raise ValueError(f"{name} holds labels the model never saw in fit: {unseen}; it knows "
                         f"{classes.tolist()[:10]}{' ...' if len(classes) > 10 else ''}.{hint}")
    return codes.astype(np.int64)


def _are_booleans(labels: np.ndarray) -> bool:
    return labels.dtype.kind == "b" or (
        labels.dtype == object and len(labels) > 0
        and all(isinstance(v, (bool, np.bool_)) for v in labels))


def one_label_per_row(y, n_rows: int) -> np.ndarray:
    """``y`` for ``n_rows`` rows: one label (a scalar, for every row) or one per row."""
    if np.ndim(y) == 0:
        return np.full(n_rows, y, dtype=object if isinstance(y, str) else None)
    return _label_array(y, n_rows)
