"""One module per method: its config and its layer, registered by name in ``moore.config.METHODS``."""

from .base import AdapterLayer, is_linear, linear_weight
from .full import FullFinetuneConfig
from .hra import HraConfig, HraLinear
from .hydralora import HydraLoraConfig, HydraLoraLinear
from .lora import LoraConfig, LoraLinear
from .loramoe import LoraMoeConfig, LoraMoeLinear
from .mixlora import MixLoraConfig, MixLoraLinear
from .moore import MooreConfig, MooreLinear
from .mosld import MosldConfig, MosldLinear
from .mtl_lora import MtlLoraConfig, MtlLoraLinear
from .omoe import OmoeConfig, OmoeLinear

__all__ = [
    "AdapterLayer", "FullFinetuneConfig", "HraConfig", "HraLinear", "HydraLoraConfig", "HydraLoraLinear",
    "LoraConfig", "LoraLinear", "LoraMoeConfig", "LoraMoeLinear", "MixLoraConfig", "MixLoraLinear",
    "MooreConfig", "MooreLinear", "MosldConfig", "MosldLinear", "MtlLoraConfig", "MtlLoraLinear",
    "OmoeConfig", "OmoeLinear", "is_linear", "linear_weight",
]
