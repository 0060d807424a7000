"""Input validation and preprocessing shared by every estimator.

Rows (2-D arrays, DataFrames) are standardised with statistics learned in
``fit``. Images, (n, H, W) or (n, C, H, W), are taken as pixels: uint8 is
divided by 255, other dtypes are used as they are (expected in [0, 1]).
Everything ends as a float32 tensor in "model units". Tables may hold
categorical columns and missing values where the estimator allows them
(:mod:`vaeanom.tables`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_array, validate_data

from ..checks import (TABLE_MODEL, check_missing_values, check_no_infinity,
                      check_observed_columns, check_pixels, image_shape_hint, is_one_image)
from ..tables import (TableSchema, categorical_columns, check_frame_columns,
                      decimals_as_floats, non_numeric_columns, numbers_of, numbers_only_error,
                      numbers_read_as_numbers, shown_columns)


def is_image_input(X) -> bool:
    """True for arrays of 3 or 4 dimensions: (n, H, W) or (n, C, H, W)."""
    ndim = getattr(X, "ndim", None)
    if not isinstance(ndim, int):  # no ndim, or a class's descriptor (X=np.float64)
        try:
            ndim = np.asarray(X, dtype=object).ndim
        except ValueError:  # ragged nested lists: let check_array explain
            return False
    return ndim >= 3


def check_images(estimator, X, *, fitting: bool, fitted_shape: tuple[int, ...] | None = None
                 ) -> tuple[np.ndarray, tuple[int, ...], str]:
    """Validate an image batch; return (n, C, H, W) float32 in [0, 1], the per-image shape
    and the pixel dtype ("uint8" or "float"). Float pixels outside [0, 1] are refused,
    and so are images of another shape than ``fitted_shape`` when it is given."""
    images = check_array(X, allow_nd=True, dtype="numeric", ensure_min_samples=2 if fitting else 1,
                         input_name="X", estimator=estimator)
    if images.ndim not in (3, 4):
        raise ValueError(f"images must have shape (n, H, W) or (n, C, H, W); got {images.shape}.")
    if 0 in images.shape[1:]:
        raise ValueError(f"images must hold at least one pixel; got shape {images.shape}.")
    if fitted_shape is not None:
        check_image_shape(estimator, images.shape[1:], fitted_shape)
    if images.ndim == 4 and images.shape[1] > 4 and images.shape[-1] <= 4:
        raise ValueError(f"images of shape {images.shape} look channels-last; vaeanom expects "
                         "(n, C, H, W): pass X.transpose(0, 3, 1, 2).")
    per_image = images.shape[1:]
    pixel_dtype = "uint8" if images.dtype == np.uint8 else "float"
    if pixel_dtype == "float":
        check_pixels(images)
    scale = 1.0 / 255.0 if pixel_dtype == "uint8" else 1.0
    nchw = images.reshape(len(images), -1, *images.shape[-2:])
    return (nchw.astype(np.float32) * np.float32(scale)), per_image, pixel_dtype


def check_image_shape(estimator, shape: tuple[int, ...], fitted: tuple[int, ...]) -> None:
    """Refuse images whose per-image ``shape`` is not the ``fitted`` one, with the fix
    where one is clear (a channel axis to drop or add, channels-last)."""
    fitted = tuple(fitted)
    if tuple(shape) != fitted:
        raise ValueError(f"{type(estimator).__name__} was fitted on images of shape {fitted}; "
                         f"got images of shape {tuple(shape)}"
                         f"{image_shape_hint(shape, fitted)}.")


def unflatten_images(estimator, X, shape: tuple[int, ...]) -> np.ndarray:
    """Rows of flattened pixels (n, prod(shape)) -> images (n, *shape), dtype kept."""
    if isinstance(X, np.ndarray) and is_one_image(X.shape, shape):
        raise ValueError(f"X is one image of shape {tuple(shape)}; give a batch of images, "
                         "(n, *shape): X[None] for this one.")
    rows = check_array(X, dtype="numeric", input_name="X", estimator=estimator)
    if rows.shape[1] != int(np.prod(shape)):
        raise ValueError(f"X has {rows.shape[1]} features, but {type(estimator).__name__} was "
                         f"fitted on images of shape {tuple(shape)} ({int(np.prod(shape))} pixels).")
    return rows.reshape(len(rows), *shape)


def check_rows(estimator, X, *, fitting: bool, schema: TableSchema | None = None,
               allow_missing: bool = False,
               refused_by: str = "This model") -> tuple[np.ndarray, TableSchema]:
    """Validate tabular rows; return float64 (n, d) and the table's :class:`TableSchema`.

    Numbers stay numbers; with ``allow_missing``, missing entries become NaN and
    categorical (object, string, ``category``) DataFrame columns become codes
    (see :mod:`vaeanom.tables`). ``schema`` is what fit learned (None at fit,
    or for a model fitted on complete numbers). Infinities are always refused.
    Without ``allow_missing``, text and holes are refused, and the errors say who
    refuses them: ``refused_by``, e.g. "A VAEDetector with conditional=True".
    """
    check_frame_columns(X)
    if isinstance(X, pd.DataFrame):
        X = decimals_as_floats(X)
    X = numbers_read_as_numbers(X) if fitting else X   # scoring reads them by the schema
    text = categorical_columns(X)
    if text and not fitting and (schema is None or not schema.has_categories):
        X, text = _as_numbers(X, text)
    if text and not allow_missing:
        _refuse_text_columns(text, refused_by)
    if text or (schema is not None and schema.has_categories):
        rows, schema = _check_mixed(estimator, X, fitting=fitting, schema=schema, text=text)
    else:
        rows = validate_data(estimator, X, reset=fitting, dtype=[np.float64, np.float32],
                             ensure_min_samples=2 if fitting else 1, ensure_all_finite=False)
        check_no_infinity(rows, _feature_names(estimator))
        if not allow_missing and np.isnan(rows).any():
            raise ValueError(f"X contains NaN (missing values). {refused_by} models complete "
                             f"numeric rows only: impute or drop them, or fit {TABLE_MODEL}, "
                             "which takes holes.")
        schema = TableSchema.learn(rows) if fitting else schema
    if allow_missing:
        names = _feature_names(estimator)
        check_missing_values(rows, names, index=X.index if isinstance(X, pd.DataFrame) else None)
        if fitting:
            check_observed_columns(rows, names)
    return rows, schema


def _feature_names(estimator) -> list[str] | None:
    names = getattr(estimator, "feature_names_in_", None)
    return None if names is None else [str(n) for n in names]


def _as_numbers(X: pd.DataFrame, text: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """For a model fitted on numbers: X with its object columns as numbers when they
    hold only numbers, booleans and holes (pandas makes a bool column that gets a None
    object); X and the columns that hold something else otherwise, to be refused by name
    (not every object column: one bad cell named them all)."""
    numbers = numbers_of(X)
    if numbers is None:
        return X, non_numeric_columns(X) or text
    return pd.DataFrame(numbers, index=X.index, columns=X.columns), []


def _check_mixed(estimator, X, *, fitting: bool, schema: TableSchema | None,
                 text: list[str]) -> tuple[np.ndarray, TableSchema]:
    """A DataFrame with categorical columns -> (codes and numbers with NaN holes, schema)."""
    if isinstance(X, pd.Series):
        raise ValueError("X is a pandas Series; pass a DataFrame with the columns the model was "
                         "fitted on (for one row taken with df.loc[i], use df.loc[[i]]).")
    if not isinstance(X, pd.DataFrame):
        raise ValueError(f"{type(estimator).__name__} was fitted on a DataFrame with categorical "
                         "columns; pass a DataFrame with the same columns (numpy arrays hold "
                         "numbers only).")
    if not fitting and (schema is None or not schema.has_categories):
        raise numbers_only_error(text)
    validate_data(estimator, X, reset=fitting, skip_check_array=True)
    if len(X) < (2 if fitting else 1):
        raise ValueError(f"Found array with {len(X)} sample(s) (shape={X.shape}) while a "
                         f"minimum of {2 if fitting else 1} is required.")
    if X.shape[1] == 0:
        raise ValueError("X has 0 columns; pass at least one.")
    if fitting:
        schema = TableSchema.learn(X)
    return schema.encode(X), schema


def _refuse_text_columns(text: list[str], refused_by: str = "This model") -> None:
    """Name the DataFrame columns that hold text or categories, and say what to do."""
    raise ValueError(
        f"X has {len(text)} non-numeric column(s): {shown_columns(text)}. {refused_by} takes "
        "numbers only: one-hot encode them, e.g. pd.get_dummies(X, columns=[...], "
        f"dtype=float), map them to numbers, or drop them; {TABLE_MODEL} models them as "
        "categories.")


def standardisation(rows: np.ndarray,
                    categorical: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std; a constant feature gets scale 1 (it stays centred at 0).

    Missing entries (NaN) are left out (``check_rows`` refuses a column with none
    observed); ``categorical`` columns (codes) get 0 and 1.
    Raises ValueError naming the features whose mean or std overflow float64
    (values near 1e300): standardising them would silently give zeros.
    """
    if categorical is None:
        categorical = np.zeros(rows.shape[1], dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isnan(rows).any():
            center = np.nanmean(rows, axis=0, dtype=np.float64)
            scale = np.nanstd(rows, axis=0, dtype=np.float64)
        else:
            center = rows.mean(axis=0, dtype=np.float64)
            scale = rows.std(axis=0, dtype=np.float64)
    center[categorical], scale[categorical] = 0.0, 1.0
    broken = np.flatnonzero(~(np.isfinite(center) & np.isfinite(scale)))
    if len(broken):
        raise ValueError(f"features {broken[:5].tolist()} hold values too large to standardise "
                         "(their mean or spread overflows float64). Is a huge number standing "
                         "in for missing values? Replace it or drop those rows.")
    with np.errstate(invalid="ignore"):     # a column of one value and holes: no warning
        low, high = np.nanmin(rows, axis=0), np.nanmax(rows, axis=0)
    constant = (low == high) & ~categorical
    center[constant] = low[constant]        # the mean of equal values can be an ulp off it
    # a spread at rounding level is a constant too: else 1234.56 gets a scale of 1e-13
    # and a change in the 5th digit scores -1e20
    rounding = 10 * np.finfo(np.float64).eps * np.maximum(np.abs(center), 1.0)
    scale[constant | (scale < rounding)] = 1.0
    return center, scale
