"""Pretrained embeddings as features: one vector per clip from a published network.

The feature kind ``musicnn`` (:class:`~common.settings.FeatureSettings`) stores, per clip,
the **200-d penultimate layer of the published ``MSD_musicnn`` model, after its batch
norm** (:data:`common.models.musicnn.EMBEDDING_LAYER`, the input of the 50-tag output
layer; dropout is off at inference), **averaged over the clip's non-overlapping 3-s
patches** (187 frames, musicnn's own patching; a last incomplete patch is dropped) that hold
audio: the zero padding of a clip shorter than ``clip_seconds`` is left out (at least one
patch is kept), so its embedding is that of its unpadded audio. The
input is musicnn's own log-mel (:func:`common.models.musicnn.musicnn_logmel`), exactly
what the weights were trained on.

:func:`common.features.features_for` calls :func:`embed_clip`, so embeddings go through the
ordinary feature pipeline (:func:`common.features.extract`): sharded, resumable, cached
under their own settings digest. Each worker process builds the network once
(:func:`embedding_network`, cached) and runs TensorFlow with as many threads as the
worker's ``OMP_NUM_THREADS`` (1 under :func:`~common.features.extract`'s joblib workers).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from common.errors import ConfigError, ToolkitError
from common.pretrained import DEFAULT_WEIGHTS_DIR, checkpoint_prefix
from common.settings import FeatureSettings

#: The published checkpoint behind each embedding kind.
EMBEDDING_CHECKPOINTS: dict[str, str] = {"musicnn": "MSD_musicnn"}

_FETCH_HINT = "run `make weights` (python -m common.pretrained --dest {dest}) once, with network access"


def require_weights(kind: str, *, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR) -> Path:
    """Check that the checkpoint of embedding ``kind`` is in ``weights_dir``; return its prefix.

    Raises
    ------
    ConfigError
        ``kind`` is not an embedding kind.
    ToolkitError
        The weights are missing; the message names ``make weights``.
    """
    if kind not in EMBEDDING_CHECKPOINTS:
        raise ConfigError(f"features.kind: {kind!r} is not an embedding kind ({list(EMBEDDING_CHECKPOINTS)})")
    prefix = checkpoint_prefix(EMBEDDING_CHECKPOINTS[kind], weights_dir=weights_dir)
    if not Path(f"{prefix}.index").is_file():
        raise ToolkitError(f"{prefix}.index: musicnn weights are missing (features.kind {kind!r} needs them); "
                           f"{_FETCH_HINT.format(dest=weights_dir)}")
    return prefix


def _limit_tf_threads() -> None:
    """Run TensorFlow on ``OMP_NUM_THREADS`` threads (default 1) in this process."""
    import tensorflow as tf

    threads = int(os.environ.get("OMP_NUM_THREADS") or 1)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # TensorFlow already runs in this process (in-process extraction): keep its pools


@functools.lru_cache(maxsize=2)
def embedding_network(kind: str, weights_dir: str):
    """The network of embedding ``kind``, built once per process.

    Returns
    -------
    keras.Model
        ``(batch, 96, frames)`` log-mel -> ``(batch, EMBEDDING_DIMS[kind])``.
    """
    require_weights(kind, weights_dir=weights_dir)
    _limit_tf_threads()
    from common.models.musicnn import build_pretrained_musicnn, embedding_model

    return embedding_model(build_pretrained_musicnn(EMBEDDING_CHECKPOINTS[kind], weights_dir=weights_dir))


def embed_clip(clip: np.ndarray, *, settings: FeatureSettings,
               weights_dir: str | Path = DEFAULT_WEIGHTS_DIR, audio_samples: int | None = None) -> np.ndarray:
    """The stored embedding of one clip: mean of the network's embedding over its 3-s patches
    that hold audio.

    Parameters
    ----------
    clip : np.ndarray, shape (settings.clip_samples,)
        Mono signal at ``settings.sample_rate`` (16 kHz for ``musicnn``), at least one patch long.
    settings : FeatureSettings
        An embedding kind.
    weights_dir : path-like
        Folder written by ``make weights``.
    audio_samples : int, optional
        Samples of ``clip`` that hold audio, the rest being zero padding (None: all): only
        the patches inside them are averaged (at least one), so the padding of a short
        clip does not move its embedding.

    Returns
    -------
    np.ndarray, shape (common.settings.EMBEDDING_DIMS[settings.kind],), float32

    Raises
    ------
    ToolkitError
        The weights are missing (naming ``make weights``).
    """
    from common.models.musicnn import MUSICNN_FEATURES, musicnn_logmel, patches

    network = embedding_network(settings.kind, str(weights_dir))
    audio_frames = None if audio_samples is None else 1 + audio_samples // MUSICNN_FEATURES.hop_length
    batch = patches(musicnn_logmel(np.asarray(clip, dtype=np.float32)), audio_frames=audio_frames)
    if len(batch) == 0:  # FeatureSettings guarantees one patch; a caller passed a shorter signal
        raise ToolkitError(f"embedding: {clip.shape[0] / settings.sample_rate:.2f}-s signal is shorter "
                           f"than one musicnn patch")
    return np.asarray(network.predict_on_batch(batch), dtype=np.float32).mean(axis=0)
