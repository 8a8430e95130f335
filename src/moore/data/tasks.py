"""The task registry: what a task is, where its data lives, how it is scored.

A task reads its examples from a data directory (``--data-dir`` or ``$MOORE_DATA_DIR``) and, when
the files are not there and the ``datasets`` package can reach the Hugging Face hub, from the hub
by name. Examples are plain dicts (``readers.py`` says which keys each kind has).

Encoders score classification and regression tasks with a per-task head. Decoders score every
task as a choice between continuations: a classification task becomes one by its
``label_names`` and prompt ``template``. No dataset text lives in this package.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError, MissingDataError
from .metrics import KNOWN_METRICS
from .readers import (
    Example,
    arc_row,
    boolq_row,
    llm_adapters_as_text,
    hub_choice,
    hub_glue,
    hub_wikitext,
    read_cola,
    read_llm_adapters,
    read_qnli_dev,
    read_stsbenchmark,
    read_tsv_columns,
    read_wikitext,
)

SPLITS = ("train", "validation", "test")
KINDS = ("classification", "regression", "multiple_choice", "language_modeling")
DATA_DIR_ENV = "MOORE_DATA_DIR"

# LLM-Adapters' prompt (Alpaca's), which its commonsense JSON files are written for
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{prompt}\n\n### Response:\n"
)


@dataclass(frozen=True)
class Task:
    """One task: its kind, metrics (the first is the one that selects checkpoints), data and prompt."""

    name: str
    kind: str
    metrics: tuple[str, ...]
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> paths under the data dir
    reader: Callable[..., list[Example]] | None = None  # (paths, split) -> examples
    hub: Callable[[str], list[Example]] | None = None  # split -> examples, via `datasets`
    label_names: tuple[str, ...] = ()
    template: str | None = None  # decoder prompt, formatted with the example's fields
    answer_prefix: str = ""  # what the decoder's answer starts with, before the option
    holdout: str | None = None  # split carved out of train when the data has none: "validation"
    description: str = ""
    as_text: Callable[[Example], Example] | None = None  # the example with its options' texts as answers
    chat: bool = False  # decoders: the prompt as the user's turn of the tokenizer's chat template
    system_prompt: str | None = None  # with chat: the system turn (None: the template's default)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        check_metrics(self.name, self.metrics)
        if self.kind == "classification" and len(self.label_names) < 2:
            raise ValueError(f"task {self.name!r}: a classification task needs at least two label_names")

    @property
    def metric(self) -> str:
        return self.metrics[0]

    @property
    def num_labels(self) -> int:
        return 1 if self.kind == "regression" else len(self.label_names)

    # --- data ----------------------------------------------------------------------------------
    def has_split(self, split: str) -> bool:
        return split in self.files or (split == self.holdout and "train" in self.files)

    def paths(self, data_dir: str | os.PathLike | None, split: str) -> list[Path]:
        key = "train" if split == self.holdout else split
        if key not in self.files:
            raise ConfigError(f"task {self.name!r} has no {split!r} split; it has {sorted(self.files)}")
        root = Path(data_dir) if data_dir is not None else Path(".")
        return [p if p.is_absolute() else root / p for p in map(Path, self.files[key])]

    def missing_files(self, data_dir: str | os.PathLike | None, splits=SPLITS) -> list[Path]:
        return [p for s in splits if self.has_split(s) for p in self.paths(data_dir, s) if not p.is_file()]

    def load(self, data_dir: str | os.PathLike | None, split: str, *, limit: int | None = None,
             seed: int = 0) -> list[Example]:
        """The split's examples; ``limit`` takes a fixed random subset (the same for a given seed).

        A file that cannot be read as this task needs raises ``DataError`` naming the file (and the
        line, where the reader knows it): bad JSON or text encoding, no examples, labels out of range."""
        paths = self.paths(data_dir, split)
        missing = [p for p in paths if not p.is_file()]
        where = ", ".join(map(str, paths))
        if missing and self.hub is not None and _hub_reachable():
            examples, where = self.hub("train" if split == self.holdout else split), f"the hub's {self.name}"
        elif missing:
            hint = " (or install `datasets` and go online to fetch it from the hub)" if self.hub else ""
            raise MissingDataError(
                f"task {self.name!r}: missing data file {missing[0]}; pass --data-dir or set ${DATA_DIR_ENV} "
                f"to the folder that holds it{hint}"
            )
        else:
            try:
                examples = self.reader(paths, split)
            except DataError:
                raise
            except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError, csv.Error) as e:
                raise DataError(f"{where}: cannot read it as task {self.name!r} ({type(e).__name__}: {e})") from None
        if not examples:
            raise DataError(f"{where}: no examples for task {self.name!r} ({split} split)")
        check_examples(self, examples, where)
        if split == self.holdout or (split == "train" and self.holdout):
            if len(examples) < 10:
                raise DataError(f"{where}: {len(examples)} examples are too few to hold out a {self.holdout} set "
                                f"for task {self.name!r} (10 or more needed); give a {self.holdout} file")
            examples = _split_holdout(examples, split == self.holdout)
        if limit is not None and limit < len(examples) and self.kind == "language_modeling":
            examples = examples[:limit]  # running text: keep it contiguous
        elif limit is not None and limit < len(examples):
            examples = random.Random(f"{self.name}/{split}/{seed}").sample(examples, limit)
        return examples

    def with_text_answers(self) -> "Task":
        """This task scored (and trained) on its options' own texts rather than on label tokens
        (``answer1``..``answer4``, ``true``/``false``): each option's text is a continuation of
        the question, ranked by its log-likelihood divided by its length in bytes
        (``accuracy_norm``, the first metric: it selects checkpoints and enters averages) and by
        the summed log-likelihood (``accuracy``), as lm-evaluation-harness's acc_norm and acc."""
        if self.as_text is None:
            raise ValueError(f"task {self.name!r} has no text form of its answers (answer_format: text is for "
                             "the commonsense tasks in LLM-Adapters' format)")
        convert, reader, hub = self.as_text, self.reader, self.hub
        return dataclasses.replace(
            self, metrics=("accuracy_norm", "accuracy"), template=None, answer_prefix=" ", as_text=None,
            reader=lambda paths, split: [convert(e) for e in reader(paths, split)],
            hub=None if hub is None else (lambda split: [convert(e) for e in hub(split)]),
            description=f"{self.description}; answers as option texts",
        )

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "metrics": list(self.metrics),
                "label_names": list(self.label_names), "num_labels": self.num_labels}


