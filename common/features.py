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
    Per-item status of the shard, written after the shard: its presence marks
    the shard done, so a re-run computes only the shards without one, and in the
    others only the items whose failure is *transient* (see below).
``shard_NNNNN.progress`` / ``shard_NNNNN.crashed``
    While a shard is computed: the rows started, and the rows a worker process died on
    (both removed once the shard is written). A row two workers died on is skipped by the
    next attempt and recorded as a transient ``worker_died`` failure.
``index.csv`` / ``failures.csv``
    Written at the end: ``id, shard, row`` of every success, and
    ``id, path, reason, detail, kind`` of every failure. ``index.csv`` marks the cache complete.

Failures never stop a run; each item that fails is one row. A decode failure (the
:class:`~common.errors.AudioError` family: ``unreadable``, ``silent``, ``too_short``) is
*permanent*: kept on re-runs unless ``--retry-failed``. A missing file (reason ``missing``)
and any other exception (reason: its type, e.g. ``MemoryError``) are *transient*: a
re-run computes those items again into the same shard.

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
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from common.audio import AUDIO_SUFFIXES, load_clip, logmel
from common.cli import command
from common.errors import AudioError, ConfigError, FeatureCacheError, ToolkitError
from common.io import TEMPORARY_GLOB, absolute_path, atomic_output, write_bytes_atomic
from common.pretrained import DEFAULT_WEIGHTS_DIR
from common.settings import FeatureSettings

Item = tuple[str, Path]

_ITEMS_COLUMNS = ["id", "path", "shard", "row"]
_FAILURE_COLUMNS = ["id", "path", "reason", "detail", "kind"]
_RECORD_COLUMNS = ["id", "status", "reason", "detail", "kind"]

#: Failure kinds: retried on every run / kept (retried with ``retry_failed``).
TRANSIENT, PERMANENT = "transient", "permanent"


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


def _shard_name(shard: int) -> str:
    return f"shard_{shard:05d}"


def _atomic_write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_bytes_atomic(path, frame.to_csv(index=False, lineterminator="\n").encode(), overwrite=True)


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
        _atomic_write_csv(items_path, table)
    return table


def features_for(clip: np.ndarray, *, settings: FeatureSettings,
                 weights_dir: str | Path = DEFAULT_WEIGHTS_DIR) -> np.ndarray:
    """The stored feature of one clip: its log-mel, the waveform itself, or an embedding.

    Parameters
    ----------
    clip : np.ndarray, shape (settings.clip_samples,)
    settings : FeatureSettings
    weights_dir : path-like
        Pretrained weights (``make weights``); used by embedding kinds only
        (:func:`common.embeddings.embed_clip`).

    Returns
    -------
    np.ndarray, shape settings.clip_shape, float32
    """
    if settings.kind == "waveform":
        return np.asarray(clip, dtype=np.float32)
    if settings.layout == "vector":
        from common.embeddings import embed_clip  # imports Keras: embedding kinds only

        return embed_clip(clip, settings=settings, weights_dir=weights_dir)
    return logmel(clip, settings=settings)


def _extract_item(path: str, *, settings: FeatureSettings, weights_dir: str,
                  out: np.ndarray) -> dict[str, str]:
    """Features of one file into ``out`` (left as it is on failure); its record entry, without id.

    Every exception becomes a failure: decode failures are permanent, a missing file
    and anything unexpected (a resampler, ctypes or memory error) transient.
    """
    if not os.path.isfile(path):
        return {"status": "failed", "reason": "missing", "detail": f"{path}: no such file", "kind": TRANSIENT}
    try:
        clip = load_clip(path, settings=settings)
        out[...] = features_for(clip, settings=settings, weights_dir=weights_dir)
    except AudioError as error:
        return {"status": "failed", "reason": error.reason, "detail": error.detail, "kind": PERMANENT}
    except Exception as error:  # noqa: BLE001  (one bad file must not stop 100,000)
        return {"status": "failed", "reason": type(error).__name__, "detail": str(error) or repr(error),
                "kind": TRANSIENT}
    return {"status": "ok", "reason": "", "detail": "", "kind": ""}


