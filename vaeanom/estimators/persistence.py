"""One-file model persistence: safetensors weights plus JSON metadata.

Loading reads tensors and JSON only, so a model file can come from anyone:
nothing in it is executed (unlike pickle or joblib). Writes go to a temporary
file in the target folder and are renamed into place, so a crash never leaves
a half-written model where a good one was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..fileio import atomic_write

FORMAT = "vaeanom-model"
FORMAT_VERSION = 1


def _jsonable_params(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in params.items():
        if isinstance(value, np.random.RandomState):
            value = None  # a generator's state is not a parameter worth keeping
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def save(detector, path: str | os.PathLike) -> None:
    """Write ``detector`` (fitted) to ``path`` as a single .safetensors file."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous()
               for k, v in detector.model_.state_dict().items()}
    for name in detector._fitted_arrays:
        tensors[f"array.{name}"] = torch.from_numpy(np.ascontiguousarray(getattr(detector, name)))
    fitted = {name: getattr(detector, name) for name in detector._fitted_values
              if hasattr(detector, name)}
    if "feature_names_in_" in fitted:
        fitted["feature_names_in_"] = [str(f) for f in fitted["feature_names_in_"]]
    from .. import __version__

    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "vaeanom_version": __version__, "estimator": type(detector).__name__,
                "params": json.dumps(_jsonable_params(detector.get_params(deep=False))),
                "fitted": json.dumps(fitted)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Return (metadata, tensors) of a vaeanom model file, with clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {str(path)!r}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{str(path)!r} is not a readable vaeanom model file "
                         f"(corrupt or another format): {err}") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is a safetensors file but not a vaeanom model.")
    if int(metadata.get("format_version", -1)) > FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} uses model format version {metadata['format_version']}, "
                         f"newer than this vaeanom reads ({FORMAT_VERSION}); upgrade vaeanom.")
    meta = {"estimator": metadata["estimator"], "params": json.loads(metadata["params"]),
            "fitted": json.loads(metadata["fitted"])}
    return meta, tensors
