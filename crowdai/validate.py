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
from crowdai.submission import probability_range, validate_submission


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m crowdai.validate", description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="submission CSV")
    parser.add_argument("--test-dir", type=Path, required=True, help="folder of the test mp3s")
    parser.add_argument("--max-problems", type=int, default=0,
                        help="print at most this many problems (0: all); the counts per kind are always printed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        problems = validate_submission(args.file, test_dir=args.test_dir)
    except ToolkitError as error:
        print(f"validate: error: {error}", file=sys.stderr)
        return 2
    if not problems:
        with args.file.open(encoding="utf-8") as handle:
            n_rows = sum(1 for _ in handle) - 1
        print(f"OK: {n_rows} rows ({args.file})")
        print(probability_range(args.file))
        return 0
    shown = problems[: args.max_problems] if args.max_problems > 0 else problems
    for problem in shown:
        print(f"{args.file}: {problem}")
    if len(shown) < len(problems):
        print(f"... {len(problems) - len(shown)} more problems not shown")
    counts = ", ".join(f"{kind} {n}" for kind, n in Counter(p.kind for p in problems).items())
    print(f"INVALID: {len(problems)} problem{'s' if len(problems) != 1 else ''} ({counts}) in {args.file}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
