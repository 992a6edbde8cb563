"""``tf.data`` training pipelines over a feature cache.

Batches are gathered whole, never sample by sample: a batch of row positions goes
through one ``tf.numpy_function`` that fancy-indexes an in-memory float16 array (when the
features fit in memory) or the memory-mapped cache shards, and every random operation
after it (time crop, SpecAugment, mixup) is a vectorised TensorFlow op over the batch,
seeded statelessly from a per-batch seed so that a run is reproducible.

Feature arrays have the cache's orientation: ``(n, n_mels, n_frames)`` for log-mel,
``(n, n_samples)`` for waveforms, ``(n, dim)`` for vectors (embeddings); crops are taken
along the last axis (a vector is used whole: its "crop" is all of it, and SpecAugment,
which the config allows for log-mel only, never applies).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from common.config import SpecAugmentConfig
from common.errors import ConfigError, FeatureCacheError


#: Environment variable capping the memory budget of ``in_memory: auto``, in bytes (a
#: ``k``/``M``/``G``/``T`` suffix multiplies by powers of 1024), e.g. ``FMA_MEMORY_LIMIT=16G``.
MEMORY_LIMIT_ENV = "FMA_MEMORY_LIMIT"

#: ``in_memory: auto`` loads the rows when they take at most this share of the memory budget
#: (the rest is for TensorFlow, the model, prefetched batches and the page cache).
IN_MEMORY_SHARE = 0.25

#: cgroup limits at or above this many bytes mean "no limit" (v1 writes 2**63 rounded to pages).
_UNLIMITED = 1 << 60

_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def physical_memory_bytes() -> int:
    """Installed RAM in bytes (POSIX ``sysconf``)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cgroup_memory_limit(*, root: str | Path = "/sys/fs/cgroup") -> int | None:
    """The container's memory limit in bytes, or None when there is none.

    Reads cgroup v2 ``root/memory.max`` or, failing that, cgroup v1
    ``root/memory/memory.limit_in_bytes`` (or ``root/memory.limit_in_bytes``); ``max``,
    a value of 2**60 or more, or no readable file means unlimited.
    """
    root = Path(root)
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes", root / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return None if value >= _UNLIMITED else value
    return None


