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
    the shard done, so a re-run computes only the shards without one.
``index.csv`` / ``failures.csv``
    Written at the end: ``id, shard, row`` of every success, and
    ``id, path, reason, detail`` of every failure. ``index.csv`` marks the cache complete.

Nothing in these files depends on time, worker count or order of completion, so a
resumed run yields byte-identical files to an uninterrupted one. Extraction holds at
most one shard per worker in memory, which is what lets it scale to fma_large.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from common.audio import AUDIO_SUFFIXES, features_for, load_clip
from common.errors import AudioError, ConfigError, FeatureCacheError, ToolkitError
from common.io import TEMPORARY_GLOB, atomic_output, write_bytes_atomic
from common.pretrained import DEFAULT_WEIGHTS_DIR
from common.settings import FeatureSettings

Item = tuple[str, Path]

_ITEMS_COLUMNS = ["id", "path", "shard", "row"]
_FAILURE_COLUMNS = ["id", "path", "reason", "detail"]


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
    """

    n_ok: int
    n_failed: int
    n_cached: int
    clips_per_s: float
    seconds: float

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        return (f"features: {self.n_ok} ok, {self.n_failed} failed, {self.n_cached} cached, "
                f"{self.clips_per_s:.1f} clips/s")


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
    """Delete half-written files of killed runs or workers (never a finished file)."""
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


def _extract_shard(cache_dir: str, shard: int, items: list[tuple[str, str]],
                   settings: FeatureSettings, weights_dir: str) -> list[dict[str, str]]:
    """Compute one shard, write it atomically, then its record; return the record."""
    directory = Path(cache_dir)
    data = np.zeros((len(items), *settings.clip_shape), dtype=np.float16)
    record = []
    for row, (item_id, path) in enumerate(items):
        try:
            clip = load_clip(path, settings=settings)
            data[row] = features_for(clip, settings=settings, weights_dir=weights_dir)
        except AudioError as error:
            record.append({"id": item_id, "status": "failed", "reason": error.reason,
                           "detail": error.detail})
        else:
            record.append({"id": item_id, "status": "ok", "reason": "", "detail": ""})
    name = _shard_name(shard)
    with atomic_output(directory / f"{name}.npy", overwrite=True) as tmp, open(tmp, "wb") as handle:
        np.save(handle, data)
    write_bytes_atomic(directory / f"{name}.json", (json.dumps(record, indent=1) + "\n").encode(), overwrite=True)
    return record


def _read_record(cache_dir: Path, shard: int) -> list[dict[str, str]] | None:
    path = cache_dir / f"{_shard_name(shard)}.json"
    if not path.exists() or not (cache_dir / f"{_shard_name(shard)}.npy").exists():
        return None
    return json.loads(path.read_text())


def _run_local(tasks: list[tuple], *, n_jobs: int) -> Iterator[list[dict[str, str]]]:
    import joblib

    if not tasks:
        return
    with joblib.parallel_config(backend="loky", inner_max_num_threads=1):
        yield from joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
            joblib.delayed(_extract_shard)(*task) for task in tasks)


def _run_dask(tasks: list[tuple], *, scheduler: str) -> Iterator[list[dict[str, str]]]:
    from distributed import Client, as_completed

    if not tasks:
        return
    run_id = uuid.uuid4().hex[:8]  # task keys only; nothing of it reaches the cache files
    with Client(scheduler) as client:
        futures = [client.submit(_extract_shard, *task, key=f"feature-shard-{run_id}-{task[1]:05d}")
                   for task in tasks]
        for future in as_completed(futures):
            yield future.result()


def extract(items: Sequence[Item], *, settings: FeatureSettings, cache_dir: str | Path,
            n_jobs: int = -1, shard_size: int = 256, scheduler: str | None = None,
            progress: bool = True, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR) -> ExtractionSummary:
    """Extract the features of ``items`` into ``cache_dir``, computing only missing shards.

    Parameters
    ----------
    items : sequence of (id, path)
        Ids are stored as strings; their order fixes shards and rows.
    settings : FeatureSettings
    cache_dir : path-like
        Usually :func:`cache_dir_for`. Created if needed.
    n_jobs : int
        joblib worker processes (-1: all cores); each runs BLAS/OpenMP on one thread.
    shard_size : int
        Items per shard (256 log-mels of the default settings are 67 MB).
    scheduler : str, optional
        Address of a ``dask.distributed`` scheduler; shards are then computed by its
        workers, which must see ``cache_dir`` at the same path. A shard whose worker
        dies is recomputed by another.
    progress : bool
        Show a tqdm bar over clips (on stderr).
    weights_dir : path-like
        Pretrained weights (``make weights``) for embedding kinds (``musicnn``); each worker
        builds the network once. Checked before any work starts.

    Ends by printing one line, ``features: N ok, M failed, K cached, R clips/s``.

    Returns
    -------
    ExtractionSummary

    Raises
    ------
    FeatureCacheError
        ``cache_dir`` holds another item list, shard size or settings.
    ToolkitError
        An embedding kind whose weights are missing (the message names ``make weights``).
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    cache_dir = Path(cache_dir)
    weights_dir = Path(weights_dir).resolve()  # workers may run in another directory
    if settings.layout == "vector":
        from common.embeddings import require_weights

        require_weights(settings.kind, weights_dir=weights_dir)
    table = _prepare(items, settings=settings, cache_dir=cache_dir, shard_size=shard_size)
    n_shards = int(table["shard"].max()) + 1 if len(table) else 0
    records: dict[int, list[dict[str, str]]] = {}
    tasks = []
    for shard, group in table.groupby("shard", sort=True):
        record = _read_record(cache_dir, int(shard))
        if record is not None:
            records[int(shard)] = record
        else:
            tasks.append((str(cache_dir), int(shard), list(zip(group["id"], group["path"])), settings,
                          str(weights_dir)))
    n_cached = sum(len(record) for record in records.values())
    results = _run_dask(tasks, scheduler=scheduler) if scheduler else _run_local(tasks, n_jobs=n_jobs)
    with tqdm(total=len(table), initial=n_cached, unit="clip", desc="features", disable=not progress,
              file=sys.stderr) as bar:
        for record in results:
            bar.update(len(record))
    _remove_temporaries(cache_dir)  # a worker that died mid-shard leaves its temporary file
    for shard in range(n_shards):
        if shard not in records:
            records[shard] = _read_record(cache_dir, shard)
        if records[shard] is None:
            raise FeatureCacheError(f"{cache_dir}: {_shard_name(shard)} was not written; run again to finish it")
    status = pd.DataFrame([entry for shard in range(n_shards) for entry in records[shard]],
                          columns=["id", "status", "reason", "detail"])
    if not status["id"].equals(table["id"]):
        raise FeatureCacheError(f"{cache_dir}: shard records do not match items.csv")
    ok = (status["status"] == "ok").to_numpy()
    _atomic_write_csv(cache_dir / "failures.csv",
                      pd.concat([table.loc[~ok, ["id", "path"]], status.loc[~ok, ["reason", "detail"]]],
                                axis=1)[_FAILURE_COLUMNS])
    _atomic_write_csv(cache_dir / "index.csv", table.loc[ok, ["id", "shard", "row"]])
    seconds = time.perf_counter() - start
    computed = len(table) - n_cached
    summary = ExtractionSummary(n_ok=int(ok.sum()), n_failed=int((~ok).sum()), n_cached=n_cached,
                                clips_per_s=computed / seconds if computed else 0.0, seconds=seconds)
    print(summary.line(), flush=True)
    return summary


