"""musicnn (Pons & Serra 2019) in Keras 3, loadable from the published TF-1 checkpoints.

Architecture (read from the paper and the checkpoint's variable names and shapes):

* input: log-mel patches ``(batch, 96, frames)`` (mel axis first, as the feature cache
  stores them), ``log10(1 + 10000 * mel power)`` at 16 kHz, n_fft 512, hop 256;
  the published models were trained on 3-s patches (187 frames); any length works
  because every later stage is convolutional or pooled over time;
* input batch normalisation (the only standardisation);
* musically motivated front-end, five branches, each conv -> ReLU -> batch norm ->
  max over the mel axis: *timbral* filters of 7 frames x 38 and x 67 mel bands
  (40 % and 70 % of 96; time padded by 3 frames on each side, mel axis valid),
  ``int(1.6 * 128) = 204`` filters each; *temporal* filters of 128, 64 and 32 frames
  x 1 band ("same" padding), ``int(1.6 * 32) = 51`` filters each -> 561 channels;
* densely connected mid-end: three 1-D convolutions of 7 frames, 64 filters,
  conv -> ReLU -> batch norm, the second and third with residual connections; the
  front-end output and the three mid-end outputs are concatenated (561 + 3 x 64 = 753);
* back-end: max and mean over time, *interleaved* per channel
  ``[max_0, mean_0, max_1, mean_1, ...]`` (1506, the order of TF-1's flatten of a
  ``(753, 2)`` tensor), batch norm, dropout 0.5, dense 200 + ReLU, batch norm
  (the "penultimate" embedding), dropout 0.5; the registry adds the output layer
  (``logits``: dense ``n_outputs``, then ``activation``).

Each Keras layer is named semantically; :data:`CHECKPOINT_LAYERS` says which TF-1
variable scope fills it; :func:`assign_checkpoint` checks every shape (the tests
check that every checkpoint variable is used exactly once).

For tagging, :func:`musicnn_forward_function` runs one or more published models in one
traced graph without the front-end filters that training left at ~1e-30
(:func:`prune_frontend`; the Keras model is unchanged, for fine-tuning and embeddings).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import keras
import numpy as np

from common.audio import mel_spectrogram
from common.errors import ConfigError, ToolkitError
from common.models.spec import ModelSpec
from common.pretrained import DEFAULT_WEIGHTS_DIR, MUSICNN_CHECKPOINTS, load_musicnn_checkpoint
from common.settings import FeatureSettings

#: Mel bands, frames per 3-s patch and tag count of the published models.
N_MELS = 96
PATCH_FRAMES = 187
N_TAGS = 50

#: The published models' analysis: 16 kHz, n_fft 512, hop 256, 96 Slaney mel bands.
MUSICNN_FEATURES = FeatureSettings(sample_rate=16000, n_fft=512, hop_length=256, n_mels=96,
                                   log_scale="log1p", clip_seconds=3.0, min_seconds=3.0)

#: Keras layer -> TF-1 variable scope in the published checkpoints.
CHECKPOINT_LAYERS: dict[str, str] = {
    "input_bn": "batch_normalization",
    "timbral_74_conv": "conv2d", "timbral_74_bn": "batch_normalization_1",
    "timbral_77_conv": "conv2d_1", "timbral_77_bn": "batch_normalization_2",
    "temporal_128_conv": "conv2d_2", "temporal_128_bn": "batch_normalization_3",
    "temporal_64_conv": "conv2d_3", "temporal_64_bn": "batch_normalization_4",
    "temporal_32_conv": "conv2d_4", "temporal_32_bn": "batch_normalization_5",
    "midend_1_conv": "conv2d_5", "midend_1_bn": "batch_normalization_6",
    "midend_2_conv": "conv2d_6", "midend_2_bn": "batch_normalization_7",
    "midend_3_conv": "conv2d_7", "midend_3_bn": "batch_normalization_8",
    "pool_bn": "batch_normalization_9",
    "penultimate_dense": "dense", "penultimate_bn": "batch_normalization_10",
    "logits": "dense_1",
}

#: The output layer the registry adds (``common.models.layers.classifier_output``).
HEAD_LAYER = "logits"

#: Keras weight order of each layer type, as TF-1 variable names.
_VARIABLES = {
    keras.layers.Conv2D: ("kernel", "bias"),
    keras.layers.Conv1D: ("kernel", "bias"),
    keras.layers.Dense: ("kernel", "bias"),
    keras.layers.BatchNormalization: ("gamma", "beta", "moving_mean", "moving_variance"),
}

#: Name of the embedding layer (200-d, after batch norm) used for transfer learning.
EMBEDDING_LAYER = "penultimate_bn"

#: The tags of each published model, in output order (from musicnn's configuration.py).
MSD_TAGS: tuple[str, ...] = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock",
    "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill", "instrumental",
    "punk", "oldies", "blues", "hard rock", "ambient", "acoustic", "experimental", "female vocalist",
    "guitar", "Hip-Hop", "70s", "party", "country", "easy listening", "sexy", "catchy", "funk",
    "electro", "heavy metal", "Progressive rock", "60s", "rnb", "indie pop", "sad", "House", "happy",
)
MTT_TAGS: tuple[str, ...] = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
    "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
    "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice",
    "weird", "country", "metal", "female voice", "choral",
)
TAGS: dict[str, tuple[str, ...]] = {"MSD_musicnn": MSD_TAGS, "MTT_musicnn": MTT_TAGS}


def musicnn_logmel(y: np.ndarray) -> np.ndarray:
    """musicnn's input representation of a 16-kHz signal.

    ``log10(1 + 10000 * mel)`` of the mel *power* spectrogram (``librosa.feature.melspectrogram``
    defaults, as musicnn computes it), with the mel power rounded to float16 first as
    musicnn does (its arithmetic then runs in float32, as it did under numpy < 2).

    Parameters
    ----------
    y : np.ndarray, shape (n,)
        Mono signal at :data:`MUSICNN_FEATURES` ``.sample_rate`` (16 kHz).

    Returns
    -------
    np.ndarray, shape (96, 1 + n // 256), float32
    """
    mel = mel_spectrogram(y, settings=MUSICNN_FEATURES, power=2.0)
    mel = mel.astype(np.float16).astype(np.float32)
    return np.log10(np.float32(10000.0) * mel + np.float32(1.0))


def patches(logmel: np.ndarray, *, frames: int = PATCH_FRAMES, hop: int = PATCH_FRAMES,
            audio_frames: int | None = None) -> np.ndarray:
    """Cut a log-mel ``(n_mels, n_frames)`` into full patches ``(n_patches, n_mels, frames)``.

    Patch ``i`` starts at frame ``i * hop``; a last incomplete patch is dropped (as
    musicnn does). Returns an empty ``(0, n_mels, frames)`` array when the input is
    shorter than one patch.

    ``audio_frames`` (frames that hold audio, the rest being padding; None: all) keeps only
    the patches inside them, at least the first: the patches of the unpadded audio.
    """
    end = logmel.shape[1] if audio_frames is None else min(logmel.shape[1], max(audio_frames, frames))
    starts = range(0, end - frames + 1, hop)
    return np.stack([logmel[:, start:start + frames] for start in starts]) if len(starts) else \
        np.empty((0, logmel.shape[0], frames), dtype=logmel.dtype)


def musicnn_body(
    x: keras.KerasTensor,
    *,
    frontend_scale: float = 1.6,
    midend_filters: int = 64,
    backend_units: int = 200,
    dropout: float = 0.5,
    pretrained: str | None = None,
    weights_dir: str = str(DEFAULT_WEIGHTS_DIR),
) -> keras.KerasTensor:
    """musicnn up to its penultimate layer (the registry adds the output layer).

    Parameters
    ----------
    x : KerasTensor, shape (batch, n_mels, frames)
        Log-mel crops, mel axis first (``log10(1 + 10000 * mel power)`` for the
        published weights, which need ``n_mels == 96``). No outside standardisation
        is needed: the first layer is a batch norm.
    frontend_scale, midend_filters, backend_units, dropout
        Architecture sizes; the defaults are the published ``MSD_musicnn`` / ``MTT_musicnn``.
    pretrained : {"MSD_musicnn", "MTT_musicnn"}, optional
        Load this checkpoint into every layer built here (all but the output layer).
    weights_dir : str
        Folder written by ``python -m common.pretrained`` (``make weights``).

    Returns
    -------
    KerasTensor, shape (batch, backend_units)
        The penultimate embedding (batch norm, then dropout).
    """
    made: dict[str, keras.layers.Layer] = {}

    def layer(instance: keras.layers.Layer) -> keras.layers.Layer:
        made[instance.name] = instance
        return instance

    def branch(inputs, *, name: str, filters: int, kernel: tuple[int, int], padding: str):
        """Conv2D -> ReLU -> batch norm -> max over the mel axis: ``(b, t, f, 1) -> (b, t, filters)``."""
        y = layer(keras.layers.Conv2D(filters, kernel, padding=padding, activation="relu",
                                      name=f"{name}_conv"))(inputs)
        y = layer(keras.layers.BatchNormalization(name=f"{name}_bn"))(y)
        y = keras.layers.MaxPooling2D(pool_size=(1, y.shape[2]), name=f"{name}_freqmax")(y)
        return keras.layers.Reshape((-1, filters), name=f"{name}_squeeze")(y)

    n_mels = int(x.shape[1])
    if pretrained is not None and n_mels != N_MELS:
        raise ConfigError(f"input_shape: pretrained musicnn needs {N_MELS} mel bands, got {n_mels}")
    x = keras.layers.Permute((2, 1), name="time_first")(x)
    x = keras.layers.Reshape((-1, n_mels, 1), name="add_channel")(x)
    x = layer(keras.layers.BatchNormalization(name="input_bn"))(x)

    padded = keras.layers.ZeroPadding2D(((3, 3), (0, 0)), name="timbral_pad")(x)
    timbral_filters, temporal_filters = int(frontend_scale * 128), int(frontend_scale * 32)
    branches = [
        branch(padded, name=f"timbral_7{round(10 * share)}", filters=timbral_filters,
               kernel=(7, int(share * n_mels)), padding="valid")
        for share in (0.4, 0.7)
    ] + [
        branch(x, name=f"temporal_{length}", filters=temporal_filters, kernel=(length, 1), padding="same")
        for length in (128, 64, 32)
    ]
    dense_features = [keras.layers.Concatenate(name="frontend")(branches)]
    for index in (1, 2, 3):
        y = layer(keras.layers.Conv1D(midend_filters, 7, padding="same", activation="relu",
                                      name=f"midend_{index}_conv"))(dense_features[-1])
        y = layer(keras.layers.BatchNormalization(name=f"midend_{index}_bn"))(y)
        if index > 1:
            y = keras.layers.Add(name=f"midend_{index}_residual")([y, dense_features[-1]])
        dense_features.append(y)
    midend = keras.layers.Concatenate(name="midend")(dense_features)

    channels = int(midend.shape[-1])
    pooled = keras.layers.Concatenate(name="max_mean")([
        keras.layers.Reshape((channels, 1), name="max_pool_column")(
            keras.layers.GlobalMaxPooling1D(name="max_pool")(midend)),
        keras.layers.Reshape((channels, 1), name="mean_pool_column")(
            keras.layers.GlobalAveragePooling1D(name="mean_pool")(midend)),
    ])
    x = keras.layers.Flatten(name="interleave")(pooled)
    x = layer(keras.layers.BatchNormalization(name="pool_bn"))(x)
    x = keras.layers.Dropout(dropout, name="pool_dropout")(x)
    x = layer(keras.layers.Dense(backend_units, activation="relu", name="penultimate_dense"))(x)
    x = layer(keras.layers.BatchNormalization(name=EMBEDDING_LAYER))(x)
    if pretrained is not None:
        assign_checkpoint(made, pretrained, weights_dir=weights_dir)
    return keras.layers.Dropout(dropout, name="penultimate_dropout")(x)


#: The registry entry: log-mel input, normalised by the body's own input batch norm.
MUSICNN_SPEC = ModelSpec(musicnn_body, "logmel", standardize=False)


def assign_checkpoint(
    layers: dict[str, keras.layers.Layer], checkpoint: str, *, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR
) -> set[str]:
    """Fill built ``layers`` (Keras name -> layer) with a published checkpoint.

    Every layer of :data:`CHECKPOINT_LAYERS` present in ``layers`` is filled; the
    others are left alone (:func:`musicnn_body` passes all but the output layer
    ``logits``, so that a new head can be trained).

    Returns
    -------
    set of str
        The checkpoint variables used; each is used once.

    Raises
    ------
    ToolkitError
        Weights missing (the message names ``make weights``), unknown checkpoint,
        or a shape that does not match.
    """
    if checkpoint not in MUSICNN_CHECKPOINTS:
        raise ConfigError(f"model.params.pretrained: {checkpoint!r} is unknown; known: {list(MUSICNN_CHECKPOINTS)}")
    variables = load_musicnn_checkpoint(checkpoint, weights_dir=weights_dir)
    used: list[str] = []
    for layer_name, scope in CHECKPOINT_LAYERS.items():
        if layer_name not in layers:
            continue
        layer = layers[layer_name]
        names = [f"{scope}/{variable}" for variable in _VARIABLES[type(layer)]]
        values = [variables[key] for key in names]
        if isinstance(layer, keras.layers.Conv1D):  # stored by TF-1 as a (7, C, 1, F) Conv2D
            values[0] = values[0][:, :, 0, :]
        expected = [tuple(weight.shape) for weight in layer.weights]
        if [value.shape for value in values] != expected:
            raise ToolkitError(
                f"{checkpoint}: {scope} has shapes {[v.shape for v in values]}, "
                f"layer {layer_name!r} expects {expected}"
            )
        layer.set_weights(values)
        used.extend(names)
    return set(used)


def build_pretrained_musicnn(
    checkpoint: str = "MSD_musicnn", *, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR,
    frames: int = PATCH_FRAMES,
) -> keras.Model:
    """The published 50-tag model, every variable loaded (output layer included).

    Parameters
    ----------
    checkpoint : {"MSD_musicnn", "MTT_musicnn"}
    weights_dir : path-like
    frames : int
        Frames per input patch (187 = 3 s, what the models were trained on).

    Returns
    -------
    keras.Model
        ``(batch, 96, frames)`` log-mel -> ``(batch, 50)`` tag probabilities
        (order: :data:`TAGS` ``[checkpoint]``).
    """
    model = MUSICNN_SPEC.build(name="musicnn", input_shape=(N_MELS, frames), n_outputs=N_TAGS,
                               activation="sigmoid", pretrained=checkpoint, weights_dir=str(weights_dir))
    assign_checkpoint({HEAD_LAYER: model.get_layer(HEAD_LAYER)}, checkpoint, weights_dir=weights_dir)
    return model


def embedding_model(model: keras.Model) -> keras.Model:
    """The 200-d penultimate embedding (after batch norm) of a musicnn model.

    Returns
    -------
    keras.Model
        ``(batch, n_mels, frames) -> (batch, 200)``, sharing ``model``'s layers.
    """
    return keras.Model(model.inputs, model.get_layer(EMBEDDING_LAYER).output, name=f"{model.name}_embedding")



#: The front-end branches in the order the ``frontend`` layer concatenates them.
FRONTEND_BRANCHES: tuple[str, ...] = ("timbral_74", "timbral_77", "temporal_128", "temporal_64", "temporal_32")

#: A front-end filter is left out when it can change its branch's output by at most this.
DEAD_FILTER_TOLERANCE = 1e-6

#: Largest input value: ``log10(1 + 10000 * mel)`` with the mel power rounded to float16 (<= 65504).
MAX_LOGMEL = float(np.log10(1.0 + 1e4 * float(np.finfo(np.float16).max)))


def _bn_affine(layer: keras.layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    """Inference batch norm as ``x * scale + shift``."""
    gamma, beta, mean, variance = (np.asarray(w, dtype=np.float64) for w in layer.get_weights())
    scale = gamma / np.sqrt(variance + layer.epsilon)
    return scale, beta - mean * scale


@dataclasses.dataclass(frozen=True)
class PrunedBranch:
    """One front-end branch with its numerically zero filters left out.

    A filter whose weights are all (numerically) zero outputs ``BN(ReLU(bias))`` at every
    time step, whatever the input: that constant is kept, the convolution is not computed.

    Attributes
    ----------
    name : str
        ``timbral_74``, ..., ``temporal_32``.
    live : np.ndarray, shape (n_live,), int
        Filters computed.
    kernel, bias, scale, shift : np.ndarray
        Of the live filters (kernel ``(kh, kw, 1, n_live)``; batch norm as an affine map).
    dead_values : np.ndarray, shape (n_filters,)
        ``BN(ReLU(bias))`` of every filter (used for the dead ones).
    padding : {"timbral", "same"}
    """

    name: str
    live: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray
    scale: np.ndarray
    shift: np.ndarray
    dead_values: np.ndarray
    padding: str


def prune_frontend(model: keras.Model, *, tolerance: float = DEAD_FILTER_TOLERANCE) -> list[PrunedBranch]:
    """The front-end branches of a musicnn model without their numerically zero filters.

    Training drove most front-end filters of the published models to ~1e-30
    (``MSD_musicnn``: 181 of 204 filters of ``timbral_74``). Filter ``k`` is left out when
    ``sum |W_k| * max |normalised input| * |BN scale_k| <= tolerance``, a bound on how much
    it can change its branch's output for any log-mel input (``0 <= input <= MAX_LOGMEL``).

    Returns
    -------
    list of PrunedBranch
        In :data:`FRONTEND_BRANCHES` order.
    """
    in_scale, in_shift = _bn_affine(model.get_layer("input_bn"))
    max_input = float(np.abs(in_scale).max() * MAX_LOGMEL + np.abs(in_shift).max())
    branches = []
    for name in FRONTEND_BRANCHES:
        kernel, bias = (np.asarray(w, dtype=np.float64) for w in model.get_layer(f"{name}_conv").get_weights())
        scale, shift = _bn_affine(model.get_layer(f"{name}_bn"))
        bound = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0) * max_input * np.abs(scale)
        live = np.flatnonzero(bound > tolerance)
        branches.append(PrunedBranch(
            name=name, live=live, kernel=kernel[..., live].astype(np.float32), bias=bias[live].astype(np.float32),
            scale=scale[live].astype(np.float32), shift=shift[live].astype(np.float32),
            dead_values=(np.maximum(bias, 0.0) * scale + shift).astype(np.float32),
            padding="timbral" if name.startswith("timbral") else "same"))
    return branches


def pruned_forward(model: keras.Model, *, tolerance: float = DEAD_FILTER_TOLERANCE):
    """Inference of a published musicnn model with its numerically zero front-end filters left out.

    Same outputs as ``model(x, training=False)`` (each pruned filter changes its branch by
    at most ``tolerance``), for a fraction of the front end's cost, which is most of the
    model's. The mid-end and back-end are the model's own layers.

    Returns
    -------
    callable
        ``(batch, 96, frames)`` float32 tensor -> ``(batch, 50)`` tensor; trace it with
        ``tf.function`` (see :func:`musicnn_forward_function`).
    """
    import tensorflow as tf

    in_scale, in_shift = (float(v[0]) for v in _bn_affine(model.get_layer("input_bn")))
    branches = prune_frontend(model, tolerance=tolerance)
    backend = keras.Model(model.get_layer("frontend").output, model.output, name=f"{model.name}_backend")

    def branch_output(x, branch: PrunedBranch):
        n_filters = len(branch.dead_values)
        time_steps = tf.shape(x)[1]
        outputs = []
        if len(branch.live):
            inputs = tf.pad(x, [[0, 0], [3, 3], [0, 0], [0, 0]]) if branch.padding == "timbral" else x
            z = tf.nn.conv2d(inputs, branch.kernel, 1, "VALID" if branch.padding == "timbral" else "SAME")
            y = tf.nn.relu(z + branch.bias) * branch.scale + branch.shift
            outputs.append(tf.reduce_max(y, axis=2))
        dead = np.setdiff1d(np.arange(n_filters), branch.live)
        if len(dead):
            outputs.append(tf.broadcast_to(branch.dead_values[dead], [tf.shape(x)[0], time_steps, len(dead)]))
        order = np.argsort(np.concatenate([branch.live, dead]))  # back to the checkpoint's filter order
        return tf.gather(tf.concat(outputs, axis=-1), order, axis=-1)

    def forward(batch):
        x = tf.transpose(batch, (0, 2, 1))[..., None] * in_scale + in_shift  # (b, frames, 96, 1)
        frontend = tf.concat([branch_output(x, branch) for branch in branches], axis=-1)
        return backend(frontend, training=False)

    return forward


@functools.lru_cache(maxsize=4)
def musicnn_forward_function(*models, tolerance: float = DEAD_FILTER_TOLERANCE):
    """Tag probabilities of one or more published musicnn models on one input, one traced graph.

    Each model runs as :func:`pruned_forward`; the outputs are concatenated (musicnn's
    MSD and MTT taggers on the same log-mel batch). Traced once for every batch size;
    cached for the last 4 model tuples.

    Returns
    -------
    callable
        ``(batch, 96, frames)`` float32 array -> ``(batch, 50 * len(models))`` array.
    """
    import tensorflow as tf

    forwards = [pruned_forward(model, tolerance=tolerance) for model in models]
    spec = tf.TensorSpec((None, N_MELS, None), tf.float32)
    traced = tf.function(lambda x: tf.concat([forward(x) for forward in forwards], axis=-1), input_signature=[spec])
    return lambda x: traced(np.asarray(x, dtype=np.float32)).numpy()
