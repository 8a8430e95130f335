"""Option scoring on SmolLM2 (answers as texts): each prompt read once with its key-value cache
and the options after it, against one whole sequence per option. Side by side in one run.

    python benchmarks/option_scoring_speed.py [--examples 48] [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from moore.data.tasks import default_data_dir  # noqa: E402
from moore.layers.lora import LoraConfig  # noqa: E402
from moore.multitask import MultiTaskModel  # noqa: E402
from moore.runconfig import ModelSpec, TaskSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    specs = [TaskSpec(name=n, answer_format="text") for n in ("arc-e", "boolq")]
    tasks = [s.build() for s in specs]
    model = MultiTaskModel.build(ModelSpec(name_or_path="smollm2", max_length=256), LoraConfig(num_tasks=2, r=2),
                                 tasks, task_specs=specs).eval()
    print(f"# {args.examples} test examples a task, batches of {args.batch_size}, {torch.get_num_threads()} threads")
    print("task     cached s  whole s  cached/whole  max |Δ score|")
    for task in tasks:
        examples = task.load(args.data_dir or default_data_dir(), "test", limit=args.examples, seed=0)
        timings, scores = {}, {}
        for caches in (True, False):
            model.strategy.__dict__["caches"] = caches
            start = time.perf_counter()
            scores[caches] = model.strategy.option_logliks(task, examples, None, args.batch_size, False)
            timings[caches] = time.perf_counter() - start
        diff = max(abs(a - b) for r1, r2 in zip(scores[True], scores[False]) for a, b in zip(r1, r2))
        print(f"{task.name:8s} {timings[True]:8.1f} {timings[False]:8.1f} {timings[True] / timings[False]:13.2f}"
              f"  {diff:.1e}")


if __name__ == "__main__":
    main()
