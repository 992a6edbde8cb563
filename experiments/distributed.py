"""Train the folds of an experiment on a ``dask.distributed`` cluster.

Each unfinished fold becomes one task. A worker opens the experiment's data itself
(metadata, folds file and feature cache, at the same absolute paths as the client:
a shared file system) and trains the fold into the shared runs directory with
:func:`experiments.experiment.train_one_fold`, exactly as a local run does. The client only
dispatches and waits; once every fold has its ``summary.json``, one more task
(:func:`summarise_on_dask`) writes the experiment summary, which scores the fold
ensemble on the test split. The client never reads a feature row.

A worker that dies mid-fold loses nothing but the epoch in progress: the scheduler
gives the task to another worker (up to ``distributed.scheduler.allowed-failures``
deaths), which resumes the fold from its ``checkpoint/``. A task that raises is retried
``retries`` times. Folds with a ``summary.json`` are never dispatched.

A fold task trains under the fold folder's lock (:func:`common.training.train_fold`), like a
local run: the workers train different folds in parallel, and a fold that another run (a
local ``make train FOLD=k``, a worker of another cluster) is training is waited for, with a
warning in the worker's log naming its holder, and then skipped as finished.

GPUs: start one worker per GPU, each seeing only its own card and declaring it as a
resource; folds then ask for ``{"GPU": 1}``, one fold per card::

    dask scheduler --port 8786
    CUDA_VISIBLE_DEVICES=0 dask worker tcp://HOST:8786 --nworkers 1 --nthreads 1 --resources GPU=1
    CUDA_VISIBLE_DEVICES=1 dask worker tcp://HOST:8786 --nworkers 1 --nthreads 1 --resources GPU=1
    make train EXP=crnn SCHEDULER=tcp://HOST:8786

Without GPU resources on any worker, folds go to any worker; one worker process trains
one fold at a time whatever its number of threads (Keras' dtype policy and seeds are
process-wide).

Memory: each fold task loads the experiment's features into its own process when
``data.in_memory: auto`` finds they take under a quarter of the memory budget (RAM, the
container's cgroup limit, ``$FMA_MEMORY_LIMIT`` and the worker's ``--memory-limit``,
default RAM / workers of the host, past which Dask restarts the worker; see
:func:`common.memory.memory_budget_bytes`); otherwise it gathers batches from the
memory-mapped shards, which the fold workers of a host share through the page cache.
``data.in_memory: false`` forces that.
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path

from common.config import ExperimentConfig
from common.errors import ToolkitError
from common.io import absolute_path
from common.runs import fold_dir, folds_complete, is_finished
from experiments.experiment import open_experiment_data, train_experiment, train_one_fold

#: One fold at a time per worker process.
_FOLD_LOCK = threading.Lock()

#: Where a fold task says whom it waits for (the worker's log).
_LOG = logging.getLogger(__name__)


def fold_resources(workers: Mapping[str, Mapping]) -> dict[str, float] | None:
    """Task resources for a fold: ``{"GPU": 1}`` when some worker declares GPUs, else None.

    Parameters
    ----------
    workers : mapping
        ``client.scheduler_info()["workers"]``: worker address -> info with ``"resources"``.
    """
    has_gpus = any(info.get("resources", {}).get("GPU", 0) >= 1 for info in workers.values())
    return {"GPU": 1} if has_gpus else None


def _worker_memory_limit() -> int | None:
    """This Dask worker's ``--memory-limit`` in bytes (None: none, or not in a worker)."""
    from distributed import get_worker

    try:
        return get_worker().memory_manager.memory_limit or None
    except ValueError:  # not running in a worker
        return None


def run_fold_task(config: ExperimentConfig, *, data: Path, subset: str, folds_path: Path, cache: Path,
                  runs: Path, fold: int, verbose: int = 0) -> dict:
    """Train (or resume) one fold on this worker; the Dask task body.

    Returns
    -------
    dict
        The fold summary, plus ``"worker"`` (host name) for the client's log.
    """
    with _FOLD_LOCK:
        exp_data = open_experiment_data(config, data=data, subset=subset, folds_path=folds_path, cache=cache,
                                        memory_limit=_worker_memory_limit())
        summary = train_one_fold(config, exp_data, runs=runs, fold=fold, verbose=verbose, on_wait=_LOG.warning)
    return {**summary, "worker": socket.gethostname()}


