"""Audio decoding, clip selection and log-mel analysis.

Decoding goes through ``soundfile`` (libsndfile, whose mpg123 back end reads mp3), so
mp3, wav, ogg and flac of any rate and channel count come out the same way. The
signal is averaged to mono *before* resampling (half the work for stereo), then
resampled with ``soxr`` at its ``"HQ"`` quality: 20-bit precision and a steep
anti-alias filter (the same quality ``librosa.load`` uses by default), which on a
30-s clip costs a fraction of the mp3 decode itself; the cheaper ``"QQ"``/``"LQ"``
qualities alias audibly and ``"VHQ"`` is twice as slow for nothing a mel filter
bank could see.

When the system libmpg123 is installed (Debian/Ubuntu ``libmpg123-0``), mp3s are
decoded by :mod:`common.mp3` instead, which mixes the channels to mono *before* the
synthesis filter bank (same signal as averaging afterwards, to float32 rounding):
``load_clip`` on a 30-s stereo mp3 is ~10 % faster. It also synthesises at half or a
quarter of the file's rate when that still leaves :data:`DOWN_SAMPLE_MARGIN` above the
target rate (a 44.1-kHz file for 12 or 16 kHz features decodes at 22.05 kHz: libmpg123
drops the subbands above the new Nyquist frequency, so the signal stays band-limited),
and soxr resamples from there: one resampler call per clip, a quarter less resampling
work. On real music (30-s 192-kbps stereo mp3s of the recordings in ``../shared/audio``)
the default 12-kHz log-mel then differs from ``librosa.load`` + ``melspectrogram`` by
0.0006 dB on average (max 0.2 dB, dB floored 80 dB below the clip's peak); the tolerance
tested is 0.01 dB mean and 0.1 dB at the 99th percentile, which is why feature digests
did not change. soxr's cheaper qualities miss it by far: ``"MQ"`` (3 dB max error) is
hardly faster from 22.05 kHz, ``"LQ"``/``"QQ"`` err by 1 dB on average (aliasing); so does
libmpg123's own resampling inside synthesis (``MPG123_FORCE_RATE``, 0.75-1.3 dB on average,
6-8 dB in the top bands), which is why it is not used. Without libmpg123, or for a file it
refuses, soundfile decodes as above.

The log-mel path is a plain numpy/scipy STFT in float32 with a cached mel filter
bank; it equals ``librosa.feature.melspectrogram`` (``center=True``, zero padding,
periodic Hann window, Slaney mel) to float32 rounding, without librosa's per-call
overheads.

Every failure is a typed error from :mod:`common.errors` naming the file; nothing
here returns a silent array of zeros.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import scipy.fft
import soundfile as sf
import soxr

from common import mp3
from common.errors import SilentAudioError, TooShortAudioError, UnreadableAudioError
from common.settings import FeatureSettings

#: Resampling quality passed to soxr (see the module docstring for the choice).
RESAMPLE_QUALITY = "HQ"

#: libmpg123 decodes at a reduced rate only when that rate is at least this factor
#: times the target rate: its subband filter bank rolls off just below the reduced
#: Nyquist frequency (decoding 44.1-kHz music at 22.05 kHz for 22.05-kHz features errs
#: by up to 6 dB in the top mel band), while soxr's band edge is steep.
DOWN_SAMPLE_MARGIN = 1.1

#: File suffixes :func:`load_audio` is meant for (any format libsndfile reads works).
AUDIO_SUFFIXES: tuple[str, ...] = (".mp3", ".wav", ".ogg", ".flac")


def _decode(path: Path, *, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode ``path`` to a mono float32 signal at its own rate, or at a reduced rate for ``sample_rate``.

    An ``.mp3`` goes through :func:`common.mp3.decode_mono` when the system libmpg123
    is installed (at half or a quarter of the file's rate when that stays at least
    :data:`DOWN_SAMPLE_MARGIN` times ``sample_rate``); anything it refuses, and every
    other file, through soundfile at the file's own rate.

    Returns
    -------
    y : np.ndarray, shape (n,), float32
    rate : int
    """
    if not path.is_file():
        raise UnreadableAudioError(path, "no such file")
    if path.stat().st_size == 0:
        raise UnreadableAudioError(path, "empty file (0 bytes)")
    if path.suffix.lower() == ".mp3" and mp3.available():
        try:
            min_rate = None if sample_rate is None else int(np.ceil(DOWN_SAMPLE_MARGIN * sample_rate))
            return mp3.decode_mono(path, min_rate=min_rate)
        except UnreadableAudioError:
            pass  # not an MPEG stream to libmpg123: libsndfile reads it (a wav named .mp3) or says why not
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as error:
        raise UnreadableAudioError(path, f"decoder: {error}") from error
    if data.shape[0] == 0:
        raise UnreadableAudioError(path, "no audio frames decoded")
    # A matrix-vector product averages the channels ~15x faster than ``mean(axis=1)``
    # over a (n, channels) array, which costs as much as decoding the mp3.
    channels = data.shape[1]
    y = data[:, 0] if channels == 1 else data @ np.full(channels, 1.0 / channels, dtype=np.float32)
    if not np.isfinite(y).all():
        raise UnreadableAudioError(path, "decoded samples are not finite")
    return np.ascontiguousarray(y, dtype=np.float32), int(rate)


