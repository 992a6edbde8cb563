"""Feature cache: parallel, resumable extraction into float16 shards, and random access.

Layout of one cache directory ``<cache_root>/<source>-<kind>-<digest>/``:

``settings.json``
    The :class:`~common.settings.FeatureSettings` the numbers were made with.
``items.csv``
    ``id, path, shard, row`` of every item, fixed when the cache is created; a
    later run with other ids or shard size is refused rather than mixed in (the
    paths may change, e.g. a moved data folder).
``shard_NNNNN.npy``
    float16 array ``(n, *clip_shape)`` holding the items of that shard in
    ``items.csv`` order; rows of failed items are zero (and listed as failed).
    Written under a temporary name and moved into place (:func:`common.io.atomic_output`),
    so a killed run never leaves half a shard.
``shard_NNNNN.json``
    The shard's done record, written after the shard: ``{"npy": {"bytes", "sha256"},
    "items": [...]}``, the size and sha256 of the ``.npy`` as written and the per-item
    status. Its presence marks the shard done, so a re-run computes only the shards without
    one, and in the others only the items whose failure is *transient* (see below).
    Records written before the ``.npy``'s check was recorded are a bare ``items`` list.
``shard_NNNNN.progress`` / ``shard_NNNNN.crashed``
    While a shard is computed: the rows started, and the rows a worker process died on
    (both removed once the shard is written). A row two workers died on is skipped by the
    next attempt and recorded as a transient ``worker_died`` failure. In a local pool, where
    one worker's death ends the others, each row then in flight is computed alone to find
    the one that killed it: the others are not charged (:func:`_find_the_killers`).
``index.csv`` / ``failures.csv`` / ``index.json``
    Written at the end: ``id, shard, row, samples`` of every success (``samples``: how many
    samples of its clip hold audio, fewer than ``clip_samples`` when the audio was shorter
    than the clip and zero-padded; empty where unknown, and absent in older caches: full length), and
    ``id, path, reason, detail, kind`` of every failure; ``index.json``, written before
    ``index.csv``, holds the ``{"bytes", "sha256"}`` of both CSVs and of every shard.
    ``index.csv`` marks the cache complete.
``.lock`` / ``.lock.holder``
    The writer lock (:func:`common.locks.folder_lock`): one extraction at a time writes into
    a cache; a second waits for the first and then finds its work done.

Failures never stop a run; each item that fails is one row. A decode failure (the
:class:`~common.errors.AudioError` family: ``unreadable``, ``silent``, ``too_short``) is
*permanent*: kept on re-runs unless ``--retry-failed``. A missing file (reason ``missing``)
and any other exception (reason: its type, e.g. ``MemoryError``) are *transient*: a
re-run computes those items again into the same shard.

A damaged file is found before it is used. Extraction compares every done shard's size with its record
(and its sha256 with ``--verify``) and computes a damaged shard again, naming it.
:class:`FeatureCache` checks both CSVs (size and sha256) and every shard's size when it
opens a cache, and a shard's sha256 the first time it reads from it, so a model never
trains on a damaged shard: a :class:`~common.errors.FeatureCacheError` names it and the
command that heals it. Before computing, extraction compares the bytes its shards will
take with the free space of the cache's file system (``--force`` skips that), and a full
disk met while writing stops it with one :class:`~common.errors.DiskSpaceError`.

Nothing in these files depends on time, worker count or order of completion, so a
resumed run yields byte-identical files to an uninterrupted one. Extraction holds at
most one shard per worker in memory, which is what lets it scale to fma_large.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import dataclasses
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from common.audio import AUDIO_SUFFIXES, load_clip_with_length, logmel
from common.cli import command
from common.errors import AudioError, ConfigError, DiskSpaceError, FeatureCacheError, ToolkitError
from common.io import (
    TEMPORARY_GLOB,
    absolute_path,
    bytes_record,
    disk_full_reported,
    file_damage,
    file_record,
    format_bytes,
    sidecar_path,
    write_bytes_atomic,
    write_npy_atomic,
    write_text_atomic,
)
from common.locks import folder_lock
from common.metadata import AUDIO_FOLDER_GLOB
from common.pretrained import DEFAULT_WEIGHTS_DIR
from common.settings import FeatureSettings

Item = tuple[str, Path]

_ITEMS_COLUMNS = ["id", "path", "shard", "row"]
_FAILURE_COLUMNS = ["id", "path", "reason", "detail", "kind"]
_RECORD_COLUMNS = ["id", "status", "reason", "detail", "kind", "samples"]

#: Failure kinds: retried on every run / kept (retried with ``retry_failed``).
TRANSIENT, PERMANENT = "transient", "permanent"

#: The dtype of every stored feature.
FEATURE_DTYPE = np.float16

#: What heals a damaged cache file: for a wrong size or a damaged CSV, and for another sha256.
_HEAL = "run `make features` (python -m common.features) again: it computes damaged shards again"
_HEAL_HASH = ("run `make features VERIFY=1` (python -m common.features ... --verify): it checks every shard's "
              "sha256 and computes the shards that differ again")


@dataclasses.dataclass(frozen=True)
class ExtractionSummary:
    """What one :func:`extract` call did.

    Attributes
    ----------
    n_ok, n_failed : int
        Items of the whole cache that succeeded / failed (cached shards included).
    n_cached : int
        Items found already done in shards of an earlier run.
    clips_per_s : float
        Items computed by this call per wall-clock second (0 when all were cached).
    seconds : float
        Wall-clock time of this call.
    n_transient : int
        Failures that the next run retries (missing files, unexpected exceptions).
    top_reasons : tuple of (reason, count, example)
        The three most common failure reasons, most common first; ``example`` is the
        ``path: detail`` of one such failure.
    """

    n_ok: int
    n_failed: int
    n_cached: int
    clips_per_s: float
    seconds: float
    n_transient: int = 0
    top_reasons: tuple[tuple[str, int, str], ...] = ()

    def line(self) -> str:
        """The one-line summary ``fma-features`` prints."""
        line = (f"features: {self.n_ok} ok, {self.n_failed} failed, {self.n_cached} cached, "
                f"{self.clips_per_s:.1f} clips/s")
        if self.n_transient:
            line += (f"; {self.n_transient} transient failure{'s' if self.n_transient > 1 else ''} "
                     f"will be retried on the next run")
        return line

    def mostly_failed(self) -> bool:
        """Whether more than half of the items failed (a wrong data folder, a broken decoder)."""
        return 2 * self.n_failed > self.n_ok + self.n_failed


def cache_dir_for(cache_root: str | Path, source: str, settings: FeatureSettings) -> Path:
    """``<cache_root>/<source>-<kind>-<digest>``: one directory per source and settings."""
    return Path(cache_root) / f"{source}-{settings.kind}-{settings.digest()}"


def bytes_per_clip(settings: FeatureSettings) -> int:
    """Bytes one clip takes in a shard: its :attr:`~FeatureSettings.clip_shape` in float16
    (262,272 for the default 96 x 1366 log-mel; the README's disk table)."""
    return int(np.prod(settings.clip_shape)) * np.dtype(FEATURE_DTYPE).itemsize


def _shard_name(shard: int) -> str:
    return f"shard_{shard:05d}"


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n").encode()


def _settings_json(settings: FeatureSettings) -> bytes:
    return (json.dumps(settings.to_dict(), indent=2, sort_keys=True) + "\n").encode()


def _remove_temporaries(cache_dir: Path) -> None:
    """Delete half-written files of killed runs or workers (never a finished file).

    Crash markers (``.progress``, ``.crashed``) stay: see :func:`_extract_shard`.
    """
    for stale in cache_dir.glob(TEMPORARY_GLOB):
        stale.unlink(missing_ok=True)


def _prepare(items: Sequence[Item], *, settings: FeatureSettings, cache_dir: Path,
             shard_size: int) -> pd.DataFrame:
    """Create or check ``settings.json`` and ``items.csv``; return the item table."""
    if shard_size <= 0:
        raise FeatureCacheError(f"shard_size must be positive, got {shard_size}")
    ids = [str(item_id) for item_id, _ in items]
    if len(set(ids)) != len(ids):
        duplicated = sorted(pd.Series(ids)[pd.Series(ids).duplicated()].unique())[:5]
        raise FeatureCacheError(f"{cache_dir}: duplicate item ids {duplicated}")
    table = pd.DataFrame({
        "id": ids,
        "path": [str(path) for _, path in items],
        "shard": np.arange(len(ids)) // shard_size,
        "row": np.arange(len(ids)) % shard_size,
    })
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(cache_dir)
    settings_path, items_path = cache_dir / "settings.json", cache_dir / "items.csv"
    if settings_path.exists():
        stored = FeatureSettings.from_dict(json.loads(settings_path.read_text()))
        if stored != settings:
            raise FeatureCacheError(f"{settings_path}: cache was made with other settings "
                                    f"({stored}); use a new cache directory (see cache_dir_for)")
    else:
        write_bytes_atomic(settings_path, _settings_json(settings), overwrite=True)
    if items_path.exists():
        # ids, shards and rows must match; paths may differ (data folder moved, relative vs absolute)
        stored_items = pd.read_csv(items_path, dtype={"id": str, "path": str})
        layout = ["id", "shard", "row"]
        if not stored_items[layout].equals(table[layout].astype(stored_items[layout].dtypes.to_dict())):
            raise FeatureCacheError(
                f"{items_path}: this cache was created for another item list or shard size "
                f"({len(stored_items)} items); extract into a new cache directory or delete {cache_dir}")
    else:
        write_bytes_atomic(items_path, _csv_bytes(table), overwrite=True)
    return table


def features_for(clip: np.ndarray, *, settings: FeatureSettings,
                 weights_dir: str | Path = DEFAULT_WEIGHTS_DIR, audio_samples: int | None = None) -> np.ndarray:
    """The stored feature of one clip: its log-mel, the waveform itself, or an embedding.

    Parameters
    ----------
    clip : np.ndarray, shape (settings.clip_samples,)
    settings : FeatureSettings
    weights_dir : path-like
        Pretrained weights (``make weights``); used by embedding kinds only
        (:func:`common.embeddings.embed_clip`).
    audio_samples : int, optional
        Samples of ``clip`` that hold audio (the rest is zero padding; None: all). Embedding
        kinds average only the patches inside them; signal kinds store the padding as it is
        (the cache's index records the length, see :class:`FeatureCache`).

    Returns
    -------
    np.ndarray, shape settings.clip_shape, float32
    """
    if settings.kind == "waveform":
        return np.asarray(clip, dtype=np.float32)
    if settings.layout == "vector":
        from common.embeddings import embed_clip  # imports Keras: embedding kinds only

        return embed_clip(clip, settings=settings, weights_dir=weights_dir, audio_samples=audio_samples)
    return logmel(clip, settings=settings)


def _extract_item(path: str, *, settings: FeatureSettings, weights_dir: str,
                  out: np.ndarray) -> dict[str, str]:
    """Features of one file into ``out`` (left as it is on failure); its record entry, without id.

    Every exception becomes a failure: decode failures are permanent, a missing file
    and anything unexpected (a resampler, ctypes or memory error) transient. A success
    records ``samples``, the samples of the clip that hold audio (before its zero padding).
    """
    if not os.path.isfile(path):
        return {"status": "failed", "reason": "missing", "detail": f"{path}: no such file", "kind": TRANSIENT}
    try:
        clip, samples = load_clip_with_length(path, settings=settings)
        out[...] = features_for(clip, settings=settings, weights_dir=weights_dir, audio_samples=samples)
    except AudioError as error:
        return {"status": "failed", "reason": error.reason, "detail": error.detail, "kind": PERMANENT}
    except Exception as error:  # noqa: BLE001  (one bad file must not stop 100,000)
        return {"status": "failed", "reason": type(error).__name__, "detail": str(error) or repr(error),
                "kind": TRANSIENT}
    return {"status": "ok", "reason": "", "detail": "", "kind": "", "samples": str(samples)}


@dataclasses.dataclass(frozen=True)
class _Record:
    """A shard's done record, ``shard_NNNNN.json``.

    Attributes
    ----------
    items : list of dict
        Per row: ``id, status, reason, detail, kind`` (``kind`` absent in records made before kinds existed),
        and for a success ``samples``, the samples of its clip that hold audio (absent in records made
        before lengths were recorded: the clip is taken as full length).
    npy : dict or None
        The :func:`~common.io.file_record` of ``shard_NNNNN.npy`` as written; None in records
        written before it was recorded (a bare list of items on disk).
    """

    items: list[dict[str, str]]
    npy: dict | None

    def to_bytes(self) -> bytes:
        return (json.dumps({"npy": self.npy, "items": self.items}, indent=1) + "\n").encode()


def _read_record(cache_dir: Path, shard: int) -> _Record | None:
    """The done record of ``shard``; None when it has none.

    Raises
    ------
    ValueError
        The file is not a shard record (damaged JSON or another structure).
    """
    path = cache_dir / f"{_shard_name(shard)}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if isinstance(data, list):
        return _Record(items=data, npy=None)
    if not (isinstance(data, dict) and isinstance(data.get("items"), list) and isinstance(data.get("npy"), dict)):
        raise ValueError("not a shard record")
    return _Record(items=data["items"], npy=data["npy"])


def _extract_shard(cache_dir: str, shard: int, items: list[tuple[str, str]], settings: FeatureSettings,
                   weights_dir: str, retry: list[int] | None = None) -> list[dict[str, str]]:
    """Compute one shard, write it atomically, then its record with the shard's size and sha256;
    return the record's items.

    ``retry`` lists rows to compute again into the existing shard and record (the other
    rows are kept as they are); None computes every row. A row is the same numbers
    whichever way it is computed, so a healed shard equals one computed in one go.

    Before each row its number is appended to ``shard_NNNNN.progress``. A worker process
    that dies in native code (a decoder or resampler crash, the kernel's OOM killer)
    leaves that file behind; the next attempt at the shard (Dask's retry on another
    worker, or the next run's) records the row it died on in ``shard_NNNNN.crashed``
    (:func:`_charge_death`; in a local pool, :func:`_run_until_done` does it first and
    finds which row killed its worker, see :func:`_find_the_killers`); a row on which two
    workers died is skipped and recorded as a transient ``worker_died`` failure. One death
    may be a lost host or an interrupted run (Ctrl-C leaves the marker too), so that row is
    tried once more. One file that kills its process thus costs that file, never the shard
    or the run (with ``n_jobs=1``, which computes in the command's own process, the command
    dies twice before the file is skipped), and the next run after a skip tries it again.
    """
    directory = Path(cache_dir)
    name = _shard_name(shard)
    crashed = _rows_that_killed_a_worker(directory, name)
    if retry is None:
        data = np.zeros((len(items), *settings.clip_shape), dtype=FEATURE_DTYPE)
        record: list[dict[str, str]] = [{} for _ in items]
        rows: Sequence[int] = range(len(items))
    else:
        data = np.load(directory / f"{name}.npy")
        done = _read_record(directory, shard)
        assert done is not None, "rows are retried in done shards only"
        record, rows = done.items, retry
    progress = os.open(directory / f"{name}.progress", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for row in rows:
            item_id, path = items[row]
            data[row] = 0
            if row in crashed:
                entry = {"status": "failed", "reason": "worker_died", "kind": TRANSIENT,
                         "detail": f"{path}: the worker process died computing it (a crash in native code, "
                                   f"or killed for memory)"}
            else:
                os.write(progress, f"{row}\n".encode())
                entry = _extract_item(path, settings=settings, weights_dir=weights_dir, out=data[row])
            if entry["status"] != "ok":
                data[row] = 0
            record[row] = {"id": item_id, **entry}
    finally:
        os.close(progress)
    npy = write_npy_atomic(directory / f"{name}.npy", data, overwrite=True)
    write_bytes_atomic(directory / f"{name}.json", _Record(items=record, npy=npy).to_bytes(), overwrite=True)
    for marker in (f"{name}.progress", f"{name}.crashed"):
        (directory / marker).unlink(missing_ok=True)
    return record


def _charge_death(directory: Path, name: str) -> int | None:
    """Move the row a dead worker was computing from ``<name>.progress`` to ``<name>.crashed``; that row.

    A ``<name>.progress`` file left by a dead worker ends with the row it was computing: that
    row is appended to ``<name>.crashed`` (which survives further deaths) and the progress
    file is removed. None when there is no progress file, or an empty one.
    """
    progress = directory / f"{name}.progress"
    if not progress.exists():
        return None
    lines = progress.read_text().split()
    row = int(lines[-1]) if lines else None
    if row is not None:
        _record_death(directory, name, row)
    progress.unlink()
    return row


def _record_death(directory: Path, name: str, row: int) -> None:
    """Append ``row`` to ``<name>.crashed``: a worker died computing it."""
    with open(directory / f"{name}.crashed", "a") as handle:
        handle.write(f"{row}\n")


def _acquit(directory: Path, name: str, row: int) -> None:
    """Take one death of ``row`` back from ``<name>.crashed`` (removed when none is left)."""
    crashed = directory / f"{name}.crashed"
    rows = crashed.read_text().split()
    rows.remove(str(row))
    if rows:
        write_text_atomic(crashed, "".join(f"{other}\n" for other in rows), overwrite=True)
    else:
        crashed.unlink()


def _rows_that_killed_a_worker(directory: Path, name: str) -> set[int]:
    """Rows of shard ``name`` on which two worker processes died, from ``<name>.crashed``.

    A dead worker's row is charged first (:func:`_charge_death`). One death may be the host's
    fault (a node lost, a job killed), so that row is tried once more; a second death on it
    names the clip.
    """
    _charge_death(directory, name)
    crashed = directory / f"{name}.crashed"
    deaths = collections.Counter(int(row) for row in crashed.read_text().split()) if crashed.exists() else {}
    return {row for row, count in deaths.items() if count >= 2}


def _rows_to_retry(record: _Record, *, retry_failed: bool) -> list[int]:
    """Rows of a done shard to compute again: transient failures, or every failure with ``retry_failed``.

    Records of caches made before failure kinds existed hold decode failures only: permanent.
    """
    return [row for row, entry in enumerate(record.items) if entry["status"] != "ok"
            and (retry_failed or entry.get("kind", PERMANENT) == TRANSIENT)]


def _is_glibc() -> bool:
    """Whether this process runs on glibc (a system call, unlike ``platform.libc_ver``'s file scan)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # no such name outside glibc
        return False


#: glibc's ``mallopt`` parameters (``malloc.h``).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Arrays up to this size come from the heap (glibc's largest allowed value) ...
HEAP_MMAP_THRESHOLD_BYTES = 32 << 20
#: ... and up to this much freed heap is kept for the next clip instead of being trimmed.
HEAP_TRIM_THRESHOLD_BYTES = 64 << 20


def _keep_freed_memory_for_the_next_clip() -> bool:
    """Fix glibc's malloc thresholds in this process; False where the C library is not glibc.

    By default glibc sets its mmap threshold to the largest block freed so far and returns
    the top of the heap to the kernel when more than twice that is free. Per clip, the
    decode buffer (shrunk to ~2.6 MB) set the threshold, and the clip's ~5 MB of arrays
    (resampled signal, STFT blocks, mel) were trimmed after every clip and came back as
    ~1,300 page faults: 2.3 ms of system time per 30-s clip, 11 % of
    :func:`_extract_shard`'s time (one process, 240 real-music clips). With fixed
    thresholds a worker keeps at most :data:`HEAP_TRIM_THRESHOLD_BYTES` of freed memory
    (in a Dask worker this replaces the nanny's ``MALLOC_TRIM_THRESHOLD_``: Dask then counts
    up to that much more "unmanaged" memory per worker).
    """
    if not _is_glibc():
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD_BYTES)
                and libc.mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD_BYTES))


def _run_task(task: tuple) -> tuple[int, int, list[dict[str, str]]]:
    """Fix the allocator's thresholds (every task: cheap, and nothing module-level has to reach a
    worker when this module runs as ``__main__``), then run ``_extract_shard(*task)`` (looked up at
    call time); ``(shard, items computed, record)``."""
    _keep_freed_memory_for_the_next_clip()
    record = _extract_shard(*task)
    return task[1], (len(record) if task[5] is None else len(task[5])), record


def _probe_clip(clip: tuple[str, FeatureSettings, str]) -> None:
    """Compute the clip ``(path, settings, weights_dir)`` and throw its features away: run alone
    in a worker, whether the worker survives it (see :func:`_find_the_killers`)."""
    path, settings, weights_dir = clip
    _extract_item(path, settings=settings, weights_dir=weights_dir,
                  out=np.zeros(settings.clip_shape, dtype=FEATURE_DTYPE))


def _run_local(function: Callable, tasks: list[tuple], *, n_jobs: int) -> Iterator:
    """``function(task)`` of every task in a local loky pool of ``n_jobs`` processes, in order of completion."""
    import joblib

    if not tasks:
        return
    # batch_size=1: a shard is already the unit of work. joblib's automatic batching groups
    # tasks shorter than 0.2 s (small shards) into batches of several, so the last batch of a
    # run kept one core busy while the others idled: 35 against 40 clips/s (medians of 4
    # interleaved runs of 96 real-music clips in shards of 4, 2 cores)
    with joblib.parallel_config(backend="loky", inner_max_num_threads=1):
        yield from joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered", batch_size=1)(
            joblib.delayed(function)(task) for task in tasks)


def _run_dask(tasks: list[tuple], *, scheduler: str) -> Iterator[tuple[int, int, list[dict[str, str]]]]:
    from distributed import Client, as_completed

    if not tasks:
        return
    run_id = uuid.uuid4().hex[:8]  # task keys only; nothing of it reaches the cache files
    with Client(scheduler) as client:
        futures = [client.submit(_run_task, task, key=f"feature-shard-{run_id}-{task[1]:05d}") for task in tasks]
        for future in as_completed(futures):
            yield future.result()


def _worker_deaths() -> tuple[type[BaseException], ...]:
    """What joblib and Dask raise when a worker process died under a task."""
    from distributed import KilledWorker
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    return TerminatedWorkerError, KilledWorker


def _run_until_done(tasks: list[tuple], *, run: Callable[[list[tuple]], Iterator], bar,
                    notify: Callable[[str], None], probe: Callable[[tuple], object] | None) -> None:
    """Run the shard ``tasks`` with ``run``; after a worker died, run the unfinished ones again.

    A row on which two workers died is skipped by the next attempt at its shard (see
    :func:`_extract_shard`), so a shard needs at most two attempts per file that kills a worker.

    Parameters
    ----------
    probe : callable or None
        ``probe(clip)`` computes one clip alone (:func:`_probe_clip` in a fresh local pool):
        given where one worker's death ends the others (loky), to find the clip that killed it
        (:func:`_find_the_killers`). None for Dask, whose workers die alone.
    """
    done: set[int] = set()
    todo = tasks
    for attempt in range(1, 2 * sum(len(task[2]) for task in tasks) + 2):
        try:
            for shard, n_computed, _record in run(todo):
                done.add(shard)
                bar.update(n_computed)
            return
        except _worker_deaths() as error:
            todo = [task for task in todo if task[1] not in done]
            killers = _find_the_killers(todo, probe=probe) if probe else []
            notify(f"features: a worker process died ({type(error).__name__})"
                   + (f"; {', '.join(killers)} killed one alone and is skipped" if killers else "")
                   + f"; attempt {attempt + 1} at {len(todo)} unfinished shard(s) "
                     f"(a clip two workers died on is skipped)")
    raise FeatureCacheError("workers kept dying on every clip; see the .crashed files in the cache")


def _find_the_killers(tasks: list[tuple], *, probe: Callable[[tuple], object]) -> list[str]:
    """Which clips killed a local pool: when one loky worker dies, loky ends the others too.

    The progress file of each unfinished shard (``tasks``) names the row its worker was
    computing when the pool ended: the killer's, or a bystander's. Each such row is charged a
    death (:func:`_charge_death`), then computed alone (``probe``). A row whose worker dies alone
    is charged a second death, so that the next attempt skips it; when one did, the rows that
    survived alone are acquitted (:func:`_acquit`): the pool's end killed them. (Charging them
    too made a bystander that was twice in flight beside a killing clip a ``worker_died``
    failure of its own.) When every row survives alone the death was no one clip's (memory the
    clips took together, a killed process) and the charges stand, as for a death under Dask.

    Returns
    -------
    list of str
        Paths of the clips whose worker died alone: their shards skip them from now on.
    """
    killers: list[str] = []
    survivors: list[tuple[Path, str, int]] = []
    for task in tasks:
        directory, name = Path(task[0]), _shard_name(task[1])
        row = _charge_death(directory, name)
        if row is None:
            continue
        path = task[2][row][1]
        try:
            probe((path, task[3], task[4]))
        except _worker_deaths():
            _record_death(directory, name, row)
            killers.append(str(path))
        else:
            survivors.append((directory, name, row))
    if killers:
        for directory, name, row in survivors:
            _acquit(directory, name, row)
    return killers


def extract(items: Sequence[Item], *, settings: FeatureSettings, cache_dir: str | Path,
            n_jobs: int = -1, shard_size: int = 256, scheduler: str | None = None,
            progress: bool = True, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR,
            retry_failed: bool = False, verify: bool = False, check_free_space: bool = True,
            notify: Callable[[str], None] | None = None) -> ExtractionSummary:
    """Extract the features of ``items`` into ``cache_dir``, computing only missing or damaged shards.

    The run holds the cache's writer lock (:func:`common.locks.folder_lock`) from start to end:
    a second run on the same cache waits for it, then finds its work done. Dask workers write
    shards without the lock: this process holds it for them.

    Parameters
    ----------
    items : sequence of (id, path)
        Ids are stored as strings; their order fixes shards and rows. Paths are made
        absolute here (against this process's working directory) before anything is stored
        or sent to a worker.
    settings : FeatureSettings
    cache_dir : path-like
        Usually :func:`cache_dir_for`. Created if needed; made absolute like the paths.
    n_jobs : int
        joblib worker processes (-1: all cores); each runs BLAS/OpenMP on one thread.
    shard_size : int
        Items per shard (256 log-mels of the default settings are 67 MB).
    scheduler : str, optional
        Address of a ``dask.distributed`` scheduler; shards are then computed by its
        workers, which must see ``cache_dir`` and the audio at the same absolute paths
        (a shared file system), whatever their working directory. A shard whose worker
        dies is recomputed by another.
    progress : bool
        Show a tqdm bar over clips (on stderr).
    weights_dir : path-like
        Pretrained weights (``make weights``) for embedding kinds (``musicnn``); each worker
        builds the network once. Checked before any work starts.
    retry_failed : bool
        Compute permanent failures (decode errors) of earlier runs again too; transient
        ones (missing files, unexpected exceptions) are always retried.
    verify : bool
        Compare every done shard's sha256 with its record too (its size is always compared),
        reading the whole cache; a record written before the sha256 was recorded gets it.
    check_free_space : bool
        Refuse to start when the shards still to write need more than the free space of the
        cache's file system.
    notify : callable, optional
        Called with each diagnostic line: whose lock the run waits for, each damaged shard it
        computes again, each worker death. ``fma-features`` prints them on stderr.

    Returns
    -------
    ExtractionSummary
        Its :meth:`~ExtractionSummary.line` is what ``fma-features`` prints,
        ``features: N ok, M failed, K cached, R clips/s``.

    Raises
    ------
    FeatureCacheError
        ``cache_dir`` holds another item list, shard size or settings.
    DiskSpaceError
        Too little free space to start (naming both numbers), or the file system filled up
        while writing; the work finished so far is kept for the next run.
    ToolkitError
        An embedding kind whose weights are missing (the message names ``make weights``).
    """
    start = time.perf_counter()
    notify = notify or (lambda line: None)
    # workers run in their own directory (on other hosts): send them absolute paths only
    cache_dir, weights_dir = absolute_path(cache_dir), absolute_path(weights_dir)
    items = [(item_id, absolute_path(path)) for item_id, path in items]
    _require_weights(settings, weights_dir=weights_dir)
    with disk_full_reported(cache_dir), folder_lock(cache_dir, on_wait=notify):
        table = _prepare(items, settings=settings, cache_dir=cache_dir, shard_size=shard_size)
        plan = _plan_shards(table, settings=settings, cache_dir=cache_dir, weights_dir=weights_dir,
                            retry_failed=retry_failed, verify=verify)
        for damage in plan.damaged:
            notify(f"features: {damage}; computing the shard again")
        if check_free_space:
            _require_free_space(plan, settings=settings, cache_dir=cache_dir, n_items=len(table))
        _compute_shards(plan, n_items=len(table), n_jobs=n_jobs, scheduler=scheduler, progress=progress,
                        notify=notify)
        status, checks = _consolidate_records(table, plan, cache_dir=cache_dir)
        failures = _write_index_and_failures(table, status, checks, cache_dir=cache_dir)
    return _summarise(failures, n_items=len(table), n_cached=plan.n_cached, seconds=time.perf_counter() - start)


def _require_weights(settings: FeatureSettings, *, weights_dir: Path) -> None:
    """Refuse an embedding kind whose pretrained weights are missing, before any work starts."""
    if settings.layout == "vector":
        from common.embeddings import require_weights

        require_weights(settings.kind, weights_dir=weights_dir)


@dataclasses.dataclass(frozen=True)
class _ShardPlan:
    """What :func:`extract` has to compute, shard by shard.

    Attributes
    ----------
    tasks : list of tuple
        Arguments of :func:`_extract_shard` of every shard to compute: new and damaged shards
        (``retry`` None) and done shards with rows to compute again.
    records : dict of int to _Record
        Records of the done shards that need no work, by shard number.
    n_shards : int
    n_cached : int
        Items found done (not retried) in shards of an earlier run.
    damaged : list of str
        One line per done shard found damaged (computed again), naming its file and the damage.
    """

    tasks: list[tuple]
    records: dict[int, _Record]
    n_shards: int
    n_cached: int
    damaged: list[str]


def _plan_shards(table: pd.DataFrame, *, settings: FeatureSettings, cache_dir: Path, weights_dir: Path,
                 retry_failed: bool, verify: bool) -> _ShardPlan:
    """Sort the shards of the item ``table`` into done ones and ones to compute (see :class:`_ShardPlan`)."""
    records: dict[int, _Record] = {}
    tasks = []
    damaged = []
    n_cached = 0
    for key, group in table.groupby("shard", sort=True):
        shard = int(cast(int, key))
        record, damage = _done_record(cache_dir, shard, settings=settings, n_rows=len(group), verify=verify)
        if damage:
            damaged.append(damage)
        retry: list[int] | None = None
        if record is not None:
            retry = _rows_to_retry(record, retry_failed=retry_failed)
            n_cached += len(record.items) - len(retry)
            if not retry:
                records[shard] = record
                continue
        tasks.append((str(cache_dir), shard, list(zip(group["id"], group["path"])), settings,
                      str(weights_dir), retry))
    n_shards = int(table["shard"].max()) + 1 if len(table) else 0
    return _ShardPlan(tasks=tasks, records=records, n_shards=n_shards, n_cached=n_cached, damaged=damaged)


def _done_record(cache_dir: Path, shard: int, *, settings: FeatureSettings, n_rows: int,
                 verify: bool) -> tuple[_Record | None, str | None]:
    """The record of a done shard whose ``.npy`` passes its checks: ``(record, None)``.

    ``(None, None)`` for a shard not done (no record), ``(None, what is wrong)`` for a damaged
    one: an unreadable record, a missing ``.npy``, or one of another size than recorded (or,
    with ``verify``, another sha256). A record written before the ``.npy``'s check was recorded
    is accepted as it is; with ``verify`` it gets the check (rewritten with the file's size
    and sha256) once the ``.npy`` loads as the shard's ``(n_rows, *clip_shape)`` float16 array.
    """
    name = _shard_name(shard)
    npy_path = cache_dir / f"{name}.npy"
    try:
        record = _read_record(cache_dir, shard)
    except ValueError as error:
        return None, f"{cache_dir / name}.json: unreadable shard record ({error})"
    if record is None:
        return None, None
    if record.npy is not None:
        damage = file_damage(npy_path, record.npy, hash=verify)
        return (None, f"{npy_path}: {damage}") if damage else (record, None)
    if not npy_path.is_file():
        return None, f"{npy_path}: missing"
    if not verify:
        return record, None
    try:
        array = np.load(npy_path, mmap_mode="r")
    except (OSError, ValueError) as error:
        return None, f"{npy_path}: unreadable ({error})"
    if array.shape != (n_rows, *settings.clip_shape) or array.dtype != FEATURE_DTYPE:
        return None, f"{npy_path}: a {array.dtype} array of shape {array.shape}, not the shard's"
    record = _Record(items=record.items, npy=file_record(npy_path))
    write_bytes_atomic(cache_dir / f"{name}.json", record.to_bytes(), overwrite=True)
    return record, None


def _require_free_space(plan: _ShardPlan, *, settings: FeatureSettings, cache_dir: Path, n_items: int) -> None:
    """Refuse a run whose shards would not fit on the file system of ``cache_dir``.

    The shards still to write take their clips times :func:`bytes_per_clip`, less what their
    files already hold (a shard with rows to retry is rewritten in place).

    Raises
    ------
    DiskSpaceError
        More bytes to write than ``shutil.disk_usage`` reports free, naming both and the folder.
    """
    per_clip = bytes_per_clip(settings)
    n_clips = sum(len(task[2]) for task in plan.tasks)
    written = sum((cache_dir / f"{_shard_name(task[1])}.npy").stat().st_size
                  for task in plan.tasks if (cache_dir / f"{_shard_name(task[1])}.npy").is_file())
    needed = n_clips * per_clip - written
    free = shutil.disk_usage(cache_dir).free
    if needed > free:
        raise DiskSpaceError(
            f"{cache_dir}: the feature cache needs {format_bytes(needed)} more ({n_clips} clip{'s' * (n_clips != 1)} "
            f"of {per_clip:,} bytes; {format_bytes(n_items * per_clip)} when complete), but its file system has "
            f"{format_bytes(free)} free; free some space or choose another cache folder (--cache, make's CACHE), "
            f"or pass --force to start anyway")


def _compute_shards(plan: _ShardPlan, *, n_items: int, n_jobs: int, scheduler: str | None, progress: bool,
                    notify: Callable[[str], None]) -> None:
    """Run the plan's tasks in local worker processes, or on the Dask cluster of ``scheduler``,
    until every shard is written; a tqdm bar over all ``n_items`` clips (cached ones counted) on stderr."""
    from tqdm.auto import tqdm

    def run(todo: list[tuple]) -> Iterator:
        return _run_dask(todo, scheduler=scheduler) if scheduler else _run_local(_run_task, todo, n_jobs=n_jobs)

    def probe(clip: tuple) -> list:
        return list(_run_local(_probe_clip, [clip], n_jobs=n_jobs))

    with tqdm(total=n_items, initial=plan.n_cached, unit="clip", desc="features", disable=not progress,
              file=sys.stderr) as bar:
        _run_until_done(plan.tasks, run=run, bar=bar, notify=notify, probe=None if scheduler else probe)


def _consolidate_records(table: pd.DataFrame, plan: _ShardPlan, *,
                         cache_dir: Path) -> tuple[pd.DataFrame, dict[str, dict | None]]:
    """Every item's status from the shard records, in ``items.csv`` order, and every shard's check.

    Returns
    -------
    status : pd.DataFrame
        Columns ``id, status, reason, detail, kind, samples``, one row per row of ``table``; ``kind``
        is empty for successes and ``permanent`` for failures of records made before kinds existed;
        ``samples`` (str) is missing for failures and for successes of records made before lengths existed.
    checks : dict of str to dict or None
        ``shard_NNNNN.npy`` -> its recorded :func:`~common.io.file_record` (None: not recorded).

    Raises
    ------
    FeatureCacheError
        A shard was not written, or the records do not match ``items.csv``.
    """
    _remove_temporaries(cache_dir)  # a worker that died mid-shard leaves its temporary file
    records = dict(plan.records)
    for shard in range(plan.n_shards):
        record = records[shard] if shard in records else _read_record(cache_dir, shard)
        if record is None:
            raise FeatureCacheError(f"{cache_dir}: {_shard_name(shard)} was not written; run again to finish it")
        records[shard] = record
    status = pd.DataFrame([entry for shard in range(plan.n_shards) for entry in records[shard].items],
                          columns=_RECORD_COLUMNS)
    status["kind"] = status["kind"].where(status["status"] == "ok", status["kind"].fillna(PERMANENT)).fillna("")
    if not status["id"].equals(table["id"]):
        raise FeatureCacheError(f"{cache_dir}: shard records do not match items.csv")
    return status, {f"{_shard_name(shard)}.npy": records[shard].npy for shard in range(plan.n_shards)}


def _write_index_and_failures(table: pd.DataFrame, status: pd.DataFrame, checks: dict[str, dict | None], *,
                              cache_dir: Path) -> pd.DataFrame:
    """Write ``failures.csv``, ``index.json`` (the checks of both CSVs and of the shards), then
    ``index.csv`` (which marks the cache complete); return the failures.

    Returns
    -------
    pd.DataFrame
        Columns ``id, path, reason, detail, kind``, one row per failed item, in ``items.csv`` order.
    """
    ok = (status["status"] == "ok").to_numpy()
    failures = pd.concat([table.loc[~ok, ["id", "path"]], status.loc[~ok, ["reason", "detail", "kind"]]],
                         axis=1)[_FAILURE_COLUMNS]
    index_table = pd.concat([table.loc[ok, ["id", "shard", "row"]], status.loc[ok, ["samples"]]], axis=1)
    failures_csv, index_csv = _csv_bytes(failures), _csv_bytes(index_table)
    write_bytes_atomic(cache_dir / "failures.csv", failures_csv, overwrite=True)
    index = {"index.csv": bytes_record(index_csv), "failures.csv": bytes_record(failures_csv), "shards": checks}
    write_text_atomic(sidecar_path(cache_dir / "index.csv"), json.dumps(index, indent=1) + "\n", overwrite=True)
    write_bytes_atomic(cache_dir / "index.csv", index_csv, overwrite=True)
    return failures


def _summarise(failures: pd.DataFrame, *, n_items: int, n_cached: int, seconds: float) -> ExtractionSummary:
    """The :class:`ExtractionSummary` of a run over ``n_items`` items that took ``seconds``."""
    computed = n_items - n_cached
    counts = failures["reason"].value_counts(sort=True)
    top_reasons = tuple((str(reason), int(count), "{}: {}".format(*failures.loc[failures["reason"] == reason,
                                                                               ["path", "detail"]].iloc[0]))
                        for reason, count in counts.iloc[:3].items())
    return ExtractionSummary(n_ok=n_items - len(failures), n_failed=len(failures), n_cached=n_cached,
                             clips_per_s=computed / seconds if computed else 0.0, seconds=seconds,
                             n_transient=int((failures["kind"] == TRANSIENT).sum()), top_reasons=top_reasons)


class FeatureCache:
    """Read access to a finished feature cache.

    Use :meth:`open`. :meth:`get` copies rows out of the memory-mapped shards, so a
    random batch reads only its own rows; ``get()`` reads the whole cache into memory.

    Every shard's size is checked when the cache opens, and its sha256 the first time a row
    of it is read (once per shard and :class:`FeatureCache`: a read of the shard, cheap beside
    the training or prediction that reads its rows), against ``index.json``; caches written
    before it existed are read unchecked.

    Attributes
    ----------
    directory : Path
    settings : FeatureSettings
    ids : np.ndarray of str, shape (n_ok,)
        Ids that succeeded, in cache order.
    failures : pd.DataFrame
        Columns ``id, path, reason, detail``.
    samples : np.ndarray of int64, shape (n_ok,)
        Samples of each clip (in :attr:`ids` order) that hold audio, before its zero padding;
        ``settings.clip_samples`` for full-length clips and where the cache does not record it.
    """

    def __init__(self, directory: Path, settings: FeatureSettings, index: pd.DataFrame,
                 failures: pd.DataFrame, shard_checks: dict[str, dict | None]) -> None:
        self.directory = directory
        self.settings = settings
        self.failures = failures
        self.ids = index["id"].to_numpy(dtype=str)
        recorded = index["samples"] if "samples" in index else pd.Series(np.nan, index=index.index)
        self.samples = recorded.fillna(settings.clip_samples).to_numpy(dtype=np.int64)
        self._position = pd.Series(np.arange(len(index)), index=pd.Index(self.ids))
        self._shard = index["shard"].to_numpy(dtype=np.int64)
        self._row = index["row"].to_numpy(dtype=np.int64)
        self._checks = shard_checks
        self._maps: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, cache_dir: str | Path) -> FeatureCache:
        """Open a complete cache, checking its CSVs (size and sha256) and every shard's size.

        Raises
        ------
        FeatureCacheError
            Missing or incomplete (extraction not finished), or damaged (naming the file);
            the message names the command to run.
        """
        directory = Path(cache_dir)
        hint = "run `make features ...` (python -m common.features) to create or finish it"
        if not (directory / "settings.json").exists():
            raise FeatureCacheError(f"{directory}: no feature cache here; {hint}")
        if not (directory / "index.csv").exists():
            raise FeatureCacheError(f"{directory}: feature cache is incomplete (no index.csv); {hint}")
        settings = FeatureSettings.from_dict(json.loads((directory / "settings.json").read_text()))
        checks = _read_index_checks(directory)
        for name in ("index.csv", "failures.csv"):
            if name in checks:
                _raise_if_damaged(directory / name, checks[name], hash=True)
        shard_checks = checks.get("shards", {})
        for name, record in shard_checks.items():
            if record is not None:
                _raise_if_damaged(directory / name, record, hash=False)
        index = pd.read_csv(directory / "index.csv", dtype={"id": str})
        failures = pd.read_csv(directory / "failures.csv", dtype=str, keep_default_na=False)
        return cls(directory, settings, index, failures, shard_checks)

    def __len__(self) -> int:
        return len(self.ids)

    def audio_samples(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """:attr:`samples` of ``ids``, in the order given: shape ``(len(ids),)``, int64.

        Raises
        ------
        KeyError
            An id that is not in the cache (failed or never extracted).
        """
        return self.samples[self._positions(ids)]

    def _positions(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Positions in :attr:`ids` of ``ids``; a KeyError naming up to 5 that are not in the cache."""
        keys = pd.Index(np.asarray(ids, dtype=str))
        positions = self._position.reindex(keys).to_numpy()
        if np.isnan(positions.astype(float)).any():
            missing = list(keys[pd.isna(positions)][:5])
            raise KeyError(f"{self.directory}: ids not in the cache (failed or never extracted): {missing}")
        return positions.astype(np.int64)

    def _map(self, shard: int) -> np.ndarray:
        """The memory map of ``shard``; the first time, after its size and sha256 are checked."""
        if shard not in self._maps:
            path = self.directory / f"{_shard_name(shard)}.npy"
            record = self._checks.get(path.name)
            if record is not None:
                _raise_if_damaged(path, record, hash=True)
            try:
                self._maps[shard] = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise FeatureCacheError(f"{path}: unreadable ({error}); the feature cache is damaged: "
                                        f"{_HEAL}") from error
        return self._maps[shard]

    def get(self, ids: Sequence[str] | np.ndarray | None = None) -> np.ndarray:
        """Features of ``ids`` in the order given, copied into a new in-memory array.

        Parameters
        ----------
        ids : sequence of str, optional
            Default: every id of the cache (:attr:`ids`, in cache order).

        Returns
        -------
        np.ndarray, shape (len(ids), *settings.clip_shape), float16

        Raises
        ------
        KeyError
            An id that is not in the cache (failed or never extracted).
        FeatureCacheError
            A shard to read is damaged (another size or sha256 than recorded, or unreadable).
        """
        positions = self._positions(self.ids if ids is None else ids)
        out = np.empty((len(positions), *self.settings.clip_shape), dtype=FEATURE_DTYPE)
        shards, rows = self._shard[positions], self._row[positions]
        for shard in np.unique(shards):
            selected = np.flatnonzero(shards == shard)
            out[selected] = self._map(int(shard))[rows[selected]]
        return out


def _read_index_checks(directory: Path) -> dict:
    """``index.json`` of a complete cache: the checks of its CSVs and shards; ``{}`` for a cache
    written before it existed.

    Raises
    ------
    FeatureCacheError
        ``index.json`` is unreadable.
    """
    path = sidecar_path(directory / "index.csv")
    if not path.exists():
        return {}
    try:
        checks = json.loads(path.read_text())
        if not isinstance(checks, dict):
            raise ValueError("not a JSON object")
    except ValueError as error:
        raise FeatureCacheError(f"{path}: unreadable ({error}); the feature cache is damaged: {_HEAL}") from error
    return checks


def _raise_if_damaged(path: Path, record: dict, *, hash: bool) -> None:
    """Compare ``path`` with its recorded size (and, with ``hash``, sha256).

    Raises
    ------
    FeatureCacheError
        Naming the file, what is wrong, and the command that heals it: ``make features``, or
        for a shard of the recorded size but another sha256, ``make features VERIFY=1``.
    """
    damage, heal = file_damage(path, record, hash=False), _HEAL
    if damage is None and hash:
        damage, heal = file_damage(path, record, hash=True), (_HEAL_HASH if path.suffix == ".npy" else _HEAL)
    if damage is not None:
        raise FeatureCacheError(f"{path}: {damage}; the feature cache is damaged: {heal}")


def folder_items(audio_dir: str | Path) -> list[Item]:
    """Every ``*.mp3/.wav/.ogg/.flac`` directly in ``audio_dir`` or in its FMA-layout folders
    (three digits: ``fma_large/000/000002.mp3``), id = file stem, sorted by path.

    A flat folder (a crowdAI test folder) lists as it always did; an FMA audio folder lists
    every track of the archive, so that ``make pseudo UNLABELLED=data/fma_large`` predicts the
    tracks of a larger subset (those of the folds and the test split are dropped there).

    Raises
    ------
    FeatureCacheError
        Missing folder, no audio files, or two files with the same stem.
    """
    directory = Path(audio_dir)
    if not directory.is_dir():
        raise FeatureCacheError(f"{directory}: no such audio folder")
    folders = [directory, *(path for path in directory.glob(AUDIO_FOLDER_GLOB) if path.is_dir())]
    paths = sorted(path for folder in folders for path in folder.iterdir()
                   if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file())
    if not paths:
        raise FeatureCacheError(f"{directory}: no {'/'.join(AUDIO_SUFFIXES)} files")
    stems = pd.Series([path.stem for path in paths])
    if stems.duplicated().any():
        raise FeatureCacheError(f"{directory}: several files share the id(s) {sorted(stems[stems.duplicated()])[:5]}")
    return [(path.stem, path) for path in paths]


def _settings_from_config(path: Path) -> FeatureSettings:
    import yaml

    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return FeatureSettings.from_dict(config.get("features"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fma-features", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="experiment YAML; its `features:` mapping")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="FMA data folder (with fma_metadata/, fma_<subset>/)")
    source.add_argument("--audio-dir", type=Path, help="plain folder of audio files (id = file stem)")
    parser.add_argument("--subset", choices=("small", "medium", "large"), help="FMA subset (with --data)")
    parser.add_argument("--cache", type=Path, default=Path("cache"), help="cache root (default: cache)")
    parser.add_argument("--jobs", type=int, default=-1, help="worker processes (-1: all cores)")
    parser.add_argument("--scheduler", default=None, help="dask.distributed scheduler address, tcp://host:8786")
    parser.add_argument("--shard-size", type=int, default=256, help="clips per shard (default 256)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--retry-failed", action="store_true",
                        help="compute decode failures (unreadable, silent, too short) of earlier runs again; "
                             "missing files and unexpected errors are always retried")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR,
                        help="musicnn weights for embedding kinds (default: %(default)s; `make weights`)")
    parser.add_argument("--verify", action="store_true",
                        help="compare every finished shard's sha256 with its record (reads the whole cache) and "
                             "compute the shards that differ again; their size is always compared")
    parser.add_argument("--force", action="store_true",
                        help="start even when the cache's file system has less free space than the shards need")
    return parser


def _print_diagnostic(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@command("fma-features", resume="run it again: the finished shards are kept")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data is not None and args.subset is None:
        parser.error("--data needs --subset")
    settings = _settings_from_config(args.config)
    if args.data is not None:
        from common.metadata import FmaDataset

        dataset = FmaDataset.open(args.data, args.subset)
        audio_dir = dataset.require_audio_dir()  # before anything is cached: a wrong DATA caches nothing
        print(f"audio: {audio_dir}", file=sys.stderr)
        items = dataset.items()
        source = dataset.feature_source
    else:
        items = folder_items(args.audio_dir)
        source = args.audio_dir.resolve().name
    cache_dir = cache_dir_for(args.cache, source, settings)
    print(f"cache: {cache_dir}", file=sys.stderr)
    summary = extract(items, settings=settings, cache_dir=cache_dir, n_jobs=args.jobs,
                      shard_size=args.shard_size, scheduler=args.scheduler, progress=not args.no_progress,
                      weights_dir=args.weights, retry_failed=args.retry_failed, verify=args.verify,
                      check_free_space=not args.force, notify=_print_diagnostic)
    print(summary.line(), flush=True)
    if summary.mostly_failed():
        reasons = "; ".join(f"{count} {reason} (e.g. {example})" for reason, count, example in summary.top_reasons)
        raise ToolkitError(f"{summary.n_failed} of {summary.n_ok + summary.n_failed} clips failed, more than half: "
                           f"check the audio folder and the decoder. Most common: {reasons}. "
                           f"See {cache_dir / 'failures.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
