"""Readers: a split's files (or the Hugging Face hub) to examples, as plain dicts.

- classification / regression: ``{"text", "text_pair"?, "label"}`` (an int class, a float score);
- multiple_choice: ``{"prompt", "options", "label"}`` (the index of the right option);
- language_modeling: ``{"text"}``.

A reader raises ``DataError`` naming the file and line where the data is not what the task needs.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DataError

Example = dict[str, Any]


# --- readers ---------------------------------------------------------------------------------------
def _tsv(path: Path, header: bool = True) -> list[dict[str, str]] | list[list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: MRPC starts with a BOM
        if header:
            return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def read_tsv_columns(text: str, text_pair: str | None, label: str, labels: dict[str, int] | None = None,
                     regression: bool = False):
    """A reader for a TSV file with a header, naming its text, pair and label columns."""

    def read(paths: list[Path], split: str) -> list[Example]:
        out = []
        for path in paths:
            for row in _tsv(path):
                if row.get(label) in (None, ""):
                    continue
                value = row[label].strip()
                y = float(value) if regression else (labels[value] if labels else int(value))
                example = {"text": row[text], "label": y}
                if text_pair:
                    example["text_pair"] = row[text_pair]
                out.append(example)
        return out

    return read


def read_cola(paths: list[Path], split: str) -> list[Example]:
    return [{"text": r[3], "label": int(r[1])} for p in paths for r in _tsv(p, header=False) if len(r) >= 4]


def read_stsbenchmark(paths: list[Path], split: str) -> list[Example]:
    """The original STS Benchmark CSV: genre, file, year, id, score, s1, s2 (+ stray fields)."""
    return [{"text": r[5], "text_pair": r[6], "label": float(r[4])}
            for p in paths for r in _tsv(p, header=False) if len(r) >= 7]


def read_qnli_dev(paths: list[Path], split: str) -> list[Example]:
    """QNLI: only GLUE's dev file is here, split deterministically in halves (validation / test)
    after a train share: the first 80% (by a fixed shuffle) trains."""
    rows = read_tsv_columns("question", "sentence", "label", {"entailment": 0, "not_entailment": 1})(paths, split)
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    n_train = int(0.8 * len(rows))
    n_val = (len(rows) - n_train) // 2
    part = {"train": order[:n_train], "validation": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return [rows[i] for i in sorted(part[split])]


_FORMAT = re.compile(r"Answer format:\s*(.+?)\s*$", re.MULTILINE)


def read_llm_adapters(paths: list[Path], split: str) -> list[Example]:
    """LLM-Adapters' commonsense JSON: {instruction, input, output, answer}; the options are
    the instruction's ``Answer format: a/b/c`` line."""
    out = []
    for path in paths:
        for row in json.loads(path.read_text(encoding="utf-8")):
            out.append(llm_adapters_example(row["instruction"], row.get("input", ""), row["answer"], where=str(path)))
    return out


def llm_adapters_example(instruction: str, extra_input: str, answer: str, where: str = "") -> Example:
    found = _FORMAT.search(instruction)
    if not found:
        raise ValueError(f"{where}: an instruction without an 'Answer format:' line: {instruction[:80]!r}")
    options = [o.strip() for o in found.group(1).split("/")]
    if answer.strip() not in options:
        raise ValueError(f"{where}: answer {answer!r} is not one of the options {options}")
    prompt = instruction if not extra_input else f"{instruction}\n\n{extra_input}"
    return {"prompt": prompt, "options": options, "label": options.index(answer.strip())}


_QUESTION = re.compile(r"question:\s*(.*?)(?:\n\n|$)", re.S)
_OPTION = re.compile(r"Answer(\d+):\s*")


def llm_adapters_as_text(example: Example) -> Example:
    """An LLM-Adapters example (``answer1``..``answer4`` or ``true``/``false`` as the answer) as a
    question with its options' own texts, lm-evaluation-harness style: prompt
    ``Question: ...\nAnswer:``, options the answers' texts (yes/no for true/false)."""
    prompt = example["prompt"]
    found = _QUESTION.search(prompt)
    if not found:
        raise ValueError(f"no 'question:' in the instruction {prompt[:80]!r}")
    question = found.group(1).strip()
    labels = example["options"]
    if labels == ["true", "false"]:
        texts = ["yes", "no"]
    else:
        block = prompt[found.end():].split("\n\nAnswer format:")[0]
        parts = _OPTION.split(block)  # ["", "1", text1, "2", text2, ...]
        by_number = {f"answer{n}": text.strip() for n, text in zip(parts[1::2], parts[2::2])}
        missing = [label for label in labels if label not in by_number]
        if missing:
            raise ValueError(f"options {missing} have no text in the instruction {prompt[:80]!r}")
        texts = [by_number[label] for label in labels]
    return {"prompt": f"Question: {question}\nAnswer:", "options": texts, "label": example["label"]}


