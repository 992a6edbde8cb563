"""A day-one crowdAI submission without training: musicnn zero-shot genres, smoothed toward a prior.

``python -m crowdai.submit --exp musicnn ...`` (``make submit EXP=musicnn``) lands here::

    python -m crowdai.submit --exp musicnn --test-dir data/crowdai_fma_test --out submissions \\
        [--weights models/musicnn] [--data data --subset medium] [--smoothing W]

Every mp3 of the test folder is decoded at 16 kHz and scored by
:func:`common.zero_shot.clip_genre_scores` (the fused mapping: MSD tags, plus MTT tags
and the speech detector for the genres MSD cannot name; all the clip's 3-s patches
averaged). The distribution is then mixed with a prior
(:func:`common.zero_shot.smooth_toward_prior`), so that no probability is 0 or 1 and the
log loss stays finite: every probability is at least ``weight x min(prior)``.

* The prior is FMA's genre frequencies of the chosen subset (``--subset`` of
  ``--data/fma_metadata/tracks.csv``, add-one smoothed:
  :func:`common.zero_shot.genre_frequency_prior`) when that file is at hand, and uniform
  over the 16 genres otherwise; the report and the sidecar say which.
* Its weight is :data:`common.zero_shot.PRIOR_WEIGHT` = ``2 (1 - ROC-AUC)`` = 0.240 from
  the ROC-AUC published with ``MSD_musicnn`` (the share of the tagger's pairwise
  decisions no better than chance; ``common.zero_shot`` says why), not fitted on any
  clip; ``--smoothing`` overrides it.

A file that does not decode, or decodes to silence, gets the prior (the taggers have
nothing to say about it); one shorter than a 3-s patch is padded with silence. The
sidecar JSON lists them. The options of ``crowdai.submit`` for trained experiments
(:data:`TRAINED_ONLY_OPTIONS`: ``--runs``, ``--cache``, ``--mean``, ``--jobs``, ...) are
refused with a usage error: nothing is trained, cached or combined here, and an option
that would be ignored is not accepted (``make submit EXP=musicnn`` passes none of them).
Writes ``OUT/<UTC timestamp>_musicnn.csv`` (or exactly ``--output``) and its sidecar
``.json``, never overwriting, and validates the CSV before reporting success.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UnreadableAudioError
from common.metadata import SUBSETS
from common.pretrained import DEFAULT_WEIGHTS_DIR
from crowdai.submission import Predictions, claim_submission_path, list_test_ids, publish_submission

#: The ``--exp`` name of the zero-shot submission (as in ``crowdai.tag``).
ZERO_SHOT_EXP = "musicnn"

#: Where the subset's genre frequencies come from by default (the Makefile's ``DATA`` and ``SUBSET``).
DEFAULT_DATA_DIR = Path("data")
DEFAULT_SUBSET = "medium"

#: Options of ``crowdai.submit`` that only trained experiments use; refused with ``--exp musicnn``.
TRAINED_ONLY_OPTIONS = ("--runs", "--cache", "--mean", "--blend-weights", "--blend", "--adapt-prior", "--jobs",
                        "--batch-size", "--allow-diverged")

#: Fallback kinds.
FALLBACK_PRIOR = "prior"
FALLBACK_PADDED = "padded_to_one_patch"


@dataclasses.dataclass(frozen=True)
class SubmissionPrior:
    """The prior a zero-shot submission is smoothed toward.

    Attributes
    ----------
    probs : np.ndarray, shape (16,)
        ``TOP_GENRES`` order; positive, sums to 1.
    source : str
        ``"uniform"`` or the ``tracks.csv`` it was counted from.
    description : str
        One line for the report and the sidecar.
    tracks : int
        Tracks counted (0 for the uniform prior).
    """

    probs: np.ndarray
    source: str
    description: str
    tracks: int


def submission_prior(data_dir: str | Path = DEFAULT_DATA_DIR, subset: str = DEFAULT_SUBSET) -> SubmissionPrior:
    """FMA's genre frequencies of ``subset`` when ``data_dir/fma_metadata/tracks.csv`` exists, else uniform.

    Parameters
    ----------
    data_dir : path-like
        Folder holding ``fma_metadata/``.
    subset : {'small', 'medium', 'large'}
        Tracks of this subset (and the smaller ones inside it) are counted.

    Raises
    ------
    common.errors.MetadataError
        ``tracks.csv`` exists but cannot be read (names the file and the column).
    """
    from common.metadata import TOP_GENRES, load_tracks, select_subset
    from common.zero_shot import genre_frequency_prior

    path = Path(data_dir) / "fma_metadata" / "tracks.csv"
    if not path.is_file():
        return SubmissionPrior(probs=np.full(len(TOP_GENRES), 1.0 / len(TOP_GENRES)), source="uniform",
                               description=f"uniform over the {len(TOP_GENRES)} genres ({path} not found)", tracks=0)
    genres = select_subset(load_tracks(path), subset)[("track", "genre_top")].dropna()
    return SubmissionPrior(probs=genre_frequency_prior(genres.astype(str)), source=str(path),
                           description=f"FMA {subset} genre frequencies ({len(genres)} tracks of {path}, add-one)",
                           tracks=len(genres))


@dataclasses.dataclass
class ZeroShotPredictions(Predictions):
    """Zero-shot probabilities of every test file, before writing (:class:`~crowdai.submission.Predictions`:
    ``ids``, smoothed ``probs``, ``fallbacks`` of the files not scored as they are).

    Attributes
    ----------
    seconds : float
        Wall-clock time of decoding and tagging.
    prior : SubmissionPrior
        What the probabilities were smoothed toward.
    weight : float
        The prior's weight.
    """

    seconds: float
    prior: SubmissionPrior
    weight: float


def predict_zero_shot(test_dir: str | Path, *, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR,
                      prior: SubmissionPrior | None = None, smoothing: float | None = None, taggers=None,
                      progress: bool = True) -> ZeroShotPredictions:
    """Smoothed zero-shot genre probabilities of every mp3 of ``test_dir``.

    Parameters
    ----------
    test_dir : path-like
        Folder of ``<file_id>.mp3``.
    weights_dir : path-like
        musicnn weights (``make weights``).
    prior : SubmissionPrior, optional
        What to smooth toward (default: :func:`submission_prior` of the default data folder).
    smoothing : float, optional
        Weight of the prior, in (0, 1) (default :data:`common.zero_shot.PRIOR_WEIGHT`).
    taggers : common.zero_shot.MusicnnTaggers, optional
        Networks to reuse (default: loaded from ``weights_dir``).
    progress : bool
        Progress bar on stderr.

    Returns
    -------
    ZeroShotPredictions
    """
    test_dir = Path(test_dir)
    ids = list_test_ids(test_dir)
    return predict_zero_shot_files([(file_id, test_dir / f"{file_id}.mp3") for file_id in ids],
                                   weights_dir=weights_dir, prior=prior, smoothing=smoothing, taggers=taggers,
                                   progress=progress)


def predict_zero_shot_files(files: Sequence[tuple[str, Path]], *, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR,
                            prior: SubmissionPrior | None = None, smoothing: float | None = None, taggers=None,
                            progress: bool = True) -> ZeroShotPredictions:
    """Smoothed zero-shot genre probabilities of audio files: what :func:`predict_zero_shot` does for
    a test folder, for any ``(id, path)`` list (the fold tracks of :mod:`crowdai.zero_shot_oof`).

    Each file is decoded at 16 kHz (its centre :data:`~common.zero_shot.SUBMISSION_CLIP_SECONDS`),
    scored by :func:`common.zero_shot.clip_genre_scores` and mixed with ``prior``; a file that
    does not decode, or decodes to silence, gets the prior (a ``fallbacks`` record).

    Parameters
    ----------
    files : sequence of (str, Path)
        Row id and audio file, in row order.
    weights_dir, prior, smoothing, taggers, progress
        As for :func:`predict_zero_shot`.

    Returns
    -------
    ZeroShotPredictions
        ``ids`` in the order of ``files``, ``probs`` of shape ``(len(files), 16)``.
    """
    from tqdm.auto import tqdm

    from common.audio import load_excerpt
    from common.models.musicnn import MUSICNN_FEATURES, PATCH_FRAMES
    from common.zero_shot import (
        PRIOR_WEIGHT,
        SUBMISSION_CLIP_SECONDS,
        MusicnnTaggers,
        clip_genre_scores,
        smooth_toward_prior,
    )

    prior = prior if prior is not None else submission_prior()
    weight = PRIOR_WEIGHT if smoothing is None else smoothing
    smooth_toward_prior(prior.probs[None, :], prior=prior.probs, weight=weight)  # check early
    taggers = taggers if taggers is not None else MusicnnTaggers.load(weights_dir=weights_dir)
    rate = MUSICNN_FEATURES.sample_rate
    patch_samples = PATCH_FRAMES * MUSICNN_FEATURES.hop_length
    start = time.perf_counter()
    raw = np.tile(prior.probs, (len(files), 1))
    fallbacks = []
    for row, (file_id, path) in enumerate(tqdm(files, unit="clip", desc="zero-shot", disable=not progress,
                                                file=sys.stderr)):
        try:
            y, _ = load_excerpt(path, sample_rate=rate, n_samples=int(SUBMISSION_CLIP_SECONDS * rate),
                                crop="center")
        except UnreadableAudioError as error:
            fallbacks.append({"id": file_id, "path": str(path), "reason": "unreadable", "detail": str(error),
                              "fallback": FALLBACK_PRIOR, "decoded_seconds": 0.0})
            continue
        seconds = round(y.shape[0] / rate, 3)
        if not np.any(y):
            fallbacks.append({"id": file_id, "path": str(path), "reason": "silent" if len(y) else "empty",
                              "detail": "", "fallback": FALLBACK_PRIOR, "decoded_seconds": seconds})
            continue
        if y.shape[0] < patch_samples:
            fallbacks.append({"id": file_id, "path": str(path), "reason": "shorter than one 3-s patch",
                              "detail": "", "fallback": FALLBACK_PADDED, "decoded_seconds": seconds})
        raw[row] = clip_genre_scores(y, taggers=taggers)
    probs = smooth_toward_prior(raw, prior=prior.probs, weight=weight)
    return ZeroShotPredictions(ids=[file_id for file_id, _ in files], probs=probs, fallbacks=fallbacks,
                               seconds=time.perf_counter() - start, prior=prior, weight=weight)


def zero_shot_record(predictions: ZeroShotPredictions, *, weights_dir: str | Path) -> dict[str, Any]:
    """The sidecar entries of a zero-shot submission: the model, its weights, the fusion rule, the
    smoothing (prior and weight), the speech detector's ramps, the genres no tag names, and the seconds."""
    from common.metadata import TOP_GENRES
    from common.zero_shot import (
        ADDED_GENRES,
        LOW_ENERGY_RAMP,
        MSD_ROC_AUC,
        PRIOR_WEIGHT,
        STRONG_EVIDENCE,
        UNTAGGED_GENRES,
        VOICE_MARGIN_RAMP,
    )

    prior, weight = predictions.prior, predictions.weight
    derivation = (f"2 (1 - ROC-AUC of MSD_musicnn, {MSD_ROC_AUC:.4f})" if weight == PRIOR_WEIGHT
                  else "--smoothing")
    return {
        "model": "zero-shot musicnn: MSD_musicnn tags, plus MTT_musicnn tags and a speech detector for the genres "
                 "MSD cannot name (common.zero_shot), no training",
        "weights_dir": str(weights_dir),
        "fusion": {"added_genres": list(ADDED_GENRES), "strong_evidence": STRONG_EVIDENCE},
        "smoothing": {"prior": prior.description, "prior_source": prior.source, "prior_tracks": prior.tracks,
                      "prior_probs": dict(zip(TOP_GENRES, np.round(prior.probs, 6).tolist())),
                      "weight": weight, "weight_from": derivation,
                      "min_probability": weight * float(prior.probs.min())},
        "speech_detector": {"low_energy_ramp": list(LOW_ENERGY_RAMP), "voice_margin_ramp": list(VOICE_MARGIN_RAMP)},
        "genres_without_tags": dict(UNTAGGED_GENRES),
        "seconds": round(predictions.seconds, 3),
    }


