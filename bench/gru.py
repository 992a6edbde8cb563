"""The CRNN's two GRU formulations (``model.params.gru_reset_after`` false / true): cost and results.

    python -m bench.gru --out bench/gru.json [--rounds 9] [--data data/demo]

* ``step_seconds``: one forward + backward pass (the loss's gradients, no update) of the
  reference CRNN (96 x 1366 log-mels, 16 softmax outputs, batch ``--batch``), and of its
  two GRUs alone on their ``(batch, 15, 128)`` input sequence; each traced once, 3 warm-up
  passes, then ``--rounds`` passes of each formulation alternately (the machine's speed
  drifts); medians, and their ratio ``true / false``.
* ``training``: the demo CRNN experiment (``experiments/configs/demo_crnn.yaml``, 5 folds)
  trained once with each formulation on the generated mini-FMA (``--data``, else generated
  in a temporary folder), same folds and seeds: cross-validated and test-split log loss and
  accuracy, and the training loss of each epoch (mean over the folds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from common.cli import command
from common.io import write_text_atomic

DEMO_CRNN = Path("experiments/configs/demo_crnn.yaml")
N_CLASSES = 16


def step_seconds(*, batch: int, rounds: int, warmup: int = 3) -> dict:
    """Median seconds of a forward + backward pass of the reference CRNN and of its GRUs, per formulation."""
    import keras
    import tensorflow as tf

    from common.models import build_model

    rng = np.random.default_rng(0)
    y = tf.constant(np.eye(N_CLASSES, dtype=np.float32)[rng.integers(0, N_CLASSES, batch)])
    cases = {}
    for reset_after in (False, True):
        keras.utils.set_random_seed(0)
        crnn = build_model("crnn", input_shape=(96, 1366), n_outputs=N_CLASSES, activation="softmax",
                           gru_reset_after=reset_after)
        sequence = crnn.get_layer("to_sequence").output.shape[1:]
        grus = keras.Sequential([keras.Input(sequence),
                                 keras.layers.GRU(32, return_sequences=True, reset_after=reset_after),
                                 keras.layers.GRU(32, reset_after=reset_after),
                                 keras.layers.Dense(N_CLASSES, activation="softmax")])
        for part, model, x in (("crnn", crnn, rng.normal(-40, 15, (batch, 96, 1366))),
                               ("grus", grus, rng.normal(0, 1, (batch, *sequence)))):
            cases[(part, reset_after)] = (_gradient_function(model), tf.constant(x, tf.float32))
    for gradients, x in cases.values():
        for _ in range(warmup):
            gradients(x, y)
    times: dict = {key: [] for key in cases}
    for _ in range(rounds):
        for key, (gradients, x) in cases.items():
            start = time.perf_counter()
            gradients(x, y)
            times[key].append(time.perf_counter() - start)
    medians = {part: {str(r).lower(): float(np.median(times[(part, r)])) for r in (False, True)}
               for part in ("crnn", "grus")}
    return {part: {**m, "ratio_true_over_false": m["true"] / m["false"]} for part, m in medians.items()}


def _gradient_function(model):
    """``f(x, y)``: the gradients of the categorical cross-entropy, traced once (values fetched, so timed)."""
    import keras
    import tensorflow as tf

    loss = keras.losses.CategoricalCrossentropy()

    @tf.function
    def gradients(x, y):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        return tape.gradient(value, model.trainable_weights)

    return lambda x, y: [g.numpy() for g in gradients(x, y)]


def training_results(*, data: Path | None, work: Path) -> dict:
    """The demo CRNN experiment trained with each formulation (see the module docstring)."""
    import pandas as pd

    from common.config import load_config
    from common.demo_data import generate_demo_dataset
    from common.features import cache_dir_for, extract
    from common.folds import make_folds, write_folds
    from common.metadata import FmaDataset
    from experiments.experiment import open_experiment_data, train_experiment

    if data is None:
        data = work / "demo"
        generate_demo_dataset(data)
    config = load_config(DEMO_CRNN)
    dataset = FmaDataset.open(data, "small")
    extract(dataset.items(), settings=config.features, progress=False,
            cache_dir=cache_dir_for(work / "cache", dataset.feature_source, config.features))
    folds = write_folds(work / "folds.csv", make_folds(dataset.tracks, k=5, seed=0), subset="small", k=5, seed=0)
    results = {}
    for reset_after in (False, True):
        variant = dataclasses.replace(
            config, name=f"demo_crnn_reset_after_{str(reset_after).lower()}",
            model=dataclasses.replace(config.model, params={**config.model.params, "gru_reset_after": reset_after}))
        exp_data = open_experiment_data(variant, data=data, subset="small", folds_path=folds, cache=work / "cache")
        summary = train_experiment(variant, exp_data, runs=work / "runs")
        assert summary is not None  # None only while folds remain unfinished; all five were trained
        histories = [pd.read_csv(work / "runs" / variant.name / f"fold_{k}" / "history.csv") for k in range(5)]
        results[str(reset_after).lower()] = {
            "params": summary["params"],
            "cv_log_loss": summary["cv"]["log_loss"], "cv_accuracy": summary["cv"]["accuracy"],
            "test_log_loss": summary["test"]["log_loss"], "test_accuracy": summary["test"]["accuracy"],
            "epoch_loss": np.mean([h["loss"].to_numpy() for h in histories], axis=0).round(4).tolist(),
            "seconds_per_epoch": summary["seconds_per_epoch"],
        }
    return results


@command("python -m bench.gru")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gru", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/gru.json"), help="JSON output")
    parser.add_argument("--batch", type=int, default=8, help="batch of the timed passes (default 8)")
    parser.add_argument("--rounds", type=int, default=9, help="timed passes of each formulation (default 9)")
    parser.add_argument("--data", type=Path, help="a generated mini-FMA (make demo-data); default: generate one")
    args = parser.parse_args(argv)
    import tensorflow as tf

    from bench.train import _device

    record = {"device": _device(), "tensorflow": tf.__version__,
              "step_seconds": step_seconds(batch=args.batch, rounds=args.rounds), "batch": args.batch}
    with tempfile.TemporaryDirectory() as work:
        record["training"] = training_results(data=args.data, work=Path(work))
    write_text_atomic(args.out, json.dumps(record, indent=2) + "\n", overwrite=True)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
