"""Tiny saved models and synthetic task files (made-up words, no dataset text) for training tests."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import yaml
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from helpers import minilm_path

POSITIVE = ["sunny", "bright", "lovely", "happy", "great", "warm", "kind", "calm"]
NEGATIVE = ["gloomy", "dark", "awful", "sad", "poor", "cold", "rude", "tense"]
NEUTRAL = ["table", "river", "paper", "green", "seven", "chair", "train", "stone"]
REPO = Path(__file__).resolve().parents[1]


def save_tiny_encoder(path: Path) -> Path:
    """A 2-layer BERT with MiniLM's real tokenizer, saved like any hub model (no dropout: exact tests)."""
    cfg = BertConfig(vocab_size=30522, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    BertModel(cfg).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
    return path


def save_tiny_decoder(path: Path) -> Path:
    """A 2-layer Llama with MiniLM's tokenizer (its [SEP] serves as end of sequence)."""
    cfg = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=102, pad_token_id=0, bos_token_id=101)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.eos_token = "[SEP]"
    tokenizer.save_pretrained(path)
    return path


def _sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(POSITIVE if label else NEGATIVE, 3) + rng.sample(NEUTRAL, 1)
    rng.shuffle(words)
    return " ".join(words)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def make_tasks(root: Path, n_train: int = 64, n_test: int = 32) -> dict[str, dict]:
    """Four learnable JSONL tasks: mood (classification), count (regression), pick (choice), text (LM)."""
    rng = random.Random(0)
    files: dict[str, dict] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = [i % 2 for i in range(n)]
        mood = [{"text": _sentence(rng, y), "label": ["negative", "positive"][y]} for y in labels]
        count = []
        for _ in range(n):
            k = rng.randint(0, 3)
            words = rng.sample(POSITIVE, k) + rng.sample(NEUTRAL, 4 - k)
            count.append({"text": " ".join(words), "label": float(k)})
        pick = []
        for i in range(n):
            good, bad = rng.choice(POSITIVE), rng.choice(NEGATIVE)
            options = [good, bad] if i % 2 else [bad, good]
            pick.append({"question": "which word is pleasant?", "options": options, "answer": good})
        text = [{"text": _sentence(rng, i % 2) + " ."} for i in range(n)]
        for name, rows in (("mood", mood), ("count", count), ("pick", pick), ("text", text)):
            files.setdefault(name, {})[split] = write_jsonl(root / name / f"{split}.jsonl", rows)
    return files


def task_specs(files: dict[str, dict], names: list[str]) -> list[dict]:
    spec = {
        "mood": {"kind": "classification", "metrics": ["accuracy", "mcc"], "label_names": ["negative", "positive"],
                 "template": "Sentence: {text}\nMood:"},
        "count": {"kind": "regression", "metrics": ["spearman", "pearson"]},
        "pick": {"kind": "multiple_choice", "metrics": ["accuracy"], "text_field": "question",
                 "options_field": "options", "label_field": "answer", "answer_prefix": "answer: "},
        "text": {"kind": "language_modeling", "metrics": ["perplexity"]},
    }
    return [{"name": n, "files": files[n], **spec[n]} for n in names]


def run_config(model_dir: Path, files: dict, names: list[str], output_dir: Path, **training) -> dict:
    return {
        "model": {"name_or_path": str(model_dir), "max_length": 32},
        "adapter": {"method": "moore", "task_dim": 8, "sample_dim": 4, "num_reflections": 2},
        "tasks": task_specs(files, names),
        "training": {"steps": 6, "batch_size": 4, "lr": 1e-2, "log_every": 1, "seed": 0, **training},
        "evaluation": {"batch_size": 16},
        "output_dir": str(output_dir),
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def free_port() -> int:
    """A TCP port nobody listens on now, for torchrun's rendezvous (fixed ports collide across runs)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli_in_child(argv: list[str], env: dict, out: str, err: str) -> None:
    """`moore ARGV` in a process forked from the warm server: env, cwd and streams as a fresh one's."""
    import torch

    from moore.bench.study import _run_command

    os.environ.update(env)
    torch.set_num_threads(int(env["OMP_NUM_THREADS"]))  # OpenMP read the variable when torch loaded
    os.chdir(REPO)
    _run_command(argv, out, err)


def _forked_cli(argv: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    """The study's way of starting a command (moore.bench.study): a new process forked from a server
    that imported torch and transformers once, so that each call saves their import (seconds)."""
    import tempfile

    from moore.bench.study import _run_context

    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        process = _run_context().Process(target=_cli_in_child, args=(argv, env, out, err))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(["moore", *argv], timeout)
        stdout, stderr = (Path(p).read_text(errors="replace") for p in (out, err))
    return subprocess.CompletedProcess(["moore", *argv], process.exitcode, stdout, stderr)


def moore_cli(*args: str, env: dict | None = None, check: bool = True, launcher: list[str] | None = None,
              timeout: int = 600) -> subprocess.CompletedProcess:
    """`moore ARGS` in a new process: forked from a warm server (MOORE_TEST_FRESH_PROCESSES=1: a fresh
    interpreter, `python -m moore.cli`), or under ``launcher`` (torchrun, a script that kills it)."""
    command = (launcher or [sys.executable, "-m", "moore.cli"]) + [str(a) for a in args]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "MOORE_SVD_CACHE": "off", "OMP_NUM_THREADS": "1", **(env or {})}
    if launcher is None and os.environ.get("MOORE_TEST_FRESH_PROCESSES") != "1":
        result = _forked_cli([str(a) for a in args], full_env, timeout)
    else:
        result = subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[:4000]}\n...\n{result.stderr[-3000:]}")
    return result
