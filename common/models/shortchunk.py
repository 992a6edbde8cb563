"""Short-chunk CNN with residual blocks (Won et al. 2020, "Evaluation of CNN-based
automatic music tagging models"), after ``ShortChunkCNN_Res`` of
minzwon/sota-music-tagging-models.

The paper trains on ~3.69-s chunks (128 mels x ~231 frames at 16 kHz, hop 256);
sizes here come from the input. Layout of the reference, reproduced here:

- batch norm of the single-channel input (``spec_bn``);
- 7 residual blocks ``Res_2d``: conv 3x3 stride 2 + BN + ReLU, conv 3x3 + BN, plus a
  shortcut (conv 3x3 stride 2 + BN when the shape changes, identity otherwise),
  ReLU of the sum. Each block halves frequency and time, as a 2x2 pooling would
  (the reference downsamples by the strided convolution, not by max pooling);
  channels 128, 128, 256, 256, 256, 256, 512;
- global max pooling (the reference squeezes the 1-bin frequency axis and
  max-pools over time; global pooling over both is the same when frequency is 1);
- Dense(512) + BN + ReLU + Dropout 0.5, then the output layer.

With the defaults and 50 outputs the model has 12,104,244 trainable parameters,
the reference's PyTorch count (plus 11,778 batch-norm moving statistics, which
PyTorch keeps as buffers). Keras' ``'same'`` padding with stride 2 pads odd
sizes at the end where PyTorch pads both sides: same output sizes and counts.

The model sees one chunk; averaging chunk predictions over a clip is done by the
inference code.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from common.errors import ConfigError
from common.models.layers import conv_bn_act


def residual_block(
    x: keras.KerasTensor, *, filters: int, kernel_size: int, strides: int, bn_momentum: float, name: str
) -> keras.KerasTensor:
    """``Res_2d`` of the reference.

    Parameters
    ----------
    x : KerasTensor, shape (batch, freq, time, channels)
    filters, kernel_size, strides : int
        Output channels, square kernel, downsampling stride of the first conv.
    bn_momentum : float
        Momentum of every batch norm's moving statistics.
    name : str
        Prefix of the block's layer names.

    Returns
    -------
    KerasTensor, shape (batch, ceil(freq / strides), ceil(time / strides), filters)
    """
    out = conv_bn_act(
        x, filters=filters, kernel_size=kernel_size, strides=strides, activation="relu",
        bn_momentum=bn_momentum, name=f"{name}_a",
    )
    out = keras.layers.Conv2D(filters, kernel_size, padding="same", name=f"{name}_b_conv")(out)
    out = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_b_bn")(out)
    if strides != 1 or int(x.shape[-1]) != filters:
        x = keras.layers.Conv2D(
            filters, kernel_size, strides=strides, padding="same", name=f"{name}_shortcut_conv"
        )(x)
        x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_shortcut_bn")(x)
    out = keras.layers.Add(name=f"{name}_add")([x, out])
    return keras.layers.Activation("relu", name=f"{name}_relu")(out)


def shortchunk_body(
    x: keras.KerasTensor,
    *,
    channels: Sequence[int] = (128, 128, 256, 256, 256, 256, 512),
    kernel_size: int = 3,
    strides: int = 2,
    dense_units: int | None = None,
    dropout: float = 0.5,
    bn_momentum: float = 0.9,
) -> keras.KerasTensor:
    """Residual short-chunk CNN feature extractor.

    Parameters
    ----------
    x : KerasTensor, shape (batch, n_mels, frames)
        Standardised log-mel chunk.
    channels : sequence of int
        Output channels of each residual block (one block per entry).
    kernel_size : int
        Square kernel of every convolution.
    strides : int
        Downsampling of each block (2 = halve frequency and time).
    dense_units : int, optional
        Width of the hidden dense layer; default ``channels[-1]`` (the reference).
    dropout : float
        Dropout before the output layer.
    bn_momentum : float
        Keras momentum of the batch norms' moving statistics; 0.9 is the reference's
        PyTorch ``momentum=0.1`` (Keras' default 0.99 lags badly on small datasets).

    Returns
    -------
    KerasTensor, shape (batch, dense_units)
    """
    if not channels:
        raise ConfigError("model.params.channels: shortchunk needs at least one block")
    x = keras.layers.Reshape((*x.shape[1:], 1), name="add_channel")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name="spec_bn")(x)
    for i, width in enumerate(channels, start=1):
        x = residual_block(
            x, filters=int(width), kernel_size=kernel_size, strides=int(strides),
            bn_momentum=bn_momentum, name=f"res{i}"
        )
    x = keras.layers.GlobalMaxPooling2D(name="global_max")(x)
    units = int(dense_units) if dense_units is not None else int(channels[-1])
    x = keras.layers.Dense(units, name="dense")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name="dense_bn")(x)
    x = keras.layers.Activation("relu", name="dense_relu")(x)
    return keras.layers.Dropout(dropout, name="dropout")(x)
