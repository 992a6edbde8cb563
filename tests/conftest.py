"""Shared fixtures: seeded synthetic signals (librosa's test style), audio writers, demo data.

Engineers add fixtures here; keep existing ones intact.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from common.demo_data import generate_demo_dataset

#: Parameters of the session's small demo dataset (a few seconds to build on 2 cores).
DEMO_FIXTURE_PARAMS = {"n_tracks": 64, "n_test": 12, "clip_seconds": 6.0, "seed": 0}

#: soundfile subtype per container.
_SUBTYPES = {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS", "mp3": "MPEG_LAYER_III"}


def make_signal(kind: str, *, sr: int, seconds: float, channels: int = 1,
                seed: int = 0, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    """A seeded test signal.

    Parameters
    ----------
    kind : {'sine', 'chirp', 'clicks', 'silence', 'noise'}
        ``sine`` at ``freq``; ``chirp`` from ``freq / 4`` to ``min(4 freq, sr / 2.5)``;
        ``clicks`` every 0.25 s (librosa.clicks); ``silence`` all zeros; ``noise`` white.
    sr : int
        Sample rate in Hz.
    seconds : float
    channels : int
        1 gives shape (n,); more gives (n, channels) with slightly different channels.
    seed : int
    freq, amplitude : float

    Returns
    -------
    np.ndarray, shape (n,) or (n, channels), float32
    """
    import librosa

    n = int(round(seconds * sr))
    rng = np.random.default_rng(seed)
    if kind == "sine":
        y = librosa.tone(freq, sr=sr, length=n)
    elif kind == "chirp":
        y = librosa.chirp(fmin=freq / 4, fmax=min(4 * freq, sr / 2.5), sr=sr, length=n)
    elif kind == "clicks":
        y = librosa.clicks(times=np.arange(0.0, seconds, 0.25), sr=sr, length=n)
    elif kind == "silence":
        y = np.zeros(n)
    elif kind == "noise":
        y = rng.uniform(-1.0, 1.0, n)
    else:
        raise ValueError(f"unknown signal kind {kind!r}")
    y = amplitude * y / max(np.abs(y).max(), 1e-12) if kind != "silence" else y
    if channels > 1:
        gains = np.linspace(1.0, 0.8, channels)
        y = y[:, None] * gains[None, :]
    return y.astype(np.float32)


def write_audio(path: Path, y: np.ndarray, *, sr: int) -> Path:
    """Write ``y`` (shape (n,) or (n, channels)) to ``path``; the suffix picks the format.

    wav, flac, ogg (Vorbis) and mp3 (MPEG rates 8-48 kHz) go through soundfile.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".").lower()
    sf.write(path, y, sr, format=fmt.upper(), subtype=_SUBTYPES[fmt])
    return path


@pytest.fixture
def signal():
    """The :func:`make_signal` factory."""
    return make_signal


@pytest.fixture
def audio_writer(tmp_path):
    """``audio_writer(name, y, sr=...)`` writes into ``tmp_path`` and returns the path."""
    def _write(name: str, y: np.ndarray, *, sr: int) -> Path:
        return write_audio(tmp_path / name, y, sr=sr)
    return _write


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory) -> Path:
    """A small generated mini-FMA (``DEMO_FIXTURE_PARAMS``), built once per session.

    Layout as ``python -m common.demo_data`` writes it; treat it as read-only.
    """
    out = tmp_path_factory.mktemp("demo") / "demo"
    generate_demo_dataset(out, n_jobs=2, **DEMO_FIXTURE_PARAMS)
    return out


@pytest.fixture(scope="session")
def musicnn_wheel(request) -> Path:
    """The musicnn wheel, downloaded once into pytest's cache (skips when pip cannot reach PyPI)."""
    from common.errors import ToolkitError
    from common.pretrained import MUSICNN_WHEEL, download_musicnn_wheel

    folder = request.config.cache.mkdir("musicnn-wheel")
    if not (folder / MUSICNN_WHEEL).is_file():
        try:
            download_musicnn_wheel(folder)
        except ToolkitError as error:
            pytest.skip(f"cannot download the musicnn wheel (needed for its weights): {error}")
    return folder / MUSICNN_WHEEL


