"""A day-one crowdAI submission without training: musicnn zero-shot genres, smoothed toward a prior.

``python -m crowdai.submit --exp musicnn ...`` (``make submit EXP=musicnn``) lands here::

    python -m crowdai.submit --exp musicnn --test-dir data/crowdai_fma_test --out submissions \\
        [--weights models/musicnn] [--smoothing 0.1]

Every mp3 of the test folder is decoded at 16 kHz and scored by
:func:`common.zero_shot.clip_genre_scores` (both musicnn taggers and the speech detector,
all the clip's 3-s patches averaged). The distribution is then mixed with a uniform prior
over the 16 genres (:func:`common.zero_shot.smooth_toward_prior`, weight ``--smoothing``),
so that no probability is 0 or 1 and the log loss stays finite: every probability is at
least ``smoothing / 16``.

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
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UnreadableAudioError
from common.pretrained import DEFAULT_WEIGHTS_DIR
from crowdai.submission import Predictions, claim_submission_path, list_test_ids, publish_submission

#: The ``--exp`` name of the zero-shot submission (as in ``crowdai.tag``).
ZERO_SHOT_EXP = "musicnn"

#: Default weight of the uniform prior in the submitted distribution.
DEFAULT_SMOOTHING = 0.1

#: Options of ``crowdai.submit`` that only trained experiments use; refused with ``--exp musicnn``.
TRAINED_ONLY_OPTIONS = ("--runs", "--cache", "--mean", "--blend-weights", "--blend", "--adapt-prior", "--jobs",
                        "--batch-size")

#: Fallback kinds.
FALLBACK_PRIOR = "prior"
FALLBACK_PADDED = "padded_to_one_patch"


@dataclasses.dataclass
class ZeroShotPredictions(Predictions):
    """Zero-shot probabilities of every test file, before writing (:class:`~crowdai.submission.Predictions`:
    ``ids``, smoothed ``probs``, ``fallbacks`` of the files not scored as they are).

    Attributes
    ----------
    seconds : float
        Wall-clock time of decoding and tagging.
    """

    seconds: float


def predict_zero_shot(test_dir: str | Path, *, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR,
                      smoothing: float = DEFAULT_SMOOTHING, taggers=None,
                      progress: bool = True) -> ZeroShotPredictions:
    """Smoothed zero-shot genre probabilities of every mp3 of ``test_dir``.

    Parameters
    ----------
    test_dir : path-like
        Folder of ``<file_id>.mp3``.
    weights_dir : path-like
        musicnn weights (``make weights``).
    smoothing : float
        Weight of the uniform prior, in (0, 1).
    taggers : common.zero_shot.MusicnnTaggers, optional
        Networks to reuse (default: loaded from ``weights_dir``).
    progress : bool
        Progress bar on stderr.

    Returns
    -------
    ZeroShotPredictions
    """
    from tqdm.auto import tqdm

    from common.audio import load_audio
    from common.metadata import TOP_GENRES
    from common.models.musicnn import MUSICNN_FEATURES, PATCH_FRAMES
    from common.zero_shot import MusicnnTaggers, clip_genre_scores, smooth_toward_prior

    test_dir = Path(test_dir)
    ids = list_test_ids(test_dir)
    smooth_toward_prior(np.full((1, len(TOP_GENRES)), 1.0 / len(TOP_GENRES)), weight=smoothing)  # check early
    taggers = taggers if taggers is not None else MusicnnTaggers.load(weights_dir=weights_dir)
    rate = MUSICNN_FEATURES.sample_rate
    patch_samples = PATCH_FRAMES * MUSICNN_FEATURES.hop_length
    start = time.perf_counter()
    raw = np.full((len(ids), len(TOP_GENRES)), 1.0 / len(TOP_GENRES))
    fallbacks = []
    for row, file_id in enumerate(tqdm(ids, unit="clip", desc="zero-shot", disable=not progress, file=sys.stderr)):
        path = test_dir / f"{file_id}.mp3"
        try:
            y = load_audio(path, sample_rate=rate)
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
    probs = smooth_toward_prior(raw, weight=smoothing)
    return ZeroShotPredictions(ids=ids, probs=probs, fallbacks=fallbacks, seconds=time.perf_counter() - start)


def zero_shot_record(predictions: ZeroShotPredictions, *, weights_dir: str | Path,
                     smoothing: float) -> dict[str, Any]:
    """The sidecar entries of a zero-shot submission: the model, its weights, the smoothing,
    the speech detector's ramps, the genres no tag names, and the seconds."""
    from common.zero_shot import LOW_ENERGY_RAMP, UNTAGGED_GENRES, VOICE_MARGIN_RAMP

    return {
        "model": "zero-shot musicnn: MSD_musicnn + MTT_musicnn tags and speech detector (common.zero_shot), "
                 "no training",
        "weights_dir": str(weights_dir),
        "smoothing": {"prior": "uniform over the 16 top genres", "weight": smoothing,
                      "min_probability": smoothing / predictions.probs.shape[1]},
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
    parser.add_argument("--smoothing", type=float, default=DEFAULT_SMOOTHING,
                        help="weight of the uniform prior, in (0, 1) (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    for option in TRAINED_ONLY_OPTIONS:
        parser.add_argument(option, nargs="?", action=_TrainedOnly, help=argparse.SUPPRESS)
    return parser


def run(argv: list[str]) -> int:
    """``fma-submit --exp musicnn ...``: what :func:`crowdai.submit.main`, which holds the command-line
    contract (:mod:`common.cli`), runs for the zero-shot submission."""
    args = build_parser().parse_args(argv)
    csv_path = claim_submission_path(output=args.output, out_dir=args.out, names=[ZERO_SHOT_EXP])
    predictions = predict_zero_shot(args.test_dir, weights_dir=args.weights, smoothing=args.smoothing,
                                    progress=not args.no_progress)
    published = publish_submission(
        predictions, csv_path, test_dir=args.test_dir,
        record=zero_shot_record(predictions, weights_dir=args.weights, smoothing=args.smoothing),
        method=f"zero-shot musicnn (no training), prior weight {args.smoothing}",
        seconds=f"{predictions.seconds:.1f} s")
    print("\n".join(published.report))
    published.require_valid()
    return 0
