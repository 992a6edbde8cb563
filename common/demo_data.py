"""Generated mini-FMA: a small, deterministic stand-in for the real download.

``generate_demo_dataset`` writes, under ``out_dir``::

    fma_metadata/tracks.csv            real three-row header, all 52 columns
    fma_metadata/genres.csv            genre_id,#tracks,parent,title,top_level
    fma_small/NNN/NNNNNN.mp3           44.1 kHz stereo mp3 (lameenc) of subset small
    fma_large/NNN/NNNNNN.mp3           every track: copies of fma_small's, the medium and large ones
    crowdai_fma_test/<uuid4>.mp3       the crowdAI-style unlabelled test folder
    crowdai_fma_test_labels.csv        file_id,genre (outside the test folder, for scoring)
    demo.json                          parameters, counts and the deliberately broken files

Subsets nest as FMA's do: ``('set', 'subset')`` names the smallest subset a track is in
(``small`` within ``medium`` within ``large``). Subset ``large`` is about half tracks
without a ``genre_top``, as in FMA: the ``large``-only tracks (``n_large``, by default as
many as ``small`` has) all have genres under 2 or 3 top-level genres, an empty
``genre_top`` cell, and audio mixing those genres' styles equally. ``small`` also holds a
few such tracks (``n_tracks // 16``). Each part of the data draws from its own random
stream, so every row of ``tracks.csv`` that the generator wrote before the ``large``-only
tracks were added (format 1), every file of ``fma_small/`` and of the test folder and the
test labels are byte for byte what it wrote then; what changed is the added rows, the
``#tracks`` counts of ``genres.csv`` (which count them too) and ``fma_large/``.

The genre ids, titles and parents come from the real FMA ``genres.csv``
(mdeff/fma, ``fma_metadata/genres.csv``); ``#tracks`` counts the demo's own tracks (all
subsets, as FMA's counts all of FMA).
Each genre has an audio *style* (pitch range, harmonic timbre, attack/decay,
tempo, drum pattern, noise colour, distortion, onset regularity); artists and
sub-genres shift it, and every clip draws its own tempo, notes, pan, gain and
length (``clip_seconds`` +- 10 %), so neither loudness nor duration gives the genre away.

Broken files like those of real FMA are included on purpose: a zero-byte mp3, a
truncated mp3 (cut mid-frame at 15 % of its bytes), a silent clip, a 2-s clip
and a track listed in ``tracks.csv`` whose file is missing; the test folder gets
a silent, a 2-s and a zero-byte file. ``demo.json`` lists them with their kind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import lameenc
import numpy as np
import pandas as pd
import scipy.fft
import soxr
from joblib import Parallel, delayed

from common.cli import command
from common.errors import ToolkitError
from common.io import make_folder
from common.metadata import SPLITS, SUBSETS, TOP_GENRE_IDS, TOP_GENRES, TRACKS_COLUMNS, audio_path, parse_id_list

#: Output audio format (that of FMA's mp3s).
SAMPLE_RATE = 44100
CHANNELS = 2
BIT_RATE_KBPS = 128

#: Rate the signals are synthesised at before resampling to SAMPLE_RATE (halves the cost;
#: the 12-kHz and 22.05-kHz features never see above 11 kHz anyway).
RENDER_RATE = 22050

#: Version of the layout written by this module (stored in demo.json). 2: ``fma_large/`` and
#: the ``large``-only multi-root tracks (the rows and files of version 1 are unchanged).
FORMAT_VERSION = 2

#: Audio folders: ``fma_small/`` holds the ``small`` tracks; ``fma_large/`` every track of
#: ``tracks.csv`` (``small`` ones are copies, as in FMA's archives, where each holds the smaller ones).
SMALL_AUDIO = "fma_small"
LARGE_AUDIO = "fma_large"

#: Track ids are drawn below this (real FMA's go up to 155,320).
MAX_TRACK_ID = 156000

#: Share of tracks whose ``genres`` name a top-level genre itself rather than a sub-genre.
ROOT_ONLY_SHARE = 0.15

#: Share of the ``large``-only multi-root tracks with three roots (the others have two).
THREE_ROOT_SHARE = 0.25

#: Durations of the deliberately short clips.
SHORT_SECONDS = 2.0

#: Fraction of an mp3's bytes kept in the truncated file (the cut lands mid-frame).
TRUNCATE_FRACTION = 0.15

#: Samples in the one-period wavetable of harmonic notes.
_TABLE_SIZE = 2048

#: Rows of the real FMA genres.csv used by the demo: (genre_id, parent, title, top_level).
#: All 16 top-level genres, plus the sub-genres the demo's tracks carry and their parents.
GENRE_TREE: tuple[tuple[int, int, str, int], ...] = (
    *((gid, 0, title, gid) for title, gid in TOP_GENRE_IDS.items()),
    (181, 15, "Techno", 15), (236, 15, "IDM", 15), (297, 15, "Chip Music", 15),
    (240, 297, "Chiptune", 15),
    (25, 12, "Punk", 12), (66, 12, "Indie-Rock", 12), (31, 12, "Metal", 12),
    (539, 21, "Rap", 21), (100, 21, "Alternative Hip-Hop", 21),
    (103, 17, "Singer-Songwriter", 17), (49, 17, "Free-Folk", 17),
    (659, 5, "Contemporary Classical", 5), (442, 5, "Chamber Music", 5),
    (74, 4, "Free-Jazz", 4), (906, 4, "Modern Jazz", 4),
    (32, 38, "Noise", 38), (47, 38, "Drone", 38),
    (362, 10, "Synth Pop", 10), (76, 10, "Experimental Pop", 10),
)

_PARENT = {gid: parent for gid, parent, _, _ in GENRE_TREE}

#: Broken kinds written into fma_small/ and into the test folder.
TRAIN_BROKEN_KINDS: tuple[str, ...] = ("zero_byte", "truncated", "silent", "too_short", "missing")
TEST_BROKEN_KINDS: tuple[str, ...] = ("silent", "too_short", "zero_byte")

_OUTPUTS = ("fma_metadata", SMALL_AUDIO, LARGE_AUDIO, "crowdai_fma_test", "crowdai_fma_test_labels.csv",
            "demo.json")


@dataclass(frozen=True)
class GenreStyle:
    """How one top-level genre sounds.

    Pitches are MIDI numbers; times in seconds; levels relative to the tonal part.
    """

    subgenres: tuple[int, ...]
    midi_range: tuple[int, int]
    harmonics: int
    rolloff: float
    odd_only: bool
    inharmonic: float
    attack: float
    decay: float
    legato: float
    tempo: tuple[float, float]
    notes_per_beat: int
    density: float
    jitter: float
    swing: float
    kick: float
    snare: float
    hat: float
    noise_alpha: float
    noise_level: float
    drive: float
    vibrato: float


#: Styles of the demo's top-level genres (titles from TOP_GENRES).
STYLES: dict[str, GenreStyle] = {
    "Classical": GenreStyle((659, 442), (48, 84), 10, 1.3, False, 0.0, 0.08, 1.2, 2.5,
                            (60, 84), 1, 0.9, 0.02, 0.0, 0.0, 0.0, 0.0, 1.0, 0.02, 0.0, 0.15),
    "Electronic": GenreStyle((181, 236, 240), (36, 72), 14, 1.0, False, 0.0, 0.005, 0.15, 1.0,
                             (120, 135), 4, 0.7, 0.0, 0.0, 1.0, 0.3, 0.5, 0.0, 0.01, 0.0, 0.0),
    "Rock": GenreStyle((25, 66, 31), (40, 64), 8, 0.8, False, 0.0, 0.01, 0.5, 1.2,
                       (110, 150), 2, 0.85, 0.01, 0.0, 0.8, 0.8, 0.4, 1.0, 0.03, 4.0, 0.0),
    "Hip-Hop": GenreStyle((539, 100), (30, 55), 4, 2.0, False, 0.0, 0.01, 0.3, 1.0,
                          (80, 98), 2, 0.5, 0.01, 0.1, 1.2, 0.9, 0.3, 2.0, 0.03, 0.0, 0.0),
    "Folk": GenreStyle((103, 49), (50, 76), 6, 1.5, False, 0.0, 0.002, 0.35, 1.5,
                       (90, 120), 2, 0.8, 0.02, 0.0, 0.0, 0.0, 0.0, 1.0, 0.015, 0.0, 0.02),
    "Jazz": GenreStyle((74, 906), (40, 79), 5, 1.8, False, 0.0, 0.01, 0.6, 1.2,
                       (100, 180), 2, 0.75, 0.03, 0.33, 0.2, 0.1, 0.35, 1.0, 0.01, 0.0, 0.05),
    "Experimental": GenreStyle((32, 47), (24, 96), 3, 0.7, False, 0.35, 0.3, 2.0, 3.0,
                               (40, 200), 1, 0.4, 0.5, 0.0, 0.0, 0.0, 0.0, 2.0, 0.25, 1.5, 0.0),
    "Pop": GenreStyle((362, 76), (55, 79), 7, 1.0, True, 0.0, 0.01, 0.25, 1.2,
                      (100, 128), 2, 0.8, 0.01, 0.0, 0.9, 0.7, 0.3, 1.0, 0.01, 0.0, 0.05),
}

DEMO_GENRES: tuple[str, ...] = tuple(g for g in TOP_GENRES if g in STYLES)

_LICENSES = ("Attribution-NonCommercial-ShareAlike 3.0 International",
             "Attribution-NonCommercial-NoDerivatives (aka Music Sharing) 3.0 International",
             "Attribution 4.0 International")
_WORDS = ("Velvet", "Owl", "Static", "River", "Neon", "Paper", "Ghost", "Copper", "Lantern",
          "Hollow", "Signal", "Meadow", "Orbit", "Cinder", "Harbor", "Quiet", "Rust", "Echo")
_TAGS = ("lo-fi", "live", "field", "demo", "vinyl", "remix", "instrumental", "diy")


# --------------------------------------------------------------------------- audio


def _coloured_noise(n: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Noise of power spectrum ~ 1/f**alpha, unit RMS, shape (n,).

    Shaped on the next FFT-friendly length (clip lengths vary at random, and a length with
    large prime factors makes the FFT many times slower), then cut to ``n``.
    """
    size = scipy.fft.next_fast_len(n, real=True)
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.fft.rfftfreq(size)
    freqs[0] = freqs[1]
    noise = np.fft.irfft(spectrum * freqs ** (-alpha / 2.0), size)[:n]
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def _place(y: np.ndarray, event: np.ndarray, start: int) -> None:
    """Add ``event`` into ``y`` at sample ``start`` (clipped at the end)."""
    end = min(len(y), start + len(event))
    if start < end:
        y[start:end] += event[: end - start]


