"""Pseudo-labels of a folder of unlabelled clips from the fold ensemble of an experiment or a fitted blend.

Usage::

    python -m crowdai.pseudo --exp crnn --runs runs --unlabelled data/crowdai_fma_test --cache cache \\
        --out runs/pseudo/crnn.csv [--threshold 0.6] [--data data --subset medium --folds data/folds-medium-k5.csv]
    python -m crowdai.pseudo --blend crnn+shortchunk ...

Every ``<id>.mp3`` of the folder (a crowdAI test folder, or the audio folder of a larger
subset as unpacked, ``fma_large/NNN/<track_id>.mp3``: :func:`common.features.folder_items`)
is predicted as ``fma-submit`` predicts a test folder (features cached under the folder's
name, :func:`crowdai.submit.predict_members`; a blend's zero-shot member too), then combined
by the experiments' arithmetic mean or the blend. Kept are the clips whose features are
cached (a clip that failed extraction cannot train), that are no track of the folds file or
of the test split (with ``--data/--subset/--folds``; :func:`common.pseudo.find_leaks`), and
whose largest probability reaches ``--threshold``.

Writes ``--out`` (id, 16 probabilities, confidence) and its sidecar ``.json`` (the fold
models with their sha256, the blend, the threshold, the folder, the counts), never
overwriting (:func:`common.pseudo.write_pseudo_labels`). With ``--folds``, when every
trained experiment has a model of each fold of that file validated on that fold's tracks
(:func:`folds_mismatch`), also the labels of each fold's models alone (``.folds.csv``,
:func:`fold_labels`). An experiment trains on it with ``data: {pseudo_labels: {path: ...,
weight: 0.5}}``, and on the fold labels with ``per_fold: true``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.cli import command
from common.errors import ConfigError
from common.folds import assignment_checksum
from common.io import sidecar_path
from common.metadata import TOP_GENRES
from common.pseudo import confidence_of, describe_leaks, find_leaks, fold_labels_path, write_pseudo_labels
from common.runs import fold_number
from crowdai.ensemble import FoldEnsemble
from crowdai.submit import (
    Combination,
    TestPredictions,
    add_prediction_options,
    predict_members,
    resolve_combination,
)


def fold_models(ensemble: FoldEnsemble) -> list[dict[str, Any]]:
    """Each fold model of ``ensemble``: ``{"fold", "model_sha256"}`` as its fold summary records it."""
    from common.runs import read_fold_summary

    return [{"fold": fold_dir.name,
             "model_sha256": read_fold_summary(fold_dir).get("files", {}).get("model.keras", {}).get("sha256")}
            for fold_dir in ensemble.fold_dirs]


def select_rows(ids: Sequence[str], probs: np.ndarray, *, no_features: set[str], leaks: dict[str, list[str]],
                threshold: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Which clips become pseudo-labels, and the counts of the others.

    Parameters
    ----------
    ids : sequence of str, shape (n,)
    probs : np.ndarray, shape (n, C)
    no_features : set of str
        Clips whose features failed.
    leaks : dict of str to list of str
        Clips that are tracks of the folds file or the test split (:func:`common.pseudo.leaking_ids`).
    threshold : float
        Smallest confidence (largest probability) kept.

    Returns
    -------
    keep : np.ndarray of bool, shape (n,)
    rows : dict
        ``predicted``, ``kept``, ``no_features``, ``refused`` (by reason) and ``below_threshold``.
    """
    refused = {i for found in leaks.values() for i in found}
    usable = np.array([i not in no_features and i not in refused for i in ids], dtype=bool)
    confident = confidence_of(probs) >= threshold
    keep = usable & confident
    return keep, {"predicted": len(ids), "kept": int(keep.sum()), "no_features": len(no_features),
                  "refused": {reason: len(found) for reason, found in leaks.items()},
                  "below_threshold": int((usable & ~confident).sum())}