def parse_memory_size(text: str, *, name: str = MEMORY_LIMIT_ENV) -> int:
    """Bytes of ``"17179869184"``, ``"16G"``, ``"512M"`` (powers of 1024); ConfigError naming ``name`` if bad."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    suffix = value[-1:] if value[-1:] in _SUFFIXES else ""
    try:
        number = float(value[:len(value) - len(suffix)])
    except ValueError:
        number = -1.0
    if not number > 0:
        raise ConfigError(f"{name}={text!r}: expected a positive number of bytes, e.g. 17179869184 or 16G")
    return int(number * _SUFFIXES[suffix])


def memory_budget_bytes(*, cgroup_root: str | Path = "/sys/fs/cgroup",
                        environ: Mapping[str, str] | None = None) -> int:
    """Memory this process may use: the least of RAM, the cgroup limit and ``$FMA_MEMORY_LIMIT``."""
    environ = os.environ if environ is None else environ
    limits = [physical_memory_bytes(), cgroup_memory_limit(root=cgroup_root)]
    if environ.get(MEMORY_LIMIT_ENV, "").strip():
        limits.append(parse_memory_size(environ[MEMORY_LIMIT_ENV]))
    return min(limit for limit in limits if limit is not None)


class ClipStore:
    """Rows of a feature cache addressed by position, in memory or memory-mapped.

    Parameters
    ----------
    cache : common.features.FeatureCache
        Opened cache (``.get(ids)``, ``.settings``).
    ids : sequence of str
        Feature ids, in the order positions refer to.
    in_memory : {"auto", True, False}
        ``auto`` loads the rows when they take at most :data:`IN_MEMORY_SHARE` of
        :func:`memory_budget_bytes` (RAM, the container's cgroup limit, ``$FMA_MEMORY_LIMIT``);
        otherwise every gather reads the memory-mapped cache shards.
    memory_limit : int, optional
        A further cap on the budget in bytes (a Dask worker's ``--memory-limit``).
    """

    def __init__(self, cache, ids: Sequence[str], *, in_memory: bool | str = "auto",
                 memory_limit: int | None = None) -> None:
        self.cache = cache
        self.ids = np.asarray([str(i) for i in ids], dtype=object)
        self.clip_shape = tuple(cache.settings.clip_shape)
        if in_memory == "auto":
            budget = memory_budget_bytes()
            if memory_limit:
                budget = min(budget, memory_limit)
            in_memory = self.nbytes <= IN_MEMORY_SHARE * budget
        self.in_memory = bool(in_memory)
        self._array = cache.get(list(self.ids)) if self.in_memory else None
        self._rows: np.ndarray | None = None

    @classmethod
    def from_array(cls, array: np.ndarray, ids: Sequence[str] | None = None) -> "ClipStore":
        """A store over an in-memory array ``(n, *clip_shape)`` (tests, benchmarks)."""
        store = cls.__new__(cls)
        store.cache = None
        store.ids = np.asarray([str(i) for i in (range(len(array)) if ids is None else ids)], dtype=object)
        store.clip_shape = tuple(array.shape[1:])
        store.in_memory = True
        store._array = np.asarray(array)
        store._rows = None
        return store

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.ids), *self.clip_shape)

    @property
    def nbytes(self) -> int:
        """Bytes of all rows as float16."""
        return len(self.ids) * int(np.prod(self.clip_shape)) * 2

    def __len__(self) -> int:
        return len(self.ids)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Rows at ``positions``, shape ``(len(positions), *clip_shape)``, float16."""
        positions = np.asarray(positions, dtype=np.int64)
        if self._array is not None:
            return np.take(self._array, positions if self._rows is None else self._rows[positions], axis=0)
        return np.asarray(self.cache.get(list(self.ids[positions])))

    def subset(self, positions: np.ndarray) -> "ClipStore":
        """A view of the rows at ``positions``: nothing is copied, rows are read when gathered."""
        positions = np.asarray(positions, dtype=np.int64)
        store = ClipStore.__new__(ClipStore)
        store.cache, store.clip_shape, store.in_memory = self.cache, self.clip_shape, self.in_memory
        store.ids = self.ids[positions]
        store._array = self._array
        store._rows = None if self._array is None else (positions if self._rows is None else self._rows[positions])
        return store

    def __getitem__(self, index: slice | np.ndarray) -> np.ndarray:
        if isinstance(index, slice):
            return self.gather(np.arange(len(self))[index])
        return self.gather(index)


#: Bytes of one chunk of :func:`feature_stats` (as float64): bounds its memory whatever the clip size.
STATS_CHUNK_BYTES = 64 << 20


def feature_stats(store: ClipStore, positions: np.ndarray, *, layout: str | None = None,
                  chunk_bytes: int = STATS_CHUNK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Per-frequency (log-mel), per-component (vector) or global (waveform) mean and std.

    Rows are gathered in chunks of at most ``chunk_bytes`` (as float64; at least one row)
    and combined exactly (Chan et al.'s pairwise mean and variance update), so memory stays
    bounded for 30-s waveforms of fma_large.

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
    count, mean, m2 = 0, 0.0, 0.0
    for start in range(0, len(positions), rows_per_chunk):
        x = store.gather(positions[start:start + rows_per_chunk]).astype(np.float64)
        if layout == "vector":
            x = x.reshape(len(x), -1, 1)
        else:
            x = x.reshape(len(x), -1, x.shape[-1]) if x.ndim == 3 else x.reshape(len(x), 1, -1)
        n = x.shape[0] * x.shape[2]
        chunk_mean = x.mean(axis=(0, 2))
        chunk_m2 = np.square(x - chunk_mean[None, :, None]).sum(axis=(0, 2))
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


def random_crop(x: tf.Tensor, seed: tf.Tensor, *, crop_frames: int) -> tf.Tensor:
    """One random crop of ``crop_frames`` along the last axis of each example.

    Parameters
    ----------
    x : tf.Tensor, shape (batch, ..., n_frames)
    seed : tf.Tensor, shape (2,), int
    """
    n_frames = x.shape[-1]
    if crop_frames >= n_frames:
        return x
    starts = tf.random.stateless_uniform([tf.shape(x)[0]], seed, 0, n_frames - crop_frames + 1, dtype=tf.int32)
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
                  specaugment: SpecAugmentConfig | None = None, fill: np.ndarray | None = None,
                  balance: str = "none", first_epoch: int = 0, n_epochs: int = 1) -> tf.data.Dataset:
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
        Length of the random crop along the last axis.
    batch_size, seed : int
    mixup_alpha : float
        0 disables mixup.
    specaugment : SpecAugmentConfig or None
    fill : np.ndarray, shape (n_mels,)
        SpecAugment fill value per band (needed when SpecAugment is enabled).
    balance : {"none", "class_weights", "sampling"}
        ``class_weights`` yields a third element, the sample weights; ``sampling`` draws
        each batch with probabilities proportional to the inverse class frequency.
    first_epoch, n_epochs : int
        The epochs (0-based) the dataset holds, one after the other, ``ceil(n / batch_size)``
        batches each (pass ``steps_per_epoch`` to ``fit``).

    Returns
    -------
    tf.data.Dataset
        Of ``(x, y)`` or ``(x, y, w)``: ``x`` ``(batch, n_mels, crop_frames)`` or
        ``(batch, crop_frames)`` float32, ``y`` ``(batch, n_classes)`` float32.
    """
    positions = np.asarray(positions, dtype=np.int64)
    y = np.asarray(y, dtype=np.float32)
    n = len(positions)
    steps = math.ceil(n / batch_size)
    weights = class_sample_weights(y) if balance != "none" else None
    base_seed = tf.constant([seed, 0], tf.int64)
    logits = None if balance != "sampling" else tf.constant(np.log(weights / weights.sum())[None, :], tf.float32)

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
    with_weights = balance == "class_weights"
    clip_shape = store.clip_shape
    n_classes = y.shape[1]

    def load(rows_np: np.ndarray):
        x = store.gather(positions[rows_np])
        out = [x.astype(np.float16), y[rows_np]]
        return (*out, weights[rows_np]) if with_weights else tuple(out)

    def gather(rows_t, seed_t):
        types = [tf.float16, tf.float32] + ([tf.float32] if with_weights else [])
        parts = tf.numpy_function(load, [rows_t], types, stateful=False)
        parts[0].set_shape([None, *clip_shape])
        parts[1].set_shape([None, n_classes])
        if with_weights:
            parts[2].set_shape([None])
        return (*parts, seed_t)

    sa_enabled = specaugment is not None and specaugment.enabled
    fill_t = None if fill is None else tf.constant(np.asarray(fill, np.float32))
    if sa_enabled and fill_t is None:
        raise ValueError("train_dataset: SpecAugment needs the per-band fill value")

    def augment(*parts):
        x, yb, *rest = parts[:-1]
        seed_t = parts[-1]
        wb = rest[0] if rest else None
        x = tf.cast(random_crop(x, seed_t, crop_frames=crop_frames), tf.float32)
        if sa_enabled:
            x = spec_augment(x, seed_t + tf.constant([0, 101], tf.int64), config=specaugment, fill=fill_t)
        if mixup_alpha > 0:
            x, yb, wb = mixup(x, yb, wb, seed_t + tf.constant([0, 211], tf.int64), alpha=mixup_alpha)
        return (x, yb) if wb is None else (x, yb, wb)

    def batch_fn(rows_t, seed_t):
        return augment(*gather(rows_t, seed_t))

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
