"""Zero-shot FMA genres from musicnn's two published taggers and a speech detector (no training).

**Two taggers, one input.** ``MSD_musicnn`` scores 50 last.fm tags of the Million Song
Dataset (:data:`MSD_TAGS`), ``MTT_musicnn`` 50 MagnaTagATune tags (:data:`MTT_TAGS`). They
have the same architecture and the same input, musicnn's log-mel patches
(:func:`~common.models.musicnn.musicnn_logmel`), but were trained separately: their
weights differ in every layer, down to the input batch norm and the front-end filters,
so no layer can be shared. What is shared is everything before the networks: a song is
decoded, resampled and turned into log-mel patches once, and each batch of patches goes
through both networks in one traced graph
(:func:`~common.models.musicnn.musicnn_forward_function` of both models). That graph
leaves out the front-end filters that training drove to zero (~1e-30; about 90 % of
``MSD_musicnn``'s, 40 % of ``MTT_musicnn``'s; :func:`~common.models.musicnn.prune_frontend`),
which output a constant: the tags are the same within 1e-5 and both networks together
run at 0.95-1.34 x the speed of the Keras ``MSD_musicnn`` alone (``make bench-tag``).

**Tags -> genres.** Each tag that names a style is sent to the FMA top-level genre FMA
files that style under (``common.metadata.TOP_GENRES``); tags of eras, moods, voices,
instruments that span genres, tempo and production name no genre and are left out
(:data:`UNMAPPED_TAGS`).

======================  ==========================================  ==========================================
FMA genre               MSD tags                                    MTT tags
======================  ==========================================  ==========================================
Rock                    rock, alternative, alternative rock, indie, rock, metal
                        indie rock, classic rock, hard rock, metal,
                        heavy metal, punk, Progressive rock
Pop                     pop, indie pop                              pop
Electronic              electronic, electronica, electro, House,   electronic, techno, dance, ambient
                        dance, ambient, chillout, chill             (FMA: Techno, Ambient Electronic)
Jazz                    jazz                                        --
Blues                   blues                                       --
Folk                    folk                                        --
Country                 country                                     country
Hip-Hop                 Hip-Hop                                     --
Soul-RnB                soul, rnb, funk                             --
Easy Listening          easy listening                              --
Experimental            experimental                                weird
Instrumental            instrumental                                --
Classical               --                                          classical, classic, strings, violin, cello,
                                                                    harpsichord, choir, choral, opera
International           --                                          indian, sitar (Indian music)
Spoken                  --                                          -- (speech detector, below)
Old-Time / Historic     --                                          --
======================  ==========================================  ==========================================

In MagnaTagATune (Magnatune's catalogue) strings, violin, cello, harpsichord, choir and
opera are the classical catalogue's instrumentations. Strings and violin also play in
folk, country and pop; there the genre's own tag has to outscore them (a genre scores its
largest tag, below), so string-heavy pop can lean Classical. :data:`UNTAGGED_GENRES`
says why Spoken and Old-Time / Historic have no tag; the JSON of ``crowdai.tag`` and the
sidecar of a zero-shot submission repeat it.

**Spoken** (:func:`speech_probability`). No tag names speech, so a speech/music
discriminator decides it, keyed on two kinds of evidence that must *both* be present:

* acoustic: the ratio of low-energy frames (Scheirer & Slaney 1997, "Construction and
  evaluation of a robust multifeature speech/music discriminator"): the share of frames
  whose RMS is below half the mean RMS of their 1-s window, from the same mel power
  spectrogram the taggers see. Speech pauses between syllables and words, so the ratio is
  high; most music sustains its energy. It ramps from 0 at :data:`LOW_ENERGY_RAMP` ``[0]``
  to 1 at ``[1]``. Sparse music (drum and bass stems) is just as high, hence:
* tags: voice without music. The largest MTT voice tag (:data:`VOICE_TAGS`: vocal, male,
  female, voice, ...) minus the largest MTT music tag (:data:`MUSIC_TAGS`: instruments and
  *sung* voice: singing, choir, opera; not styles like techno, which MTT_musicnn also
  hears in the rhythm of syllables) ramps from 0 at
  :data:`VOICE_MARGIN_RAMP` ``[0]`` to 1 at ``[1]``.

The speech probability is the product of the two ramps. Whole recordings of
``../shared/audio`` (``tests/test_zero_shot.py``): the LibriSpeech reading has a
low-energy ratio of 0.40 and a voice margin of +0.17 (speech 1.0); the drum and bass
stems 0.40 too, but -0.61; songs and orchestras 0.07-0.19 and -0.17 to -0.49 (speech 0
for every music recording). The thresholds sit between those values; a segment of
speech over music, or rap, is left to the taggers.

**Scores.** A genre's raw score is the largest probability among its tags, over both
taggers (several rock tags do not add up into more "rock", and a max needs nothing from
the two taggers but that both give probabilities); the raw scores are
divided by their sum into a *music* distribution, and the speech probability ``s`` mixes
in Spoken: ``genres = (1 - s) * music + s * onehot(Spoken)``. A segment's genre scores
form a distribution, like a crowdAI submission row. :func:`smooth_toward_prior` keeps a
submission away from 0 and 1.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.audio import load_audio
from common.errors import ConfigError, ToolkitError, TooShortAudioError
from common.metadata import TOP_GENRES
from common.models.musicnn import (
    MSD_TAGS,
    MTT_TAGS,
    MUSICNN_FEATURES,
    N_MELS,
    N_TAGS,
    PATCH_FRAMES,
    build_pretrained_musicnn,
    musicnn_forward_function,
    musicnn_logmel,
    patches,
)
from common.pretrained import DEFAULT_WEIGHTS_DIR
from common.tagging import View, pool_segments, segment_bounds

if TYPE_CHECKING:
    import keras

#: MSD tag -> FMA top-level genre (see the module docstring's table).
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

#: MTT tag -> FMA top-level genre (see the module docstring's table).
MTT_TO_FMA: dict[str, str] = {
    **dict.fromkeys(("classical", "classic", "strings", "violin", "cello", "harpsichord", "choir", "choral",
                     "opera"), "Classical"),
    **dict.fromkeys(("indian", "sitar"), "International"),
    **dict.fromkeys(("electronic", "techno", "dance", "ambient"), "Electronic"),
    **dict.fromkeys(("rock", "metal"), "Rock"),
    "pop": "Pop", "country": "Country", "weird": "Experimental",
}

#: (checkpoint, its tags, its tag -> genre table) of both taggers, in output order.
TAGGERS: tuple[tuple[str, tuple[str, ...], dict[str, str]], ...] = (
    ("MSD_musicnn", MSD_TAGS, MSD_TO_FMA),
    ("MTT_musicnn", MTT_TAGS, MTT_TO_FMA),
)

#: Tags of each checkpoint that name no genre and are left out of the genre scores.
UNMAPPED_TAGS: dict[str, tuple[str, ...]] = {
    name: tuple(tag for tag in tags if tag not in table) for name, tags, table in TAGGERS
}

#: FMA genres no tag names, and why (stated in the JSON outputs and the README).
UNTAGGED_GENRES: dict[str, str] = {
    "Spoken": "no MSD or MTT tag names speech; scored by the speech detector (low-energy frames and "
              "MTT voice-without-music tags) instead",
    "Old-Time / Historic": "no MSD or MTT tag names pre-war recordings (MSD's '60s'/'oldies' are decades "
                           "of pop, not FMA's 78-rpm era), so zero-shot never predicts it",
}

#: MTT tags of a voice (speaking or singing) and of music (instruments and sung voice; not styles such as
#: techno or beat, which MTT_musicnn also gives to the rhythm of syllables).
VOICE_TAGS: tuple[str, ...] = ("vocal", "vocals", "voice", "male", "female", "man", "woman", "male vocal",
                               "female vocal", "male voice", "female voice")
MUSIC_TAGS: tuple[str, ...] = (
    "guitar", "strings", "drums", "piano", "violin", "synth", "harpsichord", "flute", "harp", "cello", "sitar",
    "singing", "choir", "choral", "opera",
)

#: Low-energy-frame ratio and voice-minus-music margin where the speech evidence ramps from 0 to 1.
LOW_ENERGY_RAMP: tuple[float, float] = (0.25, 0.35)
VOICE_MARGIN_RAMP: tuple[float, float] = (0.0, 0.1)

#: Frames of the 1-s windows of the low-energy ratio (62 frames of 16 ms).
_WINDOW_FRAMES = int(MUSICNN_FEATURES.sample_rate // MUSICNN_FEATURES.hop_length)

#: Seconds between consecutive patch starts (187 frames of 256 samples at 16 kHz).
PATCH_SECONDS = PATCH_FRAMES * MUSICNN_FEATURES.hop_length / MUSICNN_FEATURES.sample_rate

#: Names of the columns of :func:`speech_evidence`: the probability, then its evidence.
SPEECH_NAMES: tuple[str, ...] = ("speech", "low_energy_ratio", "voice", "music")


@dataclasses.dataclass(frozen=True)
class MusicnnTaggers:
    """Both published musicnn taggers, run together on one log-mel batch (dead filters pruned).

    Attributes
    ----------
    msd, mtt : keras.Model
        :func:`~common.models.musicnn.build_pretrained_musicnn` ``("MSD_musicnn")`` and
        ``("MTT_musicnn")``: ``(batch, 96, frames) -> (batch, 50)``.
    """

    msd: keras.Model
    mtt: keras.Model

    @classmethod
    def load(cls, *, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR) -> MusicnnTaggers:
        """Build both networks from the checkpoints in ``weights_dir`` (``make weights``)."""
        return cls(*(build_pretrained_musicnn(name, weights_dir=weights_dir) for name, _, _ in TAGGERS))

    def __call__(self, batch: np.ndarray, *, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Tag probabilities of log-mel patches, ``batch_size`` patches per call.

        Parameters
        ----------
        batch : np.ndarray, shape (n, 96, frames)

        Returns
        -------
        msd, mtt : np.ndarray, shape (n, 50), float32
        """
        forward = musicnn_forward_function(self.msd, self.mtt)
        calls = [forward(batch[start:start + batch_size]) for start in range(0, len(batch), batch_size)]
        probs = np.concatenate(calls).astype(np.float32) if calls else np.empty((0, 2 * N_TAGS), dtype=np.float32)
        return probs[:, :N_TAGS], probs[:, N_TAGS:]


