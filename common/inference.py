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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import DamagedFoldError, ToolkitError
from common.runs import finished_fold_dirs, retrain_command, verify_fold
from common.store import ClipStore


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


def main_output(outputs):
    """A model's probabilities: its one output, or the main (first) head's of a multi-task model.

    A multi-task model (``task.auxiliary``, :func:`common.models.build_model`) returns the list
    ``[main (batch, n_classes), auxiliary (batch, n_auxiliary)]`` (and a list of shapes as its
    ``output_shape``, which this reads the same way); every prediction of the toolkit
    (validation, out-of-fold, test split, submissions, blends, tagging) reads the main head.
    """
    return outputs[0] if isinstance(outputs, list) else outputs


def _call_model(model, x):
    return main_output(model(x, training=False))


def _call_models(models, x):
    import tensorflow as tf

    return tf.stack([tf.cast(main_output(model(x, training=False)), tf.float32) for model in models])


@dataclass(frozen=True)
class TracedForward:
    """A traced model call on numpy arrays: ``forward(x) -> np.ndarray``.

    Attributes
    ----------
    traced : tf.types.experimental.PolymorphicFunction
        The ``tf.function`` (``experimental_get_tracing_count()``, ``get_concrete_function()``).
    """

    traced: Any

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.traced(np.asarray(x, dtype=np.float32)).numpy()


@functools.lru_cache(maxsize=8)
def forward_function(model, batch_size: int | None = None) -> TracedForward:
    """``model(x, training=False)`` as a function traced once; a tuple of models in one graph.

    ``model.predict_on_batch`` traces its graph again for each new batch size until
    TensorFlow relaxes the shape (for musicnn ~0.5 s a trace, as long as a minute of
    audio takes to tag); songs give any number of patches. With ``batch_size=None``
    this function has a batch dimension of ``None`` from the start; with a number it
    takes exactly that many rows (what :func:`predict_clips` feeds it: one static
    shape, the best graph on a GPU). A tuple of models (a fold ensemble, same input
    shape) is traced as one function returning every model's output: one call per
    batch, and one trace instead of one per model. Cached for the last 8 (model,
    batch size) pairs.

    Prediction runs on one device, outside any distribution strategy: the default
    device of the calling thread (the first GPU, or the CPU). A model trained under
    ``MirroredStrategy`` (:func:`common.training.select_runtime`) predicts as the plain
    model holding its weights; its variables are read on that device. The toolkit calls
    this (and :func:`predict_clips`) outside ``strategy.scope()``: from Keras callbacks
    (validation), on reloaded ``model.keras`` files (out-of-fold, test split, fold
    ensembles of submissions and tagging).

    Returns
    -------
    TracedForward
        ``(batch, *model.input_shape[1:])`` float32 array -> ``(batch, *model.output_shape[1:])``,
        or ``(n_models, batch, *output_shape[1:])`` float32 for a tuple.
    """
    import tensorflow as tf

    first = model[0] if isinstance(model, tuple) else model
    spec = tf.TensorSpec((batch_size, *first.input_shape[1:]), tf.float32)
    # A partial, not a lambda: TensorFlow's retracing detector keys on a function's code
    # object, shared by every lambda made here; a partial object is its own key.
    return TracedForward(tf.function(functools.partial(_call_models if isinstance(model, tuple) else _call_model,
                                                       model), input_signature=[spec]))


#: Crops per inference call on a CPU. Full-size spectrogram batches spill out of the CPU's
#: caches: ``bench.predict`` (CRNN, 96 x 1366, 2 cores) ran the batched path at 1.03 x the
#: per-clip path with 4 crops per call and at 0.84 x with the training batch of 32. Every
#: prediction uses it: validation after each epoch, out-of-fold, test split, submissions.
CPU_INFERENCE_BATCH = 4


