"""Train one fold: runtime selection, resumable checkpoints, validation, run files.

A fold directory ``runs/<exp>/fold_<k>/`` receives, in this order: ``config.yaml``
(resolved), ``git_commit.txt``, ``classes.json``, then per epoch a row of
``history.csv`` (``epoch, loss, val_loss, val_<metric>..., lr, seconds``), TensorBoard
events, ``model.keras`` when the validation log loss improves and the resumable
``checkpoint/`` (last model with optimizer state + ``state.json``), and at the end
``oof.csv`` and ``summary.json``. ``summary.json`` is written last: a fold that has it
is finished and never retrained; a fold with ``checkpoint/state.json`` resumes after
the last completed epoch, exactly: ``state.json`` also keeps the dropout seed states and
the ``ReduceLROnPlateau`` counters, and every epoch's batches are a function of the seed
and the epoch number (:func:`common.data.train_dataset`), so the resumed fold ends with
the history and weights of an uninterrupted one.

A fold's training holds the fold folder's writer lock (:func:`common.locks.folder_lock`): a
second run of the same fold waits, then skips the finished fold. A training loss that stops
being finite stops the fold at once (:class:`FoldCheckpoint`); it is finished all the same,
its ``summary.json`` saying ``"status": "failed"`` (``"diverged"`` for a fold that trained its
epochs but scores far worse than the uniform prior; see :mod:`common.runs`).

Under ``strategy: mirrored`` (:func:`select_runtime`) ``data.batch_size`` is the global
batch: each replica trains on its share (:func:`check_global_batch`), Keras averages the
loss over the global batch, and the batch norms use the whole batch's statistics, so that a
step is the single-replica step (:func:`_set_replica_behaviour`). Prediction (validation,
out-of-fold) runs outside the strategy, on one device (:mod:`common.inference`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import math
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from common import metrics
from common.config import ExperimentConfig, TrainingConfig
from common.data import feature_stats, train_dataset
from common.errors import ConfigError
from common.inference import inference_batch_size, predict_clips
from common.io import atomic_output, write_text_atomic
from common.locks import folder_lock
from common.runs import FOLD_CHECKED_FILES, FOLD_SUMMARY, file_record, fold_outcome, read_fold_summary
from common.store import ClipStore
from common.tasks import AUXILIARY_CLASSES, Task

CHECKPOINT_DIR = "checkpoint"


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where and how a model trains.

    Attributes
    ----------
    strategy : tf.distribute.Strategy
    precision : {"float32", "mixed_float16", "mixed_bfloat16"}
        Keras dtype policy; outputs and loss stay float32.
    jit_compile : bool or "auto"
        Passed to ``model.compile``.
    device : str
        ``"cpu"``, ``"N x GPU"``, or ``"N x CPU (mirrored)"`` (a CPU split into ``N``
        logical devices with ``tf.config.set_logical_device_configuration``).
    """

    strategy: Any
    precision: str
    jit_compile: bool | str
    device: str

    @property
    def replicas(self) -> int:
        """Replicas that share each global batch (``strategy.num_replicas_in_sync``)."""
        return int(self.strategy.num_replicas_in_sync)

    @property
    def on_gpu(self) -> bool:
        """Whether the model trains on GPUs (``device`` is ``"N x GPU"``)."""
        return self.device.endswith("GPU")


def select_runtime(training: TrainingConfig) -> Runtime:
    """Resolve ``precision``, ``strategy`` and ``jit_compile`` of the config for this machine.

    ``auto`` picks ``mixed_float16``, XLA (Keras' ``"auto"``) and, with more than one
    GPU, ``MirroredStrategy`` when GPUs are visible; float32, no XLA and the default
    strategy on CPU. ``mirrored`` mirrors over every logical GPU (every visible GPU
    unless TensorFlow was told to split them), or, without GPUs, over every logical CPU
    device; the devices are named here rather than left to ``MirroredStrategy()``, whose
    choice without GPUs has changed between TensorFlow versions (only ``/cpu:0`` in
    older ones, every logical CPU in 2.21). A process makes one ``MirroredStrategy`` per
    device list (:func:`_mirrored_strategy`) and every fold trains under it.
    """
    gpus = tf.config.list_physical_devices("GPU")
    precision = training.precision
    if precision == "auto":
        precision = "mixed_float16" if gpus else "float32"
    strategy_name = training.strategy
    if strategy_name == "auto":
        strategy_name = "mirrored" if len(gpus) > 1 else "default"
    if strategy_name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = _mirrored_strategy(tuple(device.name for device in devices))
    else:
        strategy = tf.distribute.get_strategy()
    jit = training.jit_compile
    if jit == "auto":
        jit = "auto" if gpus else False
    if gpus:
        device = f"{len(gpus)} x GPU"
    else:
        device = f"{strategy.num_replicas_in_sync} x CPU (mirrored)" if strategy_name == "mirrored" else "cpu"
    return Runtime(strategy=strategy, precision=precision, jit_compile=jit, device=device)


