"""MTL-LoRA: task-routed. y = W x + Σ_m softmax(φ_k/τ)_m B_m Λ_k A x · α/r.

Shared A, a task-specific r×r Λ_k (identity init), M heads B_m (zero init), routing weights from
a learned per-task vector φ_k. An unseen task (task_ids=None) uses the mean Λ and the mean φ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..config import register_method
from .lowrank import LowRankLayer, MixtureConfig, kaiming


@dataclass
class MtlLoraConfig(MixtureConfig):
    method: ClassVar[str] = "mtl_lora"

    temperature: float = 0.1

    def validate(self) -> None:
        super().validate()
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    def trainable_parameters_per_layer(self, in_features: int, out_features: int, **_) -> int:
        m, k, r = self.num_experts, self.num_tasks, self.r
        return m * k + (m * out_features + k * r + in_features) * r


class MtlLoraLinear(LowRankLayer):
    adapter_parameter_names = ("task_logits", "task_lambda", "lora_A", "lora_B")

    def __init__(self, base_layer, config: MtlLoraConfig, routing):
        super().__init__(base_layer, config, routing)
        m, r, k = config.num_experts, config.r, config.num_tasks
        self.temperature = config.temperature
        self.task_logits = self.param(torch.zeros(k, m))  # φ: (K, M)
        self.task_lambda = self.param(torch.eye(r).repeat(k, 1, 1))  # Λ: (K, r, r)
        self.lora_A = self.param(kaiming(r, self.in_features))  # (r, Din)
        self.lora_B = self.param(torch.zeros(m, self.out_features, r))  # (M, Dout, r)

    def task_parts(self, task_ids: torch.Tensor | None):
        """Λ_k and the task's mixed head Σ_m w_m B_m, per row, or shared for an unseen task."""
        if task_ids is None:
            lam = self.task_lambda.mean(0, keepdim=True)  # (1, r, r)
            weights = F.softmax(self.task_logits.mean(0, keepdim=True) / self.temperature, dim=-1)  # (1, M)
        else:
            lam = self.task_lambda[task_ids]  # (N, r, r)
            weights = F.softmax(self.task_logits[task_ids] / self.temperature, dim=-1)  # (N, M)
        head = torch.einsum("nm,mor->nor", weights, self.lora_B)  # (N or 1, Dout, r)
        return lam, head

    def delta(self, x):
        lam, head = self.task_parts(self.task_ids_for(x))
        h = F.linear(self.dropout(x), self.lora_A.to(x.dtype))  # (N, ..., r)
        rows = h.reshape(h.shape[0], -1, h.shape[-1])  # (N, T, r)
        rows = rows @ lam.transpose(-1, -2).to(x.dtype)  # Λ_k A x
        out = rows @ head.transpose(-1, -2).to(x.dtype)  # (N, T, Dout)
        return out.reshape(*x.shape[:-1], self.out_features)

    def delta_weight(self, task_id):
        ids = None if task_id is None else torch.tensor([task_id], device=self.lora_A.device)
        lam, head = self.task_parts(ids)
        return head[0] @ lam[0] @ self.lora_A


register_method(MtlLoraConfig, MtlLoraLinear)
