"""Check a crowdAI submission CSV against the test folder before uploading it.

Usage::

    python -m crowdai.validate SUBMISSION.csv --test-dir data/crowdai_fma_test

Prints every problem with its row (or ``OK: N rows``), then the smallest and largest
probability and whether the probability floor holds (no value exactly 0 or 1: see
:mod:`crowdai.submission`); exits 1 if there is any problem. A file that breaks the floor
is valid for the leaderboard and is reported, not rejected.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from common.errors import ToolkitError
from crowdai.submission import count_rows, probability_range, validate_submission


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m crowdai.validate", description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="submission CSV")
    parser.add_argument("--test-dir", type=Path, required=True, help="folder of the test mp3s")
    parser.add_argument("--max-problems", type=int, default=0,
                        help="print at most this many problems (0: all); the counts per kind are always printed")
    return parser


def report_validation(path: Path, *, test_dir: Path, max_problems: int = 0) -> int:
    """Validate ``path`` against ``test_dir`` and print the verdict (what ``make validate`` shows).

    Parameters
    ----------
    path : Path
        Submission CSV.
    test_dir : Path
        Folder of the test mp3s.
    max_problems : int
        Print at most this many problems (0: all); the counts per kind are always printed.

    Returns
    -------
    int
        0 valid (``OK: N rows`` on stdout), 1 invalid (every problem on stdout),
        2 the check itself could not run (missing test folder; on stderr).
    """
    try:
        problems = validate_submission(path, test_dir=test_dir)
    except ToolkitError as error:
        print(f"validate: error: {error}", file=sys.stderr)
        return 2
    if not problems:
        print(f"OK: {count_rows(path)} rows ({path})")
        print(probability_range(path))
        return 0
    shown = problems[:max_problems] if max_problems > 0 else problems
    for problem in shown:
        print(f"{path}: {problem}")
    if len(shown) < len(problems):
        print(f"... {len(problems) - len(shown)} more problems not shown")
    counts = ", ".join(f"{kind} {n}" for kind, n in Counter(p.kind for p in problems).items())
    print(f"INVALID: {len(problems)} problem{'s' if len(problems) != 1 else ''} ({counts}) in {path}")
    return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_validation(args.file, test_dir=args.test_dir, max_problems=args.max_problems)


if __name__ == "__main__":
    raise SystemExit(main())
