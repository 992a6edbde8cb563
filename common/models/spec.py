"""One model of the registry: its body, its input layout, and how a full model is built.

Kept apart from the registry (:mod:`common.models`) so that a body's own module can
build its complete model (:func:`common.models.musicnn.build_pretrained_musicnn`)
without importing the registry, which imports every body.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import keras
import numpy as np

from common.errors import ConfigError
from common.models.layers import auxiliary_output, classifier_output, standardize

InputKind = Literal["logmel", "waveform", "vector"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    Attributes
    ----------
    body : callable
        ``body(x, **params) -> (batch, d)`` tensor, see :mod:`common.models`.
    input_kind : {"logmel", "waveform", "vector"}
        Which feature layout the model reads (:attr:`common.settings.FeatureSettings.layout`):
        ``(n_mels, frames)``, ``(samples,)`` or ``(dim,)``.
    standardize : bool
        Whether the registry standardises the input with the training statistics;
        ``False`` for a body that normalises its raw input itself (statistics passed
        to :meth:`build` are then not used).
    resolve : callable, optional
        ``resolve(params, *, gpu, jit_compile) -> dict``: the config's ``model.params``
        with the values that depend on the machine (``auto``) made explicit, and checked
        against ``training.jit_compile`` (see :func:`common.models.resolve_params`);
        ``None`` when the body has no such value.
    """

    body: Callable[..., keras.KerasTensor]
    input_kind: InputKind
    standardize: bool = True
    resolve: Callable[..., dict[str, Any]] | None = None

    def param_names(self) -> list[str]:
        """Names of the hyper-parameters ``body`` accepts (keyword-only arguments)."""
        return [
            p.name
            for p in inspect.signature(self.body).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        ]

    def build(
        self,
        *,
        name: str,
        input_shape: Sequence[int],
        n_outputs: int,
        activation: str,
        feature_mean: np.ndarray | float | None = None,
        feature_std: np.ndarray | float | None = None,
        auxiliary_outputs: int = 0,
        **params: Any,
    ) -> keras.Model:
        """The model (not compiled): input, standardisation, body, output layer (and the auxiliary head).

        Parameters are those of :func:`common.models.build_model`; ``name`` names the
        Keras model and the errors.

        Raises
        ------
        ConfigError
            Unknown parameter, input shape of the wrong rank, bad statistics, or
            hyper-parameters that do not fit the input size.
        """
        if activation not in ("softmax", "sigmoid"):
            raise ConfigError(f"activation: {activation!r} is neither 'softmax' nor 'sigmoid'")
        if int(n_outputs) < 1:
            raise ConfigError(f"n_outputs: must be positive, got {n_outputs}")
        if int(auxiliary_outputs) < 0:
            raise ConfigError(f"auxiliary_outputs: must be 0 or more, got {auxiliary_outputs}")
        known = self.param_names()
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ConfigError(
                f"model.params: unknown parameter(s) {', '.join(map(repr, unknown))} for model "
                f"{name!r} (known: {', '.join(known)})"
            )
        shape = tuple(int(s) for s in input_shape)
        rank = 2 if self.input_kind == "logmel" else 1
        if len(shape) != rank or min(shape) < 1:
            layout = {"logmel": "(n_mels, frames)", "waveform": "(samples,)", "vector": "(dim,)"}[self.input_kind]
            raise ConfigError(
                f"input_shape: model {name!r} takes {self.input_kind} input {layout}, got {shape}"
            )
        inputs = keras.Input(shape=shape, name=self.input_kind)
        x = standardize(
            inputs, kind=self.input_kind, feature_mean=feature_mean, feature_std=feature_std
        ) if self.standardize else inputs
        x = self.body(x, **params)
        outputs = classifier_output(x, n_outputs=n_outputs, activation=activation)
        if auxiliary_outputs:
            return keras.Model(inputs, [outputs, auxiliary_output(x, n_outputs=auxiliary_outputs)], name=name)
        return keras.Model(inputs, outputs, name=name)
