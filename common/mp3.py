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

Nothing happens at import time. :func:`available` tells whether the library can be
loaded; :mod:`common.audio` falls back to soundfile when it cannot. Only functions
without ``off_t`` arguments are used, so the large-file symbol variants
(``mpg123_open_64``...) do not matter.

Non-MPEG data is rejected rather than decoded as garbage: a file that does not start
with an ID3v2 tag or an MPEG frame sync (text, random bytes, a wav: libsndfile's own
test), or whose format mpg123 cannot determine, raises
:class:`~common.errors.UnreadableAudioError`; inside a stream, decoding stops at the
first corrupt stretch (:data:`RESYNC_LIMIT`), keeping the frames before it, as
libsndfile does with a truncated file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path
from typing import BinaryIO

import numpy as np

from common.errors import UnreadableAudioError

# Constants of mpg123.h (API version 48, libmpg123 1.31).
_OK = 0
_NEED_MORE = -10
_NEW_FORMAT = -11
_ADD_FLAGS = 2
_DOWN_SAMPLE = 4
_RESYNC_LIMIT = 14
_FLAG_MONO_MIX = 0x4
_FLAG_QUIET = 0x20
_ENC_FLOAT_32 = 0x200
_MONO = 1
#: The sampling rates of MPEG 1, 2 and 2.5 layer III.
_MPEG_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
#: The rate of nearly every FMA mp3 (and CD audio): picks the first reduction tried.
_COMMON_RATE = 44100

#: Bytes of non-MPEG data mpg123 may skip inside a stream to find the next frame header.
#: 0: decoding stops at the first corrupt stretch with the frames decoded so far, as
#: libsndfile's does, instead of skipping it (and decoding a frame of garbage).
RESYNC_LIMIT = 0

#: Bytes of the file handed to mpg123 at a time (one ``read`` system call each). mpg123
#: holds a block until it is decoded, so memory stays bounded for hour-long tracks.
FEED_BYTES = 1 << 20

#: Samples of the first output buffer (1.5 min at 44.1 kHz); it doubles when full.
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
    "mpg123_feed": ([_handle_p, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int),
    "mpg123_getformat": ([_handle_p, _long_p, _int_p, _int_p], ctypes.c_int),
    "mpg123_read": ([_handle_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)], ctypes.c_int),
    "mpg123_close": ([_handle_p], ctypes.c_int),
    "mpg123_strerror": ([_handle_p], ctypes.c_char_p),
    "mpg123_plain_strerror": ([ctypes.c_int], ctypes.c_char_p),
}


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
    """Quiet, channels mixed before synthesis, bounded resync, synthesis at 1/2**down_sample
    of the file's rate, mono float32 output at any MPEG rate (libmpg123 refuses a reduced
    rate that is not one, e.g. 5512 Hz)."""
    codes = [
        lib.mpg123_param(handle, _ADD_FLAGS, _FLAG_QUIET | _FLAG_MONO_MIX, 0.0),
        lib.mpg123_param(handle, _RESYNC_LIMIT, RESYNC_LIMIT, 0.0),
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


def _feed_and_read(lib: ctypes.CDLL, handle: int, file: BinaryIO, *, path: Path,
                   min_rate: int) -> tuple[np.ndarray, int] | None:
    """Feed ``file`` to mpg123 in blocks of :data:`FEED_BYTES` and collect every sample it decodes.

    Returns
    -------
    y : np.ndarray, shape (n,), float32
        ``n`` may be 0. Decoding that stops with an error after some frames (a
        truncated or corrupt file) keeps the frames decoded so far, as libsndfile does.
    rate : int
        The output rate mpg123 chose.

    None when that rate is below ``min_rate`` (or mpg123 cannot produce it): the caller
    tries a smaller reduction.
    """
    out = np.empty(_INITIAL_SAMPLES, dtype=np.float32)
    n = 0
    done = ctypes.c_size_t()
    rate, channels, encoding = ctypes.c_long(), ctypes.c_int(), ctypes.c_int()
    known_format = False
    code = _NEED_MORE
    while code == _NEED_MORE:
        block = file.read(FEED_BYTES)
        if not block:
            break  # every byte fed and decoded
        code = lib.mpg123_feed(handle, block, len(block))
        if code != _OK:
            break
        if not known_format:
            code = lib.mpg123_getformat(handle, ctypes.byref(rate), ctypes.byref(channels), ctypes.byref(encoding))
            if code == _NEED_MORE:
                continue  # no whole frame yet (a large ID3v2 tag with cover art, say)
            if min_rate and (code != _OK or rate.value < min_rate):
                return None
            if code != _OK:
                break
            known_format = True
        while True:
            if n == out.shape[0]:
                out.resize(2 * n, refcheck=False)  # realloc; nothing else refers to the buffer
            code = lib.mpg123_read(handle, out.ctypes.data + n * out.itemsize, (out.shape[0] - n) * out.itemsize,
                                   ctypes.byref(done))
            n += done.value // out.itemsize
            if code not in (_OK, _NEW_FORMAT):
                break
    if n == 0 and code not in (_OK, _NEED_MORE):
        raise UnreadableAudioError(path, f"decoder: {_error(lib, handle, code)}")
    if not known_format:
        raise UnreadableAudioError(path, "libmpg123: no MPEG audio frame in the file")
    out.resize(n, refcheck=False)  # shrinks in place
    return out, int(rate.value)


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


def _decode_once(lib: ctypes.CDLL, path: Path, *, down_sample: int, min_rate: int) -> tuple[np.ndarray, int] | None:
    """Decode at 1/2**down_sample of the file's rate; None when that rate is below ``min_rate``."""
    error = ctypes.c_int()
    handle = lib.mpg123_new(None, ctypes.byref(error))
    if not handle:
        raise UnreadableAudioError(path, f"decoder: {_error(lib, 0, error.value)}")
    try:
        _configure(lib, handle, path=path, down_sample=down_sample)
        code = lib.mpg123_open_feed(handle)
        if code != _OK:
            raise UnreadableAudioError(path, f"decoder: {_error(lib, handle, code)}")
        try:
            with path.open("rb") as file:
                return _feed_and_read(lib, handle, file, path=path, min_rate=min_rate)
        finally:
            lib.mpg123_close(handle)
    finally:
        lib.mpg123_delete(handle)


def decode_mono(path: Path, *, min_rate: int | None = None) -> tuple[np.ndarray, int]:
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
    lib = _library()
    if lib is None:
        raise UnreadableAudioError(path, "libmpg123 is not installed")
    if not _starts_like_mpeg(path):
        raise UnreadableAudioError(path, "libmpg123: no ID3 tag or MPEG frame at the start of the file")
    for down_sample in _down_sample_factors(min_rate):
        decoded = _decode_once(lib, path, down_sample=down_sample, min_rate=min_rate if down_sample else 0)
        if decoded is not None:
            break
    y, rate = decoded
    if y.shape[0] == 0:
        raise UnreadableAudioError(path, "no audio frames decoded")
    if not np.isfinite(y).all():
        raise UnreadableAudioError(path, "decoded samples are not finite")
    return y, rate
