"""Run configurations: the YAML that ``moore train`` reads, validated once with pydantic.

An unknown key, a task without a metric, an unknown method or a bad adapter field is refused
with the key's path; missing data files are reported by ``check_data`` before any model loads.
"""

from __future__ import annotations

import dataclasses
import os
import re
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from .config import AdapterConfig
from .errors import ConfigError
from .layers.moore import MooreConfig

DEFAULT_METHOD = MooreConfig.method  # the adapter a run config gets when it names none
from .data.readers import read_jsonl
from .data.tasks import KINDS, SPLITS, Task, check_metrics, default_data_dir, get_task


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class ModelSpec(_Strict):
    name_or_path: str = Field(description="a hub id, a local folder, or a packaged alias: minilm, smollm2")
    kind: Literal["auto", "encoder", "decoder"] = "auto"
    gguf_file: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_length: int = Field(128, gt=1)
    pooling: Literal["mean", "cls"] = "mean"


class TaskSpec(_Strict):
    """A registered task by ``name``, or a user's task from JSONL files (``files``)."""

    name: str
    max_train: int | None = Field(None, gt=0, description="train on a fixed random subset of this size")
    max_eval: int | None = Field(None, gt=0, description="evaluate on a fixed random subset of this size")
    max_validation: int | None = Field(None, gt=0, description="validate (checkpoint selection) on a fixed random "
                                       "subset of this size (default: max_eval)")
    # a user's task: JSONL files and what the fields mean
    files: dict[str, str] | None = None
    kind: Literal["classification", "regression", "multiple_choice", "language_modeling"] | None = None
    metrics: list[str] | None = None
    label_names: list[str] | None = None
    text_field: str = "text"
    text_pair_field: str | None = None
    label_field: str = "label"
    options_field: str | None = None
    template: str | None = None
    answer_prefix: str = ""
    answer_format: Literal["label", "text"] = Field("label", description="registered multiple-choice tasks in "
                                                    "LLM-Adapters' format: label (answer1.., true/false, the paper's) or "
                                                    "text (the options' own texts, scored as lm-evaluation-harness does)")
    chat: bool = Field(False, description="decoders: the prompt as the user's turn of the tokenizer's chat template "
                       "and the answer as the assistant's reply (instruct models)")
    system_prompt: str | None = Field(None, description="with chat: the system turn's text (default: whatever "
                                      "the chat template writes without one)")

    @field_validator("files")
    @classmethod
    def _splits(cls, files):
        if files is not None:
            unknown = sorted(set(files) - set(SPLITS))
            if unknown:
                raise ValueError(f"unknown split(s) {unknown}; splits are {list(SPLITS)}")
            if "train" not in files and "test" not in files:
                raise ValueError("give at least a 'train' or a 'test' file")
        return files

    @model_validator(mode="after")
    def _custom(self):
        if self.system_prompt is not None and not self.chat:
            raise ValueError(f"task {self.name!r}: system_prompt applies with chat: true only")
        if self.files is None:
            get_task(self.name)  # a registered task; raises with the known names
            custom = {"kind", "metrics", "label_names", "template", "options_field", "text_pair_field"}
            given = sorted(k for k in custom if getattr(self, k) is not None)  # a dump's explicit nulls are fine
            if given:
                raise ValueError(f"task {self.name!r} is a registered task; {given} only apply to a task "
                                 "defined from files")
            if self.answer_format == "text" and get_task(self.name).as_text is None:
                raise ValueError(f"task {self.name!r} has no text form of its answers; answer_format: text is for "
                                 "the commonsense tasks in LLM-Adapters' format")
            return self
        if self.answer_format != "label":
            raise ValueError(f"task {self.name!r}: answer_format applies to registered commonsense tasks only")
        if self.kind is None:
            raise ValueError(f"task {self.name!r}: a task from files needs a kind, one of {list(KINDS)}")
        check_metrics(self.name, self.metrics)
        if self.kind == "multiple_choice" and not self.options_field:
            raise ValueError(f"task {self.name!r}: a multiple_choice task needs options_field")
        if self.kind == "classification" and not self.label_names:
            raise ValueError(f"task {self.name!r}: a classification task needs label_names")
        if self.template is not None:
            self._check_template()
        return self

    def _check_template(self) -> None:
        """The template's {fields} must be ones every example has, or training would fail on the first batch."""
        if self.kind == "language_modeling":
            raise ValueError(f"task {self.name!r}: a language_modeling task trains on its text as it is; template "
                             "does not apply")
        fields = {"text", "prompt"} if self.kind == "multiple_choice" else {"text"} | (
            {"text_pair"} if self.text_pair_field else set())
        try:
            used = {re.match(r"[^.\[]*", name).group() for _, name, _, _ in string.Formatter().parse(self.template)
                    if name is not None}
        except ValueError as e:
            raise ValueError(f"task {self.name!r}: template {self.template!r} is not a format string ({e}; write "
                             "a literal brace as {{ or }})") from None
        unknown = sorted(used - fields)
        if unknown:
            raise ValueError(f"task {self.name!r}: template field(s) {unknown} unknown; a {self.kind} example gives "
                             f"{sorted(fields)} ({{text}} is the text_field's value)")

    def build(self, base_dir: Path | None = None) -> Task:
        if self.files is None:
            task = get_task(self.name)
            task = task.with_text_answers() if self.answer_format == "text" else task
            return dataclasses.replace(task, chat=True, system_prompt=self.system_prompt) if self.chat else task
        files = {s: (str(_resolve(p, base_dir)),) for s, p in self.files.items()}
        holdout = "validation" if "validation" not in files and "train" in files else None
        return Task(
            self.name, self.kind, tuple(self.metrics), files,
            read_jsonl(self.text_field, self.text_pair_field, self.label_field, self.kind,
                       tuple(self.label_names or ()), self.options_field),
            label_names=tuple(self.label_names or ()), template=self.template, answer_prefix=self.answer_prefix,
            holdout=holdout, description=f"{self.name}: user task from JSONL", chat=self.chat,
            system_prompt=self.system_prompt,
        )