def run_summary_task(config: ExperimentConfig, *, data: Path, subset: str, folds_path: Path, cache: Path,
                     runs: Path) -> dict | None:
    """Write the experiment summary of finished folds on this worker (the Dask task body).

    Only the test-split rows are read, batch by batch from the memory-mapped cache.
    """
    with _FOLD_LOCK:
        exp_data = open_experiment_data(config, data=data, subset=subset, folds_path=folds_path, cache=cache,
                                        in_memory=False)
        return train_experiment(config, exp_data, runs=runs, folds=[], on_wait=_LOG.warning)


def _connect(scheduler: str, *, timeout: float):
    from distributed import Client

    try:
        return Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ToolkitError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({exc}); start one with "
                           f"`dask scheduler` and workers with `dask worker {scheduler}`") from exc


def summarise_on_dask(config: ExperimentConfig, *, scheduler: str, data: Path, subset: str, folds_path: Path,
                      cache: Path, runs: Path, fold_numbers: list[int], timeout: float = 30.0) -> dict | None:
    """The experiment summary, written by a cluster task once all ``fold_numbers`` are finished.

    Returns
    -------
    dict or None
        ``runs/<exp>/summary.json``'s content, or None while some fold has no ``summary.json``
        or one failed (no task is sent then).
    """
    data, folds_path, cache, runs = (absolute_path(p) for p in (data, folds_path, cache, runs))
    if not folds_complete(runs / config.name, fold_numbers):
        return None
    with _connect(scheduler, timeout=timeout) as client:
        future = client.submit(run_summary_task, config, data=data, subset=subset, folds_path=folds_path,
                               cache=cache, runs=runs, key=f"summary-{config.name}-{uuid.uuid4().hex[:8]}",
                               resources=fold_resources(client.scheduler_info()["workers"]), pure=False)
        return future.result()


def train_folds_on_dask(config: ExperimentConfig, *, scheduler: str, data: Path, subset: str, folds_path: Path,
                        cache: Path, runs: Path, folds: list[int], retries: int = 2, timeout: float = 30.0,
                        verbose: int = 0, log=print) -> dict[int, dict]:
    """Dispatch the unfinished ``folds`` to the cluster and wait for all of them.

    Parameters
    ----------
    config : ExperimentConfig
    scheduler : str
        Scheduler address, e.g. ``tcp://host:8786``.
    data, folds_path, cache, runs : Path
        Made absolute here; workers must see them at the same place (shared file system).
    subset : str
    folds : list of int
        Folds to train; those with ``runs/<exp>/fold_<k>/summary.json`` are skipped.
    retries : int
        Extra attempts for a fold whose task raised (a dead worker is always replaced).
    timeout : float
        Seconds to wait for the scheduler.
    log : callable
        Receives one line per finished fold.

    Returns
    -------
    dict
        Fold number -> fold summary, for the folds dispatched (empty when all were done).

    Raises
    ------
    ToolkitError
        The scheduler cannot be reached, or a fold failed on every attempt (the worker's
        :class:`~common.errors.ToolkitError` is passed through as is).
    """
    from distributed import KilledWorker, as_completed

    data, folds_path, cache, runs = (absolute_path(p) for p in (data, folds_path, cache, runs))
    exp_dir = runs / config.name
    todo = [k for k in folds if not is_finished(fold_dir(exp_dir, k))]
    if not todo:
        return {}
    run_id = uuid.uuid4().hex[:8]
    with _connect(scheduler, timeout=timeout) as client:
        resources = fold_resources(client.scheduler_info()["workers"])
        futures = {client.submit(run_fold_task, config, data=data, subset=subset, folds_path=folds_path, cache=cache,
                                 runs=runs, fold=k, verbose=verbose, key=f"fold-{config.name}-{k}-{run_id}",
                                 retries=retries, resources=resources, pure=False): k for k in todo}
        done: dict[int, dict] = {}
        try:
            for future in as_completed(futures):
                fold = futures[future]
                done[fold] = future.result()
                log(f"{config.name}: fold {fold} done on {done[fold]['worker']} "
                    f"({done[fold]['device']}, {done[fold]['epochs']} epochs)")
        except KilledWorker as exc:
            raise ToolkitError(f"{exp_dir}: fold {futures[future]} lost its worker too often ({exc}); "
                               f"its checkpoint is kept, run again to resume") from exc
    return done
