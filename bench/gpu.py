"""GPU check: the first command to run on a GPU machine, bounded to a few minutes.

    make setup EXTRAS=dev,gpu && make gpu-check        # python -m bench.gpu
    make gpu-check SMOKE=1                             # python -m bench.gpu --smoke: CPU, tiny shapes

Writes ``bench/gpu.json`` and prints a table. Sections:

``tests``
    ``pytest -m gpu``: the tests that need a GPU (skipped without one).
``training``
    For the reference CRNN (96 x 1366, whole clips, batch 32) and ``shortchunk`` (its
    config's 3.7-s crops, batch 16): training samples/s in float32 and in mixed precision,
    XLA off and on, timed after a warm-up that compiles; peak GPU memory; training FLOPs
    per sample (:mod:`common.flops`) and the TFLOP/s they achieve; and the input
    pipeline's share of a step (:func:`common.data.train_dataset` over a float16 store,
    the time of a batch over the time of a model step).
``prediction``
    A K-fold ensemble of untrained CRNNs over whole clips: clips/s of the batched path
    (:func:`common.inference.predict_clips` over all clips) against one call per clip.
``demo``
    Two epochs of one fold of ``experiments/configs/demo.yaml`` on generated demo data
    through the runner; its ``summary.json``'s device and precision against what
    :func:`common.training.select_runtime` picks here (``1 x GPU``, ``mixed_float16``).
``predicted``
    Seconds per training epoch of fma_medium and fma_large (5 folds: 4/5 of the subset),
    from the FLOPs at :data:`ASSUMED_FRACTION` of an H100's peak, beside the ones the
    measured samples/s give, and the fraction of the peak the measurement reached.

``--smoke`` runs every section on tiny shapes in well under a minute on a CPU and writes
the same keys (``make test`` runs it), so the script cannot rot while no GPU is at hand.

Under a Keras backend other than TensorFlow (``KERAS_BACKEND=jax`` on a machine that has
JAX but no TensorFlow) only ``training`` runs, with XLA always on (JAX compiles every
step); the TensorFlow sections record why they were skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import command
from common.io import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
N_CLASSES = 16

#: Dense float16/bfloat16 tensor-core peak of one H100 SXM (NVIDIA's datasheet; the H200's is the same).
H100_PEAK_TFLOPS = {"mixed": 989.0, "float32": 67.0}
#: Share of that peak the prediction assumes a training step reaches; ``make gpu-check`` measures it.
ASSUMED_FRACTION = 0.2
#: Clips of the subsets whose epoch time is predicted; a 5-fold epoch trains on 4/5 of them.
SUBSET_CLIPS = {"fma_medium": 25_000, "fma_large": 106_574}
TRAIN_SHARE = 4 / 5

#: The keys every run writes, smoke or not (tested).
SECTIONS = ("machine", "backend", "smoke", "tests", "training", "prediction", "demo", "predicted")


@dataclasses.dataclass(frozen=True)
class Workload:
    """One model measured in ``training``: its registry name, parameters, input and batch.

    ``xla=False``: TensorFlow cannot compile the model with XLA (a cuDNN GRU), so it is
    measured without XLA only; Keras would drop ``jit_compile`` with a warning.
    """

    name: str
    model: str
    input_shape: tuple[int, ...]
    batch_size: int
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    xla: bool = True


_SMOKE_CRNN = {"filters": [8, 8], "pool_sizes": [[2, 2], [2, 2]], "time_padding": 0, "gru_units": [8]}
#: The reference CRNN with the reference GRUs (XLA can compile them), with cuDNN GRUs
#: (``gru_reset_after: true``, what ``auto`` picks on a GPU), and shortchunk.
FULL_WORKLOADS = (
    Workload("crnn 96x1366", "crnn", (96, 1366), 32, {"gru_reset_after": False}),
    Workload("crnn cudnn 96x1366", "crnn", (96, 1366), 32, {"gru_reset_after": True}, xla=False),
    Workload("shortchunk 96x173", "shortchunk", (96, 173), 16),
)
SMOKE_WORKLOADS = (
    Workload("crnn 16x64", "crnn", (16, 64), 4, {**_SMOKE_CRNN, "gru_reset_after": False}),
    Workload("crnn cudnn 16x64", "crnn", (16, 64), 4, {**_SMOKE_CRNN, "gru_reset_after": True}, xla=False),
    Workload("shortchunk 16x32", "shortchunk", (16, 32), 4, {"channels": [8], "dense_units": 8}),
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one run: workloads, default precisions, batches per timed pass, passes, ensemble size, clips."""

    workloads: tuple[Workload, ...]
    precisions: tuple[str, ...]
    pool_batches: int
    timed_passes: int
    folds: int
    prediction_clips: int
    demo_tracks: int


