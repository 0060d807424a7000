"""Input checks and the outlier rule, shared by the estimators and ``OnnxModel``.

numpy only (the torch-free runtime imports this module). Two promises live here:

- **Inputs are checked in the units the model computes in.** A value that is
  finite in float64 can still overflow once standardised and cast to float32
  (or float16, in a half-precision graph): ``1e300`` as a "missing" sentinel, or
  a near-constant feature that moves. Such a row is refused with the column's
  name, never scored as NaN.
- **A score that cannot be computed marks an outlier.** Every non-finite score
  becomes ``-inf`` (the least normal score there is), so ``decision_function``
  is ``-inf`` and ``predict`` says -1. Before this rule, ``NaN < offset`` was
  false and a NaN row came out an inlier.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

#: the estimator that models holes and categorical columns, as the errors name it
TABLE_MODEL = "VAEDetector(conditional=False) with an int latent_dim"

#: the largest magnitude each float type of a graph can hold
FLOAT_LIMITS = {"float32": float(np.finfo(np.float32).max),
                "float16": float(np.finfo(np.float16).max)}


def finite_scores(scores: np.ndarray) -> np.ndarray:
    """Scores as float64 with every NaN or infinity replaced by -inf (the least normal)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.where(np.isfinite(scores), scores, -np.inf)


def rankable_scores(scores: np.ndarray) -> np.ndarray:
    """:func:`finite_scores` with each -inf just below the lowest finite score: what
    rank metrics and plots take (they refuse or drop infinities); such a row stays the
    least normal. With no finite score at all, every score is 0."""
    scores = finite_scores(scores)
    finite = np.isfinite(scores)
    if finite.all():
        return scores
    floor = scores[finite].min() - 1.0 if finite.any() else 0.0
    return np.where(finite, scores, floor)


def is_outlier(scores: np.ndarray, offset: float) -> np.ndarray:
    """The outlier rule: True where ``scores - offset`` is negative or not a number."""
    return ~(np.asarray(scores, dtype=np.float64) - offset >= 0)


def outlier_labels(scores: np.ndarray, offset: float) -> np.ndarray:
    """+1 for inliers, -1 for outliers (scikit-learn's convention), by :func:`is_outlier`."""
    return np.where(is_outlier(scores, offset), -1, 1)


