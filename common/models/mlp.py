"""A dense head for vector features (e.g. frozen musicnn embeddings, ``features.kind: musicnn``).

The registry standardises the input per component with the training folds' statistics;
this body adds ``len(units)`` blocks of dense -> ReLU -> dropout (a linear model on the
embedding when ``units`` is empty, only dropout then).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from common.errors import ConfigError


def mlp_body(x: keras.KerasTensor, *, units: Sequence[int] = (256,), dropout: float = 0.5) -> keras.KerasTensor:
    """Dense blocks on a feature vector.

    Parameters
    ----------
    x : KerasTensor, shape (batch, dim)
        Standardised feature vectors.
    units : sequence of int
        Width of each hidden dense layer (ReLU); empty for a linear (logistic) head.
    dropout : float
        Dropout rate on the input and after each hidden layer.

    Returns
    -------
    KerasTensor, shape (batch, units[-1]) (or (batch, dim) when ``units`` is empty)
    """
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.params.dropout: must be in [0, 1), got {dropout}")
    if any(not isinstance(n, int) or n < 1 for n in units):
        raise ConfigError(f"model.params.units: expected positive ints, got {list(units)}")
    x = keras.layers.Dropout(dropout, name="input_dropout")(x)
    for index, n in enumerate(units, start=1):
        x = keras.layers.Dense(int(n), activation="relu", name=f"dense_{index}")(x)
        x = keras.layers.Dropout(dropout, name=f"dense_{index}_dropout")(x)
    return x
