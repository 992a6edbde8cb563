"""Write the K-fold file of an FMA subset once (``make folds``).

Usage::

    python -m experiments.folds --data data --subset medium --k 5 --seed 0 \
        --out data/folds-medium-k5.csv [--force]

An existing folds file is left alone (and checked: its size and sha256 against those its
sidecar records, its tracks against the metadata); ``--force`` rewrites it, the way to repair
a damaged one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli import command
from common.folds import make_folds, read_folds, write_folds
from common.metadata import SUBSETS, FmaDataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fma-folds", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data"), help="FMA data directory (holds fma_metadata/)")
    parser.add_argument("--subset", choices=SUBSETS, default="medium")
    parser.add_argument("--k", type=int, default=5, help="number of folds")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed")
    parser.add_argument("--out", type=Path, default=None,
                        help="folds CSV (default: DATA/folds-SUBSET-kK.csv); a sidecar OUT.json is written next to it")
    parser.add_argument("--force", action="store_true", help="rewrite an existing folds file")
    return parser


@command("fma-folds")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out or args.data / f"folds-{args.subset}-k{args.k}.csv"
    tracks = FmaDataset.open(args.data, args.subset).tracks
    if out.exists() and not args.force:
        folds = read_folds(out, tracks=tracks)
        print(f"folds: {out} exists and matches the metadata ({len(folds)} tracks); "
              "leaving it (--force to rewrite)")
        return 0
    folds = make_folds(tracks, k=args.k, seed=args.seed)
    write_folds(out, folds, subset=args.subset, k=args.k, seed=args.seed, overwrite=args.force)
    sizes = folds["fold"].value_counts().sort_index().tolist()
    print(f"folds: wrote {out} ({len(folds)} tracks, {folds['artist_id'].nunique()} artists, "
          f"k={args.k}, seed={args.seed}, tracks per fold {sizes})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
