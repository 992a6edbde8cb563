"""The one atomic file writer: nothing half-written, nothing silently overwritten."""

from __future__ import annotations

import pytest

from common.errors import OutputExistsError
from common.io import TEMPORARY_GLOB, atomic_output, write_bytes_atomic, write_text_atomic


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
