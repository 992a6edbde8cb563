"""The crowdAI "Learning to Recognize Musical Genre" (WWW 2018) submission format.

A submission is a CSV whose header is exactly :data:`SUBMISSION_COLUMNS`
(``file_id`` then the 16 top genres in leaderboard order), with one row per mp3 of the
test folder: ``file_id`` is the file name without ``.mp3``, every value is a probability
in ``[0, 1]`` (no NaN, no empty cell) and every row sums to 1 within
:data:`ROW_SUM_TOLERANCE`.

Problems are reported with their *row*: row 1 is the first data row (line 2 of the
file, under the header).

Probability floor: the leaderboard clips at 1e-15, so one exact 0 on the true genre costs
34.5 nats on its row. The toolkit never writes an exact 0 or 1: :func:`apply_floor` mixes
every row with ``eps`` per class, ``(p + eps) / (1 + C eps)``, with ``eps`` fitted on the
out-of-fold predictions of a blend (``crowdai.blend``) or :data:`PROBABILITY_FLOOR`.
:func:`probability_range` reports whether a file keeps the floor.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.errors import OutputExistsError, ToolkitError
from common.io import file_sha256, sidecar_path, write_text_atomic
from common.metadata import AUDIO_FOLDER_GLOB, TOP_GENRES

#: Header of a submission, exactly and in this order.
SUBMISSION_COLUMNS: tuple[str, ...] = ("file_id",) + TOP_GENRES

#: Largest allowed ``|row sum - 1|``.
ROW_SUM_TOLERANCE = 1e-6

#: Default probability floor ``eps`` of :func:`apply_floor` (without a fitted one): at most
#: ``-ln(1e-6) = 13.8`` nats for a confident mistake, under ``C * 1e-6`` nats on any other row.
PROBABILITY_FLOOR = 1e-6

#: Significant digits written per probability (rounding keeps row sums well within tolerance).
_FLOAT_FORMAT = "%.12g"

#: Problems a submission command lists before its error line (the error line counts them all).
REPORTED_PROBLEMS = 20


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a submission file.

    Attributes
    ----------
    kind : str
        ``unreadable``, ``header``, ``row_length``, ``empty``, ``not_numeric``, ``nan``,
        ``out_of_range``, ``row_sum``, ``duplicate_id``, ``extra_id``, ``missing_id``.
    message : str
        What is wrong, in words.
    row : int or None
        Data row (1 = first row under the header); None for the header or a missing id.
    file_id : str or None
        The row's ``file_id``.
    """

    kind: str
    message: str
    row: int | None = None
    file_id: str | None = None

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row} (line {self.row + 1})")
        if self.file_id is not None:
            where.append(f"file_id {self.file_id!r}")
        place = "header" if self.kind == "header" else "file"
        return f"{', '.join(where) or place}: {self.message}"


def list_test_ids(test_dir: str | Path) -> list[str]:
    """Sorted ``file_id`` of every ``*.mp3`` in a test folder (file name without ``.mp3``), or in the
    ``NNN/`` folders of an FMA audio folder (:func:`common.features.folder_items`).

    Raises
    ------
    ToolkitError
        The folder does not exist or holds no mp3.
    """
    test_dir = Path(test_dir)
    if not test_dir.is_dir():
        raise ToolkitError(f"{test_dir}: test folder not found")
    ids = sorted(path.stem for pattern in ("*.mp3", f"{AUDIO_FOLDER_GLOB}/*.mp3") for path in test_dir.glob(pattern))
    if not ids:
        raise ToolkitError(f"{test_dir}: no .mp3 files in the test folder")
    return ids


def count_rows(path: str | Path) -> int:
    """Data rows of a CSV file: its lines minus the header."""
    with Path(path).open(encoding="utf-8") as handle:
        return sum(1 for _ in handle) - 1

def apply_floor(probs: np.ndarray, eps: float = PROBABILITY_FLOOR) -> np.ndarray:
    """Mix every row with ``eps`` per class: ``(p + eps) / (1 + C eps)``.

    Parameters
    ----------
    probs : np.ndarray, shape (n, C)
        Rows summing to 1.
    eps : float
        Positive.

    Returns
    -------
    np.ndarray, shape (n, C), float64
        Rows sum to 1; every value lies in ``[eps / (1 + C eps), (1 + eps) / (1 + C eps)]``,
        strictly inside (0, 1).
    """
    if not eps > 0:
        raise ValueError(f"the probability floor must be positive, got {eps}")
    probs = np.asarray(probs, dtype=np.float64)
    return (probs + eps) / (1.0 + probs.shape[1] * eps)


