"""Check a crowdAI submission CSV against the test folder before uploading it.

Usage::

    python -m crowdai.validate SUBMISSION.csv --test-dir data/crowdai_fma_test

The report is the result, on stdout: every problem with its row, or ``OK: N rows`` and
then the smallest and largest probability and whether the probability floor holds (no
value exactly 0 or 1: see :mod:`crowdai.submission`). A file with a problem is an error
(:mod:`common.cli`): after its report, ``fma-validate: error: INVALID: N problems (...)``
on stderr and exit status 1. A file that breaks the floor is valid for the leaderboard
and is reported, not rejected.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli import command
from crowdai.submission import judge_submission


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fma-validate", description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="submission CSV")
    parser.add_argument("--test-dir", type=Path, required=True, help="folder of the test mp3s")
    parser.add_argument("--max-problems", type=int, default=0,
                        help="print at most this many problems (0: all); the error line counts them all by kind")
    return parser


@command("fma-validate")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verdict = judge_submission(args.file, test_dir=args.test_dir, max_problems=args.max_problems)
    print("\n".join(verdict.report))
    verdict.require_valid()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
