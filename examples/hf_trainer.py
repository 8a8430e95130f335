"""MoORE on SmolLM2-135M-Instruct, trained by an unmodified transformers ``Trainer`` on two GLUE
tasks at once (each batch mixes them, routed by a ``task_ids`` column).

    python examples/hf_trainer.py [--data-dir ../shared/data] [--steps 30] [--output runs/hf_trainer]

(SmolLM2 with activation checkpointing on 2 CPU cores: 10-20 s a step; seconds on a GPU.)

It builds the rows from moore's own tasks (prompt + answer, loss on the answer only), trains with
activation checkpointing, saves the adapter through ``save_pretrained`` (``OUTPUT/adapter``), and
prints each task's accuracy before and after, scored by moore on the reloaded adapter.
"""

from __future__ import annotations

import argparse
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import Trainer  # noqa: E402

from moore import MooreConfig, MooreModel  # noqa: E402
from moore.data.tasks import default_data_dir  # noqa: E402
from moore.hub import load_from_spec  # noqa: E402
from moore.integrations.hf_trainer import (  # noqa: E402
    ADAPTER_DIR,
    SaveAdapterCallback,
    TaskDataCollator,
    multitask_features,
    trainer_arguments,
)
from moore.multitask import MultiTaskModel  # noqa: E402
from moore.runconfig import ModelSpec, TaskSpec  # noqa: E402

TASKS = ("sst2", "rte")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--train-per-task", type=int, default=400)
    parser.add_argument("--eval-per-task", type=int, default=100)
    parser.add_argument("--output", default="runs/hf_trainer")
    args = parser.parse_args()
    data_dir = args.data_dir or default_data_dir()

    spec = ModelSpec(name_or_path="smollm2", max_length=160)
    specs = [TaskSpec(name=t) for t in TASKS]
    tasks = [s.build() for s in specs]
    config = MooreConfig(num_tasks=len(tasks), task_dim=64, sample_dim=32, num_reflections=8)
    model = MultiTaskModel.build(spec, config, tasks, task_specs=specs)
    model.adapted.print_trainable_parameters()

    rows, test = [], {}
    for task in tasks:
        rows += multitask_features(model, task.name, task.load(data_dir, "train", limit=args.train_per_task, seed=0))
        test[task.name] = task.load(data_dir, "test", limit=args.eval_per_task, seed=0)
    random.Random(0).shuffle(rows)  # the Trainer shuffles too; mixed-task batches either way
    before = {t.name: model.evaluate(t, test[t.name])["accuracy"] for t in tasks}

    training = trainer_arguments(args.output, max_steps=args.steps, per_device_train_batch_size=8,
                                 learning_rate=3e-4, lr_scheduler_type="constant", warmup_steps=0,
                                 gradient_checkpointing=True, logging_steps=5, report_to=[], use_cpu=True, seed=0)
    trainer = Trainer(model=model.adapted, args=training, train_dataset=rows,
                      data_collator=TaskDataCollator(model.tokenizer), callbacks=[SaveAdapterCallback(model.adapted, save_steps=10)])
    trainer.train()

    # the adapter the Trainer saved, on a fresh base model, scored by moore
    base, _, _ = load_from_spec(spec)
    reloaded = MultiTaskModel(MooreModel.from_pretrained(base, os.path.join(args.output, ADAPTER_DIR)),
                              model.tokenizer, tasks, model_spec=model.model_spec, task_specs=specs)
    for task in tasks:
        after = reloaded.evaluate(task, test[task.name])["accuracy"]
        print(f"{task.name}: accuracy {before[task.name]:.3f} -> {after:.3f} ({len(test[task.name])} test examples)")


if __name__ == "__main__":
    main()
