"""Zero-shot FMA genres from musicnn's Million Song Dataset tags (no training).

The ``MSD_musicnn`` model scores 50 last.fm tags. :data:`MSD_TO_FMA` sends each
tag that names a style to the FMA top-level genre FMA files that style under
(``common.metadata.TOP_GENRES``); :data:`UNMAPPED_TAGS` are the tags that name no
genre (eras, moods, voices, instruments, production) and are left out.

=================  ================================================================
FMA genre          MSD tags
=================  ================================================================
Rock               rock, alternative, alternative rock, indie, indie rock, classic rock,
                   hard rock, metal, heavy metal, punk, Progressive rock
Pop                pop, indie pop
Electronic         electronic, electronica, electro, House, dance (club dance music),
                   ambient (FMA: Ambient Electronic), chillout, chill (FMA: Chill-out)
Jazz               jazz
Blues              blues
Folk               folk
Country            country
Hip-Hop            Hip-Hop
Soul-RnB           soul, rnb, funk
Easy Listening     easy listening
Experimental       experimental
Instrumental       instrumental
Classical, International, Old-Time / Historic, Spoken: no MSD tag names them, so
zero-shot scores are 0 for them (a trained experiment is needed there).
=================  ================================================================

A genre's raw score is the *largest* probability among its tags (several rock tags
do not add up into more "rock"); the 16 raw scores are then divided by their sum
so that a segment's genre scores form a distribution, like a crowdAI submission row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.audio import load_audio
from common.errors import ConfigError, TooShortAudioError
from common.inference import forward_function
from common.metadata import TOP_GENRES
from common.models.musicnn import (
    MSD_TAGS, MUSICNN_FEATURES, N_TAGS, PATCH_FRAMES, build_pretrained_musicnn, musicnn_logmel, patches,
)
from common.pretrained import DEFAULT_WEIGHTS_DIR
from common.tagging import View, pool_segments, segment_bounds

#: MSD tag -> FMA top-level genre (see the module docstring for the reasoning).
MSD_TO_FMA: dict[str, str] = {
    **dict.fromkeys(("rock", "alternative", "alternative rock", "indie", "indie rock", "classic rock",
                     "hard rock", "metal", "heavy metal", "punk", "Progressive rock"), "Rock"),
    **dict.fromkeys(("pop", "indie pop"), "Pop"),
    **dict.fromkeys(("electronic", "electronica", "electro", "House", "dance", "ambient", "chillout",
                     "chill"), "Electronic"),
    "jazz": "Jazz", "blues": "Blues", "folk": "Folk", "country": "Country", "Hip-Hop": "Hip-Hop",
    **dict.fromkeys(("soul", "rnb", "funk"), "Soul-RnB"),
    "easy listening": "Easy Listening", "experimental": "Experimental", "instrumental": "Instrumental",
}

#: MSD tags that name no genre and are left out of the genre scores.
UNMAPPED_TAGS: tuple[str, ...] = tuple(tag for tag in MSD_TAGS if tag not in MSD_TO_FMA)

#: FMA genres no MSD tag names (their zero-shot score is always 0).
UNREACHABLE_GENRES: tuple[str, ...] = tuple(g for g in TOP_GENRES if g not in set(MSD_TO_FMA.values()))

#: Seconds between consecutive patch starts (187 frames of 256 samples at 16 kHz).
PATCH_SECONDS = PATCH_FRAMES * MUSICNN_FEATURES.hop_length / MUSICNN_FEATURES.sample_rate


def genre_scores(tag_probs: np.ndarray) -> np.ndarray:
    """Map MSD tag probabilities to a distribution over the 16 FMA genres.

    Parameters
    ----------
    tag_probs : np.ndarray, shape (n, 50)
        ``MSD_musicnn`` outputs, columns in :data:`MSD_TAGS` order.

    Returns
    -------
    np.ndarray, shape (n, 16), float64
        Columns in ``TOP_GENRES`` order; rows sum to 1.
    """
    raw = np.zeros((tag_probs.shape[0], len(TOP_GENRES)))
    for tag, genre in MSD_TO_FMA.items():
        column = TOP_GENRES.index(genre)
        raw[:, column] = np.maximum(raw[:, column], tag_probs[:, MSD_TAGS.index(tag)])
    return raw / np.maximum(raw.sum(axis=1, keepdims=True), np.finfo(float).tiny)


def tag_patches(y: np.ndarray, *, model, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """musicnn taggram of a 16-kHz signal: one row per 3-s patch (as the original computes it).

    Patches go through :func:`common.inference.forward_function` ``batch_size`` at a
    time (one graph for every song length; a whole long song in one call would hold
    gigabytes of front-end activations).

    Returns
    -------
    centres : np.ndarray, shape (n_patches,)
        Centre of each patch in seconds.
    probs : np.ndarray, shape (n_patches, 50), float32
    """
    batch = patches(musicnn_logmel(y))
    forward = forward_function(model)
    probs = np.concatenate([forward(batch[start:start + batch_size]) for start in range(0, len(batch), batch_size)]) \
        if len(batch) else np.empty((0, N_TAGS), dtype=np.float32)
    centres = (np.arange(len(batch)) + 0.5) * PATCH_SECONDS
    return centres, np.asarray(probs, dtype=np.float32)


def zero_shot_song(
    path: str | Path, *, window: float = 10.0, hop: float = 10.0,
    weights_dir: str | Path = DEFAULT_WEIGHTS_DIR, model=None,
) -> tuple[np.ndarray, dict[str, View]]:
    """Zero-shot genres and raw MSD tags of one song, per segment.

    Parameters
    ----------
    path : path-like
        Any audio file :func:`common.audio.load_audio` reads.
    window, hop : float
        Segment length and step in seconds (``window`` at least one 3-s patch).
    weights_dir : path-like
        Folder of the musicnn weights (``make weights``).
    model : keras.Model, optional
        A :func:`~common.models.musicnn.build_pretrained_musicnn` model to reuse.

    Returns
    -------
    bounds : np.ndarray, shape (n_segments, 2)
        Segment start and end in seconds (segments with at least one patch centre).
    views : dict
        ``"genres"``: :class:`View` over ``TOP_GENRES``; ``"tags"``: over :data:`MSD_TAGS`.
    """
    if window < PATCH_SECONDS:
        raise ConfigError(f"--window: {window} s is shorter than one musicnn patch ({PATCH_SECONDS:.2f} s)")
    y = load_audio(path, sample_rate=MUSICNN_FEATURES.sample_rate)
    duration = y.shape[0] / MUSICNN_FEATURES.sample_rate
    if duration < PATCH_SECONDS:
        raise TooShortAudioError(path, f"{duration:.2f} s < one musicnn patch ({PATCH_SECONDS:.2f} s)")
    model = model if model is not None else build_pretrained_musicnn("MSD_musicnn", weights_dir=weights_dir)
    centres, tag_probs = tag_patches(y, model=model)
    bounds, pooled = pool_segments(centres, tag_probs, segment_bounds(duration, window=window, hop=hop))
    return bounds, {"genres": View(TOP_GENRES, genre_scores(pooled)), "tags": View(MSD_TAGS, pooled)}