def load_audio(path: str | Path, *, sample_rate: int) -> np.ndarray:
    """Decode a whole audio file to mono at ``sample_rate``.

    Any format libsndfile reads (mp3, wav, ogg, flac, ...), any rate and channel
    count. Channels are averaged, then the signal is resampled with soxr
    (:data:`RESAMPLE_QUALITY`). A truncated mp3 whose first frames still decode is
    accepted with the audio that decodes (callers check its length); one that
    yields nothing is unreadable.

    Parameters
    ----------
    path : path-like
    sample_rate : int
        Output rate in Hz.

    Returns
    -------
    y : np.ndarray, shape (n,), float32

    Raises
    ------
    UnreadableAudioError
        Missing, zero-byte, not audio, or truncated beyond decoding (the decoder's
        message is kept in ``detail``).
    """
    path = Path(path)
    y, rate = _decode(path, sample_rate=sample_rate)
    if rate != sample_rate:
        y = soxr.resample(y, rate, sample_rate, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)
    return y


def crop_or_pad(y: np.ndarray, *, n_samples: int, crop: str) -> np.ndarray:
    """Cut ``y`` to ``n_samples`` (``crop``: ``"center"`` or ``"start"``) or zero-pad its end.

    Parameters
    ----------
    y : np.ndarray, shape (n,)
    n_samples : int
    crop : {"center", "start"}

    Returns
    -------
    np.ndarray, shape (n_samples,), same dtype as ``y``
    """
    excess = y.shape[0] - n_samples
    if excess >= 0:
        start = excess // 2 if crop == "center" else 0
        return y[start:start + n_samples]
    return np.pad(y, (0, -excess))


def load_clip(path: str | Path, *, settings: FeatureSettings) -> np.ndarray:
    """Decode ``path`` into one fixed-length clip as ``settings`` describe it.

    Parameters
    ----------
    path : path-like
    settings : FeatureSettings
        ``sample_rate``, ``clip_seconds``, ``crop``, ``min_seconds`` and
        ``silence_dbfs`` are used.

    Returns
    -------
    clip : np.ndarray, shape (settings.clip_samples,), float32
        Cropped per ``settings.crop``, or zero-padded at the end when the audio
        is shorter than ``clip_seconds`` but at least ``min_seconds`` long.

    Raises
    ------
    UnreadableAudioError
        See :func:`load_audio`. A truncated mp3 that decodes long enough is kept.
    TooShortAudioError
        Decoded audio shorter than ``settings.min_seconds`` (measured length in ``detail``).
    SilentAudioError
        Peak of the clip below ``settings.silence_dbfs``.
    """
    path = Path(path)
    y = load_audio(path, sample_rate=settings.sample_rate)
    seconds = y.shape[0] / settings.sample_rate
    if seconds < settings.min_seconds:
        raise TooShortAudioError(path, f"{seconds:.2f} s < minimum {settings.min_seconds:g} s")
    clip = crop_or_pad(y, n_samples=settings.clip_samples, crop=settings.crop)
    peak = float(max(clip.max(), -clip.min()))
    peak_dbfs = 20.0 * np.log10(peak) if peak > 0 else -np.inf
    if peak_dbfs < settings.silence_dbfs:
        raise SilentAudioError(path, f"peak {peak_dbfs:.1f} dBFS < {settings.silence_dbfs:g} dBFS")
    return clip


@functools.lru_cache(maxsize=16)
def mel_basis(*, sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    """Slaney mel filter bank (librosa's), cached per process.

    Returns
    -------
    np.ndarray, shape (n_mels, 1 + n_fft // 2), float32, read-only
    """
    import librosa  # imported lazily: only the filter bank comes from librosa

    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                                dtype=np.float32)
    basis.setflags(write=False)
    return basis


#: Groups of consecutive mel bands :func:`mel_spectrogram` multiplies separately, each
#: with only the FFT bins its filters cover: a band's filter is zero outside a short run
#: of bins, so 8 groups do 1/7 of the dense product's work at the default settings
#: (0.16 against 0.54 ms per 30-s clip). Leaving out products with exact-zero weights
#: does not change a sum; the default 12-kHz log-mel of real music came out the same bit
#: for bit.
MEL_BAND_GROUPS = 8