@pytest.fixture(scope="session")
def musicnn_weights_dir(request, musicnn_wheel) -> Path:
    """The musicnn checkpoints extracted into pytest's cache (the project's models/musicnn is not touched)."""
    from common.pretrained import extract_musicnn_weights, weights_present

    folder = request.config.cache.mkdir("musicnn-weights") / "musicnn"
    if not weights_present(weights_dir=folder):
        shutil.rmtree(folder, ignore_errors=True)
        extract_musicnn_weights(musicnn_wheel, folder)
    return folder


#: Feature settings of the tiny training experiments (8 kHz, 16 mels, 8-s clips).
TINY_FEATURES = {"sample_rate": 8000, "n_fft": 256, "hop_length": 256, "n_mels": 16, "clip_seconds": 8.0}


def write_tiny_config(directory: Path, name: str, *, task: str = "single", epochs: int = 2, min_tracks: int = 5,
                      dense_units: int = 8, batch_size: int = 32, **training) -> Path:
    """Write ``directory/<name>.yaml``: a one-block short-chunk CNN on ``TINY_FEATURES``.

    ``training`` adds keys of the config's ``training`` section (e.g. ``optimizer``).
    """
    values = {
        "features": TINY_FEATURES,
        "task": {"name": task, "min_tracks": min_tracks},
        "model": {"name": "shortchunk", "params": {"channels": [8], "dense_units": dense_units, "dropout": 0.1}},
        "data": {"crop_seconds": 3.0, "eval": "chunks", "batch_size": batch_size},
        "training": {"epochs": epochs, "early_stopping_patience": 0, **training},
    }
    path = Path(directory) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="session")
def tiny_training_data(demo_data_dir, tmp_path_factory) -> dict:
    """Features (``TINY_FEATURES``) and a 2-fold file of ``demo_data_dir``.

    Treat the folds and the ``fma_small`` features as read-only; tests may add caches of
    other sources (the crowdAI test folder) to the cache root.

    Returns ``{"data", "cache", "folds"}``: the demo folder, the cache root and the folds CSV.
    """
    from common.features import cache_dir_for, extract
    from common.folds import make_folds, write_folds
    from common.metadata import FmaDataset
    from common.settings import FeatureSettings

    root = tmp_path_factory.mktemp("tiny_training")
    dataset = FmaDataset.open(demo_data_dir, "small")
    settings = FeatureSettings.from_dict(TINY_FEATURES)
    cache = root / "cache"
    extract(dataset.items(), settings=settings, cache_dir=cache_dir_for(cache, "fma_small", settings),
            n_jobs=2, progress=False)
    folds = write_folds(root / "folds.csv", make_folds(dataset.tracks, k=2, seed=0), subset="small", k=2, seed=0)
    return {"data": demo_data_dir, "cache": cache, "folds": folds}


@pytest.fixture
def restore_op_determinism():
    """Put TensorFlow's process-wide op determinism back as it was after the test.

    ``common.training.fold_globals`` turns it on for a CPU fold (and never off), and Keras
    compiles no model with XLA while it is on; a test that needs XLA turns it off.
    """
    from tensorflow.python.framework import config as tf_config

    enabled = tf_config.is_op_determinism_enabled()
    yield
    (tf_config.enable_op_determinism if enabled else tf_config.disable_op_determinism)()


@pytest.fixture
def gpus(monkeypatch):
    """``gpus(n)`` makes TensorFlow report ``n`` physical GPUs (``tf.config.list_physical_devices``),
    as a GPU machine would to ``select_runtime`` and the config's resolution."""
    import tensorflow as tf

    real = tf.config.list_physical_devices

    def fake(n: int) -> None:
        devices = [tf.config.PhysicalDevice(name=f"/physical_device:GPU:{i}", device_type="GPU") for i in range(n)]
        monkeypatch.setattr(tf.config, "list_physical_devices",
                            lambda device_type=None: devices if device_type == "GPU" else real(device_type))
    return fake
