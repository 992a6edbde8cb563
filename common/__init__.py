"""Shared library of the FMA genre toolkit: metadata, audio, features, models, training, metrics.

Nothing here imports ``experiments`` or ``crowdai``; importing a module runs nothing
beyond one environment default: ``TF_ENABLE_ONEDNN_OPTS=1`` unless the caller set
it. TensorFlow enables its oneDNN CPU kernels by default only on some Intel CPUs;
elsewhere (AMD EPYC, for one) its own kernels run musicnn 1.7x slower (its 128-frame
temporal convolutions 14x). TensorFlow reads the variable once, when it is first
imported, so it is set here, before any module of this package imports Keras.
"""

import os

from common.errors import ToolkitError

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__all__ = ["ToolkitError"]
__version__ = "0.1.0"
