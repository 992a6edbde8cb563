"""A crowdAI submission from the fold ensembles of one or more trained experiments.

Usage::

    python -m crowdai.submit --exp crnn,shortchunk --runs runs --test-dir data/crowdai_fma_test \\
        --cache cache --out submissions [--mean arithmetic|geometric] [--blend-weights 0.7,0.3]
    python -m crowdai.submit --blend crnn+shortchunk --runs runs --test-dir data/crowdai_fma_test [--adapt-prior]

The test folder's features are computed once per distinct feature settings (cached like
any other source, named after the folder) and fed to every fold model of every named
experiment (each a ``single`` experiment over the 16 top genres). Each experiment's fold
ensemble gives clip probabilities by its own evaluation policy; the experiments are
combined by an arithmetic or geometric mean with optional hand-typed weights
(:mod:`crowdai.ensemble`), or by a blend fitted on their out-of-fold predictions
(``--blend NAME``: ``RUNS/blends/NAME/blend.json`` from :mod:`crowdai.blend`; its
experiments are the ones predicted).

``--adapt-prior`` then re-estimates the test set's class prior by EM (Saerens et al. 2002,
:func:`crowdai.calibration.adapt_prior`) and shifts every row to it; the estimated prior is
printed next to the training prior. Last, every row gets the probability floor
(:func:`crowdai.submission.apply_floor`: the blend's fitted ``eps``, else
:data:`~crowdai.submission.PROBABILITY_FLOOR`), so no value is exactly 0 or 1.

Every mp3 of the test folder gets a row. A file whose features failed (silent, too short,
unreadable; ``failures.csv`` of the cache) is predicted from whatever audio decodes
(no length or silence check, padded to the clip length); a file that does not decode at
all gets the experiments' training prior. The sidecar JSON lists them.

Writes ``OUT/<UTC timestamp>_<exp1+exp2>.csv`` (or exactly ``--output FILE``) and a sidecar
``.json`` beside it (models, CV scores, settings, weights, rows, sha256, fallbacks), never
overwriting a file; the sidecar also records the blend file and its sha256, the floor and the
priors. The CSV is validated against the test folder before success is reported.

Every fold model is checked against the size and sha256 its fold's summary records, and a
failed or diverged fold is refused unless ``--allow-diverged`` (:func:`common.runs.verify_fold`);
a blend is checked against its checksum (:func:`crowdai.blend.load_blend`). Either error names
the file and the command that rebuilds it.

``--exp musicnn`` needs no training: :mod:`crowdai.zero_shot_submit` writes the zero-shot
musicnn baseline instead (its own options, e.g. ``--weights``, ``--smoothing``). A blend that
holds the zero-shot tagger (``make zero-shot-oof``, then ``make blend EXP=musicnn,...``) predicts
it by that submission's code (:func:`crowdai.zero_shot_submit.predict_zero_shot`) with the prior
and weight its out-of-fold file was smoothed with, after checking that ``--weights`` holds the
recorded musicnn weights (:func:`predict_members`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.cli import command
from common.errors import ConfigError, UnreadableAudioError
from common.pretrained import DEFAULT_WEIGHTS_DIR
from common.store import ClipStore
from crowdai.ensemble import MEANS, FoldEnsemble, combine, load_ensemble, parse_weights
from crowdai.submission import (
    PROBABILITY_FLOOR,
    Predictions,
    apply_floor,
    claim_submission_path,
    list_test_ids,
    publish_submission,
)

if TYPE_CHECKING:
    from common.features import ExtractionSummary, Item
    from common.settings import FeatureSettings

#: Fallback kinds of a file whose features failed.
FALLBACK_MODEL = "model_on_decoded_audio"
FALLBACK_PRIOR = "training_prior"


@dataclasses.dataclass
class TestPredictions(Predictions):
    """Probabilities of every test file, before writing (:class:`~crowdai.submission.Predictions`:
    ``ids``, ``probs`` combined across experiments, ``fallbacks`` of the files whose features failed).

    Attributes
    ----------
    per_experiment : dict of str to np.ndarray, shape (n, 16)
    cache_dirs : list of str
    feature_seconds, model_seconds : float
        Wall-clock time of feature extraction (incl. fallback decoding) and of the models.
    extractions : tuple of ExtractionSummary
        What feature extraction did, one per cache of ``cache_dirs``.
    zero_shot : dict of str to dict
        Zero-shot experiment → its sidecar record (:func:`crowdai.zero_shot_submit.zero_shot_record`).
    """

    per_experiment: dict[str, np.ndarray]
    cache_dirs: list[str]
    feature_seconds: float
    model_seconds: float
    extractions: tuple[ExtractionSummary, ...] = ()
    zero_shot: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Combination:
    """How the experiments' test probabilities become one matrix.

    Attributes
    ----------
    names : list of str
        Experiments, in order.
    mean : str
        ``arithmetic`` or ``geometric`` (hand-typed weights), or ``blend:<stage>``.
    weights : np.ndarray, shape (len(names),), or None
        Normalised pool weights (None for a blend stage without weights).
    blend : crowdai.blend.FittedBlend or None
    """

    names: list[str]
    mean: str
    weights: np.ndarray | None
    blend: Any = None

    @property
    def used_names(self) -> list[str]:
        """Experiments whose test predictions the combination reads: a blend stage of one
        experiment (``raw``/``calibrated``) needs no features or predictions of the others."""
        return self.blend.used_experiments if self.blend is not None else self.names

    @property
    def zero_shot(self) -> dict[str, dict[str, Any]]:
        """Used zero-shot experiments of a blend → their records (:mod:`crowdai.zero_shot_oof`)."""
        if self.blend is None:
            return {}
        return {name: record for name, record in self.blend.zero_shot.items() if name in self.used_names}

    @property
    def floor(self) -> float:
        """The blend's fitted probability floor, else :data:`~crowdai.submission.PROBABILITY_FLOOR`."""
        return self.blend.floor if self.blend is not None else PROBABILITY_FLOOR

    def apply(self, per_experiment: dict[str, np.ndarray]) -> np.ndarray:
        """Combined probabilities ``(n, C)`` (before prior adaptation and floor)."""
        if self.blend is not None:
            return self.blend.apply(per_experiment)
        return combine([per_experiment[name] for name in self.names], weights=self.weights, mean=self.mean)