def _resolve(path: str, base_dir: Path | None) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() or base_dir is None else base_dir / p


class TrainingSpec(_Strict):
    steps: int = Field(100, gt=0, description="optimizer steps (per stage, with stages)")
    batch_size: int = Field(16, gt=0, description="samples per process per micro-step")
    grad_accum_steps: int = Field(1, gt=0)
    length_buckets: int = Field(1, gt=0, description="split each micro-batch into this many by token length, each "
                                "padded to its own longest: the same gradient with less padding (dropout masks aside)")
    lr: float = Field(1e-3, gt=0)
    head_lr: float | None = Field(None, gt=0, description="learning rate of the task heads (default: lr)")
    param_lrs: dict[str, PositiveFloat] = Field(default_factory=dict, description="learning rates by parameter name, e.g. "
                                        "{reflections: 1e-4} for MoORE's Householder vectors (default: lr)")
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["wsd", "cosine", "linear", "constant"] = "wsd"
    warmup_steps: int | float = Field(0.1, ge=0, description="optimizer steps, or a fraction of steps if < 1")
    decay_steps: int | float = Field(0.2, ge=0, description="wsd: the final decay, steps or fraction")
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixing: Literal["proportional", "temperature", "uniform"] = "proportional"
    temperature: float = Field(2.0, gt=0, description="temperature sampling: p_k ∝ n_k^(1/T)")
    bf16: bool = False
    gradient_checkpointing: bool = False
    parallelism: Literal["ddp", "fsdp"] = Field("ddp", description="with several processes: ddp (a replica of "
                                                "the model each) or fsdp (each holds a shard of every parameter)")
    seed: int = 0
    aux_loss_weight: float = Field(0.01, ge=0, description="weight of load-balancing losses, where a method has them")
    log_every: int = Field(10, gt=0)
    eval_every: int | None = Field(None, gt=0, description="evaluate every N optimizer steps (and at the end)")
    save_every: int | None = Field(None, gt=0, description="checkpoint every N optimizer steps (and at the end)")
    keep_checkpoints: int = Field(2, gt=0)
    keep_best: bool = True
    tensorboard: bool = False


class EvaluationSpec(_Strict):
    batch_size: int = Field(32, gt=0)
    scoring: Literal["loglik", "generate"] = "loglik"
    max_new_tokens: int = Field(16, gt=0)
    split: Literal["validation", "test"] = "test"
    before: bool = Field(False, description="score every task before training too")
    zero_shot: list[TaskSpec] = Field(default_factory=list,
                                      description="tasks scored with the unseen-task (mean) embedding, not trained")
    track_zero_shot: bool = Field(False, description="also score the zero-shot tasks (validation split) at every "
                                                     "evaluation: forgetting against training steps")
    bf16: bool = Field(False, description="score in bf16 autocast (a GPU, or a CPU with AVX-512 BF16); on SmolLM2 "
                       "2.4-2.7x faster on such a CPU, with the same picks as fp32 on 400 of 400 CSR questions "
                       "(benchmarks/bf16_scoring.py)")


