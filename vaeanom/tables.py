"""Mixed-type tables with holes: how a DataFrame's columns become numbers and back.

A column is *categorical* when its dtype is object, string or ``category``;
numbers, booleans and nullable integers are *numeric*; dates, durations and
complex numbers are refused by name (:func:`check_frame_columns`). A
:class:`TableSchema` learned in ``fit`` keeps, for each categorical column,
the sorted categories seen there, and encodes any later table as one float64
array of shape (n, d) in the caller's column order:

- a numeric entry is its value;
- a categorical entry is its category's code 0..K-1, or K (the reserved
  "unknown" slot) for a category ``fit`` never saw: never an error, never
  dropped, and the model gives that slot almost no probability, so the row
  scores as very unusual. A whole number finds its category whether fit saw it
  as 1 or 1.0 (integer codes turn float in pandas once a column holds a hole);
- a missing entry (NaN, None, pd.NA, NaT, an empty CSV field) is NaN in either
  kind of column. The likelihood skips it and the encoder sees a mask.

numpy and pandas only: the torch-free runtime imports this module.
"""

from __future__ import annotations

import decimal
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .checks import TABLE_MODEL, are_bytes

#: a categorical column with at least this many categories, one for at least
#: half of its observed rows, looks like an identifier (see TableSchema.learn)
IDENTIFIER_MIN_CATEGORIES = 20


def is_categorical_dtype(dtype) -> bool:
    """True for the dtypes vaeanom models as categories: object, string and ``category``."""
    return not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
                or pd.api.types.is_datetime64_any_dtype(dtype)
                or pd.api.types.is_timedelta64_dtype(dtype))


def categorical_columns(X) -> list[str]:
    """Names of the categorical columns of a DataFrame (none for anything else)."""
    if not isinstance(X, pd.DataFrame):
        return []
    return [str(c) for c, dtype in X.dtypes.items() if is_categorical_dtype(dtype)]


def numbers_of(X: pd.DataFrame) -> np.ndarray | None:
    """A DataFrame of numbers as float64 (n, d), NaN for a missing value, whatever its
    columns' dtypes: bool, nullable (Int64, Float64, boolean), pyarrow, or object
    holding only numbers, booleans and holes, which is what pandas makes of a bool or
    int column that gets a None (and ``read_csv`` of a bool column with an empty
    field). None when a column holds anything else, such as text."""
    if non_numeric_columns(X):
        return None
    columns = [_numeric(column, name) for name, column in X.items()]
    return np.column_stack(columns) if columns else np.empty((len(X), 0))


#: what pandas calls a CSV's first column when its header is empty, as ``to_csv`` writes
#: an index: read as the index, never as a feature (:func:`vaeanom.datasets.read_data`)
UNNAMED_FIRST = "Unnamed: 0"


def as_numpy_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each nullable (Int64, Float64) or pyarrow numeric column in its numpy
    dtype, float64 with NaN where it has holes; pyarrow decimals as float64; other
    columns as they are.

    ``dtype_backend="pyarrow"`` readers, Arrow batches and pandas' nullable types give
    such columns, whose ``to_numpy()`` is an object array: a model fitted on an array
    (every image model) would refuse it as not numeric. Columns are converted by
    position, so two columns sharing a label keep their own dtypes.
    """
    return _converted(frame, _numpy_dtype_of)


def decimals_as_floats(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its pyarrow decimal columns as float64, holes as NaN; the rest as it is.

    A SQL NUMERIC column read with the pyarrow backend (``read_parquet``,
    ``read_sql``) is a decimal: numbers to pandas, but a hole in it is ``pd.NA``,
    which no float() takes.
    """
    return _converted(frame, _float_if_decimal)


def _float_if_decimal(dtype) -> np.dtype | None:
    return np.dtype(np.float64) if _is_arrow(dtype, "is_decimal") else None


