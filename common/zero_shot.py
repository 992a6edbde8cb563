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

**The baseline: MSD tags only** (:data:`BASELINE`, :func:`msd_only_scores`). Each MSD tag
that names a style is sent to the FMA top-level genre FMA files that style under
(``common.metadata.TOP_GENRES``); a genre scores its largest tag (several rock tags do
not add up into more "rock"), and the scores are divided by their sum. This is the
mapping of the original zero-shot tagger, and it names 12 genres (:data:`MSD_GENRES`).
Tags of eras, moods, voices, instruments that span genres, tempo and production name no
genre and are left out (:data:`UNMAPPED_TAGS`).

**What the MSD tags cannot name** (:data:`ADDED_GENRES`) gets evidence from elsewhere:
Classical and International from MTT tags, Spoken from the speech detector (below).
``MTT_musicnn`` also has tags of genres MSD names (rock, metal, pop, electronic, techno,
dance, ambient, country, weird); they are left out, because letting them compete with
MSD's tags reorders MSD's genres. Issue 26 measured the earlier fusion, in which every
MTT tag competed with every MSD tag, on 70 held-out clips of MSD-covered genres: 47 right
where MSD alone got 54 (pop went to Electronic, hip-hop to Pop, and jazz piano to
Classical, which the threshold below is for).

======================  ==========================================  ==========================================
FMA genre               MSD tags (both mappings)                    evidence added by the fused mapping
======================  ==========================================  ==========================================
Rock                    rock, alternative, alternative rock, indie, --
                        indie rock, classic rock, hard rock, metal,
                        heavy metal, punk, Progressive rock
Pop                     pop, indie pop                              --
Electronic              electronic, electronica, electro, House,   --
                        dance, ambient, chillout, chill
Jazz                    jazz                                        --
Blues                   blues                                       --
Folk                    folk                                        --
Country                 country                                     --
Hip-Hop                 Hip-Hop                                     --
Soul-RnB                soul, rnb, funk                             --
Easy Listening          easy listening                              --
Experimental            experimental                                --
Instrumental            instrumental                                --
Classical               --                                          MTT classical, classic, strings, violin,
                                                                    cello, harpsichord, choir, choral, opera
International           --                                          MTT indian, sitar (Indian music only)
Spoken                  --                                          speech probability (speech detector)
Old-Time / Historic     --                                          --
======================  ==========================================  ==========================================

