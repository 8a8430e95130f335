"""LoRAMoE: y = W x + Σ_m softmax(S x)_m B_m A_m x · α/r, a dense router over M LoRA experts.

The optional localized balancing loss (LoRAMoE §3.2) splits the experts in two halves and weighs
their importance Q_m (summed router weight) by 1 ∓ δ; the loss is Var(Z)/Mean(Z) with Z = I∘Q.
All samples here are the downstream type, so the second half is the one favoured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..config import register_method
from .lowrank import LowRankLayer, MixtureConfig, kaiming


@dataclass
class LoraMoeConfig(MixtureConfig):
    method: ClassVar[str] = "loramoe"

    balance_loss: bool = False
    balance_delta: float = 0.1

    def trainable_parameters_per_layer(self, in_features: int, out_features: int, **_) -> int:
        m = self.num_experts
        return m * in_features + m * (in_features + out_features) * self.r


def mix_experts(h: torch.Tensor, gates: torch.Tensor, rank: int) -> torch.Tensor:
    """Weigh each expert's rank-r slice of h (..., M·r) by its gate (..., M): one batched op."""
    return (h.unflatten(-1, (-1, rank)) * gates.unsqueeze(-1).to(h.dtype)).flatten(-2)


class LoraMoeLinear(LowRankLayer):
    adapter_parameter_names = ("router", "lora_A", "lora_B")

    def __init__(self, base_layer, config: LoraMoeConfig, routing):
        super().__init__(base_layer, config, routing)
        m, r = config.num_experts, config.r
        self.rank, self.num_experts = r, m
        self.balance_loss, self.balance_delta = config.balance_loss, config.balance_delta
        self.router = self.param(kaiming(m, self.in_features))  # S: (M, Din)
        self.lora_A = self.param(kaiming(m * r, self.in_features))  # [A_1; ...; A_M]: (M·r, Din)
        self.lora_B = self.param(torch.zeros(self.out_features, m * r))  # [B_1 ... B_M]: (Dout, M·r)

    def delta(self, x):
        gates = self.softmax_router(self.router, x)  # (..., M)
        h = F.linear(self.dropout(x), self.lora_A.to(x.dtype))  # (..., M·r)
        if self.training and self.balance_loss:
            self._aux_loss = self.localized_balance(gates)
        return F.linear(mix_experts(h, gates, self.rank), self.lora_B.to(x.dtype))

    def localized_balance(self, gates: torch.Tensor) -> torch.Tensor:
        importance = gates.reshape(-1, self.num_experts).sum(0)  # Q: (M,)
        half = self.num_experts // 2
        weight = torch.full_like(importance, 1 - self.balance_delta)
        weight[half:] = 1 + self.balance_delta
        z = weight * importance
        return z.var(unbiased=False) / z.mean().clamp_min(1e-9)


register_method(LoraMoeConfig, LoraMoeLinear)
