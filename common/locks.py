"""One writer per folder: an advisory lock that names its holder and never outlives it.

A run that writes into a feature cache or an experiment folder holds ``<folder>/.lock``
(:mod:`filelock`, an ``fcntl`` lock on POSIX) for as long as it writes. The operating
system drops the lock when its process ends, however it ends, so a lock left by a killed
run never blocks the next one. Beside it, ``.lock.holder`` records who holds it (host, pid,
command, start time) so that a second run can say whom it waits for.

Advisory only: a tool that does not ask for the lock is not stopped. Network file
systems differ in how they honour ``fcntl`` locks; on NFS the lock is as good as the
server's lock daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import filelock

from common.errors import FolderBusyError

LOCK_NAME = ".lock"
HOLDER_NAME = ".lock.holder"


def holder_record() -> dict:
    """Who this process is: ``{"host", "pid", "command", "since"}``."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "command": " ".join(sys.argv),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def read_holder(folder: str | Path) -> dict | None:
    """The holder record of ``folder``'s lock as its holder wrote it; None when absent or unreadable."""
    try:
        return json.loads((Path(folder) / HOLDER_NAME).read_text())
    except (OSError, ValueError):
        return None


def describe_holder(holder: dict | None) -> str:
    """``"pid 123 on host-a (make features …, since …)"``, or ``"another run"`` when unknown."""
    if not holder:
        return "another run"
    return (f"pid {holder.get('pid')} on {holder.get('host')} "
            f"({holder.get('command', '?')}, since {holder.get('since', '?')})")


@contextlib.contextmanager
def folder_lock(folder: str | Path, *, wait: float | None = None,
                on_wait: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold ``folder``'s writer lock for the ``with`` block; yields the folder.

    Parameters
    ----------
    folder : path-like
        The folder written into (created if missing).
    wait : float or None
        Seconds to wait for another holder; None waits as long as it takes, 0 not at all.
    on_wait : callable, optional
        Called once with a line naming the holder when the lock is busy, before waiting
        (a command prints it; library code passes it on).

    Raises
    ------
    FolderBusyError
        The lock stayed busy for ``wait`` seconds, naming the folder and its holder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(folder / LOCK_NAME, is_singleton=False)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        holder = describe_holder(read_holder(folder))
        if wait == 0:
            raise FolderBusyError(f"{folder}: in use by {holder}; wait for it to finish") from None
        if on_wait is not None:
            on_wait(f"{folder}: in use by {holder}; waiting for it to finish")
        try:
            lock.acquire(timeout=-1 if wait is None else wait)
        except filelock.Timeout:
            raise FolderBusyError(f"{folder}: still in use by {describe_holder(read_holder(folder))} "
                                  f"after {wait:g} s") from None
    try:
        (folder / HOLDER_NAME).write_text(json.dumps(holder_record()))
        yield folder
    finally:
        with contextlib.suppress(OSError):
            (folder / HOLDER_NAME).unlink()
        lock.release()
