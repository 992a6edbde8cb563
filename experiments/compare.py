"""Compare every experiment of a runs folder (``make compare``).

Usage::

    python -m experiments.compare --runs runs --out runs/compare [--verify]

Reads ``RUNS/<exp>/summary.json`` (or ``RUNS/<group>/<exp>/``, one level down, as
``make demo`` trains into ``runs/demo/demo``; such an experiment is named ``<group>/<exp>``)
(and, for an experiment still training, the
``fold_<k>/summary.json`` of its finished folds), prints one table — experiment, task,
model, CV mean ± std of log loss, macro F1 and accuracy, test-split scores, parameters,
seconds per epoch, date — and writes into OUT:

* ``compare.csv`` (numbers, one column per statistic) and ``compare.md`` (``mean ± std``);
* ``learning_curves.png``: validation log loss per epoch of every fold of every experiment
  (from ``fold_<k>/history.csv``), one panel per task;
* ``confusion_<exp>.png``: row-normalised confusion matrix of the out-of-fold predictions
  (``RUNS/<exp>/oof.csv``) of the best single-label experiment (the best complete one
  when there is one).

Rows are sorted by task (``single`` first), then by CV log loss ascending: categorical and
binary log losses are on different scales, so experiments are only ranked within a task.
The status column says whether an experiment is complete and names its failed and diverged
folds (:func:`common.runs.fold_status`). Every finished fold's ``model.keras`` and ``oof.csv``
are checked against the sizes its summary records, and against their sha256 with ``--verify``:
a damaged fold stops the command with an error naming it and the command that retrains it.
The files in OUT are reports derived from the runs and are rewritten on every call.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn.metrics
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from common.cli import command
from common.errors import ToolkitError
from common.io import make_folder
from common.runs import FOLD_STATUSES, fold_dirs, fold_status, verify_folds

#: Metrics of the table, in column order.
METRICS: tuple[str, ...] = ("log_loss", "macro_f1", "accuracy")

#: Columns of ``compare.csv``, in order.
TABLE_COLUMNS: tuple[str, ...] = (
    "experiment", "task", "model", "status", "folds",
    *(f"cv_{m}_{s}" for m in METRICS for s in ("mean", "std")),
    *(f"test_{m}" for m in METRICS),
    "params", "seconds_per_epoch", "date",
)

_TASK_ORDER = {"single": 0, "multi": 1}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ToolkitError(f"{path}: cannot read run summary: {error}") from error


def _is_experiment(folder: Path) -> bool:
    """Whether ``folder`` is an experiment's run folder (``summary.json`` or a ``fold_<k>`` folder)."""
    return (folder / "summary.json").is_file() or bool(fold_dirs(folder))


def experiment_dirs(runs_dir: Path, *, exclude: tuple[Path, ...] = ()) -> list[Path]:
    """The experiment folders of ``runs_dir``: ``RUNS/<exp>``, or one level down ``RUNS/<group>/<exp>``.

    A folder of ``runs_dir`` that is no experiment but holds experiments (``runs/demo``
    after ``make demo``) stands for them; one holding none is returned as it is (and
    reported as skipped by :func:`collect`). Hidden folders and ``exclude`` are left out.
    """
    excluded = {p.resolve() for p in exclude}

    def children(folder: Path) -> list[Path]:
        return sorted(d for d in folder.iterdir()
                      if d.is_dir() and not d.name.startswith(".") and d.resolve() not in excluded)

    found = []
    for folder in children(runs_dir):
        inner = [] if _is_experiment(folder) else [d for d in children(folder) if _is_experiment(d)]
        found.extend(inner or [folder])
    return found


def _record(summary: dict, *, cv: dict, folds: int, status: str, name: str) -> dict:
    test = summary.get("test") or {}
    record = {
        "experiment": name, "task": summary.get("task"),
        "model": summary.get("model"), "status": status, "folds": folds,
        "params": summary.get("params"), "seconds_per_epoch": summary.get("seconds_per_epoch"),
        "date": summary.get("date"),
    }
    for metric in METRICS:
        stats = cv.get(metric) or {}
        record[f"cv_{metric}_mean"] = stats.get("mean", np.nan)
        record[f"cv_{metric}_std"] = stats.get("std", np.nan)
        record[f"test_{metric}"] = test.get(metric, np.nan)
    if isinstance(record["params"], dict):
        record["params"] = json.dumps(record["params"], sort_keys=True)
    return record


