"""Experiment configuration: one YAML file per experiment, parsed into frozen records.

An experiment file has the sections ``features`` (:class:`~common.settings.FeatureSettings`),
``task``, ``model``, ``data`` and ``training``; every section and every key is optional
and falls back to the defaults below. The experiment's name is the file's stem.
Unknown keys, values of the wrong type and names outside a fixed set raise
:class:`~common.errors.ConfigError` naming the offending key, e.g. ``data.specaugment.time_width``.

Example
-------
>>> cfg = load_config("experiments/configs/crnn.yaml")      # doctest: +SKIP
>>> cfg.name, cfg.model.name, cfg.data.crop_frames(cfg.features)  # doctest: +SKIP
('crnn', 'crnn', 1366)
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from common.errors import ConfigError
from common.settings import FeatureSettings
from common.tasks import Auxiliary, MultiRoot, TaskName

EvalMode = Literal["center", "chunks"]
Balance = Literal["none", "class_weights", "sampling"]
InMemory = Literal["auto", True, False]
OptimizerName = Literal["adam", "adamw", "sgd"]
Schedule = Literal["constant", "cosine", "reduce_on_plateau"]
Precision = Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]
Strategy = Literal["auto", "default", "mirrored"]
JitCompile = Literal["auto", True, False]
ShortClips = Literal["pad", "mask"]


#: Metadata of a field added after runs were written with the config: the resolved config
#: (:meth:`ExperimentConfig.to_dict`, a run's ``config.yaml``) holds it only when it differs
#: from its default, so that a config which does not use it resolves as before and its
#: interrupted runs resume.
_WRITTEN_WHEN_SET = {"written_when_set": True}


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Which labels are learnt.

    Attributes
    ----------
    name : {"single", "multi"}
        ``single``: the 16 top-level genres (softmax); ``multi``: every genre of
        ``genres_all`` with at least ``min_tracks`` training tracks (sigmoid).
    min_tracks : int
        ``multi`` and the ``genres_all`` auxiliary head: minimum number of training tracks per genre.
    multi_root : {"none", "soft"}
        ``single`` only: what to do with the fold tracks without a ``genre_top`` (in FMA:
        those whose genres span several roots). ``none`` leaves them out; ``soft`` adds
        them to the training side of the folds with a target spread uniformly over the
        top-level genres of their ``genres_all`` (:meth:`common.tasks.Task.root_targets`).
        They are never validated or scored: the out-of-fold predictions, CV and test
        scores are those of the same tracks as without them.
    multi_root_weight : float
        ``soft`` only: loss weight of each such track (the tracks with a ``genre_top``
        weigh 1).
    auxiliary : {"none", "genres_all"}
        ``single`` only: ``genres_all`` adds a sigmoid head over the classes of the ``multi``
        task (every genre of ``genres_all`` with ``min_tracks`` training tracks, sub-genres
        included) to the 16-way head. Only the 16-way head is validated, scored and written
        to ``oof.csv``; ``crowdai.tag`` also shows the auxiliary head's sub-genres.
    auxiliary_weight : float
        ``genres_all`` only: weight of the auxiliary head's binary cross-entropy in the loss
        (the 16-way head's weighs 1).
    """

    name: TaskName = "single"
    min_tracks: int = 20
    multi_root: MultiRoot = dataclasses.field(default="none", metadata=_WRITTEN_WHEN_SET)
    multi_root_weight: float = dataclasses.field(default=1.0, metadata=_WRITTEN_WHEN_SET)
    auxiliary: Auxiliary = dataclasses.field(default="none", metadata=_WRITTEN_WHEN_SET)
    auxiliary_weight: float = dataclasses.field(default=0.3, metadata=_WRITTEN_WHEN_SET)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A model of the registry in :mod:`common.models` and its keyword parameters.

    ``params`` are the model body's keyword arguments. A value that depends on the machine
    is ``auto`` in the file and explicit in the resolved config (:func:`config_from_dict`):
    ``crnn``'s ``gru_reset_after`` (default ``auto``) becomes ``true`` (cuDNN GRUs) where
    TensorFlow sees a GPU and ``training.jit_compile`` is not ``true``, ``false`` (the
    reference's GRUs) otherwise; see :mod:`common.models.crnn`.
    """

    name: str = "crnn"
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment masks applied to training crops (log-mel only).

    ``time_width`` is in frames and ``freq_width`` in mel bands: each mask has a width
    drawn uniformly from ``[0, width]``. Masked cells get the training mean of their band.
    """

    time_masks: int = 0
    time_width: int = 0
    freq_masks: int = 0
    freq_width: int = 0

    @property
    def enabled(self) -> bool:
        return (self.time_masks > 0 and self.time_width > 0) or (self.freq_masks > 0 and self.freq_width > 0)


@dataclasses.dataclass(frozen=True)
class PseudoLabelsConfig:
    """A pseudo-label file added to the training side of every fold (:mod:`common.pseudo`).

    ``path`` is the CSV ``make pseudo`` wrote (relative to the working directory); its clips'
    features come from the feature cache of the unlabelled folder it records (``make features
    SOURCE=test TEST_DIR=<folder>``). ``weight`` is the loss weight of each of its rows (the
    labelled tracks weigh 1). ``per_fold``: fold ``k`` trains on the labels that fold ``k``'s
    models alone gave (the file's ``.folds.csv``, written by ``make pseudo`` given FOLDS; the
    same folds file is required), not on the fold ensemble's, whose other models saw fold
    ``k``'s validation tracks: the CV of the run stays honest.
    """

    path: str = ""
    weight: float = 1.0
    per_fold: bool = dataclasses.field(default=False, metadata=_WRITTEN_WHEN_SET)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Input pipeline.

    Attributes
    ----------
    crop_seconds : float or None
        Length of the random training crop; ``None`` uses the whole clip (always for
        vector features such as embeddings, which are used whole).
    eval : {"center", "chunks"}
        Evaluation of a clip: one centre crop, or the mean of the predictions of crops
        every ``chunk_hop_seconds`` (default: ``crop_seconds``, i.e. no overlap).
    chunk_hop_seconds : float or None
    batch_size : int
    mixup_alpha : float
        Beta(alpha, alpha) mixup of training pairs; 0 disables it.
    specaugment : SpecAugmentConfig
    balance : {"none", "class_weights", "sampling"}
        Inverse-frequency sample weights, or batches drawn with inverse-frequency probabilities.
    in_memory : {"auto", True, False}
        Hold the features in memory (``auto``: when they take at most a quarter of the
        memory budget: RAM, the cgroup limit, ``$FMA_MEMORY_LIMIT``; see
        :func:`common.memory.memory_budget_bytes`) or gather each batch from the memory-mapped cache.
    pseudo_labels : PseudoLabelsConfig or None
        Soft targets of unlabelled clips that join every fold's training side (never validated
        or scored); None (the default) trains on the labelled tracks only.
    short_clips : {"pad", "mask"}
        A clip shorter than ``features.clip_seconds``: ``pad`` (the default) reads it with the
        zero padding of its cache row, as any clip; ``mask`` keeps chunk evaluation, centre
        crops and training crops inside its audio (at least one crop per clip), from the
        lengths the feature cache records (:attr:`common.store.ClipStore.valid_lengths`).
        Clips of full length read the same either way.
    """

    crop_seconds: float | None = None
    eval: EvalMode = "center"
    chunk_hop_seconds: float | None = None
    batch_size: int = 32
    mixup_alpha: float = 0.0
    specaugment: SpecAugmentConfig = dataclasses.field(default_factory=SpecAugmentConfig)
    balance: Balance = "none"
    in_memory: InMemory = "auto"
    pseudo_labels: PseudoLabelsConfig | None = dataclasses.field(default=None, metadata=_WRITTEN_WHEN_SET)
    short_clips: ShortClips = dataclasses.field(default="pad", metadata=_WRITTEN_WHEN_SET)

    def crop_frames(self, features: FeatureSettings) -> int:
        """Frames (log-mel) or samples (waveform) of one crop, at most the whole clip."""
        whole = features.clip_shape[-1]
        return whole if self.crop_seconds is None else min(whole, features.frames_for(self.crop_seconds))

    def chunk_hop_frames(self, features: FeatureSettings) -> int:
        """Hop between evaluation chunks in frames (or samples)."""
        if self.chunk_hop_seconds is None:
            return self.crop_frames(features)
        hop = features.frames_for(self.chunk_hop_seconds)
        return max(1, hop - 1 if features.kind == "logmel" else hop)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: OptimizerName = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Optimisation and runtime.

    Attributes
    ----------
    epochs : int
    optimizer : OptimizerConfig
    schedule : {"constant", "cosine", "reduce_on_plateau"}
    early_stopping_patience : int
        Epochs without a better validation log loss before stopping; 0 disables it.
    seed : int
    precision : {"auto", "float32", "mixed_float16", "mixed_bfloat16"}
        ``auto``: ``mixed_float16`` on GPUs, float32 on CPU.
    strategy : {"auto", "default", "mirrored"}
        ``auto``: ``MirroredStrategy`` with more than one GPU, the default strategy otherwise.
    jit_compile : {"auto", True, False}
        ``auto``: Keras' own choice (XLA) on GPUs, off on CPU. Keras compiles no model with
        a cuDNN GRU (``crnn`` with ``gru_reset_after: true`` on a GPU) with XLA; ``true``
        with such a model is a ConfigError.
    """

    epochs: int = 50
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: Schedule = "constant"
    early_stopping_patience: int = 10
    seed: int = 0
    precision: Precision = "auto"
    strategy: Strategy = "auto"
    jit_compile: JitCompile = "auto"


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: everything that determines its run directories."""

    name: str
    features: FeatureSettings = dataclasses.field(default_factory=FeatureSettings)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data, without the name (which is the file stem).

        A field added after runs existed (``_WRITTEN_WHEN_SET``) appears only when it is not
        at its default.
        """
        values = dataclasses.asdict(self)
        del values["name"]
        _drop_unset_fields(self, values)
        return values

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _drop_unset_fields(record: Any, values: dict[str, Any]) -> None:
    """Remove from ``values`` (``dataclasses.asdict(record)``) the ``_WRITTEN_WHEN_SET`` fields at their default."""
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if field.metadata.get("written_when_set") and value == field.default:
            del values[field.name]
        elif dataclasses.is_dataclass(value):
            _drop_unset_fields(value, values[field.name])