def resolve_combination(*, exp: str | None, blend: str | None, blend_weights: str | None, mean: str | None,
                        runs: str | Path) -> Combination:
    """The :class:`Combination` of the command line.

    Raises
    ------
    ConfigError
        Neither ``--exp`` nor ``--blend``; repeated experiments; ``--blend`` with hand-typed
        ``--blend-weights`` or ``--mean``, or with ``--exp`` naming other experiments.
    ToolkitError
        No such blend.
    """
    names = [name.strip() for name in (exp or "").split(",") if name.strip()]
    if len(set(names)) != len(names) or (exp is not None and not names):
        raise ConfigError(f"--exp {exp!r}: give distinct experiment names, comma-separated")
    if blend is None:
        if not names:
            raise ConfigError("give --exp (experiments to average) or --blend (a fitted blend)")
        return Combination(names=names, mean=mean or "arithmetic", weights=parse_weights(blend_weights, n=len(names)))
    from crowdai.blend import load_blend

    if blend_weights is not None or mean is not None:
        raise ConfigError(f"--blend {blend}: the fitted blend sets how experiments are combined; "
                          f"drop --blend-weights and --mean")
    fitted = load_blend(blend, runs=runs)
    if names and set(names) != set(fitted.experiments):
        raise ConfigError(f"--exp {exp!r} differs from the experiments of blend {blend!r}: {fitted.experiments}")
    weights = fitted.weights()
    return Combination(names=fitted.experiments, mean=f"blend:{fitted.chosen}", blend=fitted,
                       weights=None if weights is None else np.array([weights[n] for n in fitted.experiments]))


def training_prior(ensembles: Sequence[FoldEnsemble], combination: Combination) -> np.ndarray:
    """Class prior the predictions were trained under: the blend's, else the experiments' mean prior ``(C,)``."""
    if combination.blend is not None:
        return combination.blend.train_prior
    prior = np.mean([e.prior() for e in ensembles], axis=0)
    return prior / prior.sum()