def load_experiment(exp_dir: Path, *, name: str | None = None, hash: bool = False) -> dict | None:
    """One row of the comparison table, or None when the experiment has no finished fold.

    Parameters
    ----------
    exp_dir : Path
        ``RUNS/<exp>`` (or ``RUNS/<group>/<exp>``).
    name : str, optional
        Shown as ``experiment`` (default: the folder name).
    hash : bool
        Check the sha256 of every finished fold's recorded files, not only their sizes (``--verify``).

    Returns
    -------
    dict or None
        Keys :data:`TABLE_COLUMNS`. An experiment without ``summary.json`` is reported
        ``incomplete`` with CV statistics over its finished folds (std with ``ddof=0``) and
        no test scores. A status ends in ``; diverged folds 0, 2; failed fold 1`` when folds
        failed or diverged.

    Raises
    ------
    DamagedFoldError
        A finished fold's recorded files differ from what its summary records
        (:func:`common.runs.verify_folds`), naming the fold and the command that retrains it.
    """
    fold_summaries = verify_folds(exp_dir, hash=hash, allow_diverged=True)
    note = status_note(fold_summaries)
    summary_path = exp_dir / "summary.json"
    if summary_path.is_file():
        summary = _read_json(summary_path)
        return _record(summary, cv=summary.get("cv") or {}, folds=len(summary.get("folds") or []),
                       status="complete" + note, name=name or exp_dir.name)
    if not fold_summaries:
        return None
    cv = {}
    for metric in METRICS:
        values = [f["metrics"][metric] for f in fold_summaries if metric in (f.get("metrics") or {})]
        if values:
            cv[metric] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    first = dict(fold_summaries[0], test=None)
    # None (a fold that failed in its first epoch) and absent are NaN
    first["seconds_per_epoch"] = float(np.mean(np.array([f.get("seconds_per_epoch") for f in fold_summaries],
                                                        dtype=float)))
    return _record(first, cv=cv, folds=len(fold_summaries),
                   status=f"incomplete ({len(fold_summaries)} fold{'s' if len(fold_summaries) > 1 else ''} done)"
                          + note,
                   name=name or exp_dir.name)


def status_note(fold_summaries: list[dict]) -> str:
    """``"; diverged folds 0, 2; failed fold 1"``: the folds of each status but ``"ok"``, or ``""``."""
    note = ""
    for status in FOLD_STATUSES[1:]:
        folds = [str(f.get("fold")) for f in fold_summaries if fold_status(f) == status]
        if folds:
            note += f"; {status} fold{'s' if len(folds) > 1 else ''} {', '.join(folds)}"
    return note


