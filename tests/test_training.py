"""End to end through the runner on the generated mini-FMA: run files, skip, resume, errors."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml
from conftest import write_tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from experiments import experiment, runner

SUBSET = "small"


@pytest.fixture(scope="module")
def env(tiny_training_data):
    """Tiny features and a 2-fold file of the demo data (shared, read-only)."""
    return tiny_training_data


def args(env, config, runs, *extra):
    return ["--config", str(config), "--data", str(env["data"]), "--subset", SUBSET, "--folds", str(env["folds"]),
            "--cache", str(env["cache"]), "--runs", str(runs), *extra]


def check_run_files(exp_dir, *, task, n_folds):
    classes = json.loads((exp_dir / "classes.json").read_text())
    assert classes["task"] == task
    names = classes["class_names"]
    for k in range(n_folds):
        fold_dir = exp_dir / f"fold_{k}"
        for name in ("config.yaml", "git_commit.txt", "history.csv", "model.keras", "oof.csv", "summary.json"):
            assert (fold_dir / name).is_file(), name
        events = EventAccumulator(str(fold_dir / "tensorboard"))
        events.Reload()
        history = pd.read_csv(fold_dir / "history.csv")
        assert [e.step for e in events.Tensors("val_loss")] == history["epoch"].tolist()
        assert not (fold_dir / "checkpoint").exists()
        summary = json.loads((fold_dir / "summary.json").read_text())
        assert {"experiment", "fold", "task", "model", "params", "epochs", "best_epoch", "seconds_per_epoch",
                "metrics", "date"} <= set(summary)
        assert summary["fold"] == k and summary["task"] == task and summary["params"] > 0
        assert {"log_loss", "macro_f1", "accuracy"} <= set(summary["metrics"])
        history = pd.read_csv(fold_dir / "history.csv")
        assert list(history.columns[:3]) == ["epoch", "loss", "val_loss"]
    oof = pd.read_csv(exp_dir / "oof.csv", dtype={"id": str})
    assert list(oof.columns) == ["id", "fold", "target", *names]
    assert not oof["id"].duplicated().any() and set(oof["fold"]) == set(range(n_folds))
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert {"experiment", "task", "model", "params", "seconds_per_epoch", "date", "folds", "cv", "test"} <= set(summary)
    assert len(summary["folds"]) == n_folds
    for key in ("log_loss", "macro_f1", "accuracy"):
        assert set(summary["cv"][key]) == {"mean", "std"}
        assert np.isfinite(summary["test"][key])
    assert summary["test"]["n"] > 0
    return oof, summary


def test_single_task_through_the_cli_then_skip(env, tmp_path):
    config = write_tiny_config(tmp_path, "tiny_single")
    runs = tmp_path / "runs"
    assert runner.main(args(env, config, runs, "--fold", "0")) == 0
    assert not (runs / "tiny_single" / "summary.json").exists()  # fold 1 remains
    assert runner.main(args(env, config, runs)) == 0
    oof, summary = check_run_files(runs / "tiny_single", task="single", n_folds=2)
    assert (oof["target"].isin(summary and oof.columns[3:])).all()
    np.testing.assert_allclose(oof.iloc[:, 3:].sum(axis=1), 1.0, atol=1e-4)
    resolved = yaml.safe_load((runs / "tiny_single" / "fold_0" / "config.yaml").read_text())
    assert resolved["training"]["precision"] == "auto" and resolved["features"]["n_mels"] == 16
    # a finished fold is not retrained
    stamp = (runs / "tiny_single" / "fold_0" / "model.keras").stat().st_mtime_ns
    assert runner.main(args(env, config, runs, "--fold", "0")) == 0
    assert (runs / "tiny_single" / "fold_0" / "model.keras").stat().st_mtime_ns == stamp


def test_multi_task_writes_every_run_file(env, tmp_path):
    from common.config import load_config

    config = load_config(write_tiny_config(tmp_path, "tiny_multi", task="multi", epochs=1))
    data = experiment.open_experiment_data(config, data=env["data"], subset=SUBSET, folds_path=env["folds"],
                                       cache=env["cache"])
    assert data.task.name == "multi" and data.task.n_classes >= 2 and data.y.sum(axis=1).min() >= 1
    summary = experiment.train_experiment(config, data, runs=tmp_path / "runs")
    oof, _ = check_run_files(tmp_path / "runs" / "tiny_multi", task="multi", n_folds=2)
    assert oof["target"].str.contains("|", regex=False).any()
    assert {"roc_auc", "pr_auc"} <= set(summary["cv"])


class Interrupt(Exception):
    pass


class InterruptAfter(keras.callbacks.Callback):
    """Stands in for a killed process: raises once epoch ``n`` (1-based) is checkpointed."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.n:
            raise Interrupt


class RecordStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.iterations = int(self.model.optimizer.iterations.numpy())


