"""Training a ``MooreModel`` in an unmodified ``transformers.Trainer``.

The model needs nothing special: ``MooreModel.forward(**batch)`` takes ``task_ids`` next to the
base model's own arguments and routes every sample of the batch, also through activation
checkpointing. What the Trainer needs told:

- ``TaskDataCollator`` pads a batch and keeps its ``task_ids`` column (one id per sample);
- ``TrainingArguments(remove_unused_columns=False, label_names=["labels"])``: the wrapper's
  ``forward(*args, task_ids=None, **kwargs)`` does not list the base model's arguments, so the
  Trainer's signature inspection would otherwise drop ``input_ids`` from a ``datasets.Dataset``
  and never compute an evaluation loss; ``trainer_arguments()`` sets both, and
  ``save_strategy="no"``: the Trainer's own checkpoints hold the whole model's ``state_dict``
  (the frozen base included), which safetensors refuses for a model with tied embeddings;
- ``SaveAdapterCallback`` writes the adapter with ``save_pretrained`` (a few MB, loaded by
  ``MooreModel.from_pretrained``) every ``save_steps`` steps into ``checkpoint-N/adapter``, into
  every checkpoint the Trainer saves (with ``save_strategy="steps"``, for a model without tied
  weights: resumable with the optimizer state), and into ``OUTPUT/adapter`` at the end.

``multitask_features`` turns moore tasks into the Trainer's rows (decoders: prompt + answer with
the loss on the answer only), so the same data trains under either trainer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainingArguments

from ..model import MooreModel

ADAPTER_DIR = "adapter"


class TaskDataCollator:
    """Pads ``input_ids`` (with the tokenizer's pad id), ``attention_mask`` (0) and ``labels``
    (-100) on the right, and stacks ``task_ids`` into a LongTensor[B]; other numeric columns are
    stacked as they are."""

    def __init__(self, tokenizer=None, *, pad_token_id: int | None = None, label_pad_token_id: int = -100,
                 pad_to_multiple_of: int | None = None):
        pad = pad_token_id if pad_token_id is not None else getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        if pad is None:
            raise ValueError("TaskDataCollator needs a pad id: pass a tokenizer with pad_token_id or pad_token_id=")
        self.pads = {"input_ids": pad, "attention_mask": 0, "token_type_ids": 0, "labels": label_pad_token_id}
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("TaskDataCollator got an empty batch")
        missing = [i for i, f in enumerate(features) if "task_ids" not in f]
        if missing:
            raise ValueError(f"rows {missing[:5]} of the batch have no 'task_ids': give every row its task id")
        rows = [dict(f) for f in features]
        if "input_ids" in rows[0]:
            for r in rows:
                r.setdefault("attention_mask", [1] * len(r["input_ids"]))
        batch = {}
        for key in rows[0]:
            values = [r[key] for r in rows]
            if key in self.pads and isinstance(values[0], (list, tuple)):  # (B, T), right-padded
                width = max(len(v) for v in values)
                if self.pad_to_multiple_of:
                    width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
                values = [list(v) + [self.pads[key]] * (width - len(v)) for v in values]
            batch[key] = torch.stack(values) if torch.is_tensor(values[0]) else torch.as_tensor(values)
        batch["task_ids"] = batch["task_ids"].long().reshape(-1)
        return batch


def trainer_arguments(output_dir: str | os.PathLike, **kwargs) -> TrainingArguments:
    """``TrainingArguments`` with what a MooreModel needs (see the module's docstring); any
    argument can be given as usual."""
    kwargs.setdefault("remove_unused_columns", False)
    kwargs.setdefault("label_names", ["labels"])
    kwargs.setdefault("save_strategy", "no")
    return TrainingArguments(output_dir=str(output_dir), **kwargs)


class SaveAdapterCallback(TrainerCallback):
    """Writes ``model.save_pretrained`` (adapter files only) into ``checkpoint-N/adapter`` every
    ``save_steps`` steps and whenever the Trainer saves a checkpoint, and into ``OUTPUT/adapter``
    when training ends."""

    def __init__(self, model: MooreModel, save_steps: int | None = None):
        if not isinstance(model, MooreModel):
            raise TypeError(f"SaveAdapterCallback needs a MooreModel, got {type(model).__name__}")
        if save_steps is not None and save_steps < 1:
            raise ValueError(f"save_steps must be a positive number of steps, got {save_steps}")
        self.model = model
        self.save_steps = save_steps

    def _save_checkpoint(self, args, state) -> None:
        if state.is_world_process_zero:
            self.model.save_pretrained(Path(args.output_dir) / f"checkpoint-{state.global_step}" / ADAPTER_DIR)

    def on_step_end(self, args, state, control, **kwargs):
        if self.save_steps and state.global_step % self.save_steps == 0:
            self._save_checkpoint(args, state)

    def on_save(self, args, state, control, **kwargs):
        self._save_checkpoint(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.model.save_pretrained(Path(args.output_dir) / ADAPTER_DIR)


def multitask_features(model, task: str, examples: Sequence[dict]) -> list[dict[str, Any]]:
    """Trainer rows for ``examples`` of one of a ``MultiTaskModel``'s tasks: ``input_ids``,
    ``labels`` and ``task_ids``. Decoders only: an encoder's tasks have heads of their own, which a
    base model's loss does not know."""
    if model.kind != "decoder":
        raise ValueError("multitask_features builds decoder rows (prompt + answer); an encoder's per-task heads "
                         "train under moore's own trainer")
    task_id = model.task_id(task)
    rows = []
    for example in examples:
        input_ids, labels = model.strategy.sequence(model.tasks[task_id], example)
        rows.append({"input_ids": input_ids, "labels": labels, "task_ids": task_id})
    return rows
