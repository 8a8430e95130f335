"""moore: multi-task adaptation of pre-trained transformers with MoORE and its peers."""

from ._version import __version__  # noqa: E402,F401

from .config import METHODS, AdapterConfig  # noqa: E402
from .layers import (  # noqa: E402
    AdapterLayer,
    FullFinetuneConfig,
    HraConfig,
    HydraLoraConfig,
    LoraConfig,
    LoraMoeConfig,
    MixLoraConfig,
    MooreConfig,
    MooreLinear,
    MosldConfig,
    MtlLoraConfig,
    OmoeConfig,
)
from .budget import count_trainable_parameters, match_budget  # noqa: E402
from .model import MooreModel, find_target_modules, get_moore_model  # noqa: E402

__all__ = [
    "FullFinetuneConfig",
    "HraConfig",
    "HydraLoraConfig",
    "LoraConfig",
    "LoraMoeConfig",
    "MixLoraConfig",
    "MosldConfig",
    "MtlLoraConfig",
    "OmoeConfig",
    "count_trainable_parameters",
    "match_budget",
    "METHODS",
    "AdapterConfig",
    "AdapterLayer",
    "MooreConfig",
    "MooreLinear",
    "MooreModel",
    "find_target_modules",
    "get_moore_model",
]
