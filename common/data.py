"""``tf.data`` training pipelines over a :class:`~common.store.ClipStore`.

Batches are gathered whole, never sample by sample: a batch of row positions goes
through one ``tf.numpy_function`` that fancy-indexes an in-memory float16 array (when the
features fit in memory) or the memory-mapped cache shards, and every random operation
after it (time crop, SpecAugment, mixup) is a vectorised TensorFlow op over the batch,
seeded statelessly from a per-batch seed so that a run is reproducible. The training
statistics the pipeline and the model need (per-band mean and std, class weights) are
computed here too.

Feature arrays have the cache's orientation: ``(n, n_mels, n_frames)`` for log-mel,
``(n, n_samples)`` for waveforms, ``(n, dim)`` for vectors (embeddings); crops are taken
along the last axis (a vector is used whole: its "crop" is all of it, and SpecAugment,
which the config allows for log-mel only, never applies).
"""

from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf

from common.config import SpecAugmentConfig
from common.errors import FeatureCacheError
from common.store import ClipStore

#: Bytes of one chunk of :func:`feature_stats` (as float64): bounds its memory whatever the clip size.
STATS_CHUNK_BYTES = 64 << 20


def feature_stats(store: ClipStore, positions: np.ndarray, *, layout: str | None = None,
                  chunk_bytes: int = STATS_CHUNK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Per-frequency (log-mel), per-component (vector) or global (waveform) mean and std.

    Rows are gathered in chunks of at most ``chunk_bytes`` (as float64; at least one row)
    and combined exactly (Chan et al.'s pairwise mean and variance update), so memory stays
    bounded for 30-s waveforms of fma_large. Where ``store.valid_lengths`` marks short clips
    (``data.short_clips: mask``), only their frames (samples) of audio count, not the padding.

    Parameters
    ----------
    store : ClipStore
    positions : np.ndarray, shape (n,)
        Rows to use: the training folds only.
    layout : {"logmel", "waveform", "vector"}, optional
        :attr:`common.settings.FeatureSettings.layout`; by default ``logmel`` for 2-D
        clips and ``waveform`` for 1-D ones.
    chunk_bytes : int

    Returns
    -------
    mean, std : np.ndarray, shape (n_mels,) for log-mel, (1,) for waveforms, (dim,) for vectors, float32
        ``std`` is at least 1e-6.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) == 0:
        raise FeatureCacheError("feature statistics: no training clips")
    rows_per_chunk = max(1, chunk_bytes // (int(np.prod(store.clip_shape)) * 8))
    lengths = None if layout == "vector" else store.valid_lengths
    count, mean, m2 = 0, 0.0, 0.0
    for start in range(0, len(positions), rows_per_chunk):
        chunk = positions[start:start + rows_per_chunk]
        x = store.gather(chunk).astype(np.float64)
        if layout == "vector":
            x = x.reshape(len(x), -1, 1)
        else:
            x = x.reshape(len(x), -1, x.shape[-1]) if x.ndim == 3 else x.reshape(len(x), 1, -1)
        if lengths is None:
            n = x.shape[0] * x.shape[2]
            chunk_mean = x.mean(axis=(0, 2))
            chunk_m2 = np.square(x - chunk_mean[None, :, None]).sum(axis=(0, 2))
        else:  # (rows, 1, time): True on the audio, False on the padding
            audio = (np.arange(x.shape[2])[None, :] < lengths[chunk][:, None])[:, None, :]
            n = int(audio.sum())
            chunk_mean = np.where(audio, x, 0.0).sum(axis=(0, 2)) / n
            chunk_m2 = np.where(audio, np.square(x - chunk_mean[None, :, None]), 0.0).sum(axis=(0, 2))
        delta = chunk_mean - mean
        total = count + n
        mean = mean + delta * n / total
        m2 = m2 + chunk_m2 + np.square(delta) * count * n / total
        count = total
    std = np.sqrt(m2 / count)
    return np.asarray(mean, np.float32), np.maximum(std, 1e-6).astype(np.float32)


def class_sample_weights(y: np.ndarray) -> np.ndarray:
    """Inverse-frequency weight of each example, mean 1.

    Parameters
    ----------
    y : np.ndarray, shape (n, n_classes)
        One-hot or multi-hot targets.

    Returns
    -------
    np.ndarray, shape (n,), float32
        ``single``: ``n / (n_classes * count[class])`` ("balanced"); ``multi``: the mean of
        that weight over the example's positive classes. Rescaled to mean 1.
    """
    y = np.asarray(y, dtype=np.float64)
    counts = y.sum(axis=0)
    present = counts > 0
    class_w = np.zeros_like(counts)
    class_w[present] = len(y) / (present.sum() * counts[present])
    positives = np.maximum(y.sum(axis=1), 1.0)
    w = (y @ class_w) / positives
    w[w == 0] = 1.0
    return (w / w.mean()).astype(np.float32)


def random_crop(x: tf.Tensor, seed: tf.Tensor, *, crop_frames: int,
                valid_lengths: tf.Tensor | None = None) -> tf.Tensor:
    """One random crop of ``crop_frames`` along the last axis of each example.

    Parameters
    ----------
    x : tf.Tensor, shape (batch, ..., n_frames)
    seed : tf.Tensor, shape (2,), int
    valid_lengths : tf.Tensor, shape (batch,), int32, optional
        Frames of each example that hold audio (the rest is padding): its crop starts at most
        ``valid_length - crop_frames`` (at 0 when shorter than a crop), so it keeps inside the
        audio where it can. None: anywhere in the ``n_frames`` (another random draw than with lengths).
    """
    n_frames = x.shape[-1]
    if crop_frames >= n_frames:
        return x
    if valid_lengths is None:
        starts = tf.random.stateless_uniform([tf.shape(x)[0]], seed, 0, n_frames - crop_frames + 1, dtype=tf.int32)
    else:
        choices = tf.clip_by_value(valid_lengths - crop_frames, 0, n_frames - crop_frames) + 1
        draws = tf.random.stateless_uniform([tf.shape(x)[0]], seed) * tf.cast(choices, tf.float32)
        starts = tf.minimum(tf.cast(draws, tf.int32), choices - 1)
    index = starts[:, None] + tf.range(crop_frames)[None, :]
    return tf.gather(x, index, axis=x.shape.rank - 1, batch_dims=1)


def _band_masks(batch: tf.Tensor, size: int, n_masks: int, width: int, seed: tf.Tensor) -> tf.Tensor:
    """Boolean ``(batch, size)``: union of ``n_masks`` random bands of width ``[0, width]``."""
    positions = tf.range(size)[None, :]
    masked = tf.zeros([batch, size], dtype=tf.bool)
    for i in range(n_masks):
        u = tf.random.stateless_uniform([2, batch], seed + tf.constant([0, 1 + i], dtype=seed.dtype))
        w = tf.cast(tf.floor(u[0] * (width + 1)), tf.int32)
        start = tf.cast(tf.floor(u[1] * tf.cast(size - w + 1, tf.float32)), tf.int32)
        masked |= (positions >= start[:, None]) & (positions < (start + w)[:, None])
    return masked


def spec_augment(x: tf.Tensor, seed: tf.Tensor, *, config: SpecAugmentConfig, fill: tf.Tensor) -> tf.Tensor:
    """SpecAugment time and frequency masks.

    Parameters
    ----------
    x : tf.Tensor, shape (batch, n_mels, n_frames), float32
    seed : tf.Tensor, shape (2,), int
    config : SpecAugmentConfig
    fill : tf.Tensor, shape (n_mels,)
        Value of masked cells per band (the training mean, i.e. 0 after standardisation).
    """
    batch = tf.shape(x)[0]
    freq = _band_masks(batch, x.shape[1], config.freq_masks, config.freq_width, seed)
    time = _band_masks(batch, x.shape[2], config.time_masks, config.time_width, seed + tf.constant([1, 0], seed.dtype))
    mask = freq[:, :, None] | time[:, None, :]
    return tf.where(mask, tf.cast(fill, x.dtype)[None, :, None], x)


def mixup(x: tf.Tensor, y: tf.Tensor, w: tf.Tensor | None, seed: tf.Tensor, *, alpha: float):
    """Mix each example with a random partner of the batch, weight ``lam ~ Beta(alpha, alpha)``.

    Returns ``(x, y, w)`` mixed with the same ``lam`` (``w`` stays None when None).
    """
    batch = tf.shape(x)[0]
    g = tf.random.stateless_gamma([2, batch], seed, alpha=alpha)
    lam = g[0] / (g[0] + g[1])
    partner = tf.argsort(tf.random.stateless_uniform([batch], seed + tf.constant([0, 7], seed.dtype)))

    def mix(t):
        lam_t = tf.reshape(tf.cast(lam, t.dtype), [-1] + [1] * (t.shape.rank - 1))
        return lam_t * t + (1 - lam_t) * tf.gather(t, partner)

    return mix(x), mix(y), None if w is None else mix(w)


def train_dataset(store: ClipStore, positions: np.ndarray, y: np.ndarray, *, crop_frames: int,
                  batch_size: int, seed: int, mixup_alpha: float = 0.0,
                  specaugment: SpecAugmentConfig | None = None, fill: np.ndarray | float | None = None,
                  balance: str = "none", sample_weights: np.ndarray | None = None,
                  auxiliary_targets: np.ndarray | None = None,
                  first_epoch: int = 0, n_epochs: int = 1) -> tf.data.Dataset:
    """Shuffled, cropped, augmented training batches of epochs ``first_epoch .. first_epoch + n_epochs - 1``.

    Every random choice of an epoch (its order or balanced draw, crops, SpecAugment,
    mixup) is a stateless function of ``(seed, epoch, batch)``: a run resumed at epoch
    ``k`` with ``first_epoch=k`` sees exactly the batches an uninterrupted run sees there.

    Parameters
    ----------
    store : ClipStore
    positions : np.ndarray, shape (n,)
        Rows of ``store`` to train on.
    y : np.ndarray, shape (n, n_classes)
        Targets of those rows.
    crop_frames : int
        Length of the random crop along the last axis. Where ``store.valid_lengths`` marks rows
        of ``positions`` as short clips (padding after their audio), every crop keeps inside the
        audio where it can (:func:`random_crop`); otherwise the draws are as without lengths.
    batch_size, seed : int
    mixup_alpha : float
        0 disables mixup.
    specaugment : SpecAugmentConfig or None
    fill : np.ndarray, shape (n_mels,), or float
        SpecAugment fill value per band (needed when SpecAugment is enabled; a float for
        waveforms, which SpecAugment leaves alone).
    balance : {"none", "class_weights", "sampling"}
        ``class_weights`` yields a third element, the sample weights; ``sampling`` draws
        each batch with probabilities proportional to the inverse class frequency.
    sample_weights : np.ndarray, shape (n,), optional
        Loss weight of each row (e.g. ``task.multi_root_weight`` for the tracks with soft
        targets): yielded as the third element, times the ``class_weights`` when those are
        on. ``None`` leaves the batches exactly as without it.
    auxiliary_targets : np.ndarray, shape (n, n_auxiliary), optional
        Targets of a multi-task model's auxiliary head (``task.auxiliary``): each batch's
        targets become the pair ``(y, y_auxiliary)``, mixed up with the same partners and
        weights as ``y``; balancing still follows ``y``. ``None``: the batches as without it.
    first_epoch, n_epochs : int
        The epochs (0-based) the dataset holds, one after the other, ``ceil(n / batch_size)``
        batches each (pass ``steps_per_epoch`` to ``fit``).

    Returns
    -------
    tf.data.Dataset
        Of ``(x, y)`` or ``(x, y, w)``: ``x`` ``(batch, n_mels, crop_frames)`` or
        ``(batch, crop_frames)`` float32, ``y`` ``(batch, n_classes)`` float32 (with
        ``auxiliary_targets``: ``(y, y_auxiliary)``, the second ``(batch, n_auxiliary)``), ``w`` ``(batch,)`` float32.
    """
    positions = np.asarray(positions, dtype=np.int64)
    y = np.asarray(y, dtype=np.float32)
    n_main = y.shape[1]
    n = len(positions)
    steps = math.ceil(n / batch_size)
    class_weights = class_sample_weights(y) if balance != "none" else None
    base_seed = tf.constant([seed, 0], tf.int64)
    logits = None
    if class_weights is not None and balance == "sampling":
        logits = tf.constant(np.log(class_weights / class_weights.sum())[None, :], tf.float32)
    weights = class_weights if balance == "class_weights" else None
    if sample_weights is not None:
        sample_weights = np.asarray(sample_weights, dtype=np.float32)
        if sample_weights.shape != (n,):
            raise ValueError(f"train_dataset: sample_weights has shape {sample_weights.shape}, expected ({n},)")
        weights = sample_weights if weights is None else weights * sample_weights
    if auxiliary_targets is not None:  # one target array through gather and mixup, split into the heads at the end
        y = np.concatenate([y, np.asarray(auxiliary_targets, dtype=np.float32)], axis=1)

    def epoch_batches(epoch):
        epoch_seed = tf.random.experimental.stateless_fold_in(base_seed, epoch)
        if logits is not None:
            draw_seed = tf.random.experimental.stateless_fold_in(epoch_seed, 1)
            rows = tf.data.Dataset.range(steps).map(lambda step: tf.random.stateless_categorical(
                logits, batch_size, tf.random.experimental.stateless_fold_in(draw_seed, step))[0])
        else:
            order = tf.random.experimental.stateless_shuffle(
                tf.range(n, dtype=tf.int64), tf.random.experimental.stateless_fold_in(epoch_seed, 0))
            rows = tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
        augment_seed = tf.random.experimental.stateless_fold_in(epoch_seed, 2)
        seeds = tf.data.Dataset.range(steps).map(
            lambda step: tf.random.experimental.stateless_fold_in(augment_seed, step))
        return tf.data.Dataset.zip(rows, seeds)

    batches = tf.data.Dataset.range(first_epoch, first_epoch + n_epochs).flat_map(epoch_batches)
    with_weights = weights is not None
    clip_shape = store.clip_shape
    n_classes = y.shape[1]

    def load(rows_np: np.ndarray):
        x = store.gather(positions[rows_np])
        out = [x.astype(np.float16), y[rows_np]]
        return tuple(out) if weights is None else (*out, weights[rows_np])

    def gather(rows_t, seed_t):
        types = [tf.float16, tf.float32] + ([tf.float32] if with_weights else [])
        parts = tf.numpy_function(load, [rows_t], types, stateful=False)
        parts[0].set_shape([None, *clip_shape])
        parts[1].set_shape([None, n_classes])
        if with_weights:
            parts[2].set_shape([None])
        return (*parts, seed_t)

    # crops keep inside the audio of short clips (store.valid_lengths) when the rows hold one
    valid = None
    if store.valid_lengths is not None and (store.valid_lengths[positions] < clip_shape[-1]).any():
        valid = tf.constant(store.valid_lengths[positions], tf.int32)
    sa_config = specaugment if specaugment is not None and specaugment.enabled else None
    fill_t = None if fill is None else tf.constant(np.asarray(fill, np.float32))
    if sa_config is not None and fill_t is None:
        raise ValueError("train_dataset: SpecAugment needs the per-band fill value")

    def augment(*parts, valid_t=None):
        x, yb, *rest = parts[:-1]
        seed_t = parts[-1]
        wb = rest[0] if rest else None
        x = tf.cast(random_crop(x, seed_t, crop_frames=crop_frames, valid_lengths=valid_t), tf.float32)
        if sa_config is not None:
            x = spec_augment(x, seed_t + tf.constant([0, 101], tf.int64), config=sa_config, fill=fill_t)
        if mixup_alpha > 0:
            x, yb, wb = mixup(x, yb, wb, seed_t + tf.constant([0, 211], tf.int64), alpha=mixup_alpha)
        if auxiliary_targets is not None:
            yb = (yb[:, :n_main], yb[:, n_main:])
        return (x, yb) if wb is None else (x, yb, wb)

    def batch_fn(rows_t, seed_t):
        return augment(*gather(rows_t, seed_t), valid_t=None if valid is None else tf.gather(valid, rows_t))

    # flat_map hides the length; state it so that Keras knows where an epoch ends
    return (batches.apply(tf.data.experimental.assert_cardinality(steps * n_epochs))
            .map(batch_fn, num_parallel_calls=input_threads(), deterministic=True)
            .prefetch(PREFETCH_BATCHES)
            .with_options(_input_options()))


#: Batches made ahead of the model: enough to hide the jitter of one batch, few enough
#: that the input threads do not run far ahead taking cores from the model.
PREFETCH_BATCHES = 2


def input_threads() -> int:
    """Threads of a training input pipeline: a quarter of the usable cores, at least 1.

    A batch is one gather (numpy, under the GIL) plus a few vectorised ops; on a 2-core
    machine one thread keeps ahead of any model, and more threads (``AUTOTUNE`` and the
    global inter-op pool) only take cores from the model's own kernels: the demo model
    trained at 0.72x a naive loop before the pipeline had its own single thread.
    """
    return max(1, len(os.sched_getaffinity(0)) // 4)


def _input_options() -> tf.data.Options:
    """A private thread pool of :func:`input_threads`, single-threaded ops inside it, no autotuning."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = input_threads()
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False
    return options
