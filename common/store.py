"""Rows of a feature cache addressed by position: :class:`ClipStore`.

A store holds its rows in memory (with ``in_memory: auto``, when they take at most
:data:`IN_MEMORY_SHARE` of :func:`common.memory.memory_budget_bytes`) or reads every gather
from the memory-mapped cache shards. Training batches (:mod:`common.data`), fold predictions
(:mod:`common.inference`) and submissions read features through it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

from common.memory import memory_budget_bytes
from common.settings import FeatureSettings

#: ``in_memory: auto`` loads the rows when they take at most this share of the memory budget
#: (the rest is for TensorFlow, the model, prefetched batches and the page cache).
IN_MEMORY_SHARE = 0.25


def audio_lengths(settings: FeatureSettings, samples: np.ndarray) -> np.ndarray | None:
    """Length along the last axis of each stored clip that holds audio, from its audio samples.

    Parameters
    ----------
    settings : FeatureSettings
    samples : np.ndarray, shape (n,), int
        Samples of each clip that hold audio (:attr:`common.features.FeatureCache.samples`).

    Returns
    -------
    np.ndarray, shape (n,), int64, or None
        Log-mel frames (``1 + samples // hop_length``, the frames of the unpadded audio) or
        waveform samples; None for vectors (no time axis) and when every clip is full length.
    """
    if settings.layout == "vector":
        return None
    samples = np.asarray(samples, dtype=np.int64)
    lengths = samples if settings.layout == "waveform" else 1 + samples // settings.hop_length
    lengths = np.minimum(lengths, settings.clip_shape[-1])
    return None if bool((lengths == settings.clip_shape[-1]).all()) else lengths


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

    Attributes
    ----------
    valid_lengths : np.ndarray, shape (n,), int64, or None
        Frames (log-mel) or samples (waveform) of each row that hold audio, the rest being the
        padding of a clip shorter than ``clip_seconds`` (:func:`audio_lengths`); None when every
        row is full length or the cache does not record lengths. Chunk evaluation
        (:func:`common.inference.predict_clips`) and training crops (:func:`common.data.train_dataset`)
        keep to them; :meth:`padded` reads every row at full length.

    Raises
    ------
    common.errors.FeatureCacheError
        A damaged cache shard, naming it and ``make features``: the cache checks each shard's
        sha256 the first time it reads from it (when the rows are loaded, or at the first
        :meth:`gather` that reads the shard).
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
        self.valid_lengths = audio_lengths(cache.settings, cache.audio_samples(list(self.ids)))

    @classmethod
    def from_array(cls, array: np.ndarray, ids: Sequence[str] | None = None, *,
                   valid_lengths: np.ndarray | None = None) -> ClipStore:
        """A store over an in-memory array ``(n, *clip_shape)`` (tests, benchmarks); ``valid_lengths``
        ``(n,)`` as the attribute."""
        store = cls.__new__(cls)
        store.cache = None
        store.ids = np.asarray([str(i) for i in (range(len(array)) if ids is None else ids)], dtype=object)
        store.clip_shape = tuple(array.shape[1:])
        store.in_memory = True
        store._array = np.asarray(array)
        store._rows = None
        store.valid_lengths = None if valid_lengths is None else np.asarray(valid_lengths, dtype=np.int64)
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

    def padded(self) -> ClipStore:
        """A view of the same rows, each read as full length with its zero padding
        (``valid_lengths`` None: ``data.short_clips: pad``)."""
        store = copy.copy(self)
        store.valid_lengths = None
        return store

    def subset(self, positions: np.ndarray) -> ClipStore:
        """A view of the rows at ``positions``: nothing is copied, rows are read when gathered."""
        positions = np.asarray(positions, dtype=np.int64)
        store = ClipStore.__new__(ClipStore)
        store.cache, store.clip_shape, store.in_memory = self.cache, self.clip_shape, self.in_memory
        store.ids = self.ids[positions]
        store.valid_lengths = None if self.valid_lengths is None else self.valid_lengths[positions]
        store._array = self._array
        store._rows = None if self._array is None else (positions if self._rows is None else self._rows[positions])
        return store

    def __getitem__(self, index: slice | np.ndarray) -> np.ndarray:
        if isinstance(index, slice):
            return self.gather(np.arange(len(self))[index])
        return self.gather(index)
