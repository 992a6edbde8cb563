"""Model registry: build any of the toolkit's models by name.

Every model takes a batch of RAW features, exactly as the feature cache stores
them: log-mel ``(batch, n_mels, frames)``, waveform ``(batch, samples)`` or a vector
``(batch, dim)`` (embeddings). Standardisation with the training folds' statistics
happens in the model's first layer (except for models that normalise their own input,
``ModelSpec.standardize=False``: musicnn's input batch norm, which its published weights
were trained with on raw log-mels), so a saved ``model.keras`` is self-contained; the last layer returns
float32 probabilities (softmax for ``single``, sigmoid for ``multi``), also under a
mixed-precision policy. ``keras.models.load_model(path)`` works after
``import common.models``.

Adding a model
--------------
Write a *body* ``body(x, *, param=default, ...) -> KerasTensor`` that maps the
standardised input ``x`` (shape as above, float32) to a ``(batch, d)`` embedding
(dropout included), with every hyper-parameter a keyword-only argument whose
default is the paper's value; then add one line to ``MODELS``. The registry
(:meth:`common.models.spec.ModelSpec.build`) adds the input, the standardisation and
the output layers, and rejects parameters the body does not declare. A parameter whose
best value depends on the machine may take ``auto`` in experiment configs: the spec's
``resolve`` makes it explicit when the config is loaded (:func:`resolve_params`). A body's module
never imports this package (it imports every body): it builds its own complete
model, if it needs one, from its :class:`~common.models.spec.ModelSpec`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from common.errors import ConfigError
from common.models import crnn, mlp, musicnn, samplecnn, shortchunk
from common.models.cudnn import cudnn_gru_report
from common.models.spec import InputKind, ModelSpec

MODELS: dict[str, ModelSpec] = {
    "crnn": ModelSpec(crnn.crnn_body, "logmel", resolve=crnn.resolve_crnn_params),
    "shortchunk": ModelSpec(shortchunk.shortchunk_body, "logmel"),
    "samplecnn": ModelSpec(samplecnn.samplecnn_body, "waveform"),
    "musicnn": musicnn.MUSICNN_SPEC,  # defined there: build_pretrained_musicnn builds it too
    "mlp": ModelSpec(mlp.mlp_body, "vector"),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def model_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``; ConfigError listing the known names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(
            f"model.name: unknown model {name!r} (known: {', '.join(sorted(MODELS))})"
        ) from None


def resolve_params(name: str, params: Mapping[str, Any], *, gpu: bool, jit_compile: bool | str) -> dict[str, Any]:
    """The config's ``model.params`` of model ``name`` with its machine-dependent values resolved.

    A body's parameter may take ``auto`` in a config (the CRNN's ``gru_reset_after``:
    :func:`common.models.crnn.resolve_crnn_params`); this makes it explicit, so that the
    resolved config says what was built, and rejects values that cannot train with
    ``jit_compile``. Parameters of models without such values come back unchanged.

    Parameters
    ----------
    name : str
        One of ``MODEL_NAMES``.
    params : mapping
        ``model.params`` as written in the config.
    gpu : bool
        Whether TensorFlow sees a GPU where the config is resolved.
    jit_compile : bool or "auto"
        ``training.jit_compile``.

    Returns
    -------
    dict
        Parameters for :func:`build_model`.

    Raises
    ------
    ConfigError
        Unknown model, a value the model does not accept, or one that conflicts with
        ``jit_compile`` (the message names both keys).
    """
    spec = model_spec(name)
    return dict(params) if spec.resolve is None else spec.resolve(params, gpu=gpu, jit_compile=jit_compile)


def build_model(
    name: str,
    *,
    input_shape: Sequence[int],
    n_outputs: int,
    activation: str,
    feature_mean: np.ndarray | float | None = None,
    feature_std: np.ndarray | float | None = None,
    auxiliary_outputs: int = 0,
    **params: Any,
) -> keras.Model:
    """Build the model ``name`` of the registry (not compiled).

    Parameters
    ----------
    name : str
        One of ``MODEL_NAMES``.
    input_shape : sequence of int
        Shape of one example without the batch axis: ``(n_mels, frames)`` for
        log-mel models, ``(samples,)`` for waveform models.
    n_outputs : int
        Number of classes or tags.
    activation : {"softmax", "sigmoid"}
        ``softmax`` for single-label, ``sigmoid`` for multi-label.
    feature_mean, feature_std : array-like, shape (n_mels,), or float, optional
        Per-frequency (log-mel), per-component (vector) or scalar (waveform)
        statistics of the training data; when given, the model standardises its input
        with them, unless its spec says it normalises its own input (``musicnn``).
    auxiliary_outputs : int
        0: one output. Otherwise a multi-task model: a second, sigmoid head of that many
        classes on the body's embedding (``task.auxiliary: genres_all``), for every model of
        the registry; its outputs are ``[main, auxiliary]``.
    **params
        Hyper-parameters of the model's body (see each body's docstring).

    Returns
    -------
    keras.Model
        Input ``(batch, *input_shape)`` float32, output ``(batch, n_outputs)`` float32 probabilities
        (with ``auxiliary_outputs``: the list of that and ``(batch, auxiliary_outputs)``).

    Raises
    ------
    ConfigError
        Unknown model or parameter, input shape of the wrong rank, bad statistics,
        or hyper-parameters that do not fit the input size.
    """
    return model_spec(name).build(
        name=name, input_shape=input_shape, n_outputs=n_outputs, activation=activation,
        feature_mean=feature_mean, feature_std=feature_std, auxiliary_outputs=auxiliary_outputs, **params,
    )


def count_params(model: keras.Model) -> int:
    """Total number of parameters, trainable or not (batch-norm statistics included)."""
    return int(model.count_params())


def model_summary_dict(model: keras.Model) -> dict[str, Any]:
    """JSON-ready description of ``model`` for run summaries.

    Returns
    -------
    dict
        ``name``, ``input_shape``, ``output_shape`` (batch axis as ``None``),
        ``params``, ``trainable_params``, ``non_trainable_params``, ``layers``.
    """
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = count_params(model)
    return {
        "name": model.name,
        "input_shape": list(model.input_shape),
        "output_shape": list(model.output_shape),
        "params": total,
        "trainable_params": trainable,
        "non_trainable_params": total - trainable,
        "layers": len(model.layers),
    }


__all__ = [
    "InputKind",
    "MODELS",
    "MODEL_NAMES",
    "ModelSpec",
    "build_model",
    "count_params",
    "cudnn_gru_report",
    "model_spec",
    "model_summary_dict",
    "resolve_params",
]
