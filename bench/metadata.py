"""Loading FMA's ``tracks.csv`` at full size: seconds and peak memory of ``load_tracks``.

    python -m bench.metadata --out bench/metadata.json [--rows 106574] [--rounds 3]

The file is generated (:func:`common.demo_data.synthetic_tracks`: the real three-row
header and 52 columns, ``--distinct-rows`` distinct rows repeated under unique track ids)
and kept in ``--csv-dir`` between runs. Each round times, back to back:

* ``read_csv``: pandas parsing the file with no typing at all (the floor, same process);
* ``load_tracks``: the toolkit's typed load (lists, dates, categoricals, checks).

Writes the medians (``load_seconds``, ``read_csv_seconds``, their ``ratio``, ``rows_per_s``),
the peak Python memory of one more ``load_tracks`` under ``tracemalloc``
(``peak_memory_mb``), the process's maximum resident set (``max_rss_mb``) and the sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from common.cli import command
from common.io import write_text_atomic

#: Tracks of the real fma_large / fma_full metadata.
FMA_ROWS = 106_574


def tracks_csv(folder: Path, *, n_rows: int, distinct_rows: int, seed: int = 0) -> Path:
    """The generated ``tracks.csv`` of these parameters in ``folder`` (written once)."""
    from common.demo_data import synthetic_tracks

    path = folder / f"tracks-{n_rows}-{distinct_rows}-{seed}.csv"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        synthetic_tracks(n_rows, seed=seed, distinct_rows=distinct_rows).to_csv(tmp)
        os.replace(tmp, path)
    return path


def _seconds(function, path: Path) -> float:
    start = time.perf_counter()
    function(path)
    return time.perf_counter() - start


def read_csv_only(path: Path):
    """The file parsed by pandas with no typing (the floor of any loader)."""
    import pandas as pd

    return pd.read_csv(path, index_col=0, header=[0, 1], low_memory=False)


def run(*, path: Path, rounds: int) -> dict:
    """``rounds`` rounds of read_csv and load_tracks, then one traced load; see the module docstring."""
    from common.metadata import load_tracks

    n_rows = len(load_tracks(path))  # warm-up: imports and the file in the page cache
    per_round = []
    for _ in range(rounds):
        floor = _seconds(read_csv_only, path)
        load = _seconds(load_tracks, path)
        per_round.append({"read_csv_seconds": round(floor, 3), "load_seconds": round(load, 3),
                          "ratio": round(load / floor, 2)})
    medians = {key: float(np.median([r[key] for r in per_round])) for key in per_round[0]}
    tracemalloc.start()
    load_tracks(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"rows": n_rows, "file_mb": round(path.stat().st_size / 2**20, 1), **medians,
            "rows_per_s": round(n_rows / medians["load_seconds"]), "peak_memory_mb": round(peak / 2**20, 1),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rounds": per_round, "load_average_1min": round(os.getloadavg()[0], 2)}


@command("python -m bench.metadata")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metadata", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/metadata.json"), help="JSON result file")
    parser.add_argument("--rows", type=int, default=FMA_ROWS, help=f"rows of tracks.csv (default {FMA_ROWS})")
    parser.add_argument("--distinct-rows", type=int, default=10_000,
                        help="distinct generated rows, repeated under unique track ids (default 10000)")
    parser.add_argument("--csv-dir", type=Path, default=Path(tempfile.gettempdir()) / "fma-bench-metadata",
                        help="where the generated tracks.csv is kept between runs")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; medians are reported")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.rounds < 1 or args.distinct_rows < 1:
        parser.error("--rows, --distinct-rows and --rounds must be at least 1")
    path = tracks_csv(args.csv_dir, n_rows=args.rows, distinct_rows=args.distinct_rows)
    result = {**run(path=path, rounds=args.rounds), "distinct_rows": min(args.rows, args.distinct_rows)}
    print(f"tracks.csv: {result['rows']} rows, {result['file_mb']} MB ({path})")
    print(f"load_tracks {result['load_seconds']:.2f} s ({result['rows_per_s']} rows/s), pandas read_csv alone "
          f"{result['read_csv_seconds']:.2f} s: ratio {result['ratio']:.2f}; peak Python memory "
          f"{result['peak_memory_mb']:.0f} MB, max RSS {result['max_rss_mb']:.0f} MB")
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n", overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
