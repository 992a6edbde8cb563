"""Small file helpers shared by every step that writes results."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from common.errors import OutputExistsError


def absolute_path(path: str | Path) -> Path:
    """``path`` made absolute against this process's working directory (symlinks kept, ``..`` folded).

    Done on the client before a path goes to a Dask worker, whose working directory is its own.
    """
    return Path(os.path.abspath(os.path.expanduser(path)))


def _umask() -> int:
    """The process's file-creation mask (reading it means setting it, so set it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8) to a temporary file next to ``path``, then move it in place.

    Readers never see a half-written file. Without ``overwrite`` the move is a hard link,
    which fails atomically when ``path`` exists.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false; it is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputExistsError(path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