class RunConfig(_Strict):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    model: ModelSpec
    tasks: list[TaskSpec] = Field(min_length=1)  # before adapter: the adapter's num_tasks comes from it
    adapter: AdapterConfig = Field(default_factory=lambda: {"method": DEFAULT_METHOD}, validate_default=True)
    stages: list[list[str]] | None = Field(None, description="sequential adaptation: task names per stage")
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    data_dir: str | None = None
    output_dir: str = "runs/moore"
    _base_dir: Path | None = PrivateAttr(None)  # the YAML file's folder: relative task files resolve from it

    @field_validator("adapter", mode="before")
    @classmethod
    def _adapter(cls, adapter: Any, info: ValidationInfo) -> AdapterConfig:
        """The adapter section as its method's config, with num_tasks from the task list."""
        if isinstance(adapter, AdapterConfig):
            return adapter
        if not isinstance(adapter, dict):
            raise ValueError("adapter must be a mapping of the method's config keys")
        if "num_tasks" in adapter:
            raise ValueError("num_tasks is set from the task list; remove it from adapter")
        num_tasks = len(info.data.get("tasks") or [None])  # 1 when tasks failed: the adapter is still checked
        return AdapterConfig.from_dict({"method": DEFAULT_METHOD, **adapter, "num_tasks": num_tasks})

    @field_serializer("adapter")
    def _adapter_data(self, adapter: AdapterConfig) -> dict[str, Any]:
        return {k: v for k, v in adapter.to_dict().items() if k != "num_tasks"}

    @model_validator(mode="after")
    def _tasks(self):
        names = [t.name for t in self.tasks]
        folded = [n.lower() for n in names]  # registered names are looked up without case
        duplicated = sorted({n for n in names if folded.count(n.lower()) > 1})
        if duplicated:
            raise ValueError(f"tasks listed twice: {duplicated} (task names are compared without case)")
        if self.stages is not None:
            unknown = sorted({n for stage in self.stages for n in stage} - set(names))
            if unknown:
                raise ValueError(f"stages name tasks that are not in tasks: {unknown}")
            if any(not stage for stage in self.stages):
                raise ValueError("a stage lists no task")
        split = self.evaluation.split  # validation is there whenever train is (a part of it is held out)
        for spec in self.tasks:
            if spec.files is not None and "train" not in spec.files:
                raise ValueError(f"task {spec.name!r} is trained but has no train file (its files: {sorted(spec.files)}); "
                                 "a task that is only scored belongs under evaluation.zero_shot")
        for spec in [*self.tasks, *self.evaluation.zero_shot]:
            if spec.files is not None and split == "test" and "test" not in spec.files:
                raise ValueError(f"task {spec.name!r} has no test file, and the run is scored on evaluation.split: "
                                 "test; give files.test, or set evaluation.split: validation")
        return self

    def resolved_data_dir(self, override: str | os.PathLike | None = None) -> Path | None:
        if override is not None:
            return Path(override)
        if self.data_dir is not None:
            return Path(os.path.expanduser(self.data_dir))
        return default_data_dir()


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in error.errors():
        where = ".".join(str(x) for x in e["loc"]) or "(top level)"
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def load_run_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                    data: dict | None = None) -> RunConfig:
    """Read a YAML run config (or a dict), apply ``key.sub=value`` overrides, validate."""
    source = str(path) if path is not None else "config"
    if data is None:
        if Path(path).is_dir():
            raise ConfigError(f"{path} is a folder; give the run's YAML config file")
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"no config file at {path}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text; is it a YAML config?") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (model, adapter, tasks, ...)")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        _set_path(data, key.strip(), yaml.safe_load(raw))
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
    config._base_dir = Path(path).resolve().parent if path is not None else None
    return config


def build_tasks(specs: list[TaskSpec], base_dir: Path | None = None) -> list[Task]:
    return [spec.build(base_dir) for spec in specs]


def check_data(tasks: list[Task], data_dir: Path | None, splits=SPLITS) -> None:
    """Refuse a run whose data files are missing, naming every missing file, before loading a model."""
    from .data.tasks import _hub_reachable

    problems = []
    for task in tasks:
        missing = task.missing_files(data_dir, splits)
        if missing and not (task.hub is not None and _hub_reachable()):
            problems.append(f"task {task.name!r}: missing data file {missing[0]}")
    if problems:
        where = data_dir if data_dir is not None else "(no data dir: pass --data-dir or set $MOORE_DATA_DIR)"
        raise ConfigError("data not found under " + str(where) + "\n  " + "\n  ".join(problems))
