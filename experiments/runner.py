"""Train the folds of one experiment and score its fold ensemble on the test split.

    python -m experiments.runner --config experiments/configs/crnn.yaml --data data \\
        --subset medium --folds data/folds-medium-k5.csv --cache cache --runs runs [--fold 2] \\
        [--scheduler tcp://host:8786]

Writes ``RUNS/<exp>/fold_<k>/`` (see :mod:`common.training`) and, once every fold of
the folds file is finished, ``RUNS/<exp>/oof.csv`` (out-of-fold predictions of all folds),
``RUNS/<exp>/classes.json`` and ``RUNS/<exp>/summary.json`` (CV mean ± std and the
test-split scores of the mean of the fold models' probabilities).
A finished fold is never retrained; an interrupted one resumes from its checkpoint.

A fold whose training loss stops being finite stops at once and is finished as failed
(``"status": "failed"`` in its summary): the other folds asked for still train, then the
command exits 1 with one ``fma-train: error:`` line per failed fold asked for (the
experiment gets no summary). A fold that trained but diverged (``"diverged"``), or a failed
fold not asked for, gets a ``warning:`` line on stderr. ``submit``, ``blend`` and
``package`` refuse both unless told ``--allow-diverged`` (see :func:`common.runs.verify_fold`).

One writer per fold: a second run of a fold that another run is training waits for it,
with a line on stderr naming the other run's host and pid, then skips the finished fold
(:func:`common.training.train_fold`).
This module is the command line only: the work is done by :mod:`experiments.experiment`
(locally) or :mod:`experiments.distributed` (``--scheduler``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli import EXIT_ERROR, command
from common.config import load_config
from common.runs import (
    RETRAIN_HINT,
    finished_fold_dirs,
    fold_number,
    fold_status,
    read_fold_summary,
    retrain_command,
    status_detail,
)
from experiments.distributed import summarise_on_dask, train_folds_on_dask
from experiments.experiment import check_folds, open_experiment_data, train_experiment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fma-train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="experiments/configs/<exp>.yaml")
    parser.add_argument("--data", type=Path, required=True, help="FMA data folder (fma_metadata/, fma_<subset>/)")
    parser.add_argument("--subset", default="medium", help="FMA subset (default: medium)")
    parser.add_argument("--folds", type=Path, required=True, help="folds CSV written by `make folds`")
    parser.add_argument("--cache", type=Path, default=Path("cache"), help="feature cache root (default: cache)")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="runs root (default: runs)")
    parser.add_argument("--fold", type=int, default=None, help="train only this fold")
    parser.add_argument("--scheduler", default=None,
                        help="dask.distributed scheduler, tcp://host:8786: each unfinished fold is a task on its "
                             "workers (see experiments.distributed); data, cache and runs on a shared file system")
    parser.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2), help="Keras fit verbosity")
    return parser


@command("fma-train", resume="run it again: finished folds are kept, the interrupted one resumes")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = load_config(args.config)
    # the client of --scheduler training reads no feature row: folds and summary run on workers
    exp_data = open_experiment_data(config, data=args.data, subset=args.subset, folds_path=args.folds,
                                     cache=args.cache, in_memory=False if args.scheduler else None)
    asked = check_folds(exp_data, None if args.fold is None else [args.fold])
    if args.scheduler:
        where = {"scheduler": args.scheduler, "data": args.data, "subset": args.subset,
                 "folds_path": args.folds, "cache": args.cache, "runs": args.runs}
        train_folds_on_dask(config, **where, folds=asked, verbose=args.verbose)
        summary = summarise_on_dask(config, **where, fold_numbers=check_folds(exp_data, None))
    else:
        summary = train_experiment(config, exp_data, runs=args.runs, folds=asked, verbose=args.verbose,
                                   on_wait=_say_waiting)
    exp_dir = args.runs / config.name
    errors, warnings = fold_problems(exp_dir, asked=asked)
    for line in warnings:
        print(f"fma-train: warning: {line}", file=sys.stderr)
    for line in errors:
        print(f"fma-train: error: {line}", file=sys.stderr)
    if errors:
        return EXIT_ERROR
    if summary is None:
        print(f"{config.name}: fold {args.fold} done; other folds remain (runs in {exp_dir})")
        return 0
    cv = summary["cv"]
    line = (f"{config.name}: CV log loss {cv['log_loss']['mean']:.4f} ± {cv['log_loss']['std']:.4f}, "
            f"macro F1 {cv['macro_f1']['mean']:.4f}, accuracy {cv['accuracy']['mean']:.4f}")
    if summary["test"]:
        t = summary["test"]
        line += f"; test log loss {t['log_loss']:.4f}, macro F1 {t['macro_f1']:.4f}, accuracy {t['accuracy']:.4f}"
    print(f"{line} ({exp_dir})")
    return 0


def _say_waiting(line: str) -> None:
    """Print the line of a lock another run holds (:func:`common.locks.folder_lock`'s ``on_wait``)."""
    print(f"fma-train: {line}", file=sys.stderr, flush=True)


def fold_problems(exp_dir: Path, *, asked: list[int]) -> tuple[list[str], list[str]]:
    """One line per finished fold of ``exp_dir`` whose status is not ``"ok"``, naming the retrain command.

    Returns
    -------
    errors : list of str
        The failed folds of ``asked``: the command exits 1.
    warnings : list of str
        The diverged folds, and the failed folds not asked for.
    """
    errors: list[str] = []
    warnings: list[str] = []
    for fold in finished_fold_dirs(exp_dir):
        summary = read_fold_summary(fold)
        status = fold_status(summary)
        if status == "ok":
            continue
        line = (f"{status_detail(fold, summary)}; submit, blend and package refuse it (unless --allow-diverged); "
                f"{RETRAIN_HINT}, move {fold} away and run `{retrain_command(fold, summary)}`")
        if status == "failed" and fold_number(fold) in asked:
            errors.append(line)
        else:
            warnings.append(line)
    return errors, warnings


if __name__ == "__main__":
    raise SystemExit(main())
