"""activation_cache: language-model hidden-state trajectories to HDF5.

Everything up to and including the HDF5 trajectory store and the torch datasets
that read it. Knows nothing about RET or VQ (those live in ``ret_toolkit``).
"""

from activation_cache._version import __version__
from activation_cache.errors import InputError

__all__ = ["__version__", "InputError"]