def read_wikitext(paths: list[Path], split: str) -> list[Example]:
    """WikiText: one example per non-empty line (a paragraph or a heading)."""
    return [{"text": line.strip()} for p in paths for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_text_lines(path: Path) -> list[str]:
    """A text file's lines; a DataError naming the file and line for a BOM or bytes that are not UTF-8."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        raise DataError(f"{path}:1: the file starts with a UTF-8 byte-order mark (BOM), which JSON Lines does "
                        "not allow; save it as UTF-8 without BOM")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8") from None
    return text.splitlines()


def read_jsonl(text_field: str, text_pair_field: str | None, label_field: str | None, kind: str,
               label_names: tuple[str, ...], options_field: str | None):
    """A reader for a user's JSONL task; string labels are mapped through label_names. Each example
    remembers its line (``_line``) until ``check_examples`` has seen it, so errors name it."""

    def read(paths: list[Path], split: str) -> list[Example]:
        out = []
        for path in paths:
            for number, line in enumerate(read_text_lines(path), 1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{where}: expected a JSON object, found {type(row).__name__}")
                needed = (text_field,) if kind == "language_modeling" else (text_field, label_field, text_pair_field,
                                                                             options_field)
                missing = [f for f in needed if f and f not in row]
                if missing:
                    raise DataError(f"{where}: no field(s) {missing}; the line has {sorted(row)}")
                if kind == "language_modeling":
                    out.append({"text": row[text_field], "_line": number})
                    continue
                label = row[label_field]
                if kind == "multiple_choice":
                    if not isinstance(row[options_field], list) or len(row[options_field]) < 2:
                        raise DataError(f"{where}: {options_field} must be a list of at least two options")
                    options = [str(o) for o in row[options_field]]
                    index = options.index(label) if isinstance(label, str) and label in options else label
                    if isinstance(index, str):
                        raise DataError(f"{where}: answer {label!r} is not one of the options {options}")
                    # "prompt" is what multiple-choice examples carry; "text" lets a template say {text} for every kind
                    out.append({"prompt": row[text_field], "text": row[text_field], "options": options, "label": index,
                                "_line": number})
                    continue
                if kind == "classification" and isinstance(label, str):
                    if label not in label_names:
                        raise DataError(f"{where}: label {label!r} is not one of label_names {list(label_names)}")
                    label = label_names.index(label)
                if kind == "regression" and isinstance(label, (str, int)) and not isinstance(label, bool):
                    try:
                        label = float(label)
                    except ValueError:
                        raise DataError(f"{where}: the score {label!r} is not a number") from None
                example = {"text": row[text_field], "label": label, "_line": number}
                if text_pair_field:
                    example["text_pair"] = row[text_pair_field]
                out.append(example)
        return out

    return read


# --- the hub: the same tasks, by name -----------------------------------------------------------------
def hub_glue(config: str, text: str, text_pair: str | None, regression: bool = False, splits=None):
    def load(split: str) -> list[Example]:
        import datasets

        name = (splits or {}).get(split, {"validation": "validation", "test": "validation", "train": "train"}[split])
        rows = datasets.load_dataset("nyu-mll/glue", config, split=name)
        return [{"text": r[text], **({"text_pair": r[text_pair]} if text_pair else {}),
                 "label": float(r["label"]) if regression else int(r["label"])} for r in rows]

    return load


def hub_choice(path: str, config: str | None, convert: Callable[[dict], Example]):
    def load(split: str) -> list[Example]:
        import datasets

        name = {"train": "train", "validation": "validation", "test": "test"}[split]
        return [convert(r) for r in datasets.load_dataset(path, config, split=name)]

    return load


def arc_row(r: dict) -> Example:
    texts = r["choices"]["text"]
    letters = list(r["choices"]["label"])
    listed = " ".join(f"Answer{i + 1}: {t}" for i, t in enumerate(texts))
    fmt = "/".join(f"answer{i + 1}" for i in range(len(texts)))
    instruction = f"Please choose the correct answer to the question: {r.get('question') or r.get('question_stem')}\n\n{listed}\n\nAnswer format: {fmt}"
    return llm_adapters_example(instruction, "", f"answer{letters.index(r['answerKey']) + 1}")


def boolq_row(r: dict) -> Example:
    instruction = (f"Please answer the following question with true or false, question: {r['question']}?"
                   "\n\nAnswer format: true/false")
    return llm_adapters_example(instruction, "", "true" if r["answer"] else "false")


def hub_wikitext(split: str) -> list[Example]:
    import datasets

    rows = datasets.load_dataset("Salesforce/wikitext", "wikitext-2-v1", split=split)
    return [{"text": r["text"].strip()} for r in rows if r["text"].strip()]
