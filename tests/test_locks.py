"""common.locks: one writer per folder, the holder named, a killed holder never blocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from common.errors import FolderBusyError
from common.locks import HOLDER_NAME, folder_lock, read_holder

HOLD = textwrap.dedent("""
    import sys, time
    from common.locks import folder_lock
    with folder_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def holder(tmp_path):
    """Another process holding ``tmp_path/folder``'s lock; killed at the end."""
    folder = tmp_path / "folder"
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                               cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert process.stdout.readline().strip() == "held"
    yield folder, process
    process.kill()
    process.wait()


def test_a_second_writer_is_told_who_holds_the_folder(holder):
    folder, process = holder
    assert read_holder(folder)["pid"] == process.pid
    with pytest.raises(FolderBusyError, match=rf"{folder}: in use by pid {process.pid} on \S+ \(.*-c"):
        with folder_lock(folder, wait=0):
            pass
    lines = []
    with pytest.raises(FolderBusyError, match=rf"still in use by pid {process.pid}.* after 0.2 s"):
        with folder_lock(folder, wait=0.2, on_wait=lines.append):
            pass
    assert lines == [f"{folder}: in use by {lines[0].split('in use by ')[1]}"] and "waiting" in lines[0]


def test_a_killed_holder_never_blocks_the_next_run(holder):
    folder, process = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (folder / HOLDER_NAME).exists()  # left behind by the killed run
    with folder_lock(folder, wait=0):
        assert read_holder(folder)["pid"] == os.getpid()
    assert not (folder / HOLDER_NAME).exists()


def test_a_waiting_writer_gets_the_folder_when_the_holder_ends(holder):
    folder, process = holder
    started = time.monotonic()
    subprocess.Popen(["sh", "-c", f"sleep 1; kill {process.pid}"])
    with folder_lock(folder, wait=60):
        assert time.monotonic() - started >= 0.5
        assert read_holder(folder)["pid"] == os.getpid()