@functools.cache
def _mirrored_strategy(devices: tuple[str, ...]) -> tf.distribute.MirroredStrategy:
    """The process's ``MirroredStrategy`` over ``devices``.

    Each new strategy numbers its all-reduces (collective group and instance keys) from
    the same start, and TensorFlow's collective executor, one per process, keys them by
    those numbers alone: the folds of one process under two strategies over the same
    devices would mix up their all-reduces ("Shape mismatch in the collective instance 100").
    """
    return tf.distribute.MirroredStrategy(devices=list(devices))


_thread_seed_stream = threading.local()


class _PerThreadRandom:
    """Stands in for the ``random`` module in Keras' seed code: a thread's own stream while it has one."""

    def __getattr__(self, name: str) -> Any:
        return getattr(getattr(_thread_seed_stream, "generator", None) or random, name)


_PER_THREAD_RANDOM = _PerThreadRandom()


@contextlib.contextmanager
def keras_seeds(seed: int) -> Iterator[None]:
    """Seed Keras and give the calling thread its own stream of Keras' default seeds for the block.

    ``keras.utils.set_random_seed`` seeds Python's process-wide ``random``, and Keras draws
    the seed of every unseeded initializer and ``SeedGenerator`` (dropout) from that stream
    (``keras.src.random.seed_generator.make_default_seed``). Any other thread drawing from
    it meanwhile shifts those seeds: a Dask worker's event loop does (``random.sample`` in
    ``dask.sizeof``), so a fold's initial weights and dropout masks depended on timing.
    Inside this block the calling thread's Keras default seeds come from
    ``random.Random(seed)``, the stream ``random.seed(seed)`` starts; other threads keep
    the module's stream.

    Raises
    ------
    RuntimeError
        This Keras no longer draws its default seeds where this function expects.
    """
    from keras.src.random import seed_generator

    source = getattr(seed_generator, "python_random", None)
    if source is not _PER_THREAD_RANDOM:
        if source is not random:
            raise RuntimeError(f"keras {keras.__version__}: keras.src.random.seed_generator no longer draws default "
                               f"seeds from the `random` module; common.training.keras_seeds must follow it")
        seed_generator.python_random = _PER_THREAD_RANDOM  # stays: threads without a stream use `random`
    previous = getattr(_thread_seed_stream, "generator", None)
    keras.utils.set_random_seed(seed)
    _thread_seed_stream.generator = random.Random(seed)
    try:
        yield
    finally:
        _thread_seed_stream.generator = previous


@contextlib.contextmanager
def fold_globals(runtime: Runtime, *, seed: int) -> Iterator[None]:
    """Keras' global settings while a fold trains, each restored after: ``runtime``'s dtype policy,
    op determinism on CPUs (mirrored ones too) and :func:`keras_seeds`.

    Op determinism stays off when the config asks for XLA (``jit_compile: true``): Keras
    refuses to compile with XLA under it, with only a warning, so a CPU fold would train
    without the XLA it asked for.
    """
    from tensorflow.python.framework import config as tf_config  # is/disable_op_determinism: not in tf.config

    previous_policy = keras.mixed_precision.dtype_policy()
    previous_determinism = tf_config.is_op_determinism_enabled()
    keras.mixed_precision.set_dtype_policy(runtime.precision)
    if not runtime.on_gpu and runtime.jit_compile is not True:
        tf_config.enable_op_determinism()
    try:
        with keras_seeds(seed):
            yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)
        (tf_config.enable_op_determinism if previous_determinism else tf_config.disable_op_determinism)()


