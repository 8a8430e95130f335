"""Encoders: one linear head per classification or regression task on the pooled encoding.

The heads train and are saved with the adapter. A regression task without a head (a zero-shot
probe such as STS) is scored as sentence encoders are: by the cosine of the two texts' encodings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.tasks import Example, Task
from ..errors import ConfigError
from .common import chunks, mean_pool, task_ids_tensor


class EncoderTasks:
    """How an encoder batches, trains and scores its tasks."""

    kind = "encoder"

    def __init__(self, model: nn.Module):
        self.model = model  # the MultiTaskModel: its adapted model, tokenizer, tasks and heads

    def check(self, task: Task) -> None:
        if task.kind not in ("classification", "regression"):
            raise ConfigError(f"task {task.name!r} ({task.kind}) needs a decoder model; an encoder scores "
                             "classification and regression tasks")

    def heads(self, hidden: int, tasks: Sequence[Task]) -> nn.ModuleDict:
        return nn.ModuleDict({t.name: nn.Linear(hidden, t.num_labels) for t in tasks})

    # --- batches and the loss ------------------------------------------------------------------
    def tokenize(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Tokenize single texts and text pairs (a mixed batch may hold both), then pad together."""
        m = self.model
        features = [m.tokenizer(e["text"], e.get("text_pair"), truncation=True, max_length=m.max_length)
                    for e in examples]
        return m.tokenizer.pad(features, padding=True, return_tensors="pt")

    def inputs(self, task: Task, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """The model inputs of examples (what the task classifier learns to tell apart)."""
        return dict(self.tokenize(examples))

    def collate(self, examples: Sequence[Example], task_ids: torch.Tensor) -> dict[str, Any]:
        labels = torch.tensor([float(e["label"]) for e in examples])
        return {"inputs": dict(self.tokenize(examples)), "labels": labels, "task_ids": task_ids}

    def encode(self, inputs: dict, task_ids: torch.Tensor | None) -> torch.Tensor:
        """Pooled encodings (B, H)."""
        hidden = self.model.adapted(**inputs, task_ids=task_ids).last_hidden_state  # (B, T, H)
        if self.model.pooling == "cls":
            return hidden[:, 0]
        return mean_pool(hidden, inputs["attention_mask"])

    def loss(self, batch: dict) -> torch.Tensor:
        """Sum over the samples of each one's task loss, through its task's head."""
        m = self.model
        task_ids, labels = batch["task_ids"], batch["labels"]
        pooled = self.encode(batch["inputs"], task_ids).float()  # (B, H)
        total = pooled.new_zeros(())
        for t in task_ids.unique().tolist():  # one head per task present: at most K small matmuls
            rows = task_ids == t
            task = m.tasks[t]
            out = m.heads[task.name](pooled[rows])  # (b, C)
            if task.kind == "regression":
                total = total + F.mse_loss(out.squeeze(-1), labels[rows], reduction="sum")
            else:
                total = total + F.cross_entropy(out, labels[rows].long(), reduction="sum")
        # the heads of absent tasks join the graph with weight 0, so that every process has a gradient
        # for the same parameters (FSDP reduces gradients by unit and needs every rank to bring each one)
        present = set(task_ids.unique().tolist())
        absent = [p for t, task in enumerate(m.tasks) if t not in present for p in m.heads[task.name].parameters()]
        return total + sum(p.sum() for p in absent) * 0.0 if absent else total

    def count_units(self, batch: dict) -> int:
        return len(batch["task_ids"])

    # --- scoring ---------------------------------------------------------------------------------
    def predict(self, task: Task, examples: Sequence[Example], task_id: int | None, *, batch_size: int,
                scoring: str, progress: bool, **_) -> list:
        if scoring == "similarity":
            return self.similarities(examples, task_id, batch_size)
        m, out = self.model, []
        for chunk in chunks(examples, batch_size, progress, task.name):
            inputs = {k: v.to(m.device) for k, v in self.tokenize(chunk).items()}
            logits = m.heads[task.name](self.encode(inputs, task_ids_tensor(task_id, len(chunk), m.device)).float())
            out += logits.squeeze(-1).tolist() if task.kind == "regression" else logits.argmax(-1).tolist()
        return out

    def similarities(self, examples: Sequence[Example], task_id: int | None, batch_size: int) -> list[float]:
        """Cosine similarity of the two texts' encodings, for each example."""
        m, out = self.model, []
        for chunk in chunks(examples, batch_size, False, "similarity"):
            a, b = ([{"text": e[k]} for e in chunk] for k in ("text", "text_pair"))
            ea, eb = ({k: v.to(m.device) for k, v in self.tokenize(x).items()} for x in (a, b))
            ids = task_ids_tensor(task_id, len(chunk), m.device)
            out += F.cosine_similarity(self.encode(ea, ids).float(), self.encode(eb, ids).float()).tolist()
        return out