def submission_path(out_dir: str | Path, names: Sequence[str], *, now: datetime.datetime | None = None) -> Path:
    """``out_dir/<UTC timestamp>_<exp1+exp2>.csv``, e.g. ``20260301T120501Z_crnn+shortchunk.csv``."""
    now = now or datetime.datetime.now(datetime.UTC)
    return Path(out_dir) / f"{now.strftime('%Y%m%dT%H%M%SZ')}_{'+'.join(names)}.csv"


def claim_submission_path(*, output: str | Path | None, out_dir: str | Path, names: Sequence[str]) -> Path:
    """The CSV a submission command will write, checked before any work is done.

    Parameters
    ----------
    output : path-like or None
        An exact CSV path (``--output``); None: :func:`submission_path` in ``out_dir``.
    out_dir : path-like
    names : sequence of str
        What the submission is made of, for the file name (experiments, ``musicnn``).

    Raises
    ------
    OutputExistsError
        The CSV or its sidecar exists: a submission is never overwritten.
    """
    csv_path = Path(output) if output is not None else submission_path(out_dir, names)
    for path in (csv_path, sidecar_path(csv_path)):
        if path.exists():
            raise OutputExistsError(path)
    return csv_path


@dataclass
class Predictions:
    """Probabilities of every test file, before writing.

    Attributes
    ----------
    ids : list of str, length n
        ``file_id`` of every mp3, sorted.
    probs : np.ndarray, shape (n, 16)
        Rows sum to 1.
    fallbacks : list of dict
        One record per file not predicted from its features as they are: ``id, path, reason,
        detail, fallback`` (the kind, counted in the sidecar) and ``decoded_seconds``.
    """

    ids: list[str]
    probs: np.ndarray
    fallbacks: list[dict[str, Any]]


def write_submission_and_sidecar(csv_path: str | Path, ids: Sequence[str], probs: np.ndarray, *,
                                  test_dir: str | Path, fallbacks: list[dict], record: dict) -> tuple[Path, Path, dict]:
    """Write a submission CSV and its sidecar JSON (:func:`common.io.sidecar_path`); never overwrites.

    The sidecar holds the file name, creation time, test folder, rows, the CSV's sha256,
    the fallbacks with their counts (each a dict with a ``fallback`` kind), and ``record``.

    Returns
    -------
    csv_path, json_path : Path
    sidecar : dict

    Raises
    ------
    OutputExistsError
        The CSV or the sidecar exists (nothing is written then).
    """
    csv_path = Path(csv_path)
    json_path = sidecar_path(csv_path)
    for path in (csv_path, json_path):
        if path.exists():
            raise OutputExistsError(path)
    write_submission(csv_path, ids, probs)
    kinds = [entry["fallback"] for entry in fallbacks]
    sidecar = {
        "submission": csv_path.name,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "test_dir": str(test_dir),
        "rows": len(ids),
        "sha256": file_sha256(csv_path),
        **record,
        "fallback_counts": {kind: kinds.count(kind) for kind in sorted(set(kinds))},
        "fallbacks": fallbacks,
    }
    write_text_atomic(json_path, json.dumps(sidecar, indent=2) + "\n")
    return csv_path, json_path, sidecar


def write_submission(path: str | Path, ids: Sequence[str], probs: np.ndarray) -> Path:
    """Write a submission CSV; never overwrites.

    Parameters
    ----------
    path : path-like
        New file (its folder is created).
    ids : sequence of str, length n
        ``file_id`` of each row, unique.
    probs : np.ndarray, shape (n, 16)
        Probabilities in :data:`TOP_GENRES` order, rows summing to 1.

    Returns
    -------
    Path

    Raises
    ------
    OutputExistsError
        ``path`` exists (it is left untouched).
    ValueError
        Wrong shape, duplicated ids, or values that would not pass validation.
    """
    path = Path(path)
    if path.exists():
        raise OutputExistsError(path)
    probs = np.asarray(probs, dtype=np.float64)
    ids = [str(i) for i in ids]
    if probs.shape != (len(ids), len(TOP_GENRES)):
        raise ValueError(f"probs has shape {probs.shape}, expected ({len(ids)}, {len(TOP_GENRES)})")
    if len(set(ids)) != len(ids) or any(not i for i in ids):
        raise ValueError("ids must be unique and non-empty")
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise ValueError("probs must be finite and in [0, 1]")
    worst = np.abs(probs.sum(axis=1) - 1).max(initial=0.0)
    if worst > ROW_SUM_TOLERANCE:
        raise ValueError(f"rows must sum to 1 within {ROW_SUM_TOLERANCE}; worst is off by {worst:.3g}")
    frame = pd.DataFrame(probs, columns=list(TOP_GENRES))
    frame.insert(0, "file_id", ids)
    return write_text_atomic(path, frame.to_csv(index=False, float_format=_FLOAT_FORMAT))


