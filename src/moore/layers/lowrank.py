"""What the LoRA family shares: the frozen base layer kept whole, plus a low-rank update.

    y = base(x) + delta(dropout(x)) · α/r

Subclasses define ``delta``. Routers are float32 parameters, cast to the activations' dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AdapterConfig, check_non_negative_int
from ..routing import TaskRouting
from .base import AdapterLayer, KeepsBaseLayer, dense_layer, layer_type, linear_weight


@dataclass
class LowRankConfig(AdapterConfig):
    """r: rank of each expert; lora_alpha: the update is scaled by lora_alpha / r."""

    size_field: ClassVar[str] = "r"

    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0

    def validate(self) -> None:
        check_non_negative_int(self, "r")
        if self.r < 1:
            raise ValueError(f"r must be at least 1, got {self.r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")


@dataclass
class MixtureConfig(LowRankConfig):
    """num_experts: M, the experts mixed by the router."""

    num_experts: int = 4

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.num_experts, int) or self.num_experts < 1:
            raise ValueError(f"num_experts must be a positive integer, got {self.num_experts!r}")


def kaiming(*shape: int) -> torch.Tensor:
    t = torch.empty(*shape)
    nn.init.kaiming_uniform_(t, a=math.sqrt(5))
    return t


class LowRankLayer(KeepsBaseLayer, AdapterLayer):
    """Base of the LoRA-family layers: keeps ``base_layer`` (frozen) and adds ``delta``."""

    input_independent = False  # True where one dense update serves every input (plain LoRA)

    def __init__(self, base_layer: nn.Module, config: LowRankConfig, routing: TaskRouting):
        weight = linear_weight(base_layer)
        super().__init__(weight.shape[1], weight.shape[0], None, layer_type(base_layer), routing)
        self.base_layer = base_layer
        self.scaling = config.lora_alpha / config.r
        self.dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout else nn.Identity()
        self._device = weight.device
        self._aux_loss: torch.Tensor | None = None
        self.merged = False

    def param(self, tensor: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(tensor.to(device=self._device, dtype=torch.float32))

    @classmethod
    def from_base(cls, base_layer, config, routing, **context):
        return cls(base_layer, config, routing)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The update before scaling, for input x (..., Din) -> (..., Dout)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        if not self.adapter_enabled:  # disable_adapter(): the base layer alone, and no load-balancing term
            self._aux_loss = None
            return y
        return y + self.delta(x) * self.scaling  # delta applies self.dropout to its expert input

    def auxiliary_loss(self) -> torch.Tensor | None:
        return self._aux_loss

    @staticmethod
    def softmax_router(router: nn.Parameter, x: torch.Tensor) -> torch.Tensor:
        """softmax(S x), computed in float32: (..., M)."""
        return F.softmax(F.linear(x, router.to(x.dtype)).float(), dim=-1)

    # --- merging: only where the update does not depend on the input ------------------------------
    def delta_weight(self, task_id: int | None) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} routes each token, so its update has no single dense form")

    def to_dense(self, task_id: int | None) -> nn.Module:
        weight = linear_weight(self.base_layer)
        dense = weight.float() + self.delta_weight(task_id).float() * self.scaling
        return dense_layer(dense.to(weight.dtype), self.base_layer.bias, self.layer_type)

    def _fold(self, sign: float) -> None:
        weight = linear_weight(self.base_layer)
        delta = self.delta_weight(None).float() * self.scaling * sign
        weight.data.copy_((weight.float() + delta).to(weight.dtype))  # a view for Conv1D: writes through

    @property
    def is_merged(self) -> bool:
        return self.merged

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged and self.input_independent:
            self._fold(+1.0)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self._fold(-1.0)
            self.merged = False