def _extract_shard(cache_dir: str, shard: int, items: list[tuple[str, str]], settings: FeatureSettings,
                   weights_dir: str, retry: list[int] | None = None) -> list[dict[str, str]]:
    """Compute one shard, write it atomically, then its record; return the record.

    ``retry`` lists rows to compute again into the existing shard and record (the other
    rows are kept as they are); None computes every row. A row is the same numbers
    whichever way it is computed, so a healed shard equals one computed in one go.

    Before each row its number is appended to ``shard_NNNNN.progress``. A worker process
    that dies in native code (a decoder or resampler crash, the kernel's OOM killer)
    leaves that file behind; the next attempt at the shard (Dask's retry on another
    worker, :func:`_run_until_done`'s, or the next run's) records the row it died on in
    ``shard_NNNNN.crashed``; a row on which two workers died is skipped and recorded as a
    transient ``worker_died`` failure. One death may be a lost host or an interrupted run
    (Ctrl-C leaves the marker too), so that row is tried once more. One file that kills
    its process thus costs that file, never the shard or the run (with ``n_jobs=1``, which
    computes in the command's own process, the command dies twice before the file is
    skipped), and the next run after a skip tries it again.
    """
    directory = Path(cache_dir)
    name = _shard_name(shard)
    crashed = _rows_that_killed_a_worker(directory, name)
    if retry is None:
        data = np.zeros((len(items), *settings.clip_shape), dtype=np.float16)
        record: list[dict[str, str]] = [{} for _ in items]
        rows = range(len(items))
    else:
        data = np.load(directory / f"{name}.npy")
        record = json.loads((directory / f"{name}.json").read_text())
        rows = retry
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
    with atomic_output(directory / f"{name}.npy", overwrite=True) as tmp, open(tmp, "wb") as handle:
        np.save(handle, data)
    write_bytes_atomic(directory / f"{name}.json", (json.dumps(record, indent=1) + "\n").encode(), overwrite=True)
    for marker in (f"{name}.progress", f"{name}.crashed"):
        (directory / marker).unlink(missing_ok=True)
    return record


def _rows_that_killed_a_worker(directory: Path, name: str) -> set[int]:
    """Rows of shard ``name`` on which two worker processes died, from ``<name>.crashed``.

    A ``<name>.progress`` file left by a dead worker ends with the row it was computing:
    that row is appended to ``<name>.crashed`` (which survives further deaths) and the
    progress file is removed. One death may be the host's fault (a node lost, a job
    killed), so that row is tried once more; a second death on it names the clip.
    """
    progress, crashed = directory / f"{name}.progress", directory / f"{name}.crashed"
    if progress.exists():
        lines = progress.read_text().split()
        if lines:
            with open(crashed, "a") as handle:
                handle.write(f"{lines[-1]}\n")
        progress.unlink()
    deaths = collections.Counter(int(row) for row in crashed.read_text().split()) if crashed.exists() else {}
    return {row for row, count in deaths.items() if count >= 2}


def _rows_to_retry(record: list[dict[str, str]], *, retry_failed: bool) -> list[int]:
    """Rows of a done shard to compute again: transient failures, or every failure with ``retry_failed``.

    Records of caches made before failure kinds existed hold decode failures only: permanent.
    """
    return [row for row, entry in enumerate(record) if entry["status"] != "ok"
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


def _read_record(cache_dir: Path, shard: int) -> list[dict[str, str]] | None:
    path = cache_dir / f"{_shard_name(shard)}.json"
    if not path.exists() or not (cache_dir / f"{_shard_name(shard)}.npy").exists():
        return None
    return json.loads(path.read_text())


def _run_local(tasks: list[tuple], *, n_jobs: int) -> Iterator[tuple[int, int, list[dict[str, str]]]]:
    import joblib

    if not tasks:
        return
    # batch_size=1: a shard is already the unit of work. joblib's automatic batching groups
    # tasks shorter than 0.2 s (small shards) into batches of several, so the last batch of a
    # run kept one core busy while the others idled: 35 against 40 clips/s (medians of 4
    # interleaved runs of 96 real-music clips in shards of 4, 2 cores)
    with joblib.parallel_config(backend="loky", inner_max_num_threads=1):
        yield from joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered", batch_size=1)(
            joblib.delayed(_run_task)(task) for task in tasks)


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


