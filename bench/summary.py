"""Collect the benchmark JSON files into ``summary.json`` and a Markdown table.

``python -m bench.summary --dir bench`` reads ``features.json``, ``train.json``,
``predict.json`` and ``tag.json`` where present (each written by its own
``make bench-*`` target) and records the machine they ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from common.io import write_text_atomic

BENCHMARKS: tuple[str, ...] = ("features", "train", "predict", "tag")


def machine_info() -> dict:
    """Cores, processor and GPUs (as TensorFlow sees them) of this machine."""
    import tensorflow as tf

    gpus = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")]
    return {"cores": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "tensorflow": tf.__version__, "gpus": gpus}


def collect(bench_dir: Path) -> dict[str, dict]:
    """Every ``<name>.json`` of :data:`BENCHMARKS` found in ``bench_dir``."""
    return {name: json.loads((bench_dir / f"{name}.json").read_text())
            for name in BENCHMARKS if (bench_dir / f"{name}.json").exists()}


def to_markdown(results: dict[str, dict], machine: dict) -> str:
    """One row per measured quantity: benchmark, key, value."""
    gpus = ", ".join(machine["gpus"]) or "none"
    lines = [f"Machine: {machine['cores']} cores ({machine['processor']}), GPU: {gpus}, "
             f"TensorFlow {machine['tensorflow']}", "", "| benchmark | quantity | value |", "| --- | --- | --- |"]
    for name, record in results.items():
        for key, value in record.items():
            shown = f"{value:.3g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, (dict, list)) else value
            lines.append(f"| {name} | {key} | {shown} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("bench"), help="folder of the benchmark JSON files")
    args = parser.parse_args(argv)
    results = collect(args.dir)
    if not results:
        print(f"bench.summary: no benchmark results in {args.dir}; run make bench-features (or bench)")
        return 1
    machine = machine_info()
    write_text_atomic(args.dir / "summary.json", json.dumps({"machine": machine, "results": results}, indent=2) + "\n",
                      overwrite=True)
    markdown = to_markdown(results, machine)
    write_text_atomic(args.dir / "summary.md", markdown, overwrite=True)
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
