"""The mirrored-training cases of tests/test_mirrored.py, run in a process of their own.

TensorFlow splits the CPU into logical devices only before it initialises, so this script
does it first (:data:`REPLICAS` devices), then runs every case in one TensorFlow start-up
and writes what each measured as JSON::

    python tests/mirrored_cases.py SPEC.json RESULT.json

``SPEC.json`` names the tiny demo data (``data``, ``folds``, ``cache``: log-mel features
of ``conftest.TINY_FEATURES``; ``wave_cache``: a cache root holding the waveform features
of :data:`WAVEFORM_FEATURES`) and a scratch folder ``work``. A case that raises records
``{"error": "<type>: <message>", "traceback": ...}`` and the others still run.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import traceback
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from conftest import TINY_FEATURES

from common.config import TrainingConfig, config_from_dict
from common.data import train_dataset
from common.errors import ConfigError
from common.inference import forward_function, predict_clips
from common.store import ClipStore
from experiments import experiment

REPLICAS = 2


def split_cpu() -> None:
    """Split the CPU into :data:`REPLICAS` logical devices: first thing in :func:`main`, before
    TensorFlow initialises (importing this module, as test_mirrored.py does, changes nothing)."""
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                               [tf.config.LogicalDeviceConfiguration()] * REPLICAS)

#: Waveform features of the samplecnn case: 2-s clips at 8 kHz.
WAVEFORM_FEATURES = {"kind": "waveform", "sample_rate": 8000, "clip_seconds": 2.0, "min_seconds": 1.0}

#: The 200-d clip embeddings of ``musicnn_head.yaml`` (the vectors are made here: :func:`embedding_data`).
EMBEDDING_FEATURES = {"kind": "musicnn", "sample_rate": 16000, "n_fft": 512, "hop_length": 256, "n_mels": 96,
                      "log_scale": "log1p", "clip_seconds": 29.12}

#: The smallest version of each registry model that keeps every kind of layer it has at full size
#: (musicnn: from scratch, all five front-end branches, mid-end and back-end, on 16 mel bands).
MODELS = {
    "shortchunk": {"channels": [8], "dense_units": 8, "dropout": 0.1},
    "crnn": {"filters": [4, 8], "pool_sizes": [[4, 2], [4, 2]], "time_padding": 2, "gru_units": [4, 4],
             "conv_dropout": 0.1, "dropout": 0.1},
    "samplecnn": {"stem_filters": 4, "block_filters": [4, 8, 8, 16], "final_filters": 16, "dropout": 0.1},
    "musicnn": {"frontend_scale": 0.05, "midend_filters": 4, "backend_units": 8, "dropout": 0.1},
    "mlp": {"units": [16], "dropout": 0.1},
}

#: Crop of each model's features in seconds: 94 log-mel frames, 3^5 samples (samplecnn's 4 blocks), whole vectors.
CROPS = {"samplecnn": 3 ** 5 / 8000, "mlp": None}
LOGMEL_CROP_FRAMES = 94

#: Global batch (4 clips per replica): 3 steps an epoch on fold 0 of the tiny demo data.
BATCH = 8
EPOCHS = 4


def make_config(name: str, model: str, *, strategy: str = "mirrored", batch_size: int = BATCH,
                optimizer: str = "adam", **params):
    """The experiment config of one case: the tiny ``model`` of :data:`MODELS` (``params`` override it)."""
    features = {"samplecnn": WAVEFORM_FEATURES, "mlp": EMBEDDING_FEATURES}.get(model, TINY_FEATURES)
    values = {
        "features": features,
        "task": {"name": "single"},
        "model": {"name": model, "params": {**MODELS[model], **params}},
        "data": {"crop_seconds": CROPS.get(model, 3.0), "eval": "center", "batch_size": batch_size},
        "training": {"epochs": EPOCHS, "early_stopping_patience": 0, "strategy": strategy, "seed": 3,
                     "optimizer": {"name": optimizer, "learning_rate": 0.01}},
    }
    return config_from_dict(values, name=name)


def embedding_data(logmel: experiment.ExperimentData) -> experiment.ExperimentData:
    """200-d vectors standing in for musicnn embeddings: a fixed projection of each clip's band means and stds."""
    clips = logmel.store[:].astype(np.float32)
    stats = np.concatenate([clips.mean(axis=-1), clips.std(axis=-1)], axis=1)
    projection = np.random.default_rng(0).normal(size=(stats.shape[1], 200)) / np.sqrt(stats.shape[1])
    vectors = (stats - stats.mean(axis=0)) / stats.std(axis=0) @ projection
    store = ClipStore.from_array(vectors.astype(np.float16), ids=logmel.store.ids)
    return experiment.ExperimentData(task=logmel.task, store=store, folds=logmel.folds, y=logmel.y,
                                     n_test=logmel.n_test)


