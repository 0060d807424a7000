"""The public description of a fitted detector's preprocessing.

``fit`` learns how the user's rows or images become model units; this class
is that knowledge, and the single source every side builds from:

- the estimator applies it with numpy (:meth:`Preprocessing.to_model_units`);
- the ONNX exporter turns it into graph operations (``vaeanom.export``);
- ``OnnxModel`` rebuilds it from the file's metadata to check inputs exactly
  as the estimator does, without torch.

numpy only, so the torch-free runtime can import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .checks import check_bounds, check_pixels, input_bounds

#: what image models were fitted on: 8-bit pixels (scaled by 1/255) or floats in [0, 1]
PIXEL_DTYPES = ("uint8", "float")


@dataclass(frozen=True, eq=False)
class Preprocessing:
    """User units -> model units: ``(x * pixel_scale - center) / scale``, float32.

    Attributes
    ----------
    center, scale : ndarray (float64) of the model's per-row shape
        Learned standardisation (zeros and ones where the model takes raw values).
    input_shape : tuple of int
        The user's per-row shape: ``(n_features,)`` or an image's ``(H, W)`` / ``(C, H, W)``.
    is_image : bool
    pixel_dtype : {"uint8", "float"} or None
        Images only: the dtype the model was fitted on. uint8 pixels are divided by 255.
    feature_names : tuple of str or None
    unit_range : bool
        The model takes values in [0, 1] only (a Bernoulli likelihood on rows).
    categories : tuple of (tuple of str or None), or None
        The table model's columns (:class:`vaeanom.tables.TableSchema`): per
        column None (numeric) or the categories seen in fit, whose codes
        0..K-1 stand in the column (K: unseen). The table model takes missing
        values (NaN). None for other models.
    category_levels : tuple of (dict or None), or None
        How the table model gives decoded categories back
        (:attr:`vaeanom.tables.TableSchema.levels`); None: as sorted texts.
    """

    center: np.ndarray
    scale: np.ndarray
    input_shape: tuple[int, ...]
    is_image: bool
    pixel_dtype: str | None = None
    feature_names: tuple[str, ...] | None = None
    unit_range: bool = False
    categories: tuple[tuple[str, ...] | None, ...] | None = None
    category_levels: tuple[dict | None, ...] | None = None

    @property
    def schema(self):
        """The table model's :class:`vaeanom.tables.TableSchema`, or None for other models."""
        from .tables import TableSchema   # pandas: imported only for tables

        return (None if self.categories is None
                else TableSchema(self.categories, self.category_levels))

    def check(self, values: np.ndarray, precision: str = "float32", what: str = "X") -> None:
        """Refuse values whose model units overflow ``precision`` (see :mod:`vaeanom.checks`).

        ``values`` are in pixel units for images (uint8 already divided by 255)
        and in the user's units for rows.
        """
        if self.is_image:
            check_pixels(values, what)
        elif self.unit_range and values.size and (values.min() < 0 or values.max() > 1):
            raise ValueError(f"{what}: this model (Bernoulli likelihood) takes values in [0, 1]; "
                             f"got values in [{values.min():.4g}, {values.max():.4g}]. "
                             "Scale X as it was scaled for fit.")
        low, high = self.bounds(precision)
        check_bounds(values, low, high, self.feature_names, what)

    def bounds(self, precision: str = "float32") -> tuple[np.ndarray, np.ndarray]:
        """Per-feature (low, high) user values whose model units fit ``precision``
        (:func:`vaeanom.checks.input_bounds`), computed once per precision."""
        cache = self.__dict__.setdefault("_bounds", {})   # frozen: fill the dict in place
        if precision not in cache:
            cache[precision] = input_bounds(self.center, self.scale, precision)
        return cache[precision]

    def to_model_units(self, values: np.ndarray) -> np.ndarray:
        """Checked ``(values - center) / scale`` as float32, shaped like ``center`` per row."""
        self.check(values)
        shaped = np.asarray(values).reshape(len(values), *self.center.shape)
        return ((shaped - self.center) / self.scale).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (exact: floats are written with all their digits)."""
        return {"center": self.center.tolist(), "scale": self.scale.tolist(),
                "input_shape": list(self.input_shape), "is_image": self.is_image,
                "pixel_dtype": self.pixel_dtype,
                "feature_names": None if self.feature_names is None else list(self.feature_names),
                "unit_range": self.unit_range,
                "categories": None if self.categories is None else self.schema.to_json(),
                "category_levels": None if self.categories is None else self.schema.levels_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preprocessing:
        names = data.get("feature_names")
        categories = data.get("categories")
        schema = None if categories is None else _table_schema(categories,
                                                                data.get("category_levels"))
        return cls(np.asarray(data["center"], dtype=np.float64),
                   np.asarray(data["scale"], dtype=np.float64),
                   tuple(int(s) for s in data["input_shape"]), bool(data["is_image"]),
                   data.get("pixel_dtype"), None if names is None else tuple(map(str, names)),
                   bool(data.get("unit_range", False)),
                   None if schema is None else schema.categories,
                   None if schema is None else schema.levels)


def _table_schema(categories: Any, levels: Any):
    """The checked table schema from JSON (pandas is imported for tables only)."""
    from .tables import TableSchema

    return TableSchema.from_json(categories, levels)


def jsonable_params(params: dict[str, Any]) -> dict[str, Any]:
    """Estimator parameters as JSON values: tuples become lists, a RandomState None."""
    out = {}
    for name, value in params.items():
        if isinstance(value, np.random.RandomState):
            value = None  # a generator's state is not a parameter worth keeping
        if isinstance(value, (tuple, list)):
            value = [v.item() if isinstance(v, np.generic) else v for v in value]
        out[name] = value.item() if isinstance(value, np.generic) else value  # np.int64(8): 8
    return out
