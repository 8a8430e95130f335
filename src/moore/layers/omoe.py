"""OMoE: softmax-routed LoRA experts whose outputs are orthogonalised (Gram–Schmidt) per token.

    e_m = B_m A_m x,   (e'_1..e'_M) = GS(e_1..e_M),   y = W x + Σ_m softmax(S x)_m e'_m · α/r

Gram–Schmidt runs without normalisation (e'_m keeps the part of e_m orthogonal to e'_1..e'_{m-1}),
so zero-initialised B gives y = W x at init; it is batched over tokens and loops only over the M
experts, which is sequential by nature: QR would batch it too, but its gradient is undefined at
the rank-deficient start (all e_m = 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..config import register_method
from .lowrank import LowRankLayer, MixtureConfig, kaiming

_EPS = 1e-6


def gram_schmidt(vectors: torch.Tensor) -> torch.Tensor:
    """(..., M, D) -> the same vectors made mutually orthogonal, in order, norms not normalised."""
    basis = []
    for m in range(vectors.shape[-2]):
        v = vectors[..., m, :]
        for b in basis:
            v = v - (v * b).sum(-1, keepdim=True) / ((b * b).sum(-1, keepdim=True) + _EPS) * b
        basis.append(v)
    return torch.stack(basis, dim=-2)


@dataclass
class OmoeConfig(MixtureConfig):
    method: ClassVar[str] = "omoe"

    def trainable_parameters_per_layer(self, in_features: int, out_features: int, **_) -> int:
        m = self.num_experts
        return m * in_features + m * (in_features + out_features) * self.r


class OmoeLinear(LowRankLayer):
    adapter_parameter_names = ("router", "lora_A", "lora_B")

    def __init__(self, base_layer, config: OmoeConfig, routing):
        super().__init__(base_layer, config, routing)
        m, r = config.num_experts, config.r
        self.rank = r
        self.router = self.param(kaiming(m, self.in_features))  # (M, Din)
        self.lora_A = self.param(kaiming(m * r, self.in_features))  # (M·r, Din)
        self.lora_B = self.param(torch.zeros(m, self.out_features, r))  # (M, Dout, r)

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(self.dropout(x), self.lora_A.to(x.dtype)).unflatten(-1, (-1, self.rank))  # (..., M, r)
        return torch.einsum("...mr,mor->...mo", h, self.lora_B.to(x.dtype))  # (..., M, Dout)

    def delta(self, x):
        gates = self.softmax_router(self.router, x)  # (..., M)
        experts = gram_schmidt(self.expert_outputs(x).float())  # (..., M, Dout)
        return (gates.unsqueeze(-1) * experts).sum(-2).to(x.dtype)


register_method(OmoeConfig, OmoeLinear)