FULL = Plan(FULL_WORKLOADS, ("float32", "mixed_float16"), pool_batches=8, timed_passes=16, folds=5,
            prediction_clips=256, demo_tracks=64)
SMOKE = Plan(SMOKE_WORKLOADS, ("mixed_float16",), pool_batches=2, timed_passes=1, folds=2,
             prediction_clips=4, demo_tracks=32)


@functools.cache
def machine() -> str:
    """The accelerator (or CPU) this process computes on, in words (as :func:`crowdai.timing.device_name`)."""
    import keras

    if keras.backend.backend() != "jax":
        from crowdai.timing import device_name

        return device_name()
    import jax

    device = jax.devices()[0]
    if device.platform == "gpu":
        return f"{len(jax.devices())} x {device.device_kind}"
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def on_gpu() -> bool:
    return not machine().startswith("cpu")


def _peak_memory() -> int | None:
    """Peak bytes allocated on the first GPU (None on CPU): since the last :func:`_reset_peak_memory`
    under TensorFlow, since the process started under JAX (its allocator has no reset)."""
    import keras

    if not on_gpu():
        return None
    if keras.backend.backend() == "jax":
        import jax

        return int(jax.devices()[0].memory_stats().get("peak_bytes_in_use", 0))
    import tensorflow as tf

    return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])


def _reset_peak_memory() -> None:
    import keras

    if on_gpu() and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")


def gpu_test_files() -> list[Path]:
    """The test modules that mark tests ``gpu`` (collecting only them spares importing the whole suite)."""
    return sorted(path for path in (REPO / "tests").glob("test_*.py") if "mark.gpu" in path.read_text())


def run_gpu_tests() -> dict:
    """Counts of ``pytest -m gpu`` over :func:`gpu_test_files` (a subprocess), and its closing line."""
    out = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                          *map(str, gpu_test_files())], cwd=REPO, capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    closing = lines[-1] if lines else out.stderr.strip()[-300:]
    counts = {kind: int(m.group(1)) if (m := re.search(rf"(\d+) {kind}", closing)) else 0
              for kind in ("passed", "failed", "skipped", "error")}
    return {**counts, "returncode": out.returncode, "summary": closing}


def _build(workload: Workload, *, precision: str, jit_compile: bool, steps_per_execution: int):
    """The workload's model under ``precision``, compiled as training compiles it (Adam, cross-entropy)."""
    import keras

    from common import models

    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(precision)
    try:
        keras.utils.set_random_seed(0)
        model = models.build_model(workload.model, input_shape=workload.input_shape, n_outputs=N_CLASSES,
                                   activation="softmax", **workload.params)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy",
                      jit_compile=jit_compile, steps_per_execution=steps_per_execution)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    return model


