"""FSDP (PyTorch's ``fully_shard``): each process holds a 1/N shard of every parameter.

Each transformer block (the classes a transformers model lists in ``_no_split_modules``) is one
unit, the rest of the model (embeddings, heads, final norm) the root unit. Parameters stay in
their own dtype, so the router, the reflections and every other adapter tensor stay float32;
bf16 comes from autocast as with DDP. The SVD factors are buffers: every process keeps them whole.

What differs from DDP for the trainer, and lives here: the weights are saved, checked and
restored whole (``full_parameters`` gathers them on every process; ``load_full_state`` scatters),
and the optimizer state is checkpointed in its full form, keyed by parameter name.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# torch.distributed.fsdp and .checkpoint are imported where used: together they add over a second to
# every `moore` command's start, and only FSDP runs need them.


def block_classes(model: nn.Module) -> set[str]:
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def shard(model: nn.Module) -> nn.Module:
    """``fully_shard`` every transformer block of ``model``, then the model itself (in place)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):
        return model
    blocks = block_classes(model)
    units = [m for m in model.modules() if type(m).__name__ in blocks]
    if not units:
        raise ValueError(f"FSDP: no transformer block found to shard in {type(model).__name__} "
                         f"(looked for the classes in _no_split_modules: {sorted(blocks) or 'none listed'})")
    for unit in units:
        fully_shard(unit)
    fully_shard(model)
    return model


def is_sharded(model: nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")  # not imported: nothing can be sharded yet
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


@contextmanager
def full_parameters(model: nn.Module) -> Iterator[None]:
    """Every parameter whole on every process (a collective: all processes enter), read-only:
    writes to them are lost when the shards come back."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


def load_full_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load whole tensors (keyed by the model's parameter names; a subset) into the shards; rank 0's
    ``state`` counts, the other ranks may pass an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                strict=False))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state, whole and keyed by parameter name (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def as_float(value) -> float:
    """A scalar that may be a DTensor (a gradient norm over shards)."""
    return float(value.full_tensor() if hasattr(value, "full_tensor") else value)
