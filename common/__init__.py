"""Shared library of the FMA genre toolkit: metadata, audio, features, models, training, metrics.

Nothing here imports ``experiments`` or ``crowdai``; importing a module runs nothing.
"""

from common.errors import ToolkitError

__all__ = ["ToolkitError"]
__version__ = "0.1.0"
