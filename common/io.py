"""Small file helpers shared by every step that writes results."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from common.errors import DiskSpaceError, OutputExistsError, ToolkitError

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


def file_record(path: str | Path) -> dict:
    """``{"bytes": size, "sha256": hex}`` of a file: what a writer records to check the file later."""
    path = Path(path)
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def bytes_record(data: bytes) -> dict:
    """The :func:`file_record` that a file holding ``data`` will have (recorded before it is written)."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def file_damage(path: str | Path, record: dict, *, hash: bool) -> str | None:
    """What is wrong with ``path`` against its :func:`file_record`, or None.

    The size is always compared; the sha256 (a read of the whole file) only with ``hash``.
    """
    path = Path(path)
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != record["bytes"]:
        return f"{size} bytes, but {record['bytes']} were written"
    if hash:
        digest = file_sha256(path)
        if digest != record["sha256"]:
            return f"sha256 {digest[:12]}… differs from the recorded {record['sha256'][:12]}… (same size)"
    return None


def format_bytes(n: int) -> str:
    """``n`` bytes for a person: ``"26.0 GiB"``, ``"117.0 KiB"``, ``"512 bytes"``."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


#: ``errno`` of a write that found its file system full, or the user's quota spent.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def disk_full_reported(folder: str | Path) -> Iterator[None]:
    """Turn a full file system met by any write in the block into one :class:`DiskSpaceError` naming ``folder``.

    Writes through :func:`atomic_output` leave nothing half-written behind, so the
    command can be run again once space is freed.

    Raises
    ------
    DiskSpaceError
        An ``OSError`` with ``errno`` ``ENOSPC`` or ``EDQUOT`` left the block.
    """
    try:
        yield
    except OSError as error:
        if error.errno not in _DISK_FULL:
            raise
        raise DiskSpaceError(f"{folder}: no space left on its file system ({error.strerror}); free some "
                             f"space and run the command again: the work finished so far is kept") from error


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


def write_npy_atomic(path: str | Path, array: np.ndarray, *, overwrite: bool = False) -> dict:
    """Write ``array`` as a ``.npy`` file through :func:`atomic_output`; its :func:`file_record`.

    The bytes are those of ``np.save`` (format 1.0 header, then the data in C order). ``np.save``
    writes the data with ``ndarray.tofile``, whose short write on a full disk raises an
    ``OSError`` without ``errno`` (``"1370112 requested and 782272 written"``); here the data
    goes through Python's file object, which raises ``OSError(ENOSPC)`` like every other write
    (:func:`disk_full_reported`). The record is computed from memory, not read back.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false; it is left untouched.
    """
    array = np.ascontiguousarray(array)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    digest = hashlib.sha256(header.getvalue())
    digest.update(array.data)
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "wb") as handle:
        handle.write(header.getvalue())
        handle.write(array.data)
    return {"bytes": len(header.getvalue()) + array.nbytes, "sha256": digest.hexdigest()}


def write_text_atomic(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` through :func:`atomic_output`; ``path``.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false; it is left untouched.
    """
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite=overwrite)