_SECTIONS: dict[str, type] = {
    "task": TaskConfig, "model": ModelConfig, "data": DataConfig, "training": TrainingConfig,
}


def _check_value(value: Any, annotation: Any, key: str) -> Any:
    """Validate ``value`` against a field annotation; return it (ints widened to float)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (typing.Union, __import__("types").UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_value(value, inner, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation in (int, str):
        if isinstance(value, bool) or not isinstance(value, annotation):
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
        return value
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key)
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")  # programming error


def _build(cls: type, values: Any, section: str) -> Any:
    """Build the dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{section}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]}: unknown key (known: {known})")
    kwargs = {k: _check_value(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def _check_ranges(cfg: ExperimentConfig) -> None:
    checks = [
        ("task.min_tracks", cfg.task.min_tracks >= 1),
        ("data.batch_size", cfg.data.batch_size >= 1),
        ("data.crop_seconds", cfg.data.crop_seconds is None or cfg.data.crop_seconds > 0),
        ("data.chunk_hop_seconds", cfg.data.chunk_hop_seconds is None or cfg.data.chunk_hop_seconds > 0),
        ("data.mixup_alpha", cfg.data.mixup_alpha >= 0),
        ("training.epochs", cfg.training.epochs >= 1),
        ("training.optimizer.learning_rate", cfg.training.optimizer.learning_rate > 0),
        ("training.optimizer.weight_decay", cfg.training.optimizer.weight_decay >= 0),
        ("training.early_stopping_patience", cfg.training.early_stopping_patience >= 0),
    ]
    sa = cfg.data.specaugment
    checks += [(f"data.specaugment.{k}", getattr(sa, k) >= 0)
               for k in ("time_masks", "time_width", "freq_masks", "freq_width")]
    for key, ok in checks:
        if not ok:
            raise ConfigError(f"{key}: value out of range")
    if sa.enabled and cfg.features.kind != "logmel":
        raise ConfigError(f"data.specaugment: SpecAugment needs logmel features, not {cfg.features.kind}")
    if cfg.features.layout == "vector":
        for key in ("crop_seconds", "chunk_hop_seconds"):
            if getattr(cfg.data, key) is not None:
                raise ConfigError(f"data.{key}: features.kind {cfg.features.kind!r} stores one vector per "
                                  f"clip (no time axis); leave it unset")
    pseudo = cfg.data.pseudo_labels
    if pseudo is not None and (not pseudo.path or pseudo.weight <= 0):
        raise ConfigError("data.pseudo_labels: give the path of a `make pseudo` file and a positive weight")
    if sa.freq_width > cfg.features.n_mels:
        raise ConfigError(f"data.specaugment.freq_width: {sa.freq_width} exceeds features.n_mels {cfg.features.n_mels}")


def _check_task(task: TaskConfig) -> None:
    """``multi_root``, ``auxiliary`` and their weights fit the task."""
    if task.multi_root != "none" and task.name != "single":
        raise ConfigError(f"task.multi_root: {task.multi_root!r} spreads a target over the top-level genres, "
                          f"for task.name 'single' (task {task.name!r} already learns every genre of genres_all)")
    if task.multi_root_weight <= 0:
        raise ConfigError(f"task.multi_root_weight: {task.multi_root_weight} must be positive")
    if task.multi_root == "none" and task.multi_root_weight != 1.0:
        raise ConfigError("task.multi_root_weight: weighs the tracks added by task.multi_root: soft; "
                          "set multi_root: soft or remove the weight")
    if task.auxiliary != "none" and task.name != "single":
        raise ConfigError(f"task.auxiliary: {task.auxiliary!r} adds a genre-tree head to the 16-way head of "
                          f"task.name 'single' (task {task.name!r} already learns every genre of genres_all)")
    if not math.isfinite(task.auxiliary_weight) or task.auxiliary_weight <= 0:
        raise ConfigError(f"task.auxiliary_weight: {task.auxiliary_weight} must be a positive number")
    if task.auxiliary == "none" and task.auxiliary_weight != TaskConfig.auxiliary_weight:
        raise ConfigError("task.auxiliary_weight: weighs the loss of the head added by task.auxiliary: genres_all; "
                          "set auxiliary: genres_all or remove the weight")


def _check_model(name: str, features: FeatureSettings) -> None:
    """The model exists and reads the layout of the configured features."""
    from common import models  # deferred: imports Keras

    names = models.MODEL_NAMES
    if name not in names:
        raise ConfigError(f"model.name: unknown model {name!r} (registered: {list(names)})")
    reads = models.model_spec(name).input_kind
    if reads != features.layout:
        raise ConfigError(f"model.name: model {name!r} reads {reads} input, but features.kind "
                          f"{features.kind!r} gives {features.layout}")


def _resolve_model_params(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with the machine-dependent ``model.params`` (``auto``) resolved for the GPUs TensorFlow sees."""
    import tensorflow as tf  # deferred, as in _check_model

    from common import models

    gpu = bool(tf.config.list_physical_devices("GPU"))
    params = models.resolve_params(cfg.model.name, cfg.model.params, gpu=gpu, jit_compile=cfg.training.jit_compile)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, params=params))


def config_from_dict(values: dict[str, Any] | None, *, name: str, check_model: bool = True) -> ExperimentConfig:
    """Resolve an experiment config from plain data.

    Parameters
    ----------
    values : dict or None
        Parsed YAML with the sections ``features``, ``task``, ``model``, ``data``, ``training``.
    name : str
        Experiment name (the config file's stem).
    check_model : bool
        Check ``model.name`` against the model registry and resolve the machine-dependent
        ``model.params`` (``auto``, see :class:`ModelConfig`) for the GPUs TensorFlow sees here
        (imports Keras and TensorFlow); ``False`` leaves ``model.params`` as given.

    Raises
    ------
    ConfigError
        Unknown section or key, wrong type, unknown task or model name, value out of range,
        a model parameter that conflicts with ``training.jit_compile``.
    """
    values = dict(values or {})
    if not isinstance(name, str) or not name:
        raise ConfigError("experiment name must be a non-empty string")
    unknown = sorted(set(values) - {"features", *_SECTIONS})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section (known: {['features', *_SECTIONS]})")
    features = values.get("features") or {}
    if not isinstance(features, dict):
        raise ConfigError(f"features: expected a mapping, got {features!r}")
    sections = {key: _build(cls, values.get(key), key) for key, cls in _SECTIONS.items()}
    cfg = ExperimentConfig(name=name, features=FeatureSettings.from_dict(features), **sections)
    _check_ranges(cfg)
    _check_task(cfg.task)
    if check_model:
        _check_model(cfg.model.name, cfg.features)
        cfg = _resolve_model_params(cfg)
    return cfg


def load_config(path: str | Path, *, check_model: bool = True) -> ExperimentConfig:
    """Read and resolve ``experiments/configs/<name>.yaml``; the name is the file stem.

    Raises
    ------
    ConfigError
        Missing or unparsable file (named), or any error of :func:`config_from_dict`.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read experiment config ({exc.strerror})") from exc
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        return config_from_dict(values, name=path.stem, check_model=check_model)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
