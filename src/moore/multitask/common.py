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


def length_order(examples: Sequence[dict]) -> list[int]:
    """Indices of the examples from shortest to longest text. Scored in this order, each batch pads to
    about its own length instead of the longest in a random draw: same scores, less padding."""
    def chars(example: dict) -> int:
        return sum(len(v) if isinstance(v, str) else sum(len(x) for x in v if isinstance(x, str))
                   for v in example.values() if isinstance(v, (str, list, tuple)))
    return sorted(range(len(examples)), key=lambda i: chars(examples[i]))


def in_order(values: Sequence, order: list[int]) -> list:
    """``values`` computed for ``[examples[i] for i in order]``, put back in the examples' order."""
    out = [None] * len(order)
    for position, index in enumerate(order):
        out[index] = values[position]
    return out


def task_ids_tensor(task_id: int | str | None, n: int, device: torch.device) -> torch.Tensor | str | None:
    """``n`` copies of one task id, None (an unseen task: the mean task embedding), or "infer"
    (each sample's task inferred by the adapter's task classifier)."""
    if task_id is None or task_id == "infer":
        return task_id
    return torch.full((n,), task_id, dtype=torch.long, device=device)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
