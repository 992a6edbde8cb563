"""The one atomic file writer: nothing half-written, nothing silently overwritten."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest

from common.errors import DiskSpaceError, OutputExistsError
from common.io import (
    TEMPORARY_GLOB,
    atomic_output,
    bytes_record,
    disk_full_reported,
    file_damage,
    file_record,
    format_bytes,
    write_bytes_atomic,
    write_npy_atomic,
    write_text_atomic,
)


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="crash"), atomic_output(path, overwrite=True) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".keras" and tmp.match(TEMPORARY_GLOB)
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_without_overwrite_an_existing_file_is_kept(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "a.csv", "x\n1\n")
    assert path.read_text() == "x\n1\n"
    with pytest.raises(OutputExistsError):
        write_bytes_atomic(path, b"other")
    assert path.read_text() == "x\n1\n"
    write_bytes_atomic(path, b"other", overwrite=True)
    assert path.read_bytes() == b"other"
    assert not list(path.parent.glob(TEMPORARY_GLOB))


def test_write_npy_atomic_writes_np_save_bytes_and_returns_their_record(tmp_path):
    array = np.random.default_rng(0).standard_normal((3, 5, 7)).astype(np.float16)
    record = write_npy_atomic(tmp_path / "a.npy", array)
    saved = io.BytesIO()
    np.save(saved, array)
    assert (tmp_path / "a.npy").read_bytes() == saved.getvalue()
    assert record == file_record(tmp_path / "a.npy") == bytes_record(saved.getvalue())
    with pytest.raises(OutputExistsError):
        write_npy_atomic(tmp_path / "a.npy", array)


def test_file_damage_names_a_missing_file_another_size_and_another_hash(tmp_path):
    path = write_bytes_atomic(tmp_path / "x.bin", b"0123456789")
    record = file_record(path)
    assert file_damage(path, record, hash=True) is None
    path.write_bytes(b"0123456780")
    assert file_damage(path, record, hash=False) is None  # same size: only the hash tells
    damage = file_damage(path, record, hash=True)
    assert damage is not None and "differs from the recorded" in damage
    path.write_bytes(b"01234")
    assert file_damage(path, record, hash=False) == "5 bytes, but 10 were written"
    path.unlink()
    assert file_damage(path, record, hash=False) == "missing"


def test_a_full_disk_is_one_error_naming_the_folder_and_other_errors_pass(tmp_path):
    with pytest.raises(DiskSpaceError, match=rf"^{tmp_path}: no space left on its file system \(No space left"):
        with disk_full_reported(tmp_path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(PermissionError), disk_full_reported(tmp_path):
        raise PermissionError(errno.EACCES, "denied")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="Linux's /dev/full")
def test_npy_data_written_to_a_full_device_raises_enospc(tmp_path, monkeypatch):
    """What :func:`disk_full_reported` recognises, and no temporary file left (a short write on a full
    tmpfs is tested in test_cache_integrity, where root may mount one)."""
    import common.io

    monkeypatch.setattr(common.io, "open", lambda path, mode: open("/dev/full", mode), raising=False)
    with pytest.raises(OSError) as raised:
        write_npy_atomic(tmp_path / "a.npy", np.ones((64, 1024), dtype=np.float16))
    assert raised.value.errno == errno.ENOSPC and not list(tmp_path.glob(TEMPORARY_GLOB))


def test_format_bytes():
    assert [format_bytes(n) for n in (512, 36_288, 27_951_000_000, 5 << 40)] == [
        "512 bytes", "35.4 KiB", "26.0 GiB", "5.0 TiB"]
