"""Arithmetic of a model: floating-point operations per example, by layer arithmetic.

Counts the multiply-adds of the layers that hold a model's arithmetic — convolutions
(``Conv1D``, ``Conv2D``), ``Dense`` and ``GRU`` — as 2 operations each, from the shapes
the built model records. Element-wise layers (batch norm, activations, pooling, dropout,
additions) are left out: a few operations per output element, at most about 1.2 % of
the count of a registry model at its default input (:func:`elementwise_share` bounds it;
tested), and on a GPU their cost is memory traffic, not arithmetic. ``make gpu-check`` measures what a step really
takes; these counts give the floor a GPU's peak rate allows.

A training step costs about three forward passes (the backward pass computes the
gradients of both the inputs and the weights: :data:`TRAINING_FLOPS_PER_FORWARD`).
"""

from __future__ import annotations

import math

import keras

#: Forward-pass equivalents of one training step (forward + backward of inputs and weights).
TRAINING_FLOPS_PER_FORWARD = 3


def _elements(shape) -> int:
    """Elements of one example of a layer tensor ``(batch, ...)``."""
    return math.prod(int(d) for d in shape[1:])


def layer_flops(layer: keras.layers.Layer) -> int:
    """Forward FLOPs of one example through ``layer`` (0 for layers without multiply-adds).

    Conv: ``2 * prod(kernel_size) * in_channels / groups * out_channels * output positions``;
    Dense: ``2 * in_features * units * positions``; GRU: per time step three gates of
    ``2 * (in_features + units) * units``.
    """
    if isinstance(layer, keras.layers.GRU):
        steps, features = int(layer.input.shape[1]), int(layer.input.shape[2])
        return steps * 3 * 2 * (features + layer.units) * layer.units
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D)):
        in_channels = int(layer.input.shape[-1])
        out = layer.output.shape
        positions = _elements(out) // int(out[-1])
        return 2 * math.prod(layer.kernel_size) * in_channels // layer.groups * layer.filters * positions
    if isinstance(layer, keras.layers.Dense):
        in_shape = layer.input.shape
        positions = _elements(in_shape) // int(in_shape[-1])
        return 2 * int(in_shape[-1]) * layer.units * positions
    return 0


def flops_by_layer(model: keras.Model) -> dict[str, int]:
    """Forward FLOPs per example of each counted layer of a built functional model, in model order."""
    return {layer.name: flops for layer in model._flatten_layers(include_self=False)
            if (flops := layer_flops(layer))}


def forward_flops(model: keras.Model) -> int:
    """Forward FLOPs of one example (one input crop) through ``model``."""
    return sum(flops_by_layer(model).values())


def training_flops(model: keras.Model) -> int:
    """FLOPs of one example in one training step: :data:`TRAINING_FLOPS_PER_FORWARD` forward passes."""
    return TRAINING_FLOPS_PER_FORWARD * forward_flops(model)


def elementwise_share(model: keras.Model) -> float:
    """Upper bound of what the uncounted layers add: their output elements (one operation each,
    times 4 for batch norm's scale and shift) over the counted FLOPs."""
    counted = forward_flops(model)
    other = 0
    for layer in model._flatten_layers(include_self=False):
        if layer_flops(layer) or isinstance(layer, (keras.layers.InputLayer, keras.layers.GRUCell)):
            continue
        weight = 4 if isinstance(layer, keras.layers.BatchNormalization) else 1
        other += weight * _elements(layer.output.shape)
    return other / counted