def _note(freq: float, seconds: float, style: GenreStyle, rolloff: float,
          rng: np.random.Generator) -> np.ndarray:
    """One harmonic note with attack/decay envelope and vibrato, shape (n,).

    Harmonic notes are read from a one-period wavetable (fast); inharmonic ones
    (``style.inharmonic > 0``) sum their few partials directly.
    """
    t = np.arange(int(seconds * RENDER_RATE)) / RENDER_RATE
    k = np.arange(1, style.harmonics + 1, dtype=float)
    if style.odd_only:
        k = 2 * k - 1
    k = k[freq * k < 0.45 * RENDER_RATE]
    amps = k ** -rolloff
    offsets = rng.uniform(0, 2 * np.pi, len(k))
    cycles = freq * t
    if style.vibrato:
        bend = 2 ** (style.vibrato * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t) / 12) - 1
        cycles = cycles + freq * np.cumsum(bend) / RENDER_RATE
    if style.inharmonic:
        ratios = k ** (1.0 + style.inharmonic * rng.uniform(0.5, 1.5))
        tone = np.sin(2 * np.pi * cycles[:, None] * ratios[None, :] + offsets) @ amps
    else:
        grid = np.arange(_TABLE_SIZE + 1) / _TABLE_SIZE
        table = np.sin(2 * np.pi * grid[:, None] * k[None, :] + offsets) @ amps
        tone = np.interp(cycles % 1.0 * _TABLE_SIZE, np.arange(_TABLE_SIZE + 1), table)
    envelope = np.minimum(t / style.attack, 1.0) * np.exp(-t / style.decay)
    return tone * envelope / amps.sum()


