"""One-file model persistence: safetensors weights plus JSON metadata, sealed.

A model file can come from anyone, so loading trusts nothing in it:

- nothing is executed (tensors and JSON only, unlike pickle or joblib);
- the file's SHA-256 seal (:mod:`vaeanom.digest`) is checked on the raw bytes
  first: a flipped byte or an edit is reported as such;
- the saved parameters pass the same rules as ``fit``, only known fitted names
  are accepted, each with its type checked, and every array and weight shape is
  compared with the architecture the parameters describe (built on torch's
  "meta" device, which allocates nothing) before any real tensor is made.

Writes go to a temporary file in the target folder and are renamed into place,
so a crash never leaves a half-written model where a good one was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from .. import digest
from ..checks import are_class_labels
from ..fileio import atomic_write
from ..preprocessing import PIXEL_DTYPES, jsonable_params
from ..scoring import SCORE_KINDS
from ..tables import TableSchema
from .params import InvalidParameterError, validate_params

FORMAT = "vaeanom-model"
#: 2: the metadata holds a SHA-256 seal of the file (version-1 files load unsealed);
#: 3: a table model keeps how its categories decode (``category_levels_``);
#: 4: a conv image model keeps the score kind "auto" resolved to (``score_kind_``). A file
#: is written with the lowest version that holds it, so older vaeanom reads what it can and
#: says "upgrade" of the rest.
FORMAT_VERSION = 4
_MARKER = b'"sha256":"'
_REQUIRED = ("estimator", "params", "fitted")


def save(detector, path: str | os.PathLike) -> None:
    """Write ``detector`` (fitted) to ``path`` as a single sealed .safetensors file."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous()
               for k, v in detector.model_.state_dict().items()}
    for name in detector._fitted_arrays:
        if not hasattr(detector, name):  # an optional array a file from an older version lacked
            continue
        tensors[f"array.{name}"] = torch.from_numpy(np.ascontiguousarray(getattr(detector, name)))
    fitted = {name: getattr(detector, name) for name in detector._saved_fitted_values()
              if hasattr(detector, name)}
    if "feature_names_in_" in fitted:
        fitted["feature_names_in_"] = [str(f) for f in fitted["feature_names_in_"]]
    if "classes_" in fitted:
        fitted["classes_"] = np.asarray(fitted["classes_"]).tolist()
    from .. import __version__

    version = 4 if "score_kind_" in fitted else 3 if "category_levels_" in fitted else 2
    metadata = {"format": FORMAT, "format_version": str(version),
                "vaeanom_version": __version__, "estimator": type(detector).__name__,
                "params": json.dumps(jsonable_params(detector.get_params(deep=False))),
                "fitted": json.dumps(fitted), "sha256": digest.PLACEHOLDER.decode()}
    output = _transform_output(detector)
    if output is not None:    # an optional key: older vaeanom reads the file without it
        metadata["transform_output"] = output
    data = digest.seal(save_tensors(tensors, metadata=metadata), _MARKER)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Return (metadata, tensors) of a vaeanom model file, with clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {str(path)!r}")
    data = path.read_bytes()
    what = repr(str(path))
    sealed = digest.verify(data, _MARKER, what)
    metadata = _header_metadata(data, what)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{what} is a safetensors file but not a vaeanom model.")
    version = _format_version(metadata, what)
    if not sealed and version >= 2:
        raise ValueError(f"{what} has lost its SHA-256 digest: the file is corrupt or was "
                         "edited. Save the model again.")
    missing = [key for key in _REQUIRED if key not in metadata]
    if missing:
        raise ValueError(f"{what} lacks {', '.join(missing)} in its metadata: the file is "
                         "incomplete. Save the model again.")
    try:
        meta = {"estimator": metadata["estimator"], "params": json.loads(metadata["params"]),
                "fitted": json.loads(metadata["fitted"])}
        tensors = load_tensors(data)
    except (SafetensorError, ValueError) as err:
        raise ValueError(f"{what} is not a readable vaeanom model file: {err}") from None
    for key in ("params", "fitted"):
        if not isinstance(meta[key], dict):
            raise ValueError(f"{what}: its {key} are not a JSON object; the file is corrupt.")
    if "transform_output" in metadata:
        meta["transform_output"] = metadata["transform_output"]
        if meta["transform_output"] not in TRANSFORM_OUTPUTS:
            raise ValueError(f"{what}: its transform output is not one of {TRANSFORM_OUTPUTS}; "
                             "the file is corrupt.")
    return meta, tensors


