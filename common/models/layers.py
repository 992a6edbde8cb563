"""Building blocks shared by the model builders.

Everything here is made of stock Keras layers, so a saved ``model.keras`` needs
no custom objects beyond what ``import common.models`` registers. The input
standardisation uses :class:`keras.layers.Normalization` with fixed constants
(they are stored in the layer's config, hence in ``model.keras``).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from common.errors import ConfigError


def standardize(
    x: keras.KerasTensor,
    *,
    kind: str,
    feature_mean: np.ndarray | float | None,
    feature_std: np.ndarray | float | None,
) -> keras.KerasTensor:
    """Subtract ``feature_mean`` and divide by ``feature_std`` inside the model.

    Parameters
    ----------
    x : KerasTensor, shape (batch, n_mels, frames), (batch, samples) or (batch, dim)
        Raw features, as stored in the feature cache.
    kind : {"logmel", "waveform", "vector"}
        ``logmel`` takes per-frequency statistics of shape ``(n_mels,)``, ``vector``
        per-component statistics ``(dim,)``; ``waveform`` takes scalars.
    feature_mean, feature_std : array-like or float or None
        Statistics of the training folds. Both ``None``: ``x`` is returned as is.

    Returns
    -------
    KerasTensor, same shape as ``x``, float32.

    Raises
    ------
    ConfigError
        Only one of the two is given, a shape does not match, or a std is not
        positive and finite.
    """
    if feature_mean is None and feature_std is None:
        return x
    if feature_mean is None or feature_std is None:
        raise ConfigError("feature_mean and feature_std must be given together")
    mean = np.asarray(feature_mean, dtype=np.float64)
    std = np.asarray(feature_std, dtype=np.float64)
    per_axis_1 = kind in ("logmel", "vector")
    expected = (int(x.shape[1]),) if per_axis_1 else ()
    for field, value in (("feature_mean", mean), ("feature_std", std)):
        if value.shape != expected:
            raise ConfigError(
                f"{field}: expected shape {expected} for {kind} input {tuple(x.shape[1:])}, "
                f"got {value.shape}"
            )
        if not np.all(np.isfinite(value)):
            raise ConfigError(f"{field}: holds non-finite values")
    if np.any(std <= 0):
        raise ConfigError("feature_std: every value must be positive")
    axis = 1 if per_axis_1 else None
    # float32 even under a mixed policy: raw dB values are standardised at full
    # precision, the next layer casts to the compute dtype.
    return keras.layers.Normalization(
        axis=axis, mean=mean, variance=std**2, dtype="float32", name="standardize"
    )(x)


def classifier_output(
    x: keras.KerasTensor, *, n_outputs: int, activation: str
) -> keras.KerasTensor:
    """Dense logits, then probabilities in float32 (safe under mixed precision).

    Parameters
    ----------
    x : KerasTensor, shape (batch, d)
    n_outputs : int
        Number of classes (``single``) or tags (``multi``).
    activation : {"softmax", "sigmoid"}

    Returns
    -------
    KerasTensor, shape (batch, n_outputs), float32 probabilities.
    """
    logits = keras.layers.Dense(int(n_outputs), name="logits")(x)
    return keras.layers.Activation(activation, dtype="float32", name="probabilities")(logits)


def auxiliary_output(x: keras.KerasTensor, *, n_outputs: int) -> keras.KerasTensor:
    """The auxiliary head of a multi-task model: dense logits, then sigmoid probabilities in float32.

    Parameters
    ----------
    x : KerasTensor, shape (batch, d)
        The body's embedding, which the main head (:func:`classifier_output`) reads too.
    n_outputs : int
        Number of classes of the genre tree (``task.auxiliary: genres_all``).

    Returns
    -------
    KerasTensor, shape (batch, n_outputs), float32 probabilities; the output is named
    ``auxiliary`` (Keras logs its loss as ``auxiliary_loss``, the main head's as ``probabilities_loss``).
    """
    logits = keras.layers.Dense(int(n_outputs), name="auxiliary_logits")(x)
    return keras.layers.Activation("sigmoid", dtype="float32", name="auxiliary")(logits)


def pair(value: int | Sequence[int], *, field: str) -> tuple[int, int]:
    """``3`` -> ``(3, 3)``; ``[2, 4]`` -> ``(2, 4)``; anything else is a ConfigError naming ``field``."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    if isinstance(value, Sequence) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) for v in value
    ):
        return int(value[0]), int(value[1])
    raise ConfigError(f"{field}: expected an int or a pair of ints, got {value!r}")


def conv_bn_act(
    x: keras.KerasTensor,
    *,
    filters: int,
    kernel_size: int | tuple[int, ...],
    activation: str,
    strides: int | tuple[int, ...] = 1,
    padding: str = "same",
    rank: int = 2,
    bn_momentum: float = 0.99,
    name: str,
) -> keras.KerasTensor:
    """Convolution (1-D or 2-D, per ``rank``), batch norm over channels, activation.

    ``bn_momentum`` is Keras' (weight of the old moving average); PyTorch's
    ``momentum=0.1`` is Keras' 0.9.
    """
    conv = keras.layers.Conv2D if rank == 2 else keras.layers.Conv1D
    x = conv(filters, kernel_size, strides=strides, padding=padding, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    return keras.layers.Activation(activation, name=f"{name}_{activation}")(x)
