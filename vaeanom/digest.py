"""SHA-256 seals: any change to a saved model file or ONNX export is detected.

A sealed file holds, in its own metadata, the SHA-256 of its bytes as they were
with the digest's 64 characters set to ``0``. The seal is found by a marker (the
bytes just before the digest), so it is checked on the raw bytes before any
parser, tensor or session sees them: a flipped byte anywhere, digest included,
fails the check. A seal proves integrity (no corruption, no edit by a tool that
does not recompute it), not authorship: anyone can seal a file of their own, so
loaders still validate everything they read.

Standard library only: the torch-free runtime uses it.
"""

from __future__ import annotations

import hashlib

PLACEHOLDER = b"0" * 64


def seal(data: bytes, marker: bytes) -> bytes:
    """``data`` (holding ``marker + PLACEHOLDER`` exactly once) with its digest filled in."""
    if data.count(marker + PLACEHOLDER) != 1:
        raise RuntimeError("cannot seal: the digest placeholder is missing or not unique")
    digest = hashlib.sha256(data).hexdigest().encode()
    return data.replace(marker + PLACEHOLDER, marker + digest)


def verify(data: bytes, marker: bytes, what: str) -> bool:
    """True if ``data`` carries a seal that matches; False if it has none.

    Raises ValueError when the seal does not match (or appears twice): the file
    is corrupt or was edited.
    """
    start = data.find(marker)
    if start < 0:
        return False
    begin = start + len(marker)
    digest = data[begin:begin + 64]
    if data.find(marker, begin) >= 0 or len(digest) != 64:
        raise ValueError(f"{what} has a damaged integrity digest: the file is corrupt.")
    unsealed = data[:begin] + PLACEHOLDER + data[begin + 64:]
    if hashlib.sha256(unsealed).hexdigest().encode() != digest:
        raise ValueError(f"{what} does not match its SHA-256 digest: the file is corrupt or "
                         "was edited after it was written. Save or export it again.")
    return True
