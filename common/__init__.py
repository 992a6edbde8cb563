"""Shared library of the FMA genre toolkit: metadata, audio, features, models, training, metrics.

Nothing here imports ``experiments`` or ``crowdai``; importing a module runs nothing
beyond TensorFlow's start-up settings, which must precede its first import (each is
left alone when the caller set it):

* ``TF_ENABLE_ONEDNN_OPTS=1``. TensorFlow enables its oneDNN CPU kernels by default
  only on some Intel CPUs; elsewhere (AMD EPYC, for one) its own kernels run musicnn
  1.7x slower (its 128-frame temporal convolutions 14x).
* ``TF_CPP_MIN_LOG_LEVEL=2`` and a filter of the lines TensorFlow's C++ start-up writes
  before that variable takes effect (:mod:`common.console`): errors show, INFO and
  WARNING chatter does not. ``TF_CPP_MIN_LOG_LEVEL=0`` shows everything.
"""

import os

from common.console import install_tensorflow_import_filter
from common.errors import ToolkitError

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
install_tensorflow_import_filter()

__all__ = ["ToolkitError"]
__version__ = "0.1.0"
