"""Train the folds of one experiment and score its fold ensemble on the test split.

    python -m experiments.runner --config experiments/configs/crnn.yaml --data data \\
        --subset medium --folds data/folds-medium-k5.csv --cache cache --runs runs [--fold 2] \\
        [--scheduler tcp://host:8786]

Writes ``RUNS/<exp>/fold_<k>/`` (see :mod:`common.training`) and, once every fold of
the folds file is finished, ``RUNS/<exp>/oof.csv`` (out-of-fold predictions of all folds),
``RUNS/<exp>/classes.json`` and ``RUNS/<exp>/summary.json`` (CV mean ± std and the
test-split scores of the mean of the fold models' probabilities).
A finished fold is never retrained; an interrupted one resumes from its checkpoint.
A fold marked diverged in its summary gets a warning line on stderr (``submit`` and
``blend`` refuse it; see :func:`common.runs.verify_fold`).
This module is the command line only: the work is done by :mod:`experiments.experiment`
(locally) or :mod:`experiments.distributed` (``--scheduler``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli import command
from common.config import load_config
from common.runs import divergence_detail, finished_fold_dirs, is_diverged, read_fold_summary, retrain_command
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
    folds = None if args.fold is None else [args.fold]
    if args.scheduler:
        where = {"scheduler": args.scheduler, "data": args.data, "subset": args.subset,
                 "folds_path": args.folds, "cache": args.cache, "runs": args.runs}
        train_folds_on_dask(config, **where, folds=check_folds(exp_data, folds), verbose=args.verbose)
        summary = summarise_on_dask(config, **where, fold_numbers=check_folds(exp_data, None))
    else:
        summary = train_experiment(config, exp_data, runs=args.runs, folds=folds, verbose=args.verbose)
    exp_dir = args.runs / config.name
    _warn_diverged(exp_dir)
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


def _warn_diverged(exp_dir: Path) -> None:
    """One ``warning:`` line on stderr per finished fold of ``exp_dir`` marked diverged."""
    for fold in finished_fold_dirs(exp_dir):
        summary = read_fold_summary(fold)
        if is_diverged(summary):
            print(f"fma-train: warning: {divergence_detail(fold, summary)}; submit and blend refuse it; "
                  f"lower training.optimizer.learning_rate, move {fold} away and run "
                  f"`{retrain_command(fold, summary)}`", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
