"""A crowdAI submission from the fold ensembles of one or more trained experiments.

Usage::

    python -m crowdai.submit --exp crnn,shortchunk --runs runs --test-dir data/crowdai_fma_test \\
        --cache cache --out submissions [--mean arithmetic|geometric] [--weights 0.7,0.3]

The test folder's features are computed once per distinct feature settings (cached like
any other source, named after the folder) and fed to every fold model of every named
experiment (each a ``single`` experiment over the 16 top genres). Each experiment's fold
ensemble gives clip probabilities by its own evaluation policy; the experiments are
combined by an arithmetic or geometric mean with optional weights
(:mod:`crowdai.ensemble`).

Every mp3 of the test folder gets a row. A file whose features failed (silent, too short,
unreadable; ``failures.csv`` of the cache) is predicted from whatever audio decodes
(no length or silence check, padded to the clip length); a file that does not decode at
all gets the experiments' training prior. The sidecar JSON lists them.

Writes ``OUT/<UTC timestamp>_<exp1+exp2>.csv`` (or exactly ``--output FILE``) and a sidecar
``.json`` beside it (models, CV scores, settings, weights, rows, sha256, fallbacks), never
overwriting a file; the CSV is validated against the test folder before success is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import OutputExistsError, ToolkitError, UnreadableAudioError
from crowdai.ensemble import MEANS, FoldEnsemble, combine, load_ensemble, parse_weights

#: Fallback kinds of a file whose features failed.
FALLBACK_MODEL = "model_on_decoded_audio"
FALLBACK_PRIOR = "training_prior"


@dataclasses.dataclass
class TestPredictions:
    """Probabilities of every test file, before writing.

    Attributes
    ----------
    ids : list of str, length n
        ``file_id`` of every mp3, sorted.
    probs : np.ndarray, shape (n, 16)
        Combined probabilities (rows sum to 1).
    per_experiment : dict of str to np.ndarray, shape (n, 16)
    fallbacks : list of dict
        One record per file whose features failed: ``id, path, reason, detail, fallback,
        decoded_seconds``.
    cache_dirs : list of str
    feature_seconds, model_seconds : float
        Wall-clock time of feature extraction (incl. fallback decoding) and of the models.
    """

    ids: list[str]
    probs: np.ndarray
    per_experiment: dict[str, np.ndarray]
    fallbacks: list[dict[str, Any]]
    cache_dirs: list[str]
    feature_seconds: float
    model_seconds: float


def _fallback_features(path: str, *, settings) -> tuple[np.ndarray | None, float]:
    """Features of whatever audio of ``path`` decodes (padded or cropped to the clip).

    Returns
    -------
    features : np.ndarray, shape settings.clip_shape, or None when nothing decodes
    seconds : float
        Decoded length (0 when nothing decodes).
    """
    from common.audio import crop_or_pad, features_for, load_audio

    try:
        y = load_audio(path, sample_rate=settings.sample_rate)
    except UnreadableAudioError:
        return None, 0.0
    clip = crop_or_pad(y, n_samples=settings.clip_samples, crop=settings.crop)
    return features_for(clip, settings=settings), y.shape[0] / settings.sample_rate


def predict_test_folder(ensembles: Sequence[FoldEnsemble], *, test_dir: str | Path, cache_root: str | Path,
                        weights: np.ndarray | None = None, mean: str = "arithmetic", n_jobs: int = -1,
                        batch_size: int | None = None, progress: bool = True) -> TestPredictions:
    """Fold-ensemble probabilities of every mp3 of ``test_dir``, combined across experiments.

    Features are extracted once per distinct :class:`~common.settings.FeatureSettings`
    into ``cache_dir_for(cache_root, <test folder name>, settings)`` (reused when present).

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

    Returns
    -------
    TestPredictions
    """
    from tqdm.auto import tqdm

    from common.data import ClipStore
    from common.features import FeatureCache, cache_dir_for, extract, folder_items
    from crowdai.submission import list_test_ids

    test_dir = Path(test_dir)
    ids = list_test_ids(test_dir)
    items = folder_items(test_dir)
    groups: dict[Any, list[FoldEnsemble]] = {}
    for ensemble in ensembles:
        groups.setdefault(ensemble.settings, []).append(ensemble)
    per_experiment = {e.name: np.empty((len(ids), len(e.task.class_names))) for e in ensembles}
    fallbacks: dict[str, dict[str, Any]] = {}
    cache_dirs, feature_seconds, model_seconds = [], 0.0, 0.0
    for settings, group in groups.items():
        start = time.perf_counter()
        cache_dir = cache_dir_for(cache_root, test_dir.resolve().name, settings)
        extract(items, settings=settings, cache_dir=cache_dir, n_jobs=n_jobs, progress=progress)
        cache = FeatureCache.open(cache_dir)
        available = set(cache.ids.tolist())
        ok_rows = np.array([i for i, file_id in enumerate(ids) if file_id in available], dtype=np.int64)
        store = ClipStore(cache, [ids[i] for i in ok_rows])
        failures = cache.failures.set_index("id")
        decoded_rows, decoded, prior_rows = [], [], []
        for row, file_id in enumerate(ids):
            if file_id in available:
                continue
            failure = failures.loc[file_id]
            features, seconds = _fallback_features(failure["path"], settings=settings)
            kind = FALLBACK_PRIOR if features is None else FALLBACK_MODEL
            record = fallbacks.setdefault(file_id, {
                "id": file_id, "path": failure["path"], "reason": failure["reason"], "detail": failure["detail"],
                "fallback": kind, "decoded_seconds": round(seconds, 3)})
            if record["fallback"] != kind:  # decodable at one rate and not another: say so
                record["fallback"] = f"{record['fallback']}+{kind}"
            (prior_rows if features is None else decoded_rows).append(row)
            if features is not None:
                decoded.append(features)
        feature_seconds += time.perf_counter() - start
        cache_dirs.append(str(cache_dir))
        start = time.perf_counter()
        for ensemble in group:
            probs = per_experiment[ensemble.name]
            bar = tqdm(total=len(ok_rows), unit="clip", desc=f"{ensemble.name} ({len(ensemble.models)} folds)",
                       disable=not progress, file=sys.stderr)
            probs[ok_rows] = ensemble.predict(store, batch_size=batch_size,
                                              on_batch=lambda done, bar=bar: bar.update(done - bar.n))
            bar.close()
            if decoded:
                probs[decoded_rows] = ensemble.predict(np.stack(decoded), batch_size=batch_size)
            if prior_rows:
                probs[prior_rows] = ensemble.prior()
        model_seconds += time.perf_counter() - start
    combined = combine([per_experiment[e.name] for e in ensembles], weights=weights, mean=mean)
    return TestPredictions(ids=ids, probs=combined, per_experiment=per_experiment,
                           fallbacks=sorted(fallbacks.values(), key=lambda r: r["id"]), cache_dirs=cache_dirs,
                           feature_seconds=feature_seconds, model_seconds=model_seconds)


def submission_path(out_dir: str | Path, names: Sequence[str], *, now: datetime.datetime | None = None) -> Path:
    """``out_dir/<UTC timestamp>_<exp1+exp2>.csv``, e.g. ``20260301T120501Z_crnn+shortchunk.csv``."""
    now = now or datetime.datetime.now(datetime.UTC)
    return Path(out_dir) / f"{now.strftime('%Y%m%dT%H%M%SZ')}_{'+'.join(names)}.csv"


def sidecar_path(csv_path: str | Path) -> Path:
    """The sidecar JSON beside a submission: same name, ``.json``."""
    csv_path = Path(csv_path)
    if csv_path.suffix.lower() == ".json":
        raise ToolkitError(f"{csv_path}: a submission must not end in .json (the sidecar takes that name)")
    return csv_path.with_suffix(".json")


def write_outputs(predictions: TestPredictions, csv_path: str | Path, *, ensembles: Sequence[FoldEnsemble],
                  test_dir: str | Path, mean: str, weights: np.ndarray) -> tuple[Path, Path, dict[str, Any]]:
    """Write the submission CSV and its sidecar JSON; never overwrites either.

    Returns
    -------
    csv_path, json_path : Path
    sidecar : dict
        What the JSON holds.

    Raises
    ------
    OutputExistsError
        The CSV or the sidecar exists (nothing is written then).
    """
    from common.io import write_text_atomic
    from crowdai.submission import write_submission

    csv_path = Path(csv_path)
    json_path = sidecar_path(csv_path)
    for path in (csv_path, json_path):
        if path.exists():
            raise OutputExistsError(path)
    write_submission(csv_path, predictions.ids, predictions.probs)
    kinds = [record["fallback"] for record in predictions.fallbacks]
    sidecar = {
        "submission": csv_path.name,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "test_dir": str(test_dir),
        "rows": len(predictions.ids),
        "sha256": hashlib.sha256(csv_path.read_bytes()).hexdigest(),
        "mean": mean,
        "weights": {e.name: float(w) for e, w in zip(ensembles, weights)},
        "experiments": [e.describe() for e in ensembles],
        "feature_caches": predictions.cache_dirs,
        "fallback_counts": {kind: kinds.count(kind) for kind in sorted(set(kinds))},
        "fallbacks": predictions.fallbacks,
        "seconds": {"features": round(predictions.feature_seconds, 3), "models": round(predictions.model_seconds, 3)},
    }
    write_text_atomic(json_path, json.dumps(sidecar, indent=2) + "\n")
    return csv_path, json_path, sidecar


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m crowdai.submit", description=__doc__.splitlines()[0])
    parser.add_argument("--exp", required=True, help="experiment name(s), comma-separated: crnn,shortchunk")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="runs root (default: runs)")
    parser.add_argument("--test-dir", type=Path, required=True, help="folder of the test mp3s")
    parser.add_argument("--cache", type=Path, default=Path("cache"), help="feature cache root (default: cache)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--out", type=Path, default=Path("submissions"),
                        help="folder for <timestamp>_<exps>.csv and .json (default: submissions)")
    target.add_argument("--output", type=Path, default=None,
                        help="exact CSV path instead (round-2 runner); the sidecar is the same name with .json")
    parser.add_argument("--mean", choices=MEANS, default="arithmetic", help="how experiments are combined")
    parser.add_argument("--weights", default=None, help="one positive weight per experiment, e.g. 0.7,0.3")
    parser.add_argument("--jobs", type=int, default=-1, help="feature extraction workers (-1: all cores)")
    parser.add_argument("--batch-size", type=int, default=None, help="crops per model call (default: experiment's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    from crowdai.submission import validate_submission

    args = build_parser().parse_args(argv)
    names = [name.strip() for name in args.exp.split(",") if name.strip()]
    try:
        if not names or len(set(names)) != len(names):
            raise ToolkitError(f"--exp {args.exp!r}: give distinct experiment names, comma-separated")
        weights = parse_weights(args.weights, n=len(names))
        csv_path = args.output if args.output is not None else submission_path(args.out, names)
        for path in (csv_path, sidecar_path(csv_path)):
            if path.exists():
                raise OutputExistsError(path)
        ensembles = [load_ensemble(args.runs, name, require_top_genres=True) for name in names]
        predictions = predict_test_folder(ensembles, test_dir=args.test_dir, cache_root=args.cache, weights=weights,
                                          mean=args.mean, n_jobs=args.jobs, batch_size=args.batch_size,
                                          progress=not args.no_progress)
        csv_path, json_path, sidecar = write_outputs(predictions, csv_path, ensembles=ensembles,
                                                     test_dir=args.test_dir, mean=args.mean, weights=weights)
        problems = validate_submission(csv_path, test_dir=args.test_dir)
    except ToolkitError as error:
        print(f"submit: error: {error}", file=sys.stderr)
        return 2
    if problems:
        for problem in problems[:20]:
            print(f"{csv_path}: {problem}", file=sys.stderr)
        print(f"submit: INVALID: {len(problems)} problems in {csv_path}; do not upload it", file=sys.stderr)
        return 1
    counts = ", ".join(f"{n} {kind}" for kind, n in sidecar["fallback_counts"].items()) or "none"
    models = "+".join(f"{e.name}({len(e.models)} folds)" for e in ensembles)
    print(f"submission: {sidecar['rows']} rows valid, {models}, {args.mean} mean, fallbacks: {counts}; "
          f"features {predictions.feature_seconds:.1f} s, models {predictions.model_seconds:.1f} s -> {csv_path} "
          f"(+ {json_path.name}, sha256 {sidecar['sha256'][:12]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
