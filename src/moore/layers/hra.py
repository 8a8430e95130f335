"""HRA (Householder reflection adaptation): y = W H x + b, H a product of r reflections.

H is applied to the input in compact WY form (no D×D matrix, unlike PEFT's HRA, which builds W·H
every step); reflections start in equal pairs so H = I. Matches PEFT's ``HRAConfig`` with
``apply_GS=False`` (its ``hra_u`` holds our reflections as columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..config import AdapterConfig, check_non_negative_int, register_method
from ..householder import apply_householder, fold_into_rows, pair_init
from .base import AdapterLayer, KeepsBaseLayer, dense_layer, layer_type, linear_weight


@dataclass
class HraConfig(AdapterConfig):
    """r: the number of reflections (even, so that H = I at init)."""

    method: ClassVar[str] = "hra"
    size_field: ClassVar[str] = "r"

    r: int = 8

    def validate(self) -> None:
        check_non_negative_int(self, "r")
        if self.r < 2 or self.r % 2:
            raise ValueError(f"r must be a positive even number (reflections start in equal pairs), got {self.r}")

    def trainable_parameters_per_layer(self, in_features: int, out_features: int, **_) -> int:
        return self.r * in_features


class HraLinear(KeepsBaseLayer, AdapterLayer):
    adapter_parameter_names = ("reflections",)

    def __init__(self, base_layer: nn.Module, config: HraConfig, routing):
        weight = linear_weight(base_layer)
        super().__init__(weight.shape[1], weight.shape[0], None, layer_type(base_layer), routing)
        self.base_layer = base_layer
        self.reflections = nn.Parameter(pair_init(config.r, self.in_features).to(weight.device))  # (r, Din)
        self.merged = False

    @classmethod
    def from_base(cls, base_layer, config, routing, **context):
        return cls(base_layer, config, routing)

    def forward(self, x):
        if self.merged or not self.adapter_enabled:
            return self.base_layer(x)
        return self.base_layer(apply_householder(x, self.reflections))  # W (H x) + b

    def _rotated_weight(self, transpose: bool) -> torch.Tensor:
        """W H (or W Hᵀ, which undoes a merge)."""
        return fold_into_rows(linear_weight(self.base_layer), self.reflections.detach(), inverse=transpose)

    @property
    def is_merged(self) -> bool:
        return self.merged

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            linear_weight(self.base_layer).data.copy_(self._rotated_weight(False))
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            linear_weight(self.base_layer).data.copy_(self._rotated_weight(True))
            self.merged = False

    @torch.no_grad()
    def to_dense(self, task_id):
        weight = linear_weight(self.base_layer) if self.merged else self._rotated_weight(False)
        return dense_layer(weight.clone(), self.base_layer.bias, self.layer_type)


register_method(HraConfig, HraLinear)