def test_interrupted_fold_resumes_from_its_checkpoint(env, tmp_path):
    from common.config import load_config

    config = load_config(write_tiny_config(tmp_path, "tiny_resume", epochs=3))
    data = experiment.open_experiment_data(config, data=env["data"], subset=SUBSET, folds_path=env["folds"],
                                       cache=env["cache"])
    fold_dir = tmp_path / "runs" / "tiny_resume" / "fold_0"
    with pytest.raises(Interrupt):
        experiment.train_experiment(config, data, runs=tmp_path / "runs", folds=[0], callbacks=(InterruptAfter(1),))
    assert json.loads((fold_dir / "checkpoint" / "state.json").read_text())["epoch"] == 1
    assert pd.read_csv(fold_dir / "history.csv")["epoch"].tolist() == [1]
    assert not (fold_dir / "summary.json").exists()
    start = RecordStart()
    experiment.train_experiment(config, data, runs=tmp_path / "runs", folds=[0], callbacks=(start,))
    assert start.iterations > 0  # optimizer state restored, not a fresh model
    assert pd.read_csv(fold_dir / "history.csv")["epoch"].tolist() == [1, 2, 3]
    summary = json.loads((fold_dir / "summary.json").read_text())
    assert summary["epochs"] == 3 and (fold_dir / "model.keras").is_file()
    assert not (fold_dir / "checkpoint").exists()


def test_clear_errors(env, tmp_path, capsys):
    config = write_tiny_config(tmp_path, "other_features")
    text = config.read_text().replace("n_mels: 16", "n_mels: 20")
    config.write_text(text)
    assert runner.main(args(env, config, tmp_path / "runs")) == 1
    err = capsys.readouterr().err
    assert "make features EXP=other_features" in err and f"SUBSET={SUBSET}" in err
    from common.folds import make_folds, write_folds
    from common.metadata import FmaDataset

    tracks = FmaDataset.open(env["data"], SUBSET).tracks
    bad_folds = write_folds(tmp_path / "folds.csv", make_folds(tracks.iloc[:-20], k=2, seed=0), subset=SUBSET,
                            k=2, seed=0)
    assert runner.main(args(env, write_tiny_config(tmp_path, "ok"), tmp_path / "runs", "--folds", str(bad_folds))) == 1
    assert "do not match the metadata" in capsys.readouterr().err


def test_runtime_selection_follows_the_config():
    from common.config import TrainingConfig
    from common.training import select_runtime

    runtime = select_runtime(TrainingConfig(precision="mixed_bfloat16", strategy="default", jit_compile=False))
    assert runtime.precision == "mixed_bfloat16" and runtime.jit_compile is False
    auto = select_runtime(TrainingConfig())
    if not tf.config.list_physical_devices("GPU"):
        assert auto.precision == "float32" and auto.device == "cpu" and auto.jit_compile is False


def fold_outcome(fold_dir):
    """History (without wall times), out-of-fold predictions and best weights of a finished fold."""
    import common.models  # noqa: F401  (custom layers)

    history = pd.read_csv(fold_dir / "history.csv").drop(columns="seconds")
    oof = pd.read_csv(fold_dir / "oof.csv", dtype={"id": str})
    weights = keras.models.load_model(fold_dir / "model.keras", compile=False).get_weights()
    return history, oof, weights


def assert_same_outcome(a, b, *, atol):
    (history_a, oof_a, weights_a), (history_b, oof_b, weights_b) = a, b
    pd.testing.assert_frame_equal(history_a, history_b, check_exact=False, atol=atol, rtol=0)
    pd.testing.assert_frame_equal(oof_a, oof_b, check_exact=False, atol=atol, rtol=0)
    assert len(weights_a) == len(weights_b)
    for wa, wb in zip(weights_a, weights_b):
        np.testing.assert_allclose(wa, wb, atol=atol, rtol=0)


#: Float tolerance of "the same fold result": CPU training with op determinism is bitwise
#: reproducible, this only absorbs float32 summation order in a saved-and-reloaded model.
SAME_RESULT_ATOL = 1e-5


def test_a_killed_and_resumed_fold_ends_as_an_uninterrupted_one(env, tmp_path):
    """Same history, predictions and weights: learning rate (plateau counters included), optimizer, shuffling,
    crops and dropout masks resume exactly."""
    from common.config import load_config

    config = load_config(write_tiny_config(tmp_path, "tiny_exact", epochs=4, schedule="reduce_on_plateau",
                                           early_stopping_patience=3))
    data = experiment.open_experiment_data(config, data=env["data"], subset=SUBSET, folds_path=env["folds"],
                                       cache=env["cache"])
    experiment.train_experiment(config, data, runs=tmp_path / "whole", folds=[0])
    with pytest.raises(Interrupt):
        experiment.train_experiment(config, data, runs=tmp_path / "killed", folds=[0], callbacks=(InterruptAfter(2),))
    experiment.train_experiment(config, data, runs=tmp_path / "killed", folds=[0])
    whole = fold_outcome(tmp_path / "whole" / "tiny_exact" / "fold_0")
    resumed = fold_outcome(tmp_path / "killed" / "tiny_exact" / "fold_0")
    assert whole[0]["epoch"].tolist() == [1, 2, 3, 4]
    assert whole[0]["lr"].nunique() > 1  # the schedule moved the learning rate
    assert_same_outcome(whole, resumed, atol=SAME_RESULT_ATOL)


