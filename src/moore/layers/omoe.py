"""OMoE: softmax-routed LoRA experts whose outputs are orthogonalised (Gram–Schmidt) per token.

    e_m = B_m A_m x,   (e'_1..e'_M) = GS(e_1..e_M),   y = W x + Σ_m softmax(S x)_m e'_m · α/r

Gram–Schmidt runs without normalisation (e'_m keeps the part of e_m orthogonal to e'_1..e'_{m-1}),
so zero-initialised B gives y = W x at init. Each e'_m is a combination Σ_k C_mk e_k of the raw
outputs, and GS needs only their inner products e_mᵀ e_k = h_mᵀ (B_mᵀ B_k) h_k, where h_m = A_m x has
r numbers: so the layer runs GS on each token's (M, M) Gram matrix and mixes in the r-dimensional
space, never forming the (M, Dout) expert outputs per token (that form was ~17× slower per layer).
QR would batch GS, but its gradient is undefined at the rank-deficient start (all e_m = 0).
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
    """(..., M, D) -> the same vectors made mutually orthogonal, in order, norms not normalised.

    The plain form, kept as the reference the layer's coefficient form is tested against.
    """
    basis = []
    for m in range(vectors.shape[-2]):
        v = vectors[..., m, :]
        for b in basis:
            v = v - (v * b).sum(-1, keepdim=True) / ((b * b).sum(-1, keepdim=True) + _EPS) * b
        basis.append(v)
    return torch.stack(basis, dim=-2)


def gram_schmidt_coefficients(gram: torch.Tensor) -> torch.Tensor:
    """The Gram matrix (..., M, M) of vectors e -> C (..., M, M) such that gram_schmidt(e) = C @ e.

    The same steps as gram_schmidt on coefficient rows c, whose inner products are c_aᵀ G c_b.
    """
    num_vectors = gram.shape[-1]
    eye = torch.eye(num_vectors, dtype=gram.dtype, device=gram.device)
    basis = []
    for m in range(num_vectors):
        c = eye[m].expand(gram.shape[:-1])  # (..., M)
        for b in basis:
            gram_b = (gram @ b.unsqueeze(-1)).squeeze(-1)  # G c_b
            c = c - (c * gram_b).sum(-1, keepdim=True) / ((b * gram_b).sum(-1, keepdim=True) + _EPS) * b
        basis.append(c)
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

    def expert_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """h_m = A_m x: (..., Din) -> (..., M, r)."""
        return F.linear(self.dropout(x), self.lora_A.to(x.dtype)).unflatten(-1, (-1, self.rank))

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The raw e_m = B_m h_m, (..., M, Dout): for inspection; the forward pass never forms them."""
        return torch.einsum("...mr,mor->...mo", self.expert_inputs(x), self.lora_B.to(x.dtype))

    def orthogonalisation(self, h: torch.Tensor) -> torch.Tensor:
        """h (..., M, r) -> GS coefficients C (..., M, M) of the expert outputs, in float32.

        Autocast is off here: a Gram matrix rounded to bf16 would lose what GS subtracts.
        """
        with torch.autocast(h.device.type, enabled=False):
            b, h = self.lora_B.float(), h.float()
            cross = torch.einsum("mor,kos->mkrs", b, b)  # (M, M, r, r): B_mᵀ B_k
            gram = torch.einsum("...mr,mkrs,...ks->...mk", h, cross, h)  # (..., M, M): e_mᵀ e_k
            return gram_schmidt_coefficients(gram)

    def delta(self, x):
        gates = self.softmax_router(self.router, x)  # (..., M)
        h = self.expert_inputs(x)  # (..., M, r)
        weights = (gates.unsqueeze(-1) * self.orthogonalisation(h)).sum(-2)  # (..., M): Σ_m g_m C_mk
        mixed = (weights.to(h.dtype).unsqueeze(-1) * h).flatten(-2)  # (..., M·r)
        return F.linear(mixed, self.lora_B.to(x.dtype).permute(1, 0, 2).flatten(1))  # Σ_k w_k B_k h_k


register_method(OmoeConfig, OmoeLinear)
