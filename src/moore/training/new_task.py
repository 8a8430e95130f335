"""A task added to a trained adapter (``moore add-task``): train its task-table row (and, for an
encoder, its head) on its examples alone; every other weight is frozen, so the tasks the adapter
already had keep their outputs bit for bit."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..data.tasks import Example, Task
from ..errors import TrainingDivergedError
from ..multitask import MultiTaskModel
from ..runconfig import TaskSpec

logger = logging.getLogger(__name__)


def add_and_train_task(model: MultiTaskModel, task: Task, examples: Sequence[Example], *, spec: TaskSpec | None = None,
                       steps: int = 200, lr: float = 1e-2, batch_size: int = 16, seed: int = 0,
                       max_grad_norm: float = 1.0, progress: bool = True) -> list[float]:
    """``model.add_task(task)``, then ``train_trainable`` on its examples; returns the losses."""
    if not examples:
        raise ValueError(f"no examples to train task {task.name!r} on")
    model.add_task(task, spec)
    return train_trainable(model, task, examples, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                           max_grad_norm=max_grad_norm, progress=progress)


def train_trainable(model: MultiTaskModel, task: Task, examples: Sequence[Example], *, steps: int, lr: float,
                    batch_size: int, seed: int = 0, max_grad_norm: float = 1.0, progress: bool = False) -> list[float]:
    """``steps`` AdamW steps on whatever parameters of ``model`` are trainable, on batches drawn from
    ``examples`` of ``task`` (with replacement, seeded); returns the losses. Leaves the model in eval mode."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for step in tqdm(range(steps), desc=f"task {task.name}", disable=not progress):
        picks = torch.randint(len(examples), (batch_size,), generator=generator).tolist()
        summed, units = model(model.collate([examples[i] for i in picks], [task.name] * batch_size))
        loss = summed / max(units, 1)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"training task {task.name!r}: the loss is {loss.item()} at step {step + 1} "
                                        f"(lr {lr:g}); lower --lr")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    if losses:
        logger.info("task %s: %d steps, loss %.4f -> %.4f", task.name, steps, losses[0], losses[-1])
    return losses
