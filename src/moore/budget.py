"""Equal trainable-parameter budgets: size a method (rank, reflections...) to match a target count.

Counts are computed from each config's per-layer formula (paper Table 2) over the layers it would
adapt, without building anything, so sizing a method for an 8B model is instant.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from .config import AdapterConfig
from .layers.base import linear_weight
from .model import find_target_modules
from .svd import numerical_rank

def count_trainable_parameters(model: nn.Module, config: AdapterConfig, *,
                               _ranks: dict[tuple[str, str], int] | None = None) -> int:
    """What ``get_moore_model(model, config)`` would train (modules_to_save aside).

    For methods whose size depends on a weight's numerical rank (MoORE drops directions with
    σ ≈ 0), the rank comes from the weight's singular values (``_ranks`` keeps them across the
    many counts of one ``match_budget``)."""
    if config.trains_base_model:
        return sum(p.numel() for p in model.parameters())
    ranks = {} if _ranks is None else _ranks
    total = 0
    for name in find_target_modules(model, config):
        weight = linear_weight(model.get_submodule(name))
        dout, din = weight.shape
        extra = {}
        if config.counts_numerical_rank:
            key = (name, config.svd_dtype)
            if key not in ranks:
                ranks[key] = numerical_rank(weight, config.svd_dtype)  # only rank-aware configs have svd_dtype
            extra["rank"] = ranks[key]
        total += config.trainable_parameters_per_layer(din, dout, module_name=name, **extra)
    return total


def match_budget(model: nn.Module, config: AdapterConfig, budget: int, field: str | None = None,
                 max_value: int = 4096) -> AdapterConfig:
    """A copy of ``config`` whose size field makes its count closest to ``budget``.

    The count grows monotonically with the field, so a binary search finds the crossing; of the
    two values around it, the closer one wins. Values the config refuses (odd reflection counts)
    are skipped.
    """
    field = field or config.size_field
    if field is None:
        raise ValueError(f"method {config.method!r} has no size field to match a budget with")

    ranks: dict[tuple[str, str], int] = {}

    def count(value: int) -> int | None:
        try:
            return count_trainable_parameters(model, dataclasses.replace(config, **{field: value}), _ranks=ranks)
        except ValueError:
            return None

    candidates = []
    low, high = 1, max_value
    while low <= high:  # smallest value whose count reaches the budget
        mid = (low + high) // 2
        c = count(mid)
        if c is None:  # a value the config refuses (odd reflections): its neighbour decides
            c = count(mid + 1)
        if c is not None and c >= budget:
            high = mid - 1
        else:
            low = mid + 1
    for value in (low - 2, low - 1, low, low + 1):
        c = count(value) if value >= 1 else None
        if c is not None:
            candidates.append((abs(c - budget), value))
    if not candidates:
        raise ValueError(f"no value of {field} gives a valid {config.method} config")
    return dataclasses.replace(config, **{field: min(candidates)[1]})
