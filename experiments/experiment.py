"""An experiment's data and the training of its folds: the library behind :mod:`experiments.runner`.

:func:`open_experiment_data` reads metadata, folds file, task labels and the feature cache
once; :func:`train_experiment` trains the requested folds into ``RUNS/<exp>/fold_<k>/``
(see :mod:`common.training`) and, once every fold of the folds file is finished, writes
``RUNS/<exp>/oof.csv`` (out-of-fold predictions of all folds), ``RUNS/<exp>/classes.json``
and ``RUNS/<exp>/summary.json`` (CV mean ± std and the test-split scores of the mean of the
fold models' probabilities). A finished fold is never retrained; an interrupted one resumes
from its checkpoint. :mod:`experiments.distributed` runs the same functions on Dask workers.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

import numpy as np
import pandas as pd

from common.config import ExperimentConfig
from common.errors import FeatureCacheError, ToolkitError
from common.runs import FOLD_SUMMARY, fold_dir, is_finished


@dataclasses.dataclass
class ExperimentData:
    """Everything the folds of an experiment share.

    Attributes
    ----------
    task : common.tasks.Task
    store : common.store.ClipStore
        Features of the fold tracks followed by the test-split tracks.
    folds : np.ndarray, shape (n_fold_tracks,)
        Fold of each of the first ``n_fold_tracks`` rows of ``store``.
    y : np.ndarray, shape (len(store), n_classes)
    n_test : int
        The last ``n_test`` rows of ``store`` are the official test split.
    """

    task: object
    store: object
    folds: np.ndarray
    y: np.ndarray
    n_test: int


def features_hint(config: ExperimentConfig, *, data: Path, subset: str, cache: Path) -> str:
    """The ``make features`` command that creates the experiment's feature cache, for error messages."""
    return (f"run `make features EXP={config.name} DATA={data} SUBSET={subset} CACHE={cache}` "
            f"(python -m common.features --config experiments/configs/{config.name}.yaml --data {data} "
            f"--subset {subset} --cache {cache})")


def open_experiment_data(config: ExperimentConfig, *, data: Path, subset: str, folds_path: Path,
                         cache: Path, in_memory: bool | str | None = None,
                         memory_limit: int | None = None) -> ExperimentData:
    """Metadata, folds, task labels and features of an experiment.

    ``in_memory`` overrides the config's ``data.in_memory`` (False: the store reads no
    feature row until asked, as the client of ``--scheduler`` training needs);
    ``memory_limit`` (bytes) further caps the budget of ``auto`` (see :class:`common.store.ClipStore`).

    Raises
    ------
    MetadataError
        The folds file does not match the metadata.
    FeatureCacheError
        No (complete) cache for the experiment's feature settings, or fold tracks missing
        from it that did not fail extraction; the message names the ``make features`` to run.
    """
    from common.features import FeatureCache, cache_dir_for
    from common.folds import read_folds
    from common.metadata import FmaDataset
    from common.store import ClipStore
    from common.tasks import build_task

    dataset = FmaDataset.open(data, subset)
    tracks = dataset.tracks
    folds = read_folds(folds_path, tracks=tracks)
    hint = features_hint(config, data=data, subset=subset, cache=cache)
    cache_dir = cache_dir_for(cache, dataset.feature_source, config.features)
    try:
        features = FeatureCache.open(cache_dir)
    except FeatureCacheError as exc:
        raise FeatureCacheError(f"no features for experiment {config.name!r} ({exc}); {hint}") from exc
    task = build_task(config.task.name, tracks=tracks, genres=dataset.genres,
                      train_ids=folds.index, min_tracks=config.task.min_tracks)
    labelled, y = task.targets(tracks)
    available = set(features.ids.tolist())
    failed = set(features.failures["id"].astype(str)) if len(features.failures) else set()
    fold_ids = [t for t in labelled if t in folds.index]
    absent = [t for t in fold_ids if str(t) not in available and str(t) not in failed]
    if absent:
        raise FeatureCacheError(f"{cache_dir}: {len(absent)} fold tracks (e.g. {absent[:3]}) are not in "
                                f"the feature cache; {hint}")
    split = tracks[("set", "split")]
    test_ids = [t for t in labelled if split.get(t) == "test" and str(t) in available]
    fold_ids = [t for t in fold_ids if str(t) in available]
    row = {t: i for i, t in enumerate(labelled)}
    ids = fold_ids + test_ids
    store = ClipStore(features, [str(t) for t in ids],
                      in_memory=config.data.in_memory if in_memory is None else in_memory, memory_limit=memory_limit)
    return ExperimentData(task=task, store=store, folds=folds.loc[fold_ids, "fold"].to_numpy(np.int64),
                          y=y[[row[t] for t in ids]], n_test=len(test_ids))


