"""Atomic file writes: what a user saved is never lost or half-written."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` then move the result onto ``path`` in one rename.

    The temporary file sits in the target folder (same file system), so the
    rename is atomic; on any error it is removed and ``path`` is untouched. It
    is created with mode 0o666, which the kernel narrows by the process umask:
    the usual permissions, without reading the umask (``os.umask`` can only be
    read by setting it, a race with every other thread creating files).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _create_temporary(path: Path) -> str:
    """A new, empty, uniquely named file beside ``path`` (mode 0o666 less the umask)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return str(tmp)
        except FileExistsError:
            continue
