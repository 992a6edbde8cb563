"""Small file helpers shared by every step that writes results."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from common.errors import OutputExistsError, ToolkitError

#: Matches the temporary files of :func:`atomic_output` (of killed writers) in a folder.
TEMPORARY_GLOB = ".*.tmp*"


def absolute_path(path: str | Path) -> Path:
    """``path`` made absolute against this process's working directory (symlinks kept, ``..`` folded).

    Done on the client before a path goes to a Dask worker, whose working directory is its own.
    """
    return Path(os.path.abspath(os.path.expanduser(path)))


def make_folder(path: str | Path) -> Path:
    """Create the folder ``path``, and its parents, unless it exists; ``path``.

    Raises
    ------
    ToolkitError
        ``path``, or a folder above it, exists and is a file.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ToolkitError(f"{path}: is not a folder (it, or a folder above it, is a file)") from None
    return path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks (a file of any size)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def sidecar_path(path: str | Path) -> Path:
    """The JSON written beside an output file: same name, ``.json`` (``x.csv`` -> ``x.json``).

    Used for submissions and folds files alike. A ``.json`` path is refused: its sidecar
    would be the file itself.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        raise ToolkitError(f"{path}: must not end in .json (its sidecar takes that name)")
    return path.with_suffix(".json")


def _umask() -> int:
    """The process's file-creation mask (reading it means setting it, so set it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; moved onto ``path`` when the block ends.

    The one atomic-write mechanism of the toolkit: readers never see a half-written
    file, and an exception (or a killed process) leaves ``path`` as it was. The
    temporary file is named ``.<stem>.<random>.tmp<suffix>`` (hidden, and keeping the
    suffix, which writers such as ``keras.Model.save`` check; :data:`TEMPORARY_GLOB`
    matches it). Without ``overwrite`` the move is a hard link, which fails atomically
    when ``path`` exists.

    Yields
    ------
    Path
        An existing empty file in ``path``'s folder; write it (or replace it) in the block.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false (checked before the block too, so no
        work is wasted); ``path`` is left untouched.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise OutputExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputExistsError(path) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_output`; ``path``.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false; it is left untouched.
    """
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` through :func:`atomic_output`; ``path``.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false; it is left untouched.
    """
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite=overwrite)
