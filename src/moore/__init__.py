"""moore: multi-task adaptation of pre-trained transformers with MoORE and its peers."""

__version__ = "0.1.0"

from .config import METHODS, AdapterConfig  # noqa: E402
from .layers import AdapterLayer, MooreConfig, MooreLinear  # noqa: E402
from .model import MooreModel, find_target_modules, get_moore_model  # noqa: E402

__all__ = [
    "METHODS",
    "AdapterConfig",
    "AdapterLayer",
    "MooreConfig",
    "MooreLinear",
    "MooreModel",
    "find_target_modules",
    "get_moore_model",
]
