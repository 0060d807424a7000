"""Checks on VQ code indices shared by the estimator and the torch-free ONNX runtime."""

from __future__ import annotations

import numpy as np


def check_code_values(codes: np.ndarray, codebook_size: int) -> None:
    """Raise ValueError unless ``codes`` are integers in [0, codebook_size)."""
    if codes.dtype.kind not in "iu":
        raise ValueError(f"codes must be integers (the integer codes that encode returns); "
                         f"got dtype {codes.dtype}.")
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        raise ValueError(f"codes must be in [0, {codebook_size}); got values in "
                         f"[{codes.min()}, {codes.max()}].")