class CopyAfter(keras.callbacks.Callback):
    """Copies the fold directory once epoch ``n`` (1-based) is checkpointed: the files a process killed
    right then leaves behind."""

    def __init__(self, n: int, *, source: Path, destination: Path) -> None:
        super().__init__()
        self.n, self.source, self.destination = n, source, destination

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.n:
            shutil.copytree(self.source, self.destination)


class Record(keras.callbacks.Callback):
    """The ``steps_per_execution`` a fold trains with, its steps per epoch, its model's replicas, and whether
    the epoch ends (validation included) run under a strategy."""

    def on_train_begin(self, logs=None):
        self.values = {"steps_per_execution": int(self.model.steps_per_execution), "steps": int(self.params["steps"]),
                       "replicas": int(self.model.distribute_strategy.num_replicas_in_sync),
                       "epoch_end_in_strategy": False}

    def on_epoch_end(self, epoch, logs=None):
        self.values["epoch_end_in_strategy"] |= tf.distribute.has_strategy()


def fold_record(fold_dir: Path) -> dict:
    """Run files, training losses and out-of-fold log loss of a finished fold; its best model's batch norms."""
    import common.models  # noqa: F401  (custom layers)

    summary = json.loads((fold_dir / "summary.json").read_text())
    model = keras.models.load_model(fold_dir / "model.keras", compile=False)
    norms = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    return {"files": sorted(p.name for p in fold_dir.iterdir()), "summary": summary,
            "loss": pd.read_csv(fold_dir / "history.csv")["loss"].tolist(), "log_loss": summary["metrics"]["log_loss"],
            "batch_norms": len(norms), "synchronized": sum(bool(layer.synchronized) for layer in norms)}


def outcome_difference(a: Path, b: Path) -> float:
    """Largest absolute difference between two finished folds: histories (wall times aside), oof, best weights.

    Raises
    ------
    AssertionError
        Their non-numeric columns (ids, targets) or their shapes differ.
    """
    import common.models  # noqa: F401

    gaps = []
    for name in ("history.csv", "oof.csv"):
        ta, tb = (pd.read_csv(d / name, dtype={"id": str}).drop(columns="seconds", errors="ignore") for d in (a, b))
        numeric = ta.select_dtypes("number").columns
        assert list(ta.columns) == list(tb.columns) and ta.shape == tb.shape, name
        assert ta.drop(columns=numeric).equals(tb.drop(columns=numeric)), name
        gaps.append(float(np.abs(ta[numeric].to_numpy() - tb[numeric].to_numpy()).max()))
    weights = [keras.models.load_model(d / "model.keras", compile=False).get_weights() for d in (a, b)]
    gaps += [float(np.abs(wa - wb).max()) for wa, wb in zip(*weights, strict=True)]
    return max(gaps)


def train(config, data, runs: Path, *, callbacks: tuple = ()) -> dict:
    """Fold 0 of ``config`` into ``runs/<name>/fold_0``; what :class:`Record` saw and the fold's record."""
    record = Record()
    started = time.perf_counter()
    experiment.train_one_fold(config, data, runs=runs, fold=0, callbacks=(record, *callbacks))
    return {**record.values, "seconds": time.perf_counter() - started,
            **fold_record(runs / config.name / "fold_0")}