def _check_value(text: str) -> tuple[float | None, tuple[str, str] | None]:
    """Parse one probability cell: ``(value, None)`` or ``(None, (kind, message))``."""
    if not text.strip():
        return None, ("empty", "empty cell")
    try:
        value = float(text)
    except ValueError:
        return None, ("not_numeric", f"{text!r} is not a number")
    if math.isnan(value):
        return None, ("nan", "NaN value")
    if not 0.0 <= value <= 1.0:
        return None, ("out_of_range", f"{text} is outside [0, 1]")
    return value, None


def _parse(path: Path) -> tuple[list[tuple[int, str, np.ndarray | None]], list[Problem]]:
    """Check the structure and values of a submission, row by row.

    Returns
    -------
    rows : list of (row, file_id, values or None)
        ``values`` (16,) when every cell of the row is a valid probability.
    problems : list of Problem
        Everything except id checks against a test folder.
    """
    problems: list[Problem] = []
    rows: list[tuple[int, str, np.ndarray | None]] = []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                return rows, [Problem("unreadable", f"{path} is empty: no header")]
            if tuple(header) != SUBMISSION_COLUMNS:
                problems.append(Problem("header", _header_message(header)))
            for row, cells in enumerate(reader, start=1):
                file_id = cells[0] if cells else ""
                if len(cells) != len(SUBMISSION_COLUMNS):
                    problems.append(Problem("row_length", f"{len(cells)} cells, expected "
                                            f"{len(SUBMISSION_COLUMNS)}", row, file_id))
                    rows.append((row, file_id, None))
                    continue
                values, row_ok = np.empty(len(TOP_GENRES)), True
                for column, (name, text) in enumerate(zip(SUBMISSION_COLUMNS[1:], cells[1:])):
                    value, problem = _check_value(text)
                    if problem is not None:
                        problems.append(Problem(problem[0], f"column {name!r}: {problem[1]}", row, file_id))
                        row_ok = False
                    else:
                        values[column] = value
                if row_ok and abs(values.sum() - 1.0) > ROW_SUM_TOLERANCE:
                    problems.append(Problem("row_sum", f"values sum to {values.sum():.9g}, not 1 "
                                            f"(tolerance {ROW_SUM_TOLERANCE})", row, file_id))
                rows.append((row, file_id, values if row_ok else None))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        return rows, problems + [Problem("unreadable", f"cannot read {path}: {error}")]
    if not rows:
        problems.append(Problem("unreadable", f"{path} has a header but no rows"))
    return rows, problems


def _header_message(header: list[str]) -> str:
    expected = list(SUBMISSION_COLUMNS)
    missing = [c for c in expected if c not in header]
    unexpected = [c for c in header if c not in expected]
    parts = []
    if missing:
        parts.append(f"missing columns {missing}")
    if unexpected:
        parts.append(f"unexpected columns {unexpected}")
    if not parts:
        position = next(i for i, (a, b) in enumerate(zip(header, expected)) if a != b)
        parts.append(f"columns in the wrong order: column {position + 1} is {header[position]!r}, "
                     f"expected {expected[position]!r}")
    return f"{'; '.join(parts)}. Expected exactly: {','.join(expected)}"


def _id_problems(rows: list[tuple[int, str, np.ndarray | None]], expected_ids: Sequence[str],
                 test_dir: Path) -> list[Problem]:
    problems = []
    expected = set(expected_ids)
    first_row: dict[str, int] = {}
    for row, file_id, _ in rows:
        if not file_id:
            problems.append(Problem("empty", "empty file_id", row, file_id))
        elif file_id in first_row:
            problems.append(Problem("duplicate_id", f"duplicate of row {first_row[file_id]}", row, file_id))
        else:
            first_row[file_id] = row
            if file_id not in expected:
                problems.append(Problem("extra_id", f"no {file_id}.mp3 in {test_dir}", row, file_id))
    problems += [Problem("missing_id", f"no row for {test_dir / (file_id + '.mp3')}", None, file_id)
                 for file_id in expected_ids if file_id not in first_row]
    return problems


