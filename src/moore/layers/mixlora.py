"""MixLoRA: top-k LoRA experts on the feed-forward layers, plain LoRA on attention.

FFN layer: y = W x + Σ_{m ∈ top-k} ĝ_m B_m A_m x · α/r, with ĝ the top-k softmax weights
renormalised to sum to one, and a Switch-style load-balancing loss M · Σ_m f_m P_m (f_m: share
of routing slots that went to expert m, P_m: its mean router probability). Dispatch is batched:
all experts run as one matmul and the unselected ones get zero weight (experts are low rank, so
this costs less than gathering tokens per expert).

Unlike the MixLoRA paper, whose router picks experts for a whole FFN block, the router here sits
on each FFN linear layer, which works the same on every architecture (BERT splits its FFN over
two modules).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..config import register_method
from .lora import LoraLinear
from .loramoe import mix_experts
from .lowrank import LowRankLayer, MixtureConfig, kaiming

FFN_PATTERN = r"(.*\.)?(mlp|ffn|feed_forward|intermediate)\..*|(.*\.)?output\.dense|.*\.(gate_proj|up_proj|down_proj|fc1|fc2|w1|w2|w3)"
ATTENTION_OUTPUT = re.compile(r".*attention\.output\.dense")


@dataclass
class MixLoraConfig(MixtureConfig):
    """top_k: experts per token; ffn_modules: regex for the FFN layers (default: common names)."""

    method: ClassVar[str] = "mixlora"

    top_k: int = 2
    ffn_modules: str = FFN_PATTERN

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be between 1 and num_experts={self.num_experts}, got {self.top_k}")

    def is_ffn(self, module_name: str) -> bool:
        return re.fullmatch(self.ffn_modules, module_name) is not None and not ATTENTION_OUTPUT.fullmatch(module_name)

    def trainable_parameters_per_layer(self, in_features: int, out_features: int, *, module_name: str = "", **_) -> int:
        lora = self.r * (in_features + out_features)
        if not self.is_ffn(module_name):
            return lora
        return self.num_experts * (in_features + lora)


class MixLoraLinear(LowRankLayer):
    adapter_parameter_names = ("router", "lora_A", "lora_B")

    def __init__(self, base_layer, config: MixLoraConfig, routing):
        super().__init__(base_layer, config, routing)
        m, r = config.num_experts, config.r
        self.rank, self.num_experts, self.top_k = r, m, config.top_k
        self.router = self.param(kaiming(m, self.in_features))  # (M, Din)
        self.lora_A = self.param(kaiming(m * r, self.in_features))  # (M·r, Din)
        self.lora_B = self.param(torch.zeros(self.out_features, m * r))  # (Dout, M·r)

    @classmethod
    def from_base(cls, base_layer, config: MixLoraConfig, routing, *, module_name: str = "", **context):
        if not config.is_ffn(module_name):
            return LoraLinear(base_layer, config, routing)  # attention: plain LoRA
        return cls(base_layer, config, routing)

    def top_k_gates(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.softmax_router(self.router, x)  # (..., M)
        top_values, top_index = probs.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(probs).scatter(-1, top_index, top_values / top_values.sum(-1, keepdim=True))
        if self.training:
            flat_probs = probs.reshape(-1, self.num_experts)
            share = F.one_hot(top_index.reshape(-1), self.num_experts).float().mean(0)  # f_m
            self._aux_loss = self.num_experts * (share * flat_probs.mean(0)).sum()
        return gates

    def delta(self, x):
        gates = self.top_k_gates(x)
        h = F.linear(self.dropout(x), self.lora_A.to(x.dtype))  # (..., M·r)
        return F.linear(mix_experts(h, gates, self.rank), self.lora_B.to(x.dtype))


register_method(MixLoraConfig, MixLoraLinear)