def case_runtime(spec, context) -> dict:
    """What ``strategy: mirrored`` resolves to on the CPU split in two, and what TensorFlow's default takes."""
    from common.training import select_runtime

    mirrored = select_runtime(TrainingConfig(strategy="mirrored"))
    default = select_runtime(TrainingConfig())
    return {"device": mirrored.device, "replicas": mirrored.replicas, "strategy": type(mirrored.strategy).__name__,
            "devices": sorted(mirrored.strategy.extended.worker_devices),
            "same_strategy_again": select_runtime(TrainingConfig(strategy="mirrored")).strategy is mirrored.strategy,
            "default_device": default.device, "default_replicas": default.replicas,
            "tensorflow_default_replicas": tf.distribute.MirroredStrategy().num_replicas_in_sync,
            "logical_cpus": len(tf.config.list_logical_devices("CPU"))}


def case_global_batch(spec, context) -> dict:
    """The per-replica batches the mirrored strategy makes of a fold's training batches (18 clips)."""
    from common.training import select_runtime

    strategy = select_runtime(TrainingConfig(strategy="mirrored")).strategy
    data = context["logmel"]
    positions = np.arange(18)
    dataset = train_dataset(data.store, positions, data.y[positions], crop_frames=LOGMEL_CROP_FRAMES,
                            batch_size=BATCH, seed=0)
    return {"global": [int(x.shape[0]) for x, _ in dataset],
            "per_replica": [[int(part.shape[0]) for part in x.values]
                            for x, _ in strategy.experimental_distribute_dataset(dataset)]}


def case_first_step(spec, context) -> dict:
    """One SGD step of the fold's model on the same weights and global batch, with one replica and two.

    Both models are built and compiled as :func:`common.training.train_fold` builds them, replica
    settings applied, and step through ``fit`` on a dataset, as a fold does: the strategy splits a
    dataset's batches (``train_on_batch`` would give every replica the whole batch). No dropout:
    each replica draws the dropout masks of its share of the batch.
    SGD, not Adam: Adam's first step divides each gradient by its own size, so float noise in a
    gradient that is 0 in exact arithmetic (a convolution's bias before a batch norm) becomes a
    step of the learning rate's size.
    """
    from common import training
    from common.training import fold_globals, select_runtime

    x = np.random.default_rng(0).normal(-30.0, 10.0, size=(BATCH, 16, LOGMEL_CROP_FRAMES)).astype(np.float32)
    y = context["logmel"].y[:BATCH].astype(np.float32)
    built = {}
    for strategy in ("default", "mirrored"):
        config = make_config("first_step", "shortchunk", strategy=strategy, optimizer="sgd", dropout=0.0)
        runtime = select_runtime(config.training)
        inputs = training._fold_inputs(config, store=ClipStore.from_array(x), train_positions=np.arange(BATCH),
                                       val_positions=np.arange(2))
        with fold_globals(runtime, seed=0):
            built[strategy], _ = training._build_or_resume_model(
                config, task=context["logmel"].task, run_dir=Path(spec["work"]) / "unused", runtime=runtime,
                inputs=inputs)
    initial = [np.abs(a - b).max() for a, b in zip(*(m.get_weights() for m in built.values()), strict=True)]
    start = built["default"].get_weights()
    built["mirrored"].set_weights(start)
    batch = tf.data.Dataset.from_tensors((x, y))
    losses = {strategy: model.fit(batch, epochs=1, shuffle=False, verbose=0).history["loss"][0]
              for strategy, model in built.items()}
    after = [m.get_weights() for m in built.values()]
    context["first_step"] = built
    return {"loss": losses, "initial_weight_difference": float(max(initial)),
            "max_weight_difference": max(float(np.abs(a - b).max()) for a, b in zip(*after, strict=True)),
            "moved": max(float(np.abs(a - b).max()) for a, b in zip(after[0], start, strict=True)),
            "learning_rate": [float(keras.ops.convert_to_numpy(m.optimizer.learning_rate)) for m in built.values()],
            "replicas": [m.distribute_strategy.num_replicas_in_sync for m in built.values()],
            "batch_norms_synchronized": [sum(bool(getattr(layer, "synchronized", False)) for layer in m.layers)
                                         for m in built.values()]}


