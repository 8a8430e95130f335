"""Efficiency of every method of a suite, measured side by side in one process, as ratios to the base.

- training step time: forward + backward + AdamW step on one fixed batch (median of repeats);
- inference tokens/s: forward under no_grad (MoORE also merged: H folded into V; and, without
  token routing, for one task: every layer a plain dense matrix);
- memory: the bytes a training step holds: parameters and buffers, gradients and AdamW state of
  what trains, and the activations saved for backward (counted through saved-tensor hooks, so the
  number is exact and does not depend on the allocator or the device).
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from ..config import AdapterConfig
from ..hub import load_base_model
from ..io import write_json
from ..model import get_moore_model
from .provenance import provenance
from .suites import ABLATION, OURS, get_suite, resolve_adapter


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def random_batch(model_kind: str, tokenizer, batch_size: int, length: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (batch_size, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _output(out) -> torch.Tensor:
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_model(model: nn.Module, batch: dict, task_ids, repeats: int, train: bool = True) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    result = {}
    if train and params:
        optimizer = torch.optim.AdamW(params, lr=1e-6)
        model.train()

        def step():
            loss = _output(model(**batch, **task_ids)).float().pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        result["train_step_s"] = _time(step, repeats)
        saved = []

        def pack(t):
            saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = _output(model(**batch, **task_ids)).float().pow(2).mean()
        loss.backward()
        optimizer.step()
        state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        static = _bytes(model.parameters()) + _bytes(model.buffers())
        result["train_memory_bytes"] = static + _bytes(params) + _bytes(state) + sum(saved)
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        seconds = _time(lambda: model(**batch, **task_ids), repeats)
    result["inference_tokens_per_s"] = batch["input_ids"].numel() / seconds
    return result


def suite_inputs(suite, batch_size: int | None = None, length: int | None = None):
    """The suite's base model, its efficiency batch (default 32 × 64) and task ids cycling over its tasks."""
    batch_size = batch_size or suite.efficiency.get("batch_size", 32)
    length = length or suite.efficiency.get("length", 64)
    base, tokenizer, kind = load_base_model(suite.config["model"]["name_or_path"])
    num_tasks = len(suite.config["tasks"])
    return base, random_batch(kind, tokenizer, batch_size, length), {"task_ids": torch.arange(batch_size) % num_tasks}


def adapted_copy(suite, method: str, base: nn.Module):
    """A copy of base adapted with the suite's method (budget-matched as in its runs), and its adapter dict."""
    adapter, _ = resolve_adapter(suite, method, base)
    config = AdapterConfig.from_dict({**adapter, "num_tasks": len(suite.config["tasks"])})
    return get_moore_model(copy.deepcopy(base), config), adapter


def measure_efficiency(suite_name: str, results_dir: Path, batch_size: int | None = None,
                       length: int | None = None, repeats: int = 5) -> dict:
    """One row per method. The batch is the suite's ``efficiency`` setting (default 32 × 64); a
    decoder's is smaller, as its logits over the vocabulary dominate a step's memory."""
    suite = get_suite(suite_name)
    base, batch, task_ids = suite_inputs(suite, batch_size, length)
    batch_size, length = batch["input_ids"].shape
    rows = {}
    reference = copy.deepcopy(base)
    reference.requires_grad_(True)  # the base model's own training step: full fine-tuning cost
    rows["base (full model trains)"] = measure_model(reference, batch, {}, repeats)
    del reference
    frozen = copy.deepcopy(base).requires_grad_(False)
    rows["base"] = measure_model(frozen, batch, {}, repeats, train=False)
    for method in suite.methods:
        if suite.family(method) == ABLATION:
            continue
        model, adapter = adapted_copy(suite, method, base)
        rows[method] = measure_model(model, batch, task_ids, repeats)
        rows[method]["trainable_parameters"] = model.get_nb_trainable_parameters()[0]
        if suite.family(method) == OURS:
            model.merge_adapter()  # H folded into V; the router still runs, so any mix of tasks in a batch
            rows[method + " (merged)"] = measure_model(model, batch, task_ids, repeats, train=False)
            if not adapter.get("sample_dim"):  # no token routing: one task's layers are plain dense matrices
                dense = model.merge_and_unload(task_id=0)
                rows[method + " (merged for one task)"] = measure_model(dense, batch, {}, repeats, train=False)
        del model
        gc.collect()  # one method's model and optimizer state at a time: a 135M decoder × 12 would not fit
    ref_train = rows["base (full model trains)"]
    ref_infer = rows["base"]["inference_tokens_per_s"]
    for name, row in rows.items():
        if "train_step_s" in row:
            row["train_step_ratio"] = row["train_step_s"] / ref_train["train_step_s"]
            row["train_memory_ratio"] = row["train_memory_bytes"] / ref_train["train_memory_bytes"]
        row["inference_ratio"] = row["inference_tokens_per_s"] / ref_infer
    record = {"suite": suite_name, "method": "efficiency", "batch": [batch_size, length], "repeats": repeats,
              "rows": rows, **provenance(f"moore bench {suite_name} --methods efficiency")}
    write_json(results_dir / "efficiency.json", record)
    return record