In MagnaTagATune (Magnatune's catalogue) strings, violin, cello, harpsichord, choir and
opera are the classical catalogue's instrumentations. An added genre's evidence is the
largest of its tags. Neither vocabulary has a reggae, latin, African or other world tag,
so International is reached only through Indian music; :data:`UNTAGGED_GENRES` says why
Spoken and Old-Time / Historic have no tag (the JSON of ``crowdai.tag`` and the sidecar of
a zero-shot submission repeat it).

**The fusion: add, never override** (:func:`fuse`). An added genre's evidence ``e`` is
*strong* when ``e >= 1/2`` (:data:`STRONG_EVIDENCE`). A strong genre takes ``e`` as its
probability (if two are strong and their evidence sums past 1, they split the whole
mass in proportion). Every other genre shares what is left, ``1 - sum(strong)``, in
proportion to a weight: an MSD genre its MSD-only probability, a weak added genre
``(e / (1/2)) x`` the MSD-only probability of MSD's top genre. Hence:

* the ranking of MSD's 12 genres is always MSD's (they are all scaled by one factor);
* a weak added genre ranks below MSD's top genre (its weight is the fraction ``2e < 1``
  of that genre's), so without strong evidence the pick is MSD's;
* a strong added genre (``e >= 1/2``) outweighs all other genres together (they share at
  most ``1 - e <= e``), so it is the pick, whatever the spread of MSD's probabilities.

So the fused pick differs from the MSD-only pick exactly when some added genre's
evidence reaches 1/2, and then it is the added genre with the largest evidence.

**How each number was set.** The rule's numbers and the prior's weight are fitted to no
recording: the six recordings of ``../shared/audio`` (four labelled) are their test
(``tests/test_zero_shot.py``, ``make bench-tag``).

* :data:`STRONG_EVIDENCE` = 1/2. musicnn's outputs are sigmoids trained with binary
  cross-entropy, i.e. estimates of P(tag | audio), and the speech probability is a
  probability too: 1/2 is where the evidence says "more likely than not", the one
  decision threshold that needs neither a cost nor a base rate. It is also the smallest
  probability with which a genre outweighs all the others together, so the pick no
  longer depends on how MSD spreads the rest.
* The weak weight ``2e`` (relative to MSD's top genre): linear in the evidence, 0 without
  evidence, and reaching a tie with MSD's top genre exactly at the threshold.
* :data:`PRIOR_WEIGHT` = ``2 (1 - ROC-AUC)`` = 0.240, the weight of the prior a
  submission is smoothed toward (:func:`smooth_toward_prior`), from the ROC-AUC
  published with ``MSD_musicnn`` (:data:`MSD_ROC_AUC` = 0.880: the first of the two AUCs
  of the wheel's ``MSD_musicnn/experiment.result``, whose second, 0.289, is the PR-AUC, in
  the order ``MTT_musicnn``'s file labels them). Read the tagger as one that orders a pair
  of clips correctly with probability ``q`` and at random otherwise: ``ROC-AUC = q +
  (1 - q) / 2``, so the share of its decisions no better than chance is
  ``1 - q = 2 (1 - ROC-AUC)``; that share of the submitted probability goes to the prior.
  MSD's tags alone rank the 12 genres they name, and MSD's ROC-AUC is the lower of the
  two (``MTT_musicnn``: :data:`MTT_ROC_AUC` = 0.907).
* :data:`LOW_ENERGY_RAMP` and :data:`VOICE_MARGIN_RAMP` (the speech detector, below)
  predate this rule and are *not* derived on principle beyond the margin's lower end 0
  (voice no more likely than the likeliest instrument): they were placed between the
  values the shared recordings give, so the shared recordings do not test them.

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
``../shared/audio``: the LibriSpeech reading has a low-energy ratio of 0.40 and a voice
margin of +0.17 (speech 1.0); the drum and bass stems 0.40 too, but -0.61; songs and
orchestras 0.07-0.19 and -0.17 to -0.49 (speech 0 for every music recording). A segment
of speech over music, or rap, is left to the taggers.

**Scores.** A segment's (or clip's) tags are the average of its 3-s patches' tags, and its
genre scores, computed from them, form a distribution, like a crowdAI submission row.
:func:`smooth_toward_prior` keeps a submission away from 0 and 1, toward FMA's genre
frequencies when they are at hand (:func:`genre_frequency_prior`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
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

#: MTT tag -> FMA top-level genre, for genres the MSD tags cannot name (module docstring's table).
MTT_TO_FMA: dict[str, str] = {
    **dict.fromkeys(("classical", "classic", "strings", "violin", "cello", "harpsichord", "choir", "choral",
                     "opera"), "Classical"),
    **dict.fromkeys(("indian", "sitar"), "International"),
}

#: (checkpoint, its tags, its tag -> genre table) of both taggers, in output order.
TAGGERS: tuple[tuple[str, tuple[str, ...], dict[str, str]], ...] = (
    ("MSD_musicnn", MSD_TAGS, MSD_TO_FMA),
    ("MTT_musicnn", MTT_TAGS, MTT_TO_FMA),
)

#: Tags of each checkpoint that no genre score uses.
UNMAPPED_TAGS: dict[str, tuple[str, ...]] = {
    name: tuple(tag for tag in tags if tag not in table) for name, tags, table in TAGGERS
}

#: The genre only the speech detector names.
SPOKEN = "Spoken"

#: The 12 genres the MSD tags name, in ``TOP_GENRES`` order.
MSD_GENRES: tuple[str, ...] = tuple(genre for genre in TOP_GENRES if genre in MSD_TO_FMA.values())

#: Genres MSD cannot name that the fused mapping adds evidence for, in ``TOP_GENRES`` order.
ADDED_GENRES: tuple[str, ...] = tuple(genre for genre in TOP_GENRES
                                      if genre in MTT_TO_FMA.values() or genre == SPOKEN)

#: FMA genres no tag names, and why (stated in the JSON outputs and the README).
UNTAGGED_GENRES: dict[str, str] = {
    SPOKEN: "no MSD or MTT tag names speech; scored by the speech detector (low-energy frames and "
            "MTT voice-without-music tags) instead",
    "Old-Time / Historic": "no MSD or MTT tag names pre-war recordings (MSD's '60s'/'oldies' are decades "
                           "of pop, not FMA's 78-rpm era), so zero-shot never predicts it",
}

#: Evidence at or above which an added genre may take the pick from MSD ("more likely than not").
STRONG_EVIDENCE = 0.5

#: ROC-AUC published with each checkpoint (the musicnn 0.1.0 wheel's ``<model>/experiment.result``).
MSD_ROC_AUC = 0.8801927178090048
MTT_ROC_AUC = 0.9066769123674747

#: Weight of the prior in a zero-shot submission: the share of the MSD tagger's pairwise
#: decisions no better than chance, ``2 (1 - ROC-AUC)`` (module docstring).
PRIOR_WEIGHT = 2.0 * (1.0 - MSD_ROC_AUC)

#: The two genre mappings, by name: the MSD-only baseline and the fused one.
BASELINE = "msd_only"
FUSED = "fused"
MAPPINGS: tuple[str, ...] = (BASELINE, FUSED)

#: The view of :func:`pooled_views` that holds each mapping's genre scores.
MAPPING_VIEWS: dict[str, str] = {BASELINE: "genres_msd_only", FUSED: "genres"}

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

#: Seconds of a file a zero-shot submission tags: FMA's clip length. A longer file is tagged on
#: its centre 30 s (decoded alone, :func:`common.audio.load_excerpt`), so memory and time per
#: file are bounded; a crowdAI test clip (30 s) is tagged whole.
SUBMISSION_CLIP_SECONDS = 30.0

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


def _largest_tag_per_genre(probs: np.ndarray, tags: tuple[str, ...], table: dict[str, str],
                           genres: tuple[str, ...]) -> np.ndarray:
    """Largest probability among each genre's tags, shape (n, len(genres))."""
    return np.stack([probs[:, [tags.index(tag) for tag, named in table.items() if named == genre]].max(axis=1)
                     for genre in genres], axis=1)


def msd_only_scores(msd: np.ndarray) -> np.ndarray:
    """The baseline mapping: a distribution over the 16 genres from the MSD tags alone.

    Parameters
    ----------
    msd : np.ndarray, shape (n, 50)
        ``MSD_musicnn`` probabilities, columns in :data:`MSD_TAGS` order.

    Returns
    -------
    np.ndarray, shape (n, 16), float64
        Columns in ``TOP_GENRES`` order; each of :data:`MSD_GENRES` scores its largest tag,
        the others 0; rows divided by their sum.
    """
    scores = np.zeros((msd.shape[0], len(TOP_GENRES)))
    scores[:, [TOP_GENRES.index(genre) for genre in MSD_GENRES]] = _largest_tag_per_genre(
        msd, MSD_TAGS, MSD_TO_FMA, MSD_GENRES)
    return scores / np.maximum(scores.sum(axis=1, keepdims=True), np.finfo(float).tiny)


def added_evidence(mtt: np.ndarray, low_energy: np.ndarray) -> np.ndarray:
    """Evidence for the genres MSD cannot name: largest MTT tag of each, and the speech probability.

    Parameters
    ----------
    mtt : np.ndarray, shape (n, 50)
        ``MTT_musicnn`` probabilities (pooled over a segment or a clip).
    low_energy : np.ndarray, shape (n,)
        Low-energy-frame ratios, pooled the same way.

    Returns
    -------
    np.ndarray, shape (n, 3), float64
        Columns :data:`ADDED_GENRES` (Classical, International, Spoken), each in [0, 1].
    """
    evidence = np.empty((mtt.shape[0], len(ADDED_GENRES)))
    tagged = [genre for genre in ADDED_GENRES if genre != SPOKEN]
    evidence[:, [ADDED_GENRES.index(genre) for genre in tagged]] = _largest_tag_per_genre(
        mtt, MTT_TAGS, MTT_TO_FMA, tuple(tagged))
    evidence[:, ADDED_GENRES.index(SPOKEN)] = speech_probability(mtt, low_energy)
    return evidence


def fuse(msd_only: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """Add the evidence for the genres MSD cannot name to the MSD-only scores (module docstring, "fusion").

    Parameters
    ----------
    msd_only : np.ndarray, shape (n, 16)
        :func:`msd_only_scores` (0 on :data:`ADDED_GENRES`).
    evidence : np.ndarray, shape (n, 3)
        :func:`added_evidence`, columns :data:`ADDED_GENRES`, in [0, 1].

    Returns
    -------
    np.ndarray, shape (n, 16), float64
        Rows sum to 1. The 12 MSD genres keep their MSD-only order; the pick is MSD's
        unless some evidence is at least :data:`STRONG_EVIDENCE`, and then it is the added
        genre with the largest evidence.
    """
    added = [TOP_GENRES.index(genre) for genre in ADDED_GENRES]
    if msd_only.ndim != 2 or msd_only.shape[1] != len(TOP_GENRES) or evidence.shape != (len(msd_only), len(added)):
        raise ToolkitError(f"fuse: expected (n, {len(TOP_GENRES)}) scores and (n, {len(added)}) evidence, "
                           f"got {msd_only.shape} and {evidence.shape}")
    strong = evidence >= STRONG_EVIDENCE
    taken = np.where(strong, evidence, 0.0)
    taken /= np.maximum(taken.sum(axis=1, keepdims=True), 1.0)
    weights = msd_only.astype(float).copy()
    weights[:, added] = np.where(strong, 0.0, evidence / STRONG_EVIDENCE * msd_only.max(axis=1, keepdims=True))
    left = 1.0 - taken.sum(axis=1, keepdims=True)
    fused = left * weights / np.maximum(weights.sum(axis=1, keepdims=True), np.finfo(float).tiny)
    fused[:, added] += taken
    return fused


def genre_scores(msd: np.ndarray, mtt: np.ndarray, low_energy: np.ndarray) -> np.ndarray:
    """Fused zero-shot distribution over the 16 FMA genres: :func:`fuse` of the MSD-only scores and the
    added evidence.

    Parameters
    ----------
    msd, mtt : np.ndarray, shape (n, 50)
    low_energy : np.ndarray, shape (n,)

    Returns
    -------
    np.ndarray, shape (n, 16), float64
        Rows sum to 1.
    """
    return fuse(msd_only_scores(msd), added_evidence(mtt, low_energy))


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
        ``"genres"`` (the fused mapping, ``TOP_GENRES``), ``"genres_msd_only"`` (the
        baseline), ``"msd_tags"`` (:data:`MSD_TAGS`), ``"mtt_tags"`` (:data:`MTT_TAGS`),
        ``"added_evidence"`` (:data:`ADDED_GENRES`), ``"speech"`` (the speech probability)
        and ``"speech_evidence"`` (the other :data:`SPEECH_NAMES`).
    """
    msd, mtt, low_energy = pooled[:, :N_TAGS], pooled[:, N_TAGS:2 * N_TAGS], pooled[:, 2 * N_TAGS]
    speech = speech_evidence(mtt, low_energy)
    msd_only, evidence = msd_only_scores(msd), added_evidence(mtt, low_energy)
    return {MAPPING_VIEWS[FUSED]: View(TOP_GENRES, fuse(msd_only, evidence)),
            MAPPING_VIEWS[BASELINE]: View(TOP_GENRES, msd_only),
            "msd_tags": View(MSD_TAGS, msd), "mtt_tags": View(MTT_TAGS, mtt),
            "added_evidence": View(ADDED_GENRES, evidence),
            "speech": View(SPEECH_NAMES[:1], speech[:, :1]), "speech_evidence": View(SPEECH_NAMES[1:], speech[:, 1:])}


def clip_views(y: np.ndarray, *, taggers: MusicnnTaggers) -> dict[str, View]:
    """:func:`pooled_views` of a whole clip (every patch averaged): one row per view.

    A signal shorter than one 3-s patch is padded with silence to one patch.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,)
        Mono signal at 16 kHz.
    taggers : MusicnnTaggers
    """
    patch_samples = PATCH_FRAMES * MUSICNN_FEATURES.hop_length
    if y.shape[0] < patch_samples:
        y = np.pad(y, (0, patch_samples - y.shape[0]))
    evidence = patch_evidence(y, taggers=taggers)
    return pooled_views(evidence.stacked().mean(axis=0, keepdims=True))


def clip_genre_scores(y: np.ndarray, *, taggers: MusicnnTaggers) -> np.ndarray:
    """Fused genre distribution of a whole clip (:func:`clip_views`), shape (16,)."""
    return clip_views(y, taggers=taggers)[MAPPING_VIEWS[FUSED]].probs[0]


def genre_frequency_prior(genres: Iterable[str]) -> np.ndarray:
    """FMA genre frequencies, add-one smoothed: ``(count + 1) / (n + 16)`` per genre.

    Add-one (Laplace) smoothing keeps a genre absent from the tracks above 0, as the
    training prior of a trained experiment does.

    Parameters
    ----------
    genres : iterable of str
        The top-level genre of each track (missing ones left out by the caller).

    Returns
    -------
    np.ndarray, shape (16,), float64
        ``TOP_GENRES`` order; positive, sums to 1.

    Raises
    ------
    ToolkitError
        A name that is not one of ``TOP_GENRES``.
    """
    counts = dict.fromkeys(TOP_GENRES, 0)
    for genre in genres:
        if genre not in counts:
            raise ToolkitError(f"genre_top: {genre!r} is not one of the 16 FMA top-level genres")
        counts[genre] += 1
    values = np.array([counts[genre] for genre in TOP_GENRES], dtype=float) + 1.0
    return values / values.sum()


def smooth_toward_prior(probs: np.ndarray, *, prior: np.ndarray | None = None,
                        weight: float = PRIOR_WEIGHT) -> np.ndarray:
    """``(1 - weight) * probs + weight * prior``: never 0 or 1, so the log loss stays finite.

    Parameters
    ----------
    probs : np.ndarray, shape (n, 16)
        Rows sum to 1.
    prior : np.ndarray, shape (16,), optional
        Positive, sums to 1 (default: uniform over the 16 genres).
    weight : float
        In (0, 1) (default :data:`PRIOR_WEIGHT`). Every probability is then at least
        ``weight * min(prior)``.

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
