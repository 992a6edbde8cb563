"""The CRNN's GRUs and cuDNN: which GRUs are eligible, the config's ``gru_reset_after: auto``, and XLA."""

from __future__ import annotations

import importlib
import warnings

import keras
import numpy as np
import pytest
import yaml
from tensorflow.python.framework import config as tf_config

from common.config import config_from_dict, load_config
from common.errors import ConfigError
from common.models import build_model, cudnn_gru_report
from common.tasks import Task
from common.training import prepare_run_dir

#: Keras' TensorFlow RNN module (the package ``keras.src.backend.tensorflow`` exports a function of that name).
keras_tf_rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")

#: A CRNN small enough to build and call in a blink; same layer types as the reference.
TINY_CRNN = {"input_shape": (16, 32), "n_outputs": 3, "activation": "softmax",
             "filters": (4,), "pool_sizes": ((4, 4),), "time_padding": 2, "gru_units": (4, 4)}


@pytest.fixture
def keras_sees_a_gpu(monkeypatch):
    """Keras' TensorFlow backend believes a GPU is visible; its cuDNN GRU kernel is replaced by a recorder.

    Returns the list of calls of the kernel: Keras calls it for a GRU exactly when it would
    run that GRU with cuDNN. The recorder raises ``NotImplementedError``, Keras' own signal to
    fall back to the generic GRU, so layers still compute on a CPU.
    """
    calls: list[tuple] = []

    def cudnn_gru(inputs, *args, **kwargs):
        calls.append(tuple(inputs.shape))
        raise NotImplementedError

    monkeypatch.setattr(keras_tf_rnn, "_is_gpu_available", lambda: True)
    monkeypatch.setattr(keras_tf_rnn, "_cudnn_gru", cudnn_gru)
    return calls


@pytest.mark.parametrize(("reset_after", "eligible"), [(False, False), (True, True)])
def test_which_grus_of_the_reference_crnn_are_cudnn_eligible(reset_after, eligible):
    model = build_model("crnn", input_shape=(96, 1366), n_outputs=16, activation="softmax",
                        gru_reset_after=reset_after)
    assert cudnn_gru_report(model) == {"gru1": eligible, "gru2": eligible}


def test_models_without_grus_report_nothing():
    assert cudnn_gru_report(build_model("mlp", input_shape=(12,), n_outputs=3, activation="softmax")) == {}


#: GRU arguments and whether Keras runs that GRU with cuDNN on a GPU.
GRU_CASES = [
    ({}, True),
    ({"reset_after": False}, False),
    ({"activation": "relu"}, False),
    ({"recurrent_activation": "hard_sigmoid"}, False),
    ({"use_bias": False}, False),
    ({"unroll": True}, False),
    ({"recurrent_dropout": 0.1}, False),
    ({"use_cudnn": False}, False),
]


@pytest.mark.parametrize(("arguments", "eligible"), GRU_CASES,
                         ids=[",".join(f"{k}={v}" for k, v in a.items()) or "defaults" for a, _ in GRU_CASES])
def test_the_report_is_what_keras_runs_with_cudnn(arguments, eligible, keras_sees_a_gpu):
    inputs = keras.Input((5, 3))
    model = keras.Model(inputs, keras.layers.GRU(4, name="gru", **arguments)(inputs))
    model(np.zeros((2, 5, 3), np.float32), training=False)
    assert bool(keras_sees_a_gpu) is eligible
    assert cudnn_gru_report(model) == {"gru": eligible}


def test_the_crnn_asks_for_cudnn_only_with_reset_after(keras_sees_a_gpu):
    x = np.zeros((2, 16, 32), np.float32)
    build_model("crnn", gru_reset_after=False, **TINY_CRNN)(x, training=False)
    assert keras_sees_a_gpu == []
    build_model("crnn", gru_reset_after=True, **TINY_CRNN)(x, training=False)
    assert len(keras_sees_a_gpu) == 2  # both GRUs


