"""HydraLoRA: one shared A, per-expert B_m: y = W x + Σ_m softmax(S x)_m B_m (A x) · α/r."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..config import register_method
from .lowrank import LowRankLayer, MixtureConfig, kaiming


@dataclass
class HydraLoraConfig(MixtureConfig):
    method: ClassVar[str] = "hydralora"

    def trainable_parameters_per_layer(self, in_features: int, out_features: int, **_) -> int:
        m = self.num_experts
        return m * in_features + (m * out_features + in_features) * self.r


class HydraLoraLinear(LowRankLayer):
    adapter_parameter_names = ("router", "lora_A", "lora_B")

    def __init__(self, base_layer, config: HydraLoraConfig, routing):
        super().__init__(base_layer, config, routing)
        m, r = config.num_experts, config.r
        self.router = self.param(kaiming(m, self.in_features))  # (M, Din)
        self.lora_A = self.param(kaiming(r, self.in_features))  # shared A: (r, Din)
        self.lora_B = self.param(torch.zeros(self.out_features, m * r))  # [B_1 ... B_M]: (Dout, M·r)

    def delta(self, x):
        gates = self.softmax_router(self.router, x)  # (..., M)
        ax = F.linear(self.dropout(x), self.lora_A.to(x.dtype))  # A x, once: (..., r)
        h = (ax.unsqueeze(-2) * gates.unsqueeze(-1).to(ax.dtype)).flatten(-2)  # (..., M·r)
        return F.linear(h, self.lora_B.to(x.dtype))


register_method(HydraLoraConfig, HydraLoraLinear)
