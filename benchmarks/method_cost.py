"""A suite's training cost for a few of its methods, side by side in one run: step time and memory as
ratios to full fine-tuning, the same measurement as the suite's efficiency rows but without timing
every method (e.g. to check one method after a change to its layer).

    python benchmarks/method_cost.py nlu-mtl-mini lora omoe [--repeats 3] [--threads 1]

Memory is an exact count (parameters, gradients, optimizer state, tensors saved for backward), so it
does not depend on the machine's load; step times do.
"""

from __future__ import annotations

import argparse
import copy

import torch

from moore.bench.efficiency import adapted_copy, measure_model, suite_inputs
from moore.bench.suites import get_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite")
    parser.add_argument("methods", nargs="+", help="methods of the suite")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    suite = get_suite(args.suite)
    unknown = [m for m in args.methods if m not in suite.methods]
    if unknown:
        parser.error(f"not methods of {args.suite}: {', '.join(unknown)} (it has {', '.join(suite.methods)})")
    base, batch, task_ids = suite_inputs(suite)
    batch_size, length = batch["input_ids"].shape
    reference = measure_model(copy.deepcopy(base).requires_grad_(True), batch, {}, args.repeats)
    print(f"# {args.suite}: batch {batch_size} × {length}, {torch.get_num_threads()} threads, "
          f"ratios to a full fine-tuning step ({reference['train_step_s']:.3f} s, "
          f"{reference['train_memory_bytes'] / 2**20:.0f} MiB)")
    print(f"{'method':12s} {'step':>6s} {'memory':>7s}")
    for method in args.methods:
        model, _ = adapted_copy(suite, method, base)
        row = measure_model(model, batch, task_ids, args.repeats)
        print(f"{method:12s} {row['train_step_s'] / reference['train_step_s']:6.2f} "
              f"{row['train_memory_bytes'] / reference['train_memory_bytes']:7.2f}", flush=True)
        del model


if __name__ == "__main__":
    main()
