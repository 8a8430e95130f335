"""A base model, its adapter and its tasks: batching, losses, scoring, saving.

``MultiTaskModel`` is what training and evaluation work on. It holds the adapted model
(``MooreModel``), the tokenizer and the tasks, in the order that gives each its task id.

- Encoders: each classification or regression task has its own linear head on the pooled
  encoding; the heads train and are saved with the adapter.
- Decoders: every task is a choice between continuations of a prompt. Training puts the loss
  on the answer tokens only: the prompt is masked and padding is excluded. Scoring is by
  option log-likelihood (the default; from the logits of the label tokens) or by generation
  with answer extraction. Language-modelling tasks are scored by perplexity.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from .config import AdapterConfig
from .data.metrics import METRICS, perplexity
from .data.tasks import Example, Task
from .errors import AdapterFileError
from .io import atomic_write, json_sha256, load_safetensors, read_json, write_json
from .hub import load_from_spec
from .model import WEIGHTS_NAME, MooreModel, get_moore_model

logger = logging.getLogger(__name__)

HEADS_NAME = "heads.safetensors"
TASKS_NAME = "moore_tasks.json"
TASKS_DIGEST = "moore_tasks_sha256"  # safetensors metadata of the heads file
# --- the model ------------------------------------------------------------------------------------
def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)


class MultiTaskModel(nn.Module):
    """An adapted model with its tokenizer and tasks (task id = position in ``tasks``)."""

    def __init__(self, adapted: MooreModel, tokenizer, tasks: Sequence[Task], *, kind: str,
                 max_length: int = 128, pooling: str = "mean", model_spec: dict | None = None,
                 task_specs: Sequence[dict] | None = None):
        super().__init__()
        if kind not in ("encoder", "decoder"):
            raise ValueError(f"kind must be 'encoder' or 'decoder', got {kind!r}")
        self.adapted = adapted
        self.tokenizer = tokenizer
        self.tasks = list(tasks)
        self.kind = kind
        self.max_length = max_length
        self.pooling = pooling
        self.model_spec = dict(model_spec or {})
        self.task_specs = list(task_specs or [{"name": t.name} for t in self.tasks])
        if len(self.tasks) > adapted.adapter_config.num_tasks:
            raise ValueError(f"{len(self.tasks)} tasks but the adapter has num_tasks="
                             f"{adapted.adapter_config.num_tasks}")
        for task in self.tasks:
            self._check_task(task)
        hidden = adapted.model.config.hidden_size
        self.heads = nn.ModuleDict({
            t.name: nn.Linear(hidden, t.num_labels) for t in self.tasks
            if kind == "encoder" and t.kind in ("classification", "regression")
        })

    def _check_task(self, task: Task) -> None:
        if self.kind == "encoder" and task.kind not in ("classification", "regression"):
            raise ValueError(f"task {task.name!r} ({task.kind}) needs a decoder model; an encoder scores "
                             "classification and regression tasks")
        if self.kind == "decoder" and task.kind == "regression":
            raise ValueError(f"task {task.name!r} is a regression task: use an encoder model for it")
        if self.kind == "decoder" and task.kind == "classification" and not task.template:
            raise ValueError(f"task {task.name!r} has no prompt template, which a decoder needs")

    @classmethod
    def build(cls, model_spec: dict, adapter: dict | AdapterConfig, tasks: Sequence[Task], *,
              task_specs: Sequence[dict] | None = None, num_tasks: int | None = None,
              gradient_checkpointing: bool = False) -> "MultiTaskModel":
        """Load the base model and adapt it; ``adapter`` is an adapter config or its dict."""
        model, tokenizer, kind = load_from_spec(model_spec)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if isinstance(adapter, dict):
            adapter = AdapterConfig.from_dict({**adapter, "num_tasks": num_tasks or len(tasks)})
        adapted = get_moore_model(model, adapter)
        return cls(adapted, tokenizer, tasks, kind=kind, max_length=model_spec.get("max_length", 128),
                   pooling=model_spec.get("pooling", "mean"), model_spec={**model_spec, "kind": kind},
                   task_specs=task_specs)

    def task_id(self, name: str) -> int:
        for i, task in enumerate(self.tasks):
            if task.name == name:
                return i
        raise ValueError(f"task {name!r} is not one of this model's tasks {[t.name for t in self.tasks]}")

    @property
    def device(self) -> torch.device:
        return next(self.adapted.parameters()).device

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # --- batches ---------------------------------------------------------------------------------
    def _encode_pairs(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Tokenize single texts and text pairs (a mixed batch may hold both), then pad together."""
        features = [self.tokenizer(e["text"], e.get("text_pair"), truncation=True, max_length=self.max_length)
                    for e in examples]
        return self.tokenizer.pad(features, padding=True, return_tensors="pt")

    def _prompt(self, task: Task, example: Example) -> str:
        if task.kind == "multiple_choice" and not task.template:
            return example["prompt"]
        return task.template.format(**example)

    def _options(self, task: Task, example: Example) -> list[str]:
        return list(example["options"]) if task.kind == "multiple_choice" else list(task.label_names)

    def _ids(self, text: str, special: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def _decoder_sequence(self, task: Task, example: Example) -> tuple[list[int], list[int]]:
        """(input ids, labels) with -100 on the prompt: the loss is on the answer only."""
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        if task.kind == "language_modeling":
            ids = (self._ids(example["text"], True) + eos)[: self.max_length]
            return ids, list(ids)
        answer = self._ids(task.answer_prefix + self._options(task, example)[example["label"]], False) + eos
        prompt = self._ids(self._prompt(task, example), True)
        prompt = prompt[max(0, len(prompt) + len(answer) - self.max_length):]  # cut the prompt's start, never the answer
        return prompt + answer, [-100] * len(prompt) + answer

    def _pad(self, sequences: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
        width = max(len(s) for s in sequences)
        rows = [([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s))) for s in sequences]
        return torch.tensor(rows, dtype=torch.long)

    def collate(self, examples: Sequence[Example], task_names: Sequence[str]) -> dict[str, Any]:
        """A training batch; samples of different tasks mix, each routed by its own task id."""
        task_ids = torch.tensor([self.task_id(n) for n in task_names])
        if self.kind == "encoder":
            batch = dict(self._encode_pairs(examples))
            labels = [float(e["label"]) for e in examples]
            return {"inputs": batch, "labels": torch.tensor(labels), "task_ids": task_ids}
        seqs = [self._decoder_sequence(self.tasks[int(t)], e) for e, t in zip(examples, task_ids)]
        input_ids = self._pad([s for s, _ in seqs], self.tokenizer.pad_token_id)
        labels = self._pad([lab for _, lab in seqs], -100)
        mask = self._pad([[1] * len(s) for s, _ in seqs], 0)
        return {"inputs": {"input_ids": input_ids, "attention_mask": mask}, "labels": labels, "task_ids": task_ids}

    # --- losses ----------------------------------------------------------------------------------
    def _to(self, batch: dict) -> dict:
        device = self.device
        return {k: (v.to(device) if torch.is_tensor(v) else {kk: vv.to(device) for kk, vv in v.items()})
                for k, v in batch.items()}

    def encode(self, inputs: dict, task_ids: torch.Tensor | None) -> torch.Tensor:
        """Pooled encodings (B, H) of an encoder."""
        hidden = self.adapted(**inputs, task_ids=task_ids).last_hidden_state  # (B, T, H)
        if self.pooling == "cls":
            return hidden[:, 0]
        return _mean_pool(hidden, inputs["attention_mask"])

    def loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        """(sum of per-unit losses, number of units): units are samples for heads, answer tokens
        for decoders, so that a caller can normalise over a whole (accumulated, distributed) batch."""
        batch = self._to(batch)
        task_ids, labels = batch["task_ids"], batch["labels"]
        if self.kind == "encoder":
            pooled = self.encode(batch["inputs"], task_ids).float()  # (B, H)
            total = pooled.new_zeros(())
            for t in task_ids.unique().tolist():  # one head per task present: at most K small matmuls
                rows = task_ids == t
                task = self.tasks[t]
                out = self.heads[task.name](pooled[rows])  # (b, C)
                if task.kind == "regression":
                    total = total + F.mse_loss(out.squeeze(-1), labels[rows], reduction="sum")
                else:
                    total = total + F.cross_entropy(out, labels[rows].long(), reduction="sum")
            return total, self.count_units(batch)
        targets = labels[:, 1:]  # (B, T-1): token t predicts token t+1
        positions = (targets != -100).any(0).nonzero().squeeze(1)  # (P,): columns that predict an answer token
        logits = self._logits_at(batch["inputs"], task_ids, positions)  # (B, P, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets[:, positions].flatten(), ignore_index=-100,
                               reduction="sum")
        return loss, self.count_units(batch)

    def _logits_at(self, inputs: dict, task_ids, positions: torch.Tensor) -> torch.Tensor:
        """Logits (B, P, V) at the given sequence positions only, through the model's own
        ``logits_to_keep``: the LM head over every position costs as much as several layers, and
        (B, T, V) floats dominate memory. Models without that argument compute them all."""
        if self._keeps_logits:
            return self.adapted(**inputs, task_ids=task_ids, logits_to_keep=positions).logits
        return self.adapted(**inputs, task_ids=task_ids).logits[:, positions]

    @functools.cached_property
    def _keeps_logits(self) -> bool:  # read once: the loss runs every micro-batch
        return "logits_to_keep" in inspect.signature(self.adapted.model.forward).parameters

    def count_units(self, batch: dict) -> int:
        """What the loss sums over: samples for heads, answer tokens (labels ≠ -100) for decoders."""
        if self.kind == "encoder":
            return len(batch["task_ids"])
        return int((batch["labels"][:, 1:] != -100).sum())

    def forward(self, batch: dict) -> tuple[torch.Tensor, int]:
        return self.loss(batch)  # so that DistributedDataParallel can wrap the model

    # --- scoring ---------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, task: Task | str, examples: Sequence[Example], *, batch_size: int = 32,
                 scoring: str = "loglik", max_new_tokens: int = 16, task_id: int | None | str = "own",
                 progress: bool = False) -> dict[str, float]:
        """The task's metrics on ``examples``. ``task_id``: "own" (the task's id), an int, or None (an
        unseen task: the mean task embedding). ``scoring``: "loglik" or "generate" for decoders;
        "similarity" scores a regression task zero-shot by the cosine of the two texts' encodings."""
        task = task if isinstance(task, Task) else self.tasks[self.task_id(task)]
        tid = self.task_id(task.name) if task_id == "own" else task_id
        was_training = self.training
        self.eval()
        try:
            if task.kind == "language_modeling":
                return {"perplexity": self._perplexity(examples, tid, batch_size, progress)}
            if scoring == "similarity":
                predictions = self._similarities(examples, tid, batch_size)
            elif self.kind == "encoder":
                predictions = self._head_predictions(task, examples, tid, batch_size, progress)
            elif scoring == "generate":
                predictions = self._generated_choices(task, examples, tid, batch_size, max_new_tokens, progress)
            elif scoring == "loglik":
                predictions = self._loglik_choices(task, examples, tid, batch_size, progress)
            else:
                raise ValueError(f"scoring must be 'loglik', 'generate' or 'similarity', got {scoring!r}")
        finally:
            self.train(was_training)
        references = [e["label"] for e in examples]
        return {m: METRICS[m](predictions, references) for m in task.metrics if m in METRICS}

    def _ids_tensor(self, tid, n: int):
        return None if tid is None else torch.full((n,), tid, dtype=torch.long, device=self.device)

    def _batches(self, examples, batch_size, progress, desc):
        starts = range(0, len(examples), batch_size)
        for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
            yield examples[start:start + batch_size]

    def _head_predictions(self, task, examples, tid, batch_size, progress) -> list:
        out = []
        for chunk in self._batches(examples, batch_size, progress, task.name):
            inputs = {k: v.to(self.device) for k, v in self._encode_pairs(chunk).items()}
            logits = self.heads[task.name](self.encode(inputs, self._ids_tensor(tid, len(chunk))).float())
            out += logits.squeeze(-1).tolist() if task.kind == "regression" else logits.argmax(-1).tolist()
        return out

    def _similarities(self, examples, tid, batch_size) -> list[float]:
        if self.kind != "encoder":
            raise ValueError("similarity scoring needs an encoder")
        out = []
        for chunk in self._batches(examples, batch_size, False, "similarity"):
            a, b = ([{"text": e[k]} for e in chunk] for k in ("text", "text_pair"))
            ea, eb = ({k: v.to(self.device) for k, v in self._encode_pairs(x).items()} for x in (a, b))
            ids = self._ids_tensor(tid, len(chunk))
            out += F.cosine_similarity(self.encode(ea, ids).float(), self.encode(eb, ids).float()).tolist()
        return out

    def _loglik_choices(self, task, examples, tid, batch_size, progress) -> list[int]:
        """The option whose answer tokens the model finds most likely given the prompt.

        When all options share their answer tokens but the last (``answer1``..``answer4``, ``true``/
        ``false``), one forward per example scores them all from the logits at that position."""
        requests = []  # (example index, option index, context ids, scored ids)
        for i, example in enumerate(examples):
            prompt = self._ids(self._prompt(task, example), True)
            answers = [self._ids(task.answer_prefix + o, False) for o in self._options(task, example)]
            shared = _common_prefix(answers)
            if all(len(a) == shared + 1 for a in answers):
                requests.append((i, None, prompt + answers[0][:shared], [a[-1] for a in answers]))
            else:
                requests += [(i, k, prompt + a[:-1], a) for k, a in enumerate(answers)]
        scores: dict[int, dict[int, float]] = {}
        for chunk in self._batches(requests, batch_size, progress, task.name):
            contexts = [c[-self.max_length:] for _, _, c, _ in chunk]
            input_ids = self._pad(contexts, self.tokenizer.pad_token_id).to(self.device)
            mask = self._pad([[1] * len(c) for c in contexts], 0).to(self.device)
            # the positions whose next-token logits score an answer token: the last len(scored) of each context
            # (one when the options differ in their last token only: those logits rank them all at once)
            wanted = [list(range(len(c) - (1 if k is None else len(s)), len(c))) for c, (_, k, _, s) in zip(contexts, chunk)]
            positions = sorted({p for row in wanted for p in row})
            column = {p: j for j, p in enumerate(positions)}
            logp = self._logits_at({"input_ids": input_ids, "attention_mask": mask}, self._ids_tensor(tid, len(chunk)),
                                   torch.tensor(positions, device=self.device)).float().log_softmax(-1)  # (B, P, V)
            for row, (i, k, _, scored) in enumerate(chunk):
                cols = torch.tensor([column[p] for p in wanted[row]], device=logp.device)
                if k is None:
                    scores[i] = dict(enumerate(logp[row, cols[0], scored].tolist()))
                else:  # the answer's tokens are the context's last len(scored)-1 tokens plus one
                    value = logp[row, cols, torch.tensor(scored, device=logp.device)].sum().item()
                    scores.setdefault(i, {})[k] = value
        return [max(scores[i], key=scores[i].get) for i in range(len(examples))]

    def _generated_choices(self, task, examples, tid, batch_size, max_new_tokens, progress) -> list[int]:
        """Greedy generation, then the first option the answer names (LLM-Adapters' extraction)."""
        out = []
        for chunk in self._batches(list(examples), batch_size, progress, task.name):
            prompts = [self._ids(self._prompt(task, e), True)[-self.max_length:] for e in chunk]
            input_ids = self._pad(prompts, self.tokenizer.pad_token_id, left=True).to(self.device)
            mask = self._pad([[1] * len(p) for p in prompts], 0, left=True).to(self.device)
            generated = self.adapted.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                              max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                              task_ids=self._ids_tensor(tid, len(chunk)))
            texts = self.tokenizer.batch_decode(generated[:, input_ids.shape[1]:], skip_special_tokens=True)
            out += [extract_choice(text, self._options(task, e)) for text, e in zip(texts, chunk)]
        return out

    def _perplexity(self, examples, tid, batch_size, progress) -> float:
        """Perplexity of the running text in non-overlapping windows of max_length tokens."""
        ids = self._ids("\n".join(e["text"] for e in examples), False)
        windows = [ids[i:i + self.max_length] for i in range(0, len(ids), self.max_length)]
        windows = [w for w in windows if len(w) > 1]
        total, count = 0.0, 0
        for chunk in self._batches(windows, batch_size, progress, "perplexity"):
            input_ids = self._pad(chunk, self.tokenizer.pad_token_id).to(self.device)
            labels = self._pad(chunk, -100).to(self.device)
            mask = (labels != -100).long()
            logits = self.adapted(input_ids=input_ids, attention_mask=mask,
                                  task_ids=self._ids_tensor(tid, len(chunk))).logits
            targets = labels[:, 1:]
            total += F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                                     reduction="sum").item()
            count += int((targets != -100).sum())
        return perplexity(total, count)

    # --- saving ----------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """The adapter (``save_pretrained``), the task heads and what the tasks are, written atomically.
        The heads file carries a digest of the task list, so tasks reordered (or edited) in
        ``moore_tasks.json`` after saving are refused instead of routing each task to another's weights."""
        path = Path(directory)
        self.adapted.save_pretrained(path)
        heads = {k: v.detach().cpu().contiguous() for k, v in self.heads.state_dict().items()}
        digest = {TASKS_DIGEST: json_sha256(self._task_list())}
        atomic_write(path / HEADS_NAME, lambda tmp: save_file(heads, tmp, metadata=digest))
        write_json(path / TASKS_NAME, {"model": self.model_spec, **self._task_list()})

    def _task_list(self) -> dict:
        return {"tasks": self.task_specs, "task_names": [t.name for t in self.tasks]}

    def load_weights(self, directory: str | os.PathLike) -> None:
        """Load adapter and head weights saved by ``save`` into this (same-shaped) model."""
        self.adapted.load_adapter_weights(Path(directory) / WEIGHTS_NAME)
        self._load_heads(directory)

    def _load_heads(self, directory: str | os.PathLike) -> None:
        path = Path(directory) / HEADS_NAME
        heads, metadata = load_safetensors(path)
        saved = metadata.get(TASKS_DIGEST)
        if saved is not None and saved != json_sha256(self._task_list()):
            raise AdapterFileError(
                f"{Path(directory) / TASKS_NAME} does not match the task list {path.name} was saved with (tasks "
                "reordered, renamed or edited after saving): task ids would reach another task's weights"
            )
        own = self.heads.state_dict()
        if set(heads) != set(own):
            raise AdapterFileError(f"{path}: saved heads {sorted(heads)} do not fit this model's {sorted(own)}")
        self.heads.load_state_dict(heads)

    @staticmethod
    def read_metadata(directory: str | os.PathLike) -> dict:
        meta = read_json(directory, TASKS_NAME, "it was not saved by moore train")
        where = Path(directory) / TASKS_NAME
        if not isinstance(meta.get("model"), dict) or not isinstance(meta.get("tasks"), list):
            raise AdapterFileError(f"{where} needs a 'model' object and a 'tasks' list")
        names = [t.get("name") if isinstance(t, dict) else None for t in meta["tasks"]]
        if meta.get("task_names", names) != names:
            raise AdapterFileError(f"{where}: task_names {meta.get('task_names')} disagree with the tasks {names}")
        return meta

    @classmethod
    def load(cls, directory: str | os.PathLike, tasks: Sequence[Task], *, is_trainable: bool = False) -> "MultiTaskModel":
        """Rebuild a saved model: the base model from its recorded name, then adapter and heads."""
        meta = cls.read_metadata(directory)
        spec = meta["model"]
        model, tokenizer, kind = load_from_spec(spec)
        adapted = MooreModel.from_pretrained(model, directory, is_trainable=is_trainable)
        mt = cls(adapted, tokenizer, tasks, kind=kind, max_length=spec.get("max_length", 128),
                 pooling=spec.get("pooling", "mean"), model_spec=spec, task_specs=meta["tasks"])
        mt._load_heads(directory)
        mt.heads.requires_grad_(is_trainable)
        return mt


def _common_prefix(sequences: list[list[int]]) -> int:
    n = 0
    while all(len(s) > n for s in sequences) and len({s[n] for s in sequences}) == 1:
        n += 1
    return n


def extract_choice(text: str, options: Sequence[str]) -> int:
    """Index of the option named first in ``text`` (whole words, case-insensitive), or -1."""
    lowered = text.lower()
    found = []
    for k, option in enumerate(options):
        match = re.search(rf"(?<![\w]){re.escape(option.lower())}(?![\w])", lowered)
        if match:
            found.append((match.start(), -len(option), k))
    return min(found)[2] if found else -1
