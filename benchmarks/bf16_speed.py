"""Is bf16 autocast faster than fp32 for a training step on this CPU? Side by side, in one run.

    python benchmarks/bf16_speed.py [--suite nlu-mtl] [--methods moore-L8,lora,full] [--batch 32]
                                    [--length 128] [--steps 8] [--threads N]

For each method of a suite (``nlu-mtl``: MiniLM; ``csr-mtl``: SmolLM2; budget-matched as the suite
does), it times training steps (forward, backward, AdamW) on one fixed batch of token ids, in fp32
and under ``torch.autocast(bfloat16)``, and prints the median seconds per step and the ratio
bf16 / fp32 (below 1: bf16 is faster). The two precisions alternate step by step, so a machine
shared with other work slows both alike. Whether the scores match is for the suite's runs to show.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from moore import AdapterConfig, get_moore_model  # noqa: E402
from moore.bench.suites import get_suite, resolve_adapter  # noqa: E402
from moore.hub import load_base_model  # noqa: E402
from moore.precision import bf16_is_native  # noqa: E402


def cpu_name() -> str:
    try:  # Linux names the model; elsewhere platform's string will do
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def one_step(model, optimizer, batch, task_ids, bf16: bool) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(**batch, **task_ids)
        # a decoder's cost includes its vocabulary projection, as in training
        hidden = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
        loss = hidden.float().pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def step_seconds(model, batch, task_ids, steps: int) -> tuple[float, float]:
    """Median seconds per step in fp32 and in bf16 autocast, the two alternating."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    model.train()
    for bf16 in (False, True):  # warm up both
        one_step(model, optimizer, batch, task_ids, bf16)
    times = {False: [], True: []}
    for i in range(2 * steps):
        bf16 = bool(i % 2)
        times[bf16].append(one_step(model, optimizer, batch, task_ids, bf16))
    return statistics.median(times[False]), statistics.median(times[True])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="nlu-mtl", help="whose model and adapters: nlu-mtl, csr-mtl, ...")
    parser.add_argument("--methods", default="moore-L8,lora,full")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (the study runs use 1 each)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    suite = get_suite(args.suite)
    base, _, _ = load_base_model(suite.config["model"]["name_or_path"])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (args.batch, args.length), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    num_tasks = len(suite.config["tasks"])
    task_ids = {"task_ids": torch.arange(args.batch) % num_tasks}
    print(f"CPU: {cpu_name()}; bf16 in hardware (AVX-512 BF16 or AMX): {'yes' if bf16_is_native('cpu') else 'no'}")
    print(f"{args.suite}, {torch.get_num_threads()} threads, batch {args.batch} × {args.length} tokens, median of {args.steps} steps")
    print(f"{'method':10s} {'fp32 s/step':>12s} {'bf16 s/step':>12s} {'bf16/fp32':>10s}")
    for method in args.methods.split(","):
        adapter, _ = resolve_adapter(suite, method, base)
        model = get_moore_model(copy.deepcopy(base), AdapterConfig.from_dict({**adapter, "num_tasks": num_tasks}))
        fp32, bf16 = step_seconds(model, batch, task_ids, args.steps)
        print(f"{method:10s} {fp32:12.3f} {bf16:12.3f} {bf16 / fp32:10.2f}", flush=True)
        del model


if __name__ == "__main__":
    main()