def check_metrics(task: str, metrics) -> None:
    if not metrics:
        raise ValueError(f"task {task!r} has no metric; give metrics: [one of {KNOWN_METRICS}]")
    unknown = [m for m in metrics if m not in KNOWN_METRICS]
    if unknown:
        raise ValueError(f"task {task!r}: unknown metric(s) {unknown}; known: {KNOWN_METRICS}")


def check_examples(task: Task, examples: list[Example], where: str) -> None:
    """Every example fits the task: text is text, labels are classes in range, scores are numbers."""
    def fail(i: int, problem: str) -> None:
        line = examples[i].get("_line") if isinstance(examples[i], dict) else None
        raise DataError(f"{where}{f':{line}' if line else f' (example {i + 1})'}: {problem}")

    for i, e in enumerate(examples):
        text_keys = ("prompt",) if task.kind == "multiple_choice" else ("text",) + (("text_pair",) if "text_pair" in e else ())
        for key in text_keys:
            if not isinstance(e.get(key), str):
                fail(i, f"{key} must be a string, got {type(e.get(key)).__name__}")
        if task.kind == "language_modeling":
            continue
        label = e.get("label")
        if task.kind == "regression":
            if isinstance(label, bool) or not isinstance(label, (int, float)) or label != label or abs(label) == float("inf"):
                fail(i, f"the score {label!r} is not a finite number")
            continue
        classes = len(e["options"]) if task.kind == "multiple_choice" else task.num_labels
        if isinstance(label, bool) or not isinstance(label, int):
            fail(i, f"label {label!r} is not a class: give an integer index or one of label_names {list(task.label_names)}"
                 if task.kind == "classification" else f"label {label!r} is not an option or an option index")
        if not 0 <= label < classes:
            fail(i, f"label {label} is out of range: task {task.name!r} has {classes} "
                 + (f"classes {list(task.label_names)}" if task.kind == "classification" else "options"))
    for e in examples:
        e.pop("_line", None)


def _split_holdout(examples: list[Example], held_out: bool) -> list[Example]:
    """A fixed 10% (at most 500) of the train file, for tasks whose data has no validation set."""
    order = list(range(len(examples)))
    random.Random(len(examples)).shuffle(order)
    size = min(len(examples) // 10, 500)
    chosen = set(order[:size])
    return [e for i, e in enumerate(examples) if (i in chosen) == held_out]


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        import datasets  # noqa: F401
    except ImportError:
        return False
    return True


# --- the registry ---------------------------------------------------------------------------------------
TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is registered twice")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    key = name.lower()
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)} (or define one from a JSONL file)")
    return TASKS[key]


