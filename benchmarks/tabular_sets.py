"""The tables of the tabular benchmark, their protocols and the selection / held-out split.

Nineteen sets: the six ADBench sets in ``<data-dir>/tabular``, the eleven UCI
sets in ``<data-dir>/tabular_uci`` (two categorical CSVs, one-hot encoded for
every method alike) and two embedded one-class protocols that need no files
(``load_digits``: the demo's; ``load_breast_cancer``: the core tests').

**Defaults are chosen on the selection half and reported on both.** The split
was drawn before any result was looked at: within each group (ADBench, UCI,
embedded) a ``numpy.random.RandomState(0)`` permutation of the sorted names, the
first half (rounded up) going to selection. It is written out here so that it
can never move.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

SELECTION = ("cardio", "mammography", "thyroid",
             "breastw", "dna", "housevotes", "soybean", "vehicle", "vowel",
             "breast_cancer")
HELD_OUT = ("annthyroid", "satellite", "shuttle",
            "glass", "ionosphere", "letter", "pima", "sonar",
            "digits")
ADBENCH = ("annthyroid", "cardio", "mammography", "satellite", "shuttle", "thyroid")
UCI = ("breastw", "dna", "glass", "housevotes", "ionosphere", "letter", "pima", "sonar",
       "soybean", "vehicle", "vowel")
EMBEDDED = ("digits", "breast_cancer")
ALL_SETS = tuple(sorted(SELECTION + HELD_OUT))


@dataclass(frozen=True)
class TableSet:
    """One benchmark set: ``splits(seed)`` gives the (X_train, X_test, y_test) to score.

    ADBench-protocol sets give one split per seed; the digits protocol gives ten
    (one per digit), whose ROC-AUCs are averaged into the set's figure.
    """

    name: str
    group: str
    splits: Callable[[int], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]

    @property
    def half(self) -> str:
        return "selection" if self.name in SELECTION else "held-out"


def adbench_split(X: np.ndarray, y: np.ndarray, seed: int):
    """ADBench, unsupervised: stratified 70/30; fit on the training part, labels unused."""
    X_train, X_test, _, y_test = train_test_split(X, y, test_size=0.3, stratify=y,
                                                  random_state=seed)
    return [(X_train, X_test, y_test)]


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return data["X"].astype(np.float64), data["y"].astype(int)


def read_categorical_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A categorical CSV one-hot encoded: every (column, value) pair a 0/1 column.

    An empty field is a value of its own ("missing"), as the tabular_uci README
    says; the encoding is the same for every method.
    """
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    y = table.pop("anomaly").astype(int).to_numpy()
    X = pd.get_dummies(table, dtype=np.float64).to_numpy()
    return X, y


def _file_set(path: Path, group: str) -> TableSet:
    reader = read_categorical_csv if path.suffix == ".csv" else read_npz

    def splits(seed: int):
        X, y = reader(path)
        return adbench_split(X, y, seed)
    return TableSet(path.stem, group, splits)


def _digits(seed: int):
    from vaeanom.datasets import digits_one_class
    return [tuple(digits_one_class(digit, seed=seed)) for digit in range(10)]


def _breast_cancer(seed: int):
    from vaeanom.datasets import breast_cancer_one_class
    return [tuple(breast_cancer_one_class(n_train=200, seed=seed))]


def table_sets(data_dir: Path | None, names=ALL_SETS) -> list[TableSet]:
    """The named sets; those on disk need ``data_dir`` (shared/data)."""
    sets = []
    for name in names:
        if name == "digits":
            sets.append(TableSet(name, "embedded", _digits))
        elif name == "breast_cancer":
            sets.append(TableSet(name, "embedded", _breast_cancer))
        else:
            folder, group = ("tabular", "adbench") if name in ADBENCH else ("tabular_uci", "uci")
            candidates = [Path(data_dir or ".") / folder / f"{name}{suffix}"
                          for suffix in (".npz", ".csv")]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                raise SystemExit(f"{name}: no {candidates[0].name} or {candidates[1].name} in "
                                 f"{Path(data_dir or '.') / folder}: pass --data-dir shared/data")
            sets.append(_file_set(path, group))
    return sets