def case_prediction(spec, context) -> dict:
    """The model trained under the strategy (mirrored variables) predicts outside it as a plain model
    holding its weights; the traced forward function reads its variables on one device."""
    import common.models  # noqa: F401  (custom layers)

    trained = context["first_step"]["mirrored"]
    plain = keras.Model.from_config(trained.get_config())
    plain.set_weights(trained.get_weights())
    clips = context["logmel"].store.subset(np.arange(12))
    probs = {name: predict_clips(model, clips, crop_frames=LOGMEL_CROP_FRAMES, eval="chunks", batch_size=4)
             for name, model in (("trained", trained), ("plain", plain))}
    concrete = forward_function((trained,), 4).traced.get_concrete_function()
    return {"max_difference": float(np.abs(probs["trained"] - probs["plain"]).max()),
            "sums": probs["trained"].sum(axis=1).tolist(), "replicas": trained.distribute_strategy.num_replicas_in_sync,
            "variable_devices": sorted({t.device for t in concrete.captured_inputs if t.dtype == tf.resource})}


def case_same_seed(spec, context) -> dict:
    """One fold of the tiny demo model without dropout, single replica and mirrored, the same seed (the
    mirrored one is also the shortchunk fold of :func:`case_models`)."""
    work = Path(spec["work"]) / "same_seed"
    return {strategy: train(make_config(f"demo_{strategy}", "shortchunk", strategy=strategy, dropout=0.0),
                            context["logmel"], work)
            for strategy in ("default", "mirrored")}


def case_models(spec, context) -> dict:
    """A mirrored fold of every other registry model; the crnn fold is copied as killed after its first epoch."""
    work = Path(spec["work"]) / "models"
    result = {}
    for name in ("crnn", "samplecnn", "musicnn", "mlp"):
        data = {"samplecnn": context["waveform"], "mlp": context["embeddings"]}.get(name, context["logmel"])
        config = make_config(f"mirrored_{name}", name)
        copy = () if name != "crnn" else (
            CopyAfter(1, source=work / config.name / "fold_0",
                      destination=Path(spec["work"]) / "killed" / config.name / "fold_0"),)
        try:
            result[name] = train(config, data, work, callbacks=copy)
        except Exception as error:  # one model's failure must not hide the others'
            result[name] = {"error": f"{type(error).__name__}: {error}"[:2000], "traceback": traceback.format_exc()}
    return result


def case_resume(spec, context) -> dict:
    """The crnn fold of :func:`case_models` resumed from its copy after epoch 1, against the uninterrupted fold."""
    killed = Path(spec["work"]) / "killed"
    config = make_config("mirrored_crnn", "crnn")
    state = json.loads((killed / config.name / "fold_0" / "checkpoint" / "state.json").read_text())
    resumed = train(config, context["logmel"], killed)
    return {"killed_at_epoch": state["epoch"], "resumed": resumed,
            "difference": outcome_difference(Path(spec["work"]) / "models" / config.name / "fold_0",
                                             killed / config.name / "fold_0")}


def case_indivisible_batch(spec, context) -> dict:
    """A global batch the replicas cannot share."""
    runs = Path(spec["work"]) / "odd"
    try:
        train(make_config("odd_batch", "shortchunk", batch_size=BATCH + 1), context["logmel"], runs)
    except ConfigError as error:
        return {"message": str(error), "run_dir_created": (runs / "odd_batch").exists()}
    return {"message": None}


CASES = [case_runtime, case_global_batch, case_first_step, case_prediction, case_same_seed, case_models,
         case_resume, case_indivisible_batch]


def open_data(spec: dict) -> dict:
    """The experiment data of each feature layout, on the same tracks, folds and labels."""
    def open_(name: str, model: str, cache: str) -> experiment.ExperimentData:
        return experiment.open_experiment_data(make_config(name, model), data=Path(spec["data"]), subset="small",
                                               folds_path=Path(spec["folds"]), cache=Path(spec[cache]))

    logmel = open_("logmel", "shortchunk", "cache")
    return {"logmel": logmel, "waveform": open_("waveform", "samplecnn", "wave_cache"),
            "embeddings": embedding_data(logmel)}


def main(argv: list[str]) -> int:
    split_cpu()
    spec = json.loads(Path(argv[0]).read_text())
    context = open_data(spec)
    results: dict = {}
    for case in CASES:
        started = time.perf_counter()
        try:
            result = case(spec, context)
        except Exception as error:
            result = {"error": f"{type(error).__name__}: {error}"[:2000], "traceback": traceback.format_exc()}
        results[case.__name__.removeprefix("case_")] = {**result, "case_seconds": time.perf_counter() - started}
    Path(argv[1]).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
