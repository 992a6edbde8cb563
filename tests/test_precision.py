"""Mixed precision and XLA on every registry model, on CPU: train, save, reload, predict.

Each case compiles as :func:`common.training.train_fold` does (its runtime from
``select_runtime``, the policy and seeds of ``fold_globals``, ``make_optimizer``, the task
loss, ``jit_compile`` and ``steps_per_execution``), trains one epoch of eight steps on tiny
shapes that still build every layer type of the model, saves with ``model.save`` and
reloads with ``keras.models.load_model``.

Every model trains under every setting here (also XLA with either mixed policy, tried once
and left out for time), so config validation accepts them all. The one combination a model
cannot do shows only on a GPU: a cuDNN GRU under XLA (``tests/test_cudnn_gru.py``).
"""

from __future__ import annotations

import typing
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml
from tensorflow.python.framework import config as tf_config

from common.config import JitCompile, Precision, TrainingConfig, config_from_dict
from common.models import MODEL_NAMES, build_model, model_spec
from common.tasks import Task
from common.training import fold_globals, make_optimizer, select_runtime, steps_per_execution

#: Tiny versions of every registry model (``musicnn`` without its published weights: the
#: fine-tuning model's layers, randomly initialised) and their input shapes.
TINY = {
    "crnn": ((16, 32), {"filters": (4,), "pool_sizes": ((4, 4),), "time_padding": 2, "gru_units": (4, 4)}),
    "shortchunk": ((16, 32), {"channels": (4,), "dense_units": 8}),
    "samplecnn": ((27,), {"stem_filters": 4, "block_filters": (4,), "final_filters": 8}),
    "musicnn": ((12, 16), {"frontend_scale": 0.1, "midend_filters": 4, "backend_units": 8}),
    "mlp": ((12,), {"units": (8,)}),
}

#: A shipped experiment of each registry model.
CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
SHIPPED = {"crnn": "crnn", "shortchunk": "shortchunk", "samplecnn": "samplecnn", "musicnn": "musicnn_finetune",
           "mlp": "musicnn_head"}

#: Settings of the ``training`` section.
SETTINGS = {
    "mixed_float16": {"precision": "mixed_float16", "jit_compile": False},
    "mixed_bfloat16": {"precision": "mixed_bfloat16", "jit_compile": False},
    "xla": {"precision": "float32", "jit_compile": True},
}

TASK = Task(name="single", class_names=("a", "b", "c"), genre_ids=(1, 2, 3))
#: Eight steps: float16's dynamic loss scale starts at 2**15 and halves at every step whose
#: gradients overflow, which Keras then skips (up to four of the first steps of these models).
N_EXAMPLES, BATCH_SIZE = 32, 4


def test_every_registry_model_is_covered():
    assert set(TINY) == set(SHIPPED) == set(MODEL_NAMES)


def _data(name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Raw-scale features of model ``name`` (log-mel dB, waveform or embedding), one-hot targets, statistics."""
    shape = TINY[name][0]
    rng = np.random.default_rng(0)
    y = np.eye(TASK.n_classes, dtype=np.float32)[np.arange(N_EXAMPLES) % TASK.n_classes]
    if model_spec(name).input_kind == "waveform":
        return rng.uniform(-1, 1, (N_EXAMPLES, *shape)).astype(np.float32), y, {"feature_mean": 0.0, "feature_std": 0.5}
    x = rng.normal(-40.0, 15.0, (N_EXAMPLES, *shape)).astype(np.float32)
    return x, y, {"feature_mean": np.full(shape[0], -40.0), "feature_std": np.full(shape[0], 15.0)}


@pytest.mark.slow
@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("name", sorted(TINY))
def test_model_trains_saves_and_reloads(name, setting, tmp_path, restore_op_determinism):
    training = TrainingConfig(epochs=1, **SETTINGS[setting])
    runtime = select_runtime(training)
    assert runtime.device == "cpu" and runtime.precision == training.precision
    shape, params = TINY[name]
    x, y, stats = _data(name)
    steps = N_EXAMPLES // BATCH_SIZE
    with fold_globals(runtime, seed=0):
        if runtime.jit_compile is True:
            # fold_globals turns op determinism on for a CPU fold, and Keras then drops XLA
            # (``model_supports_jit``); a GPU fold keeps it off. Off here, so that XLA compiles.
            tf_config.disable_op_determinism()
        model = build_model(name, input_shape=shape, n_outputs=TASK.n_classes, activation=TASK.activation,
                            **stats, **params)
        model.compile(optimizer=make_optimizer(training, steps_per_epoch=steps), loss=TASK.loss,
                      jit_compile=runtime.jit_compile, steps_per_execution=steps_per_execution(steps))
        before = [w.numpy().copy() for w in model.trainable_weights]
        history = model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, shuffle=False, verbose=0)
        probs = keras.ops.convert_to_numpy(model(x, training=False))
        path = tmp_path / "model.keras"
        model.save(path)
        loaded = keras.models.load_model(path)
        reloaded = keras.ops.convert_to_numpy(loaded(x, training=False))

    compute = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16", "float32": "float32"}[runtime.precision]
    assert model.jit_compile is training.jit_compile and loaded.jit_compile is training.jit_compile
    assert np.isfinite(history.history["loss"][0])
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    for m in (model, loaded):
        assert any(layer.compute_dtype == compute for layer in m.layers if layer.weights)
        assert all(w.dtype == "float32" for w in m.trainable_weights)  # float32 master weights
        assert m.output.dtype == "float32"
        # Loss scaling for float16 only: bfloat16 has float32's exponent range.
        assert isinstance(m.optimizer, keras.optimizers.LossScaleOptimizer) == (compute == "float16")
    assert probs.dtype == np.float32 and probs.shape == (N_EXAMPLES, TASK.n_classes)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(reloaded, probs)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_config_validation_accepts_every_precision_and_jit_compile(name):
    values = yaml.safe_load((CONFIGS / f"{SHIPPED[name]}.yaml").read_text())
    assert values["model"]["name"] == name
    for precision in typing.get_args(Precision):
        for jit_compile in typing.get_args(JitCompile):
            values["training"] = {**values.get("training", {}), "precision": precision, "jit_compile": jit_compile}
            cfg = config_from_dict(values, name=SHIPPED[name])
            assert (cfg.training.precision, cfg.training.jit_compile) == (precision, jit_compile)