_PAIR = "{text}\n{text_pair}\n"
for _task in [
    Task("cola", "classification", ("mcc", "accuracy"),
         {"train": ("glue/CoLA/in_domain_train.tsv",), "test": ("glue/CoLA/in_domain_dev.tsv",)},
         read_cola, hub_glue("cola", "sentence", None), ("unacceptable", "acceptable"),
         "Sentence: {text}\nIs this sentence grammatically acceptable or unacceptable?\nAnswer: ", holdout="validation",
         description="CoLA: grammatical acceptability (MCC); test = in-domain dev, validation held out of train"),
    Task("sst2", "classification", ("accuracy",),
         {"train": ("glue/SST-2/train.tsv",), "validation": ("glue/SST-2/dev.tsv",), "test": ("glue/SST-2/test.tsv",)},
         read_tsv_columns("sentence", None, "label"),
         hub_glue("sst2", "sentence", None, splits={"validation": "validation", "test": "validation"}),
         ("negative", "positive"), "Sentence: {text}\nIs the sentiment of this sentence positive or negative?\nAnswer: ",
         description="SST-2: sentiment (accuracy); test = GLUE dev"),
    Task("mrpc", "classification", ("f1", "accuracy"),
         {"train": ("glue/MRPC/msr_paraphrase_train.txt",), "test": ("glue/MRPC/msr_paraphrase_test.txt",)},
         read_tsv_columns("#1 String", "#2 String", "Quality"), hub_glue("mrpc", "sentence1", "sentence2"),
         ("not_equivalent", "equivalent"),
         "Sentence 1: {text}\nSentence 2: {text_pair}\nDo these sentences mean the same thing? Answer: ",
         holdout="validation", description="MRPC: paraphrase (F1, accuracy)"),
    Task("rte", "classification", ("accuracy",),
         {"train": ("glue/RTE/train.tsv",), "test": ("glue/RTE/dev.tsv",)},
         read_tsv_columns("sentence1", "sentence2", "label"), hub_glue("rte", "sentence1", "sentence2"),
         ("entailment", "not_entailment"),
         "Premise: {text}\nHypothesis: {text_pair}\nDoes the premise entail the hypothesis? Answer: ",
         holdout="validation", description="RTE: entailment (accuracy); test = dev, validation held out of train"),
    Task("qnli", "classification", ("accuracy",),
         {s: ("glue/QNLI/dev.tsv",) for s in SPLITS}, read_qnli_dev, hub_glue("qnli", "question", "sentence"),
         ("entailment", "not_entailment"),
         "Question: {text}\nSentence: {text_pair}\nDoes the sentence answer the question? Answer: ",
         description="QNLI: question answering entailment (accuracy); GLUE dev split 80/10/10 here"),
    Task("stsb", "regression", ("spearman", "pearson"),
         {"train": ("glue/STS-B/train.tsv",), "test": ("glue/STS-B/dev.tsv",)},
         read_tsv_columns("sentence1", "sentence2", "score", regression=True),
         hub_glue("stsb", "sentence1", "sentence2", regression=True), holdout="validation",
         description="STS-B: similarity regression 0..5 (Spearman, Pearson); test = dev, validation held out of train"),
    Task("stsbenchmark", "regression", ("spearman", "pearson"),
         {"train": ("stsbenchmark/sts-train.csv",), "validation": ("stsbenchmark/sts-dev.csv",),
          "test": ("stsbenchmark/sts-test.csv",)}, read_stsbenchmark,
         hub_choice("sentence-transformers/stsb", None,
                     lambda r: {"text": r["sentence1"], "text_pair": r["sentence2"], "label": 5 * float(r["score"])}),
         description="STS Benchmark (original release, labelled test set)"),
    Task("wikitext2", "language_modeling", ("perplexity",),
         {"validation": ("wikitext-2/valid.txt",), "test": ("wikitext-2/test.txt",)}, read_wikitext, hub_wikitext,
         description="WikiText-2 (tokenized) language modelling (perplexity)"),
]:
    register_task(_task)

_CSR_HUB = {
    "arc-c": hub_choice("allenai/ai2_arc", "ARC-Challenge", arc_row),
    "arc-e": hub_choice("allenai/ai2_arc", "ARC-Easy", arc_row),
    "obqa": hub_choice("allenai/openbookqa", "main", arc_row),
    "boolq": hub_choice("google/boolq", None, boolq_row),
}
for _name, _folder in [("arc-c", "ARC-Challenge"), ("arc-e", "ARC-Easy"), ("boolq", "boolq"), ("obqa", "openbookqa"),
                       ("piqa", "piqa"), ("siqa", "social_i_qa"), ("winogrande", "winogrande"),
                       ("hellaswag", "hellaswag"), ("csqa", "commonsense_qa")]:
    register_task(Task(
        _name, "multiple_choice", ("accuracy",),
        {"train": (f"csr/{_folder}/train.json",), "test": (f"csr/{_folder}/test.json",)}, read_llm_adapters,
        _CSR_HUB.get(_name), template=ALPACA_TEMPLATE, answer_prefix="the correct answer is ",
        holdout="validation", description=f"{_folder}: commonsense reasoning, LLM-Adapters JSON (accuracy)",
        as_text=llm_adapters_as_text,
    ))


def default_data_dir() -> Path | None:
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value) if value else None