def collect(runs_dir: Path, *, exclude: tuple[Path, ...] = (), hash: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """The comparison table of every experiment in ``runs_dir``.

    Parameters
    ----------
    runs_dir : Path
    exclude : tuple of Path
        Folders to leave out (the output folder when it lies inside ``runs_dir``).
    hash : bool
        Check the sha256 of the finished folds' files too (:func:`load_experiment`).

    Returns
    -------
    table : pd.DataFrame
        Columns :data:`TABLE_COLUMNS`, sorted by task then CV log loss.
    notes : list of str
        Experiments that were skipped, and why.
    """
    if not runs_dir.is_dir():
        raise ToolkitError(f"{runs_dir}: runs folder not found; train an experiment first (make train)")
    records, notes = [], []
    for exp_dir in experiment_dirs(runs_dir, exclude=exclude):
        record = load_experiment(exp_dir, name=exp_dir.relative_to(runs_dir).as_posix(), hash=hash)
        if record is None:
            notes.append(f"skipped {exp_dir}: no summary.json and no finished fold yet")
        else:
            records.append(record)
    table = pd.DataFrame(records, columns=list(TABLE_COLUMNS))
    if not table.empty:
        order = table["task"].map(_TASK_ORDER).fillna(len(_TASK_ORDER))
        table = (table.assign(_order=order).sort_values(["_order", "cv_log_loss_mean"], na_position="last",
                                                        kind="stable")
                 .drop(columns="_order").reset_index(drop=True))
    return table, notes


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text: ``mean ± std`` for CV, 4 decimals, blanks for missing values."""
    def number(value: object, digits: int = 4) -> str:
        return "" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"

    shown = table[["experiment", "task", "model", "status"]].copy()
    for metric in METRICS:
        shown[f"CV {metric}"] = [f"{number(m)} ± {number(s)}" if number(m) else ""
                                 for m, s in zip(table[f"cv_{metric}_mean"], table[f"cv_{metric}_std"])]
    for metric in METRICS:
        shown[f"test {metric}"] = [number(v) for v in table[f"test_{metric}"]]
    shown["params"] = ["" if p is None or (isinstance(p, float) and np.isnan(p)) else
                       (f"{p:,}" if isinstance(p, (int, np.integer)) else str(p)) for p in table["params"]]
    shown["s/epoch"] = [number(v, 1) for v in table["seconds_per_epoch"]]
    shown["date"] = table["date"].fillna("")
    return shown


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of string cells."""
    def row(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [row(frame.columns), row(["---"] * len(frame.columns))]
    lines += [row(values) for values in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def plot_learning_curves(runs_dir: Path, table: pd.DataFrame, *, out: Path) -> Path:
    """Validation log loss per epoch of every fold of every experiment; one panel per task.

    Parameters
    ----------
    runs_dir : Path
    table : pd.DataFrame
        From :func:`collect`; its order sets the colours.
    out : Path
        PNG to write.
    """
    tasks = list(dict.fromkeys(table["task"].fillna("unknown")))
    figure = Figure(figsize=(7 * len(tasks), 4.5), layout="constrained")
    axes = figure.subplots(1, len(tasks), squeeze=False)[0]
    colours = [f"C{i % 10}" for i in range(len(table))]
    for record, colour in zip(table.itertuples(index=False), colours):
        ax = axes[tasks.index(record.task if isinstance(record.task, str) else "unknown")]
        experiment = str(record.experiment)
        label: str | None = experiment
        for fold_path in fold_dirs(runs_dir / experiment):
            history_path = fold_path / "history.csv"
            if not history_path.is_file():
                continue
            history = pd.read_csv(history_path)
            if not {"epoch", "val_loss"} <= set(history.columns):
                raise ToolkitError(f"{history_path}: needs columns epoch and val_loss, has {list(history.columns)}")
            ax.plot(history["epoch"], history["val_loss"], color=colour, alpha=0.8, marker=".", label=label)
            label = None  # one legend entry per experiment
    for ax, task in zip(axes, tasks):
        ax.set(title=f"validation log loss per epoch ({task})", xlabel="epoch", ylabel="val log loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    figure.savefig(out, dpi=110)
    return out


def plot_confusion(oof_path: Path, *, out: Path, title: str) -> Path:
    """Row-normalised confusion matrix of single-label out-of-fold predictions.

    Parameters
    ----------
    oof_path : Path
        ``oof.csv``: columns ``id, fold, target`` (class name) then one probability column
        per class.
    out : Path
        PNG to write.
    title : str
    """
    oof = pd.read_csv(oof_path, dtype={"id": str, "target": str})
    if list(oof.columns[:3]) != ["id", "fold", "target"] or len(oof.columns) < 5:
        raise ToolkitError(f"{oof_path}: expected columns id, fold, target, then one per class; "
                           f"got {list(oof.columns)}")
    classes = list(oof.columns[3:])
    unknown = set(oof["target"]) - set(classes)
    if unknown:
        raise ToolkitError(f"{oof_path}: targets {sorted(unknown)[:5]} are not class columns")
    predicted = np.asarray(classes)[oof[classes].to_numpy().argmax(axis=1)]
    matrix = sklearn.metrics.confusion_matrix(oof["target"], predicted, labels=classes, normalize="true")
    size = 3 + 0.45 * len(classes)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    for (i, j), value in np.ndenumerate(matrix):
        if value >= 0.005:
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    figure.colorbar(image, ax=ax, label="fraction of the true genre")
    figure.savefig(out, dpi=110)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fma-compare", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"),
                        help="folder holding one folder per experiment (or per group of experiments)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: RUNS/compare)")
    parser.add_argument("--verify", action="store_true",
                        help="check the sha256 of every fold's model.keras and oof.csv, not only their sizes")
    return parser


@command("fma-compare")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out or args.runs / "compare"
    table, notes = collect(args.runs, exclude=(out, args.runs / "compare"), hash=args.verify)
    for note in notes:
        print(f"compare: {note}", file=sys.stderr)
    if table.empty:
        raise ToolkitError(f"{args.runs}: no experiment with a finished fold")
    make_folder(out)
    shown = display_table(table)
    print(shown.to_string(index=False))
    table.to_csv(out / "compare.csv", index=False)
    (out / "compare.md").write_text(to_markdown(shown))
    written = [out / "compare.csv", out / "compare.md", plot_learning_curves(args.runs, table,
                                                                            out=out / "learning_curves.png")]
    candidates = [r for r in table.itertuples(index=False)
                  if r.task == "single" and (args.runs / r.experiment / "oof.csv").is_file()]
    # Complete experiments first: a partial CV mean is not comparable.
    best = min(candidates, key=lambda r: r.status != "complete", default=None)
    if best is None:
        print("compare: no single-label experiment with oof.csv; no confusion matrix", file=sys.stderr)
    else:
        name = str(best.experiment)
        written.append(plot_confusion(
            args.runs / name / "oof.csv", out=out / f"confusion_{name.replace('/', '_')}.png",
            title=f"{name}: out-of-fold confusion (CV log loss {best.cv_log_loss_mean:.4f})"))
    print("compare: wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
