"""Which recurrent layers of a model Keras runs with cuDNN on a GPU.

Keras' TensorFlow backend runs a ``GRU`` with the fused cuDNN kernel only when its
arguments allow it and a GPU is visible (``keras.src.backend.tensorflow.rnn.cudnn_ok``);
otherwise it runs the generic step-by-step loop. :func:`cudnn_gru_report` applies Keras'
own test of the arguments, without the GPU, so that the answer is the same on a CPU.
"""

from __future__ import annotations

import keras


def cudnn_gru_report(model: keras.Model) -> dict[str, bool]:
    """Which GRU layers of ``model`` Keras would run with cuDNN on a GPU.

    A GRU is eligible when Keras' own check of its arguments passes
    (``keras.src.backend.tensorflow.rnn._do_gru_arguments_support_cudnn``: ``tanh``
    activation, ``sigmoid`` recurrent activation, ``unroll=False``, ``use_bias=True``,
    ``reset_after=True``) and the two conditions of ``keras.layers.GRU.inner_loop`` hold
    (``recurrent_dropout == 0``, ``use_cudnn`` not ``False``). The model's inputs carry no
    mask, the one other condition (a right-padded mask).

    Parameters
    ----------
    model : keras.Model
        A built model; its own layers (``model.layers``) are inspected.

    Returns
    -------
    dict
        GRU layer name -> eligible, in layer order (empty without GRUs).

    Raises
    ------
    RuntimeError
        This Keras no longer has the check this function calls.
    """
    try:
        from keras.src.backend.tensorflow.rnn import _do_gru_arguments_support_cudnn as arguments_support_cudnn
    except ImportError as error:
        raise RuntimeError(f"keras {keras.__version__}: keras.src.backend.tensorflow.rnn no longer has "
                           f"_do_gru_arguments_support_cudnn; common.models.cudnn_gru_report must follow it") from error
    return {
        layer.name: bool(
            arguments_support_cudnn(
                activation=layer.cell.activation,
                recurrent_activation=layer.cell.recurrent_activation,
                unroll=layer.unroll,
                use_bias=layer.cell.use_bias,
                reset_after=layer.cell.reset_after,
            )
            and not layer.cell.recurrent_dropout
            and layer.use_cudnn in ("auto", True)
        )
        for layer in model.layers
        if isinstance(layer, keras.layers.GRU)
    }
