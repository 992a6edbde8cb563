"""Log-loss gain of a blend fitted on out-of-fold predictions, on the demo runs.

    python -m bench.blend --runs runs/demo --exp demo,demo_crnn --out bench/blend.json

Fits :func:`crowdai.blend.fit_blend` (stacking included) on the experiments' common
out-of-fold tracks and records the cross-fitted out-of-fold log loss of the best single
experiment as it is, of each calibrated experiment, of every pool and of the chosen
blend (with its probability floor), and the ratio chosen / best single against the
target :data:`TARGET_RATIO`. Needs the trained demo runs (``make demo``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common.cli import command
from common.errors import ToolkitError
from common.io import write_text_atomic

#: The chosen blend's log loss should be at most this fraction of the best single experiment's.
TARGET_RATIO = 0.95


def measure(runs: Path, names: list[str]) -> dict:
    """The benchmark record of blending ``names`` of ``runs`` (see the module docstring)."""
    from crowdai.blend import fit_blend, load_out_of_fold

    start = time.perf_counter()
    oof = load_out_of_fold(runs, names)
    document, _ = fit_blend(oof, stacking=True)
    seconds = time.perf_counter() - start
    stages = document["stages"]
    best = min(names, key=lambda n: stages[f"raw:{n}"]["scores"]["log_loss"])
    best_loss = stages[f"raw:{best}"]["scores"]["log_loss"]
    chosen_loss = document["final_scores"]["log_loss"]
    return {
        "runs": str(runs), "experiments": names, "common_tracks": document["common_tracks"],
        "folds": document["folds"], "best_single": best, "best_single_log_loss": best_loss,
        "raw_log_loss": {n: stages[f"raw:{n}"]["scores"]["log_loss"] for n in names},
        "calibrated_log_loss": {n: stages[f"calibrated:{n}"]["scores"]["log_loss"] for n in names},
        "temperatures": {n: stages[f"calibrated:{n}"]["params"]["temperature"] for n in names},
        "stage_log_loss": {name: stage["scores"]["log_loss"] for name, stage in stages.items()},
        "chosen": document["chosen"], "floor": document["floor"], "chosen_log_loss": chosen_loss,
        "chosen_accuracy": document["final_scores"]["accuracy"],
        "ratio_to_best_single": chosen_loss / best_loss,
        "ratio_to_best_calibrated": chosen_loss / min(stages[f"calibrated:{n}"]["scores"]["log_loss"] for n in names),
        "target_ratio": TARGET_RATIO,
        "meets_target": chosen_loss <= TARGET_RATIO * best_loss, "fit_seconds": round(seconds, 2),
    }


@command("python -m bench.blend")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.blend", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/demo"), help="runs folder (default: runs/demo)")
    parser.add_argument("--exp", default="demo,demo_crnn", help="experiments to blend (default: demo,demo_crnn)")
    parser.add_argument("--out", type=Path, default=Path("bench/blend.json"), help="result JSON (replaced)")
    args = parser.parse_args(argv)
    try:
        record = measure(args.runs, [n.strip() for n in args.exp.split(",") if n.strip()])
    except ToolkitError as error:
        raise ToolkitError(f"{error} (train the demo experiments first: make demo)") from error
    write_text_atomic(args.out, json.dumps(record, indent=2) + "\n", overwrite=True)
    calibrated = ", ".join(f"{n} {v:.4f}" for n, v in record["calibrated_log_loss"].items())
    print(f"blend bench: best single {record['best_single']} {record['best_single_log_loss']:.4f}; "
          f"calibrated {calibrated}; chosen {record['chosen']} {record['chosen_log_loss']:.4f} "
          f"= {record['ratio_to_best_single']:.3f} x best single (target <= {TARGET_RATIO}: "
          f"{'met' if record['meets_target'] else 'NOT met'}) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
