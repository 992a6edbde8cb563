"""Sample-level deep CNN on raw waveforms (Lee et al. 2017, "Sample-level deep
convolutional neural networks for music auto-tagging using raw waveforms").

The paper's 3^9 model (also ``SampleCNN`` of minzwon/sota-music-tagging-models):
59049 samples -> conv 3, stride 3, 128 filters (19683 frames) -> 9 blocks of
[conv 3 + BN + ReLU + max-pool 3] with 128, 128, 256, 256, 256, 256, 256, 256, 512
filters (1 frame) -> conv 1, 512 filters + BN + ReLU -> dropout 0.5 -> output.
Every convolution is followed by batch norm and ReLU. The number of blocks is
``len(block_filters)``: ``n`` blocks take ``3^(n+1)`` samples down to one frame.
A longer input leaves several frames, which a global max pool reduces (with one
frame, as in the paper, that pool is the identity). With the defaults and 50
outputs: 1,869,874 trainable parameters, as the PyTorch reference (plus 5,888
batch-norm moving statistics).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from common.errors import ConfigError
from common.models.layers import conv_bn_act


def samplecnn_body(
    x: keras.KerasTensor,
    *,
    stem_filters: int = 128,
    block_filters: Sequence[int] = (128, 128, 256, 256, 256, 256, 256, 256, 512),
    kernel_size: int = 3,
    pool_size: int = 3,
    final_filters: int = 512,
    dropout: float = 0.5,
    bn_momentum: float = 0.99,
) -> keras.KerasTensor:
    """Sample-level CNN feature extractor.

    Parameters
    ----------
    x : KerasTensor, shape (batch, samples)
        Standardised waveform.
    stem_filters : int
        Filters of the first (strided, ``kernel_size`` wide) convolution.
    block_filters : sequence of int
        Filters of each conv + max-pool block.
    kernel_size, pool_size : int
        Convolution width (also the stem's stride) and pooling size of the blocks.
    final_filters : int
        Filters of the closing 1-wide convolution.
    dropout : float
        Dropout before the output layer.
    bn_momentum : float
        Keras momentum of the batch norms' moving statistics (lower it, e.g. to 0.9,
        when an epoch has only a few steps).

    Returns
    -------
    KerasTensor, shape (batch, final_filters)
    """
    n_frames = int(x.shape[1]) // int(kernel_size) // int(pool_size) ** len(block_filters)
    if n_frames < 1:
        raise ConfigError(
            f"model.params.block_filters: {len(block_filters)} blocks need at least "
            f"{kernel_size * pool_size ** len(block_filters)} samples, input has {x.shape[1]}"
        )
    x = keras.layers.Reshape((int(x.shape[1]), 1), name="add_channel")(x)
    x = conv_bn_act(
        x, filters=int(stem_filters), kernel_size=kernel_size, strides=kernel_size,
        padding="valid", activation="relu", rank=1, bn_momentum=bn_momentum, name="stem",
    )
    for i, n_filters in enumerate(block_filters, start=1):
        x = conv_bn_act(
            x, filters=int(n_filters), kernel_size=kernel_size, activation="relu", rank=1,
            bn_momentum=bn_momentum, name=f"block{i}",
        )
        x = keras.layers.MaxPooling1D(pool_size, name=f"block{i}_pool")(x)
    x = conv_bn_act(
        x, filters=int(final_filters), kernel_size=1, activation="relu", rank=1,
        bn_momentum=bn_momentum, name="final",
    )
    x = keras.layers.GlobalMaxPooling1D(name="global_max")(x)
    return keras.layers.Dropout(dropout, name="dropout")(x)