def test_a_fold_trained_from_the_memory_mapped_store_equals_one_trained_in_memory(env, tmp_path):
    """``data.in_memory: false`` (every batch gathered from the cache's shards) changes nothing but memory."""
    import dataclasses

    from common.config import load_config

    config = load_config(write_tiny_config(tmp_path, "tiny_mmap", epochs=2))
    outcomes = []
    for in_memory in (True, False):
        variant = dataclasses.replace(config, data=dataclasses.replace(config.data, in_memory=in_memory))
        data = experiment.open_experiment_data(variant, data=env["data"], subset=SUBSET, folds_path=env["folds"],
                                           cache=env["cache"])
        assert data.store.in_memory is in_memory
        experiment.train_experiment(variant, data, runs=tmp_path / str(in_memory), folds=[0])
        outcomes.append(fold_outcome(tmp_path / str(in_memory) / "tiny_mmap" / "fold_0"))
    assert_same_outcome(*outcomes, atol=SAME_RESULT_ATOL)


def test_a_fold_depends_on_nothing_that_ran_before_or_beside_it(env, tmp_path):
    """As on a ``dask worker``: the fold trained again in another thread, after other Keras work, while a
    third thread draws from Python's ``random`` (Dask's event loop does, sizing messages with
    ``random.sample``), ends bit for bit as the first time."""
    import random
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from common.config import load_config

    config = load_config(write_tiny_config(tmp_path, "tiny_threads", epochs=1))
    data = experiment.open_experiment_data(config, data=env["data"], subset=SUBSET, folds_path=env["folds"],
                                           cache=env["cache"])
    experiment.train_experiment(config, data, runs=tmp_path / "first", folds=[0])

    def train_beside_a_random_drawer():
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dropout(0.5)])
        stop = threading.Event()

        def draw():
            while not stop.wait(0.001):
                random.random()

        drawer = threading.Thread(target=draw)
        drawer.start()
        try:
            experiment.train_experiment(config, data, runs=tmp_path / "second", folds=[0])
        finally:
            stop.set()
            drawer.join()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(train_beside_a_random_drawer).result()
    assert_same_outcome(*(fold_outcome(tmp_path / run / "tiny_threads" / "fold_0") for run in ("first", "second")),
                        atol=0)


class RecordStepsPerExecution(keras.callbacks.Callback):
    """Keeps the ``steps_per_execution`` the fold's model trains with, and the steps of an epoch."""

    def on_train_begin(self, logs=None):
        self.value = self.model.steps_per_execution
        self.steps = self.params["steps"]


def test_several_steps_per_call_train_the_same_fold_as_one(env, tmp_path, monkeypatch):
    """Keras runs several steps per call of its train function, a divisor of the epoch so that no call
    reaches into the next epoch's batches: the same batches, history and weights as one step per call.
    With a limit of 3 on an epoch of 4 steps the fold runs 2 per call; 3 would have shifted epoch 2."""
    from common import training
    from common.config import load_config

    config = load_config(write_tiny_config(tmp_path, "tiny_steps", epochs=2, batch_size=5))
    data = experiment.open_experiment_data(config, data=env["data"], subset=SUBSET, folds_path=env["folds"],
                                           cache=env["cache"])
    recorded = []
    for limit in (1, 3):
        monkeypatch.setattr(training, "MAX_STEPS_PER_EXECUTION", limit)
        recorder = RecordStepsPerExecution()
        experiment.train_experiment(config, data, runs=tmp_path / str(limit), folds=[0], callbacks=(recorder,))
        recorded.append((recorder.value, recorder.steps))
    assert recorded == [(1, 4), (2, 4)]
    assert_same_outcome(*(fold_outcome(tmp_path / str(limit) / "tiny_steps" / "fold_0") for limit in (1, 3)),
                        atol=SAME_RESULT_ATOL)


def test_steps_per_execution_divides_the_epoch():
    from common.training import steps_per_execution

    assert [steps_per_execution(n, limit=32) for n in (1, 7, 12, 64, 96, 97, 100)] == [1, 7, 12, 32, 32, 1, 25]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fold_records_whether_xla_compiled_it_and_leaves_op_determinism_as_it_found_it(env, tmp_path, jit_compile):
    """A CPU fold asking for XLA gets it (op determinism would make Keras drop it with only a warning),
    its summary says what ran, and the process's determinism setting is restored after the fold."""
    from tensorflow.python.framework import config as tf_config

    config = write_tiny_config(tmp_path, f"tiny_xla_{jit_compile}", epochs=1, jit_compile=jit_compile)
    before = tf_config.is_op_determinism_enabled()
    assert runner.main(args(env, config, tmp_path / "runs", "--fold", "0")) == 0
    summary = json.loads((tmp_path / "runs" / f"tiny_xla_{jit_compile}" / "fold_0" / "summary.json").read_text())
    assert summary["jit_compile"] is jit_compile and summary["device"] == "cpu"
    assert tf_config.is_op_determinism_enabled() == before