def _numpy_dtype_of(dtype) -> np.dtype | None:
    """The numpy dtype a nullable, pyarrow numeric or decimal column converts to; None for
    any other column (numpy's own dtypes have no ``numpy_dtype``)."""
    numpy_dtype = getattr(dtype, "numpy_dtype", None)
    if numpy_dtype is not None and numpy_dtype.kind in "iuf":
        return numpy_dtype
    return _float_if_decimal(dtype)


def _converted(frame: pd.DataFrame, target) -> pd.DataFrame:
    """``frame`` with each column whose ``target(dtype)`` is a dtype converted to it (to
    float64 where the column has holes), by position; ``frame`` itself if none is."""
    converted = frame
    for position, (_, column) in enumerate(frame.items()):
        numpy_dtype = target(column.dtype)
        if numpy_dtype is None:
            continue
        if converted is frame:
            converted = frame.copy(deep=False)
        converted.isetitem(position, column.astype(np.float64 if column.isna().any()
                                                   else numpy_dtype))
    return converted


def _is_arrow(dtype, kind: str) -> bool:
    """Whether ``dtype`` is a pyarrow one for which ``pyarrow.types.<kind>`` holds, e.g.
    "is_decimal", or "is_time" (a time of day, which pandas sees as no date type at all)."""
    arrow_type = getattr(dtype, "pyarrow_dtype", None)
    if arrow_type is None:
        return False
    import pyarrow   # there: the dtype is pyarrow's
    return getattr(pyarrow.types, kind)(arrow_type)


def integer_bytes(table):
    """A DataFrame of integer columns holding only whole numbers in 0..255, as uint8;
    anything else unchanged. For a model that takes 8-bit pixels, fed from a file that
    cannot carry the dtype: pandas reads a CSV's 0..255 as int64, Parquet writers
    store int64 by default and Spark has no unsigned byte. Anything not converted is
    left for the model to refuse with its own message."""
    if not isinstance(table, pd.DataFrame) or table.empty:
        return table
    table = as_numpy_dtypes(table)
    if not all(pd.api.types.is_integer_dtype(dtype) for dtype in table.dtypes):
        return table
    return table.astype(np.uint8) if are_bytes(table.to_numpy()) else table


def non_numeric_columns(X: pd.DataFrame) -> list[str]:
    """Names of the columns :func:`numbers_of` cannot read as numbers."""
    return [str(name) for name, column in X.items()
            if is_categorical_dtype(column.dtype) and not _holds_numbers(column)]


def shown_columns(names: list[str], limit: int = 8) -> str:
    """Column names for an error message: the first ``limit``, quoted, then "..."."""
    return ", ".join(repr(c) for c in names[:limit]) + (" ..." if len(names) > limit else "")


def numbers_only_error(text: list[str]) -> ValueError:
    """The error for a model fitted on numbers given the non-numeric columns ``text``:
    the estimator and the torch-free runtime say the same."""
    return ValueError(f"X has non-numeric column(s) {shown_columns(text)}, but this model "
                      f"was fitted on numbers only. Pass the numbers it was fitted on, or "
                      f"refit on a DataFrame holding those columns with {TABLE_MODEL}, "
                      "which models them as categories.")


def _holds_numbers(column: pd.Series) -> bool:
    """An object column whose every observed value is a real number, a boolean or a
    ``Decimal`` (what ``pd.read_sql`` gives for a SQL NUMERIC column)."""
    return column.dtype == object and all(
        isinstance(v, (bool, np.bool_, numbers.Real, decimal.Decimal))
        for v in column[column.notna()])


def numbers_read_as_numbers(X):
    """X with each object column that holds only numbers, booleans and holes as float64.

    What fit sees: ``df.astype(object).where(df.notna(), None)``, JSON and database
    loads give such columns, and modelling them as categories made 7 and 7.0 two
    categories and 7.5 an unseen one, where the same values as float64 are numbers.
    Columns with no observed value are left for fit to refuse by name.
    """
    if not isinstance(X, pd.DataFrame):
        return X
    numeric = [name for name, column in X.items()
               if _holds_numbers(column) and column.notna().any()]
    if not numeric:
        return X
    X = X.copy()
    for name in numeric:
        X[name] = _numeric(X[name], name)
    return X