def _run_until_done(tasks: list[tuple], *, run, bar) -> None:
    """Run the shard ``tasks`` with ``run``; after a worker died, run the unfinished ones again.

    A row on which two workers died is skipped by the next attempt at its shard (see
    :func:`_extract_shard`), so a shard needs at most two attempts per file that kills a worker.
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
            print(f"features: a worker process died ({type(error).__name__}); attempt {attempt + 1} at "
                  f"{len(todo)} unfinished shard(s) (a clip two workers died on is skipped)",
                  file=sys.stderr, flush=True)
    raise FeatureCacheError("workers kept dying on every clip; see the .crashed files in the cache")


def extract(items: Sequence[Item], *, settings: FeatureSettings, cache_dir: str | Path,
            n_jobs: int = -1, shard_size: int = 256, scheduler: str | None = None,
            progress: bool = True, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR,
            retry_failed: bool = False) -> ExtractionSummary:
    """Extract the features of ``items`` into ``cache_dir``, computing only missing shards.

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

    Returns
    -------
    ExtractionSummary
        Its :meth:`~ExtractionSummary.line` is what ``fma-features`` prints,
        ``features: N ok, M failed, K cached, R clips/s``.

    Raises
    ------
    FeatureCacheError
        ``cache_dir`` holds another item list, shard size or settings.
    ToolkitError
        An embedding kind whose weights are missing (the message names ``make weights``).
    """
    start = time.perf_counter()
    # workers run in their own directory (on other hosts): send them absolute paths only
    cache_dir, weights_dir = absolute_path(cache_dir), absolute_path(weights_dir)
    items = [(item_id, absolute_path(path)) for item_id, path in items]
    _require_weights(settings, weights_dir=weights_dir)
    table = _prepare(items, settings=settings, cache_dir=cache_dir, shard_size=shard_size)
    plan = _plan_shards(table, settings=settings, cache_dir=cache_dir, weights_dir=weights_dir,
                        retry_failed=retry_failed)
    _compute_shards(plan, n_items=len(table), n_jobs=n_jobs, scheduler=scheduler, progress=progress)
    status = _consolidate_records(table, plan, cache_dir=cache_dir)
    failures = _write_index_and_failures(table, status, cache_dir=cache_dir)
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
        Arguments of :func:`_extract_shard` of every shard to compute: new shards (``retry``
        None) and done shards with rows to compute again.
    records : dict of int to list of dict
        Records of the done shards that need no work, by shard number.
    n_shards : int
    n_cached : int
        Items found done (not retried) in shards of an earlier run.
    """

    tasks: list[tuple]
    records: dict[int, list[dict[str, str]]]
    n_shards: int
    n_cached: int


def _plan_shards(table: pd.DataFrame, *, settings: FeatureSettings, cache_dir: Path, weights_dir: Path,
                 retry_failed: bool) -> _ShardPlan:
    """Sort the shards of the item ``table`` into done ones and ones to compute (see :class:`_ShardPlan`)."""
    records: dict[int, list[dict[str, str]]] = {}
    tasks = []
    n_cached = 0
    for shard, group in table.groupby("shard", sort=True):
        record = _read_record(cache_dir, int(shard))
        retry: list[int] | None = None
        if record is not None:
            retry = _rows_to_retry(record, retry_failed=retry_failed)
            n_cached += len(record) - len(retry)
            if not retry:
                records[int(shard)] = record
                continue
        tasks.append((str(cache_dir), int(shard), list(zip(group["id"], group["path"])), settings,
                      str(weights_dir), retry))
    n_shards = int(table["shard"].max()) + 1 if len(table) else 0
    return _ShardPlan(tasks=tasks, records=records, n_shards=n_shards, n_cached=n_cached)


def _compute_shards(plan: _ShardPlan, *, n_items: int, n_jobs: int, scheduler: str | None, progress: bool) -> None:
    """Run the plan's tasks in local worker processes, or on the Dask cluster of ``scheduler``,
    until every shard is written; a tqdm bar over all ``n_items`` clips (cached ones counted) on stderr."""
    from tqdm.auto import tqdm

    with tqdm(total=n_items, initial=plan.n_cached, unit="clip", desc="features", disable=not progress,
              file=sys.stderr) as bar:
        _run_until_done(plan.tasks, run=lambda todo: (_run_dask(todo, scheduler=scheduler) if scheduler
                                                       else _run_local(todo, n_jobs=n_jobs)), bar=bar)


