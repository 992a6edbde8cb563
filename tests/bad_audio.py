"""A generated corpus of malformed and extreme audio files (issue 25, "bad audio at large").

:data:`CORPUS` lists, and :func:`write_corpus` writes into one folder, every kind of input that
feature extraction (``make features`` on a folder: :func:`common.features.folder_items`) and the
zero-shot submission (every ``*.mp3`` of a test folder) must survive: random bytes named
``.mp3``, an mp3 cut after every KiB of its first 64 KiB, an ID3v2 tag and nothing else, ID3v2
tags larger than a feed block and larger than the whole file, a WAV named ``.mp3``, an empty
file, an 8-kHz mono mp3, a 96-kHz six-channel FLAC (mp3 has neither), two mp3 streams of
different sampling rates concatenated, and a 30-minute mp3. Each file is either decoded or an
:class:`~common.errors.AudioError`; :attr:`BadFile.outcome` says which.

The mp3s come from lameenc, the encoder of :mod:`common.demo_data`. The 30-minute file is one
encoded minute (8-kHz mono, 8 kbit/s) repeated 30 times: every repetition is a complete LAME
stream whose first frame does not reach back into the bit reservoir, so the frames form one
valid 30-minute mp3 of 1.8 MB, written in a fraction of a second. The corpus is 6.3 MB (the
truncated copies 2.1 MB, the large ID3 tag 1.2 MB), written in ~0.6 s.

:func:`use_decoder` picks which of the two mp3 decoders a test goes through. Nothing is written at
import time; ``tests/test_bad_audio.py`` writes the corpus once per session.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lameenc
import numpy as np
import pytest
import soundfile as sf

from common import mp3

#: Every truncated copy of :data:`TRUNCATED_SOURCE` is this many bytes longer than the previous one ...
TRUNCATION_STEP = 1024
#: ... up to this length.
TRUNCATION_LIMIT = 64 * 1024
#: Length of the 30-minute file, in seconds.
LONG_SECONDS = 30 * 60
#: Sample rate and bit rate of the 30-minute file (LAME encodes 8 kbit/s at 8 kHz whatever its input).
LONG_RATE, LONG_KBPS = 8000, 8
#: Item id of the 30-minute file.
LONG = "thirty_minutes"
#: Item id of the complete mp3 the truncated files are cut from: 44.1-kHz stereo, 128 kbit/s,
#: :data:`SOURCE_SECONDS` long, behind an ID3v2 tag of :data:`SOURCE_TAG_BYTES`.
TRUNCATED_SOURCE = "complete"
SOURCE_SECONDS = 6.0
SOURCE_TAG_BYTES = 1528
#: Decoded length of every file that :attr:`BadFile.outcome` calls ``"ok"``: at least this many
#: seconds, so the outcomes hold for feature settings whose ``min_seconds`` is at most this.
MIN_DECODED_SECONDS = 2.0
#: Declared size of the ID3v2 tag that claims more than the file holds: the largest a tag can declare.
ID3_MAX_DECLARED_BYTES = (1 << 28) - 1
#: The two ways mp3s are decoded (:func:`use_decoder`).
DECODERS = ("libmpg123", "soundfile")


def use_decoder(decoder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode mp3s through ``decoder`` for the rest of a test.

    Parameters
    ----------
    decoder : {"libmpg123", "soundfile"}
        "libmpg123": the system library (the test is skipped where it is not installed);
        "soundfile": ``common.mp3.available`` patched to False, as on a machine without it.
    monkeypatch : pytest.MonkeyPatch
    """
    if decoder == "soundfile":
        monkeypatch.setattr(mp3, "available", lambda: False)
    elif not mp3.available():
        pytest.skip("the system libmpg123 is not installed (Debian/Ubuntu: libmpg123-0)")