def check_frame_columns(X) -> None:
    """Refuse, by name, DataFrame columns that vaeanom cannot take: a name used twice, and
    dates, durations and complex numbers, which are neither numbers nor categories to it."""
    if not isinstance(X, pd.DataFrame):
        return
    repeated = X.columns[X.columns.duplicated()].unique().tolist()
    if repeated:
        raise ValueError(f"X has more than one column named "
                         f"{', '.join(repr(c) for c in repeated[:5])}: give each column a name "
                         "of its own.")
    for name, dtype in X.dtypes.items():
        held = (pd.api.types.infer_dtype(X[name], skipna=True) if dtype == object
                else None)                 # what an object column's values are, in C
        column = f"X[{name!r}]" if held is None else f"pd.to_datetime(X[{name!r}])"
        if pd.api.types.is_datetime64_any_dtype(dtype) or held in ("date", "datetime"):
            _refuse_time(name, held or dtype, f"t = {column}; then t.dt.day_of_week or "
                                              "(t - t.min()).dt.total_seconds()")
        if held == "time" or _is_arrow(dtype, "is_time"):
            _refuse_time(name, held or dtype, f"X[{name!r}].map(lambda t: 3600 * t.hour + "
                                              "60 * t.minute + t.second) (seconds since midnight)")
        if (pd.api.types.is_timedelta64_dtype(dtype) or getattr(dtype, "kind", None) == "m"
                or held == "timedelta"):
            _refuse_time(name, held or dtype, f"X[{name!r}].dt.total_seconds()")
        if isinstance(dtype, pd.PeriodDtype) or held == "period":
            _refuse_time(name, held or dtype, f"X[{name!r}].dt.month or X[{name!r}].dt.year")
        if pd.api.types.is_complex_dtype(dtype) or held == "complex":
            raise ValueError(f"column {str(name)!r} holds complex numbers; pass real numbers "
                             "(e.g. the real and imaginary parts as two columns).")


def _refuse_time(name, dtype, example: str) -> None:
    raise ValueError(f"column {str(name)!r} holds {dtype} values, which vaeanom models neither "
                     f"as numbers nor as categories: turn them into numbers, e.g. {example}, "
                     "or drop the column.")


