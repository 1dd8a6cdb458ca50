"""ret_toolkit: learned macrostates (RET), VQ-VAE information probes, forecasting and steering."""

from activation_cache._version import __version__

__all__ = ["__version__"]
