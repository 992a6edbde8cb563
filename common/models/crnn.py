"""CRNN of Choi et al. 2016, "Convolutional recurrent neural networks for music classification".

Follows the authors' Keras reference, ``music_tagger_crnn.py`` of
keunwoochoi/music-auto_tagging-keras, layer by layer:

====================================  =======================================
input 96 x 1366 log-mel               ``(batch, n_mels, frames)``, channel added
ZeroPadding2D((0, 37))                1366 -> 1440 frames
BatchNormalization(axis=time)         ``bn_0_freq``: statistics over frequency, one per frame
4 x [Conv2D 3x3 'same' + BN + ELU     filters 64, 128, 128, 128
     + MaxPool + Dropout 0.1]         pools (2,2), (3,3), (4,4), (4,4)
Reshape                               ``(15, 128)``: a sequence over time
GRU(32, sequences) -> GRU(32)
Dropout 0.3 -> Dense(n_outputs)       (the registry adds Dense and activation)
====================================  =======================================

Parameter count. With 50 sigmoid outputs on 96 x 1366 the reference reports
396,786 parameters: that is its *trainable* count (Keras 1 listed batch-norm
running statistics apart). This model has exactly 396,786 trainable parameters
and 400,562 in all; the 3,776 others are the batch-norm moving means and
variances (2 x (1440 + 64 + 3 x 128)). Differences from Keras 1 that do not change
the count: the GRUs use Keras 3's ``sigmoid`` gate activation (Keras 1 used
``hard_sigmoid``), and ``gru_reset_after=False`` (the reference's GRU formulation;
``True`` is Keras 3's cuDNN-compatible variant with a second bias, +192 parameters
for two 32-unit GRUs).

GRU formulation in an experiment config. ``model.params.gru_reset_after`` is ``auto``
when absent; :func:`resolve_crnn_params` (called by :func:`common.config.config_from_dict`)
turns it into ``True`` (Keras runs the GRUs with cuDNN,
:func:`common.models.cudnn_gru_report`) where a GPU is visible and ``training.jit_compile``
is not ``true``, into ``False`` (the reference) otherwise, and the resolved config, hence
the run's ``config.yaml``, holds the value. A cuDNN GRU cannot be compiled by XLA: on a
GPU, Keras then trains the whole model without XLA (``jit_compile: auto``), and drops an
explicit ``jit_compile: true`` with a warning, so ``gru_reset_after: true`` with
``jit_compile: true`` is a ConfigError.

The reference's first batch norm keeps the time axis (``axis=time_axis``), so it
normalises each of the 1440 padded frames over batch and frequency, which ties a
trained model to its frame count. ``input_norm="frequency"`` normalises each mel
band instead (works for any frame count); ``"none"`` drops the layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

from common.errors import ConfigError
from common.models.layers import conv_bn_act, pair

_INPUT_NORM_AXES = {"time": 2, "frequency": 1}


def crnn_body(
    x: keras.KerasTensor,
    *,
    filters: Sequence[int] = (64, 128, 128, 128),
    pool_sizes: Sequence[int | Sequence[int]] = ((2, 2), (3, 3), (4, 4), (4, 4)),
    kernel_size: int = 3,
    time_padding: int = 37,
    input_norm: str = "time",
    conv_dropout: float = 0.1,
    gru_units: Sequence[int] = (32, 32),
    gru_reset_after: bool = False,
    dropout: float = 0.3,
    bn_momentum: float = 0.99,
) -> keras.KerasTensor:
    """CRNN feature extractor: 2-D conv blocks, then stacked GRUs over time.

    Parameters
    ----------
    x : KerasTensor, shape (batch, n_mels, frames)
        Standardised log-mel spectrogram.
    filters : sequence of int
        Filters of each conv block (one block per entry).
    pool_sizes : sequence of int or (freq, time) pairs
        Max-pooling size (and stride) of each block; as many as ``filters``.
        The frequency axis must not shrink below 1.
    kernel_size : int
        Square convolution kernel.
    time_padding : int
        Zero frames added at each end of the time axis before the first block.
    input_norm : {"time", "frequency", "none"}
        Axis kept by the input batch norm (see the module docstring).
    bn_momentum : float
        Keras momentum of the batch norms' moving statistics (the reference's 0.99;
        lower it, e.g. to 0.9, when an epoch has only a few steps).
    conv_dropout : float
        Dropout after each conv block.
    gru_units : sequence of int
        Units of each stacked GRU; all but the last return sequences.
    gru_reset_after : bool
        Keras 3 ``reset_after`` of the GRUs (``False`` = the reference's GRU; ``True``
        = cuDNN-eligible on a GPU, see :func:`resolve_crnn_params`).
    dropout : float
        Dropout before the output layer.

    Returns
    -------
    KerasTensor, shape (batch, gru_units[-1])
    """
    if len(filters) != len(pool_sizes) or not filters:
        raise ConfigError(
            f"model.params: crnn needs as many pool_sizes as filters, got {len(pool_sizes)} "
            f"pool sizes for {len(filters)} filters"
        )
    if input_norm not in (*_INPUT_NORM_AXES, "none"):
        raise ConfigError(
            f"model.params.input_norm: {input_norm!r} is not one of time, frequency, none"
        )
    if not gru_units:
        raise ConfigError("model.params.gru_units: needs at least one GRU")
    if not isinstance(gru_reset_after, bool):
        raise ConfigError(f"model.params.gru_reset_after: expected true or false, got {gru_reset_after!r} "
                          f"('auto' is resolved by common.models.resolve_params)")
    pools = [pair(p, field="model.params.pool_sizes") for p in pool_sizes]
    n_freq, n_time = int(x.shape[1]), int(x.shape[2]) + 2 * int(time_padding)
    for f_pool, t_pool in pools:
        n_freq, n_time = n_freq // f_pool, n_time // t_pool
    if n_freq < 1 or n_time < 1:
        raise ConfigError(
            f"model.params.pool_sizes: {pools} reduce input {tuple(x.shape[1:])} "
            f"(+{time_padding} frames each side) to nothing; use smaller pools or a larger input"
        )

    x = keras.layers.Reshape((*x.shape[1:], 1), name="add_channel")(x)
    x = keras.layers.ZeroPadding2D(padding=(0, int(time_padding)), name="time_padding")(x)
    if input_norm != "none":
        x = keras.layers.BatchNormalization(axis=_INPUT_NORM_AXES[input_norm], momentum=bn_momentum,
                                            name="bn_0")(x)
    for i, (n_filters, pool) in enumerate(zip(filters, pools), start=1):
        x = conv_bn_act(
            x, filters=int(n_filters), kernel_size=kernel_size, activation="elu",
            bn_momentum=bn_momentum, name=f"block{i}",
        )
        x = keras.layers.MaxPooling2D(pool_size=pool, strides=pool, name=f"block{i}_pool")(x)
        x = keras.layers.Dropout(conv_dropout, name=f"block{i}_dropout")(x)

    # (batch, freq, time, channels) -> (batch, time, freq * channels)
    x = keras.layers.Permute((2, 1, 3), name="time_first")(x)
    x = keras.layers.Reshape((n_time, n_freq * int(filters[-1])), name="to_sequence")(x)
    for i, units in enumerate(gru_units, start=1):
        x = keras.layers.GRU(
            int(units),
            return_sequences=i < len(gru_units),
            reset_after=gru_reset_after,
            name=f"gru{i}",
        )(x)
    return keras.layers.Dropout(dropout, name="dropout")(x)


def resolve_crnn_params(params: Mapping[str, Any], *, gpu: bool, jit_compile: bool | str) -> dict[str, Any]:
    """The CRNN's config parameters with ``gru_reset_after: auto`` resolved for this machine.

    Parameters
    ----------
    params : mapping
        ``model.params`` of an experiment config; ``gru_reset_after`` is ``"auto"``,
        ``True``, ``False`` or absent (= ``"auto"``).
    gpu : bool
        Whether TensorFlow sees a GPU where the config is resolved.
    jit_compile : bool or "auto"
        ``training.jit_compile``.

    Returns
    -------
    dict
        ``params`` with a bool ``gru_reset_after``: an explicit value as given; ``auto``
        gives ``True`` (cuDNN GRUs) when ``gpu`` and ``jit_compile`` is not ``True``,
        ``False`` (the reference's GRUs, which XLA compiles) otherwise.

    Raises
    ------
    ConfigError
        ``gru_reset_after`` is none of the above, or ``True`` with ``jit_compile`` ``True``
        (XLA cannot compile a cuDNN GRU; Keras would train without XLA on a GPU).
    """
    resolved = dict(params)
    value = resolved.get("gru_reset_after", "auto")
    if value == "auto":
        value = gpu and jit_compile is not True
    elif not isinstance(value, bool):
        raise ConfigError(f"model.params.gru_reset_after: expected true, false or auto, got {value!r}")
    elif value and jit_compile is True:
        raise ConfigError(
            "model.params.gru_reset_after: true makes the CRNN's GRUs cuDNN GRUs on a GPU, which XLA cannot "
            "compile, and training.jit_compile: true asks for XLA (Keras would train without it); set "
            "training.jit_compile to auto or false, or model.params.gru_reset_after to false or auto "
            "(the reference GRU, which XLA compiles)"
        )
    resolved["gru_reset_after"] = value
    return resolved