#: what ``set_output(transform=...)`` may have set on a saved detector
TRANSFORM_OUTPUTS = ("pandas", "polars")


def _transform_output(detector) -> str | None:
    """What ``set_output(transform=...)`` set, when it is not the default (numpy).

    scikit-learn keeps it in ``_sklearn_output_config`` and has no public getter;
    pickle and ``clone`` keep it, so ``save`` does too.
    """
    output = getattr(detector, "_sklearn_output_config", {}).get("transform")
    return output if output in TRANSFORM_OUTPUTS else None


def _header_metadata(data: bytes, what: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header, read with json (bounded by the file)."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    try:
        if not 0 < size <= len(data) - 8:
            raise ValueError("bad header length")
        header = json.loads(data[8:8 + size])
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict):
            raise ValueError("bad metadata")
    except (ValueError, AttributeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} is not a readable vaeanom model file (corrupt or another "
                         f"format): {err}") from None
    return metadata


def _format_version(metadata: dict[str, str], what: str) -> int:
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise ValueError(f"{what} has no valid format version; the file is corrupt.") from None
    if version > FORMAT_VERSION:
        raise ValueError(f"{what} uses model format version {version}, newer than this vaeanom "
                         f"reads ({FORMAT_VERSION}); upgrade vaeanom.")
    return version


# -------------------------------------------------------------- validation
def checked_params(cls, params: dict[str, Any], what: str) -> dict[str, Any]:
    """The saved constructor parameters, refused unless ``fit`` would accept them."""
    known = set(cls().get_params(deep=False))
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"{what} holds parameters {cls.__name__} does not have: {unknown}.")
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    try:
        validate_params(cls(**params), cls._rules)
    except InvalidParameterError as err:
        raise ValueError(f"{what} holds an invalid parameter: {err}") from None
    return params


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and abs(value) <= 1e308)  # False for NaN, inf and ints past float (10**400)


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and 0 < len(value) <= 4 and all(_is_int(v, 1) for v in value)


def _is_table_schema(categories: Any, levels: Any = None) -> bool:
    try:
        TableSchema.from_json(categories, levels)
    except ValueError:
        return False
    return True


#: what each JSON fitted value must look like (anything else means a corrupt or crafted file)
_FITTED_CHECKS = {
    "offset_": _is_number,
    "n_features_in_": lambda v: _is_int(v, 1),
    "feature_names_in_": lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
    "input_shape_": _is_shape,
    "is_image_": lambda v: isinstance(v, bool),
    "pixel_dtype_": lambda v: v in PIXEL_DTYPES,
    "history_": lambda v: isinstance(v, list) and all(isinstance(e, dict) for e in v),
    "code_grid_": _is_shape,
    "perplexity_": _is_number,
    "used_codes_": _is_number,
    "categories_": _is_table_schema,
    "category_levels_": lambda v: isinstance(v, list),   # checked against categories_ below
    "classes_": are_class_labels,
    "label_offset_": _is_number,
    "n_code_classes_": lambda v: _is_int(v, 1),
    "quantisation_error_": lambda v: _is_number(v) and v >= 0,
    "score_kind_": lambda v: v in (*SCORE_KINDS, "llr"),
}
_FITTED_REQUIRED = ("offset_", "n_features_in_", "input_shape_", "is_image_")