class FeatureCache:
    """Read access to a finished feature cache.

    Use :meth:`open`. ``get`` memory-maps the shards, so random batches of clips
    are read without loading the cache.

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

    def get(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Features of ``ids`` in the order given.

        Parameters
        ----------
        ids : sequence of str

        Returns
        -------
        np.ndarray, shape (len(ids), *settings.clip_shape), float16

        Raises
        ------
        KeyError
            An id that is not in the cache (failed or never extracted).
        """
        keys = pd.Index(np.asarray(ids, dtype=str))
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

    def load(self, ids: Sequence[str] | np.ndarray | None = None) -> np.ndarray:
        """All features (or those of ``ids``) in memory, same layout as :meth:`get`."""
        return self.get(self.ids if ids is None else ids)


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
    parser = argparse.ArgumentParser(prog="python -m common.features", description=__doc__.split("\n")[0])
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
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR,
                        help="musicnn weights for embedding kinds (default: %(default)s; `make weights`)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data is not None and args.subset is None:
        parser.error("--data needs --subset")
    try:
        settings = _settings_from_config(args.config)
        if args.data is not None:
            from common.metadata import FmaDataset

            items = FmaDataset.open(args.data, args.subset).items()
            source = f"fma_{args.subset}"
        else:
            items = folder_items(args.audio_dir)
            source = args.audio_dir.resolve().name
        cache_dir = cache_dir_for(args.cache, source, settings)
        print(f"cache: {cache_dir}", file=sys.stderr)
        extract(items, settings=settings, cache_dir=cache_dir, n_jobs=args.jobs,
                shard_size=args.shard_size, scheduler=args.scheduler, progress=not args.no_progress,
                weights_dir=args.weights)
    except ToolkitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
