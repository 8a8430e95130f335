"""Does scoring in bf16 autocast give the same answers as fp32, and how much faster is it? Side by side.

    python benchmarks/bf16_scoring.py --data-dir ../shared/data [--suite csr-mtl] [--examples 100]

For the suite's base model (its tasks as the suite scores them, and its zero-shot tasks), each
task's first N test examples are scored twice, in fp32 and under ``torch.autocast(bfloat16)``
(``evaluation.bf16``), one after the other in one process. Printed per task: seconds each way and
their ratio, the metric each way, how many examples get the same pick from both, and the largest
difference in an option's summed log-likelihood (perplexity for language modelling).
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from moore.bench.suites import get_suite  # noqa: E402
from moore.multitask import MultiTaskModel  # noqa: E402
from moore.runconfig import build_tasks, load_run_config  # noqa: E402


def timed(fn, bf16: bool):
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="csr-mtl")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    suite = get_suite(args.suite)
    data = copy.deepcopy(suite.config)
    data.update(adapter={"method": "lora"}, output_dir="unused")  # LoRA's B is zero at init: the base model
    config = load_run_config(data=data)
    tasks, zero = build_tasks(config.tasks), build_tasks(config.evaluation.zero_shot)
    torch.manual_seed(0)
    model = MultiTaskModel.build(config.model, config.adapter, tasks, task_specs=config.tasks).eval()
    strategy = model.strategy
    print(f"# {args.suite}: {config.model.name_or_path}, first {args.examples} test examples a task, batches of "
          f"{args.batch_size}, {args.threads} threads, torch {torch.__version__}")
    print(f"{'task':12} {'fp32 s':>8} {'bf16 s':>8} {'bf16/fp32':>9} {'fp32':>8} {'bf16':>8} {'same picks':>11} "
          f"{'max |Δ|':>8}")
    for task in [*tasks, *zero]:
        examples = task.load(args.data_dir, "test", limit=args.examples, seed=0)
        if task.kind == "language_modeling":
            runs = [timed(lambda: strategy.perplexity(examples, None, args.batch_size, False), bf16) for bf16 in (False, True)]
            (p32, t32), (p16, t16) = runs
            print(f"{task.name:12} {t32:8.1f} {t16:8.1f} {t16 / t32:9.2f} {p32:8.2f} {p16:8.2f} {'':>11} "
                  f"{abs(p16 - p32) / p32:7.2%}")
            continue
        runs = [timed(lambda: strategy.option_logliks(task, examples, None, args.batch_size, False), bf16)
                for bf16 in (False, True)]
        (s32, t32), (s16, t16) = runs
        labels = np.array([e["label"] for e in examples])
        picks = [np.array([int(np.argmax(row)) for row in s]) for s in (s32, s16)]
        delta = max(float(np.max(np.abs(np.array(a) - np.array(b)))) for a, b in zip(s32, s16))
        same = int((picks[0] == picks[1]).sum())
        print(f"{task.name:12} {t32:8.1f} {t16:8.1f} {t16 / t32:9.2f} {100 * (picks[0] == labels).mean():8.1f} "
              f"{100 * (picks[1] == labels).mean():8.1f} {same:5d}/{len(examples):<5d} {delta:8.3f}")
    print("scores: accuracy of the summed log-likelihood's pick (×100); WikiText-2: perplexity, Δ relative")


if __name__ == "__main__":
    main()