def train_experiment(config: ExperimentConfig, exp_data: ExperimentData, *, runs: Path,
                     folds: list[int] | None = None, callbacks: tuple = (), verbose: int = 0) -> dict | None:
    """Train the given folds (default: all) and, when all are finished, summarise.

    Returns
    -------
    dict or None
        The experiment summary, or None while folds remain unfinished.
    """
    exp_dir = Path(runs) / config.name
    all_folds = sorted(set(exp_data.folds.tolist()))
    for fold in check_folds(exp_data, folds):
        train_one_fold(config, exp_data, runs=runs, fold=fold, callbacks=callbacks, verbose=verbose)
    if not all(is_finished(fold_dir(exp_dir, k)) for k in all_folds):
        return None
    return summarise_experiment(config, exp_data, exp_dir=exp_dir, fold_numbers=all_folds)


def check_folds(exp_data: ExperimentData, folds: list[int] | None) -> list[int]:
    """The requested folds (default: all of the folds file), each checked to exist."""
    all_folds = sorted(set(exp_data.folds.tolist()))
    for fold in folds if folds is not None else all_folds:
        if fold not in all_folds:
            raise ToolkitError(f"--fold {fold}: the folds file has folds {all_folds}")
    return list(folds) if folds is not None else all_folds


def train_one_fold(config: ExperimentConfig, exp_data: ExperimentData, *, runs: Path, fold: int,
                   callbacks: tuple = (), verbose: int = 0) -> dict:
    """Train (or resume, or skip when finished) fold ``fold`` into ``runs/<exp>/fold_<fold>``; its summary."""
    from common.training import train_fold

    held_out = exp_data.folds == fold
    positions = np.arange(len(exp_data.folds))
    y_folds = exp_data.y[:len(exp_data.folds)]
    return train_fold(config, task=exp_data.task, fold=fold, store=exp_data.store,
                      train_positions=positions[~held_out], y_train=y_folds[~held_out],
                      val_positions=positions[held_out], y_val=y_folds[held_out],
                      run_dir=fold_dir(Path(runs) / config.name, fold), callbacks=callbacks, verbose=verbose)


def summarise_experiment(config: ExperimentConfig, exp_data: ExperimentData, *, exp_dir: Path,
                         fold_numbers: list[int]) -> dict:
    """Write ``oof.csv``, ``classes.json`` and ``summary.json`` of a fully trained experiment."""
    from common.inference import inference_batch_size, load_fold_models, predict_clips
    from common.io import write_text_atomic
    from common.training import score_predictions

    task = exp_data.task
    fold_summaries = [json.loads((fold_dir(exp_dir, k) / FOLD_SUMMARY).read_text()) for k in fold_numbers]
    oof = pd.concat([pd.read_csv(fold_dir(exp_dir, k) / "oof.csv", dtype={"id": str}) for k in fold_numbers])
    write_text_atomic(exp_dir / "oof.csv", oof.to_csv(index=False), overwrite=True)
    task.save(exp_dir / "classes.json")
    cv = {key: {"mean": float(np.mean([s["metrics"][key] for s in fold_summaries])),
                "std": float(np.std([s["metrics"][key] for s in fold_summaries]))}
          for key in fold_summaries[0]["metrics"] if key not in ("n", "n_classes_scored")}
    test = None
    if exp_data.n_test:
        data = config.data
        test_positions = np.arange(len(exp_data.store) - exp_data.n_test, len(exp_data.store))
        models = load_fold_models(exp_dir, hash=False, allow_diverged=True)  # a diverged fold is reported, not refused
        probs = predict_clips(models, exp_data.store.subset(test_positions),
                              crop_frames=data.crop_frames(config.features), eval=data.eval,
                              chunk_hop_frames=data.chunk_hop_frames(config.features),
                              batch_size=inference_batch_size(data.batch_size))
        y_test = exp_data.y[test_positions]
        test = score_predictions(task, y_test, probs)
    summary = {
        "experiment": config.name, "task": task.name, "model": config.model.name,
        "params": fold_summaries[0]["params"],
        "seconds_per_epoch": float(np.mean([s["seconds_per_epoch"] for s in fold_summaries])),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "folds": fold_summaries, "cv": cv, "test": test,
    }
    write_text_atomic(exp_dir / "summary.json", json.dumps(summary, indent=2) + "\n", overwrite=True)
    return summary
