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

Only what is used is decoded (:func:`load_excerpt`, which :func:`load_clip` calls): a 30-minute
file analysed as a 30-s clip costs what a 30-s file costs (the clip of a 30-minute 8-kHz mp3
through libmpg123: a 3-MiB peak of arrays and 73 ms, against 69 MiB and 0.3 s when the whole
file was decoded; FMA's 30-s files give the same samples as before). Cropped at its start, a file
is decoded up to the end of the clip. Cropped at its centre, a file up to twice the clip is
decoded whole in one pass (FMA's 30-s files for 29.12-s clips: nothing changes), a longer one
only around its centre: libmpg123 scans the frame headers for the exact length and seeks
(:func:`common.mp3.decode_span`); soundfile seeks in PCM, FLAC and Ogg files, whose length it
knows. libsndfile knows an mp3's length only as an estimate from the file size and the first
frame's bit rate (a frame off for a constant bit rate; a minute off with a 1-MiB cover
picture, which it counts as audio), and its mp3 seek lands thousands of samples off: such a
file is read to its end for the exact length, then again up to the end of the clip, keeping
one block at a time and the clip, so that memory stays bounded (time: 1.5 decodes).
The stretch decoded extends :data:`RESAMPLE_MARGIN_SECONDS` beyond the clip on
either side, so that resampling it gives the clip of the resampled whole file to float32
rounding. soundfile reads blocks of :data:`SOUNDFILE_BLOCK_FRAMES` frames and averages the
channels block by block: memory holds one block of all channels at most (a 96-kHz six-channel
file is 2.3 MB a second in float32), and never a buffer sized by libsndfile's length estimate
(which counts a 1.1-MiB ID3 tag as 70 s of audio: sf.read allocated 26 MiB for a 6-s mp3).

Every failure is a typed error from :mod:`common.errors` naming the file; nothing
here returns a silent array of zeros.
"""

from __future__ import annotations

import dataclasses
import functools
import math
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

#: Audio decoded beyond each end of an excerpt (:func:`load_excerpt`), in seconds: soxr's
#: filter then sees the same neighbourhood as in the whole file. Measured: 1,024 input
#: samples are enough from 96 to 12 kHz (error 1e-7), 256 from 44.1 to 16 kHz; 0.05 s is
#: 4,800 samples at 96 kHz.
RESAMPLE_MARGIN_SECONDS = 0.05

#: Frames per block soundfile reads (all channels, float32: 1.5 MB at 96 kHz and 6 channels).
#: A multiple of 1,152, the samples of an mp3 frame (576 at 24 kHz and below, 384 in layer I):
#: libsndfile 1.2.2 returns wrong samples after a read that ends inside a frame of some mp3s
#: (8 kbit/s at 8 kHz: errors of 1.2 after each read of 65,536 frames; none with 65,664).
SOUNDFILE_BLOCK_FRAMES = 57 * 1152

#: File suffixes :func:`load_audio` is meant for (any format libsndfile reads works).
AUDIO_SUFFIXES: tuple[str, ...] = (".mp3", ".wav", ".ogg", ".flac")


def _resampled_length(n: int, rate: int, sample_rate: int) -> int:
    """Samples soxr returns for ``n`` samples from ``rate`` to ``sample_rate`` (rounded half up)."""
    return (2 * n * sample_rate + rate) // (2 * rate)


@dataclasses.dataclass(frozen=True)
class _Decoded:
    """A stretch of a file's mono signal.

    Attributes
    ----------
    y : np.ndarray, shape (m,), float32
        Samples ``start`` to ``start + m`` of the signal.
    rate : int
        Its rate in Hz.
    start : int
    length : int or None
        Samples of the whole signal; None when only its first ``m`` were decoded and it
        holds more.
    """

    y: np.ndarray
    rate: int
    start: int = 0
    length: int | None = None


@dataclasses.dataclass(frozen=True)
class _Excerpt:
    """What ``crop_or_pad(load_audio(path, sample_rate=sample_rate), n_samples=n_samples, crop=crop)``
    keeps of a file (before padding), and which stretch of the decoded signal that needs."""

    sample_rate: int
    n_samples: int
    crop: str

    def whole_seconds(self) -> float:
        """Files up to this long are decoded whole, in one pass; longer ones only in part.

        A start crop: the excerpt and the resampler's margin. A centre crop: twice the
        excerpt, so that a file a little longer than it is not scanned and decoded again.
        """
        factor = 2 if self.crop == "center" else 1
        return factor * self.n_samples / self.sample_rate + RESAMPLE_MARGIN_SECONDS

    def _first(self, n_out: int) -> int:
        """First sample :func:`crop_or_pad` keeps of ``n_out`` samples at ``sample_rate``."""
        return max(0, (n_out - self.n_samples) // 2) if self.crop == "center" else 0

    def span(self, length: int, rate: int) -> tuple[int, int]:
        """Samples ``[start, stop)`` of a signal of ``length`` samples at ``rate`` that the excerpt needs.

        The excerpt and :data:`RESAMPLE_MARGIN_SECONDS` on either side; ``start`` is a
        multiple of ``rate / gcd(rate, sample_rate)``, so that it falls on an output sample.
        """
        if rate == self.sample_rate:
            first = self._first(length)
            return first, min(length, first + self.n_samples)
        step = rate // math.gcd(rate, self.sample_rate)
        first = self._first(_resampled_length(length, rate, self.sample_rate))
        margin = math.ceil(RESAMPLE_MARGIN_SECONDS * rate)
        start = max(0, first * rate // self.sample_rate - margin) // step * step
        stop = -(-(first + self.n_samples) * rate // self.sample_rate) + margin
        return start, min(length, stop)

    def cut(self, decoded: _Decoded) -> tuple[np.ndarray, int]:
        """The excerpt from a decoded stretch that holds it, and the length of the whole resampled signal.

        Returns
        -------
        y : np.ndarray, shape (min(n_samples, n_out),), float32
        n_out : int
            Samples of the whole file at ``sample_rate``; of the part decoded when
            ``decoded.length`` is None (then more than ``n_samples``).
        """
        y = _resample(decoded.y, decoded.rate, self.sample_rate)
        if decoded.length is None or (decoded.start == 0 and decoded.y.shape[0] == decoded.length):
            return crop_or_pad(y, n_samples=min(self.n_samples, y.shape[0]), crop=self.crop), y.shape[0]
        n_out = _resampled_length(decoded.length, decoded.rate, self.sample_rate)
        first = self._first(n_out) - decoded.start * self.sample_rate // decoded.rate
        return y[first:first + self.n_samples], n_out


def _resample(y: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """``y`` from ``rate`` to ``sample_rate`` (soxr, :data:`RESAMPLE_QUALITY`), float32; as is when equal."""
    if rate == sample_rate:
        return y
    return soxr.resample(y, rate, sample_rate, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)


def _decode_mp3(path: Path, *, min_rate: int | None, excerpt: _Excerpt | None) -> _Decoded:
    """:func:`_decode` through libmpg123 (:mod:`common.mp3`)."""
    if excerpt is None:
        y, rate = mp3.decode_mono(path, min_rate=min_rate)
        return _Decoded(y, rate, 0, y.shape[0])
    whole = excerpt.whole_seconds()
    y, rate = mp3.decode_mono(path, min_rate=min_rate, max_seconds=whole)
    if y.shape[0] <= whole * rate:
        return _Decoded(y, rate, 0, y.shape[0])
    if excerpt.crop != "center":
        return _Decoded(y, rate)
    y, rate, start, length = mp3.decode_span(path, min_rate=min_rate, span=excerpt.span)
    return _Decoded(y, rate, start, length)


def _read_mono(file: sf.SoundFile, *, start: int, stop: int | None) -> tuple[np.ndarray, int, bool]:
    """Frames ``[start, stop)`` of the channel average of a newly opened ``file`` (to its end: ``stop`` None).

    Read in blocks of :data:`SOUNDFILE_BLOCK_FRAMES` frames, the rows needed averaged at once.
    PCM, FLAC and Ogg seek to ``start``; an mp3 is read from its start (libsndfile's mp3 seek
    lands thousands of samples off).

    Returns
    -------
    y : np.ndarray, shape (m,), float32
        ``m <= stop - start``: fewer when the file ends first.
    position : int
        Frames of the file read (the last block may reach past ``stop``).
    ended : bool
        Whether the end of the file was reached (``position`` is then its length).
    """
    channels = file.channels
    # A matrix-vector product averages the channels ~15x faster than ``mean(axis=1)``
    # over a (n, channels) array, which costs as much as decoding the mp3.
    weights = np.full(channels, 1.0 / channels, dtype=np.float32)
    block = np.empty((SOUNDFILE_BLOCK_FRAMES, channels), dtype=np.float32)
    parts = []
    position = 0 if file.format == "MP3" or not start else file.seek(start)
    while read := file.read(out=block).shape[0]:
        end = position + read
        if end > start:
            rows = block[max(start - position, 0):read if stop is None else min(read, stop - position)]
            parts.append(rows[:, 0].copy() if channels == 1 else rows @ weights)
        position = end
        if stop is not None and end >= stop:
            return np.concatenate(parts), position, False
    return (np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)), position, True


def _count_to_end(file: sf.SoundFile, position: int) -> int:
    """Frames of an open ``file`` that stands at frame ``position``, read (and dropped) to its end."""
    block = np.empty((SOUNDFILE_BLOCK_FRAMES, file.channels), dtype=np.float32)
    while read := file.read(out=block).shape[0]:
        position += read
    return position


def _decode_soundfile(path: Path, *, excerpt: _Excerpt | None) -> _Decoded:
    """:func:`_decode` through soundfile.

    Raises
    ------
    soundfile.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError
        What soundfile raises for a file it cannot read.
    """
    with sf.SoundFile(path) as file:
        rate = file.samplerate
        if excerpt is None:
            y, length, _ = _read_mono(file, start=0, stop=None)
            return _Decoded(y, rate, 0, length)
        whole = excerpt.whole_seconds()
        if excerpt.crop == "center" and file.format != "MP3" and file.frames > whole * rate:
            length = file.frames  # exact for PCM, FLAC and Ogg
        else:
            y, position, ended = _read_mono(file, start=0, stop=int(whole * rate) + 1)
            if ended or excerpt.crop != "center":
                return _Decoded(y, rate, 0, position if ended else None)
            length = _count_to_end(file, position)  # libsndfile's mp3 length is an estimate
    with sf.SoundFile(path) as file:
        start, stop = excerpt.span(length, rate)
        return _Decoded(_read_mono(file, start=start, stop=stop)[0], rate, start, length)


def _decode(path: Path, *, sample_rate: int | None = None, excerpt: _Excerpt | None = None) -> _Decoded:
    """Decode ``path`` (or the stretch ``excerpt`` needs) to a mono float32 signal.

    An ``.mp3`` goes through :mod:`common.mp3` when the system libmpg123 is installed (at
    half or a quarter of the file's rate when that stays at least :data:`DOWN_SAMPLE_MARGIN`
    times ``sample_rate``); anything it refuses, and every other file, through soundfile at
    the file's own rate.

    Returns
    -------
    _Decoded
        The whole signal, or (``excerpt`` given) a stretch that holds the excerpt.

    Raises
    ------
    UnreadableAudioError
        Missing, empty, refused by both decoders (both reasons in ``detail``), nothing
        decoded, or non-finite samples.
    """
    if not path.is_file():
        raise UnreadableAudioError(path, "no such file")
    if path.stat().st_size == 0:
        raise UnreadableAudioError(path, "empty file (0 bytes)")
    refused = ""
    if path.suffix.lower() == ".mp3" and mp3.available():
        min_rate = None if sample_rate is None else int(np.ceil(DOWN_SAMPLE_MARGIN * sample_rate))
        try:
            return _decode_mp3(path, min_rate=min_rate, excerpt=excerpt)
        except UnreadableAudioError as error:  # not an MPEG stream to libmpg123: libsndfile reads it
            refused = f"{error.detail}; "      # (a wav named .mp3) or says why not
    try:
        decoded = _decode_soundfile(path, excerpt=excerpt)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as error:
        raise UnreadableAudioError(path, f"{refused}decoder: {error}") from error
    if decoded.y.shape[0] == 0:
        raise UnreadableAudioError(path, f"{refused}no audio frames decoded")
    if not np.isfinite(decoded.y).all():
        raise UnreadableAudioError(path, "decoded samples are not finite")
    return decoded


def load_audio(path: str | Path, *, sample_rate: int) -> np.ndarray:
    """Decode a whole audio file to mono at ``sample_rate``.

    Any format libsndfile reads (mp3, wav, ogg, flac, ...), any rate and channel
    count. Channels are averaged, then the signal is resampled with soxr
    (:data:`RESAMPLE_QUALITY`). A truncated mp3 whose first frames still decode is
    accepted with the audio that decodes (callers check its length); one that
    yields nothing is unreadable. Memory grows with the file's length: for a clip
    of a file of any length, use :func:`load_excerpt`.

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
    decoded = _decode(Path(path), sample_rate=sample_rate)
    return _resample(decoded.y, decoded.rate, sample_rate)


def load_excerpt(path: str | Path, *, sample_rate: int, n_samples: int, crop: str) -> tuple[np.ndarray, float]:
    """What ``crop_or_pad(load_audio(path, ...), n_samples=n_samples, crop=crop)`` keeps, decoding only that.

    The samples equal those of the whole file resampled and cropped to float32 rounding
    (exactly, for a file decoded whole; see the module docstring for which are). Memory
    and work are bounded by ``n_samples``, whatever the file's length.

    Parameters
    ----------
    path : path-like
    sample_rate : int
        Output rate in Hz.
    n_samples : int
        Length of the excerpt at ``sample_rate``.
    crop : {"center", "start"}
        Which part of a longer file is kept (:func:`crop_or_pad`).

    Returns
    -------
    y : np.ndarray, shape (min(n_samples, n),), float32
        Not padded: shorter than ``n_samples`` when the file is.
    seconds : float
        Length ``n / sample_rate`` of the whole file at ``sample_rate``; for a start crop of
        a file longer than ``n_samples``, of the part decoded (then more than
        ``n_samples / sample_rate``).

    Raises
    ------
    UnreadableAudioError
        See :func:`load_audio`.
    """
    excerpt = _Excerpt(sample_rate=sample_rate, n_samples=n_samples, crop=crop)
    y, n_out = excerpt.cut(_decode(Path(path), sample_rate=sample_rate, excerpt=excerpt))
    return y, n_out / sample_rate


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
    """Decode ``path`` into one fixed-length clip as ``settings`` describe it
    (:func:`load_clip_with_length` without the length).

    Returns
    -------
    clip : np.ndarray, shape (settings.clip_samples,), float32
    """
    return load_clip_with_length(path, settings=settings)[0]


def load_clip_with_length(path: str | Path, *, settings: FeatureSettings) -> tuple[np.ndarray, int]:
    """Decode ``path`` into one fixed-length clip as ``settings`` describe it, and how much of it is audio.

    Only the clip is decoded (:func:`load_excerpt`), whatever the file's length.

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
    samples : int
        Samples of ``clip`` that hold decoded audio (the rest is the zero padding):
        ``settings.clip_samples`` for audio at least ``clip_seconds`` long.

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
    y, seconds = load_excerpt(path, sample_rate=settings.sample_rate, n_samples=settings.clip_samples,
                              crop=settings.crop)
    if seconds < settings.min_seconds:
        raise TooShortAudioError(path, f"{seconds:.2f} s < minimum {settings.min_seconds:g} s")
    clip = crop_or_pad(y, n_samples=settings.clip_samples, crop=settings.crop)
    peak = float(max(clip.max(), -clip.min()))
    peak_dbfs = 20.0 * np.log10(peak) if peak > 0 else -np.inf
    if peak_dbfs < settings.silence_dbfs:
        raise SilentAudioError(path, f"peak {peak_dbfs:.1f} dBFS < {settings.silence_dbfs:g} dBFS")
    return clip, min(y.shape[0], settings.clip_samples)


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