@dataclasses.dataclass(frozen=True)
class BadFile:
    """One file of the corpus.

    Attributes
    ----------
    name : str
        File name in the corpus folder; its stem is the item id of :func:`common.features.folder_items`.
    what : str
        What the file is.
    outcome : str or None
        ``"ok"`` (decodes to at least :data:`MIN_DECODED_SECONDS` of sound) or the ``reason`` of
        the :class:`~common.errors.AudioError` it must raise; None for the truncated mp3s, whose
        outcome depends on how much of them decodes (``ok``, ``too_short`` or ``unreadable``).
    truncated_at : int or None
        Bytes of :data:`TRUNCATED_SOURCE` the file holds, for a truncated copy.
    """

    name: str
    what: str
    outcome: str | None
    truncated_at: int | None = None


def _truncated(cut: int) -> BadFile:
    return BadFile(f"truncated_{cut // 1024:02d}kib.mp3", f"{TRUNCATED_SOURCE}.mp3 cut after {cut // 1024} KiB",
                   None, cut)


#: Every file of the corpus by item id (file stem), in name order.
CORPUS: dict[str, BadFile] = {Path(bad.name).stem: bad for bad in sorted([
    BadFile(f"{TRUNCATED_SOURCE}.mp3", f"44.1-kHz stereo 128-kbit/s mp3 with an ID3v2 tag, {SOURCE_SECONDS:g} s",
            "ok"),
    BadFile("random_bytes.mp3", "64 KiB of random bytes", "unreadable"),
    BadFile("random_after_sync.mp3", "an MPEG frame header, then 64 KiB of random bytes", "unreadable"),
    BadFile("zero_bytes.mp3", "an empty file", "unreadable"),
    BadFile("id3_only.mp3", "an ID3v2 tag and no audio", "unreadable"),
    BadFile("id3_past_end.mp3", "an ID3v2 tag declaring 256 MiB, then 6 s of mp3", "unreadable"),
    BadFile("id3_large.mp3", "a 1.1-MiB ID3v2 tag (cover art larger than a feed block), then 6 s of mp3", "ok"),
    BadFile("wav_named.mp3", "22.05-kHz stereo WAV named .mp3, 2.5 s", "ok"),
    BadFile("mono_8k.mp3", "8-kHz mono 32-kbit/s mp3, 4 s", "ok"),
    BadFile("six_channel_96k.flac", "96-kHz six-channel FLAC, 2.5 s", "ok"),
    BadFile("rate_change.mp3", "6 s of 44.1-kHz stereo mp3, then 4 s of 48-kHz mono mp3 (two streams)", "ok"),
    BadFile(f"{LONG}.mp3", f"{LONG_RATE // 1000}-kHz mono {LONG_KBPS}-kbit/s mp3, {LONG_SECONDS // 60} min", "ok"),
    *(_truncated(cut) for cut in range(TRUNCATION_STEP, TRUNCATION_LIMIT + 1, TRUNCATION_STEP)),
], key=lambda bad: bad.name)}