def _drum(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A kick (pitch sweep), snare (noise + body) or hi-hat (differenced noise)."""
    t = np.arange(int((0.3 if kind == "kick" else 0.15) * RENDER_RATE)) / RENDER_RATE
    if kind == "kick":
        freq = 45 + 110 * np.exp(-t / 0.03)
        return np.sin(2 * np.pi * np.cumsum(freq) / RENDER_RATE) * np.exp(-t / 0.12)
    noise = rng.standard_normal(len(t))
    if kind == "snare":
        return (0.7 * noise + 0.5 * np.sin(2 * np.pi * 190 * t)) * np.exp(-t / 0.06)
    return np.diff(noise, prepend=0.0) * 0.5 * np.exp(-t / 0.02)


def _render_style(style: GenreStyle, *, sub_index: int, artist: dict, n: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Mono rendering of one genre style, unit RMS, shape (n,)."""
    tempo = rng.uniform(*style.tempo) * artist["tempo"] * (0.9, 1.0, 1.12)[sub_index]
    step = 60.0 / tempo / style.notes_per_beat
    rolloff = style.rolloff + (0.3, 0.0, -0.3)[sub_index] + artist["brightness"]
    low, high = style.midi_range
    shift = artist["transpose"] + (-4, 0, 4)[sub_index]
    tonal = np.zeros(n)
    n_steps = int(n / RENDER_RATE / step) + 1
    for i in np.flatnonzero(rng.random(n_steps) < style.density):
        swing = style.swing * step if i % 2 else 0.0
        onset = (i + rng.normal(0, style.jitter)) * step + swing
        midi = np.clip(rng.integers(low, high + 1) + shift, 12, 108)
        freq = 440.0 * 2 ** ((midi - 69) / 12)
        note = _note(freq, step * style.legato * rng.uniform(0.8, 1.6), style, rolloff, rng)
        _place(tonal, note * rng.uniform(0.5, 1.0), max(0, int(onset * RENDER_RATE)))
    if style.drive:
        tonal = np.tanh(style.drive * tonal / (np.abs(tonal).max() + 1e-12))
    y = tonal / (np.sqrt(np.mean(tonal ** 2)) + 1e-12)
    beat = step * style.notes_per_beat
    kick, snare, hat = (_drum(kind, rng) for kind in ("kick", "snare", "hat"))
    for b in range(int(n / RENDER_RATE / beat) + 1):
        start = int(b * beat * RENDER_RATE)
        accent = rng.uniform(0.7, 1.0)
        if style.kick and (b % 2 == 0 or style.snare < 0.5):
            _place(y, style.kick * accent * kick, start)
        if style.snare and b % 2 == 1:
            _place(y, style.snare * accent * snare, start)
        if style.hat:
            for half in (0.0, 0.5 + style.swing / 2):
                _place(y, style.hat * accent * hat, start + int(half * beat * RENDER_RATE))
    y = y + style.noise_level * artist["noise"] * 4 * _coloured_noise(n, style.noise_alpha, rng)
    return y / (np.sqrt(np.mean(y ** 2)) + 1e-12)


def render_clip(spec: dict) -> np.ndarray:
    """Render the stereo clip a spec describes.

    Parameters
    ----------
    spec : dict
        ``genres``: list of (top-level title, sub-genre index) pairs mixed equally;
        ``artist``: dict with ``transpose``, ``tempo``, ``brightness``, ``noise``;
        ``seconds``; ``seed`` (list of int); ``silent`` (bool).

    Returns
    -------
    np.ndarray, shape (n_samples, 2), float32 in [-1, 1]
    """
    rng = np.random.default_rng(spec["seed"])
    n = int(round(spec["seconds"] * SAMPLE_RATE))
    if spec.get("silent"):
        return np.zeros((n, CHANNELS), dtype=np.float32)
    n_render = int(round(spec["seconds"] * RENDER_RATE))
    mono = sum(_render_style(STYLES[title], sub_index=sub, artist=spec["artist"], n=n_render,
                             rng=rng)
               for title, sub in spec["genres"])
    mono = soxr.resample(mono, RENDER_RATE, SAMPLE_RATE)[:n]
    mono = np.pad(mono, (0, n - len(mono)))
    mono = mono / (np.abs(mono).max() + 1e-12) * 10 ** (rng.uniform(-20.0, -1.0) / 20)
    angle = np.pi / 4 + rng.uniform(-0.3, 0.3)
    delay = int(rng.integers(0, 24))
    right = np.concatenate([np.zeros(delay), mono[: n - delay]])
    return np.stack([mono * np.cos(angle), right * np.sin(angle)], axis=1).astype(np.float32)


def encode_mp3(y: np.ndarray) -> bytes:
    """Encode a (n, 2) float clip at 44.1 kHz as CBR mp3 (deterministic bytes)."""
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(BIT_RATE_KBPS)
    encoder.set_in_sample_rate(SAMPLE_RATE)
    encoder.set_channels(CHANNELS)
    encoder.set_quality(7)
    pcm = np.round(np.clip(y, -1.0, 1.0) * 32767).astype("<i2")
    return bytes(encoder.encode(pcm.tobytes()) + encoder.flush())


def _write_clip(spec: dict, path: Path) -> None:
    """Render, encode and write one file, breaking it as ``spec['broken']`` asks."""
    broken = spec.get("broken")
    if broken == "missing":
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"" if broken == "zero_byte" else encode_mp3(render_clip(spec))
    if broken == "truncated":
        data = data[: int(len(data) * TRUNCATE_FRACTION) + 211]
    path.write_bytes(data)


# --------------------------------------------------------------------------- metadata


def _ancestors(genre_id: int) -> list[int]:
    chain = []
    while genre_id:
        chain.append(genre_id)
        genre_id = _PARENT[genre_id]
    return chain


def _name(rng: np.random.Generator, words: int = 2) -> str:
    return " ".join(rng.choice(_WORDS, size=words, replace=False))


def _date(rng: np.random.Generator, start: str = "2008-11-25", days: int = 3000) -> str:
    moment = pd.Timestamp(start) + pd.Timedelta(seconds=int(rng.integers(0, days * 86400)))
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _artist_table(rng: np.random.Generator, genre_counts: dict[str, int]) -> list[dict]:
    """Artists per genre with their audio traits and official split (artist-filtered)."""
    ids = iter(rng.choice(np.arange(1, 25000), size=sum(
        max(3, round(c / 5)) for c in genre_counts.values()), replace=False))
    artists = []
    for genre, count in genre_counts.items():
        n_artists = max(3, round(count / 5))
        n_held = max(1, round(0.1 * n_artists))
        splits = ["validation"] * n_held + ["test"] * n_held + ["training"] * (n_artists - 2 * n_held)
        for split in splits:
            artists.append({
                "id": int(next(ids)), "genre": genre, "split": split, "name": _name(rng),
                "traits": {"transpose": int(rng.integers(-3, 4)), "tempo": rng.uniform(0.95, 1.05),
                           "brightness": rng.uniform(-0.2, 0.2), "noise": rng.uniform(0.5, 1.5)},
            })
    return artists


def _track_row(rng: np.random.Generator, *, track_id: int, artist: dict, genres: list[int],
               genre_top: str, subset: str, seconds: float) -> dict:
    """All 52 cells of one tracks.csv row, with FMA's quirks (lists, dates, blanks)."""
    genres_all = sorted({a for g in genres for a in _ancestors(g)})
    tags = [str(t) for t in rng.choice(_TAGS, size=int(rng.integers(0, 3)), replace=False)]
    album_id = artist["id"] * 3 + int(rng.integers(0, 2))
    row: dict[tuple[str, str], object] = {column: "" for column in TRACKS_COLUMNS}
    row.update({
        ("album", "comments"): int(rng.integers(0, 3)),
        ("album", "date_created"): _date(rng),
        ("album", "date_released"): _date(rng, "2005-01-01") if rng.random() < 0.6 else "",
        ("album", "favorites"): int(rng.integers(0, 20)),
        ("album", "id"): album_id,
        ("album", "information"): "<p></p>" if rng.random() < 0.5 else "",
        ("album", "listens"): int(rng.integers(100, 50000)),
        ("album", "tags"): "[]",
        ("album", "title"): _name(rng),
        ("album", "tracks"): int(rng.integers(1, 15)),
        ("album", "type"): "Album" if rng.random() < 0.7 else "Single Tracks",
        ("artist", "active_year_begin"): _date(rng, "1990-01-01") if rng.random() < 0.3 else "",
        ("artist", "bio"): f"<p>{artist['name']} make {artist['genre'].lower()} music.</p>",
        ("artist", "comments"): int(rng.integers(0, 3)),
        ("artist", "date_created"): _date(rng, "2008-11-25", 300),
        ("artist", "favorites"): int(rng.integers(0, 50)),
        ("artist", "id"): artist["id"],
        ("artist", "latitude"): round(float(rng.uniform(-40, 60)), 6) if rng.random() < 0.5 else "",
        ("artist", "location"): "Brooklyn, NY" if rng.random() < 0.3 else "",
        ("artist", "longitude"): round(float(rng.uniform(-120, 30)), 6) if rng.random() < 0.5 else "",
        ("artist", "name"): artist["name"],
        ("artist", "tags"): str([artist["name"].lower()]),
        ("artist", "website"): f"http://{artist['name'].replace(' ', '').lower()}.example.org",
        ("set", "split"): artist["split"],
        ("set", "subset"): subset,
        ("track", "bit_rate"): int(rng.choice([128000, 192000, 256000, 320000])),
        ("track", "comments"): 0,
        ("track", "date_created"): _date(rng),
        ("track", "date_recorded"): _date(rng, "2000-01-01") if rng.random() < 0.2 else "",
        ("track", "duration"): int(round(seconds)),
        ("track", "favorites"): int(rng.integers(0, 10)),
        ("track", "genre_top"): genre_top,
        ("track", "genres"): str(genres),
        ("track", "genres_all"): str(genres_all),
        ("track", "interest"): int(rng.integers(10, 20000)),
        ("track", "language_code"): "en" if rng.random() < 0.4 else "",
        ("track", "license"): str(rng.choice(_LICENSES)),
        ("track", "listens"): int(rng.integers(10, 10000)),
        ("track", "number"): int(rng.integers(1, 12)),
        ("track", "tags"): str(tags),
        ("track", "title"): _name(rng, 3),
    })
    return row


def _plan(*, n_tracks: int, n_test: int, n_large: int, clip_seconds: float, seed: int):
    """Decide every track, file and broken kind; no audio is rendered here.

    Each part draws from its own random stream (``[seed, 0]`` for the ``small`` tracks and
    the ``medium``/``large`` rows among them, ``[seed, 2]`` for the test folder,
    ``[seed, 5]`` for the multi-root tracks of :func:`_plan_multi_root`), so a part added
    later changes none of the others.

    Returns
    -------
    rows : list of (int, dict)
        ``(track_id, row)`` of every ``tracks.csv`` row (:func:`_track_row`).
    specs : list of dict
        One per audio file to write (:func:`render_clip`, plus ``path``, ``id``, ``broken``).
    labels : list of (str, str)
        ``(file_id, genre)`` of the test folder.
    """
    rng = np.random.default_rng([seed, 0])
    genre_counts = {g: n_tracks // len(DEMO_GENRES) + (i < n_tracks % len(DEMO_GENRES))
                    for i, g in enumerate(DEMO_GENRES)}
    artists = _artist_table(rng, genre_counts)
    by_genre = {g: [a for a in artists if a["genre"] == g] for g in DEMO_GENRES}
    n_extra = max(3, n_tracks // 16)
    track_ids = np.sort(rng.choice(np.arange(2, MAX_TRACK_ID), size=n_tracks + n_extra, replace=False))
    order = rng.permutation(n_tracks + n_extra)
    titles = [g for g, c in genre_counts.items() for _ in range(c)]
    titles += [str(g) for g in rng.choice(DEMO_GENRES, size=n_extra)]
    n_multi = max(2, n_tracks // 16)
    candidates = [i for i in range(n_tracks)]
    broken_idx = rng.choice(candidates, size=len(TRAIN_BROKEN_KINDS), replace=False)
    multi_idx = set(rng.choice(sorted(set(candidates) - set(broken_idx)), size=n_multi,
                               replace=False).tolist())
    broken_of = dict(zip(broken_idx.tolist(), TRAIN_BROKEN_KINDS))

    rows, specs = [], []
    for i, title in enumerate(titles):
        track_id = int(track_ids[order[i]])
        pool = by_genre[title]
        # every artist gets tracks: deal them round-robin, then at random
        artist = pool[i % len(pool)] if i < n_tracks else pool[int(rng.integers(len(pool)))]
        style = STYLES[title]
        sub = int(rng.integers(len(style.subgenres)))
        mix = [(title, sub)]
        r = rng.random()
        genres = [TOP_GENRE_IDS[title]] if r < ROOT_ONLY_SHARE else [style.subgenres[sub]]
        if r > 0.9:
            other = (sub + 1) % len(style.subgenres)
            genres.append(style.subgenres[other])
        genre_top = title
        if i in multi_idx:
            second = DEMO_GENRES[(DEMO_GENRES.index(title) + 1 + int(rng.integers(
                len(DEMO_GENRES) - 1))) % len(DEMO_GENRES)]
            sub2 = int(rng.integers(len(STYLES[second].subgenres)))
            genres.append(STYLES[second].subgenres[sub2])
            mix.append((second, sub2))
            genre_top = ""
        kind = broken_of.get(i)
        seconds = SHORT_SECONDS if kind == "too_short" else round(
            clip_seconds * rng.uniform(0.9, 1.1), 3)
        subset = "small" if i < n_tracks else ("large" if (i - n_tracks) % 3 == 2 else "medium")
        rows.append((track_id, _track_row(rng, track_id=track_id, artist=artist, genres=genres,
                                          genre_top=genre_top, subset=subset, seconds=seconds)))
        specs.append({"path": audio_path(SMALL_AUDIO if subset == "small" else LARGE_AUDIO, track_id).as_posix(),
                      "id": str(track_id), "genres": mix, "artist": artist["traits"],
                      "seconds": seconds, "seed": [seed, 1, i], "silent": kind == "silent",
                      "broken": kind})

    test_rng = np.random.default_rng([seed, 2])
    test_artists = [{"genre": g, "traits": {
        "transpose": int(test_rng.integers(-3, 4)), "tempo": test_rng.uniform(0.95, 1.05),
        "brightness": test_rng.uniform(-0.2, 0.2), "noise": test_rng.uniform(0.5, 1.5)}}
        for g in DEMO_GENRES for _ in range(2)]
    test_broken = dict(zip(test_rng.choice(n_test, size=len(TEST_BROKEN_KINDS), replace=False)
                           .tolist(), TEST_BROKEN_KINDS))
    labels = []
    for j in range(n_test):
        artist = test_artists[int(test_rng.integers(len(test_artists)))]
        title = str(artist["genre"])
        file_id = str(uuid.UUID(bytes=test_rng.bytes(16), version=4))
        kind = test_broken.get(j)
        seconds = SHORT_SECONDS if kind == "too_short" else round(
            clip_seconds * test_rng.uniform(0.9, 1.1), 3)
        sub = int(test_rng.integers(len(STYLES[title].subgenres)))
        specs.append({"path": f"crowdai_fma_test/{file_id}.mp3", "id": file_id,
                      "genres": [(title, sub)], "artist": artist["traits"], "seconds": seconds,
                      "seed": [seed, 3, j], "silent": kind == "silent", "broken": kind})
        labels.append((file_id, title))
    large_rows, large_specs = _plan_multi_root(
        np.random.default_rng([seed, 5]), n_large=n_large, by_genre=by_genre,
        used_ids=track_ids, clip_seconds=clip_seconds, seed=seed)
    return rows + large_rows, specs + large_specs, labels


def _plan_multi_root(rng: np.random.Generator, *, n_large: int, by_genre: dict[str, list[dict]],
                     used_ids: np.ndarray, clip_seconds: float, seed: int) -> tuple[list, list]:
    """The ``large``-only tracks: multi-root tracks without a ``genre_top``, as FMA's.

    Each track takes 2 roots (3 with probability :data:`THREE_ROOT_SHARE`) of
    :data:`DEMO_GENRES`, a sub-genre (or the root itself) of each, and an artist of its
    first root (so artists have tracks with and without a ``genre_top``). Its audio mixes
    the styles of all its roots in equal parts, as the multi-root tracks of ``small`` do,
    so that the uniform soft target over the roots (``task.multi_root: soft``) describes it.
    Track ids are drawn among those ``used_ids`` leaves free.

    Returns
    -------
    rows, specs
        As :func:`_plan`'s, ``n_large`` each; the audio goes to ``fma_large/``.
    """
    free = np.setdiff1d(np.arange(2, MAX_TRACK_ID), used_ids)
    track_ids = np.sort(rng.choice(free, size=n_large, replace=False))
    rows, specs = [], []
    for j, track_id in enumerate(track_ids.tolist()):
        n_roots = 3 if rng.random() < THREE_ROOT_SHARE else 2
        roots = [str(g) for g in rng.choice(DEMO_GENRES, size=n_roots, replace=False)]
        pool = by_genre[roots[0]]
        artist = pool[int(rng.integers(len(pool)))]
        genres, mix = [], []
        for title in roots:
            style = STYLES[title]
            sub = int(rng.integers(len(style.subgenres)))
            genres.append(TOP_GENRE_IDS[title] if rng.random() < ROOT_ONLY_SHARE else style.subgenres[sub])
            mix.append((title, sub))
        seconds = round(clip_seconds * rng.uniform(0.9, 1.1), 3)
        rows.append((track_id, _track_row(rng, track_id=track_id, artist=artist, genres=genres, genre_top="",
                                          subset="large", seconds=seconds)))
        specs.append({"path": audio_path(LARGE_AUDIO, track_id).as_posix(), "id": str(track_id),
                      "genres": mix, "artist": artist["traits"], "seconds": seconds,
                      "seed": [seed, 6, j], "silent": False, "broken": None})
    return rows, specs


def tracks_table(rows: list[tuple[int, dict]]) -> pd.DataFrame:
    """``(track_id, row)`` pairs as a tracks table; ``to_csv`` writes FMA's three-row header."""
    index = pd.Index([tid for tid, _ in rows], name="track_id")
    return pd.DataFrame([row for _, row in rows], index=index,
                        columns=pd.MultiIndex.from_tuples(TRACKS_COLUMNS)).sort_index()


#: Tracks per subset of the real FMA (small within medium within large).
FMA_SUBSET_SIZES: dict[str, int] = {"small": 8000, "medium": 25000, "large": 106574}


def synthetic_tracks(n_rows: int = FMA_SUBSET_SIZES["large"], *, seed: int = 0,
                     distinct_rows: int = 10_000) -> pd.DataFrame:
    """A metadata-only tracks table at FMA scale, for loader tests and benchmarks (no audio).

    ``distinct_rows`` rows are drawn as the demo draws its tracks (all 52 columns, FMA's
    quirks), then repeated under unique track ids to reach ``n_rows``; subsets follow the
    real proportions (:data:`FMA_SUBSET_SIZES`) and every row has a split.

    Returns
    -------
    pandas.DataFrame, shape (n_rows, 52)
        As :func:`tracks_table`; write it with ``to_csv``.
    """
    rng = np.random.default_rng([seed, 4])
    distinct = min(n_rows, distinct_rows)
    counts = {g: distinct // len(DEMO_GENRES) + 1 for g in DEMO_GENRES}
    artists = _artist_table(rng, counts)
    pool = []
    for i in range(distinct):
        artist = artists[i % len(artists)]
        style = STYLES[artist["genre"]]
        genres = [style.subgenres[int(rng.integers(len(style.subgenres)))]]
        pool.append(_track_row(rng, track_id=i, artist=artist, genres=genres, genre_top=artist["genre"],
                               subset="large", seconds=30.0))
    track_ids = np.sort(rng.choice(np.arange(2, 2 * n_rows + 2), size=n_rows, replace=False))
    fraction = np.arange(n_rows) / n_rows
    subsets = np.select([fraction < FMA_SUBSET_SIZES["small"] / FMA_SUBSET_SIZES["large"],
                         fraction < FMA_SUBSET_SIZES["medium"] / FMA_SUBSET_SIZES["large"]],
                        ["small", "medium"], "large")[rng.permutation(n_rows)]
    rows = [(int(tid), {**pool[i % distinct], ("set", "subset"): str(subset)})
            for i, (tid, subset) in enumerate(zip(track_ids, subsets))]
    return tracks_table(rows)


def _genres_table(tracks: pd.DataFrame) -> pd.DataFrame:
    counts = pd.Series([g for cell in tracks[("track", "genres_all")]
                        for g in parse_id_list(cell)]).value_counts()
    table = pd.DataFrame(GENRE_TREE, columns=["genre_id", "parent", "title", "top_level"])
    table.insert(1, "#tracks", [int(counts.get(g, 0)) for g in table["genre_id"]])
    return table.sort_values("genre_id")


# --------------------------------------------------------------------------- driver


def _parameters(n_tracks: int, n_test: int, n_large: int | None, clip_seconds: float, seed: int) -> dict:
    return {"n_tracks": int(n_tracks), "n_test": int(n_test),
            "n_large": int(n_tracks if n_large is None else n_large),
            "clip_seconds": float(clip_seconds), "seed": int(seed)}


def _check_parameters(params: dict) -> None:
    min_tracks = 4 * len(DEMO_GENRES)
    if params["n_tracks"] < min_tracks:
        raise ToolkitError(f"n_tracks={params['n_tracks']}: need at least {min_tracks} "
                           f"({len(DEMO_GENRES)} genres x 3 artists plus broken files)")
    if params["n_test"] < 2 * len(TEST_BROKEN_KINDS):
        raise ToolkitError(f"n_test={params['n_test']}: need at least {2 * len(TEST_BROKEN_KINDS)}")
    if params["n_large"] < 0:
        raise ToolkitError(f"n_large={params['n_large']}: must be at least 0")
    if not 3.0 <= params["clip_seconds"] <= 60.0:
        raise ToolkitError(f"clip_seconds={params['clip_seconds']}: must be within 3..60")


def _existing_outputs(out_dir: Path) -> list[Path]:
    return [out_dir / name for name in _OUTPUTS if (out_dir / name).exists()]


def generate_demo_dataset(out_dir: str | Path, *, n_tracks: int = 320, n_test: int = 48,
                          n_large: int | None = None, clip_seconds: float = 10.0, seed: int = 0,
                          n_jobs: int = -1, force: bool = False) -> dict:
    """Write a mini-FMA (metadata, fma_small and fma_large mp3s, crowdAI-style test folder).

    Parameters
    ----------
    out_dir : path-like
        Destination; becomes the ``--data`` folder of the other commands.
    n_tracks : int
        Tracks of subset ``small`` (with audio); ``n_tracks // 16`` (at least 3) more
        ``medium``/``large`` tracks with a ``genre_top`` exercise subset filtering.
    n_test : int
        Files in ``crowdai_fma_test/``.
    n_large : int or None
        ``large``-only multi-root tracks without a ``genre_top`` (:func:`_plan_multi_root`);
        None: ``n_tracks``, which makes about half of subset ``large`` such tracks, as in FMA.
    clip_seconds : float
        Nominal clip length; each clip draws its length in ``clip_seconds`` +- 10 %.
    seed : int
        Everything (metadata, audio, uuids, mp3 bytes) is a function of the parameters.
    n_jobs : int
        joblib workers for rendering and encoding (-1: all cores).
    force : bool
        Replace the demo outputs already in ``out_dir`` (only the paths this function writes).

    Returns
    -------
    dict
        The content of ``demo.json`` plus ``"reused"``: True when an identical dataset
        was already there and nothing was written.

    Raises
    ------
    ToolkitError
        Bad parameters, ``out_dir`` is a file, or it holds other demo outputs and ``force`` is False.
    """
    out_dir = Path(out_dir)
    params = _parameters(n_tracks, n_test, n_large, clip_seconds, seed)
    _check_parameters(params)
    make_folder(out_dir)  # before rendering: a wrong --out fails at once
    manifest_path = out_dir / "demo.json"
    existing = _existing_outputs(out_dir)
    if existing and not force:
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("parameters") == params and manifest.get("format") == FORMAT_VERSION:
                return {**manifest, "reused": True}
            raise ToolkitError(
                f"{manifest_path}: a demo dataset with other parameters "
                f"{manifest.get('parameters')} (format {manifest.get('format')}; this generator writes "
                f"format {FORMAT_VERSION}) is already there; pass --force to replace it or choose another --out")
        raise ToolkitError(
            f"{out_dir}: holds {', '.join(p.name for p in existing)} but no demo.json "
            f"(an interrupted run, or not a demo dataset); pass --force to replace them")
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()

    rows, specs, labels = _plan(**params)
    Parallel(n_jobs=n_jobs)(delayed(_write_clip)(spec, out_dir / spec["path"]) for spec in specs)
    for path in sorted((out_dir / SMALL_AUDIO).rglob("*.mp3")):
        copy = out_dir / LARGE_AUDIO / path.relative_to(out_dir / SMALL_AUDIO)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)

    tracks = tracks_table(rows)
    metadata_dir = out_dir / "fma_metadata"
    metadata_dir.mkdir(parents=True, exist_ok=True)
    tracks.to_csv(metadata_dir / "tracks.csv")
    _genres_table(tracks).to_csv(metadata_dir / "genres.csv", index=False)
    pd.DataFrame(labels, columns=["file_id", "genre"]).to_csv(
        out_dir / "crowdai_fma_test_labels.csv", index=False)

    subsets = tracks[("set", "subset")].value_counts()
    without_top = tracks.loc[tracks[("track", "genre_top")] == "", ("set", "subset")].value_counts()
    manifest = {
        "generator": "common.demo_data",
        "format": FORMAT_VERSION,
        "parameters": params,
        "sample_rate": SAMPLE_RATE,
        "channels": CHANNELS,
        "bit_rate_kbps": BIT_RATE_KBPS,
        "top_genres": list(DEMO_GENRES),
        "rows_by_subset": {s: int(subsets.get(s, 0)) for s in SUBSETS},
        "without_genre_top_by_subset": {s: int(without_top.get(s, 0)) for s in SUBSETS},
        "splits": {s: int((tracks[("set", "split")] == s).sum()) for s in SPLITS},
        "n_test_files": n_test,
        "paths": {"metadata": "fma_metadata", "audio": SMALL_AUDIO, "large_audio": LARGE_AUDIO,
                  "test_audio": "crowdai_fma_test",
                  "test_labels": "crowdai_fma_test_labels.csv"},
        "broken": [{"path": spec["path"], "id": spec["id"], "kind": spec["broken"]}
                   for spec in specs if spec["broken"]],
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return {**manifest, "reused": False}


@command("fma-demo-data")
def main(argv: list[str] | None = None) -> int:
    """``python -m common.demo_data --out data/demo [--tracks N --test N --large N --seconds S --seed N --force]``."""
    parser = argparse.ArgumentParser(prog="fma-demo-data", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="output folder (default: data/demo)")
    parser.add_argument("--tracks", type=int, default=320, help="tracks in fma_small (default: 320)")
    parser.add_argument("--test", type=int, default=48, help="files in crowdai_fma_test (default: 48)")
    parser.add_argument("--large", type=int, default=None,
                        help="large-only multi-root tracks without a genre_top (default: as many as --tracks)")
    parser.add_argument("--seconds", type=float, default=10.0, help="nominal clip length (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--jobs", type=int, default=-1, help="parallel workers (default: all cores)")
    parser.add_argument("--force", action="store_true", help="replace an existing demo dataset")
    args = parser.parse_args(argv)
    manifest = generate_demo_dataset(args.out, n_tracks=args.tracks, n_test=args.test, n_large=args.large,
                                     clip_seconds=args.seconds, seed=args.seed,
                                     n_jobs=args.jobs, force=args.force)
    if manifest["reused"]:
        print(f"demo data in {args.out} is up to date (same parameters); nothing to do")
    else:
        kinds = ", ".join(f"{b['kind']} {b['path']}" for b in manifest["broken"])
        rows = manifest["rows_by_subset"]
        print(f"demo data written to {args.out}: {rows['small']} tracks in {SMALL_AUDIO}, {sum(rows.values())} in "
              f"{LARGE_AUDIO} ({sum(manifest['without_genre_top_by_subset'].values())} without a genre_top), "
              f"{manifest['n_test_files']} test files; broken on purpose: {kinds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