@dataclass(frozen=True)
class TableSchema:
    """Per column: ``None`` for a numeric column, or the categories seen in ``fit``.

    Attributes
    ----------
    categories : tuple of (tuple of str or None)
        One entry per column, in the order of the table's columns: the text of
        each category, sorted (a code is a position here).
    levels : tuple of (dict or None), or None
        How decoded categories are given back, per categorical column:
        ``{"values": [...], "ordered": bool}``, the categories as fit saw them
        (1, not "1"; True, not "True"; other than str, int, float and bool: their
        text), in the table's order (a ``category`` column's own order, else
        sorted), and whether that order is meaningful. None (a model saved
        before levels were kept): the texts, sorted, unordered.
    """

    categories: tuple[tuple[str, ...] | None, ...]
    levels: tuple[dict | None, ...] | None = None

    @classmethod
    def learn(cls, X) -> TableSchema:
        """The schema of a training table: a DataFrame, or a numeric array (all numeric)."""
        if not isinstance(X, pd.DataFrame):
            return cls((None,) * np.shape(X)[1])
        categories, levels = [], []
        for name, column in X.items():
            if not is_categorical_dtype(column.dtype):
                categories.append(None)
                levels.append(None)
                continue
            first = _first_by_text(column[column.notna()].tolist())
            if not first:
                raise ValueError(f"column {str(name)!r} holds no value at all (every entry is "
                                 "missing): drop it before fit.")
            _warn_if_identifier(name, len(first), int(column.notna().sum()))
            categories.append(tuple(sorted(first)))
            levels.append(_levels(column, first))
        return cls(tuple(categories), tuple(levels))

    @property
    def cardinalities(self) -> tuple[int, ...]:
        """Per column: 0 for numeric, K (categories seen in fit) for categorical."""
        return tuple(0 if c is None else len(c) for c in self.categories)

    @property
    def has_categories(self) -> bool:
        return any(c is not None for c in self.categories)

    def encode(self, X) -> np.ndarray:
        """A table in the columns of this schema -> float64 (n, d): values, codes, NaN holes.

        ``X`` is a DataFrame whose columns are already checked (names, order,
        width), or, for an all-numeric schema, a numeric array.
        """
        if not isinstance(X, pd.DataFrame):
            return np.asarray(X, dtype=np.float64)
        out = np.empty(X.shape, dtype=np.float64)
        for j, (name, column) in enumerate(X.items()):
            known = self.categories[j]
            out[:, j] = (_numeric(column, name) if known is None
                         else _codes(column, known))
        return out

    def decode(self, values: np.ndarray, columns, index=None) -> pd.DataFrame:
        """Numbers and codes (n, d) -> a DataFrame with the categories' names restored
        (and ``index``, the rows' labels, when given).

        A code is rounded and clipped to the categories seen in fit (the
        decoder's means of categorical columns are already the most likely
        category's code).
        """
        frame = {}
        for j, name in enumerate(columns):
            known = self.categories[j]
            if known is None:
                frame[name] = values[:, j]
                continue
            codes = np.clip(np.rint(values[:, j]), 0, len(known) - 1).astype(np.int64)
            level = None if self.levels is None else self.levels[j]
            if level is None:
                frame[name] = pd.Categorical.from_codes(codes, categories=list(known))
                continue
            by_text = {str(v): v for v in level["values"]}
            originals = np.empty(len(known), dtype=object)
            originals[:] = [by_text[text] for text in known]
            frame[name] = pd.Categorical(originals[codes], categories=level["values"],
                                         ordered=level["ordered"])
        return pd.DataFrame(frame, index=index)

    def to_json(self) -> list[list[str] | None]:
        return [None if c is None else list(c) for c in self.categories]

    def levels_json(self) -> list[dict | None] | None:
        return None if self.levels is None else [None if lv is None else dict(lv)
                                                 for lv in self.levels]

    @classmethod
    def from_json(cls, data: Any, levels: Any = None) -> TableSchema:
        """The schema from its JSON forms (``to_json``, ``levels_json``), or ValueError
        when they are not what fit writes."""
        if not isinstance(data, list) or not data:
            raise ValueError("categories must be a non-empty list")
        categories = []
        for entry in data:
            if entry is None:
                categories.append(None)
            elif (isinstance(entry, list) and entry and all(isinstance(s, str) for s in entry)
                  and len(set(entry)) == len(entry)):
                categories.append(tuple(entry))
            else:
                raise ValueError("each column's categories must be None or distinct strings")
        if levels is None:
            return cls(tuple(categories))
        if not isinstance(levels, list) or len(levels) != len(categories):
            raise ValueError("levels must be a list with an entry per column")
        for known, level in zip(categories, levels):
            if not _are_levels_of(level, known):
                raise ValueError("each column's levels must be None for a numeric column, else "
                                 "{'values': its categories as fit saw them, 'ordered': bool}")
        return cls(tuple(categories), tuple(None if lv is None else dict(lv) for lv in levels))


def _first_by_text(values: list) -> dict[str, Any]:
    """Each distinct text among ``values`` (a category's name) -> the first value with
    it, as JSON keeps it."""
    first: dict[str, Any] = {}
    for value in values:
        first.setdefault(str(value), _plain(value))
    return first


def _levels(column: pd.Series, first: dict[str, Any]) -> dict:
    """A categorical column's categories as fit saw them, in the table's order (see
    :class:`TableSchema`): ``first`` (:func:`_first_by_text` of its observed values)."""
    if not pd.Index(list(first.values()), dtype=object).is_unique:   # 1 == True == 1.0
        return {"values": sorted(first), "ordered": False}           # so: their texts
    if isinstance(column.dtype, pd.CategoricalDtype):   # its order; 1 and "1" are one
        order = list({str(c): first[str(c)] for c in column.cat.categories
                      if str(c) in first}.values())
        return {"values": order, "ordered": bool(column.cat.ordered)}
    values = list(first.values())
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        values.sort()                         # numbers by value: 2 before 10
    else:
        values.sort(key=str)
    return {"values": values, "ordered": False}


