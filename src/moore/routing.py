"""Task routing: how the task ids of a batch reach every adapter layer.

A model's forward signature is fixed, so the wrapper parks the batch's ``task_ids`` in one
``TaskRouting`` object shared by all its adapter layers for the duration of the forward. Two
things can run a layer outside that window, and both are handled here:

- activation (gradient) checkpointing re-runs blocks during backward: ``routed_checkpoint`` wraps
  the checkpoint function so the re-run sees the ids captured at forward time;
- ``generate`` expands the batch (beams, several return sequences): a layer that receives
  ``n`` times as many rows as there are ids repeats each id ``n`` times, which is how
  transformers expands inputs (``repeat_interleave`` on dim 0). The same rule covers layers that
  see tokens flattened to ``(B·T, D)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class TaskRouting:
    """The task ids of the batch that is being run (None: an unseen task)."""

    def __init__(self, num_tasks: int):
        self.num_tasks = num_tasks
        self.task_ids: torch.Tensor | None = None

    @contextmanager
    def use(self, task_ids: torch.Tensor | None) -> Iterator[None]:
        previous, self.task_ids = self.task_ids, task_ids
        try:
            yield
        finally:
            self.task_ids = previous

    def ids_for(self, num_rows: int, where: str = "layer") -> torch.Tensor | None:
        """The task id (or mixture weights) of each of ``num_rows`` rows reaching a layer, or None
        for an unseen task."""
        ids = self.task_ids
        if ids is None or ids.shape[0] == num_rows:
            return ids
        if ids.shape[0] and num_rows % ids.shape[0] == 0:
            return ids.repeat_interleave(num_rows // ids.shape[0], dim=0)
        raise ValueError(
            f"{where} received a batch of {num_rows} rows but task_ids has {ids.shape[0]} entries; "
            "pass one task id per sample"
        )

    def validate(self, task_ids, batch_size: int | None, device: torch.device | None) -> torch.Tensor | None:
        """Turn user input into a LongTensor of ids, with errors that name the problem."""
        if task_ids is None:
            return None
        if not torch.is_tensor(task_ids):
            task_ids = torch.as_tensor(task_ids)
        if task_ids.dtype.is_floating_point and task_ids.dim() == 2:
            return self._mixture(task_ids, batch_size, device)
        if task_ids.dtype.is_floating_point or task_ids.dtype == torch.bool or task_ids.is_complex():
            raise TypeError(f"task_ids must hold integers (or be (B, K) float task mixture weights), "
                            f"got dtype {task_ids.dtype} and shape {tuple(task_ids.shape)}")
        if task_ids.dim() == 0:
            task_ids = task_ids.reshape(1).expand(batch_size or 1)
        if task_ids.dim() != 1:
            raise ValueError(f"task_ids must be 1-D (one id per sample), got shape {tuple(task_ids.shape)}")
        if batch_size is not None and task_ids.numel() != batch_size:
            raise ValueError(f"task_ids has {task_ids.numel()} entries but the batch has {batch_size} samples")
        if task_ids.numel():
            low, high = int(task_ids.min()), int(task_ids.max())
            if low < 0 or high >= self.num_tasks:
                bad = low if low < 0 else high
                raise ValueError(
                    f"task id {bad} is out of range: this adapter has num_tasks={self.num_tasks} "
                    f"(valid ids 0..{self.num_tasks - 1}); use task_ids=None for an unseen task"
                )
        return task_ids.to(device=device, dtype=torch.long)


    def _mixture(self, weights: torch.Tensor, batch_size: int | None, device) -> torch.Tensor:
        """(B, K) task mixture weights: each row non-negative and summing to 1."""
        if weights.shape[1] != self.num_tasks:
            raise ValueError(f"task mixture weights have {weights.shape[1]} columns but this adapter has "
                             f"num_tasks={self.num_tasks}")
        if batch_size is not None and weights.shape[0] != batch_size:
            raise ValueError(f"task_ids has {weights.shape[0]} rows but the batch has {batch_size} samples")
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("task mixture weights must be finite and non-negative")
        sums = weights.double().sum(-1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
            raise ValueError(f"each row of task mixture weights must sum to 1 (got sums {sums[:4].tolist()}...)")
        return weights.to(device=device, dtype=torch.float32)


def routed_checkpoint(checkpoint_fn: Callable, routing: TaskRouting) -> Callable:
    """Wrap a checkpoint function so the recomputation in backward sees the forward's task ids."""
    if getattr(checkpoint_fn, "_moore_routing", None) is routing:
        return checkpoint_fn

    @functools.wraps(checkpoint_fn)
    def checkpoint(function, *args, **kwargs):
        task_ids = routing.task_ids

        def function_with_task_ids(*inner_args, **inner_kwargs):
            with routing.use(task_ids):
                return function(*inner_args, **inner_kwargs)

        return checkpoint_fn(function_with_task_ids, *args, **kwargs)

    checkpoint._moore_routing = routing
    return checkpoint


def route_checkpointed_modules(model: nn.Module, routing: TaskRouting) -> None:
    """Wrap the checkpoint function of every transformers block that has one set.

    Called at each forward, so it also covers checkpointing switched on after the wrapper was built
    (``model.gradient_checkpointing_enable()``, or the Trainer doing it).
    """
    for module in model.modules():
        fn = module.__dict__.get("_gradient_checkpointing_func")
        if fn is not None and getattr(fn, "_moore_routing", None) is not routing:
            module._gradient_checkpointing_func = routed_checkpoint(fn, routing)
