"""Mono mp3 decoding through the system libmpg123, mixing channels before synthesis.

Why this module exists: decoding is about two thirds of feature extraction on FMA,
which is all mp3. ``soundfile`` reads mp3 through the mpg123 decoder that libsndfile
bundles, but it always synthesises every channel and leaves the averaging to us.
libmpg123 itself can mix the two channels *before* the polyphase synthesis
(``MPG123_MONO_MIX``), which halves the synthesis work; the result equals decoding
stereo and averaging afterwards to float32 rounding. libsndfile exposes no such
option, so this module calls the system library (Debian/Ubuntu: ``libmpg123-0``)
through :mod:`ctypes`. Measured on 24 30-s 44.1-kHz stereo 128-kbit/s clips
(``bench.features.make_mp3s``, one thread, rounds interleaved),
``common.audio.load_clip`` with the default settings (decode, mono, resample) took
about 10 % less time per clip (median paired ratio 1.11; best rounds 33.0 against
37.4 ms); mono decoding matches soundfile's channel mean within 1.1e-6.

Given the rate the caller needs (``min_rate``), :func:`decode_mono` also asks libmpg123
to synthesise at half or a quarter of the file's rate (``MPG123_DOWN_SAMPLE``): it then
decodes only the subbands below the new Nyquist frequency. On 30-s 192-kbps stereo real
music that saves only ~5 % of the decode (CPU time; Huffman decoding of both channels
dominates once the channels are mixed) but also a quarter of the resampling that follows.

The file reaches libmpg123 in feed mode, in blocks of :data:`FEED_BYTES` that Python
reads: libmpg123's own file reader makes two ``read`` system calls per frame (~2,300
for a 30-s clip), ~8 % of the decode (16.2 against 15.0 ms per 30-s real-music clip at
half rate, one core of a 2-core AMD EPYC, 3 interleaved rounds). The samples are the
same bit for bit: ID3v2 tags (cover art larger than a block included), the LAME header's
gapless trimming, ID3v1 tags and truncated files are handled as before (``tests/test_mp3.py``).

Only what a caller needs is decoded. ``max_seconds`` stops :func:`decode_mono` after that
much audio, and :func:`decode_span` decodes one stretch of a long file: it reopens the file
with libmpg123's own reader, scans the frame headers (no decoding: ~30 ms for 30 minutes of
8-kHz mp3) for the exact length (gapless, as a full decode counts it), lets the caller pick the
stretch, seeks there and decodes only that. A seek decodes :data:`SEEK_PREFRAMES` frames before
the target and discards them, which refills the bit reservoir and the synthesis filter: the
samples then equal a full decode's to float32 rounding (libmpg123's default of 4 frames is too
few for low bit rates, whose reservoir reaches further back: at 8 kbit/s, differences of 1.0
in the first two frames after the seek).

Nothing happens at import time. :func:`available` tells whether the library can be
loaded; :mod:`common.audio` falls back to soundfile when it cannot. The ``off_t``
functions (``mpg123_length``, ``mpg123_seek``) are called under their plain names with a C
``long``, which is ``off_t`` on 64-bit Linux and what the plain symbols take elsewhere.

Non-MPEG data is rejected rather than decoded as garbage: a file that does not start
with an ID3v2 tag or an MPEG frame sync (text, random bytes, a wav: libsndfile's own
test), or whose format mpg123 cannot determine, raises
:class:`~common.errors.UnreadableAudioError`; inside a stream, decoding stops at the
first corrupt stretch (:data:`RESYNC_LIMIT`), keeping the frames before it, as
libsndfile does with a truncated file. It also stops where the sampling rate changes (two
mp3s of different rates concatenated), as libsndfile does: the samples after it would be
played at the wrong speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np

from common.errors import UnreadableAudioError

# Constants of mpg123.h (API version 48, libmpg123 1.31).
_OK = 0
_NEED_MORE = -10
_NEW_FORMAT = -11
_ADD_FLAGS = 2
_DOWN_SAMPLE = 4
_RESYNC_LIMIT = 14
_PREFRAMES = 16
_FLAG_MONO_MIX = 0x4
_FLAG_QUIET = 0x20
_ENC_FLOAT_32 = 0x200
_MONO = 1
_SEEK_SET = 0
#: The sampling rates of MPEG 1, 2 and 2.5 layer III.
_MPEG_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
#: The rate of nearly every FMA mp3 (and CD audio): picks the first reduction tried.
_COMMON_RATE = 44100

#: Bytes of non-MPEG data mpg123 may skip inside a stream to find the next frame header.
#: 0: decoding stops at the first corrupt stretch with the frames decoded so far, as
#: libsndfile's does, instead of skipping it (and decoding a frame of garbage).
RESYNC_LIMIT = 0

#: Frames decoded and discarded before the target of a seek (:func:`decode_span`). The bit
#: reservoir of layer III reaches back up to 511 bytes (MPEG 1) or 255 bytes (MPEG 2 and
#: 2.5): 11 frames of 24 bytes at 8 kbit/s and 24 kHz, the worst case, plus one frame of
#: filter-bank overlap.
SEEK_PREFRAMES = 16

#: Bytes of the file handed to mpg123 at a time (one ``read`` system call each). mpg123
#: holds a block until it is decoded, so memory stays bounded for hour-long tracks.
FEED_BYTES = 1 << 20

#: Samples of the first output buffer (1.5 min at 44.1 kHz) when no limit is given; it doubles when full.
_INITIAL_SAMPLES = 1 << 22

_handle_p = ctypes.c_void_p
_int_p = ctypes.POINTER(ctypes.c_int)
_long_p = ctypes.POINTER(ctypes.c_long)
_SIGNATURES: dict[str, tuple[list, object]] = {
    "mpg123_init": ([], ctypes.c_int),
    "mpg123_new": ([ctypes.c_char_p, _int_p], _handle_p),
    "mpg123_delete": ([_handle_p], None),
    "mpg123_param": ([_handle_p, ctypes.c_int, ctypes.c_long, ctypes.c_double], ctypes.c_int),
    "mpg123_format_none": ([_handle_p], ctypes.c_int),
    "mpg123_format": ([_handle_p, ctypes.c_long, ctypes.c_int, ctypes.c_int], ctypes.c_int),
    "mpg123_open_feed": ([_handle_p], ctypes.c_int),
    "mpg123_open_fd": ([_handle_p, ctypes.c_int], ctypes.c_int),
    "mpg123_feed": ([_handle_p, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int),
    "mpg123_getformat": ([_handle_p, _long_p, _int_p, _int_p], ctypes.c_int),
    "mpg123_read": ([_handle_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)], ctypes.c_int),
    "mpg123_scan": ([_handle_p], ctypes.c_int),
    "mpg123_length": ([_handle_p], ctypes.c_long),
    "mpg123_seek": ([_handle_p, ctypes.c_long, ctypes.c_int], ctypes.c_long),
    "mpg123_close": ([_handle_p], ctypes.c_int),
    "mpg123_strerror": ([_handle_p], ctypes.c_char_p),
    "mpg123_plain_strerror": ([ctypes.c_int], ctypes.c_char_p),
}

#: What :func:`decode_span` asks its caller: the stretch ``[start, stop)`` of the file's
#: decoded signal to decode, given the signal's length and rate (both in samples and Hz).
Span = Callable[[int, int], tuple[int, int]]

_T = TypeVar("_T")


class _RateTooLow(Exception):
    """The output rate of a reduced-rate decode is below the caller's ``min_rate`` (or not an MPEG rate)."""


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The system libmpg123 with typed functions, initialised once per process; None if absent."""
    name = ctypes.util.find_library("mpg123")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        for function, (argtypes, restype) in _SIGNATURES.items():
            getattr(lib, function).argtypes = argtypes
            getattr(lib, function).restype = restype
    except (OSError, AttributeError):  # unloadable, or too old to have every function
        return None
    if lib.mpg123_init() != _OK:
        return None
    return lib


def available() -> bool:
    """Whether the system libmpg123 can be loaded (and :func:`decode_mono` used).

    Returns
    -------
    bool
    """
    return _library() is not None


def _error(lib: ctypes.CDLL, handle: int, code: int) -> str:
    message = lib.mpg123_strerror(handle) if handle else lib.mpg123_plain_strerror(code)
    return f"libmpg123: {message.decode(errors='replace')}"


def _configure(lib: ctypes.CDLL, handle: int, *, path: Path, down_sample: int) -> None:
    """Quiet, channels mixed before synthesis, bounded resync, :data:`SEEK_PREFRAMES`, synthesis
    at 1/2**down_sample of the file's rate, mono float32 output at any MPEG rate (libmpg123
    refuses a reduced rate that is not one, e.g. 5512 Hz)."""
    codes = [
        lib.mpg123_param(handle, _ADD_FLAGS, _FLAG_QUIET | _FLAG_MONO_MIX, 0.0),
        lib.mpg123_param(handle, _RESYNC_LIMIT, RESYNC_LIMIT, 0.0),
        lib.mpg123_param(handle, _PREFRAMES, SEEK_PREFRAMES, 0.0),
        lib.mpg123_param(handle, _DOWN_SAMPLE, down_sample, 0.0),
        lib.mpg123_format_none(handle),
        *(lib.mpg123_format(handle, rate, _MONO, _ENC_FLOAT_32) for rate in _MPEG_RATES),
    ]
    failed = [code for code in codes if code != _OK]
    if failed:
        raise UnreadableAudioError(path, f"decoder setup: {_error(lib, handle, failed[0])}")


def _starts_like_mpeg(path: Path) -> bool:
    """Whether ``path`` begins with an ID3v2 tag or an MPEG audio frame sync (libsndfile's test).

    mpg123 itself skips up to 64 KiB of leading junk looking for frames, and finds
    "frames" in some PCM (a wav of a sine wave decodes to noise of peak 5); a file
    that does not start like an mp3 is left to the caller (soundfile) instead.
    """
    with path.open("rb") as file:
        head = file.read(3)
    return head == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


def _output_rate(lib: ctypes.CDLL, handle: int) -> tuple[int, int]:
    """``(code, rate)`` of ``mpg123_getformat``: the output rate once a frame has been parsed."""
    rate, channels, encoding = ctypes.c_long(), ctypes.c_int(), ctypes.c_int()
    code = lib.mpg123_getformat(handle, ctypes.byref(rate), ctypes.byref(channels), ctypes.byref(encoding))
    return code, int(rate.value)


class _Output:
    """The samples decoded so far, in a buffer that grows by doubling up to an optional limit.

    Parameters
    ----------
    limit : int, optional
        Most samples to keep; decoding stops there. None: no limit.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.samples = np.empty(_INITIAL_SAMPLES if limit is None else max(1, min(limit, _INITIAL_SAMPLES)),
                                dtype=np.float32)
        self.n = 0

    def full(self) -> bool:
        """Whether the limit is reached."""
        return self.limit is not None and self.n >= self.limit

    def read(self, lib: ctypes.CDLL, handle: int, *, rate: int) -> int:
        """``mpg123_read`` into the buffer until it is full, mpg123 needs more input, the stream
        ends or fails, or the output rate changes from ``rate``.

        A round that adds no samples returns, but for one format announcement in a row, so
        the loop ends whatever the library does.

        Returns
        -------
        int
            The last ``mpg123_read`` code: ``_OK`` when full, ``_NEW_FORMAT`` only when the rate
            changed (the samples of the new rate are not read).
        """
        done = ctypes.c_size_t()
        code = _OK
        idle = 0  # rounds in a row that added no samples
        while not self.full():
            if self.n == self.samples.shape[0]:
                grown = 2 * self.n if self.limit is None else min(2 * self.n, self.limit)
                self.samples.resize(grown, refcheck=False)  # realloc; nothing else refers to the buffer
            stop = self.samples.shape[0]
            code = lib.mpg123_read(handle, self.samples.ctypes.data + self.n * self.samples.itemsize,
                                   (stop - self.n) * self.samples.itemsize, ctypes.byref(done))
            self.n += done.value // self.samples.itemsize
            idle = 0 if done.value else idle + 1
            if code == _NEW_FORMAT and idle < 2 and _output_rate(lib, handle)[1] == rate:
                continue  # the format announced once decoding starts: the same rate
            if code != _OK or not done.value:
                return code
        return code

    def result(self) -> np.ndarray:
        """The samples decoded, shape (n,), float32 (the buffer, shrunk in place)."""
        self.samples.resize(self.n, refcheck=False)
        return self.samples


def _feed_and_read(lib: ctypes.CDLL, handle: int, file: BinaryIO, *, path: Path, min_rate: int,
                   max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Feed ``file`` to mpg123 in blocks of :data:`FEED_BYTES` and collect the samples it decodes,
    up to ``floor(max_seconds * rate) + 1`` of them.

    Returns
    -------
    y : np.ndarray, shape (n,), float32
        ``n`` may be 0. Decoding that stops with an error after some frames (a
        truncated or corrupt file) keeps the frames decoded so far, as libsndfile does.
    rate : int
        The output rate mpg123 chose.

    Raises
    ------
    _RateTooLow
        That rate is below ``min_rate`` (or mpg123 cannot produce it): the caller tries a
        smaller reduction.
    """
    output: _Output | None = None
    rate = 0
    code = _NEED_MORE
    while code == _NEED_MORE and not (output is not None and output.full()):
        block = file.read(FEED_BYTES)
        if not block:
            break  # every byte fed and decoded
        code = lib.mpg123_feed(handle, block, len(block))
        if code != _OK:
            break
        if output is None:
            code, rate = _output_rate(lib, handle)
            if code == _NEED_MORE:
                continue  # no whole frame yet (a large ID3v2 tag with cover art, say)
            if min_rate and (code != _OK or rate < min_rate):
                raise _RateTooLow
            if code != _OK:
                break
            output = _Output(None if max_seconds is None else int(max_seconds * rate) + 1)
        code = output.read(lib, handle, rate=rate)
    if output is None:
        if code not in (_OK, _NEED_MORE):
            raise UnreadableAudioError(path, f"decoder: {_error(lib, handle, code)}")
        raise UnreadableAudioError(path, "libmpg123: no MPEG audio frame in the file")
    if output.n == 0 and code not in (_OK, _NEED_MORE, _NEW_FORMAT):
        raise UnreadableAudioError(path, f"decoder: {_error(lib, handle, code)}")
    return output.result(), rate


def _seek_and_read(lib: ctypes.CDLL, handle: int, *, path: Path, min_rate: int,
                   span: Span) -> tuple[np.ndarray, int, int, int]:
    """Open ``path`` with libmpg123's own reader, scan it, decode only ``span(length, rate)`` of it
    (see :func:`decode_span`).

    Raises :class:`_RateTooLow` as :func:`_feed_and_read` does.
    """
    fd = os.open(path, os.O_RDONLY)
    code = lib.mpg123_open_fd(handle, fd)
    if code != _OK:
        os.close(fd)
        raise UnreadableAudioError(path, f"decoder: {_error(lib, handle, code)}")
    try:
        code, rate = _output_rate(lib, handle)
        if min_rate and (code != _OK or rate < min_rate):
            raise _RateTooLow
        if code != _OK:
            raise UnreadableAudioError(path, f"decoder: {_error(lib, handle, code)}")
        code = lib.mpg123_scan(handle)
        if code != _OK:
            raise UnreadableAudioError(path, f"decoder: scanning the frames: {_error(lib, handle, code)}")
        length = int(lib.mpg123_length(handle))
        if length < 0:
            raise UnreadableAudioError(path, f"decoder: no length after a scan: {_error(lib, handle, length)}")
        start, stop = span(length, rate)
        position = int(lib.mpg123_seek(handle, start, _SEEK_SET))
        if position != start:
            raise UnreadableAudioError(path, f"decoder: seeking to sample {start}: {_error(lib, handle, position)}")
        output = _Output(stop - start)
        code = output.read(lib, handle, rate=rate)
        if code == _NEW_FORMAT:
            raise UnreadableAudioError(path, "libmpg123: the sampling rate changes within the part to decode")
        return output.result(), rate, start, length
    finally:
        lib.mpg123_close(handle)
        os.close(fd)


def _down_sample_factors(min_rate: int | None) -> tuple[int, ...]:
    """``MPG123_DOWN_SAMPLE`` values to try, most reduced first, for output at ``min_rate`` or above.

    1: synthesis at half the file's rate, 2: at a quarter (libmpg123 then decodes only
    the lower half or quarter of the 32 subbands, so the reduced signal is band-limited
    by the polyphase filter bank itself, not aliased). The first factor is the largest
    that keeps a 44.1-kHz file at ``min_rate`` or above, so that FMA's files decode in one
    pass; a file of a lower rate is reopened with the next smaller factor, 0 (full rate) last.
    """
    if min_rate is None:
        return (0,)
    return (*(factor for factor in (2, 1) if _COMMON_RATE >> factor >= min_rate), 0)


def _at_reduced_rate(min_rate: int | None, decode: Callable[[int, int], _T]) -> _T:
    """``decode(down_sample, min_rate)`` with the factors of :func:`_down_sample_factors` in turn,
    until one gives a rate of at least ``min_rate``; the file's own rate (factor 0) last, whatever it is."""
    for down_sample in _down_sample_factors(min_rate)[:-1]:
        try:
            return decode(down_sample, min_rate or 0)
        except _RateTooLow:
            pass
    return decode(0, 0)


def _with_handle(lib: ctypes.CDLL, path: Path, *, down_sample: int, body: Callable[[int], _T]) -> _T:
    """``body(handle)`` on a new mpg123 handle configured for ``down_sample`` (see :func:`_configure`),
    deleted afterwards."""
    error = ctypes.c_int()
    handle = lib.mpg123_new(None, ctypes.byref(error))
    if not handle:
        raise UnreadableAudioError(path, f"decoder: {_error(lib, 0, error.value)}")
    try:
        _configure(lib, handle, path=path, down_sample=down_sample)
        return body(handle)
    finally:
        lib.mpg123_delete(handle)


def _decode_once(lib: ctypes.CDLL, path: Path, *, down_sample: int, min_rate: int,
                 max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Decode at 1/2**down_sample of the file's rate (:class:`_RateTooLow` when that is below ``min_rate``)."""
    def feed(handle: int) -> tuple[np.ndarray, int]:
        code = lib.mpg123_open_feed(handle)
        if code != _OK:
            raise UnreadableAudioError(path, f"decoder: {_error(lib, handle, code)}")
        try:
            with path.open("rb") as file:
                return _feed_and_read(lib, handle, file, path=path, min_rate=min_rate, max_seconds=max_seconds)
        finally:
            lib.mpg123_close(handle)

    return _with_handle(lib, path, down_sample=down_sample, body=feed)


def _checked(path: Path, y: np.ndarray) -> np.ndarray:
    """``y`` unless it is empty or holds a non-finite sample (then an :class:`UnreadableAudioError`)."""
    if y.shape[0] == 0:
        raise UnreadableAudioError(path, "no audio frames decoded")
    if not np.isfinite(y).all():
        raise UnreadableAudioError(path, "decoded samples are not finite")
    return y


def _require_mpeg(path: Path) -> ctypes.CDLL:
    """The library, once ``path`` starts like an mp3 (else an :class:`UnreadableAudioError`)."""
    lib = _library()
    if lib is None:
        raise UnreadableAudioError(path, "libmpg123 is not installed")
    if not _starts_like_mpeg(path):
        raise UnreadableAudioError(path, "libmpg123: no ID3 tag or MPEG frame at the start of the file")
    return lib


def decode_mono(path: Path, *, min_rate: int | None = None,
                max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode an mp3 to mono with libmpg123, channels mixed before synthesis.

    Parameters
    ----------
    path : Path
        An MPEG audio file (layer I, II or III).
    min_rate : int, optional
        Lowest output rate the caller can use (the rate it resamples to). When the
        file's rate halved or quartered is still at least ``min_rate``, libmpg123
        synthesises at that reduced rate (``MPG123_DOWN_SAMPLE``: it decodes only the
        subbands below the new Nyquist frequency, so the output is band-limited, and
        the decode is ~1.5x faster at half rate). None: the file's own rate.
    max_seconds : float, optional
        Stop after ``floor(max_seconds * rate) + 1`` samples: ``y`` is longer than
        ``max_seconds`` exactly when decoding stopped there (the file may hold more), and
        the output buffer never grows beyond that. None: decode the whole file.

    Returns
    -------
    y : np.ndarray, shape (n,), float32
        The average of the channels (a mono file as is), full scale +-1.
    rate : int
        Rate of ``y`` in Hz: the file's own, or a half or quarter of it (at least
        ``min_rate`` unless the file's own rate is below it).

    Raises
    ------
    UnreadableAudioError
        The library is absent, the file cannot be opened, holds no MPEG frames
        (text, random bytes, another format) or does not start like an mp3 (ID3v2
        tag or frame sync), decodes to nothing, or decodes to
        non-finite samples.
    """
    lib = _require_mpeg(path)
    y, rate = _at_reduced_rate(min_rate, lambda down_sample, least: _decode_once(
        lib, path, down_sample=down_sample, min_rate=least, max_seconds=max_seconds))
    return _checked(path, y), rate


def decode_span(path: Path, *, span: Span, min_rate: int | None = None) -> tuple[np.ndarray, int, int, int]:
    """Decode one stretch of an mp3, chosen once its exact length is known, as :func:`decode_mono` would.

    The frame headers are scanned for the length (no audio is decoded), ``span(length, rate)``
    picks ``[start, stop)``, and only those samples are decoded, after a seek
    (:data:`SEEK_PREFRAMES`). Memory does not grow with the file's length, work only by the scan.

    Parameters
    ----------
    path : Path
        An MPEG audio file.
    span : callable
        ``span(length, rate) -> (start, stop)`` with ``0 <= start <= stop <= length``: samples
        of the mono signal at ``rate`` (the one :func:`decode_mono` returns) to decode.
    min_rate : int, optional
        As for :func:`decode_mono`.

    Returns
    -------
    y : np.ndarray, shape (m,), float32
        ``decode_mono(path, min_rate=min_rate)[0][start:stop]`` to float32 rounding; shorter
        when the stream ends (or breaks off) earlier than its frame headers promise.
    rate : int
        As for :func:`decode_mono`.
    start : int
        First sample of ``y`` in the whole signal.
    length : int
        Samples of the whole signal, as the scan counted them.

    Raises
    ------
    UnreadableAudioError
        As :func:`decode_mono`; also when the scan or the seek fails, or the sampling
        rate changes within the stretch.
    """
    lib = _require_mpeg(path)
    y, rate, start, length = _at_reduced_rate(min_rate, lambda down_sample, least: _with_handle(
        lib, path, down_sample=down_sample,
        body=functools.partial(_seek_and_read, lib, path=path, min_rate=least, span=span)))
    return _checked(path, y), rate, start, length
