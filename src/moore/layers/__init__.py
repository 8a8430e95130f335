"""One module per method: its config and its layer, registered by name in ``moore.config.METHODS``."""

from .base import AdapterLayer, is_linear, linear_weight
from .moore import MooreConfig, MooreLinear

__all__ = ["AdapterLayer", "MooreConfig", "MooreLinear", "is_linear", "linear_weight"]