@dataclasses.dataclass(frozen=True)
class PatchEvidence:
    """What the zero-shot scores are computed from, one row per 3-s patch.

    Attributes
    ----------
    centres : np.ndarray, shape (n,)
        Patch centres in seconds.
    msd, mtt : np.ndarray, shape (n, 50)
        Tag probabilities of both taggers.
    low_energy : np.ndarray, shape (n,)
        Ratio of low-energy frames (:func:`low_energy_ratio`).
    """

    centres: np.ndarray
    msd: np.ndarray
    mtt: np.ndarray
    low_energy: np.ndarray

    def stacked(self) -> np.ndarray:
        """``[msd | mtt | low_energy]``, shape (n, 101), for pooling over segments."""
        return np.concatenate([self.msd, self.mtt, self.low_energy[:, None]], axis=1)


def low_energy_ratio(batch: np.ndarray) -> np.ndarray:
    """Share of low-energy frames of each log-mel patch (Scheirer & Slaney 1997).

    A frame is low-energy when its RMS (square root of the summed mel power) is below
    half the mean RMS of its 1-s window (62 frames; the patch's trailing frame is left
    out). A silent window has none.

    Parameters
    ----------
    batch : np.ndarray, shape (n, 96, frames)
        :func:`~common.models.musicnn.musicnn_logmel` patches (``log10(1 + 10000 mel)``).

    Returns
    -------
    np.ndarray, shape (n,), float64
    """
    if batch.ndim != 3 or batch.shape[1] != N_MELS or batch.shape[2] < _WINDOW_FRAMES:
        raise ToolkitError(f"low_energy_ratio: expected (n, {N_MELS}, >= {_WINDOW_FRAMES}) patches, "
                           f"got {batch.shape}")
    power = (np.power(10.0, batch.astype(np.float64)) - 1.0) / 1e4
    rms = np.sqrt(np.maximum(power.sum(axis=1), 0.0))
    n_windows = rms.shape[1] // _WINDOW_FRAMES
    windows = rms[:, :n_windows * _WINDOW_FRAMES].reshape(len(rms), n_windows, _WINDOW_FRAMES)
    low = windows < 0.5 * windows.mean(axis=2, keepdims=True)
    return low.mean(axis=(1, 2))


