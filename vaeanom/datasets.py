"""Data loaders: the embedded one-class protocols and local table/array files.

The embedded sets ship with scikit-learn, so the demo and the tests never need
a network or files of ours.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer, load_digits

from .fileio import atomic_write
from .tables import UNNAMED_FIRST


class OneClassSplit(NamedTuple):
    """Train on normal rows only; test labels are 1 for anomalies, 0 for normal rows."""

    X_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def digits_one_class(digit: int, seed: int = 0) -> OneClassSplit:
    """load_digits (pixels / 16): a random half of ``digit`` trains; the other half
    plus every other digit tests, the other digits being the anomalies."""
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    own = np.flatnonzero(y == digit)
    np.random.RandomState(seed).shuffle(own)
    train, test_own = own[: len(own) // 2], own[len(own) // 2:]
    test = np.concatenate([test_own, np.flatnonzero(y != digit)])
    return OneClassSplit(X[train], X[test], (y[test] != digit).astype(int))


def breast_cancer_one_class(n_train: int = 200, seed: int = 0) -> OneClassSplit:
    """load_breast_cancer: ``n_train`` random benign rows train; the rest test,
    malignant tumours being the anomalies."""
    X, y = load_breast_cancer(return_X_y=True)
    benign = np.flatnonzero(y == 1)
    train = np.random.RandomState(seed).choice(benign, n_train, replace=False)
    test = np.setdiff1d(np.arange(len(X)), train)
    return OneClassSplit(X[train], X[test], (y[test] == 0).astype(int))


TABLE_SUFFIXES = (".csv", ".parquet", ".pq", ".npy")


#: the spellings of a missing value pandas reads by default (R writes NA, SQL tools NULL).
#: In a column of numbers or booleans they are holes; in a text column they stay text: NA
#: is also Namibia and North America.
NA_TOKENS = frozenset({"#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                       "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                       "nan", "null"})
_BOOLEANS = {"True": True, "TRUE": True, "true": True,
             "False": False, "FALSE": False, "false": False}


def read_data(path: str | Path, index_col: int | str | None = None,
              categories: dict | None = None) -> pd.DataFrame | np.ndarray:
    """Read a CSV or Parquet file into a DataFrame, or a .npy file into an array.

    A CSV's empty fields are missing values, and so are pandas' other spellings of
    one (:data:`NA_TOKENS`) in a column of numbers or booleans; in a text column
    they are text. ``categories`` (a model's categorical columns -> the category
    texts it knows) are read as the text in the file, as a model fitted on text saw
    it ("01234", "4.00"); a value the model does not know that is a number is read
    as one, so that 1.0 finds a category fitted as 1. The other columns are numbers
    where they can be. A column name used twice is refused (pandas would rename the
    second "a.1").

    ``index_col`` names the column that becomes the index (CSV and Parquet):
    a column's name, or else its position (``--index-col 2024`` finds a column
    named "2024" before the 2025th column). Without it, a CSV's first column with
    an empty header is the index: that is how ``DataFrame.to_csv`` writes an index,
    and read as a feature it would tie every score to the row's number (pandas names
    such a column "Unnamed: 0", and a header spelled so is read the same). .npy files
    are read with ``allow_pickle=False``: a data file never runs code.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(f"cannot read {str(path)!r}: expected one of {', '.join(TABLE_SUFFIXES)}.")
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {str(path)!r}")
    if suffix == ".npy":
        if index_col is not None:
            raise ValueError(f"{str(path)!r} is a numpy array, which has no columns to take an "
                             "index from; drop --index-col (index_col), or use a CSV or Parquet "
                             "table.")
        return np.load(path, allow_pickle=False)
    if suffix == ".csv":
        _refuse_other_separators(path)   # before pandas, whose errors would not say it
        header = list(pd.read_csv(path, nrows=0).columns)
        _refuse_repeated_names(path)
        if index_col is not None:  # pandas fails obscurely on a missing one in some files
            index_col = index_column(index_col, header, path)
        known = {name: texts for name, texts in (categories or {}).items() if name in header}
        frame = pd.read_csv(path, index_col=index_col, keep_default_na=False, na_values=[""],
                            dtype={name: str for name in known} or None)
        frame = _na_tokens_as_holes(frame, skip=known)
        for name, texts in known.items():
            if name in frame.columns:
                frame[name] = _numbers_where_unknown(frame[name], texts)
        return frame if index_col is not None else _written_index(frame)
    frame = pd.read_parquet(path)
    if index_col is None or str(index_col) in map(str, frame.index.names):  # the file's own
        return frame
    if any(name is not None for name in frame.index.names):
        frame = frame.reset_index()      # a named index the file keeps stays, as a column
    column = index_column(index_col, list(frame.columns), path)
    return frame.set_index(frame.columns[column] if isinstance(column, int) else column)


