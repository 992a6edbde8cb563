"""Layer arithmetic of common.flops, checked by hand on one layer of each kind."""

from __future__ import annotations

import keras
import pytest

from common import flops


def _single_layer_model(layer: keras.layers.Layer, input_shape: tuple[int, ...]) -> keras.Model:
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, layer(inputs))


def test_conv2d_counts_two_flops_per_multiply_add_of_every_output_position():
    # The CRNN's first convolution: 3 x 3, 1 -> 64 channels, 'same' over 96 x 1440.
    model = _single_layer_model(keras.layers.Conv2D(64, 3, padding="same", name="conv"), (96, 1440, 1))
    assert flops.flops_by_layer(model) == {"conv": 2 * 3 * 3 * 1 * 64 * 96 * 1440}


def test_strided_grouped_conv1d_counts_its_output_positions_and_groups():
    # 'valid' kernel 3, stride 3 over 59049 samples -> 19683 positions; 8 -> 16 channels in 2 groups.
    model = _single_layer_model(keras.layers.Conv1D(16, 3, strides=3, groups=2, name="conv"), (59049, 8))
    assert flops.forward_flops(model) == 2 * 3 * (8 // 2) * 16 * 19683


def test_gru_counts_three_gates_over_input_and_state_at_every_step():
    # The CRNN's first GRU: 15 steps of 128 features, 32 units; both formulations do the same products.
    for reset_after in (False, True):
        model = _single_layer_model(keras.layers.GRU(32, return_sequences=True, reset_after=reset_after, name="gru"),
                                    (15, 128))
        assert flops.flops_by_layer(model) == {"gru": 15 * 3 * 2 * (128 + 32) * 32}


def test_dense_over_a_sequence_counts_every_position_and_training_is_three_passes():
    model = _single_layer_model(keras.layers.Dense(16, name="dense"), (10, 200))
    assert flops.forward_flops(model) == 10 * 2 * 200 * 16
    assert flops.training_flops(model) == 3 * flops.forward_flops(model)


@pytest.mark.parametrize(("name", "input_shape"), [("crnn", (96, 1366)), ("samplecnn", (59049,)),
                                                   ("musicnn", (96, 187))])
def test_registry_models_are_counted_whole_and_the_uncounted_layers_are_about_one_percent(name, input_shape):
    from common.models import build_model

    model = build_model(name, input_shape=input_shape, n_outputs=16, activation="softmax")
    counted = {layer.name for layer in model._flatten_layers(include_self=False) if flops.layer_flops(layer)}
    heavy = {layer.name for layer in model._flatten_layers(include_self=False)
             if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Dense, keras.layers.GRU))}
    assert counted == heavy and heavy
    assert flops.elementwise_share(model) < 0.015  # the module docstring's bound