def _plain(value) -> Any:
    """A category as JSON keeps it: a str, a bool, an int or a finite float as it is;
    anything else (a date, a Decimal, NaN-like text) as its text."""
    if isinstance(value, np.generic):     # numpy's scalars in an object column
        value = value.item()
    if isinstance(value, (str, bool)):
        return value
    if isinstance(value, int) and abs(value) < 2**63:
        return value
    if isinstance(value, float) and np.isfinite(value):
        return value
    return str(value)


def _are_levels_of(level: Any, known: tuple[str, ...] | None) -> bool:
    """Whether ``level`` is what fit writes for a column of categories ``known``."""
    if known is None or level is None:
        return known is None and level is None
    if not isinstance(level, dict) or set(level) != {"values", "ordered"}:
        return False
    values = level["values"]
    return (isinstance(level["ordered"], bool) and isinstance(values, list)
            and all(_plain(v) == v for v in values)
            and sorted(str(v) for v in values) == sorted(known) and len(values) == len(known)
            and pd.Index(values, dtype=object).is_unique)


def _warn_if_identifier(name, n_categories: int, n_observed: int) -> None:
    """Warn when a text column is nearly all distinct values (an ID, a timestamp, free
    text): as a category it says nothing about a row, and each value fit did not see
    takes the "unknown" slot, so every new row would score as anomalous."""
    if n_categories >= max(IDENTIFIER_MIN_CATEGORIES, n_observed / 2):
        warnings.warn(
            f"column {str(name)!r} has {n_categories} distinct values in {n_observed} rows: "
            "an identifier, a timestamp or free text? As a category it says nothing about a "
            "row, and every value fit did not see will make a row look anomalous; fit and "
            "scoring time also grow with rows x categories (10,000 of each: about 2 minutes "
            f"to fit on 2 cores). Drop it (X.drop(columns=[{name!r}]); on the command line "
            f"--drop {str(name)!r}), make it the index (--index-col), or turn it into numbers.",
            UserWarning, stacklevel=2)


def _numeric(column: pd.Series, name) -> np.ndarray:
    """A numeric column as float64 with NaN for every kind of missing value (pd.NA in an
    object column too, which ``astype("float64")`` refuses)."""
    if column.dtype == object:
        column = column.where(column.notna(), np.nan)
    try:
        return column.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        raise ValueError(f"column {str(name)!r} was numeric in fit but now holds "
                         f"{column.dtype} values that are not numbers; pass numbers "
                         "(or NaN for a missing value).") from None


def _codes(column: pd.Series, known: tuple[str, ...]) -> np.ndarray:
    """Category codes 0..K-1, K for a category fit never saw, NaN where missing."""
    missing = column.isna().to_numpy()
    seen = frozenset(known)
    as_text = column.astype(object).where(~missing, None).map(
        lambda v: None if v is None else _category_text(v, seen))
    codes = pd.Index(known).get_indexer(as_text.to_numpy()).astype(np.float64)  # -1: unseen
    codes[codes < 0] = len(known)        # unseen in fit: the reserved "unknown" slot
    codes[missing] = np.nan
    return codes


def _category_text(value, known: frozenset[str]) -> str:
    """The text a category is looked up by: ``str(value)``, except that a whole number
    takes the spelling fit saw, 1 or 1.0 (a column of integer codes turns float when
    it gains a hole, and its categories must not all become unseen)."""
    text = str(value)
    if (text in known or isinstance(value, (bool, np.bool_))
            or not isinstance(value, (int, float, np.number))):
        return text
    number = float(value)
    if number.is_integer():
        for spelling in (str(int(number)), str(number)):
            if spelling in known:
                return spelling
    return text