def chirp_signal(seconds: float, *, rate: int, channels: int = 1, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """A seeded chirp with white noise, loud enough for any silence threshold.

    Returns
    -------
    np.ndarray, shape (n, channels), float64
        ``n = round(seconds * rate)``; channel ``k`` is scaled by ``1 - 0.1 k``.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    top = min(2000.0, rate / 4)
    y = 0.3 * np.sin(2 * np.pi * (100.0 + (top - 100.0) * t / (2 * seconds)) * t)
    y += noise * rng.standard_normal(t.size)
    return y[:, None] * (1.0 - 0.1 * np.arange(channels))[None, :]


def encode_mp3(y: np.ndarray, *, rate: int, kbps: int) -> bytes:
    """Encode ``y`` with lameenc (constant bit rate, no Xing/LAME header), as :mod:`common.demo_data` does.

    Parameters
    ----------
    y : np.ndarray, shape (n, channels)
        Samples in [-1, 1]; 1 or 2 channels.
    rate : int
        Input rate in Hz (LAME may encode at a lower one for a low ``kbps``).
    kbps : int
        Bit rate in kbit/s.

    Returns
    -------
    bytes
    """
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(kbps)
    encoder.set_in_sample_rate(rate)
    encoder.set_channels(y.shape[1])
    encoder.set_quality(7)
    pcm = np.round(np.clip(y, -1.0, 1.0) * 32767).astype("<i2")
    return bytes(encoder.encode(pcm.tobytes()) + encoder.flush())


def id3v2_tag(*, picture_bytes: int = 0, padding: int = 256, declared_size: int | None = None) -> bytes:
    """An ID3v2.3 tag: a title, optionally a (random) cover picture, then zero padding.

    Parameters
    ----------
    picture_bytes : int
        Size of the APIC frame's picture (0: no picture).
    padding : int
        Zero bytes after the frames.
    declared_size : int, optional
        Size written in the header (default: the true size of frames and padding); at most
        :data:`ID3_MAX_DECLARED_BYTES` (28 bits, "syncsafe").

    Returns
    -------
    bytes
    """
    def frame(name: bytes, body: bytes) -> bytes:
        return name + len(body).to_bytes(4, "big") + b"\x00\x00" + body

    frames = frame(b"TIT2", b"\x00A title")
    if picture_bytes:
        picture = np.random.default_rng(2).integers(0, 256, picture_bytes, dtype=np.uint8).tobytes()
        frames += frame(b"APIC", b"\x00image/jpeg\x00\x03\x00" + picture)
    size = len(frames) + padding if declared_size is None else declared_size
    syncsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x03\x00\x00" + syncsafe + frames + bytes(padding)


def _long_mp3() -> bytes:
    """:data:`LONG_SECONDS` of 8-kHz mono mp3: one encoded minute, repeated."""
    minute = encode_mp3(chirp_signal(60.0, rate=LONG_RATE, seed=3), rate=LONG_RATE, kbps=LONG_KBPS)
    return minute * (LONG_SECONDS // 60)


def write_corpus(folder: str | Path) -> Path:
    """Write every file of :data:`CORPUS` into ``folder`` (created if needed).

    Parameters
    ----------
    folder : path-like

    Returns
    -------
    Path
        ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(25)
    stereo = encode_mp3(chirp_signal(SOURCE_SECONDS, rate=44100, channels=2), rate=44100, kbps=128)
    source = id3v2_tag(padding=1500) + stereo  # the first truncation ends inside the tag
    assert len(source) - len(stereo) == SOURCE_TAG_BYTES
    sf.write(folder / CORPUS["wav_named"].name, chirp_signal(2.5, rate=22050, channels=2), 22050,
             format="WAV", subtype="PCM_16")
    sf.write(folder / CORPUS["six_channel_96k"].name, chirp_signal(2.5, rate=96000, channels=6, noise=0.0), 96000,
             format="FLAC", subtype="PCM_16")
    contents = {
        TRUNCATED_SOURCE: source,
        "random_bytes": rng.bytes(64 * 1024),
        "random_after_sync": b"\xff\xfb\x90\x64" + rng.bytes(64 * 1024),
        "zero_bytes": b"",
        "id3_only": source[:SOURCE_TAG_BYTES],
        "id3_past_end": id3v2_tag(declared_size=ID3_MAX_DECLARED_BYTES) + stereo,
        "id3_large": id3v2_tag(picture_bytes=(1 << 20) + 65536) + stereo,
        "mono_8k": encode_mp3(chirp_signal(4.0, rate=8000, seed=1), rate=8000, kbps=32),
        "rate_change": stereo + encode_mp3(chirp_signal(4.0, rate=48000, seed=2), rate=48000, kbps=64),
        LONG: _long_mp3(),
        **{stem: source[:bad.truncated_at] for stem, bad in CORPUS.items() if bad.truncated_at is not None},
    }
    for stem, data in contents.items():
        (folder / CORPUS[stem].name).write_bytes(data)
    return folder
