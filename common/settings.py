"""Feature settings: one frozen record that names a feature cache.

The defaults are those of the CRNN paper (Choi et al. 2016): 12 kHz audio,
n_fft 512, hop 256, 96 mel bands, 29.12-s clips, i.e. 96 x 1366 frames.
Every derived size (samples per clip, frames per clip) is computed here and
nowhere else.

Besides the signal kinds (``logmel``, ``waveform``) there are *embedding* kinds: the
pooled features of a pretrained network, one vector per clip (``layout == "vector"``).
``musicnn`` is the 200-d penultimate layer of the published ``MSD_musicnn`` model
(after its batch norm), averaged over the clip's non-overlapping 3-s patches (see
:mod:`common.embeddings`); its analysis fields must be the network's input
(:data:`EMBEDDING_INPUT`), so that a config states exactly what the cache holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Literal

from common.errors import ConfigError

FeatureKind = Literal["logmel", "waveform", "musicnn"]
Layout = Literal["logmel", "waveform", "vector"]
LogScale = Literal["db", "log1p"]
CropPolicy = Literal["center", "start"]

#: Embedding kinds: size of the stored vector of one clip.
EMBEDDING_DIMS: dict[str, int] = {"musicnn": 200}

#: The analysis each embedding kind's network was trained on (checked field by field).
EMBEDDING_INPUT: dict[str, dict[str, Any]] = {
    "musicnn": {"sample_rate": 16000, "n_fft": 512, "hop_length": 256, "n_mels": 96,
                "fmin": 0.0, "fmax": None, "log_scale": "log1p"},
}

#: Shortest clip an embedding kind can analyse (musicnn: one 3-s patch of 187 frames).
EMBEDDING_MIN_CLIP_SECONDS: dict[str, float] = {"musicnn": 3.0}


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
    """Everything that changes the numbers stored in a feature cache.

    Attributes
    ----------
    kind : {"logmel", "waveform", "musicnn"}
        Log-mel spectrogram ``(n_mels, n_frames)``, the resampled mono signal ``(clip_samples,)``,
        or musicnn's pooled penultimate features ``(200,)`` (analysis fields fixed by
        :data:`EMBEDDING_INPUT`, ``clip_seconds`` at least 3).
    sample_rate : int
        Rate the audio is resampled to, in Hz.
    n_fft, hop_length, n_mels : int
        STFT and mel filter-bank sizes (ignored for ``waveform``).
    fmin, fmax : float
        Mel filter-bank range in Hz; ``fmax=None`` means ``sample_rate / 2``.
    log_scale : {"db", "log1p"}
        ``"db"``: ``10 log10(max(S, 1e-10))`` of the mel power (the CRNN's);
        ``"log1p"``: ``log10(1 + 10000 S)`` of the mel power (musicnn's).
    clip_seconds : float
        Length every clip is cropped or zero-padded to before analysis.
    crop : {"center", "start"}
        Which part of a longer file is kept.
    min_seconds : float
        Decoded audio shorter than this is rejected as too short.
    silence_dbfs : float
        Audio whose peak is below this level (dB full scale) is rejected as silent.
    """

    kind: FeatureKind = "logmel"
    sample_rate: int = 12000
    n_fft: int = 512
    hop_length: int = 256
    n_mels: int = 96
    fmin: float = 0.0
    fmax: float | None = None
    log_scale: LogScale = "db"
    clip_seconds: float = 29.12
    crop: CropPolicy = "center"
    min_seconds: float = 5.0
    silence_dbfs: float = -60.0

    def __post_init__(self) -> None:
        if self.kind not in ("logmel", "waveform", *EMBEDDING_DIMS):
            raise ConfigError(f"features.kind: unknown kind {self.kind!r} "
                              f"(logmel, waveform or {', '.join(EMBEDDING_DIMS)})")
        if self.log_scale not in ("db", "log1p"):
            raise ConfigError(f"features.log_scale: unknown scale {self.log_scale!r} (db or log1p)")
        if self.crop not in ("center", "start"):
            raise ConfigError(f"features.crop: unknown policy {self.crop!r} (center or start)")
        if not 8000 <= self.sample_rate <= 96000:
            raise ConfigError(f"features.sample_rate: {self.sample_rate} Hz is outside 8-96 kHz")
        for name in ("n_fft", "hop_length", "n_mels"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"features.{name}: must be positive, got {getattr(self, name)}")
        if self.clip_seconds <= 0 or self.min_seconds < 0:
            raise ConfigError("features.clip_seconds must be > 0 and features.min_seconds >= 0")
        for name, value in EMBEDDING_INPUT.get(self.kind, {}).items():
            if getattr(self, name) != value:
                raise ConfigError(f"features.{name}: kind {self.kind!r} needs {value!r} (its network's "
                                  f"input), got {getattr(self, name)!r}")
        shortest = EMBEDDING_MIN_CLIP_SECONDS.get(self.kind, 0.0)
        if self.clip_seconds < shortest:
            raise ConfigError(f"features.clip_seconds: kind {self.kind!r} needs at least {shortest:g} s, "
                              f"got {self.clip_seconds:g}")

    @property
    def layout(self) -> Layout:
        """What a model reads: ``"logmel"`` / ``"waveform"`` (crops along the last axis) or ``"vector"``."""
        # Every kind but the two signal kinds is an embedding kind (checked in __post_init__).
        return self.kind if self.kind == "logmel" or self.kind == "waveform" else "vector"

    @property
    def clip_samples(self) -> int:
        """Samples per stored clip at ``sample_rate``."""
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """STFT frames per clip (centred frames, as librosa computes them)."""
        return 1 + self.clip_samples // self.hop_length

    @property
    def clip_shape(self) -> tuple[int, ...]:
        """Shape of one stored clip: ``(n_mels, n_frames)``, ``(clip_samples,)`` or ``(embedding_dim,)``."""
        if self.layout == "vector":
            return (EMBEDDING_DIMS[self.kind],)
        if self.kind == "waveform":
            return (self.clip_samples,)
        return (self.n_mels, self.n_frames)

    def frames_for(self, seconds: float) -> int:
        """Number of frames (log-mel) or samples (waveform) covering ``seconds`` of audio.

        Raises
        ------
        ConfigError
            Embedding kinds: a vector has no time axis to crop.
        """
        if self.layout == "vector":
            raise ConfigError(f"features.kind: {self.kind!r} stores one vector per clip; "
                              f"it cannot be cropped or chunked in time")
        samples = int(round(seconds * self.sample_rate))
        return samples if self.kind == "waveform" else 1 + samples // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> FeatureSettings:
        """Build from a config mapping; unknown keys are an error naming the key."""
        values = dict(values or {})
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"features: unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def digest(self) -> str:
        """Short stable hash of the settings; names the cache directory."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]