def adapt_to_test_prior(probs: np.ndarray, *, train_prior: np.ndarray,
                        class_names: Sequence[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Shift ``probs`` ``(n, C)`` to the test prior estimated by EM; the record names both priors."""
    from crowdai.calibration import PRIOR_PSEUDO_TRACKS_PER_CLASS, adapt_prior

    adapted, test_prior, iterations = adapt_prior(probs, train_prior=train_prior)
    return adapted, {"method": "EM (Saerens et al. 2002), MAP with a Dirichlet prior on the training prior",
                     "pseudo_tracks": PRIOR_PSEUDO_TRACKS_PER_CLASS * len(train_prior), "iterations": iterations,
                     "train": dict(zip(class_names, np.round(train_prior, 6).tolist())),
                     "test": dict(zip(class_names, np.round(test_prior, 6).tolist()))}


def prior_table(record: dict[str, Any]) -> str:
    """The training and estimated test priors side by side, one genre a line."""
    lines = [f"{'genre':<20} {'train':>7} {'test':>7}"]
    lines += [f"{genre:<20} {record['train'][genre]:7.3f} {record['test'][genre]:7.3f}" for genre in record["train"]]
    return "\n".join(lines)


def finalise(predictions: TestPredictions, *, combination: Combination, ensembles: Sequence[FoldEnsemble],
             adapt: bool) -> tuple[TestPredictions, dict[str, Any]]:
    """Combine the experiments, optionally adapt to the test prior, apply the floor.

    Returns
    -------
    predictions : TestPredictions
        With the final ``probs``.
    record : dict
        Sidecar entries: ``blend`` (file, sha256, stage, floor or None), ``floor``, ``prior``
        (training and test priors, or None without ``adapt``).
    """
    probs, prior = combination.apply(predictions.per_experiment), None
    if adapt:
        class_names = combination.blend.class_names if combination.blend is not None else ensembles[0].task.class_names
        probs, prior = adapt_to_test_prior(probs, train_prior=training_prior(ensembles, combination),
                                           class_names=class_names)
    record = {"blend": combination.blend.describe() if combination.blend is not None else None,
              "floor": combination.floor, "prior": prior}
    return dataclasses.replace(predictions, probs=apply_floor(probs, combination.floor)), record


def _fallback_features(path: str, *, settings, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR,
                       ) -> tuple[np.ndarray | None, float]:
    """Features of whatever audio of ``path`` decodes (padded or cropped to the clip).

    Returns
    -------
    features : np.ndarray, shape settings.clip_shape, or None when nothing decodes
    seconds : float
        Decoded length (0 when nothing decodes).
    """
    from common.audio import crop_or_pad, load_excerpt
    from common.features import features_for

    try:
        y, seconds = load_excerpt(path, sample_rate=settings.sample_rate, n_samples=settings.clip_samples,
                                  crop=settings.crop)
    except UnreadableAudioError:
        return None, 0.0
    clip = crop_or_pad(y, n_samples=settings.clip_samples, crop=settings.crop)
    return features_for(clip, settings=settings, weights_dir=weights_dir), seconds


def predict_test_folder(ensembles: Sequence[FoldEnsemble], *, test_dir: str | Path, cache_root: str | Path,
                        weights: np.ndarray | None = None, mean: str = "arithmetic", n_jobs: int = -1,
                        batch_size: int | None = None, progress: bool = True,
                        weights_dir: str | Path = DEFAULT_WEIGHTS_DIR) -> TestPredictions:
    """Fold-ensemble probabilities of every mp3 of ``test_dir``, combined across experiments.

    Features are extracted once per distinct :class:`~common.settings.FeatureSettings`
    into ``cache_dir_for(cache_root, <test folder name>, settings)`` (reused when present);
    the experiments of those settings predict from them before the next settings' features
    are made.

    Parameters
    ----------
    ensembles : sequence of FoldEnsemble
        ``single`` experiments over the 16 top genres.
    test_dir : path-like
    cache_root : path-like
    weights : np.ndarray, shape (len(ensembles),), optional
    mean : {"arithmetic", "geometric"}
    n_jobs : int
        Feature extraction workers.
    batch_size : int, optional
        Crops per model call (default: each experiment's batch size).
    progress : bool
        Progress bars (features, then fold models) on stderr.
    weights_dir : path-like
        Pretrained musicnn weights (experiments on musicnn-embedding features).

    Returns
    -------
    TestPredictions
    """
    from common.features import cache_dir_for, folder_items

    test_dir = Path(test_dir)
    ids = list_test_ids(test_dir)
    items = folder_items(test_dir)
    extracted: list[_TestFeatures] = []
    predicted: dict[str, np.ndarray] = {}
    model_seconds = 0.0
    for settings, group in _by_feature_settings(ensembles).items():
        features = _test_features(ids, items, settings=settings, n_jobs=n_jobs, progress=progress,
                                  cache_dir=cache_dir_for(cache_root, test_dir.resolve().name, settings),
                                  weights_dir=weights_dir)
        start = time.perf_counter()
        predicted.update({ensemble.name: _predict_test_rows(ensemble, features, batch_size=batch_size,
                                                            progress=progress) for ensemble in group})
        model_seconds += time.perf_counter() - start
        extracted.append(features)
    per_experiment = {e.name: predicted[e.name] for e in ensembles}
    return TestPredictions(
        ids=ids, probs=combine(list(per_experiment.values()), weights=weights, mean=mean),
        per_experiment=per_experiment, fallbacks=_merge_fallbacks(each.fallbacks for each in extracted),
        cache_dirs=[str(each.cache_dir) for each in extracted],
        feature_seconds=sum(each.seconds for each in extracted), model_seconds=model_seconds,
        extractions=tuple(each.extraction for each in extracted))


def predict_members(combination: Combination, *, runs: str | Path, test_dir: str | Path, cache_root: str | Path,
                    n_jobs: int = -1, batch_size: int | None = None, progress: bool = True,
                    weights_dir: str | Path = DEFAULT_WEIGHTS_DIR,
                    allow_diverged: bool = False) -> tuple[list[FoldEnsemble], TestPredictions]:
    """Test probabilities of every experiment ``combination`` reads (:attr:`Combination.used_names`).

    Trained experiments go through their fold ensembles (:func:`predict_test_folder`); the
    zero-shot experiments of a blend through :func:`crowdai.zero_shot_submit.predict_zero_shot`,
    smoothed toward the prior and with the weight of their out-of-fold file, once the musicnn
    weights of ``weights_dir`` are checked against the recorded ones.

    Returns
    -------
    ensembles : list of FoldEnsemble
        The trained experiments, in order.
    predictions : TestPredictions
        ``per_experiment`` of every used experiment, ``(n, C)`` each; ``probs`` combined by
        ``combination``; ``model_seconds`` includes the zero-shot tagging; ``zero_shot`` records.

    Raises
    ------
    ToolkitError
        Musicnn weights other than the recorded ones; a trained experiment's errors
        (:func:`crowdai.ensemble.load_ensemble`).
    """
    from crowdai.zero_shot_oof import check_weights, recorded_prior
    from crowdai.zero_shot_submit import predict_zero_shot, zero_shot_record

    zero_shot = combination.zero_shot
    for name, record in zero_shot.items():
        check_weights(record, weights_dir=weights_dir, name=name)
    ensembles = [load_ensemble(runs, name, require_top_genres=True, allow_diverged=allow_diverged)
                 for name in combination.used_names if name not in zero_shot]
    trained = (predict_test_folder(ensembles, test_dir=test_dir, cache_root=cache_root, n_jobs=n_jobs,
                                   batch_size=batch_size, progress=progress, weights_dir=weights_dir)
               if ensembles else None)
    tagged = {name: predict_zero_shot(test_dir, weights_dir=weights_dir, prior=recorded_prior(record),
                                      smoothing=float(record["weight"]), progress=progress)
              for name, record in zero_shot.items()}
    if trained is not None and not tagged:
        return ensembles, trained
    per_experiment = {**(trained.per_experiment if trained else {}), **{n: z.probs for n, z in tagged.items()}}
    per_experiment = {name: per_experiment[name] for name in combination.used_names}
    return ensembles, TestPredictions(
        ids=list_test_ids(test_dir), probs=combination.apply(per_experiment), per_experiment=per_experiment,
        fallbacks=_merge_fallbacks([trained.fallbacks if trained else [], *(z.fallbacks for z in tagged.values())]),
        cache_dirs=trained.cache_dirs if trained else [],
        feature_seconds=trained.feature_seconds if trained else 0.0,
        model_seconds=(trained.model_seconds if trained else 0.0) + sum(z.seconds for z in tagged.values()),
        extractions=trained.extractions if trained else (),
        zero_shot={name: zero_shot_record(z, weights_dir=weights_dir) for name, z in tagged.items()})


def _by_feature_settings(ensembles: Sequence[FoldEnsemble]) -> dict[FeatureSettings, list[FoldEnsemble]]:
    """The ensembles grouped by their feature settings, in order of first appearance."""
    groups: dict[FeatureSettings, list[FoldEnsemble]] = {}
    for ensemble in ensembles:
        groups.setdefault(ensemble.settings, []).append(ensemble)
    return groups


@dataclasses.dataclass(frozen=True)
class _TestFeatures:
    """The test folder's features under one :class:`~common.settings.FeatureSettings`, by row.

    A row is the position of a file in the sorted test ids. Every row is in exactly one of
    ``cached_rows``, ``decoded_rows`` and ``prior_rows``.

    Attributes
    ----------
    cache_dir : Path
    extraction : ExtractionSummary
    store : ClipStore
        Cached features of ``cached_rows``, in that order.
    cached_rows : np.ndarray, shape (n_cached,), int64
    decoded_rows : list of int
        Files whose features failed, predicted from whatever audio decodes ...
    decoded : list of np.ndarray, each of shape settings.clip_shape
        ... these features, one per row of ``decoded_rows``.
    prior_rows : list of int
        Files of which nothing decodes: they get the training prior.
    fallbacks : list of dict
        One record per file whose features failed, in row order (``TestPredictions.fallbacks``).
    seconds : float
        Wall-clock time of extraction and fallback decoding.
    """

    cache_dir: Path
    extraction: ExtractionSummary
    store: ClipStore
    cached_rows: np.ndarray
    decoded_rows: list[int]
    decoded: list[np.ndarray]
    prior_rows: list[int]
    fallbacks: list[dict[str, Any]]
    seconds: float

    @property
    def n_rows(self) -> int:
        """Files of the test folder."""
        return len(self.cached_rows) + len(self.decoded_rows) + len(self.prior_rows)


def _test_features(ids: list[str], items: list[Item], *, settings: FeatureSettings, cache_dir: Path, n_jobs: int,
                   progress: bool, weights_dir: str | Path) -> _TestFeatures:
    """Extract (or reuse) the features of ``items`` into ``cache_dir``; decode what failed."""
    from common.features import FeatureCache, extract

    start = time.perf_counter()
    extraction = extract(items, settings=settings, cache_dir=cache_dir, n_jobs=n_jobs, progress=progress,
                         weights_dir=weights_dir)
    cache = FeatureCache.open(cache_dir)
    available = set(cache.ids.tolist())
    cached_rows = np.array([i for i, file_id in enumerate(ids) if file_id in available], dtype=np.int64)
    store = ClipStore(cache, [ids[i] for i in cached_rows])
    failures = cache.failures.set_index("id")
    decoded_rows, decoded, prior_rows, fallbacks = [], [], [], []
    for row, file_id in enumerate(ids):
        if file_id in available:
            continue
        failure = failures.loc[file_id]
        features, seconds = _fallback_features(str(failure["path"]), settings=settings, weights_dir=weights_dir)
        fallbacks.append({"id": file_id, "path": failure["path"], "reason": failure["reason"],
                          "detail": failure["detail"],
                          "fallback": FALLBACK_PRIOR if features is None else FALLBACK_MODEL,
                          "decoded_seconds": round(seconds, 3)})
        if features is None:
            prior_rows.append(row)
        else:
            decoded_rows.append(row)
            decoded.append(features)
    return _TestFeatures(cache_dir=cache_dir, extraction=extraction, store=store, cached_rows=cached_rows,
                         decoded_rows=decoded_rows, decoded=decoded, prior_rows=prior_rows, fallbacks=fallbacks,
                         seconds=time.perf_counter() - start)


def _predict_test_rows(ensemble: FoldEnsemble, features: _TestFeatures, *, batch_size: int | None,
                       progress: bool) -> np.ndarray:
    """One experiment's probabilities of every row ``(n, C)``: its fold ensemble on the cached features
    (a progress bar on stderr), then on the decoded audio of failed files; the training prior for the rest."""
    from tqdm.auto import tqdm

    probs = np.empty((features.n_rows, len(ensemble.task.class_names)))
    bar = tqdm(total=len(features.cached_rows), unit="clip", desc=f"{ensemble.name} ({len(ensemble.models)} folds)",
               disable=not progress, file=sys.stderr)
    probs[features.cached_rows] = ensemble.predict(features.store, batch_size=batch_size,
                                                   on_batch=lambda done: bar.update(done - bar.n))
    bar.close()
    if features.decoded:
        probs[features.decoded_rows] = ensemble.predict(np.stack(features.decoded), batch_size=batch_size)
    if features.prior_rows:
        probs[features.prior_rows] = ensemble.prior()
    return probs


def _merge_fallbacks(per_settings: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One fallback record per file over every feature setting, sorted by id.

    The first setting's record is kept; a file decodable at one rate and not at another says
    so in its ``fallback`` (``model_on_decoded_audio+training_prior``).
    """
    merged: dict[str, dict[str, Any]] = {}
    for records in per_settings:
        for record in records:
            kept = merged.setdefault(record["id"], dict(record))
            if kept["fallback"] != record["fallback"]:
                kept["fallback"] = f"{kept['fallback']}+{record['fallback']}"
    return sorted(merged.values(), key=lambda r: r["id"])


def sidecar_record(predictions: TestPredictions, *, ensembles: Sequence[FoldEnsemble], mean: str,
                   weights: np.ndarray | None, extra: dict[str, Any] | None = None,
                   names: Sequence[str] | None = None) -> dict[str, Any]:
    """The sidecar entries of a trained or blended submission.

    ``mean``, the pool ``weights`` by experiment (``names``, default the ensembles' names), the
    experiments (:meth:`FoldEnsemble.describe`), the zero-shot experiments' records when there
    are any, feature caches and seconds, then ``extra`` (:func:`finalise`'s record).
    """
    names = [e.name for e in ensembles] if names is None else list(names)
    return {
        "mean": mean,
        "weights": None if weights is None else {name: float(w) for name, w in zip(names, weights)},
        "experiments": [e.describe() for e in ensembles],
        **({"zero_shot": predictions.zero_shot} if predictions.zero_shot else {}),
        "feature_caches": predictions.cache_dirs,
        "seconds": {"features": round(predictions.feature_seconds, 3), "models": round(predictions.model_seconds, 3)},
        **(extra or {}),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fma-submit", description=__doc__.splitlines()[0])
    parser.add_argument("--exp", default=None,
                        help="experiment name(s), comma-separated: crnn,shortchunk (with --blend: optional, "
                             "must be the blend's)")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="runs root (default: runs)")
    parser.add_argument("--test-dir", type=Path, required=True, help="folder of the test mp3s")
    parser.add_argument("--cache", type=Path, default=Path("cache"), help="feature cache root (default: cache)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--out", type=Path, default=Path("submissions"),
                        help="folder for <timestamp>_<exps>.csv and .json (default: submissions)")
    target.add_argument("--output", type=Path, default=None,
                        help="exact CSV path instead (round-2 runner); the sidecar is the same name with .json")
    combination = parser.add_argument_group("combining experiments (hand-typed, or a blend fitted by make blend)")
    combination.add_argument("--mean", choices=MEANS, default=None, help="arithmetic (default) or geometric pool")
    combination.add_argument("--blend-weights", default=None, help="one positive weight per experiment, e.g. 0.7,0.3")
    combination.add_argument("--blend", default=None,
                             help="a fitted blend: name under RUNS/blends (crowdai.blend) or a blend.json path")
    parser.add_argument("--adapt-prior", action="store_true",
                        help="re-estimate the test set's class prior by EM and shift the probabilities to it")
    add_prediction_options(parser)
    return parser


def add_prediction_options(parser: argparse.ArgumentParser) -> None:
    """The options of every command that predicts with fold ensembles (``fma-submit``, ``fma-pseudo``):
    ``--weights``, ``--jobs``, ``--batch-size``, ``--no-progress``, ``--allow-diverged``."""
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR,
                        help="musicnn weights folder, for musicnn-embedding experiments (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=-1, help="feature extraction workers (-1: all cores)")
    parser.add_argument("--batch-size", type=int, default=None, help="crops per model call (default: experiment's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--allow-diverged", action="store_true",
                        help="use failed or diverged folds too (refused by default)")


def _zero_shot_requested(argv: list[str]) -> bool:
    """Whether ``--exp`` names the zero-shot musicnn baseline (``crowdai.zero_shot_submit``)."""
    from crowdai.zero_shot_submit import ZERO_SHOT_EXP

    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--exp", default=None)
    exp = probe.parse_known_args(argv)[0].exp
    return exp is not None and exp.strip() == ZERO_SHOT_EXP


def check_weights_dir(path: Path) -> None:
    """Refuse ``--weights 0.7,0.3``: hand-typed blend weights were renamed ``--blend-weights``."""
    text = str(path)
    if "," in text or text.replace(".", "", 1).isdigit():
        raise ConfigError(f"--weights {text}: is the musicnn weights folder; hand-typed blend weights "
                          f"are --blend-weights")


def postprocessing_report(record: dict[str, Any], *, value_range) -> str:
    """Lines on the test prior (with ``--adapt-prior``), the blend, the probability range and floor."""
    lines = []
    if record["prior"] is not None:
        lines.append(f"class prior: training vs estimated on the test set ({record['prior']['iterations']} "
                     f"EM iterations)")
        lines.append(prior_table(record["prior"]))
    blend = record["blend"]
    if blend is not None:
        lines.append(f"blend {blend['path']} (sha256 {blend['sha256'][:12]}): {blend['chosen']}, "
                     f"cross-fitted out-of-fold log loss {blend['cross_fitted_log_loss']:.4f}")
    lines.append(f"{value_range} (floor eps {record['floor']:.3g})")
    return "\n".join(lines)


@command("fma-submit")
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if _zero_shot_requested(argv):
        from crowdai import zero_shot_submit

        return zero_shot_submit.run(argv)
    args = build_parser().parse_args(argv)
    check_weights_dir(args.weights)
    combination = resolve_combination(exp=args.exp, blend=args.blend, blend_weights=args.blend_weights,
                                      mean=args.mean, runs=args.runs)
    csv_path = claim_submission_path(output=args.output, out_dir=args.out, names=combination.names)
    ensembles, predictions = predict_members(combination, runs=args.runs, test_dir=args.test_dir,
                                             cache_root=args.cache, n_jobs=args.jobs, batch_size=args.batch_size,
                                             progress=not args.no_progress, weights_dir=args.weights,
                                             allow_diverged=args.allow_diverged)
    for extraction in predictions.extractions:
        print(extraction.line(), flush=True)
    predictions, record = finalise(predictions, combination=combination, ensembles=ensembles,
                                   adapt=args.adapt_prior)
    models = "+".join([*(f"{e.name}({len(e.models)} folds)" for e in ensembles),
                       *(f"{name}(zero-shot)" for name in predictions.zero_shot)])
    published = publish_submission(
        predictions, csv_path, test_dir=args.test_dir,
        record=sidecar_record(predictions, ensembles=ensembles, mean=combination.mean,
                              weights=combination.weights, extra=record, names=combination.names),
        method=f"{models}, {combination.mean} mean",
        seconds=f"features {predictions.feature_seconds:.1f} s, models {predictions.model_seconds:.1f} s",
        notes=lambda value_range: postprocessing_report(record, value_range=value_range))
    print("\n".join(published.report))
    published.require_valid()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
