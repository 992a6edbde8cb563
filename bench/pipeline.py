"""Full-size training throughput: the input pipeline alone, the model alone, and both.

    python -m bench.pipeline --out bench/pipeline.json [--config experiments/configs/crnn.yaml]
        [--clips N --steps S]

With the config's features, model, crop and batch size (default: the reference CRNN on
96 x 1366 log-mels, whole clips, batch 32), on the runtime training picks on this machine
(:func:`common.training.select_runtime`: mixed precision, XLA and, with several GPUs,
``MirroredStrategy`` when GPUs are present), measures clips per second of

(a) pipeline: :func:`common.data.train_dataset` over an in-memory float16 store of
    ``N`` random clips (batch gather, crop, cast, prefetch), iterated without a model;
(b) model: ``model.fit`` steps on one synthetic batch repeated (no input cost);
(c) training: ``model.fit`` on the pipeline, as the runner trains.

Warm-up steps (tracing, XLA compilation) are excluded. ``pipeline_share_of_step`` is the
time (a) takes for a batch over the time (b) takes for a step: the input pipeline's cost
if it ran on the model's cores (target at most 0.1). ``--jit-compile false`` against the
default measures what XLA brings (Keras' ``"auto"`` turns it off under ``MirroredStrategy``).
``limit`` is ``"input pipeline"`` when (a) is slower than (b), otherwise ``"model"``: (c)
cannot beat the slower of the two.
Defaults are sized to the machine: 2048 clips, the config's batch size and 50 timed
steps on a GPU; 64 clips, batches of 8 and 2 steps on a CPU (the CRNN on 96 x 1366
trains at about one clip per second on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from common.cli import command
from common.io import write_text_atomic


def _timed_fit(model, dataset, *, steps: int, warmup: int) -> float:
    """Seconds of ``steps`` training steps after ``warmup`` untimed ones (train function reused)."""
    model.fit(dataset, epochs=1, steps_per_epoch=warmup, verbose=0, shuffle=False)
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return time.perf_counter() - start


def _timed_iteration(dataset, *, steps: int, warmup: int) -> float:
    """Seconds to pull ``steps`` batches (to host numpy) after ``warmup`` untimed ones."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        x, _y = next(iterator)[:2]
        x.numpy()
    return time.perf_counter() - start


def run(*, config_path: Path, n_clips: int | None, steps: int | None, warmup: int | None,
        batch_size: int | None, jit_compile: str | None = None, seed: int = 0) -> dict:
    """Measure (a), (b), (c) of the module docstring; returns the JSON record."""
    import keras
    import tensorflow as tf

    from common import models
    from common.config import JitCompile, load_config
    from common.data import feature_stats, train_dataset
    from common.store import ClipStore
    from common.training import make_optimizer, select_runtime

    config = load_config(config_path)
    if jit_compile is not None:
        choices: dict[str, JitCompile] = {"auto": "auto", "true": True, "false": False}
        jit = choices[jit_compile]
        config = dataclasses.replace(config, training=dataclasses.replace(config.training, jit_compile=jit))
    runtime = select_runtime(config.training)
    on_gpu = runtime.on_gpu
    n_clips = n_clips or (2048 if on_gpu else 64)
    steps = steps or (50 if on_gpu else 2)
    warmup = warmup or (3 if on_gpu else 1)
    batch = batch_size or (config.data.batch_size if on_gpu else 8)
    n_clips -= n_clips % batch  # whole batches: one input shape, no retracing
    if n_clips < batch:
        raise SystemExit(f"--clips: need at least one batch of {batch}")
    rng = np.random.default_rng(seed)
    shape = config.features.clip_shape
    crop = config.data.crop_frames(config.features)
    n_classes = 16
    store = ClipStore.from_array(rng.normal(-30, 10, (n_clips, *shape)).astype(np.float16))
    y = np.eye(n_classes, dtype=np.float32)[rng.integers(0, n_classes, n_clips)]
    mean: np.ndarray | float  # per band or component; one float for a waveform
    std: np.ndarray | float
    mean, std = feature_stats(store, np.arange(n_clips))
    if config.features.kind == "waveform":
        mean, std = float(mean[0]), float(std[0])

    def pipeline():
        return train_dataset(store, np.arange(n_clips), y, crop_frames=crop, batch_size=batch, seed=seed,
                             mixup_alpha=config.data.mixup_alpha, specaugment=config.data.specaugment,
                             fill=mean).repeat()

    pipeline_s = _timed_iteration(pipeline(), steps=steps, warmup=warmup)

    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(runtime.precision)
    try:
        keras.utils.set_random_seed(seed)
        with runtime.strategy.scope():
            model = models.build_model(config.model.name, input_shape=(*shape[:-1], crop), n_outputs=n_classes,
                                       activation="softmax", feature_mean=mean, feature_std=std,
                                       **config.model.params)
            model.compile(optimizer=make_optimizer(config.training, steps_per_epoch=steps),
                          loss="categorical_crossentropy", jit_compile=runtime.jit_compile)
        x0 = store.gather(np.arange(batch))[..., :crop].astype(np.float32)
        synthetic = tf.data.Dataset.from_tensors((x0, y[:batch])).repeat()
        model_s = _timed_fit(model, synthetic, steps=steps, warmup=warmup)
        training_s = _timed_fit(model, pipeline(), steps=steps, warmup=warmup)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    clips = steps * batch
    rates = {"pipeline_clips_per_s": clips / pipeline_s, "model_clips_per_s": clips / model_s,
             "training_clips_per_s": clips / training_s}
    return {**{k: round(v, 1) for k, v in rates.items()},
            "limit": "input pipeline" if rates["pipeline_clips_per_s"] < rates["model_clips_per_s"] else "model",
            "pipeline_headroom": round(rates["pipeline_clips_per_s"] / rates["model_clips_per_s"], 2),
            "pipeline_share_of_step": round(rates["model_clips_per_s"] / rates["pipeline_clips_per_s"], 4),
            "device": runtime.device, "precision": runtime.precision, "jit_compile": runtime.jit_compile,
            "strategy": type(runtime.strategy).__name__, "experiment": config.name, "model": config.model.name,
            "params": int(model.count_params()), "input_shape": [*shape[:-1], crop], "batch_size": batch,
            "clips_in_store": n_clips, "steps_timed": steps}


@command("python -m bench.pipeline")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/pipeline.json"), help="JSON output")
    parser.add_argument("--config", type=Path, default=Path("experiments/configs/crnn.yaml"),
                        help="experiment whose features, model, crop and batch size are used (default: crnn)")
    parser.add_argument("--clips", type=int, default=None, help="random clips in the store (GPU 2048, CPU 64)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (GPU: the config's, CPU 8)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps of each measurement (GPU 50, CPU 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before each (GPU 3, CPU 1)")
    parser.add_argument("--jit-compile", choices=("auto", "true", "false"), default=None,
                        help="override training.jit_compile, e.g. to measure what XLA brings on a GPU")
    args = parser.parse_args(argv)
    record = run(config_path=args.config, n_clips=args.clips, steps=args.steps, warmup=args.warmup,
                 batch_size=args.batch_size, jit_compile=args.jit_compile)
    write_text_atomic(args.out, json.dumps(record, indent=2) + "\n", overwrite=True)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
