"""Clip probabilities from trained models: centre crop or the mean over chunks.

Used by the validation of every epoch, the test-split evaluation of an experiment,
crowdAI submissions and song tagging. A model takes raw feature crops
``(batch, n_mels, crop_frames)`` (log-mel) or ``(batch, crop_samples)`` (waveform), or
whole vectors ``(batch, dim)`` (embeddings: ``crop_frames == dim``, so the one "centre
crop" or chunk is the vector itself).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.errors import ToolkitError


def chunk_starts(n_frames: int, *, crop_frames: int, hop_frames: int) -> np.ndarray:
    """Start frames of the evaluation chunks of a clip.

    Chunks start every ``hop_frames``; a last chunk ending exactly at the end of the clip
    is added when the hops do not reach it, so every frame is covered.

    Returns
    -------
    np.ndarray, shape (n_chunks,), int64
    """
    if hop_frames < 1:
        raise ValueError(f"chunk hop must be at least 1 frame, got {hop_frames}")
    last = max(n_frames - crop_frames, 0)
    starts = np.arange(0, last + 1, hop_frames, dtype=np.int64)
    return starts if starts[-1] == last else np.append(starts, last)


@functools.lru_cache(maxsize=4)
def forward_function(model) -> Callable[[np.ndarray], np.ndarray]:
    """``model(x, training=False)`` as a function traced once for every batch size.

    ``model.predict_on_batch`` traces its graph again for each new batch size until
    TensorFlow relaxes the shape (for musicnn ~0.5 s a trace, as long as a minute of
    audio takes to tag); songs give any number of patches. This function has a
    batch dimension of ``None`` from the start. Cached for the last 4 models.

    Returns
    -------
    callable
        ``(batch, *model.input_shape[1:])`` float32 array -> ``(batch, *model.output_shape[1:])``.
    """
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    traced = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    return lambda x: traced(np.asarray(x, dtype=np.float32)).numpy()


def predict_clips(model, features, *, crop_frames: int, eval: str = "center",
                  chunk_hop_frames: int | None = None, batch_size: int = 32) -> np.ndarray:
    """Probabilities of every clip.

    Parameters
    ----------
    model : keras.Model
        Takes ``(batch, ..., crop_frames)`` raw features; returns ``(batch, n_classes)``.
    features : array-like, shape (n, n_mels, n_frames) or (n, n_samples)
        Anything sliceable along the first axis (array, memmap, :class:`common.data.ClipStore`).
    crop_frames : int
        Model input length along the last axis. Shorter clips are padded with their
        per-row minimum (silence in a log-mel).
    eval : {"center", "chunks"}
        One centre crop, or the mean of the predictions of all chunks.
    chunk_hop_frames : int, optional
        Hop between chunks (default ``crop_frames``).
    batch_size : int
        Crops per model call.

    Returns
    -------
    np.ndarray, shape (n, n_classes), float64
    """
    if eval not in ("center", "chunks"):
        raise ValueError(f"eval must be 'center' or 'chunks', got {eval!r}")
    n = len(features)
    total = max(features.shape[-1], crop_frames)
    if eval == "center":
        starts = np.array([(total - crop_frames) // 2])
    else:
        starts = chunk_starts(total, crop_frames=crop_frames, hop_frames=chunk_hop_frames or crop_frames)
    clips_per_call = max(1, batch_size // len(starts))
    outputs = []
    for begin in range(0, n, clips_per_call):
        x = np.asarray(features[begin:begin + clips_per_call], dtype=np.float32)
        if x.shape[-1] < crop_frames:
            pad = [(0, 0)] * (x.ndim - 1) + [(0, crop_frames - x.shape[-1])]
            x = np.pad(x, pad, mode="minimum")
        chunks = np.stack([x[..., s:s + crop_frames] for s in starts], axis=1)
        probs = np.asarray(model.predict_on_batch(chunks.reshape(-1, *chunks.shape[2:])), dtype=np.float64)
        outputs.append(probs.reshape(len(x), len(starts), -1).mean(axis=1))
    if not outputs:
        return np.zeros((0, model.output_shape[-1]))
    return np.concatenate(outputs)


def load_fold_models(exp_dir: str | Path) -> list:
    """The best model of every finished fold of an experiment, in fold order.

    Parameters
    ----------
    exp_dir : path-like
        ``runs/<exp>``, holding ``fold_<k>/model.keras`` and ``fold_<k>/summary.json``.

    Raises
    ------
    ToolkitError
        No finished fold in ``exp_dir``.
    """
    import keras

    import common.models  # noqa: F401  (registers the custom layers)

    exp_dir = Path(exp_dir)
    folds = sorted((d for d in exp_dir.glob("fold_*") if (d / "summary.json").exists()),
                   key=lambda d: int(d.name.split("_")[1]))
    if not folds:
        raise ToolkitError(f"{exp_dir}: no finished fold (fold_<k>/summary.json); train the experiment first")
    return [keras.models.load_model(d / "model.keras", compile=False) for d in folds]


def predict_ensemble(models: list, features, *, crop_frames: int, eval: str = "center",
                     chunk_hop_frames: int | None = None, batch_size: int = 32) -> np.ndarray:
    """Mean of :func:`predict_clips` over ``models`` (a fold ensemble); shape ``(n, n_classes)``."""
    return np.mean([predict_clips(m, features, crop_frames=crop_frames, eval=eval,
                                  chunk_hop_frames=chunk_hop_frames, batch_size=batch_size)
                    for m in models], axis=0)


def load_run_config(exp_dir: str | Path):
    """The resolved :class:`~common.config.ExperimentConfig` saved with an experiment's folds."""
    import yaml

    from common.config import config_from_dict

    exp_dir = Path(exp_dir)
    saved = sorted(exp_dir.glob("fold_*/config.yaml"))
    if not saved:
        raise ToolkitError(f"{exp_dir}: no fold_<k>/config.yaml; train the experiment first")
    return config_from_dict(yaml.safe_load(saved[0].read_text()), name=exp_dir.name, check_model=False)


def predict_experiment(exp_dir: str | Path, features, *, batch_size: int | None = None):
    """Fold-ensemble probabilities of an experiment for clips of its feature settings.

    Parameters
    ----------
    exp_dir : path-like
        ``runs/<exp>`` with finished folds.
    features : array-like, shape (n, n_mels, n_frames) or (n, n_samples)
        Raw features computed with the experiment's ``features`` settings.
    batch_size : int, optional
        Crops per model call (default: the experiment's batch size).

    Returns
    -------
    probs : np.ndarray, shape (n, n_classes)
    task : common.tasks.Task
        Class names (column order) and task of the experiment.
    """
    from common.tasks import Task

    exp_dir = Path(exp_dir)
    config = load_run_config(exp_dir)
    task = Task.load(sorted(exp_dir.glob("fold_*/classes.json"))[0])
    data = config.data
    probs = predict_ensemble(load_fold_models(exp_dir), features, crop_frames=data.crop_frames(config.features),
                             eval=data.eval, chunk_hop_frames=data.chunk_hop_frames(config.features),
                             batch_size=batch_size or data.batch_size)
    return probs, task