def _consolidate_records(table: pd.DataFrame, plan: _ShardPlan, *, cache_dir: Path) -> pd.DataFrame:
    """Every item's status from the shard records, in ``items.csv`` order.

    Returns
    -------
    pd.DataFrame
        Columns ``id, status, reason, detail, kind``, one row per row of ``table``; ``kind``
        is empty for successes and ``permanent`` for failures of records made before kinds existed.

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
    status = pd.DataFrame([entry for shard in range(plan.n_shards) for entry in records[shard]],
                          columns=_RECORD_COLUMNS)
    status["kind"] = status["kind"].where(status["status"] == "ok", status["kind"].fillna(PERMANENT)).fillna("")
    if not status["id"].equals(table["id"]):
        raise FeatureCacheError(f"{cache_dir}: shard records do not match items.csv")
    return status


def _write_index_and_failures(table: pd.DataFrame, status: pd.DataFrame, *, cache_dir: Path) -> pd.DataFrame:
    """Write ``failures.csv``, then ``index.csv`` (which marks the cache complete); return the failures.

    Returns
    -------
    pd.DataFrame
        Columns ``id, path, reason, detail, kind``, one row per failed item, in ``items.csv`` order.
    """
    ok = (status["status"] == "ok").to_numpy()
    failures = pd.concat([table.loc[~ok, ["id", "path"]], status.loc[~ok, ["reason", "detail", "kind"]]],
                         axis=1)[_FAILURE_COLUMNS]
    _atomic_write_csv(cache_dir / "failures.csv", failures)
    _atomic_write_csv(cache_dir / "index.csv", table.loc[ok, ["id", "shard", "row"]])
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

    Attributes
    ----------
    directory : Path
    settings : FeatureSettings
    ids : np.ndarray of str, shape (n_ok,)
        Ids that succeeded, in cache order.
    failures : pd.DataFrame
        Columns ``id, path, reason, detail``.
    """

    def __init__(self, directory: Path, settings: FeatureSettings, index: pd.DataFrame,
                 failures: pd.DataFrame) -> None:
        self.directory = directory
        self.settings = settings
        self.failures = failures
        self.ids = index["id"].to_numpy(dtype=str)
        self._position = pd.Series(np.arange(len(index)), index=pd.Index(self.ids))
        self._shard = index["shard"].to_numpy(dtype=np.int64)
        self._row = index["row"].to_numpy(dtype=np.int64)
        self._maps: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, cache_dir: str | Path) -> FeatureCache:
        """Open a complete cache.

        Raises
        ------
        FeatureCacheError
            Missing or incomplete (extraction not finished), naming the command to run.
        """
        directory = Path(cache_dir)
        hint = "run `make features ...` (python -m common.features) to create or finish it"
        if not (directory / "settings.json").exists():
            raise FeatureCacheError(f"{directory}: no feature cache here; {hint}")
        if not (directory / "index.csv").exists():
            raise FeatureCacheError(f"{directory}: feature cache is incomplete (no index.csv); {hint}")
        settings = FeatureSettings.from_dict(json.loads((directory / "settings.json").read_text()))
        index = pd.read_csv(directory / "index.csv", dtype={"id": str})
        failures = pd.read_csv(directory / "failures.csv", dtype=str, keep_default_na=False)
        return cls(directory, settings, index, failures)

    def __len__(self) -> int:
        return len(self.ids)

    def _map(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            self._maps[shard] = np.load(self.directory / f"{_shard_name(shard)}.npy", mmap_mode="r")
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
        """
        keys = pd.Index(np.asarray(self.ids if ids is None else ids, dtype=str))
        positions = self._position.reindex(keys).to_numpy()
        if np.isnan(positions.astype(float)).any():
            missing = list(keys[pd.isna(positions)][:5])
            raise KeyError(f"{self.directory}: ids not in the cache (failed or never extracted): {missing}")
        positions = positions.astype(np.int64)
        out = np.empty((len(keys), *self.settings.clip_shape), dtype=np.float16)
        shards, rows = self._shard[positions], self._row[positions]
        for shard in np.unique(shards):
            selected = np.flatnonzero(shards == shard)
            out[selected] = self._map(int(shard))[rows[selected]]
        return out


def folder_items(audio_dir: str | Path) -> list[Item]:
    """Every ``*.mp3/.wav/.ogg/.flac`` directly in ``audio_dir``, id = file stem, sorted by name.

    Raises
    ------
    FeatureCacheError
        Missing folder, no audio files, or two files with the same stem.
    """
    directory = Path(audio_dir)
    if not directory.is_dir():
        raise FeatureCacheError(f"{directory}: no such audio folder")
    paths = sorted(path for path in directory.iterdir() if path.suffix.lower() in AUDIO_SUFFIXES)
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
    return parser


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
                      weights_dir=args.weights, retry_failed=args.retry_failed)
    print(summary.line(), flush=True)
    if summary.mostly_failed():
        reasons = "; ".join(f"{count} {reason} (e.g. {example})" for reason, count, example in summary.top_reasons)
        raise ToolkitError(f"{summary.n_failed} of {summary.n_ok + summary.n_failed} clips failed, more than half: "
                           f"check the audio folder and the decoder. Most common: {reasons}. "
                           f"See {cache_dir / 'failures.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