#: Most training steps one call of Keras' compiled train function runs
#: (``steps_per_execution``) with one replica. Each call costs Keras Python work (callbacks,
#: logs, dispatch) that a small model on a CPU feels: in ``bench.train`` (5 rounds, 2 cores) the
#: demo model went from 0.96 times the naive per-file loop with one step per call to 1.08 with
#: 8 and 1.11 with 32. Under several replicas a call runs one step: Keras 3.15's several-steps
#: loop (``multi_step_on_iterator``) dies on a distributed iterator in the first epoch
#: (``INVALID_ARGUMENT: You must feed a value for placeholder tensor '...while/cond/Placeholder'``).
#: What that costs, measured on 2 cores: the per-call work is 1.2-1.9 ms a step (a one-layer
#: model: 1.5-2.2 ms a step with one step per call, 0.3 with 32), lost in the noise of the demo
#: model's 240-330 ms steps (48 x 481 crops, batch 32); a mirrored step's own dispatch over
#: 2 logical CPUs is 12-14 ms for that one-layer model. Not measured on GPUs, where a step is
#: shorter and the share of the per-call work larger.
MAX_STEPS_PER_EXECUTION = 32


def steps_per_execution(steps_per_epoch: int, *, limit: int | None = None, replicas: int = 1) -> int:
    """Steps per call of the compiled train function: the largest divisor of ``steps_per_epoch``
    up to ``limit`` (default :data:`MAX_STEPS_PER_EXECUTION`); 1 with several ``replicas``.

    It must divide the epoch: with ``steps_per_epoch`` given, Keras keeps one iterator
    over all epochs, and a call that runs past the end of an epoch would train on the
    next epoch's batches (and shift every epoch after it). Batches, their order and the
    weights are the same as one step per call. Several replicas get one step per call
    (see :data:`MAX_STEPS_PER_EXECUTION` for why and what it costs).
    """
    if replicas > 1:
        return 1
    limit = MAX_STEPS_PER_EXECUTION if limit is None else limit
    return max(d for d in range(1, min(limit, steps_per_epoch) + 1) if steps_per_epoch % d == 0)


def check_global_batch(batch_size: int, *, replicas: int) -> None:
    """``data.batch_size`` is the global batch: each of the ``replicas`` trains on ``batch_size / replicas`` clips.

    Raises
    ------
    ConfigError
        ``batch_size`` is not a multiple of ``replicas``.
    """
    if batch_size % replicas:
        raise ConfigError(f"data.batch_size: {batch_size} is the global batch, split across {replicas} replicas "
                          f"(one per device); make it a multiple of {replicas}")


def _set_replica_behaviour(model: keras.Model, *, replicas: int, steps_per_epoch: int) -> None:
    """What a built or reloaded model does differently under several replicas, set for ``replicas``.

    One step per call of the train function (:func:`steps_per_execution`), and batch
    norms that normalise with the statistics of the whole global batch (``synchronized``,
    an all-reduce of each batch norm's sums in every step) instead of each replica's
    share: so that a step of a mirrored fold is the single-replica step (same loss and
    update, within float32 rounding), whatever the number of replicas; the all-reduces
    are not measured on GPUs. The two ways a mirrored step still differs from one
    replica's: each replica draws the dropout masks of its share from the same seed state
    (every replica's share gets the same masks), and in an epoch's last, partial batch
    each replica's mean loss weighs equally whatever its number of clips.
    """
    model.steps_per_execution = steps_per_execution(steps_per_epoch, replicas=replicas)
    for layer in model._flatten_layers(include_self=False):  # nested models and layers too
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = replicas > 1


