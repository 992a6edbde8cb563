"""An experiment's data and the training of its folds: the library behind :mod:`experiments.runner`.

:func:`open_experiment_data` reads metadata, folds file, task labels and the feature cache
once; :func:`train_experiment` trains the requested folds into ``RUNS/<exp>/fold_<k>/``
(see :mod:`common.training`) and, once every fold of the folds file is finished, writes
``RUNS/<exp>/oof.csv`` (out-of-fold predictions of all folds), ``RUNS/<exp>/classes.json``
and ``RUNS/<exp>/summary.json`` (CV mean ± std and the test-split scores of the mean of the
fold models' probabilities). A finished fold is never retrained; an interrupted one resumes
from its checkpoint. :mod:`experiments.distributed` runs the same functions on Dask workers.

One writer per folder: a fold trains under its folder's lock (:func:`common.training.train_fold`),
and the experiment's own files are written under the experiment folder's lock, so that folds of
one experiment may train in parallel (on Dask workers, in two terminals) but never one fold twice
at once. An experiment with a failed fold (``"status": "failed"``) gets no summary.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from common.config import ExperimentConfig, PseudoLabelsConfig
from common.errors import ConfigError, FeatureCacheError, MetadataError, ToolkitError
from common.pseudo import PSEUDO_PREFIX, JoinedCache, PseudoLabels
from common.runs import FOLD_SUMMARY, fold_dir, folds_complete
from common.store import ClipStore
from common.tasks import Task, build_task

if TYPE_CHECKING:
    from common.features import FeatureCache
    from common.metadata import FmaDataset


@dataclasses.dataclass
class ExperimentData:
    """Everything the folds of an experiment share.

    Attributes
    ----------
    task : common.tasks.Task
    store : common.store.ClipStore
        Features of the fold tracks (the labelled ones, then those with soft targets
        when ``train_only`` is set), the ``n_pseudo`` pseudo-labelled clips, then the
        test-split tracks.
    folds : np.ndarray, shape (n_fold_tracks,)
        Fold of each of the first ``n_fold_tracks`` rows of ``store``.
    y : np.ndarray, shape (len(store), n_classes)
    n_test : int
        The last ``n_test`` rows of ``store`` are the official test split.
    train_only : np.ndarray of bool, shape (n_fold_tracks,), or None
        Fold rows that only ever train (``task.multi_root: soft``: the tracks without a
        ``genre_top``, with :meth:`~common.tasks.Task.root_targets`): such a row trains
        every fold but its own and is never validated or scored. ``None``: every fold row
        is validated in its fold.
    auxiliary : common.tasks.Task or None
        The classes of the auxiliary head (``task.auxiliary: genres_all``: those of the
        ``multi`` task, :func:`auxiliary_targets`); None without one.
    y_auxiliary : np.ndarray, shape (len(store), auxiliary.n_classes), or None
        Their 0/1 targets, a row of zeros for a track with none of them.
    n_pseudo : int
        Rows after the fold rows (before the test rows) that train every fold and are never
        validated or scored: the clips of ``data.pseudo_labels`` (:mod:`common.pseudo`).
    weights : np.ndarray, shape (n_fold_tracks + n_pseudo,), float32, or None
        Loss weight of each fold and pseudo-label row (``task.multi_root_weight``,
        ``data.pseudo_labels.weight``, 1 for the others); None: all weigh 1.
    pseudo_fold_targets : dict of int to np.ndarray, shape (n_pseudo, n_classes) each, or None
        With ``data.pseudo_labels.per_fold``: the pseudo-label rows' targets when fold ``k``
        trains (the labels of fold ``k``'s models); ``y`` then holds the ensemble's.
    """

    task: Task
    store: ClipStore
    folds: np.ndarray
    y: np.ndarray
    n_test: int
    train_only: np.ndarray | None = None
    auxiliary: Task | None = None
    y_auxiliary: np.ndarray | None = None
    n_pseudo: int = 0
    weights: np.ndarray | None = None
    pseudo_fold_targets: dict[int, np.ndarray] | None = None

    def train_targets(self, fold: int, positions: np.ndarray) -> np.ndarray:
        """Targets of the training rows ``positions`` of fold ``fold``, shape ``(len(positions), n_classes)``:
        ``y``'s, but the pseudo-label rows' come from :attr:`pseudo_fold_targets` when it is set."""
        y = self.y[positions]
        if self.pseudo_fold_targets is not None:
            pseudo = (positions >= len(self.folds)) & (positions < len(self.folds) + self.n_pseudo)
            y[pseudo] = self.pseudo_fold_targets[fold][positions[pseudo] - len(self.folds)]
        return y

    def fold_rows(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """Training and validation rows of ``store`` for fold ``fold``.

        Returns
        -------
        train, val : np.ndarray of int64, shapes (n_train,), (n_val,)
            ``train``: every fold row of another fold (train-only rows included), then the
            pseudo-label rows; ``val``: the rows of fold ``fold`` that are not train-only.
        """
        held_out = self.folds == fold
        evaluated = held_out if self.train_only is None else held_out & ~self.train_only
        positions = np.arange(len(self.folds) + self.n_pseudo)
        trains = np.concatenate([~held_out, np.ones(self.n_pseudo, bool)])
        return positions[trains], positions[:len(self.folds)][evaluated]


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

    With ``task.multi_root: soft`` the fold tracks without a ``genre_top`` follow the
    labelled fold tracks in ``store``, marked ``train_only``, with their soft targets;
    the labelled and test rows are those of the same config without it. With ``data.pseudo_labels``
    the pseudo-labelled clips (store ids ``pseudo:<id>``, read from the unlabelled folder's cache)
    follow the fold rows, before the test rows (:func:`open_pseudo_rows`).

    Raises
    ------
    MetadataError
        The folds file does not match the metadata, or (``multi_root: soft``) an artist
        of a train-only track has tracks in several folds.
    FeatureCacheError
        No (complete) cache for the experiment's feature settings, or fold tracks missing
        from it that did not fail extraction; the message names the ``make features`` to run.
    """
    from common.features import FeatureCache, cache_dir_for
    from common.folds import read_folds
    from common.metadata import FmaDataset

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
    soft_ids, y_soft = task.root_targets(tracks) if config.task.multi_root == "soft" else (labelled[:0], y[:0])
    available = set(features.ids.tolist())
    failed = set(features.failures["id"].astype(str)) if len(features.failures) else set()
    fold_ids = [t for t in labelled if t in folds.index]
    train_only_ids = [t for t in soft_ids if t in folds.index]
    absent = [t for t in fold_ids + train_only_ids if str(t) not in available and str(t) not in failed]
    if absent:
        raise FeatureCacheError(f"{cache_dir}: {len(absent)} fold tracks (e.g. {absent[:3]}) are not in "
                                f"the feature cache; {hint}")
    split = tracks[("set", "split")]
    test_ids = [t for t in labelled if split.get(t) == "test" and str(t) in available]
    fold_ids = [t for t in fold_ids if str(t) in available]
    train_only_ids = [t for t in train_only_ids if str(t) in available]
    pseudo_config = config.data.pseudo_labels
    pseudo = None if pseudo_config is None else open_pseudo_rows(pseudo_config, config=config, task=task,
                                                                 dataset=dataset, folds=folds, cache=cache)
    pseudo_ids = [] if pseudo is None else [PSEUDO_PREFIX + i for i in pseudo.ids]
    store = ClipStore(features if pseudo is None else JoinedCache(features, pseudo.cache),
                      [*map(str, fold_ids + train_only_ids), *pseudo_ids, *map(str, test_ids)],
                      in_memory=config.data.in_memory if in_memory is None else in_memory, memory_limit=memory_limit)
    if config.data.short_clips == "pad":
        store = store.padded()
    row = {t: i for i, t in enumerate([*labelled, *soft_ids])}
    y_all = np.concatenate([y, y_soft])
    fold_of = folds.loc[fold_ids + train_only_ids, "fold"].to_numpy(np.int64)
    train_only = None
    if config.task.multi_root != "none":
        train_only = np.arange(len(fold_of)) >= len(fold_ids)
        check_artist_grouped(tracks, ids=np.asarray(fold_ids + train_only_ids, np.int64), folds=fold_of,
                             train_only=train_only, folds_path=folds_path)
    weights = None
    if train_only is not None or pseudo is not None:
        weights = np.concatenate([np.ones(len(fold_of)) if train_only is None else
                                  np.where(train_only, config.task.multi_root_weight, 1.0),
                                  np.full(len(pseudo_ids), 0.0 if pseudo is None else pseudo.weight)])
    auxiliary, y_auxiliary = auxiliary_targets(config, tracks=tracks, genres=dataset.genres, folds=folds, store=store)
    return ExperimentData(task=task, store=store, folds=fold_of, auxiliary=auxiliary, y_auxiliary=y_auxiliary,
                          y=np.concatenate([y_all[[row[t] for t in fold_ids + train_only_ids]],
                                            y_all[:0] if pseudo is None else pseudo.probs,
                                            y_all[[row[t] for t in test_ids]]]),
                          n_test=len(test_ids), train_only=train_only, n_pseudo=len(pseudo_ids),
                          weights=None if weights is None else weights.astype(np.float32),
                          pseudo_fold_targets=None if pseudo is None else pseudo.fold_probs)


@dataclasses.dataclass(frozen=True)
class PseudoRows:
    """The clips of ``data.pseudo_labels`` an experiment trains on.

    Attributes
    ----------
    ids : list of str
        Clip ids (ids of ``cache``), shape (n,).
    probs : np.ndarray, shape (n, n_classes), float32
        Their soft targets.
    cache : common.features.FeatureCache
        The unlabelled folder's features under the experiment's settings.
    weight : float
        Loss weight of each.
    fold_probs : dict of int to np.ndarray, shape (n, n_classes) float32 each, or None
        With ``per_fold``: the labels of each fold's models, for every fold of the folds file.
    """

    ids: list[str]
    probs: np.ndarray
    cache: FeatureCache
    weight: float
    fold_probs: dict[int, np.ndarray] | None = None


def open_pseudo_rows(pseudo_labels: PseudoLabelsConfig, *, config: ExperimentConfig, task: Task,
                     dataset: FmaDataset, folds: pd.DataFrame, cache: Path) -> PseudoRows:
    """Read ``config.data.pseudo_labels`` (:func:`common.pseudo.read_pseudo_labels`) and its clips' feature cache.

    Raises
    ------
    ConfigError
        The file is missing or malformed, is not over the task's classes, or holds clips that are
        tracks of the folds file or of the test split (:func:`common.pseudo.find_leaks`): the
        message says how many of each; with ``per_fold``, it has no fold labels, or they were
        made on another folds file (:func:`check_fold_labels`).
    FeatureCacheError
        No cache of the unlabelled folder for the experiment's features, or clips missing from it.
    """
    from common.features import FeatureCache, cache_dir_for
    from common.pseudo import describe_leaks, find_leaks, read_pseudo_labels

    labels = read_pseudo_labels(pseudo_labels.path, class_names=task.class_names)
    leaks = find_leaks(labels.ids, metadata_dir=dataset.metadata_dir, folds=folds)
    if any(leaks.values()):
        raise ConfigError(f"data.pseudo_labels: {labels.path}: refused: {describe_leaks(leaks)}; a track that is "
                          f"validated or scored must never train; write the file again with `make pseudo` given "
                          f"DATA, SUBSET and FOLDS (it drops them)")
    if pseudo_labels.per_fold:
        check_fold_labels(labels, folds=folds)
    cache_dir = cache_dir_for(cache, labels.source_name, config.features)
    hint = (f"run `make features EXP={config.name} SOURCE=test TEST_DIR={labels.record.get('source')} "
            f"CACHE={cache}`")
    try:
        features = FeatureCache.open(cache_dir)
    except FeatureCacheError as exc:
        raise FeatureCacheError(f"no features of the pseudo-labelled clips of {labels.path} ({exc}); {hint}") from exc
    absent = sorted(set(labels.ids) - set(features.ids.tolist()))
    if absent:
        raise FeatureCacheError(f"{cache_dir}: {len(absent)} pseudo-labelled clips of {labels.path} (e.g. "
                                f"{absent[:3]}) are not in the feature cache; {hint}")
    return PseudoRows(ids=labels.ids, probs=labels.probs, cache=features, weight=pseudo_labels.weight,
                      fold_probs=labels.fold_probs if pseudo_labels.per_fold else None)


def check_fold_labels(labels: PseudoLabels, *, folds: pd.DataFrame) -> None:
    """Refuse fold labels (``data.pseudo_labels.per_fold``) that are missing or were made on other folds.

    Raises
    ------
    ConfigError
        The file has no ``.folds.csv``, or its ``folds_checksum`` is not that of ``folds``
        (:func:`common.folds.assignment_checksum`): its fold ``k`` labels came from models that
        may have seen this run's fold ``k`` validation tracks.
    """
    from common.folds import assignment_checksum

    remedy = ("write them with `make pseudo` given DATA, SUBSET and the FOLDS this experiment trains on, "
              "from experiments trained on those folds")
    if labels.fold_probs is None:
        raise ConfigError(f"data.pseudo_labels.per_fold: {labels.path} has no labels per fold; {remedy}")
    if labels.record.get("folds_checksum") != assignment_checksum(folds):
        raise ConfigError(f"data.pseudo_labels.per_fold: {labels.path}: its labels per fold were made on "
                          f"other folds than this experiment's; {remedy}")


def auxiliary_targets(config: ExperimentConfig, *, tracks: pd.DataFrame, genres: pd.DataFrame,
                      folds: pd.DataFrame, store: ClipStore) -> tuple[Task | None, np.ndarray | None]:
    """The auxiliary head's classes and the targets of every row of ``store`` (``task.auxiliary``).

    ``genres_all``: the classes of the ``multi`` task over the folds' tracks
    (:func:`common.tasks.build_task`, ``task.min_tracks``) and their 0/1 targets.

    Returns
    -------
    auxiliary : Task or None
        None when the config asks for no auxiliary head (then the targets are None too).
    y_auxiliary : np.ndarray, shape (len(store), auxiliary.n_classes), float32, or None

    Raises
    ------
    ConfigError
        No genre reaches ``task.min_tracks``, or rows of ``store`` are not FMA tracks
        (``data.pseudo_labels``): they have no ``genres_all`` to learn.
    """
    if config.task.auxiliary == "none":
        return None, None
    auxiliary = build_task("multi", tracks=tracks, genres=genres, train_ids=folds.index,
                           min_tracks=config.task.min_tracks)
    ids = pd.to_numeric(pd.Series(store.ids), errors="coerce")  # NaN for a clip id that is not a track id
    foreign = ~ids.isin(tracks.index)
    if foreign.any():
        raise ConfigError(f"task.auxiliary: {int(foreign.sum())} training clips "
                          "are not FMA tracks (data.pseudo_labels?) and have no genres_all for the auxiliary "
                          "head to learn; leave out task.auxiliary or data.pseudo_labels")
    return auxiliary, auxiliary.genres_all_hot(tracks.loc[ids.astype(np.int64).to_numpy()])


def check_artist_grouped(tracks: pd.DataFrame, *, ids: np.ndarray, folds: np.ndarray, train_only: np.ndarray,
                         folds_path: Path) -> None:
    """Every artist of a train-only track has all its fold tracks in one fold.

    A train-only track of fold ``k`` trains every other fold: were a track of its artist
    validated in one of those, the model would be scored on an artist it trained on.
    Artist-grouped folds (:func:`common.folds.make_folds`) never allow it; this checks the
    folds file read.

    Parameters
    ----------
    tracks : pd.DataFrame
        FMA tracks table (index ``track_id``, column ``('artist', 'id')``).
    ids, folds : np.ndarray of int64, shape (n_fold_tracks,)
        Fold tracks and their folds.
    train_only : np.ndarray of bool, shape (n_fold_tracks,)
    folds_path : Path
        Named in the error.

    Raises
    ------
    MetadataError
        Such an artist has tracks in several folds.
    """
    artists = tracks.loc[ids, ("artist", "id")].to_numpy(np.int64)
    n_folds = pd.Series(folds).groupby(artists).nunique()
    spread = n_folds[(n_folds > 1) & n_folds.index.isin(artists[train_only])]
    if len(spread):
        artist = int(spread.index[0])
        raise MetadataError(f"{folds_path}: artist {artist} has a track without a genre_top (trained on with "
                            f"task.multi_root) and tracks in folds {sorted(set(folds[artists == artist].tolist()))}: "
                            "the folds are not grouped by artist; rewrite them with `make folds` "
                            "(python -m experiments.folds ... --force)")


def train_experiment(config: ExperimentConfig, exp_data: ExperimentData, *, runs: Path,
                     folds: list[int] | None = None, callbacks: tuple = (), verbose: int = 0,
                     on_wait: Callable[[str], None] | None = None) -> dict | None:
    """Train the given folds (default: all) and, when all are finished and none failed, summarise.

    A fold that fails (its training loss stops being finite) does not stop the others.
    ``on_wait`` is given a line naming the holder of a fold's or the experiment's lock when
    another run holds it, before waiting (:func:`common.locks.folder_lock`).

    Returns
    -------
    dict or None
        The experiment summary, or None while folds remain unfinished or one failed.
    """
    from common.locks import folder_lock

    exp_dir = Path(runs) / config.name
    all_folds = sorted(set(exp_data.folds.tolist()))
    for fold in check_folds(exp_data, folds):
        train_one_fold(config, exp_data, runs=runs, fold=fold, callbacks=callbacks, verbose=verbose, on_wait=on_wait)
    if not folds_complete(exp_dir, all_folds):
        return None
    with folder_lock(exp_dir, on_wait=on_wait):
        return summarise_experiment(config, exp_data, exp_dir=exp_dir, fold_numbers=all_folds)


def check_folds(exp_data: ExperimentData, folds: list[int] | None) -> list[int]:
    """The requested folds (default: all of the folds file), each checked to exist."""
    all_folds = sorted(set(exp_data.folds.tolist()))
    for fold in folds if folds is not None else all_folds:
        if fold not in all_folds:
            raise ToolkitError(f"--fold {fold}: the folds file has folds {all_folds}")
    return list(folds) if folds is not None else all_folds


def train_one_fold(config: ExperimentConfig, exp_data: ExperimentData, *, runs: Path, fold: int,
                   callbacks: tuple = (), verbose: int = 0, on_wait: Callable[[str], None] | None = None) -> dict:
    """Train (or resume, or skip when finished) fold ``fold`` into ``runs/<exp>/fold_<fold>``, under the fold
    folder's lock (``on_wait``: see :func:`train_experiment`); its summary."""
    from common.training import train_fold

    train, val = exp_data.fold_rows(fold)
    weights = None if exp_data.weights is None else exp_data.weights[train]
    return train_fold(config, task=exp_data.task, fold=fold, store=exp_data.store, train_positions=train,
                      y_train=exp_data.train_targets(fold, train), val_positions=val, y_val=exp_data.y[val],
                      sample_weights=weights, auxiliary=exp_data.auxiliary,
                      y_auxiliary=None if exp_data.y_auxiliary is None else exp_data.y_auxiliary[train],
                      run_dir=fold_dir(Path(runs) / config.name, fold),
                      callbacks=callbacks, verbose=verbose, on_wait=on_wait)


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