@functools.lru_cache(maxsize=16)
def _mel_band_groups(*, sample_rate: int, n_fft: int, n_mels: int, fmin: float,
                     fmax: float | None) -> tuple[tuple[slice, slice, np.ndarray], ...]:
    """:func:`mel_basis` cut into :data:`MEL_BAND_GROUPS` groups of consecutive bands.

    Returns
    -------
    tuple of (bands, bins, weights)
        ``weights`` (contiguous, float32) is ``basis[bands, bins]``; the basis is zero
        in the rows ``bands`` outside the columns ``bins``.
    """
    basis = mel_basis(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    nonzero = basis != 0
    groups = []
    for rows in np.array_split(np.arange(n_mels), min(MEL_BAND_GROUPS, n_mels)):
        columns = np.flatnonzero(nonzero[rows].any(axis=0))
        bands = slice(int(rows[0]), int(rows[-1]) + 1)
        bins = slice(int(columns[0]), int(columns[-1]) + 1) if columns.size else slice(0, 0)
        weights = np.ascontiguousarray(basis[bands, bins])
        weights.setflags(write=False)
        groups.append((bands, bins, weights))
    return tuple(groups)


@functools.lru_cache(maxsize=16)
def _window(n_fft: int) -> np.ndarray:
    # periodic Hann (scipy.signal.get_window("hann", n_fft), librosa's window) without
    # importing scipy.signal, which costs seconds in every worker process
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    window.setflags(write=False)
    return window


#: Frames per block of :func:`mel_spectrogram`: a block's windowed frames, spectrum and
#: power (~1 MB at ``n_fft=512``) stay in the core's cache from the FFT to the mel product.
#: Transforming all ~1400 frames of a 30-s clip at once went through memory and made the
#: log-mel 1.6x slower (4.8 against 3.0 ms per clip). The numbers are the same to float32
#: rounding (BLAS may order a narrow block's sums differently); the default 12-kHz
#: log-mel of a 30-s clip came out bit for bit the same.
STFT_BLOCK_FRAMES = 256


def mel_spectrogram(y: np.ndarray, *, settings: FeatureSettings, power: float = 2.0) -> np.ndarray:
    """Mel spectrogram with librosa's conventions (centred frames, zero padding, Hann window).

    Computed in blocks of :data:`STFT_BLOCK_FRAMES` frames (window, FFT, power, mel product),
    the mel product per group of bands (:data:`MEL_BAND_GROUPS`).

    Parameters
    ----------
    y : np.ndarray, shape (n,)
    settings : FeatureSettings
    power : float
        2 for power, 1 for magnitude.

    Returns
    -------
    np.ndarray, shape (n_mels, 1 + n // hop_length), float32
    """
    n_fft, hop = settings.n_fft, settings.hop_length
    padded = np.pad(np.asarray(y, dtype=np.float32), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    groups = _mel_band_groups(sample_rate=settings.sample_rate, n_fft=n_fft, n_mels=settings.n_mels,
                              fmin=settings.fmin, fmax=settings.fmax)
    window = _window(n_fft)
    mel = np.empty((settings.n_mels, frames.shape[0]), dtype=np.float32)
    for start in range(0, frames.shape[0], STFT_BLOCK_FRAMES):
        block = slice(start, start + STFT_BLOCK_FRAMES)
        spectrum = scipy.fft.rfft(frames[block] * window, axis=-1, workers=1)
        parts = spectrum.view(np.float32)  # (frames, 2 * (n_fft // 2 + 1)): real, imaginary, real, ...
        np.square(parts, out=parts)
        magnitude = parts[:, 0::2] + parts[:, 1::2]
        if power != 2.0:
            magnitude **= power / 2.0
        for bands, bins, weights in groups:
            np.matmul(weights, magnitude[:, bins].T, out=mel[bands, block])
    return mel


def logmel(y: np.ndarray, *, settings: FeatureSettings) -> np.ndarray:
    """Log-scaled mel spectrogram of ``y`` per ``settings.log_scale``.

    ``"db"``: ``10 log10(max(mel power, 1e-10))``, i.e.
    ``librosa.power_to_db(S, ref=1.0, amin=1e-10, top_db=None)`` (the CRNN's).
    ``"log1p"``: ``log10(1 + 10000 * mel power)`` (musicnn's; its published weights expect
    librosa's default power mel).

    Parameters
    ----------
    y : np.ndarray, shape (n,)
    settings : FeatureSettings

    Returns
    -------
    np.ndarray, shape (n_mels, 1 + n // hop_length), float32
    """
    mel = mel_spectrogram(y, settings=settings, power=2.0)
    if settings.log_scale == "db":
        np.maximum(mel, np.float32(1e-10), out=mel)
        scale = np.float32(10.0)
    else:
        mel *= np.float32(10000.0)
        mel += np.float32(1.0)
        scale = np.float32(1.0)
    # log10(x) = ln(x) / ln(10): numpy's float32 ``log`` is vectorised, its ``log10`` is
    # not (4x slower here, a sixth of the whole log-mel)
    np.log(mel, out=mel)
    mel *= scale / np.float32(np.log(10.0))
    return mel
