"""Collect the benchmark JSON files into ``summary.json`` and a Markdown table.

``python -m bench.summary --dir bench`` reads ``features.json``, ``train.json``,
``pipeline.json``, ``predict.json``, ``tag.json``, ``metadata.json``, ``blend.json`` and
``learn.json`` where present (each written by its own ``make bench-*`` target) and records
the machine they ran on (cores, GPUs, load average: the machine may be shared). The Markdown
starts with the headline numbers: feature clips/s per core and the ratio to the original
pipeline per mp3 set with the scaling agreement; the training pipeline against the naive
loop; full-size training clips/s with what limits it and the input pipeline's share of a
step; batched against per-clip prediction and the predicted hours of a 5-fold ensemble;
loading a full-size tracks.csv; the blend's out-of-fold log loss against the best single
experiment; and each data lever's CV log loss against ``demo``, median over seeds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path

from bench.learn import summary_lines as learn_lines
from common.cli import command
from common.errors import ToolkitError
from common.io import write_text_atomic

BENCHMARKS: tuple[str, ...] = ("features", "train", "pipeline", "predict", "tag", "metadata", "blend", "learn")


def machine_info() -> dict:
    """Date (UTC), host, cores, processor and GPUs (as TensorFlow sees them) of this machine."""
    import tensorflow as tf

    gpus = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")]
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "host": platform.node(), "cores": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "tensorflow": tf.__version__, "gpus": gpus,
            "load_average_1min": round(os.getloadavg()[0], 2)}


def collect(bench_dir: Path) -> dict[str, dict]:
    """Every ``<name>.json`` of :data:`BENCHMARKS` found in ``bench_dir``."""
    return {name: json.loads((bench_dir / f"{name}.json").read_text())
            for name in BENCHMARKS if (bench_dir / f"{name}.json").exists()}


def headlines(results: dict[str, dict], machine: dict) -> list[str]:
    """Feature clips/s per core and full-size training clips/s with its limit, where measured."""
    lines = []
    features = results.get("features", {})
    if "toolkit_clips_per_s" in features:
        cores = features.get("cores", machine["cores"])
        lines.append(f"- Features ({features.get('set', 'synthetic')} mp3s): {features['toolkit_clips_per_s']:.3g} "
                     f"clips/s on {cores} cores = {features['toolkit_clips_per_s'] / cores:.3g} clips/s per core "
                     f"(load average {features.get('load_average_1min', 'n/a')})")
        for name, measured in features.get("sets", {}).items():
            per_core = (f"; per core in CPU time {measured['cpu_ratio_per_core']:.3g} x"
                        if "cpu_ratio_per_core" in measured else "")
            lines.append(f"- Features, {name} mp3s: {measured['ratio']:.3g} x the original librosa pipeline "
                         f"(target 4; decode-only ceiling {measured['decode_only_clips_per_s'] * cores:.3g} clips/s "
                         f"on {cores} cores{per_core})")
        scaling = features.get("scaling")
        if scaling:
            lines.append(f"- Feature scaling: {scaling['clips']} clips {scaling['clips_per_s']:.3g} clips/s, "
                         f"{scaling['scaled_clips']} clips {scaling['scaled_clips_per_s']:.3g} clips/s "
                         f"(agreement {scaling['agreement']:.3g}, the median of the rounds' paired ratios; "
                         f"target within 10 %)")
    train = results.get("train", {})
    if "ratio" in train:
        lines.append(f"- Training ({train['model']}, {' + '.join(train.get('augmentations', ['crop']))} "
                     f"on both sides): tf.data pipeline {train['ratio']:.3g} x the naive per-file loop (target >= 1; "
                     f"{train['toolkit_samples_per_s']:.4g} against {train['baseline_samples_per_s']:.4g} samples/s)")
    pipeline = results.get("pipeline", {})
    if "training_clips_per_s" in pipeline:
        shape = " x ".join(str(n) for n in pipeline["input_shape"])
        lines.append(f"- {pipeline['model'].upper()} training on {shape} ({pipeline['device']}, "
                     f"{pipeline['precision']}, batch {pipeline['batch_size']}): "
                     f"{pipeline['training_clips_per_s']:.4g} clips/s; limited by the {pipeline['limit']} "
                     f"(pipeline alone {pipeline['pipeline_clips_per_s']:.4g} clips/s, "
                     f"model alone {pipeline['model_clips_per_s']:.4g} clips/s)")
        share = pipeline["model_clips_per_s"] / pipeline["pipeline_clips_per_s"]
        lines.append(f"- Input pipeline alone: {100 * share:.3g} % of a training step's time (target <= 10 %)")
    predict = results.get("predict", {})
    if "batched_speedup" in predict:
        hours = predict.get("predicted_hours", {})
        lines.append(f"- Prediction ({predict['device']}): batched across clips {predict['batched_speedup']:.3g} x "
                     f"the per-clip path (CPU time {predict.get('batched_cpu_speedup', float('nan')):.3g} x; "
                     f"target >= 1)")
        if hours:
            lines.append(f"- Predicted hours, {hours['folds']}-fold ensemble on this machine: "
                         + ", ".join(f"{name} ({clips:,} clips) {hours[name]:.3g} h"
                                     for name, clips in hours["clips"].items()))
    metadata = results.get("metadata", {})
    if "load_seconds" in metadata:
        lines.append(f"- Metadata: tracks.csv of {metadata['rows']} rows loads in {metadata['load_seconds']:.3g} s "
                     f"({metadata['ratio']:.3g} x pandas read_csv alone), peak {metadata['peak_memory_mb']:.4g} MB")
    blend = results.get("blend", {})
    if "chosen_log_loss" in blend:
        lines.append(f"- Blend of {'+'.join(blend['experiments'])} ({blend['chosen']}): cross-fitted out-of-fold "
                     f"log loss {blend['chosen_log_loss']:.4f} = {blend['ratio_to_best_single']:.3f} x the best "
                     f"single experiment's {blend['best_single_log_loss']:.4f} (target <= {blend['target_ratio']})")
    learn = results.get("learn", {})
    if "levers" in learn:
        lines.append(f"- Data levers on the demo ({learn['scored_tracks']} scored tracks, {learn['k']} folds, "
                     f"seeds {learn['seeds']}; CV log loss, median [min, max] over seeds):")
        lines += [f"  - {line}" for line in learn_lines(learn)]
    return lines


def to_markdown(results: dict[str, dict], machine: dict) -> str:
    """Headlines, then one row per measured quantity: benchmark, key, value."""
    gpus = ", ".join(machine["gpus"]) or "none"
    lines = [(f"Measured {machine.get('date', 'n/a')} on {machine.get('host', 'n/a')}: "
              f"{machine['cores']} cores ({machine['processor']}), GPU: {gpus}, "
              f"TensorFlow {machine['tensorflow']}, load average {machine.get('load_average_1min', 'n/a')}"), ""]
    top = headlines(results, machine)
    if top:
        lines += [*top, ""]
    lines += ["| benchmark | quantity | value |", "| --- | --- | --- |"]
    for name, record in results.items():
        for key, value in record.items():
            shown = (f"{value:.3g}" if isinstance(value, float)
                     else json.dumps(value) if isinstance(value, (dict, list)) else value)
            lines.append(f"| {name} | {key} | {shown} |")
    return "\n".join(lines) + "\n"


@command("python -m bench.summary")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("bench"), help="folder of the benchmark JSON files")
    args = parser.parse_args(argv)
    results = collect(args.dir)
    if not results:
        raise ToolkitError(f"{args.dir}: no benchmark results; run make bench-features (or bench)")
    machine = machine_info()
    write_text_atomic(args.dir / "summary.json", json.dumps({"machine": machine, "results": results}, indent=2) + "\n",
                      overwrite=True)
    markdown = to_markdown(results, machine)
    write_text_atomic(args.dir / "summary.md", markdown, overwrite=True)
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