def validate_submission(path: str | Path, *, test_dir: str | Path) -> list[Problem]:
    """Every problem of a submission file against a test folder.

    Checks the header (exactly :data:`SUBMISSION_COLUMNS`, in order), the ids (exactly the
    stems of ``test_dir/*.mp3``: missing, extra and duplicated ids), that every value is a
    number in [0, 1] (no NaN, no empty cell) and that each row sums to 1 within
    :data:`ROW_SUM_TOLERANCE`.

    Parameters
    ----------
    path : path-like
        Submission CSV.
    test_dir : path-like
        Folder of the test mp3s.

    Returns
    -------
    list of Problem
        Empty when the file is valid; otherwise ordered: file-level, row problems by row,
        then missing ids.
    """
    path, test_dir = Path(path), Path(test_dir)
    if not path.is_file():
        return [Problem("unreadable", f"{path}: file not found")]
    rows, problems = _parse(path)
    problems += _id_problems(rows, list_test_ids(test_dir), test_dir)
    return sorted(problems, key=lambda p: (p.row is None and p.kind == "missing_id", p.row or 0))


@dataclass(frozen=True)
class ProbabilityRange:
    """Smallest and largest probability of a submission, and whether the floor holds.

    Attributes
    ----------
    min, max : float
    n_zero, n_one : int
        Values that are exactly 0 or exactly 1 (as written).
    """

    min: float
    max: float
    n_zero: int
    n_one: int

    @property
    def floor_holds(self) -> bool:
        """No value is exactly 0 or 1."""
        return self.n_zero == 0 and self.n_one == 0

    def __str__(self) -> str:
        verdict = ("floor holds (no value is exactly 0 or 1)" if self.floor_holds else
                   f"floor broken: {self.n_zero} values are exactly 0 and {self.n_one} exactly 1 "
                   f"(a confident mistake costs up to {-math.log(1e-15):.1f} nats)")
        return f"probabilities in [{self.min:.3g}, {self.max:.6g}]; {verdict}"


def probability_range(path: str | Path) -> ProbabilityRange:
    """The :class:`ProbabilityRange` of the valid rows of a submission file.

    Raises
    ------
    ToolkitError
        No valid row (run :func:`validate_submission` for the reasons).
    """
    rows, _ = _parse(Path(path))
    values = np.array([v for _, _, v in rows if v is not None])
    if not len(values):
        raise ToolkitError(f"{path}: no valid row to take the probability range of")
    return ProbabilityRange(min=float(values.min()), max=float(values.max()),
                            n_zero=int((values == 0).sum()), n_one=int((values == 1).sum()))


class InvalidSubmissionError(ToolkitError):
    """A submission file fails validation; the message counts its problems by kind."""


@dataclass(frozen=True)
class Verdict:
    """What validation found in one submission file.

    Attributes
    ----------
    path : Path
    problems : list of Problem
        Every problem (empty: valid).
    report : list of str
        The lines a command prints on stdout: ``OK: N rows (path)`` and the probability
        range, or the problems (at most ``max_problems`` of :func:`judge_submission`, then
        how many were not shown).
    """

    path: Path
    problems: list[Problem]
    report: list[str]

    def require_valid(self, *, consequence: str = "") -> None:
        """Raise :class:`InvalidSubmissionError` when there is a problem.

        Its message: ``INVALID: N problems (kind n, ...) in PATH``, then ``; consequence``.
        """
        if not self.problems:
            return
        counts = ", ".join(f"{kind} {n}" for kind, n in Counter(p.kind for p in self.problems).items())
        n = len(self.problems)
        message = f"INVALID: {n} problem{'s' if n != 1 else ''} ({counts}) in {self.path}"
        raise InvalidSubmissionError(f"{message}; {consequence}" if consequence else message)


def judge_submission(path: str | Path, *, test_dir: str | Path, max_problems: int = 0) -> Verdict:
    """Validate ``path`` against ``test_dir`` (:func:`validate_submission`) and word the report.

    Parameters
    ----------
    path, test_dir : path-like
        The submission CSV and the folder of the test mp3s, as for :func:`validate_submission`.
    max_problems : int
        Report at most this many problems (0: all); :meth:`Verdict.require_valid` counts them all.

    Raises
    ------
    ToolkitError
        The check cannot run (``test_dir`` is missing or holds no mp3).
    """
    path = Path(path)
    problems = validate_submission(path, test_dir=test_dir)
    if not problems:
        return Verdict(path, [], [f"OK: {count_rows(path)} rows ({path})", str(probability_range(path))])
    shown = problems[:max_problems] if max_problems > 0 else problems
    report = [f"{path}: {problem}" for problem in shown]
    if len(shown) < len(problems):
        report.append(f"... {len(problems) - len(shown)} more problems not shown")
    return Verdict(path, problems, report)


