"""Training throughput: the toolkit's ``tf.data`` pipeline against a naive per-file loop.

    python -m bench.train --out bench/train.json [--config experiments/configs/demo.yaml]

Both sides train the same model (built from the config, same seed) on the same random
log-mel clips with the config's crop length and batch size:

* toolkit: :func:`common.data.train_dataset` over an in-memory float16 store (what
  ``in_memory: auto`` picks when the features fit), batch gather + vectorised crops and
  the config's augmentations (SpecAugment, mixup), prefetching, ``model.fit`` with
  several steps per call of the train function as :func:`common.training.train_fold`
  compiles it (:func:`common.training.steps_per_execution`);
* baseline: every example of a batch loaded from its own ``.npy`` file, cropped in a
  Python loop, the same augmentations applied to the batch (the same functions of
  :mod:`common.data`, run eagerly), then ``model.train_on_batch`` batch by batch.

The first epoch (graph tracing) is excluded on both sides; then ``--epochs`` rounds of
one toolkit epoch and one baseline epoch back to back (the machine's speed drifts), and
the ratio is the median of the rounds' ratios. Writes ``toolkit_samples_per_s``,
``baseline_samples_per_s`` (medians), ``ratio``, ``rounds``, ``device`` and the sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from common.cli import command
from common.io import write_text_atomic


def _device() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", "GPU") for g in gpus]
        return f"{len(gpus)} x {names[0]}"
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def _build(config, *, crop_frames: int, n_classes: int, mean, std, steps_per_execution: int = 1):
    import keras

    from common import models
    from common.training import make_optimizer

    keras.utils.set_random_seed(config.training.seed)
    model = models.build_model(config.model.name, input_shape=(*config.features.clip_shape[:-1], crop_frames),
                               n_outputs=n_classes, activation="softmax", feature_mean=mean, feature_std=std,
                               **config.model.params)
    model.compile(optimizer=make_optimizer(config.training, steps_per_epoch=1), loss="categorical_crossentropy",
                  steps_per_execution=steps_per_execution)
    return model


def _naive_batch(paths: list[Path], order: np.ndarray, y: np.ndarray, *, crop: int, rng: np.random.Generator,
                 augment) -> tuple:
    """One batch the naive way: a file per example, a Python loop of crops, then ``augment``."""
    xb, yb = [], []
    for i in order:
        clip = np.load(paths[i]).astype(np.float32)
        offset = rng.integers(0, clip.shape[-1] - crop + 1)
        xb.append(clip[..., offset:offset + crop])
        yb.append(y[i])
    return augment(np.stack(xb), np.stack(yb), rng)


def run(*, config_path: Path, n_clips: int, epochs: int, seed: int = 0) -> dict:
    """Measure both loops; see the module docstring. Returns the JSON record."""
    import tensorflow as tf

    from common.config import load_config
    from common.data import feature_stats, mixup, spec_augment, train_dataset
    from common.store import ClipStore
    from common.training import steps_per_execution

    config = load_config(config_path)
    data = config.data
    rng = np.random.default_rng(seed)
    shape = config.features.clip_shape
    x = rng.normal(-30, 10, (n_clips, *shape)).astype(np.float16)
    n_classes = 16
    y = np.eye(n_classes, dtype=np.float32)[rng.integers(0, n_classes, n_clips)]
    crop, batch = data.crop_frames(config.features), data.batch_size
    store = ClipStore.from_array(x)
    mean: np.ndarray | float  # per band or component; one float for a waveform
    std: np.ndarray | float
    mean, std = feature_stats(store, np.arange(n_clips))
    if config.features.kind == "waveform":
        mean, std = float(mean[0]), float(std[0])
    measured = n_clips - n_clips % batch  # whole batches only, on both sides
    positions = np.arange(measured)
    specaugment = data.specaugment if data.specaugment.enabled and config.features.kind == "logmel" else None
    fill = tf.constant(np.asarray(mean, np.float32))

    def augment(xb, yb, batch_rng):
        """The toolkit's augmentations on one naive batch, eagerly."""
        seed_t = tf.constant(batch_rng.integers(0, 2**31, 2), tf.int64)
        xb = tf.constant(xb)
        if specaugment is not None:
            xb = spec_augment(xb, seed_t, config=specaugment, fill=fill)
        if data.mixup_alpha > 0:
            xb, yb, _ = mixup(xb, tf.constant(yb), None, seed_t + 1, alpha=data.mixup_alpha)
        return xb, yb

    steps = measured // batch
    toolkit_model = _build(config, crop_frames=crop, n_classes=n_classes, mean=mean, std=std,
                           steps_per_execution=steps_per_execution(steps))
    dataset = train_dataset(store, positions, y[positions], crop_frames=crop, batch_size=batch, seed=seed,
                            mixup_alpha=data.mixup_alpha, specaugment=specaugment, fill=mean)
    baseline_model = _build(config, crop_frames=crop, n_classes=n_classes, mean=mean, std=std)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{i:06d}.npy" for i in range(n_clips)]
        for path, clip in zip(paths, x):
            np.save(path, clip)

        def toolkit_epoch() -> float:
            start = time.perf_counter()
            toolkit_model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
            return time.perf_counter() - start

        def baseline_epoch() -> float:
            order = rng.permutation(measured)
            start = time.perf_counter()
            for b in range(0, measured, batch):
                baseline_model.train_on_batch(*_naive_batch(paths, order[b:b + batch], y, crop=crop, rng=rng,
                                                            augment=augment))
            return time.perf_counter() - start

        toolkit_epoch(), baseline_epoch()  # tracing, untimed
        for _ in range(epochs):
            toolkit, baseline = measured / toolkit_epoch(), measured / baseline_epoch()
            rounds.append({"toolkit_samples_per_s": round(toolkit, 2), "baseline_samples_per_s": round(baseline, 2),
                           "ratio": round(toolkit / baseline, 3)})
    medians = {key: round(float(np.median([r[key] for r in rounds])), 3) for key in rounds[0]}
    augmentations = [name for name, on in (("specaugment", specaugment is not None),
                                           ("mixup", data.mixup_alpha > 0)) if on]
    return {**medians, "rounds": rounds, "augmentations": ["crop", *augmentations], "device": _device(),
            "experiment": config.name, "model": config.model.name, "clip_shape": list(shape), "crop_frames": crop,
            "batch_size": batch, "n_clips": measured, "epochs_timed": epochs,
            "steps_per_execution": toolkit_model.steps_per_execution,
            "input_threads": _input_threads(), "load_average_1min": round(os.getloadavg()[0], 2)}


def _input_threads() -> int:
    from common.data import input_threads

    return input_threads()


@command("python -m bench.train")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/train.json"), help="JSON output")
    parser.add_argument("--config", type=Path, default=Path("experiments/configs/demo.yaml"),
                        help="experiment whose features, model, crop and batch size are used")
    parser.add_argument("--clips", type=int, default=1024, help="number of synthetic clips (default 1024)")
    parser.add_argument("--epochs", type=int, default=5,
                        help="timed rounds (one epoch of each side) after one warm-up epoch")
    args = parser.parse_args(argv)
    record = run(config_path=args.config, n_clips=args.clips, epochs=args.epochs)
    write_text_atomic(args.out, json.dumps(record, indent=2) + "\n", overwrite=True)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
