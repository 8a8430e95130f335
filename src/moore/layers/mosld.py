"""MoSLD: one shared B, per-expert A_m: y = W x + B · dropout(Σ_m softmax(S x)_m A_m x) · α/r."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..config import register_method
from .lowrank import LowRankLayer, MixtureConfig, kaiming


@dataclass
class MosldConfig(MixtureConfig):
    method: ClassVar[str] = "mosld"

    def trainable_parameters_per_layer(self, in_features: int, out_features: int, **_) -> int:
        m = self.num_experts
        return m * in_features + (out_features + m * in_features) * self.r


class MosldLinear(LowRankLayer):
    adapter_parameter_names = ("router", "lora_A", "lora_B")

    def __init__(self, base_layer, config: MosldConfig, routing):
        super().__init__(base_layer, config, routing)
        m, r = config.num_experts, config.r
        self.rank = r
        self.router = self.param(kaiming(m, self.in_features))  # (M, Din)
        self.lora_A = self.param(kaiming(m * r, self.in_features))  # (M·r, Din)
        self.lora_B = self.param(torch.zeros(self.out_features, r))  # shared B: (Dout, r)

    def delta(self, x):
        gates = self.softmax_router(self.router, x)  # (..., M)
        h = F.linear(x, self.lora_A.to(x.dtype)).unflatten(-1, (-1, self.rank))  # (..., M, r)
        mixed = (h * gates.unsqueeze(-1).to(h.dtype)).sum(-2)  # (..., r)
        return F.linear(self.dropout(mixed), self.lora_B.to(x.dtype))  # dropout on the shared part


register_method(MosldConfig, MosldLinear)