@dataclass(frozen=True)
class PublishedSubmission:
    """A submission written beside its sidecar and judged against the test folder.

    Attributes
    ----------
    csv_path, json_path : Path
    sidecar : dict
        What the JSON holds.
    verdict : Verdict
    report : list of str
        What the command prints on stdout: the problems of an invalid file (at most
        :data:`REPORTED_PROBLEMS`), else the notes and the line ``submission: N rows valid, ...``.
    """

    csv_path: Path
    json_path: Path
    sidecar: dict[str, Any]
    verdict: Verdict
    report: list[str]

    def require_valid(self) -> None:
        """Raise :class:`InvalidSubmissionError` (``...; do not upload it``) when the file is invalid."""
        self.verdict.require_valid(consequence="do not upload it")


def publish_submission(predictions: Predictions, csv_path: str | Path, *, test_dir: str | Path,
                       record: dict[str, Any], method: str, seconds: str,
                       notes: Callable[[ProbabilityRange], str] | None = None) -> PublishedSubmission:
    """Write a submission and its sidecar, validate the file and word the report: the one tail of
    every submission (trained, blended, zero-shot).

    Parameters
    ----------
    predictions : Predictions
        ``ids`` (n,), ``probs`` (n, 16) and ``fallbacks`` (into the sidecar, with their counts).
    csv_path : path-like
        Usually :func:`claim_submission_path`'s; never overwritten, nor its sidecar.
    test_dir : path-like
        Folder of the test mp3s the file is validated against.
    record : dict
        The method's sidecar entries (models, settings, timings, ...).
    method : str
        What made the probabilities, for the report line (``crnn(5 folds), arithmetic mean``).
    seconds : str
        Where the time went, for the report line (``features 10.2 s, models 3.1 s``).
    notes : callable, optional
        ``notes(value_range) -> str``: lines reported before the ``submission:`` line of a valid
        file, given the :class:`ProbabilityRange` of the written file.

    Returns
    -------
    PublishedSubmission
        Print its ``report``, then call its ``require_valid``.

    Raises
    ------
    OutputExistsError
        The CSV or the sidecar exists (nothing is written then).
    """
    csv_path, json_path, sidecar = write_submission_and_sidecar(
        csv_path, predictions.ids, predictions.probs, test_dir=test_dir, fallbacks=predictions.fallbacks,
        record=record)
    verdict = judge_submission(csv_path, test_dir=test_dir, max_problems=REPORTED_PROBLEMS)
    if verdict.problems:
        return PublishedSubmission(csv_path, json_path, sidecar, verdict, report=verdict.report)
    counts = ", ".join(f"{n} {kind}" for kind, n in sidecar["fallback_counts"].items()) or "none"
    line = (f"submission: {sidecar['rows']} rows valid, {method}, fallbacks: {counts}; {seconds} -> {csv_path} "
            f"(+ {json_path.name}, sha256 {sidecar['sha256'][:12]})")
    report = ([notes(probability_range(csv_path))] if notes is not None else []) + [line]
    return PublishedSubmission(csv_path, json_path, sidecar, verdict, report=report)


def read_submission(path: str | Path) -> pd.DataFrame:
    """Read a submission after checking its format (not its ids against a test folder).

    Parameters
    ----------
    path : path-like

    Returns
    -------
    pd.DataFrame
        Index ``file_id`` (str, unique), columns :data:`TOP_GENRES` (float64).

    Raises
    ------
    ToolkitError
        The file is missing or not a valid submission; the message lists the first problems.
    """
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: submission file not found")
    rows, problems = _parse(path)
    seen: set[str] = set()
    for row, file_id, _ in rows:
        if not file_id or file_id in seen:
            problems.append(Problem("duplicate_id" if file_id else "empty",
                                    "duplicated file_id" if file_id else "empty file_id", row, file_id))
        seen.add(file_id)
    if problems:
        shown = "\n  ".join(str(p) for p in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ToolkitError(f"{path}: not a valid submission ({len(problems)} problems; run "
                           f"python -m crowdai.validate):\n  {shown}{more}")
    matrix = []
    for _, _, values in rows:
        assert values is not None  # _parse reports a problem for every row it gives no values
        matrix.append(values)
    return pd.DataFrame(np.stack(matrix), columns=list(TOP_GENRES),
                        index=pd.Index([file_id for _, file_id, _ in rows], name="file_id"))