class _TrainedOnly(argparse.Action):
    """An option of trained submissions: a usage error that says why, whatever its value."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: not used by --exp {ZERO_SHOT_EXP} (zero-shot: nothing is trained, cached "
                     f"or combined); leave it out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fma-submit", description=__doc__.splitlines()[0])
    parser.add_argument("--exp", required=True, choices=[ZERO_SHOT_EXP], help="musicnn: zero-shot, no training")
    parser.add_argument("--test-dir", type=Path, required=True, help="folder of the test mp3s")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--out", type=Path, default=Path("submissions"),
                        help="folder for <timestamp>_musicnn.csv and .json (default: submissions)")
    target.add_argument("--output", type=Path, default=None,
                        help="exact CSV path instead; the sidecar is the same name with .json")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR,
                        help="musicnn weights folder (default: %(default)s; `make weights`)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR,
                        help="folder of fma_metadata/tracks.csv, whose genre frequencies are the prior "
                             "(default: %(default)s; uniform when absent)")
    parser.add_argument("--subset", choices=SUBSETS, default=DEFAULT_SUBSET,
                        help="subset whose genre frequencies are the prior (default: %(default)s)")
    parser.add_argument("--smoothing", type=float, default=None,
                        help="weight of the prior, in (0, 1) (default: 2 (1 - ROC-AUC of MSD_musicnn) = 0.240)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    for option in TRAINED_ONLY_OPTIONS:
        parser.add_argument(option, nargs="?", action=_TrainedOnly, help=argparse.SUPPRESS)
    return parser


def run(argv: list[str]) -> int:
    """``fma-submit --exp musicnn ...``: what :func:`crowdai.submit.main`, which holds the command-line
    contract (:mod:`common.cli`), runs for the zero-shot submission."""
    args = build_parser().parse_args(argv)
    csv_path = claim_submission_path(output=args.output, out_dir=args.out, names=[ZERO_SHOT_EXP])
    predictions = predict_zero_shot(args.test_dir, weights_dir=args.weights,
                                    prior=submission_prior(args.data, args.subset), smoothing=args.smoothing,
                                    progress=not args.no_progress)
    published = publish_submission(
        predictions, csv_path, test_dir=args.test_dir, record=zero_shot_record(predictions, weights_dir=args.weights),
        method=f"zero-shot musicnn (no training), prior: {predictions.prior.description}, "
               f"weight {predictions.weight:.3f}",
        seconds=f"{predictions.seconds:.1f} s")
    print("\n".join(published.report))
    published.require_valid()
    return 0
