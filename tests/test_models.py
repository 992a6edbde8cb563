"""Model registry and the three models: build, train a few steps, save/load, mixed precision."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from common.errors import ConfigError
from common.models import MODEL_NAMES, build_model, count_params, model_summary_dict

N_MELS, N_FRAMES, N_SAMPLES = 16, 64, 3**5

# Tiny versions of each model; the architecture is the paper's, only widths/depths shrink.
TINY = {
    "crnn": {
        "input_shape": (N_MELS, N_FRAMES),
        "params": {"filters": (4, 8, 8, 8), "pool_sizes": (2, 2, 2, 2), "time_padding": 2, "gru_units": (4, 4)},
    },
    "shortchunk": {
        "input_shape": (N_MELS, N_FRAMES),
        "params": {"channels": (4, 4, 8, 8, 8, 8, 16)},
    },
    "samplecnn": {
        "input_shape": (N_SAMPLES,),
        "params": {"stem_filters": 4, "block_filters": (4, 8, 8, 16), "final_filters": 16},
    },
}


def _tiny(name: str, *, activation: str, n_outputs: int = 3, **stats) -> keras.Model:
    spec = TINY[name]
    return build_model(
        name,
        input_shape=spec["input_shape"],
        n_outputs=n_outputs,
        activation=activation,
        **stats,
        **spec["params"],
    )


def _raw_batch(shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """Raw-scale features: log-mel dB values around -40, or a waveform in [-1, 1]."""
    rng = np.random.default_rng(seed)
    if len(shape) == 2:
        return (rng.normal(-40.0, 15.0, size=(n, *shape))).astype(np.float32)
    return rng.uniform(-1.0, 1.0, size=(n, *shape)).astype(np.float32)


def _stats(shape: tuple[int, ...]) -> dict[str, np.ndarray | float]:
    if len(shape) == 2:
        return {"feature_mean": np.full(shape[0], -40.0), "feature_std": np.full(shape[0], 15.0)}
    return {"feature_mean": 0.0, "feature_std": 0.5}


def test_registry_lists_every_model():
    assert {"crnn", "shortchunk", "samplecnn"} <= set(MODEL_NAMES)


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_model_builds_and_trains(name, activation):
    keras.utils.set_random_seed(0)
    shape = TINY[name]["input_shape"]
    model = _tiny(name, activation=activation, **_stats(shape))
    assert model.input_shape == (None, *shape)
    assert model.output_shape == (None, 3)

    x = _raw_batch(shape, 12, seed=1)
    rng = np.random.default_rng(2)
    if activation == "softmax":
        y = keras.utils.to_categorical(rng.integers(0, 3, size=12), 3)
        loss = "categorical_crossentropy"
    else:
        y = rng.integers(0, 2, size=(12, 3)).astype(np.float32)
        loss = "binary_crossentropy"
    # Eager: three steps of a tiny model run faster than tracing a graph.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, run_eagerly=True)
    before = [np.array(w) for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [np.array(w) for w in model.trainable_weights]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))

    probs = np.asarray(model(x, training=False))
    assert probs.shape == (12, 3) and probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))
    if activation == "softmax":
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_crnn_reference_parameter_count():
    # Choi et al.'s Keras reference reports 396,786 (trainable) parameters for
    # 50 sigmoid outputs on 96 x 1366; batch-norm moving statistics add 3,776.
    model = build_model("crnn", input_shape=(96, 1366), n_outputs=50, activation="sigmoid")
    summary = model_summary_dict(model)
    assert summary["trainable_params"] == 396_786
    assert count_params(model) == summary["params"] == 400_562
    assert summary["non_trainable_params"] == 3_776
    assert model.get_layer("time_padding").output.shape[2] == 1440
    assert model.get_layer("to_sequence").output.shape[1:] == (15, 128)


@pytest.mark.parametrize(
    ("name", "input_shape", "trainable"),
    [("shortchunk", (128, 231), 12_104_244), ("samplecnn", (59049,), 1_869_874)],
)
def test_reference_trainable_counts(name, input_shape, trainable):
    # The PyTorch references (minzwon/sota-music-tagging-models), 50 outputs.
    model = build_model(name, input_shape=input_shape, n_outputs=50, activation="sigmoid")
    assert model_summary_dict(model)["trainable_params"] == trainable
    assert model.get_layer("global_max").input.shape[1] == 1  # paper sizes end at one frame


def test_crnn_reset_after_adds_second_gru_bias():
    model = build_model(
        "crnn", input_shape=(96, 1366), n_outputs=50, activation="sigmoid", gru_reset_after=True
    )
    assert count_params(model) == 400_562 + 2 * 3 * 32


def test_standardisation_is_applied_inside_the_model():
    keras.utils.set_random_seed(0)
    shape = TINY["shortchunk"]["input_shape"]
    mean, std = np.linspace(-60, -20, N_MELS), np.linspace(5, 20, N_MELS)
    model = _tiny("shortchunk", activation="softmax", feature_mean=mean, feature_std=std)
    x = _raw_batch(shape, 2, seed=3)
    standardised = keras.Model(model.input, model.get_layer("standardize").output)(x)
    expected = (x - mean[None, :, None]) / std[None, :, None]
    np.testing.assert_allclose(np.asarray(standardised), expected, rtol=1e-5, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    shape = TINY["crnn"]["input_shape"]
    model = _tiny("crnn", activation="softmax", **_stats(shape))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = _raw_batch(shape, 4, seed=4)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(loaded(x)))
    assert count_params(loaded) == count_params(model)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_outputs_float32(policy):
    keras.utils.set_random_seed(0)
    shape = TINY["samplecnn"]["input_shape"]
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        model = _tiny("samplecnn", activation="sigmoid", **_stats(shape))
        assert model.get_layer("block1_conv").compute_dtype != "float32"
        assert model.output.dtype == "float32"
        assert np.asarray(model(_raw_batch(shape, 2, seed=5))).dtype == np.float32
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_unknown_model_lists_known_names():
    with pytest.raises(ConfigError, match="unknown model 'resnet'.*crnn.*samplecnn.*shortchunk"):
        build_model("resnet", input_shape=(16, 64), n_outputs=3, activation="softmax")


def test_unknown_param_is_named():
    with pytest.raises(ConfigError, match="'gru_size'.*crnn"):
        build_model("crnn", input_shape=(16, 64), n_outputs=3, activation="softmax", gru_size=8)


@pytest.mark.parametrize(
    ("name", "input_shape", "kwargs", "match"),
    [
        ("samplecnn", (16, 64), {}, "input_shape"),
        ("crnn", (243,), {}, "input_shape"),
        ("crnn", (16, 64), {"activation": "relu"}, "activation"),
        ("crnn", (16, 64), {}, "pool_sizes"),  # paper pools shrink 16 mels to nothing
        ("samplecnn", (243,), {}, "block_filters"),  # 9 blocks need 3^10 samples
        ("shortchunk", (16, 64), {"feature_mean": np.zeros(8), "feature_std": np.ones(8)}, "feature_mean"),
        ("shortchunk", (16, 64), {"feature_mean": np.zeros(16), "feature_std": np.zeros(16)}, "feature_std"),
        ("shortchunk", (16, 64), {"feature_mean": np.zeros(16)}, "together"),
    ],
)
def test_bad_configuration_is_a_config_error(name, input_shape, kwargs, match):
    kwargs = {"activation": "softmax", **kwargs}
    with pytest.raises(ConfigError, match=match):
        build_model(name, input_shape=input_shape, n_outputs=3, **kwargs)


def test_forward_function_matches_predict_for_every_batch_size():
    from common.inference import forward_function

    model = build_model("mlp", input_shape=(12,), n_outputs=4, activation="softmax")
    x = np.random.default_rng(0).normal(size=(7, 12)).astype("float32")
    forward = forward_function(model)
    assert forward_function(model) is forward  # cached per model
    for size in (1, 3, 7):
        np.testing.assert_allclose(forward(x[:size]), model.predict(x[:size], verbose=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("preset, expected", [(None, "1"), ("0", "0")])
def test_import_common_turns_onednn_on_unless_the_user_chose(preset, expected):
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    if preset is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = preset
    code = "import os, common; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == expected
