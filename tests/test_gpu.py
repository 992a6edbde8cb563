"""GPU runtime: select_runtime's decisions (devices mocked), mixed-precision loss, and a real GPU run when present."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from common.config import TrainingConfig
from common.training import select_runtime

HAS_GPU = bool(tf.config.list_physical_devices("GPU"))


@pytest.mark.parametrize(("n_gpus", "training", "expected"), [
    (0, {}, ("float32", False, False, "cpu")),
    (1, {}, ("mixed_float16", False, "auto", "1 x GPU")),
    (2, {}, ("mixed_float16", True, "auto", "2 x GPU")),
    (2, {"precision": "float32", "strategy": "default", "jit_compile": False}, ("float32", False, False, "2 x GPU")),
    (1, {"precision": "mixed_bfloat16", "jit_compile": True}, ("mixed_bfloat16", False, True, "1 x GPU")),
    (0, {"precision": "mixed_float16", "jit_compile": True}, ("mixed_float16", False, True, "cpu")),
])
def test_select_runtime_decides_from_the_devices_and_the_config(gpus, n_gpus, training, expected):
    gpus(n_gpus)
    runtime = select_runtime(TrainingConfig(**training))
    precision, mirrored, jit, device = expected
    assert runtime.precision == precision and runtime.jit_compile == jit and runtime.device == device
    assert isinstance(runtime.strategy, tf.distribute.MirroredStrategy) == mirrored


def test_mixed_float16_keeps_outputs_and_loss_in_float32_with_loss_scaling():
    from common.models import build_model

    keras.utils.set_random_seed(0)
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = build_model("shortchunk", input_shape=(16, 64), n_outputs=4, activation="softmax",
                            feature_mean=np.zeros(16, np.float32), feature_std=np.ones(16, np.float32),
                            channels=[8], dense_units=8, dropout=0.0)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
        x = np.random.default_rng(0).normal(size=(8, 16, 64)).astype(np.float32)
        y = np.eye(4, dtype=np.float32)[np.arange(8) % 4]
        before = [w.numpy().copy() for w in model.trainable_weights]
        model.train_on_batch(x, y)
        loss = model.compute_loss(x=x, y=y, y_pred=model(x))
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    assert any(layer.compute_dtype == "float16" for layer in model.layers)
    assert model.output.dtype == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert loss.dtype == "float32" and np.isfinite(keras.ops.convert_to_numpy(loss))
    assert all(w.dtype == "float32" for w in model.trainable_weights)  # float32 master weights
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no GPU visible to TensorFlow (tf.config.list_physical_devices('GPU') "
                                        "is empty): the demo experiment's GPU training is checked on GPU machines")
def test_demo_experiment_trains_on_the_gpu_in_mixed_precision(demo_data_dir, tmp_path):
    from pathlib import Path

    from common.config import load_config
    from common.features import cache_dir_for, extract
    from common.folds import make_folds, write_folds
    from common.metadata import FmaDataset
    from experiments import runner

    demo = yaml.safe_load((Path(__file__).parents[1] / "experiments" / "configs" / "demo.yaml").read_text())
    demo["training"]["epochs"] = 2
    config_path = tmp_path / "demo_gpu.yaml"
    config_path.write_text(yaml.safe_dump(demo))
    settings = load_config(config_path).features
    dataset = FmaDataset.open(demo_data_dir, "small")
    extract(dataset.items(), settings=settings, cache_dir=cache_dir_for(tmp_path / "cache", "fma_small", settings),
            progress=False)
    folds = tmp_path / "folds.csv"
    write_folds(folds, make_folds(dataset.tracks, k=2, seed=0), subset="small", k=2, seed=0)
    argv = ["--config", str(config_path), "--data", str(demo_data_dir), "--subset", "small", "--folds", str(folds),
            "--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs")]
    assert runner.main(argv) == 0
    n_gpus = len(tf.config.list_physical_devices("GPU"))
    for k in (0, 1):
        fold_dir = tmp_path / "runs" / "demo_gpu" / f"fold_{k}"
        summary = json.loads((fold_dir / "summary.json").read_text())
        assert summary["device"] == f"{n_gpus} x GPU" and summary["precision"] == "mixed_float16"
        assert np.isfinite(summary["metrics"]["log_loss"]) and summary["epochs"] == 2
        import common.models  # noqa: F401  (custom layers)

        model = keras.models.load_model(fold_dir / "model.keras", compile=False)
        assert model.output.dtype == "float32"
        assert any(layer.compute_dtype == "float16" for layer in model.layers)
    assert (tmp_path / "runs" / "demo_gpu" / "summary.json").is_file()
