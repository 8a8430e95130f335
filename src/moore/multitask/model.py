"""A base model, its adapter and its tasks: what training and evaluation work on.

``MultiTaskModel`` holds the adapted model (``MooreModel``), the tokenizer and the tasks, in the
order that gives each its task id. What differs between kinds of model (batches, losses, scoring)
lives in a strategy: ``EncoderTasks`` (a head per task) or ``DecoderTasks`` (every task a choice
between continuations). Saving writes the adapter, the heads and the task list, whose digest
travels with the heads so that an edited task list is refused at load.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import save_file
from torch import nn

from ..config import AdapterConfig
from ..data.metrics import METRICS
from ..data.tasks import Example, Task
from ..errors import AdapterFileError
from ..hub import load_from_spec
from ..io import atomic_write, json_sha256, load_safetensors, read_json, write_json
from ..model import WEIGHTS_NAME, MooreModel, get_moore_model
from ..runconfig import ModelSpec, TaskSpec
from .common import chunks, in_order, length_order
from .decoder import DecoderTasks
from .encoder import EncoderTasks

logger = logging.getLogger(__name__)

HEADS_NAME = "heads.safetensors"
TASKS_NAME = "moore_tasks.json"
TASKS_DIGEST = "moore_tasks_sha256"  # safetensors metadata of the heads file
STRATEGIES = {s.kind: s for s in (EncoderTasks, DecoderTasks)}


class MultiTaskModel(nn.Module):
    """An adapted model with its tokenizer and tasks (task id = position in ``tasks``)."""

    def __init__(self, adapted: MooreModel, tokenizer, tasks: Sequence[Task], *, model_spec: ModelSpec,
                 task_specs: Sequence[TaskSpec] | None = None):
        super().__init__()
        if model_spec.kind not in STRATEGIES:
            raise ValueError(f"model_spec.kind must be 'encoder' or 'decoder' once loaded, got {model_spec.kind!r}")
        self.adapted = adapted
        self.tokenizer = tokenizer
        self.tasks = list(tasks)
        self.task_index = {t.name: i for i, t in enumerate(self.tasks)}
        self.model_spec = model_spec
        # without specs (a model built by hand), each task is recorded by name only
        self.task_specs = list(task_specs or [TaskSpec.model_construct(name=t.name) for t in self.tasks])
        self.strategy = STRATEGIES[model_spec.kind](self)
        if len(self.tasks) > adapted.adapter_config.num_tasks:
            raise ValueError(f"{len(self.tasks)} tasks but the adapter has num_tasks="
                             f"{adapted.adapter_config.num_tasks}")
        for task in self.tasks:
            self.strategy.check(task)
        self.heads = self.strategy.heads(adapted.model.config.hidden_size, self.tasks)

    @property
    def kind(self) -> str:
        return self.model_spec.kind

    @property
    def max_length(self) -> int:
        return self.model_spec.max_length

    @property
    def pooling(self) -> str:
        return self.model_spec.pooling

    @classmethod
    def build(cls, model_spec: ModelSpec, adapter: AdapterConfig, tasks: Sequence[Task], *,
              task_specs: Sequence[TaskSpec] | None = None, gradient_checkpointing: bool = False) -> "MultiTaskModel":
        """Load the base model and adapt it."""
        model, tokenizer, kind = load_from_spec(model_spec)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        adapted = get_moore_model(model, adapter)
        return cls(adapted, tokenizer, tasks, model_spec=model_spec.model_copy(update={"kind": kind}),
                   task_specs=task_specs)

    def task_id(self, name: str) -> int:
        if name not in self.task_index:
            raise ValueError(f"task {name!r} is not one of this model's tasks {list(self.task_index)}")
        return self.task_index[name]

    @property
    def device(self) -> torch.device:
        return next(self.adapted.parameters()).device

    # --- training --------------------------------------------------------------------------------
    def collate(self, examples: Sequence[Example], task_names: Sequence[str]) -> dict[str, Any]:
        """A training batch; samples of different tasks mix, each routed by its own task id."""
        return self.strategy.collate(examples, torch.tensor([self.task_index[n] for n in task_names]))

    def _to(self, batch: dict) -> dict:
        device = self.device
        return {k: (v.to(device) if torch.is_tensor(v) else {kk: vv.to(device) for kk, vv in v.items()})
                for k, v in batch.items()}

    def loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        """(sum of per-unit losses, number of units): units are samples for heads, answer tokens
        for decoders, so that a caller can normalise over a whole (accumulated, distributed) batch."""
        return self.strategy.loss(self._to(batch)), self.count_units(batch)

    def count_units(self, batch: dict) -> int:
        """What the loss sums over: samples for heads, answer tokens (labels ≠ -100) for decoders."""
        return self.strategy.count_units(batch)

    def forward(self, batch: dict) -> tuple[torch.Tensor, int]:
        return self.loss(batch)  # so that DistributedDataParallel can wrap the model

    # --- task-free inference and new tasks ---------------------------------------------------------
    def fit_task_classifier(self, data: dict[str, Sequence[Example]], *, max_per_task: int = 1000,
                            batch_size: int = 64, seed: int = 0) -> float:
        """Fit the adapter's task classifier (``task_ids="infer"``) on up to ``max_per_task``
        inputs of each task in ``data`` (task name -> examples, typically the training data);
        returns its accuracy on them."""
        missing = [t.name for t in self.tasks if t.name not in data]
        if missing:
            raise ValueError(f"fit_task_classifier needs inputs of every task; none for {missing}")
        rng = random.Random(seed)

        def batches():
            for name, examples in data.items():
                task, tid = self.tasks[self.task_id(name)], self.task_id(name)
                chosen = rng.sample(list(examples), min(max_per_task, len(examples)))
                for chunk in chunks(chosen, batch_size, False, name):
                    yield self.strategy.inputs(task, chunk), torch.full((len(chunk),), tid)

        return self.adapted.fit_task_classifier(batches())

    @torch.no_grad()
    def task_identification(self, data: dict[str, Sequence[Example]], *, max_per_task: int = 1000,
                            batch_size: int = 64, seed: int = 0) -> dict[str, float]:
        """For each task in ``data``: the share of its inputs the task classifier assigns to it."""
        if self.adapted.task_classifier is None:
            raise ValueError("no task classifier: fit_task_classifier first")
        rng, out = random.Random(seed), {}
        for name, examples in data.items():
            task = self.tasks[self.task_id(name)]
            chosen = rng.sample(list(examples), min(max_per_task, len(examples)))
            hits = 0
            for chunk in chunks(chosen, batch_size, False, name):
                inputs = {k: v.to(self.device) for k, v in self.strategy.inputs(task, chunk).items()}
                hits += int((self.adapted.infer_task_weights(**inputs).argmax(-1) == self.task_id(name)).sum())
            out[name] = hits / max(len(chosen), 1)
        return out

    def add_task(self, task: Task, spec: TaskSpec | None = None) -> int:
        """A new task: one row of the adapter's task table (``MooreModel.add_task``) and, for an
        encoder, a head of its own. Only those train from now on: the existing tasks' outputs stay
        bit-identical. Returns the new task's id."""
        if task.name in self.task_index:
            raise ValueError(f"task {task.name!r} is already task {self.task_index[task.name]} of this model")
        self.strategy.check(task)
        task_id = self.adapted.add_task()
        self.heads.requires_grad_(False)
        new_heads = self.strategy.heads(self.adapted.model.config.hidden_size, [task]).to(self.device)
        for name, head in new_heads.items():
            self.heads[name] = head
        self.tasks.append(task)
        self.task_index[task.name] = task_id
        self.task_specs.append(spec or TaskSpec.model_construct(name=task.name))
        return task_id

    # --- scoring ---------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, task: Task | str, examples: Sequence[Example], *, batch_size: int = 32,
                 scoring: str = "loglik", max_new_tokens: int = 16, task_id: int | None | str = "own",
                 progress: bool = False) -> dict[str, float]:
        """The task's metrics on ``examples``. ``task_id``: "own" (the task's id), an int, or None (an
        unseen task: the mean task embedding). ``scoring``: "loglik" or "generate" for decoders;
        "similarity" scores a regression task zero-shot by the cosine of the two texts' encodings."""
        return self.evaluate_and_predict(task, examples, batch_size=batch_size, scoring=scoring,
                                         max_new_tokens=max_new_tokens, task_id=task_id, progress=progress)[0]

    @torch.no_grad()
    def evaluate_and_predict(self, task: Task | str, examples: Sequence[Example], *, batch_size: int = 32,
                             scoring: str = "loglik", max_new_tokens: int = 16, task_id: int | None | str = "own",
                             progress: bool = False) -> tuple[dict[str, float], list | None]:
        """``evaluate``'s metrics and the predictions they came from (what ``predict`` returns; for
        language modelling each window's summed negative log-likelihood and token count), from one
        scoring pass."""
        task = task if isinstance(task, Task) else self.tasks[self.task_id(task)]
        if task.kind == "language_modeling":
            tid = self.task_id(task.name) if task_id == "own" else task_id
            with self._evaluating():
                value, per_window = self.strategy.perplexity(examples, tid, batch_size, progress)
            return {"perplexity": value}, [list(w) for w in per_window]
        references = [e["label"] for e in examples]
        if "accuracy_norm" in task.metrics and self.kind == "decoder" and scoring == "loglik":
            picks = self._option_picks(task, examples, batch_size, task_id, progress)
            return {m: METRICS[m](picks[m], references) for m in task.metrics if m in picks}, picks[task.metric]
        predictions = self.predict(task, examples, batch_size=batch_size, scoring=scoring,
                                   max_new_tokens=max_new_tokens, task_id=task_id, progress=progress)
        return {m: METRICS[m](predictions, references) for m in task.metrics if m in METRICS}, predictions

    @torch.no_grad()
    def _option_picks(self, task: Task, examples, batch_size: int, task_id, progress: bool) -> dict[str, list[int]]:
        """From one scoring pass: for ``accuracy`` the option of highest summed log-likelihood, for
        ``accuracy_norm`` the option of highest log-likelihood per byte of its text."""
        tid = self.task_id(task.name) if task_id == "own" else task_id
        order = length_order(examples)
        with self._evaluating():
            scores = in_order(self.strategy.option_logliks(task, [examples[i] for i in order], tid, batch_size,
                                                           progress), order)
        picks, normed = [], []
        for row, example in zip(scores, examples):
            sizes = [len((task.answer_prefix + o).encode("utf-8")) for o in self.strategy.options(task, example)]
            picks.append(max(range(len(row)), key=row.__getitem__))
            normed.append(max(range(len(row)), key=lambda k: row[k] / max(sizes[k], 1)))
        return {"accuracy": picks, "accuracy_norm": normed}

    @torch.no_grad()
    def predict(self, task: Task | str, examples: Sequence[Example], *, batch_size: int = 32,
                scoring: str = "loglik", max_new_tokens: int = 16, task_id: int | None | str = "own",
                progress: bool = False) -> list:
        """One prediction per example: a class (or option) index, or a score for regression."""
        task = task if isinstance(task, Task) else self.tasks[self.task_id(task)]
        if task.metric == "accuracy_norm" and self.kind == "decoder" and scoring == "loglik":
            return self._option_picks(task, examples, batch_size, task_id, progress)["accuracy_norm"]
        tid = self.task_id(task.name) if task_id == "own" else task_id
        order = length_order(examples)
        with self._evaluating():
            return in_order(self.strategy.predict(task, [examples[i] for i in order], tid, batch_size=batch_size,
                                                  scoring=scoring, max_new_tokens=max_new_tokens, progress=progress),
                            order)

    @contextmanager
    def _evaluating(self):
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    # --- saving ----------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """The adapter (``save_pretrained``), the task heads and what the tasks are, written atomically.
        The heads file carries a digest of the task list, so tasks reordered (or edited) in
        ``moore_tasks.json`` after saving are refused instead of routing each task to another's weights."""
        path = Path(directory)
        self.adapted.save_pretrained(path)
        # the registered tensors, not state_dict(): under FSDP that hands out shards even while the whole
        # parameters are gathered for saving
        named = [*self.heads.named_parameters(), *self.heads.named_buffers()]
        heads = {k: v.detach().cpu().contiguous() for k, v in named}
        digest = {TASKS_DIGEST: json_sha256(self._task_list())}
        atomic_write(path / HEADS_NAME, lambda tmp: save_file(heads, tmp, metadata=digest))
        write_json(path / TASKS_NAME, {"model": self.model_spec.model_dump(), **self._task_list()})

    def _task_list(self) -> dict:
        return {"tasks": [s.model_dump(exclude_defaults=True) for s in self.task_specs],
                "task_names": [t.name for t in self.tasks]}

    def load_weights(self, directory: str | os.PathLike) -> None:
        """Load adapter and head weights saved by ``save`` into this (same-shaped) model."""
        self.adapted.load_adapter_weights(Path(directory) / WEIGHTS_NAME)
        self._load_heads(directory)

    def saved_weights(self, directory: str | os.PathLike) -> dict[str, torch.Tensor]:
        """What ``save`` wrote into ``directory`` (adapter and heads), keyed by this module's
        parameter names: the form a sharded model loads (``training.sharding.load_full_state``)."""
        adapter, _ = load_safetensors(Path(directory) / WEIGHTS_NAME)
        heads, _ = load_safetensors(Path(directory) / HEADS_NAME)
        state = {**{f"adapted.model.{k}": v for k, v in adapter.items()}, **{f"heads.{k}": v for k, v in heads.items()}}
        unknown = sorted(set(state) - {n for n, _ in self.named_parameters()})
        if unknown:
            raise AdapterFileError(f"{directory}: weights {unknown[:5]} are not parameters of this model")
        return state

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

    @staticmethod
    def read_specs(directory: str | os.PathLike) -> tuple[ModelSpec, list[TaskSpec]]:
        """The saved model spec and task specs, validated as a run config's are."""
        meta = MultiTaskModel.read_metadata(directory)
        try:
            return ModelSpec.model_validate(meta["model"]), [TaskSpec.model_validate(t) for t in meta["tasks"]]
        except ValidationError as e:
            raise AdapterFileError(f"{Path(directory) / TASKS_NAME}: invalid entry ({e.errors()[0]['msg']})") from None

    @classmethod
    def load(cls, directory: str | os.PathLike, tasks: Sequence[Task] | None = None, *,
             is_trainable: bool = False) -> "MultiTaskModel":
        """Rebuild a saved model: the base model from its recorded name, then adapter and heads.
        ``tasks`` default to the saved task list (registered tasks and tasks from files)."""
        spec, task_specs = cls.read_specs(directory)
        tasks = tasks if tasks is not None else [s.build() for s in task_specs]
        model, tokenizer, kind = load_from_spec(spec)
        adapted = MooreModel.from_pretrained(model, directory, is_trainable=is_trainable)
        mt = cls(adapted, tokenizer, tasks, model_spec=spec.model_copy(update={"kind": kind}), task_specs=task_specs)
        mt._load_heads(directory)
        mt.heads.requires_grad_(is_trainable)
        return mt