def input_bounds(center: np.ndarray, scale: np.ndarray,
                 precision: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (low, high) in the user's units whose standardised values fit ``precision``.

    The input itself is also cast to float32 by the graph, so the bounds never
    pass float32's own range.
    """
    limit, input_limit = FLOAT_LIMITS[precision], FLOAT_LIMITS["float32"]
    center = np.asarray(center, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    with np.errstate(over="ignore"):
        low = np.maximum(center - limit * scale, -input_limit)
        high = np.minimum(center + limit * scale, input_limit)
    return low, high


def check_bounds(values: np.ndarray, low: np.ndarray, high: np.ndarray,
                 feature_names: Sequence[str] | None = None, what: str = "X") -> None:
    """Raise ValueError naming the features where ``values`` (n, *shape) leave [low, high].

    NaN (a missing value) is not out of bounds; callers that refuse holes do so first.
    """
    values = np.asarray(values)
    flat = values.reshape(len(values), -1)
    bad = ~((flat >= low.reshape(-1)) & (flat <= high.reshape(-1)))
    if flat.dtype.kind == "f":
        bad &= ~np.isnan(flat)  # a missing value: the estimator's checks decide whether it may be
    if not bad.any():
        return
    columns = np.flatnonzero(bad.any(axis=0))
    names = [_feature_label(j, feature_names) for j in columns[:5]]
    more = f" and {len(columns) - 5} more" if len(columns) > 5 else ""
    rows = np.flatnonzero(bad.any(axis=1))
    raise ValueError(
        f"{what} has values too large for the model in {', '.join(names)}{more} "
        f"({len(rows)} row(s), e.g. row {rows[0]}: {float(flat[rows[0], columns[0]]):.6g}): once "
        "standardised they overflow the model's float type. Is it a sentinel for a missing "
        "value (like 1e300 or -9999999)? Replace it with a real value or drop the row.")


def check_missing_values(rows: np.ndarray, feature_names: Sequence[str] | None = None,
                         what: str = "X", index=None) -> None:
    """Rows with holes (NaN) as the table model takes them: infinities and rows with no
    observed entry at all are refused, by name (rows by the labels of ``index``, a
    DataFrame's pandas Index, when there is one; else by position)."""
    check_no_infinity(rows, feature_names, what)
    empty = np.flatnonzero(np.isnan(rows).all(axis=1)) if rows.size else []
    if len(empty):
        rows = (f"row(s) {list(map(int, empty[:5]))}" if index is None
                else f"row(s) labelled {index[empty[:5]].tolist()}")
        raise ValueError(f"{rows} of {what} have every entry missing: there is nothing to "
                         "score. Drop them (X.dropna(how='all')).")


def check_no_infinity(rows: np.ndarray, feature_names: Sequence[str] | None = None,
                      what: str = "X") -> None:
    """Refuse infinities, naming the columns that hold them (up to five)."""
    infinite = np.flatnonzero(np.isinf(rows).any(axis=0)) if rows.size else []
    if len(infinite):
        names = [_feature_label(j, feature_names) for j in infinite[:5]]
        raise ValueError(f"{what} contains infinity in {', '.join(names)}. A missing value is "
                         "NaN (or None, pd.NA, an empty CSV field); replace the infinities.")


def is_one_image(shape: Sequence[int], image_shape: Sequence[int]) -> bool:
    """True when an array of ``shape`` is one image of ``image_shape`` given without its
    batch axis, and cannot be read as rows of flattened pixels instead (a (1, W) image
    is also one row of W pixels: that reading wins)."""
    shape, image_shape = tuple(shape), tuple(image_shape)
    return (shape == image_shape and len(image_shape) > 1
            and image_shape[-1] != int(np.prod(image_shape)))


def check_observed_columns(rows: np.ndarray, feature_names: Sequence[str] | None = None,
                           what: str = "X") -> None:
    """Refuse, by name, training columns with no observed entry: nothing to learn from."""
    empty = np.flatnonzero(np.isnan(rows).all(axis=0)) if len(rows) else []
    if len(empty):
        names = [_feature_label(j, feature_names) for j in empty[:5]]
        raise ValueError(f"{what} has no observed value in {', '.join(names)} (every entry is "
                         f"missing): drop {'it' if len(empty) == 1 else 'them'} before fit.")


def column_names(feature_names: Sequence | None, n_features: int) -> list[str]:
    """The columns a fitted model's per-feature output is labelled with: its feature
    names as strings, else x0, x1, ... (estimators and ``OnnxModel`` alike)."""
    if feature_names is not None:
        return [str(name) for name in feature_names]
    return [f"x{i}" for i in range(n_features)]


def feature_labels(X, feature_names: Sequence | None, n_features: int) -> list:
    """The columns of per-feature output for input X (explanations, reconstructions):
    the fitted feature names; else, for a DataFrame X, its own column labels
    (scikit-learn keeps ``feature_names_in_`` only for string names, and a frame
    with columns 0, 1, ... should get 0, 1, ... back); else x0, x1, ..."""
    if feature_names is None and hasattr(X, "columns") and len(X.columns) == n_features:
        return list(X.columns)
    return column_names(feature_names, n_features)


def _feature_label(index: int, feature_names: Sequence[str] | None) -> str:
    if feature_names is not None and index < len(feature_names):
        return f"column {feature_names[index]!r}"
    return f"feature {index}"


def check_pixels(images: np.ndarray, what: str = "X") -> None:
    """Refuse float pixels outside [0, 1]: 0..255 floats would be read as 255x too bright.

    Integer pixels other than uint8 (int16, int64: how 0..255 often arrive) are held to
    [0, 1] too; only uint8 means 0..255.
    """
    if images.dtype.kind not in "fiu" or images.dtype == np.uint8 or images.size == 0:
        return
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        if images.dtype.kind == "f":
            raise ValueError(f"{what}: float pixels must be in [0, 1]; got values in "
                             f"[{low:.4g}, {high:.4g}]. Pass uint8 images (0..255) as they are, "
                             "or divide float pixels by 255.")
        raise ValueError(f"{what}: {images.dtype} pixels must be in [0, 1] (only uint8 pixels "
                         f"are read as 0..255); got values in [{low:.4g}, {high:.4g}]. Pass "
                         "X.astype(np.uint8) for 8-bit images, or divide by 255.")


def image_shape_hint(got: tuple[int, ...], expected: tuple[int, ...]) -> str:
    """The fix for images of per-image shape ``got`` given to a model of ``expected``
    (both without n), as "; pass ..." to end an error, or "" when there is none."""
    got, expected = tuple(got), tuple(expected)
    if got == (1, *expected):
        return "; the model was fitted on images without a channel axis: pass X[:, 0]"
    if got == (*expected, 1):
        return "; the model was fitted on images without a channel axis: pass X[..., 0]"
    if len(expected) == 3 and got == expected[1:] and expected[0] == 1:
        return "; the model takes a channel axis: pass X[:, None]"
    if len(expected) == 3 and got == (*expected[1:], expected[0]):
        return "; they look channels-last: pass X.transpose(0, 3, 1, 2)"
    return ""


def are_class_labels(value) -> bool:
    """A conditional model's classes as saved and exported (JSON): distinct strings,
    finite numbers or booleans, all of one kind, at least one."""
    if not isinstance(value, list) or not value:
        return False
    kinds = {str if isinstance(v, str) else bool if isinstance(v, bool)
             else float if isinstance(v, (int, float)) and abs(v) <= 1e308 else None
             for v in value}   # abs(v) <= 1e308: False for NaN, inf and ints past float
    return len(kinds) == 1 and None not in kinds and len(set(value)) == len(value)


def are_bytes(values: np.ndarray) -> bool:
    """Whether every value is a whole number in 0..255, none missing: 8-bit pixels that
    arrived in a wider type (a CSV's int64, JSON's one number type)."""
    values = np.asarray(values)
    if values.dtype.kind not in "fiu":
        return False
    return bool(np.isfinite(values).all() and (values == np.round(values)).all()
                and values.min(initial=0) >= 0 and values.max(initial=0) <= 255)


def finite_decoded(decoded: np.ndarray, what: str = "Z") -> np.ndarray:
    """``decoded`` unchanged, or ValueError naming the latent rows whose decoding overflowed."""
    per_row = np.isfinite(decoded).reshape(len(decoded), int(np.prod(decoded.shape[1:])))
    bad = np.flatnonzero(~per_row.all(axis=1))
    if len(bad):
        raise ValueError(f"{what} row(s) {bad[:5].tolist()} decode to values beyond the model's "
                         "float range: those latents lie far outside the prior (the decoder "
                         "overflows). Pass latents from encode or of the prior's scale.")
    return decoded


def check_count(n, name: str = "n_samples") -> int:
    """A non-negative integer count (bools and floats refused, numpy integers accepted)."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be a non-negative int; got {n!r} "
                        f"({type(n).__name__}).")
    if n < 0:
        raise ValueError(f"{name} must be a non-negative int; got {n}.")
    return int(n)
