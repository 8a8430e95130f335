"""LoRA: y = W x + B A x · α/r, B zero-init (Hu et al.)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..config import register_method
from .lowrank import LowRankConfig, LowRankLayer, kaiming


@dataclass
class LoraConfig(LowRankConfig):
    method: ClassVar[str] = "lora"

    def trainable_parameters_per_layer(self, in_features: int, out_features: int, **_) -> int:
        return self.r * (in_features + out_features)


class LoraLinear(LowRankLayer):
    adapter_parameter_names = ("lora_A", "lora_B")
    input_independent = True

    def __init__(self, base_layer, config: LoraConfig, routing):
        super().__init__(base_layer, config, routing)
        self.lora_A = self.param(kaiming(config.r, self.in_features))  # (r, Din)
        self.lora_B = self.param(torch.zeros(self.out_features, config.r))  # (Dout, r)

    def delta(self, x):
        return F.linear(F.linear(self.dropout(x), self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))

    def delta_weight(self, task_id):
        return self.lora_B @ self.lora_A


register_method(LoraConfig, LoraLinear)
