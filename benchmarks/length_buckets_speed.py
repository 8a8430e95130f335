"""Padding on a task mixture: training steps with each batch padded whole against the same batches
split by token length (``training.length_buckets``), and validation scoring in random order against
shortest-first. Side by side in one run, on the nlu-mtl suite's data and model.

    python benchmarks/length_buckets_speed.py [--method moore-L8] [--steps 12] [--buckets 4] [--bf16]
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from moore.bench.suites import get_suite, resolve_adapter  # noqa: E402
from moore.data.tasks import default_data_dir  # noqa: E402
from moore.hub import load_base_model  # noqa: E402
from moore.multitask import MultiTaskModel  # noqa: E402
from moore.multitask.common import chunks  # noqa: E402
from moore.runconfig import load_run_config  # noqa: E402
from moore.training import Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="nlu-mtl")
    parser.add_argument("--method", default="moore-L8")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--buckets", type=int, default=4)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--eval-examples", type=int, default=512, help="validation examples of each task scored (0: no scoring)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    suite = get_suite(args.suite)
    base, _, _ = load_base_model(suite.config["model"]["name_or_path"])
    adapter, _ = resolve_adapter(suite, args.method, base)
    del base
    data = copy.deepcopy(suite.config)
    data.update(adapter=adapter, output_dir="/tmp/unused")
    data["training"].update(bf16=args.bf16)
    config = load_run_config(data=data)
    trainer = Trainer(config, data_dir=args.data_dir or default_data_dir(), progress=False, device="cpu")
    trainer._load_data()
    torch.manual_seed(0)
    trainer.model = MultiTaskModel.build(config.model, config.adapter, trainer.tasks, task_specs=config.tasks)
    model, names = trainer.model.train(), [t.name for t in trainer.tasks]
    params = [p for p in model.parameters() if p.requires_grad]
    from moore.training.mixing import TaskMixer

    mixer = TaskMixer([len(trainer.train_data[n]) for n in names], config.training.mixing,
                      config.training.temperature, seed=0, stage=0)
    draws = [mixer.draw(step, config.training.batch_size) for step in range(args.steps + 2)]
    state = None
    print(f"# {args.suite} {args.method}, batch {config.training.batch_size}, {args.steps} steps (+2 warm-up), "
          f"bf16={args.bf16}, {torch.get_num_threads()} threads")
    seconds, tokens = {}, {}
    for buckets in (1, args.buckets):
        trainer.spec = config.training.model_copy(update={"length_buckets": buckets})
        total, padded = 0.0, 0
        for step, drawn in enumerate(draws):
            examples = [trainer.train_data[names[t]][i] for t, i in drawn]
            batches = trainer._length_buckets(examples, [names[t] for t, _ in drawn])
            start = time.perf_counter()
            trainer._step(model, batches, params, state)
            model.zero_grad(set_to_none=True)
            if step >= 2:
                total += time.perf_counter() - start
                padded += sum(b["inputs"]["input_ids"].numel() for b in batches)
        seconds[buckets], tokens[buckets] = total / args.steps, padded / args.steps
    real = sum(sum(trainer.model.collate([trainer.train_data[names[t]][i]], [names[t]])["inputs"]["attention_mask"]
                   .sum().item() for t, i in drawn) for drawn in draws[2:]) / args.steps
    print("buckets  s/step  tokens/step (padded)  real/padded")
    for b in seconds:
        print(f"{b:7d}  {seconds[b]:6.3f}  {tokens[b]:20.0f}  {real / tokens[b]:11.2f}")
    print(f"speed-up of {args.buckets} buckets: {seconds[1] / seconds[args.buckets]:.2f}x")

    if not args.eval_examples:
        return
    model.eval()
    orders = {}
    for sort in (False, True):
        start = time.perf_counter()
        for name in names:
            task, examples = trainer.eval_data[name]
            examples = examples[:args.eval_examples]
            if sort:
                model.predict(task, examples, batch_size=config.evaluation.batch_size)
            else:  # the same batches as predict() made before it sorted
                with torch.no_grad():
                    for chunk in chunks(examples, config.evaluation.batch_size, False, name):
                        model.strategy.predict(task, chunk, model.task_id(name), batch_size=len(chunk),
                                               scoring="loglik", max_new_tokens=1, progress=False)
        orders[sort] = time.perf_counter() - start
    print(f"validation scoring, {args.eval_examples} examples a task: random order {orders[False]:.1f} s, "
          f"shortest first {orders[True]:.1f} s ({orders[False] / orders[True]:.2f}x)")


if __name__ == "__main__":
    main()