def _batches(workload: Workload, n_batches: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n_batches`` batches of random log-mel-like inputs ``(n, *input_shape)`` and one-hot targets ``(n, 16)``."""
    rng = np.random.default_rng(seed)
    n = n_batches * workload.batch_size
    x = rng.normal(-30.0, 10.0, (n, *workload.input_shape)).astype(np.float32)
    y = np.eye(N_CLASSES, dtype=np.float32)[rng.integers(0, N_CLASSES, n)]
    return x, y


def measure_training(workload: Workload, *, precision: str, jit_compile: bool, plan: Plan) -> dict:
    """Samples/s of training steps on in-memory batches after a compiling warm-up pass; peak memory.

    One pass is ``plan.pool_batches`` steps in one call of the train function
    (``steps_per_execution``); ``plan.timed_passes`` passes are timed.
    """
    import keras

    from common import flops

    x, y = _batches(workload, plan.pool_batches)
    model = _build(workload, precision=precision, jit_compile=jit_compile, steps_per_execution=plan.pool_batches)
    _reset_peak_memory()
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=workload.batch_size, epochs=1, shuffle=False, verbose=0)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=workload.batch_size, epochs=plan.timed_passes, shuffle=False, verbose=0)
    seconds = time.perf_counter() - start
    samples = plan.timed_passes * len(x)
    per_sample = flops.training_flops(model)
    rate = samples / seconds
    return {"workload": workload.name, "precision": precision, "jit_compile": jit_compile,
            "xla": bool(model.jit_compile), "cudnn_grus": _cudnn_grus(model),
            "samples_per_s": round(rate, 2), "step_ms": round(1000 * seconds / (samples / workload.batch_size), 3),
            "warmup_s": round(warmup, 2), "peak_memory_bytes": _peak_memory(),
            "peak_memory_scope": "this measurement" if keras.backend.backend() == "tensorflow" else "process",
            "training_gflops_per_sample": round(per_sample / 1e9, 4),
            "achieved_tflops": round(rate * per_sample / 1e12, 3),
            "final_loss": float(history.history["loss"][-1]), "batch_size": workload.batch_size}


def _cudnn_grus(model) -> int | None:
    """GRUs of ``model`` that TensorFlow runs with cuDNN on a GPU (None under another backend)."""
    import keras

    from common.models import cudnn_gru_report

    return sum(cudnn_gru_report(model).values()) if keras.backend.backend() == "tensorflow" else None


def measure_pipeline_share(workload: Workload, *, step_ms: float, plan: Plan) -> dict:
    """Milliseconds per batch of :func:`common.data.train_dataset` (float16 store, random crops,
    prefetch) pulled to host arrays, over the model's ``step_ms``."""
    from common.data import feature_stats, train_dataset
    from common.store import ClipStore

    n_batches = plan.pool_batches * plan.timed_passes
    x, y = _batches(workload, plan.pool_batches)
    store = ClipStore.from_array(x.astype(np.float16))
    positions = np.arange(len(x))
    mean, _std = feature_stats(store, positions)
    dataset = train_dataset(store, positions, y, crop_frames=workload.input_shape[-1], batch_size=workload.batch_size,
                            seed=0, fill=mean).repeat()
    iterator = iter(dataset)
    next(iterator)
    start = time.perf_counter()
    for _ in range(n_batches):
        next(iterator)[0].numpy()
    batch_ms = 1000 * (time.perf_counter() - start) / n_batches
    return {"workload": workload.name, "batch_ms": round(batch_ms, 3), "step_ms": step_ms,
            "share_of_step": round(batch_ms / step_ms, 4)}


def jit_modes(workload: Workload) -> tuple[bool, ...]:
    """XLA off and on under TensorFlow (off only for a workload XLA cannot compile); on under
    other backends, which compile every step."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return (True,)
    return (False, True) if workload.xla else (False,)


def training_section(plan: Plan, *, precisions: tuple[str, ...]) -> dict:
    """Every workload in every precision and XLA mode; the input pipeline's share of each workload's fastest step."""
    import keras

    rows = [measure_training(w, precision=p, jit_compile=j, plan=plan)
            for w in plan.workloads for p in precisions for j in jit_modes(w)]
    pipeline = None
    if keras.backend.backend() == "tensorflow":
        fastest = {w.name: min(r["step_ms"] for r in rows if r["workload"] == w.name) for w in plan.workloads}
        pipeline = [measure_pipeline_share(w, step_ms=fastest[w.name], plan=plan) for w in plan.workloads]
    return {"rows": rows, "pipeline": pipeline}


def prediction_section(plan: Plan) -> dict:
    """Clips/s of a ``plan.folds``-model CRNN ensemble over whole clips: batched and one call per clip."""
    from common.inference import inference_batch_size, predict_clips

    workload = plan.workloads[0]
    models = [_build(workload, precision="float32", jit_compile=False, steps_per_execution=1)
              for _ in range(plan.folds)]
    clips, _ = _batches(dataclasses.replace(workload, batch_size=1), plan.prediction_clips, seed=1)
    batch_size = inference_batch_size(workload.batch_size)
    predict = functools.partial(predict_clips, crop_frames=workload.input_shape[-1], eval="center",
                                batch_size=batch_size)
    predict(models, clips[:1])  # trace the one-clip function, untimed
    predict(models, clips)  # and the full batch
    start = time.perf_counter()
    batched = predict(models, clips)
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    per_clip = np.concatenate([predict(models, clips[i:i + 1]) for i in range(len(clips))])
    per_clip_s = time.perf_counter() - start
    return {"folds": plan.folds, "clips": len(clips), "batch_size": batch_size,
            "batched_clips_per_s": round(len(clips) / batched_s, 2),
            "per_clip_clips_per_s": round(len(clips) / per_clip_s, 2),
            "batched_speedup": round(per_clip_s / batched_s, 2),
            "max_abs_difference": float(np.abs(batched - per_clip).max())}


def demo_section(plan: Plan, *, demo_data: Path | None) -> dict:
    """Two epochs of fold 0 of the demo experiment through the runner; its summary against the runtime."""
    import yaml

    from common.config import load_config
    from common.demo_data import generate_demo_dataset
    from common.features import cache_dir_for, extract
    from common.folds import make_folds, write_folds
    from common.metadata import FmaDataset
    from common.training import select_runtime
    from experiments import runner

    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        root = Path(tmp)
        if demo_data is None:
            demo_data = root / "demo"
            generate_demo_dataset(demo_data, n_tracks=plan.demo_tracks, n_test=8, clip_seconds=6.0, n_jobs=-1)
        values = yaml.safe_load((REPO / "experiments" / "configs" / "demo.yaml").read_text())
        values["training"]["epochs"] = 2
        config_path = root / "demo_gpu_check.yaml"
        config_path.write_text(yaml.safe_dump(values))
        config = load_config(config_path)
        dataset = FmaDataset.open(demo_data, "small")
        extract(dataset.items(), settings=config.features, progress=False,
                cache_dir=cache_dir_for(root / "cache", dataset.feature_source, config.features))
        folds = root / "folds.csv"
        write_folds(folds, make_folds(dataset.tracks, k=2, seed=0), subset="small", k=2, seed=0)
        start = time.perf_counter()
        code = runner.main(["--config", str(config_path), "--data", str(demo_data), "--subset", "small",
                            "--folds", str(folds), "--cache", str(root / "cache"), "--runs", str(root / "runs"),
                            "--fold", "0"])
        seconds = time.perf_counter() - start
        summary = json.loads((root / "runs" / config.name / "fold_0" / "summary.json").read_text())
    runtime = select_runtime(config.training)
    return {"returncode": code, "seconds": round(seconds, 1), "epochs": summary["epochs"],
            "device": summary["device"], "precision": summary["precision"],
            "expected_device": runtime.device, "expected_precision": runtime.precision,
            "log_loss": summary["metrics"]["log_loss"], "accuracy": summary["metrics"]["accuracy"],
            "ok": code == 0 and (summary["device"], summary["precision"]) == (runtime.device, runtime.precision)}


def predicted_epoch_seconds(training: dict) -> dict:
    """Seconds per 5-fold training epoch of each of :data:`SUBSET_CLIPS`, per workload: from the FLOPs at
    :data:`ASSUMED_FRACTION` of :data:`H100_PEAK_TFLOPS` (mixed precision), and from the measured samples/s."""
    result = {}
    for row in training["rows"]:
        if row["precision"] == "float32":
            continue
        peak = H100_PEAK_TFLOPS["mixed"] * 1e12
        per_sample_s = row["training_gflops_per_sample"] * 1e9 / (ASSUMED_FRACTION * peak)
        key = f"{row['workload']} {row['precision']} xla={row['xla']}"
        result[key] = {name: {"from_flops": round(TRAIN_SHARE * n * per_sample_s, 1),
                              "measured": round(TRAIN_SHARE * n / row["samples_per_s"], 1)}
                       for name, n in SUBSET_CLIPS.items()}
        result[key]["achieved_fraction_of_h100_peak"] = round(row["achieved_tflops"] * 1e12 / peak, 4)
    return {"assumed_fraction": ASSUMED_FRACTION, "h100_peak_tflops": H100_PEAK_TFLOPS,
            "train_share": TRAIN_SHARE, "by_workload": result}


def run(*, smoke: bool, precisions: tuple[str, ...] | None = None, demo_data: Path | None = None,
        skip_tests: bool = False) -> dict:
    """Every section of the module docstring; the JSON record."""
    import keras

    plan = SMOKE if smoke else FULL
    backend = keras.backend.backend()
    tensorflow = backend == "tensorflow"
    precisions = precisions or plan.precisions
    skipped = {"skipped": f"needs the TensorFlow backend (Keras runs on {backend})"}
    record: dict[str, Any] = {"machine": machine(), "backend": backend, "smoke": smoke}
    record["tests"] = (run_gpu_tests() if tensorflow and not skip_tests
                       else {"skipped": "--skip-tests"} if tensorflow else skipped)
    record["training"] = training_section(plan, precisions=precisions)
    record["prediction"] = prediction_section(plan) if tensorflow else skipped
    record["demo"] = demo_section(plan, demo_data=demo_data) if tensorflow else skipped
    record["predicted"] = predicted_epoch_seconds(record["training"])
    return record


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def format_table(record: dict) -> str:
    """The record as the text table ``main`` prints."""
    lines = [f"GPU check on {record['machine']} (Keras backend {record['backend']}"
             f"{', smoke' if record['smoke'] else ''})",
             f"tests (-m gpu): {record['tests'].get('summary', record['tests'].get('skipped'))}", "",
             f"{'workload':<20} {'precision':<15} {'XLA':<5} {'samples/s':>10} {'step ms':>9} "
             f"{'peak GiB':>9} {'TFLOP/s':>8}"]
    for row in record["training"]["rows"]:
        lines.append(f"{row['workload']:<20} {row['precision']:<15} {str(row['xla']):<5} "
                     f"{row['samples_per_s']:>10.1f} {row['step_ms']:>9.2f} {_gib(row['peak_memory_bytes']):>9} "
                     f"{row['achieved_tflops']:>8.2f}")
    for row in record["training"]["pipeline"] or []:
        lines.append(f"input pipeline, {row['workload']}: {row['batch_ms']:.2f} ms a batch = "
                     f"{100 * row['share_of_step']:.1f} % of the fastest step")
    prediction = record["prediction"]
    if "skipped" not in prediction:
        lines.append(f"prediction, {prediction['folds']}-fold ensemble: "
                     f"batched {prediction['batched_clips_per_s']:.1f} clips/s, "
                     f"per clip {prediction['per_clip_clips_per_s']:.1f} ({prediction['batched_speedup']:.2f}x)")
    demo = record["demo"]
    if "skipped" not in demo:
        lines.append(f"demo, 2 epochs: {demo['device']}, {demo['precision']} (expected {demo['expected_device']}, "
                     f"{demo['expected_precision']}): {'ok' if demo['ok'] else 'MISMATCH'}")
    predicted = record["predicted"]
    for key, seconds in predicted["by_workload"].items():
        lines.append(f"epoch seconds, {key}: " + ", ".join(
            f"{name} {s['from_flops']:.1f} predicted / {s['measured']:.1f} measured"
            for name, s in seconds.items() if name in SUBSET_CLIPS)
            + f" (predicted at {100 * predicted['assumed_fraction']:.0f} %, measured "
              f"{100 * seconds['achieved_fraction_of_h100_peak']:.1f} % of an H100's peak)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/gpu.json"), help="JSON to write (replaced)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on any machine, same JSON keys")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated dtype policies to train in (default float32,mixed_float16; "
                             "--smoke: mixed_float16, the one that adds loss scaling)")
    parser.add_argument("--demo-data", type=Path, default=None,
                        help="existing demo data folder (default: generate a small one in a temporary folder)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run `pytest -m gpu`")
    return parser


@command("python -m bench.gpu")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    precisions = tuple(args.precisions.split(",")) if args.precisions else None
    record = run(smoke=args.smoke, precisions=precisions, demo_data=args.demo_data, skip_tests=args.skip_tests)
    write_text_atomic(args.out, json.dumps(record, indent=2) + "\n", overwrite=True)
    print(format_table(record))
    failed = record["tests"].get("failed", 0) or record["tests"].get("error", 0) or not record["demo"].get("ok", True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
