"""Fold ensembles of trained experiments, combined across experiments.

An experiment's *fold ensemble* is the mean of the clip probabilities of its fold
models (``runs/<exp>/fold_<k>/model.keras``), each clip evaluated with the
experiment's own policy (centre crop or mean over chunks, :mod:`common.inference`).
Several experiments are then combined row by row with :func:`combine`:

``arithmetic``
    ``sum_i w_i p_i`` (the linear opinion pool).
``geometric``
    ``prod_i p_i ** w_i``, renormalised (the log-linear pool: a class stays likely
    only if every experiment finds it likely).

Weights default to equal, must be positive and are normalised to sum to 1; every
combined row is renormalised to sum to 1.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.errors import ConfigError, ToolkitError
from common.pretrained import DEFAULT_WEIGHTS_DIR
from common.runs import finished_fold_dirs
from common.settings import EMBEDDING_MIN_CLIP_SECONDS
from common.store import ClipStore

#: Ways of combining experiments.
MEANS: tuple[str, ...] = ("arithmetic", "geometric")

#: Smallest probability taken into a geometric mean (keeps ``log`` finite).
GEOMETRIC_FLOOR = 1e-12


def parse_weights(text: str | None, *, n: int) -> np.ndarray:
    """Weights of ``n`` experiments from ``"0.7,0.3"`` (None: equal), normalised to sum to 1.

    Returns
    -------
    np.ndarray, shape (n,), float64

    Raises
    ------
    ConfigError
        Not ``n`` comma-separated positive numbers (the message quotes ``--blend-weights``).
    """
    if text is None:
        return np.full(n, 1.0 / n)
    try:
        weights = np.array([float(part) for part in text.split(",")], dtype=np.float64)
    except ValueError:
        raise ConfigError(f"--blend-weights {text!r}: expected comma-separated numbers such as 0.7,0.3") from None
    if len(weights) != n:
        raise ConfigError(f"--blend-weights {text!r}: {len(weights)} weights for {n} experiments")
    if not np.isfinite(weights).all() or (weights <= 0).any():
        raise ConfigError(f"--blend-weights {text!r}: every weight must be a positive number")
    return weights / weights.sum()


def combine(probs: Sequence[np.ndarray], *, weights: np.ndarray | None = None,
            mean: str = "arithmetic") -> np.ndarray:
    """Combine the probabilities of several experiments row by row.

    Parameters
    ----------
    probs : sequence of np.ndarray, each shape (n, n_classes)
        One matrix per experiment, same rows and columns.
    weights : np.ndarray, shape (len(probs),), optional
        Positive; normalised to sum to 1 (default: equal).
    mean : {"arithmetic", "geometric"}

    Returns
    -------
    np.ndarray, shape (n, n_classes), float64
        Rows sum to 1 (within float rounding).
    """
    if mean not in MEANS:
        raise ConfigError(f"--mean: {mean!r} is not one of {list(MEANS)}")
    if not probs:
        raise ValueError("combine needs at least one probability matrix")
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probs])
    w = np.full(len(stack), 1.0 / len(stack)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(stack),) or (w <= 0).any():
        raise ValueError(f"weights must be {len(stack)} positive numbers, got {w}")
    w = w / w.sum()
    if mean == "arithmetic":
        pooled = np.tensordot(w, stack, axes=1)
    else:
        log_pool = np.tensordot(w, np.log(np.maximum(stack, GEOMETRIC_FLOOR)), axes=1)
        pooled = np.exp(log_pool - log_pool.max(axis=1, keepdims=True))
    return pooled / pooled.sum(axis=1, keepdims=True)


@dataclasses.dataclass
class FoldEnsemble:
    """The finished fold models of one experiment, loaded once.

    Attributes
    ----------
    name : str
    exp_dir : Path
        ``runs/<exp>``.
    config : common.config.ExperimentConfig
        The resolved config saved with the folds.
    task : common.tasks.Task
        Class names in output column order.
    models : list of keras.Model
    fold_dirs : list of Path
    summary : dict or None
        ``runs/<exp>/summary.json`` (CV and test-split scores) when the experiment is finished.
    auxiliary : common.tasks.Task or None
        The classes of the models' auxiliary head (``task.auxiliary``, the folds'
        ``auxiliary_classes.json``); None for single-head models.
    """

    name: str
    exp_dir: Path
    config: Any
    task: Any
    models: list
    fold_dirs: list[Path]
    summary: dict | None
    auxiliary: Any = None

    @property
    def settings(self):
        """The experiment's :class:`~common.settings.FeatureSettings`."""
        return self.config.features

    @property
    def crop_frames(self) -> int:
        return self.config.data.crop_frames(self.settings)

    def predict(self, features, *, batch_size: int | None = None,
                on_batch: Callable[[int], object] | None = None) -> np.ndarray:
        """Fold-ensemble probabilities of clips of the experiment's feature settings.

        Batches of chunks of many clips go through every fold model before the next
        batch is read (:func:`common.inference.predict_clips`).

        Parameters
        ----------
        features : array-like, shape (n, n_mels, n_frames) or (n, n_samples), or list of arrays
            Raw features (array, memmap or :class:`common.store.ClipStore`, or clips of
            different lengths); clips may be longer or shorter than the training clips
            (chunks / padding, see :func:`common.inference.predict_clips`).
        batch_size : int, optional
            Crops per model call (default: :func:`common.inference.inference_batch_size` of the
            experiment's batch size).
        on_batch : callable, optional
            Called after each batch with the number of clips predicted so far (progress bars).

        Returns
        -------
        np.ndarray, shape (n, n_classes), float64
            The main head's (a multi-task model's 16-way head, :func:`common.inference.main_output`).
        """
        return self._predict(self.models, features, batch_size=batch_size, on_batch=on_batch)

    def predict_each_fold(self, features, *, batch_size: int | None = None) -> dict[int, np.ndarray]:
        """Each fold model's probabilities alone, as :meth:`predict` gives their mean.

        Returns
        -------
        dict of int to np.ndarray, shape (n, n_classes) float64 each
            By fold number (``fold_<k>``), in fold order.
        """
        from common.runs import fold_number

        return {fold: self._predict([model], features, batch_size=batch_size)
                for fold_dir, model in zip(self.fold_dirs, self.models) if (fold := fold_number(fold_dir)) is not None}

    def predict_auxiliary(self, features, *, batch_size: int | None = None) -> np.ndarray:
        """Fold-ensemble probabilities of the auxiliary head, as :meth:`predict` gives the main head's.

        Returns
        -------
        np.ndarray, shape (n, auxiliary.n_classes), float64

        Raises
        ------
        ToolkitError
            The experiment's models have no auxiliary head.
        """
        if self.auxiliary is None:
            raise ToolkitError(f"{self.exp_dir}: experiment {self.name!r} has no auxiliary head "
                               f"(train it with task.auxiliary: genres_all)")
        return self._predict(self._auxiliary_models, features, batch_size=batch_size)

    @functools.cached_property
    def _auxiliary_models(self) -> list:
        """Each fold model's auxiliary head (its second output) as a model of the same layers and weights."""
        import keras

        return [keras.Model(model.input, model.outputs[1]) for model in self.models]

    def _predict(self, models: list, features, *, batch_size: int | None,
                 on_batch: Callable[[int], object] | None = None) -> np.ndarray:
        from common.inference import inference_batch_size, predict_clips

        data = self.config.data
        if data.short_clips == "pad" and isinstance(features, ClipStore):
            features = features.padded()
        return predict_clips(models, features, crop_frames=self.crop_frames, eval=data.eval,
                             chunk_hop_frames=data.chunk_hop_frames(self.settings),
                             batch_size=batch_size or inference_batch_size(data.batch_size), on_batch=on_batch)

    def prior(self) -> np.ndarray:
        """Class frequencies of the training targets (``oof.csv``), add-one smoothed.

        Add-one (Laplace) smoothing keeps every class above 0, so a file that falls back
        to the prior never gets an infinite log loss.

        Returns
        -------
        np.ndarray, shape (n_classes,), sums to 1
        """
        path = self.exp_dir / "oof.csv"
        if not path.is_file():
            raise ToolkitError(f"{path}: missing; it is written when every fold of {self.name!r} is trained")
        oof = pd.read_csv(path, usecols=["target"], dtype=str, keep_default_na=False)
        if self.task.name == "single":
            counts = oof["target"].value_counts().reindex(self.task.class_names, fill_value=0).to_numpy(float)
        else:
            labels = oof["target"].str.split("|").explode()
            counts = labels.value_counts().reindex(self.task.class_names, fill_value=0).to_numpy(float)
        return (counts + 1.0) / (counts.sum() + len(counts))

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of what this ensemble is (for sidecars and tag files)."""
        data = self.config.data
        summary = self.summary or {}
        return {
            "name": self.name, "exp_dir": str(self.exp_dir), "model": self.config.model.name,
            "task": self.task.name, "n_classes": self.task.n_classes,
            "folds": [d.name for d in self.fold_dirs],
            "cv": summary.get("cv"), "test": summary.get("test"),
            "features": self.settings.to_dict(),
            "eval": data.eval, "crop_seconds": data.crop_seconds, "chunk_hop_seconds": data.chunk_hop_seconds,
        }


def load_ensemble(runs: str | Path, name: str, *, require_top_genres: bool = False,
                  allow_diverged: bool = False) -> FoldEnsemble:
    """Load the finished folds of ``runs/<name>``.

    Parameters
    ----------
    runs : path-like
        Runs root.
    name : str
        Experiment name.
    require_top_genres : bool
        Refuse anything but a ``single`` experiment over the 16 ``TOP_GENRES`` in
        leaderboard order (what a crowdAI submission needs).
    allow_diverged : bool
        Use folds whose status is ``"diverged"`` or ``"failed"`` too (:func:`common.runs.fold_status`).

    Raises
    ------
    ToolkitError
        No such experiment, no finished fold, or (with ``require_top_genres``) the wrong task.
    DamagedFoldError, DivergedFoldError
        A fold's files differ from their size or sha256 recorded in its summary, its model
        does not load, or (without ``allow_diverged``) it failed or diverged
        (:func:`common.inference.load_fold_models`).
    """
    from common.inference import load_fold_models, load_run_config
    from common.metadata import TOP_GENRES
    from common.tasks import AUXILIARY_CLASSES, Task

    exp_dir = Path(runs) / name
    if not exp_dir.is_dir():
        known = sorted(d.name for d in Path(runs).glob("*") if d.is_dir()) if Path(runs).is_dir() else []
        raise ToolkitError(f"{exp_dir}: no such experiment (in {runs}: {known}); train it with "
                           f"`make train EXP={name}`")
    fold_dirs = finished_fold_dirs(exp_dir, required=True)
    task = Task.load(fold_dirs[0] / "classes.json")
    if require_top_genres and (task.name != "single" or tuple(task.class_names) != tuple(TOP_GENRES)):
        raise ToolkitError(f"{exp_dir}: experiment {name!r} has task {task.name!r} with {task.n_classes} "
                           f"classes; a crowdAI submission needs a 'single' experiment over the 16 top genres")
    summary_path = exp_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    auxiliary_path = fold_dirs[0] / AUXILIARY_CLASSES
    return FoldEnsemble(name=name, exp_dir=exp_dir, config=load_run_config(exp_dir), task=task,
                        models=load_fold_models(exp_dir, allow_diverged=allow_diverged), fold_dirs=fold_dirs,
                        summary=summary, auxiliary=Task.load(auxiliary_path) if auxiliary_path.is_file() else None)


def segment_spans(bounds: np.ndarray, *, settings, n_total: int, min_length: int) -> np.ndarray:
    """Feature index ranges of song segments, widened to at least ``min_length`` when possible.

    Parameters
    ----------
    bounds : np.ndarray, shape (n_segments, 2)
        Segment start and end in seconds.
    settings : FeatureSettings
        Frames are ``hop_length`` samples apart (log-mel) or single samples (waveform).
    n_total : int
        Length of the whole song's features along the last axis.
    min_length : int
        The model's input length: a shorter segment is given the context centred on it
        (clamped to the song), so that the model sees what it was trained on.

    Returns
    -------
    np.ndarray, shape (n_segments, 2), int64
        ``[start, end)`` along the last feature axis.
    """
    unit = settings.hop_length if settings.kind == "logmel" else 1
    spans = np.clip(np.round(bounds * settings.sample_rate / unit).astype(np.int64), 0, n_total)
    spans[:, 1] = np.maximum(spans[:, 1], spans[:, 0] + 1)
    short = spans[:, 1] - spans[:, 0] < min_length
    centre = (spans[short, 0] + spans[short, 1]) // 2
    start = np.clip(centre - min_length // 2, 0, max(n_total - min_length, 0))
    spans[short] = np.stack([start, np.minimum(start + min_length, n_total)], axis=1)
    return spans


def _segment_vectors(y: np.ndarray, bounds: np.ndarray, *, ensemble: FoldEnsemble,
                     weights_dir: str | Path) -> np.ndarray:
    """Clip-embedding features ``(n_segments, dim)``, one per segment."""
    from common.features import features_for

    settings = ensemble.settings
    rate = settings.sample_rate
    min_samples = int(round(EMBEDDING_MIN_CLIP_SECONDS[settings.kind] * rate))
    vectors = []
    for start, end in np.round(bounds * rate).astype(int):
        missing = max(min_samples - (end - start), 0)
        start = max(min(start - missing // 2, len(y) - min_samples), 0)
        segment = y[start:max(end, start + min_samples)]
        segment = np.pad(segment, (0, max(min_samples - len(segment), 0)))
        vectors.append(features_for(segment, settings=settings, weights_dir=weights_dir))
    return np.stack(vectors)


def segment_views(ensemble: FoldEnsemble, clips, *, batch_size: int | None = None) -> dict:
    """The views of one song's segments: ``genres`` (the main head) and, for a multi-task
    experiment, ``sub-genres``: its auxiliary head's classes that are not top-level genres.

    Parameters
    ----------
    ensemble : FoldEnsemble
    clips : np.ndarray, shape (n_segments, dim), or list of arrays (n_mels, n_frames_i)
        Each segment's features (see :meth:`FoldEnsemble.predict`).
    batch_size : int, optional

    Returns
    -------
    dict of str to common.tagging.View
        ``probs`` of shape ``(n_segments, n_classes)`` each.
    """
    from common.metadata import TOP_GENRE_IDS
    from common.tagging import View

    views = {"genres": View(tuple(ensemble.task.class_names), ensemble.predict(clips, batch_size=batch_size))}
    auxiliary = ensemble.auxiliary
    roots = set(TOP_GENRE_IDS.values())
    sub_genres = [] if auxiliary is None else [i for i, g in enumerate(auxiliary.genre_ids) if g not in roots]
    if sub_genres:
        probs = ensemble.predict_auxiliary(clips, batch_size=batch_size)[:, sub_genres]
        views["sub-genres"] = View(tuple(auxiliary.class_names[i] for i in sub_genres), probs)
    return views


def experiment_song(path: str | Path, *, ensemble: FoldEnsemble, window: float = 10.0, hop: float = 10.0,
                    batch_size: int | None = None, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR,
                    ) -> tuple[np.ndarray, dict, dict[str, Any]]:
    """Per-segment probabilities of one song from an experiment's fold ensemble.

    The whole song is decoded at the experiment's rate and analysed once; each segment's
    slice of the features is predicted with the experiment's evaluation policy. A segment
    shorter than the model input is predicted from the model-input-long context centred
    on it; a song shorter than the model input is padded.

    Parameters
    ----------
    path : path-like
        Any audio file :func:`common.audio.load_audio` reads (any length, rate, channels).
    ensemble : FoldEnsemble
    window, hop : float
        Segment length and step in seconds.
    batch_size : int, optional
    weights_dir : path-like
        Pretrained weights of embedding features (``features.kind: musicnn``).

    Returns
    -------
    bounds : np.ndarray, shape (n_segments, 2)
        Segment start and end in seconds.
    views : dict
        ``{"genres": common.tagging.View}`` over the experiment's classes (the 16 top
        genres for ``single``, the genre tree's classes for ``multi``), and ``"sub-genres"``
        for a multi-task experiment (:func:`segment_views`).
    notes : dict
        Model input length and context policy, for the JSON record.
    """
    from common.audio import load_audio
    from common.features import features_for
    from common.tagging import segment_bounds

    settings = ensemble.settings
    y = load_audio(path, sample_rate=settings.sample_rate)
    duration = y.shape[0] / settings.sample_rate
    bounds = segment_bounds(duration, window=window, hop=hop)
    if settings.layout == "vector":
        vectors = _segment_vectors(y, bounds, ensemble=ensemble, weights_dir=weights_dir)
        return bounds, segment_views(ensemble, vectors, batch_size=batch_size), {
            "task": ensemble.task.name, "folds": len(ensemble.models), "eval": "embedding",
            "context": (f"each segment is embedded on its own; segments shorter than "
                        f"{EMBEDDING_MIN_CLIP_SECONDS[settings.kind]} s are embedded from that much audio "
                        f"centred on them"),
        }
    features = features_for(y, settings=settings)
    spans = segment_spans(bounds, settings=settings, n_total=features.shape[-1], min_length=ensemble.crop_frames)
    views = segment_views(ensemble, [features[..., s:e] for s, e in spans], batch_size=batch_size)
    input_seconds = ensemble.crop_frames * (settings.hop_length if settings.kind == "logmel" else 1) \
        / settings.sample_rate
    notes = {
        "task": ensemble.task.name, "folds": len(ensemble.models), "eval": ensemble.config.data.eval,
        "model_input_seconds": round(input_seconds, 3),
        "context": ("segments shorter than the model input are predicted from the model-input-long "
                    "audio centred on them; audio shorter than the model input is padded"),
    }
    return bounds, views, notes