def provenance(predictions: TestPredictions, *, combination: Combination, ensembles: Sequence[FoldEnsemble],
               unlabelled: Path, threshold: float, rows: dict[str, Any]) -> dict[str, Any]:
    """The sidecar record (:mod:`common.pseudo`) of pseudo-labels of ``unlabelled``: ``experiments`` are the
    trained ones (fold models and sha256), ``zero_shot`` the zero-shot members of a blend (their records)."""
    return {
        "source": str(unlabelled.resolve()), "source_name": unlabelled.resolve().name, "threshold": threshold,
        "rows": rows, "mean": combination.mean,
        "blend": combination.blend.describe() if combination.blend is not None else None,
        "experiments": [{"name": e.name, "exp_dir": str(e.exp_dir), "cv": (e.summary or {}).get("cv"),
                         "folds": fold_models(e)} for e in ensembles],
        "zero_shot": predictions.zero_shot, "feature_caches": predictions.cache_dirs,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fma-pseudo", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--exp", default=None, help="experiment name(s), comma-separated (arithmetic mean)")
    source.add_argument("--blend", default=None, help="a fitted blend: name under RUNS/blends or a blend.json path")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="runs root (default: runs)")
    parser.add_argument("--unlabelled", type=Path, required=True, help="folder of the unlabelled <id>.mp3 clips")
    parser.add_argument("--cache", type=Path, default=Path("cache"), help="feature cache root (default: cache)")
    parser.add_argument("--out", type=Path, required=True, help="pseudo-label CSV to write (sidecar: same name .json)")
    parser.add_argument("--threshold", type=float, default=0.0,
                        help="keep clips whose largest probability is at least this (default 0: all)")
    guard = parser.add_argument_group("leakage guard (drop tracks of the folds file and of the test split)")
    guard.add_argument("--data", type=Path, default=None, help="folder of fma_metadata/")
    guard.add_argument("--subset", default=None, help="subset of the folds file")
    guard.add_argument("--folds", type=Path, default=None, help="the folds file the experiments will train on")
    add_prediction_options(parser)
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse a threshold outside [0, 1], an existing output, and a partial leakage guard."""
    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold {args.threshold}: must lie in [0, 1]")
    for path in (args.out, sidecar_path(args.out), fold_labels_path(args.out)):
        if path.exists():
            raise ConfigError(f"{path}: exists; pseudo-label files are never overwritten (choose another --out)")
    given = [args.data is not None, args.subset is not None, args.folds is not None]
    if any(given) and not all(given):
        raise ConfigError("--data, --subset and --folds go together (the leakage guard needs all three)")


def guard_leaks(ids: Sequence[str], guard: tuple[pd.DataFrame, Path] | None) -> dict[str, list[str]]:
    """Clips that are tracks of the folds or of the test split of the guard (:func:`read_guard`; nothing without
    one)."""
    from common.pseudo import LEAK_REASONS

    if guard is None:
        return {reason: [] for reason in LEAK_REASONS}
    folds, metadata_dir = guard
    return find_leaks(ids, metadata_dir=metadata_dir, folds=folds)


def read_guard(args: argparse.Namespace) -> tuple[pd.DataFrame, Path] | None:
    """The folds file of ``--folds`` checked against ``--data``/``--subset`` (:func:`common.folds.read_folds`)
    and the metadata folder of that dataset, or None without the guard's arguments."""
    from common.folds import read_folds
    from common.metadata import FmaDataset

    if args.folds is None:
        return None
    dataset = FmaDataset.open(args.data, args.subset)
    return read_folds(args.folds, tracks=dataset.tracks), dataset.metadata_dir


def folds_mismatch(ensembles: Sequence[FoldEnsemble], folds: pd.DataFrame) -> str | None:
    """Why the trained experiments' folds are not ``folds``, or None when they are.

    Each must have a model for every fold of ``folds``, and fold ``k``'s model must have been
    validated on tracks of fold ``k`` only (its ``oof.csv``): then it never trained on them.
    """
    wanted = sorted(set(folds["fold"].astype(int)))
    for ensemble in ensembles:
        numbers = sorted(n for n in map(fold_number, ensemble.fold_dirs) if n is not None)
        if numbers != wanted:
            return f"{ensemble.name} has models of folds {numbers}, the folds file has folds {wanted}"
        for fold_dir in ensemble.fold_dirs:
            validated = pd.read_csv(fold_dir / "oof.csv", dtype={"id": str})["id"].astype(int)
            if not validated.isin(folds.index[folds["fold"] == fold_number(fold_dir)]).all():
                return f"{fold_dir} was validated on tracks outside fold {fold_number(fold_dir)} of the folds file"
    return None