def _na_tokens_as_holes(frame: pd.DataFrame, skip) -> pd.DataFrame:
    """Each text column whose values are numbers, or booleans, and :data:`NA_TOKENS`,
    as those numbers or booleans with holes where the tokens were (what pandas reads
    by default); other text columns keep their text."""
    for name in frame.columns:
        column = frame[name]
        if name in skip or not pd.api.types.is_string_dtype(column.dtype):
            continue
        tokens = column.isin(NA_TOKENS)
        if not tokens.any():
            continue
        values = column[~tokens & column.notna()]
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.notna().all():
            frame[name] = pd.to_numeric(column.where(~tokens))
        elif values.isin(_BOOLEANS).all():
            frame[name] = column.where(~tokens).map(_BOOLEANS, na_action="ignore")
    return frame


def _numbers_where_unknown(column: pd.Series, known) -> pd.Series:
    """A text column with each value ``known`` does not hold, and that is a number, as
    that number (object dtype)."""
    unknown = column.notna() & ~column.isin(list(known))
    numbers = pd.to_numeric(column[unknown], errors="coerce").dropna()
    if numbers.empty:
        return column
    column = column.astype(object)
    column[numbers.index] = numbers.to_numpy(dtype=object)
    return column


def _refuse_repeated_names(path: Path) -> None:
    """A CSV header that names a column twice: pandas renames the second "a.1", and a
    model would be fitted on a column the file does not have."""
    import csv

    with path.open(newline="", encoding="utf-8-sig") as handle:
        names = next(csv.reader(handle), [])
    repeated = sorted({name for name in names if names.count(name) > 1 and name})
    if repeated:
        raise ValueError(f"{str(path)!r} names column(s) {repeated} more than once; give each "
                         "column its own name.")


def _written_index(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with an unnamed first column (``to_csv``'s index) as its index."""
    if frame.shape[1] < 2 or frame.columns[0] != UNNAMED_FIRST:
        return frame
    return frame.set_index(UNNAMED_FIRST).rename_axis(None)


def index_column(index_col: int | str, columns: list, path: Path) -> int | str:
    """The index column as a name in ``columns``, else as a position; refused by name."""
    if str(index_col) in map(str, columns):
        return next(c for c in columns if str(c) == str(index_col))
    if isinstance(index_col, int) and 0 <= index_col < len(columns):
        return index_col
    raise ValueError(f"{str(path)!r} has no column {index_col!r} for the index; "
                     f"its columns are {columns[:8]}.")


#: the separators a CSV is refused for, as its error shows them
OTHER_SEPARATORS = {";": "';'", "\t": "tabs", "|": "'|'"}


def _refuse_other_separators(path: Path) -> None:
    """A CSV whose header has no comma but splits on ';', a tab or '|', as its first row
    does (or it has no row), was written with that separator (common where the comma is
    the decimal mark): say so, instead of pandas' tokenizing error, a misleading one
    when a text field holds a comma, or one text column fitted. A one-column file whose
    name merely holds the character, over values that do not, is read as it is; so is a
    quoted name. Excel's ``sep=;`` first line names the separator outright."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as file:
        lines = (line.rstrip("\r\n") for line in file if line.strip())
        header, first = next(lines, ""), next(lines, "")
    declared = header[4:] if header.lower().startswith("sep=") and len(header) == 5 else None
    if declared in OTHER_SEPARATORS:
        raise ValueError(
            f"{str(path)!r} starts with {header!r} (as Excel writes it): its fields are "
            f"separated by {OTHER_SEPARATORS[declared]}, and vaeanom reads comma-separated "
            f"files. Rewrite it with commas: pd.read_csv(path, sep={declared!r}, skiprows=1)"
            ".to_csv(new_path, index=False) (add decimal=',' where commas are its decimal "
            "marks).")
    if declared is not None or "," in header:
        return
    for separator, shown in OTHER_SEPARATORS.items():
        if _n_fields(header, separator) > 1 and (not first or _n_fields(first, separator) > 1):
            raise ValueError(
                f"{str(path)!r} reads as one column named {header!r}: its fields look "
                f"separated by {shown}, and vaeanom reads comma-separated files. Rewrite it "
                f"with commas: pd.read_csv(path, sep={separator!r}).to_csv(new_path, "
                "index=False) (add decimal=',' where commas are its decimal marks).")


def _n_fields(line: str, separator: str) -> int:
    """How many fields ``line`` splits into on ``separator``, quotes respected."""
    return len(next(csv.reader([line], delimiter=separator), []))


def write_frame(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a DataFrame as CSV or Parquet (by suffix), atomically, keeping its index."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        atomic_write(path, lambda tmp: frame.to_csv(tmp))
    elif suffix in (".parquet", ".pq"):
        atomic_write(path, lambda tmp: frame.to_parquet(tmp))
    else:
        raise ValueError(f"cannot write {str(path)!r}: use a .csv or .parquet file name.")
