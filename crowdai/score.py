"""Leaderboard metrics of a crowdAI submission against known labels.

Usage::

    python -m crowdai.score SUBMISSION.csv --labels LABELS.csv [--json OUT.json]
    python -m crowdai.score A.csv B.csv ... --labels LABELS.csv     # side by side, says which is better

``LABELS.csv`` has columns ``file_id,genre`` (``genre`` a top-genre title such as
``Hip-Hop``). Prints the mean log loss (primary score), macro F1 (secondary score),
accuracy and a per-genre table. Submission rows without a label are ignored (and counted);
a label without a submission row is an error. Given several submissions, prints one line
of scores per submission and names the best by log loss (``make demo`` compares the trained
ensemble with the zero-shot musicnn baseline this way).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from common.cli import command
from common.errors import ToolkitError
from common.io import write_text_atomic
from common.metadata import TOP_GENRES
from common.metrics import per_class_table, score
from crowdai.submission import read_submission

#: Columns of a labels file.
LABEL_COLUMNS: tuple[str, ...] = ("file_id", "genre")


def read_labels(path: str | Path) -> pd.Series:
    """Read ``file_id,genre`` labels.

    Returns
    -------
    pd.Series
        Index ``file_id`` (str), values class indices into :data:`TOP_GENRES` (int).

    Raises
    ------
    ToolkitError
        Missing file, wrong columns, duplicated ids or a genre that is not a top genre
        (the message names the file and the rows).
    """
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: labels file not found")
    labels = pd.read_csv(path, dtype=str, keep_default_na=False)
    if tuple(labels.columns) != LABEL_COLUMNS:
        raise ToolkitError(f"{path}: columns {list(labels.columns)}, expected {list(LABEL_COLUMNS)}")
    unknown = ~labels["genre"].isin(TOP_GENRES)
    if unknown.any():
        rows = ", ".join(f"row {i + 1} ({labels['file_id'][i]}: {labels['genre'][i]!r})"
                         for i in np.flatnonzero(unknown)[:5])
        raise ToolkitError(f"{path}: {int(unknown.sum())} genres are not top genres, e.g. {rows}")
    duplicated = labels["file_id"].duplicated()
    if duplicated.any():
        raise ToolkitError(f"{path}: duplicated file_id {labels['file_id'][duplicated].iloc[0]!r}")
    index = {genre: i for i, genre in enumerate(TOP_GENRES)}
    return pd.Series(labels["genre"].map(index).to_numpy(np.int64),
                     index=pd.Index(labels["file_id"], name="file_id"), name="genre")


def score_submission(submission: pd.DataFrame, labels: pd.Series, *, path: Path) -> tuple[dict, pd.DataFrame]:
    """Score the labelled rows of a submission.

    Parameters
    ----------
    submission : pd.DataFrame
        From :func:`crowdai.submission.read_submission`.
    labels : pd.Series
        From :func:`read_labels`.
    path : Path
        The submission, named in errors.

    Returns
    -------
    scores : dict
        ``log_loss``, ``macro_f1``, ``accuracy``, ``n``, ``n_unlabelled_rows``.
    table : pd.DataFrame
        Per-genre precision, recall, F1 and support.
    """
    missing = labels.index.difference(submission.index)
    if len(missing):
        raise ToolkitError(f"{path}: no row for {len(missing)} labelled file_id, e.g. {missing[0]!r}")
    probs = submission.loc[labels.index].to_numpy()
    scores = score("single", labels.to_numpy(), probs, TOP_GENRES)
    scores["n_unlabelled_rows"] = int(len(submission) - len(labels))
    return scores, per_class_table(labels.to_numpy(), probs, class_names=TOP_GENRES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fma-score", description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, nargs="+", help="submission CSV (several: compared side by side)")
    parser.add_argument("--labels", type=Path, required=True, help="CSV with columns file_id,genre")
    parser.add_argument("--json", type=Path, default=None, help="also save the scores and table here (new file)")
    return parser


def compare_lines(scored: list[tuple[Path, dict]]) -> list[str]:
    """One line per scored submission, then which is better by log loss (the primary score)."""
    width = max(len(str(path)) for path, _ in scored)
    lines = [f"{str(path):{width}s}  log loss {scores['log_loss']:.4f}  macro F1 {scores['macro_f1']:.4f}  "
             f"accuracy {scores['accuracy']:.4f}" for path, scores in scored]
    ranked = sorted(scored, key=lambda item: item[1]["log_loss"])
    best, runner_up = ranked[0], ranked[1]
    lines.append(f"better: {best[0]} (log loss {best[1]['log_loss']:.4f} < {runner_up[1]['log_loss']:.4f} "
                 f"of {runner_up[0]})")
    return lines


@command("fma-score")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.json is not None and len(args.file) > 1:
        raise ToolkitError("--json takes one submission")
    if args.json is not None and args.json.exists():
        raise ToolkitError(f"{args.json} already exists; not overwriting it")
    labels = read_labels(args.labels)
    scored = [(path, *score_submission(read_submission(path), labels, path=path)) for path in args.file]
    if args.json is not None:
        _, scores, table = scored[0]
        record = {"submission": str(args.file[0]), "labels": str(args.labels), **scores,
                  "per_genre": table.reset_index().to_dict(orient="records")}
        write_text_atomic(args.json, json.dumps(record, indent=2) + "\n")
    if len(scored) > 1:
        print("\n".join(compare_lines([(path, scores) for path, scores, _ in scored])))
        return 0
    _, scores, table = scored[0]
    print(f"log loss (primary):   {scores['log_loss']:.4f}")
    print(f"macro F1 (secondary): {scores['macro_f1']:.4f}")
    print(f"accuracy:             {scores['accuracy']:.4f}")
    print(f"scored rows:          {scores['n']}" + (f" ({scores['n_unlabelled_rows']} rows without a label ignored)"
                                                    if scores["n_unlabelled_rows"] else ""))
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    if args.json is not None:
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
