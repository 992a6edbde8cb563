"""Feature settings: one frozen record that names a feature cache.

The defaults are those of the CRNN paper (Choi et al. 2016): 12 kHz audio,
n_fft 512, hop 256, 96 mel bands, 29.12-s clips, i.e. 96 x 1366 frames.
Every derived size (samples per clip, frames per clip) is computed here and
nowhere else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Literal

from common.errors import ConfigError

FeatureKind = Literal["logmel", "waveform"]
LogScale = Literal["db", "log1p"]
CropPolicy = Literal["center", "start"]


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
    """Everything that changes the numbers stored in a feature cache.

    Attributes
    ----------
    kind : {"logmel", "waveform"}
        Log-mel spectrogram ``(n_mels, n_frames)`` or the resampled mono signal ``(clip_samples,)``.
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
        if self.kind not in ("logmel", "waveform"):
            raise ConfigError(f"features.kind: unknown kind {self.kind!r} (logmel or waveform)")
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
        """Shape of one stored clip: ``(n_mels, n_frames)`` or ``(clip_samples,)``."""
        if self.kind == "waveform":
            return (self.clip_samples,)
        return (self.n_mels, self.n_frames)

    def frames_for(self, seconds: float) -> int:
        """Number of frames (log-mel) or samples (waveform) covering ``seconds`` of audio."""
        samples = int(round(seconds * self.sample_rate))
        return samples if self.kind == "waveform" else 1 + samples // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "FeatureSettings":
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