def make_optimizer(training: TrainingConfig, *, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The configured optimizer with its learning-rate schedule (``cosine`` decays over all epochs)."""
    opt = training.optimizer
    lr: Any = opt.learning_rate
    if training.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(opt.learning_rate,
                                                    decay_steps=max(1, training.epochs * steps_per_epoch))
    if opt.name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9, nesterov=True,
                                    weight_decay=opt.weight_decay or None)
    cls = keras.optimizers.AdamW if opt.name == "adamw" else keras.optimizers.Adam
    return cls(learning_rate=lr, weight_decay=opt.weight_decay or None)


def git_commit() -> str:
    """``git describe --always --dirty`` of the toolkit's checkout, or ``"unknown"``."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"],
                             cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _save_model_atomic(model: keras.Model, path: Path) -> None:
    with atomic_output(path, overwrite=True) as tmp:  # keeps the ``.keras`` suffix Keras requires
        model.save(tmp)


def prepare_run_dir(run_dir: Path, *, config: ExperimentConfig, task: Task, auxiliary: Task | None = None) -> None:
    """Create the fold directory with ``config.yaml``, ``git_commit.txt``, ``classes.json``
    (and ``auxiliary_classes.json``, the classes of a multi-task model's ``auxiliary`` head).

    Raises
    ------
    ConfigError
        The directory holds a run of a different resolved config (never overwritten).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    text = config.to_yaml()
    if config_path.exists() and config_path.read_text() != text:
        raise ConfigError(f"{config_path}: this run was made with a different config of experiment "
                          f"{config.name!r}; move {run_dir} away or give the experiment a new name")
    write_text_atomic(config_path, text, overwrite=True)
    classes = run_dir / "classes.json"
    if classes.exists() and Task.load(classes) != task:
        raise ConfigError(f"{classes}: the run has other classes than the task now gives; move {run_dir} away")
    task.save(classes)
    if auxiliary is not None:  # follows the config, which config.yaml has checked
        auxiliary.save(run_dir / AUXILIARY_CLASSES)
    if not (run_dir / "git_commit.txt").exists():
        write_text_atomic(run_dir / "git_commit.txt", git_commit() + "\n", overwrite=True)


class FoldCheckpoint(keras.callbacks.Callback):
    """Validate on whole clips, log, keep the best model and a resumable checkpoint.

    At the end of every epoch: scores the validation clips with :func:`predict_clips`
    (centre crop or chunk averaging), puts ``val_loss`` (the log loss) and ``val_<metric>``
    into the logs for the callbacks that follow, appends a ``history.csv`` row, saves
    ``model.keras`` on improvement, saves ``checkpoint/last.keras`` (with optimizer
    state) and then ``checkpoint/state.json``, and stops training after
    ``patience`` epochs without improvement (0: never).

    A training loss that is no longer finite stops training at once, after the batch that
    made it so (what Keras' ``TerminateOnNaN`` does, without its print): that epoch is not
    validated, logged or checkpointed, and ``state["failure"]`` records it (``epoch``, ``loss``).

    A ``plateau`` callback (``ReduceLROnPlateau``) is stepped here, after validation and
    before the checkpoint, so that the saved optimizer holds the learning rate of the next
    epoch; its counters (``best``, ``wait``, ``cooldown_counter``) are kept in
    ``state["plateau"]`` and restored on resume.
    """

    def __init__(self, *, run_dir: Path, task: Task, val_features, y_val: np.ndarray, crop_frames: int,
                 eval: str, chunk_hop_frames: int, batch_size: int, patience: int, state: dict,
                 plateau: keras.callbacks.ReduceLROnPlateau | None = None) -> None:
        super().__init__()
        self.run_dir, self.task, self.val_features = run_dir, task, val_features
        self.y_val, self.crop_frames, self.eval = y_val, crop_frames, eval
        self.chunk_hop_frames, self.batch_size, self.patience = chunk_hop_frames, batch_size, patience
        self.state = state
        self.plateau = plateau
        self._started = 0.0

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        if self.plateau is not None:
            self.plateau.set_model(model)

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.plateau is not None:
            self.plateau.on_train_begin(logs)
            for key, value in self.state.get("plateau", {}).items():
                setattr(self.plateau, key, value)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if not math.isfinite(float((logs or {}).get("loss", 0.0))):
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            self.state["failure"] = {"epoch": epoch + 1, "loss": loss}
            return
        probs = predict_clips(self.model, self.val_features, crop_frames=self.crop_frames, eval=self.eval,
                              chunk_hop_frames=self.chunk_hop_frames, batch_size=self.batch_size)
        scores = score_predictions(self.task, self.y_val, probs)
        logs["val_loss"] = scores["log_loss"]
        for key, value in scores.items():
            if key not in ("log_loss", "n", "n_classes_scored"):
                logs[f"val_{key}"] = value
        seconds = time.perf_counter() - self._started
        head_losses = {key: float(value) for key, value in logs.items()  # a multi-task model's, one per head
                       if key.endswith("_loss") and not key.startswith("val_")}
        row = {"epoch": epoch + 1, "loss": loss, **head_losses, "val_loss": float(logs["val_loss"]),
               **{k: float(v) for k, v in logs.items() if k.startswith("val_") and k != "val_loss"},
               "lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
               "seconds": seconds}
        if self.plateau is not None:
            self.plateau.on_epoch_end(epoch, logs)
            self.state["plateau"] = {key: float(getattr(self.plateau, key)) if key == "best"
                                     else int(getattr(self.plateau, key))
                                     for key in ("best", "wait", "cooldown_counter")}
        history = self.run_dir / "history.csv"
        pd.DataFrame([row]).to_csv(history, mode="a", header=not history.exists(), index=False)
        write_scalars(self.run_dir / "tensorboard", row, step=epoch + 1)
        state = self.state
        if state["best_val_loss"] is None or row["val_loss"] < state["best_val_loss"]:
            state.update(best_val_loss=row["val_loss"], best_epoch=epoch + 1, wait=0)
            _save_model_atomic(self.model, self.run_dir / "model.keras")
        else:
            state["wait"] += 1
        state["epoch"] = epoch + 1
        state["seconds"].append(seconds)
        state["seed_states"] = [keras.ops.convert_to_numpy(v).tolist() for v in _seed_states(self.model)]
        checkpoint = self.run_dir / CHECKPOINT_DIR
        checkpoint.mkdir(exist_ok=True)
        _save_model_atomic(self.model, checkpoint / "last.keras")
        write_text_atomic(checkpoint / "state.json", json.dumps(state), overwrite=True)
        if self.patience and state["wait"] >= self.patience:
            self.model.stop_training = True


def _seed_states(model: keras.Model) -> list[keras.Variable]:
    """The state variables of the model's random seed generators (dropout, noise), in model order.

    ``model.save`` does not store them, so a model reloaded from a checkpoint would draw
    other dropout masks than the model that kept training.
    """
    return [v for v in model.variables if v.path.split("/")[-1] == "seed_generator_state"]


def write_scalars(log_dir: Path, values: dict[str, float], *, step: int) -> None:
    """Append one epoch's scalars (all but ``epoch``) to TensorBoard event files in ``log_dir``."""
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        for name, value in values.items():
            if name != "epoch":
                tf.summary.scalar(name, float(value), step=step)
    writer.close()


def _fresh_state() -> dict:
    return {"epoch": 0, "best_val_loss": None, "best_epoch": 0, "wait": 0, "seconds": []}


def _resume(run_dir: Path) -> dict | None:
    """The saved state of an interrupted fold, with ``history.csv`` cut back to it."""
    state_path = run_dir / CHECKPOINT_DIR / "state.json"
    history = run_dir / "history.csv"
    if not state_path.exists():
        history.unlink(missing_ok=True)  # a run killed during its first epoch
        return None
    state = json.loads(state_path.read_text())
    if history.exists():
        rows = pd.read_csv(history)
        rows[rows["epoch"] <= state["epoch"]].to_csv(history, index=False)
    return state


@dataclasses.dataclass(frozen=True)
class _FoldInputs:
    """What a fold derives from its config and its training rows before any model exists.

    Attributes
    ----------
    crop_frames, chunk_hop_frames : int
        Model input length and evaluation hop along the last axis.
    steps_per_epoch : int
        ``ceil(n_train / data.batch_size)``.
    val_features : ClipStore
        The validation clips.
    mean, std : np.ndarray, shape (n_mels,) or (dim,), or float (waveform)
        Training statistics the model standardises its input with.
    """

    crop_frames: int
    chunk_hop_frames: int
    steps_per_epoch: int
    val_features: ClipStore
    mean: np.ndarray | float
    std: np.ndarray | float


def _fold_inputs(config: ExperimentConfig, *, store: ClipStore, train_positions: np.ndarray,
                 val_positions: np.ndarray) -> _FoldInputs:
    """Crop and hop lengths, steps per epoch, validation clips and training statistics of a fold."""
    band_mean, band_std = feature_stats(store, train_positions, layout=config.features.layout)
    mean: np.ndarray | float = band_mean
    std: np.ndarray | float = band_std
    if config.features.layout == "waveform":
        mean, std = float(band_mean[0]), float(band_std[0])
    return _FoldInputs(crop_frames=config.data.crop_frames(config.features),
                       chunk_hop_frames=config.data.chunk_hop_frames(config.features),
                       steps_per_epoch=int(np.ceil(len(train_positions) / config.data.batch_size)),
                       val_features=store.subset(val_positions), mean=mean, std=std)


def _build_or_resume_model(config: ExperimentConfig, *, task: Task, run_dir: Path, runtime: Runtime,
                           inputs: _FoldInputs, auxiliary: Task | None = None) -> tuple[keras.Model, dict]:
    """The fold's compiled model and training state, under ``runtime``'s strategy.

    A fold with a checkpoint resumes from it: ``checkpoint/last.keras`` (weights and
    optimizer state) and ``state.json``, whose dropout seed states are put back into the
    model (``model.save`` does not keep them). Otherwise a new model is built and
    compiled, and the state starts at epoch 0: with an ``auxiliary`` task, a multi-task model
    whose loss is the main head's plus ``task.auxiliary_weight`` times the auxiliary head's
    binary cross-entropy. Either way the model then follows
    ``runtime``'s replica count (:func:`_set_replica_behaviour`). Call inside
    :func:`fold_globals`: the initial weights come from its seeds.

    Returns
    -------
    model : keras.Model
    state : dict
        ``epoch``, ``best_val_loss``, ``best_epoch``, ``wait``, ``seconds`` (per epoch) and,
        after an epoch, ``seed_states`` and ``plateau`` (see :class:`FoldCheckpoint`).
    """
    import common.models as models  # also registers the custom layers of a saved checkpoint

    state = _resume(run_dir)
    with runtime.strategy.scope():
        if state is None:
            model = models.build_model(config.model.name,
                                       input_shape=(*config.features.clip_shape[:-1], inputs.crop_frames),
                                       n_outputs=task.n_classes, activation=task.activation,
                                       auxiliary_outputs=auxiliary.n_classes if auxiliary else 0,
                                       feature_mean=inputs.mean, feature_std=inputs.std, **config.model.params)
            losses: dict[str, Any] = {"loss": task.loss}
            if auxiliary is not None:
                losses = {"loss": [task.loss, auxiliary.loss], "loss_weights": [1.0, config.task.auxiliary_weight]}
            model.compile(optimizer=make_optimizer(config.training, steps_per_epoch=inputs.steps_per_epoch),
                          jit_compile=runtime.jit_compile, **losses)
            state = _fresh_state()
        else:
            model = keras.models.load_model(run_dir / CHECKPOINT_DIR / "last.keras")
            if "seed_states" in state:
                for variable, value in zip(_seed_states(model), state["seed_states"], strict=True):
                    variable.assign(np.asarray(value, dtype=variable.dtype))
    _set_replica_behaviour(model, replicas=runtime.replicas, steps_per_epoch=inputs.steps_per_epoch)
    return model, state


def _is_finished(training: TrainingConfig, state: dict) -> bool:
    """Whether the state has reached the last epoch, or early stopping."""
    return state["epoch"] >= training.epochs or bool(
        training.early_stopping_patience and state["wait"] >= training.early_stopping_patience)


def _fit(model: keras.Model, *, config: ExperimentConfig, task: Task, fold: int, store: ClipStore,
         train_positions: np.ndarray, y_train: np.ndarray, sample_weights: np.ndarray | None,
         y_auxiliary: np.ndarray | None, y_val: np.ndarray, inputs: _FoldInputs, state: dict, run_dir: Path,
         callbacks: tuple, verbose: int) -> None:
    """Train the remaining epochs, from ``state["epoch"]``; :class:`FoldCheckpoint` updates ``state`` and the run files.

    The batches of the remaining epochs (:func:`common.data.train_dataset`) are those an
    uninterrupted run sees there; ``callbacks`` run after the checkpointing one.
    """
    training, data = config.training, config.data
    dataset = train_dataset(store, train_positions, y_train, crop_frames=inputs.crop_frames,
                            batch_size=data.batch_size, seed=training.seed + 1000 * fold,
                            mixup_alpha=data.mixup_alpha, specaugment=data.specaugment, fill=inputs.mean,
                            balance=data.balance, sample_weights=sample_weights, auxiliary_targets=y_auxiliary,
                            first_epoch=state["epoch"],
                            n_epochs=training.epochs - state["epoch"])
    plateau = None
    if training.schedule == "reduce_on_plateau":
        plateau = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(1, training.early_stopping_patience // 3),
            min_lr=training.optimizer.learning_rate * 1e-3)
    checkpoint = FoldCheckpoint(run_dir=run_dir, task=task, val_features=inputs.val_features, y_val=y_val,
                                crop_frames=inputs.crop_frames, eval=data.eval,
                                chunk_hop_frames=inputs.chunk_hop_frames,
                                batch_size=inference_batch_size(data.batch_size),
                                patience=training.early_stopping_patience, state=state, plateau=plateau)
    model.fit(dataset, epochs=training.epochs, initial_epoch=state["epoch"], steps_per_epoch=inputs.steps_per_epoch,
              shuffle=False, callbacks=[checkpoint, *callbacks], verbose=verbose)


def _predict_best(run_dir: Path, *, config: ExperimentConfig, inputs: _FoldInputs) -> np.ndarray | None:
    """The out-of-fold probabilities ``(n_val, n_classes)`` of the fold's best model (``model.keras``);
    None when the fold kept none (its training loss stopped being finite in the first epoch)."""
    import common.models  # noqa: F401  (custom layers)

    if not (run_dir / "model.keras").is_file():
        return None
    best = keras.models.load_model(run_dir / "model.keras", compile=False)
    return predict_clips(best, inputs.val_features, crop_frames=inputs.crop_frames, eval=config.data.eval,
                         chunk_hop_frames=inputs.chunk_hop_frames,
                         batch_size=inference_batch_size(config.data.batch_size))


def score_predictions(task: Task, y: np.ndarray, probs: np.ndarray) -> dict:
    """:func:`common.metrics.score` of ``probs``; a log loss of ``inf`` (other scores NaN) when they
    hold NaN or infinite values, as a model whose weights blew up predicts."""
    if np.isfinite(probs).all():
        return metrics.score(task.name, task.score_targets(y), probs, task.class_names)
    uniform = np.full(probs.shape, 1.0 / probs.shape[1])
    keys = metrics.score(task.name, task.score_targets(y), uniform, task.class_names)
    return {key: value if key in ("n", "n_classes_scored") else (math.inf if key == "log_loss" else math.nan)
            for key, value in keys.items()}


def prior_log_loss(task: Task) -> float:
    """The validation log loss of a model that knows nothing (:func:`common.runs.has_diverged` compares with it).

    It predicts uniform probabilities: ``ln(n_classes)`` (``single``), or 0.5 for every
    class, a binary log loss of ``ln 2`` (``multi``; the training frequencies would score
    lower, but a one-epoch multi-label model does not always beat them yet).
    """
    return float(np.log(task.n_classes) if task.name == "single" else np.log(2.0))


def _finish_fold(run_dir: Path, *, config: ExperimentConfig, task: Task, fold: int, runtime: Runtime,
                 params: int, probs: np.ndarray | None, y_val: np.ndarray, val_ids, n_train: int,
                 state: dict, jit_compile: bool, prior: float) -> dict:
    """Write ``oof.csv`` and then ``summary.json`` (the fold is finished), remove the checkpoint; the summary.

    ``jit_compile`` is whether Keras compiled the training step with XLA: it can drop a
    ``true`` of the config with only a warning (a cuDNN GRU, op determinism). ``"status"``
    (:func:`common.runs.fold_outcome`) is ``"failed"`` when training stopped on a non-finite
    loss (``state["failure"]``, recorded as ``"failure"``: epoch and loss), else ``"diverged"``
    when the validation log loss is not finite or far above ``prior`` (:func:`prior_log_loss`),
    else ``"ok"``. ``"files"`` records the size and sha256 of ``model.keras`` and ``oof.csv``
    (checked by :func:`common.runs.verify_fold`). ``probs`` is None for a fold that kept no
    model (it failed in its first epoch): it gets no ``oof.csv``, ``"metrics"`` or ``"files"``.
    """
    scores = None
    if probs is not None:
        write_oof(run_dir / "oof.csv", ids=val_ids, fold=fold, task=task, y=y_val, probs=probs)
        scores = score_predictions(task, y_val, probs)
    failure = state.get("failure")
    summary = {
        "experiment": config.name, "fold": fold, "task": task.name, "model": config.model.name,
        "params": int(params), "epochs": state["epoch"], "best_epoch": state["best_epoch"],
        "seconds_per_epoch": float(np.mean(state["seconds"])) if state["seconds"] else None,
        "metrics": scores, "n_train": int(n_train), "n_val": len(val_ids),
        "device": runtime.device, "precision": runtime.precision, "jit_compile": jit_compile,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "prior_log_loss": prior,
        "status": fold_outcome(scores["log_loss"] if scores else math.inf, prior=prior, failed=failure is not None),
        "failure": failure,
        "files": {name: file_record(run_dir / name) for name in FOLD_CHECKED_FILES} if scores else {},
    }
    write_text_atomic(run_dir / FOLD_SUMMARY, json.dumps(summary, indent=2) + "\n", overwrite=True)
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    return summary


def train_fold(config: ExperimentConfig, *, task: Task, fold: int, store: ClipStore,
               train_positions: np.ndarray, y_train: np.ndarray, val_positions: np.ndarray,
               y_val: np.ndarray, run_dir: str | Path, sample_weights: np.ndarray | None = None,
               auxiliary: Task | None = None, y_auxiliary: np.ndarray | None = None,
               callbacks: tuple = (), verbose: int = 0, on_wait: Callable[[str], None] | None = None) -> dict:
    """Train (or resume, or skip) one fold and write its run files, holding the fold folder's lock.

    One writer per fold: the whole of it runs under :func:`common.locks.folder_lock` of
    ``run_dir``, so that a second run of the same fold waits for the first, then finds
    the fold finished and skips it. Other folds of the experiment may train meanwhile.

    Parameters
    ----------
    config : ExperimentConfig
    task : Task
    fold : int
    store : ClipStore
        Features of the experiment's clips.
    train_positions, val_positions : np.ndarray, shape (n_train,), (n_val,)
        Rows of ``store``.
    y_train, y_val : np.ndarray, shape (n_train, n_classes), (n_val, n_classes)
    run_dir : path-like
        ``runs/<exp>/fold_<k>``.
    sample_weights : np.ndarray, shape (n_train,), optional
        Loss weight of each training row (:func:`common.data.train_dataset`); None: unweighted.
    auxiliary : Task, optional
        The classes of a multi-task model's second, sigmoid head (``task.auxiliary``), saved as
        ``auxiliary_classes.json``; only the main head is validated and written to ``oof.csv``.
    y_auxiliary : np.ndarray, shape (n_train, auxiliary.n_classes), optional
        Its targets of the training rows (given with ``auxiliary``).
    callbacks : tuple of keras.callbacks.Callback
        Extra callbacks, run after the checkpointing one.
    verbose : int
        Keras ``fit`` verbosity.
    on_wait : callable, optional
        Given one line naming the holder of the fold's lock when another run holds it, before
        waiting for it (a command prints it).

    Returns
    -------
    dict
        The fold summary (also in ``run_dir/summary.json``); its ``"status"`` says whether
        the fold trained well (``"ok"``), diverged or failed (:func:`_finish_fold`).

    Raises
    ------
    ConfigError
        ``data.batch_size`` is not a multiple of the replicas (:func:`check_global_batch`), or
        ``run_dir`` holds a run of another config (:func:`prepare_run_dir`).
    """
    run_dir = Path(run_dir)
    if (run_dir / FOLD_SUMMARY).exists():  # finished: never trained again, whatever this machine
        return read_fold_summary(run_dir)
    runtime = select_runtime(config.training)
    check_global_batch(config.data.batch_size, replicas=runtime.replicas)  # before anything is written
    with folder_lock(run_dir, on_wait=on_wait):
        if (run_dir / FOLD_SUMMARY).exists():  # finished by the run this one waited for
            return read_fold_summary(run_dir)
        prepare_run_dir(run_dir, config=config, task=task, auxiliary=auxiliary)
        inputs = _fold_inputs(config, store=store, train_positions=train_positions, val_positions=val_positions)
        with fold_globals(runtime, seed=config.training.seed + fold):
            model, state = _build_or_resume_model(config, task=task, auxiliary=auxiliary, run_dir=run_dir,
                                                  runtime=runtime, inputs=inputs)
            if not _is_finished(config.training, state):
                _fit(model, config=config, task=task, fold=fold, store=store, train_positions=train_positions,
                     y_train=y_train, sample_weights=sample_weights, y_auxiliary=y_auxiliary, y_val=y_val,
                     inputs=inputs, state=state,
                     run_dir=run_dir, callbacks=callbacks, verbose=verbose)
            probs = _predict_best(run_dir, config=config, inputs=inputs)
        return _finish_fold(run_dir, config=config, task=task, fold=fold, runtime=runtime,
                            params=model.count_params(), probs=probs,
                            y_val=y_val, val_ids=inputs.val_features.ids, n_train=len(train_positions), state=state,
                            jit_compile=bool(model.jit_compile),
                            prior=prior_log_loss(task))


def write_oof(path: Path, *, ids, fold: int | np.ndarray, task: Task, y: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """Write predictions as ``id, fold, target, <class>...`` and return the table."""
    table = pd.DataFrame({"id": list(ids), "fold": fold, "target": task.target_strings(y)})
    table = pd.concat([table, pd.DataFrame(probs, columns=list(task.class_names))], axis=1)
    write_text_atomic(path, table.to_csv(index=False), overwrite=True)
    return table
