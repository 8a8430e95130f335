"""Small pieces both kinds of model use: padding, batching for scoring, pooling."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm


def pad(sequences: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    """(B, T) LongTensor of the sequences padded with ``value`` (on the left for generation)."""
    width = max(len(s) for s in sequences)
    rows = [([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s))) for s in sequences]
    return torch.tensor(rows, dtype=torch.long)


def chunks(items: Sequence, batch_size: int, progress: bool, desc: str) -> Iterator[Sequence]:
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        yield items[start:start + batch_size]


def task_ids_tensor(task_id: int | str | None, n: int, device: torch.device) -> torch.Tensor | str | None:
    """``n`` copies of one task id, None (an unseen task: the mean task embedding), or "infer"
    (each sample's task inferred by the adapter's task classifier)."""
    if task_id is None or task_id == "infer":
        return task_id
    return torch.full((n,), task_id, dtype=torch.long, device=device)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