def _ramp(values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    low, high = bounds
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def speech_evidence(mtt: np.ndarray, low_energy: np.ndarray) -> np.ndarray:
    """Speech probability and its evidence (module docstring, "Spoken").

    Parameters
    ----------
    mtt : np.ndarray, shape (n, 50)
        ``MTT_musicnn`` probabilities (pooled over a segment or a clip).
    low_energy : np.ndarray, shape (n,)
        Low-energy-frame ratios, pooled the same way.

    Returns
    -------
    np.ndarray, shape (n, 4)
        Columns :data:`SPEECH_NAMES`: speech probability, low-energy ratio, largest voice
        tag, largest music tag.
    """
    voice = mtt[:, [MTT_TAGS.index(tag) for tag in VOICE_TAGS]].max(axis=1)
    music = mtt[:, [MTT_TAGS.index(tag) for tag in MUSIC_TAGS]].max(axis=1)
    speech = _ramp(low_energy, LOW_ENERGY_RAMP) * _ramp(voice - music, VOICE_MARGIN_RAMP)
    return np.stack([speech, low_energy, voice, music], axis=1)


def speech_probability(mtt: np.ndarray, low_energy: np.ndarray) -> np.ndarray:
    """Probability of speech, shape (n,): the first column of :func:`speech_evidence`."""
    return speech_evidence(mtt, low_energy)[:, 0]


def music_scores(msd: np.ndarray, mtt: np.ndarray) -> np.ndarray:
    """Distribution over the 16 genres from both taggers' tags alone (Spoken is 0).

    Parameters
    ----------
    msd, mtt : np.ndarray, shape (n, 50)
        Tag probabilities, columns in :data:`MSD_TAGS` / :data:`MTT_TAGS` order.

    Returns
    -------
    np.ndarray, shape (n, 16), float64
        Columns in ``TOP_GENRES`` order; rows sum to 1 (largest tag per genre, normalised).
    """
    raw = np.zeros((msd.shape[0], len(TOP_GENRES)))
    for probs, (_, tags, table) in zip((msd, mtt), TAGGERS):
        for tag, genre in table.items():
            column = TOP_GENRES.index(genre)
            raw[:, column] = np.maximum(raw[:, column], probs[:, tags.index(tag)])
    return raw / np.maximum(raw.sum(axis=1, keepdims=True), np.finfo(float).tiny)


def genre_scores(msd: np.ndarray, mtt: np.ndarray, low_energy: np.ndarray) -> np.ndarray:
    """Fused zero-shot distribution over the 16 FMA genres (module docstring, "Scores").

    Parameters
    ----------
    msd, mtt : np.ndarray, shape (n, 50)
    low_energy : np.ndarray, shape (n,)

    Returns
    -------
    np.ndarray, shape (n, 16), float64
        Rows sum to 1.
    """
    speech = speech_probability(mtt, low_energy)[:, None]
    spoken = np.zeros(len(TOP_GENRES))
    spoken[TOP_GENRES.index("Spoken")] = 1.0
    return (1.0 - speech) * music_scores(msd, mtt) + speech * spoken


def patch_evidence(y: np.ndarray, *, taggers: MusicnnTaggers, batch_size: int = 8) -> PatchEvidence:
    """Both taggers' probabilities and the low-energy ratio of every 3-s patch of a 16-kHz signal.

    The log-mel is computed once and fed to both networks (as the original musicnn cuts
    patches: back to back, a last incomplete patch dropped).

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,)
        Mono signal at 16 kHz.
    taggers : MusicnnTaggers
    batch_size : int
        Patches per call of the two networks.
    """
    batch = patches(musicnn_logmel(y))
    msd, mtt = taggers(batch, batch_size=batch_size)
    low_energy = low_energy_ratio(batch) if len(batch) else np.empty(0)
    return PatchEvidence(centres=(np.arange(len(batch)) + 0.5) * PATCH_SECONDS, msd=msd, mtt=mtt,
                         low_energy=low_energy)


def pooled_views(pooled: np.ndarray) -> dict[str, View]:
    """The views of pooled :meth:`PatchEvidence.stacked` rows, shape (m, 101).

    Returns
    -------
    dict
        ``"genres"`` (``TOP_GENRES``), ``"msd_tags"`` (:data:`MSD_TAGS`), ``"mtt_tags"``
        (:data:`MTT_TAGS`), ``"speech"`` (the speech probability) and ``"speech_evidence"``
        (the other :data:`SPEECH_NAMES`).
    """
    msd, mtt, low_energy = pooled[:, :N_TAGS], pooled[:, N_TAGS:2 * N_TAGS], pooled[:, 2 * N_TAGS]
    speech = speech_evidence(mtt, low_energy)
    return {"genres": View(TOP_GENRES, genre_scores(msd, mtt, low_energy)), "msd_tags": View(MSD_TAGS, msd),
            "mtt_tags": View(MTT_TAGS, mtt), "speech": View(SPEECH_NAMES[:1], speech[:, :1]),
            "speech_evidence": View(SPEECH_NAMES[1:], speech[:, 1:])}


def clip_genre_scores(y: np.ndarray, *, taggers: MusicnnTaggers) -> np.ndarray:
    """Fused genre distribution of a whole clip (every patch averaged), shape (16,).

    A signal shorter than one 3-s patch is padded with silence to one patch.
    """
    patch_samples = PATCH_FRAMES * MUSICNN_FEATURES.hop_length
    if y.shape[0] < patch_samples:
        y = np.pad(y, (0, patch_samples - y.shape[0]))
    evidence = patch_evidence(y, taggers=taggers)
    return pooled_views(evidence.stacked().mean(axis=0, keepdims=True))["genres"].probs[0]


def smooth_toward_prior(probs: np.ndarray, *, prior: np.ndarray | None = None, weight: float = 0.1) -> np.ndarray:
    """``(1 - weight) * probs + weight * prior``: never 0 or 1, so the log loss stays finite.

    Parameters
    ----------
    probs : np.ndarray, shape (n, 16)
        Rows sum to 1.
    prior : np.ndarray, shape (16,), optional
        Positive, sums to 1 (default: uniform over the 16 genres).
    weight : float
        In (0, 1). Every probability is then at least ``weight * min(prior)``.

    Returns
    -------
    np.ndarray, shape (n, 16), float64
    """
    prior = np.full(probs.shape[1], 1.0 / probs.shape[1]) if prior is None else np.asarray(prior, dtype=float)
    if not 0.0 < weight < 1.0:
        raise ConfigError(f"--smoothing: the prior's weight must be in (0, 1), got {weight}")
    if prior.shape != (probs.shape[1],) or np.any(prior <= 0) or not np.isclose(prior.sum(), 1.0):
        raise ConfigError(f"prior: expected {probs.shape[1]} positive values summing to 1, got {prior}")
    return (1.0 - weight) * probs + weight * prior


def zero_shot_song(
    path: str | Path, *, window: float = 10.0, hop: float = 10.0,
    weights_dir: str | Path = DEFAULT_WEIGHTS_DIR, taggers: MusicnnTaggers | None = None,
) -> tuple[np.ndarray, dict[str, View]]:
    """Zero-shot genres, both taggers' tags and the speech evidence of one song, per segment.

    Parameters
    ----------
    path : path-like
        Any audio file :func:`common.audio.load_audio` reads.
    window, hop : float
        Segment length and step in seconds (``window`` at least one 3-s patch).
    weights_dir : path-like
        Folder of the musicnn weights (``make weights``).
    taggers : MusicnnTaggers, optional
        Networks to reuse (default: loaded from ``weights_dir``).

    Returns
    -------
    bounds : np.ndarray, shape (n_segments, 2)
        Segment start and end in seconds (segments with at least one patch centre).
    views : dict
        :func:`pooled_views` of every segment.
    """
    if window < PATCH_SECONDS:
        raise ConfigError(f"--window: {window} s is shorter than one musicnn patch ({PATCH_SECONDS:.2f} s)")
    y = load_audio(path, sample_rate=MUSICNN_FEATURES.sample_rate)
    duration = y.shape[0] / MUSICNN_FEATURES.sample_rate
    if duration < PATCH_SECONDS:
        raise TooShortAudioError(path, f"{duration:.2f} s < one musicnn patch ({PATCH_SECONDS:.2f} s)")
    taggers = taggers if taggers is not None else MusicnnTaggers.load(weights_dir=weights_dir)
    evidence = patch_evidence(y, taggers=taggers)
    bounds, pooled = pool_segments(evidence.centres, evidence.stacked(),
                                   segment_bounds(duration, window=window, hop=hop))
    return bounds, pooled_views(pooled)