def checked_fitted(cls, fitted: dict[str, Any], what: str) -> dict[str, Any]:
    """The saved fitted values, converted to their Python types, or a clear ValueError."""
    unknown = sorted(set(fitted) - set(cls._fitted_values))
    missing = [name for name in _FITTED_REQUIRED if name not in fitted]
    if unknown or missing:
        raise ValueError(f"{what} is not a valid {cls.__name__} file: "
                         + (f"unknown fitted names {unknown}" if unknown else "")
                         + ("; " if unknown and missing else "")
                         + (f"missing {missing}" if missing else "") + ".")
    for name, value in fitted.items():
        if not _FITTED_CHECKS[name](value):
            raise ValueError(f"{what}: fitted value {name} = {str(value)[:80]!r} is not valid; "
                             "the file is corrupt.")
    n_pixels = int(np.prod(fitted["input_shape_"]))
    if n_pixels != fitted["n_features_in_"] or (
            len(fitted["input_shape_"]) not in ((2, 3) if fitted["is_image_"] else (1,))):
        raise ValueError(f"{what}: input_shape_ {fitted['input_shape_']} does not match "
                         f"n_features_in_ {fitted['n_features_in_']}; the file is corrupt.")
    categories = fitted.get("categories_")
    if categories is not None and (fitted["is_image_"]
                                   or len(categories) != fitted["n_features_in_"]):
        raise ValueError(f"{what}: categories_ has {len(categories)} columns for a model of "
                         f"{fitted['n_features_in_']} features; the file is corrupt.")
    levels = fitted.get("category_levels_")
    if levels is not None and not _is_table_schema(categories, levels):
        raise ValueError(f"{what}: category_levels_ does not match categories_; the file is "
                         "corrupt.")
    names = fitted.get("feature_names_in_")
    if names is not None and len(names) != fitted["n_features_in_"]:
        raise ValueError(f"{what}: {len(names)} feature names for {fitted['n_features_in_']} "
                         "features; the file is corrupt.")
    out = dict(fitted)
    for name in ("input_shape_", "code_grid_"):
        if name in out:
            out[name] = tuple(out[name])
    if names is not None:
        out["feature_names_in_"] = np.asarray(names, dtype=object)
    if "classes_" in out:
        out["classes_"] = np.asarray(out["classes_"])
    return out


def check_shapes(found: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]],
                 what: str) -> None:
    """Refuse tensors whose names or shapes differ from what the architecture needs."""
    missing = sorted(set(expected) - set(found))
    unknown = sorted(set(found) - set(expected))
    if missing or unknown:
        raise ValueError(f"{what} does not fit the architecture its parameters describe: "
                         f"missing {missing[:5]}, unexpected {unknown[:5]}.")
    for name, shape in expected.items():
        if tuple(found[name].shape) != tuple(shape):
            raise ValueError(f"{what}: {name} has shape {tuple(found[name].shape)}, but the "
                             f"architecture needs {tuple(shape)}; the file is corrupt.")


#: the dtype ``fit`` gives each saved array: float32 unless named here
_ARRAY_DTYPES = {"center_": torch.float64, "scale_": torch.float64, "code_counts_": torch.int64,
                 "code_classes_": torch.int64, "context_counts_": torch.int64}


def check_dtypes(arrays: dict[str, torch.Tensor], what: str) -> None:
    """Refuse saved arrays of another dtype than fit writes (scoring mixes them with weights)."""
    for name, array in arrays.items():
        expected = _ARRAY_DTYPES.get(name, torch.float32)
        if array.dtype != expected:
            raise ValueError(f"{what}: {name} has dtype {str(array.dtype).removeprefix('torch.')},"
                             f" but vaeanom writes {str(expected).removeprefix('torch.')}; "
                             "the file is corrupt.")


def check_values(arrays: dict[str, torch.Tensor], what: str) -> None:
    """Refuse non-finite floats and negative counts among the saved arrays."""
    for name, array in arrays.items():
        bad = (~torch.isfinite(array).all() if array.is_floating_point()
               else (array < 0).any())
        if bad:
            raise ValueError(f"{what}: {name} holds non-finite or negative values; "
                             "the file is corrupt.")