def fold_labels(combination: Combination, ensembles: Sequence[FoldEnsemble], predictions: TestPredictions, *,
                keep: np.ndarray, kept_ids: list[str], folds: pd.DataFrame, cache_root: Path, unlabelled: Path,
                batch_size: int | None) -> dict[int, np.ndarray]:
    """The labels of each fold's models alone for the kept clips, combined as the ensembles are.

    Parameters
    ----------
    keep : np.ndarray of bool, shape (n,)
        The kept clips of ``predictions.ids`` (all cached: :func:`select_rows`).
    kept_ids : list of str, shape (n_kept,)
        Their ids, in order.

    Returns
    -------
    dict of int to np.ndarray, shape (n_kept, C) each
        By fold of ``folds``: each trained experiment's fold model, the zero-shot members of a
        blend as they are (they never trained), through ``combination``.
    """
    from common.features import FeatureCache, cache_dir_for
    from common.store import ClipStore

    per_fold = {e.name: e.predict_each_fold(
        ClipStore(FeatureCache.open(cache_dir_for(cache_root, unlabelled.resolve().name, e.settings)), kept_ids),
        batch_size=batch_size) for e in ensembles}
    untrained = {name: probs[keep] for name, probs in predictions.per_experiment.items() if name not in per_fold}
    return {fold: combination.apply({**{name: by_fold[fold] for name, by_fold in per_fold.items()}, **untrained})
            for fold in sorted(set(folds["fold"].astype(int)))}


@dataclasses.dataclass(frozen=True)
class PseudoLabelRun:
    """What :func:`make_pseudo_labels` wrote.

    Attributes
    ----------
    path : Path
        The pseudo-label CSV (its sidecar beside it).
    rows : dict
        The counts of :func:`select_rows`.
    leaks : dict of str to list of str
        The clips dropped as tracks of the folds file or of the test split, by reason.
    predictions : crowdai.submit.TestPredictions
        The members' predictions of the folder (their feature extractions included).
    fold_labels_refused : str or None
        Why no labels per fold were written although the folds file was given
        (:func:`folds_mismatch`); None when they were, or without a folds file.
    """

    path: Path
    rows: dict[str, Any]
    leaks: dict[str, list[str]]
    predictions: TestPredictions
    fold_labels_refused: str | None = None


def make_pseudo_labels(args: argparse.Namespace) -> PseudoLabelRun:
    """Predict ``args.unlabelled``, select its clips and write ``args.out`` (``args``: :func:`build_parser`'s)."""
    check_arguments(args)
    combination = resolve_combination(exp=args.exp, blend=args.blend, blend_weights=None, mean=None, runs=args.runs)
    ensembles, predictions = predict_members(combination, runs=args.runs, test_dir=args.unlabelled,
                                             cache_root=args.cache, n_jobs=args.jobs, batch_size=args.batch_size,
                                             progress=not args.no_progress, weights_dir=args.weights,
                                             allow_diverged=args.allow_diverged)
    probs = combination.apply(predictions.per_experiment)
    guard = read_guard(args)
    leaks = guard_leaks(predictions.ids, guard)
    keep, rows = select_rows(predictions.ids, probs, no_features={f["id"] for f in predictions.fallbacks},
                             leaks=leaks, threshold=args.threshold)
    kept_ids = [i for i, k in zip(predictions.ids, keep) if k]
    record = provenance(predictions, combination=combination, ensembles=ensembles, unlabelled=args.unlabelled,
                        threshold=args.threshold, rows=rows)
    by_fold = None
    if guard is not None:
        folds = guard[0]
        record["fold_labels_refused"] = folds_mismatch(ensembles, folds)
        if record["fold_labels_refused"] is None:
            record["folds_checksum"] = assignment_checksum(folds)
            by_fold = fold_labels(combination, ensembles, predictions, keep=keep, kept_ids=kept_ids, folds=folds,
                                  cache_root=args.cache, unlabelled=args.unlabelled, batch_size=args.batch_size)
    path = write_pseudo_labels(args.out, ids=kept_ids, probs=probs[keep],
                               class_names=TOP_GENRES, record=record, fold_probs=by_fold)
    return PseudoLabelRun(path=path, rows=rows, leaks=leaks, predictions=predictions,
                          fold_labels_refused=record.get("fold_labels_refused"))


@command("fma-pseudo")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = make_pseudo_labels(args)
    for extraction in run.predictions.extractions:
        print(extraction.line())
    dropped = describe_leaks(run.leaks)
    if dropped:
        print(f"fma-pseudo: dropped, as a track that is validated or scored must never train: {dropped}",
              file=sys.stderr)
    rows = run.rows
    if run.fold_labels_refused:
        print(f"fma-pseudo: no labels per fold (data.pseudo_labels.per_fold cannot use this file): "
              f"{run.fold_labels_refused}", file=sys.stderr)
    print(f"pseudo-labels: {rows['kept']} of {rows['predicted']} clips kept (confidence >= {args.threshold:g}; "
          f"{rows['below_threshold']} below it, {rows['no_features']} without features) -> {run.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