def test_keras_compiles_no_cudnn_gru_with_xla(keras_sees_a_gpu, restore_op_determinism):
    # The reason for the ConfigError below: on a GPU, Keras drops jit_compile=True for a model
    # with a cuDNN GRU (with a warning) and trains it without XLA; the reference GRU compiles.
    tf_config.disable_op_determinism()  # Keras turns XLA off under op determinism too
    outcome = {}
    for reset_after in (False, True):
        model = build_model("crnn", gru_reset_after=reset_after, **TINY_CRNN)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile=True)
        outcome[reset_after] = (model.jit_compile, any("jit_compile" in str(w.message) for w in caught))
    assert outcome == {False: (True, False), True: (False, True)}


def _crnn_config(params: dict | None = None, **training) -> dict:
    model = {"name": "crnn"} if params is None else {"name": "crnn", "params": params}
    return {"model": model, "training": training}


@pytest.mark.parametrize(("n_gpus", "params", "training", "expected"), [
    (0, None, {}, False),                                       # CPU: the reference GRU
    (1, None, {}, True),                                        # GPU: cuDNN
    (2, {"gru_reset_after": "auto"}, {"jit_compile": False}, True),
    (1, {"gru_reset_after": "auto"}, {"jit_compile": True}, False),  # XLA asked for: the reference GRU
    (0, {"gru_reset_after": True}, {}, True),                   # explicit values are kept
    (1, {"gru_reset_after": False}, {"jit_compile": "auto"}, False),
])
def test_gru_reset_after_auto_resolves_for_the_machine(gpus, n_gpus, params, training, expected):
    gpus(n_gpus)
    cfg = config_from_dict(_crnn_config(params, **training), name="crnn")
    assert cfg.model.params["gru_reset_after"] is expected
    assert yaml.safe_load(cfg.to_yaml())["model"]["params"]["gru_reset_after"] is expected


def test_the_run_saves_the_resolved_value_and_reloads_it_on_another_machine(gpus, tmp_path):
    gpus(1)
    cfg = config_from_dict(_crnn_config(), name="crnn")
    task = Task(name="single", class_names=("a", "b"), genre_ids=(1, 2))
    prepare_run_dir(tmp_path, config=cfg, task=task)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model"]["params"] == {"gru_reset_after": True}
    gpus(0)
    assert config_from_dict(saved, name="crnn") == cfg  # the CPU rebuilds the GPU run's model
    prepare_run_dir(tmp_path, config=config_from_dict(saved, name="crnn"), task=task)  # same config: resumable


def test_other_models_keep_their_params(gpus):
    gpus(1)
    cfg = config_from_dict({"model": {"name": "shortchunk", "params": {"channels": [8]}}}, name="s")
    assert cfg.model.params == {"channels": [8]}


def test_unchecked_configs_keep_auto():
    cfg = config_from_dict(_crnn_config({"gru_reset_after": "auto"}), name="crnn", check_model=False)
    assert cfg.model.params == {"gru_reset_after": "auto"}


def test_cudnn_gru_under_xla_is_a_config_error_naming_both_keys(tmp_path):
    path = tmp_path / "crnn_xla.yaml"
    path.write_text(yaml.safe_dump(_crnn_config({"gru_reset_after": True}, jit_compile=True)))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: model.params.gru_reset_after: true")
    assert "training.jit_compile: true" in message and "XLA cannot compile" in message


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_bad_gru_reset_after_is_named(value):
    with pytest.raises(ConfigError, match=r"model\.params\.gru_reset_after: expected true, false or auto"):
        config_from_dict(_crnn_config({"gru_reset_after": value}), name="crnn")


def test_the_body_takes_only_a_resolved_value():
    with pytest.raises(ConfigError, match=r"model\.params\.gru_reset_after: expected true or false.*resolve_params"):
        build_model("crnn", gru_reset_after="auto", **TINY_CRNN)
