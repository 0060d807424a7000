"""Atomic file writes: what a user saved is never lost or half-written."""

from __future__ import annotations

import os
import secrets
import shutil
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
    refuse_folder_name(path)
    make_parent(path)
    tmp = _create_temporary(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def refuse_folder_name(path: str | os.PathLike) -> None:
    """IsADirectoryError when a folder holds the name a file is to be written under."""
    if Path(path).is_dir():
        raise IsADirectoryError(f"cannot write the file {str(path)!r}: a folder has that name; "
                                "remove it or choose another name.")


def make_parent(path: Path) -> None:
    """Create ``path``'s folder and the folders above it, naming a file in the way
    (mkdir says only "File exists", of a path the user may not have typed)."""
    for folder in (path.parent, *path.parent.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise NotADirectoryError(f"cannot write {str(path)!r}: {str(folder)!r} is "
                                         "not a folder (a file has that name); choose another "
                                         "path, or move the file.")
            break
    path.parent.mkdir(parents=True, exist_ok=True)


def _create_temporary(path: Path) -> str:
    """A new, empty, uniquely named file beside ``path`` (mode 0o666 less the umask)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return str(tmp)
        except FileExistsError:
            continue


def atomic_write_dir(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)``, which creates a folder there, then put it at ``path``.

    For engines that write a folder of part files (Dask, Spark). ``tmp_path``
    does not exist yet and sits beside ``path``. Whatever was at ``path`` is
    moved aside first and deleted only once the new folder is in place: on any
    error the new folder is removed and ``path`` is as it was.
    """
    path = Path(path)
    make_parent(path)
    token = secrets.token_hex(8)
    tmp, old = (path.parent / f".{path.name}.{token}.{kind}" for kind in ("tmp", "old"))
    try:
        write(str(tmp))
        if os.path.lexists(path):
            os.rename(path, old)
        os.rename(tmp, path)
    except BaseException:
        _remove(tmp)
        if os.path.lexists(old) and not os.path.lexists(path):
            os.rename(old, path)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