def inference_batch_size(training_batch_size: int) -> int:
    """Crops per model call for prediction: the training batch on a GPU, at most
    :data:`CPU_INFERENCE_BATCH` without one."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return training_batch_size
    return min(training_batch_size, CPU_INFERENCE_BATCH)


def _clip_blocks(features, *, block: int):
    """Clips of ``features`` a block at a time: each a float32 array ``(..., n_frames)``.

    ``features`` is a sequence of clips of any lengths (a list of arrays) or an array-like
    sliceable along its first axis (array, memmap, :class:`common.store.ClipStore`), read
    ``block`` clips per slice.
    """
    if isinstance(features, (list, tuple)):
        for clip in features:
            yield np.asarray(clip, dtype=np.float32)
        return
    for begin in range(0, len(features), block):
        yield from np.asarray(features[begin:begin + block], dtype=np.float32)


def eval_starts(n_frames: int, *, crop_frames: int, eval: str, chunk_hop_frames: int | None) -> np.ndarray:
    """Start frames of the crops a clip of ``n_frames`` is evaluated on (``eval``: one centre crop, or chunks).

    A clip shorter than ``crop_frames`` has one crop at 0 (it is padded to ``crop_frames``).

    Returns
    -------
    np.ndarray, shape (n_crops,), int64
    """
    total = max(n_frames, crop_frames)
    if eval == "center":
        return np.array([(total - crop_frames) // 2])
    return chunk_starts(total, crop_frames=crop_frames, hop_frames=chunk_hop_frames or crop_frames)


def predict_clips(models, features, *, crop_frames: int, eval: str = "center",
                  chunk_hop_frames: int | None = None, batch_size: int = 32,
                  on_batch: Callable[[int], object] | None = None,
                  valid_lengths: np.ndarray | None = None) -> np.ndarray:
    """Probabilities of every clip, batched across clips; the mean over ``models`` when several.

    The chunks of consecutive clips fill fixed-size batches (a clip's chunks may span
    two batches); each batch goes through every model before the next is read, so the
    features are read once for a whole fold ensemble, and all models run in one traced
    function of one input shape (:func:`forward_function` of the tuple of models): no
    retracing, full batches on a GPU. The batch is ``batch_size`` crops, or the next power of two above the
    number of crops when there are fewer (a few clips do not pay for a whole batch). It runs on one
    device, whatever strategy the models trained under (see :func:`forward_function`).

    Parameters
    ----------
    models : keras.Model or list of keras.Model
        Each takes ``(batch, ..., crop_frames)`` raw features; returns ``(batch, n_classes)``.
    features : array-like, shape (n, n_mels, n_frames) or (n, n_samples), or list of arrays
        Anything sliceable along the first axis (array, memmap, :class:`common.store.ClipStore`),
        or a list of clips of different lengths ``(n_mels, n_frames_i)``.
    crop_frames : int
        Model input length along the last axis. Shorter clips are padded with their
        per-row minimum (silence in a log-mel).
    eval : {"center", "chunks"}
        One centre crop, or the mean of the predictions of all chunks.
    chunk_hop_frames : int, optional
        Hop between chunks (default ``crop_frames``).
    batch_size : int
        Crops per model call.
    on_batch : callable, optional
        Called after each batch with the number of clips predicted so far (progress bars).
    valid_lengths : np.ndarray, shape (n,), int, optional
        Frames (samples) of each clip that hold audio, the rest being the zero padding of a
        clip shorter than the cache's ``clip_seconds``; default: a :class:`~common.store.ClipStore`'s
        own :attr:`~common.store.ClipStore.valid_lengths`, else None (all audio). A clip is then
        evaluated as its first ``max(valid_length, crop_frames)`` frames: its chunks (or centre
        crop) are those of the unpadded audio, at least one per clip.

    Returns
    -------
    np.ndarray, shape (n, n_classes), float64
        Mean over each clip's chunks, then over ``models``.
    """
    if eval not in ("center", "chunks"):
        raise ValueError(f"eval must be 'center' or 'chunks', got {eval!r}")
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    n = len(features)
    n_classes = main_output(models[0].output_shape)[-1]
    if n == 0:
        return np.zeros((0, n_classes))
    lengths = ([np.shape(clip)[-1] for clip in features] if isinstance(features, (list, tuple))
               else [features.shape[-1]] * n)
    if valid_lengths is None and isinstance(features, ClipStore):
        valid_lengths = features.valid_lengths
    if valid_lengths is not None:
        lengths = np.minimum(lengths, np.maximum(valid_lengths, crop_frames)).tolist()
    n_chunks = np.array([len(eval_starts(length, crop_frames=crop_frames, eval=eval,
                                        chunk_hop_frames=chunk_hop_frames)) for length in lengths])
    batch = int(min(batch_size, 1 << int(np.ceil(np.log2(n_chunks.sum())))))
    forward = forward_function(tuple(models), batch)
    sums = np.zeros((n, n_classes))
    x = np.zeros(0, dtype=np.float32)  # (batch, *clip.shape[:-1], crop_frames), once the first clip is read
    owners = np.zeros(batch, dtype=np.int64)
    last_chunk = np.zeros(batch, dtype=bool)
    filled = 0

    def flush() -> None:
        np.add.at(sums, owners[:filled], forward(x)[:, :filled].sum(axis=0, dtype=np.float64))
        if on_batch is not None:
            on_batch(int(owners[filled - 1]) + int(last_chunk[filled - 1]))

    read_block = max(1, batch // int(n_chunks[0]))
    for index, clip in enumerate(_clip_blocks(features, block=read_block)):
        clip = clip[..., :lengths[index]]
        if clip.shape[-1] < crop_frames:
            pad = [(0, 0)] * (clip.ndim - 1) + [(0, crop_frames - clip.shape[-1])]
            clip = np.pad(clip, pad, mode="minimum")
        if index == 0:
            x = np.zeros((batch, *clip.shape[:-1], crop_frames), dtype=np.float32)
        starts = eval_starts(clip.shape[-1], crop_frames=crop_frames, eval=eval, chunk_hop_frames=chunk_hop_frames)
        for start in starts:
            x[filled] = clip[..., start:start + crop_frames]
            owners[filled] = index
            last_chunk[filled] = start == starts[-1]
            filled += 1
            if filled == batch:
                flush()
                filled = 0
    if filled:
        flush()
    return sums / (n_chunks[:, None] * len(models))


def load_fold_models(exp_dir: str | Path, *, hash: bool = True, allow_diverged: bool = False) -> list:
    """The best model of every finished fold of an experiment, in fold order, each checked first.

    Parameters
    ----------
    exp_dir : path-like
        ``runs/<exp>``, holding ``fold_<k>/model.keras`` and ``fold_<k>/summary.json``.
    hash : bool
        Check the sha256 of each fold's ``model.keras``, not only its size
        (:func:`common.runs.verify_fold`; the fold's other files are not read here).
    allow_diverged : bool
        Load folds whose status is ``"diverged"`` or ``"failed"`` too; a fold that failed before
        keeping any model is refused all the same.

    Raises
    ------
    ToolkitError
        No finished fold in ``exp_dir``.
    DamagedFoldError
        A fold's files differ from those recorded, or Keras cannot load its ``model.keras``;
        names the fold and the command that retrains it.
    DivergedFoldError
        A fold diverged or failed (:class:`~common.errors.FailedFoldError`) and ``allow_diverged``
        is false.
    """
    folds = finished_fold_dirs(exp_dir, required=True)
    for fold in folds:
        verify_fold(fold, files=("model.keras",), hash=hash, allow_diverged=allow_diverged)
    return [load_fold_model(fold) for fold in folds]


def load_fold_model(fold_path: str | Path):
    """``fold_path/model.keras`` (uncompiled).

    Raises
    ------
    DamagedFoldError
        Keras cannot read it (truncated, not a ``.keras`` archive), naming the fold and the
        command that retrains it.
    """
    import zipfile

    import keras

    import common.models  # noqa: F401  (registers the custom layers)

    path = Path(fold_path) / "model.keras"
    try:
        return keras.models.load_model(path, compile=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DamagedFoldError(fold_path, f"{path}: Keras cannot load this model ({detail})",
                               retrain=retrain_command(fold_path)) from error


def load_run_config(exp_dir: str | Path):
    """The resolved :class:`~common.config.ExperimentConfig` saved with an experiment's first finished fold.

    Raises
    ------
    ToolkitError
        No finished fold in ``exp_dir``, or it lacks its ``config.yaml``.
    """
    import yaml

    from common.config import config_from_dict

    exp_dir = Path(exp_dir)
    saved = finished_fold_dirs(exp_dir, required=True)[0] / "config.yaml"
    if not saved.is_file():
        raise ToolkitError(f"{saved}: missing from a finished fold; train the fold again")
    return config_from_dict(yaml.safe_load(saved.read_text()), name=exp_dir.name, check_model=False)
