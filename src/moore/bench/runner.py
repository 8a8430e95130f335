"""Running a suite: each method trained and scored on the same data, budget and seed.

Each method's run writes one JSON file under ``benchmarks/results/<suite>/`` (scores, zero-shot
scores, trainable parameters, time, the exact command, git commit, seed and machine). A method
that already has a file is skipped, so a suite can run in pieces, in the background, across
sessions; an interrupted method resumes from its last checkpoint.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch

from ..io import write_json
from .provenance import provenance
from .suites import REFERENCE, get_suite, resolve_adapter

logger = logging.getLogger(__name__)


def run_method(suite_name: str, method: str, results_dir: Path, runs_dir: Path, data_dir: Path | None,
               progress: bool = True) -> dict:
    from ..hub import load_base_model
    from ..runconfig import load_run_config
    from ..training import Trainer

    suite = get_suite(suite_name)
    base, _, _ = load_base_model(suite.config["model"]["name_or_path"])
    adapter, training = resolve_adapter(suite, method, base)
    del base
    data = copy.deepcopy(suite.config)
    data["adapter"] = adapter
    data["training"].update(training)
    data["output_dir"] = str(runs_dir / suite_name / method)
    config = load_run_config(data=data)
    torch.manual_seed(0)
    trainer = Trainer(config, data_dir=data_dir, progress=progress)
    start = time.time()
    results = trainer.run(resume=True)
    seconds = time.time() - start
    trainable, _ = trainer.model.adapted.get_nb_trainable_parameters()
    base_parameters = trainer.model.adapted.num_base_parameters
    record = {
        "suite": suite_name, "method": method, "adapter": adapter, "training": config.training.model_dump(),
        "trainable_parameters": trainable, "base_parameters": base_parameters, "share": trainable / base_parameters,
        "scores": results["after"], "average": results["average"]["after"], "zero_shot": results["zero_shot"],
        "best_step": results["best_step"], "wall_seconds": seconds, "seed": config.training.seed,
        **provenance(f"moore bench {suite_name} --methods {method}"),
    }
    if method == REFERENCE:
        from ..routing_analysis import routing_statistics

        record["routing"] = routing_statistics(trainer.model, suite.routing_layer, trainer.test_data, limit=64)
    write_json(results_dir / f"{method}.json", record)
    return record


def base_reference(suite_name: str, results_dir: Path, data_dir: Path | None) -> dict:
    """The base model's own zero-shot scores (every adapter starts equal to it, so one is enough)."""
    from ..evaluation import evaluate_tasks, primary_average
    from ..multitask import MultiTaskModel
    from ..runconfig import build_tasks, load_run_config

    suite = get_suite(suite_name)
    data = copy.deepcopy(suite.config)
    data["adapter"] = suite.methods[REFERENCE].adapter
    config = load_run_config(data=data)
    tasks = build_tasks(config.tasks)
    zero_shot = build_tasks(config.evaluation.zero_shot)
    model = MultiTaskModel.build(config.model, config.adapter, tasks)
    ev = config.evaluation
    limits = {s.name: s.max_eval for s in [*config.tasks, *ev.zero_shot]}

    def score(chosen):
        return evaluate_tasks(model, {t.name: (t, t.load(data_dir, ev.split, limit=limits[t.name])) for t in chosen},
                              batch_size=ev.batch_size, scoring=ev.scoring, task_id=None, progress=True, bf16=ev.bf16)

    # a decoder can be scored on the suite's own tasks before any training; an encoder's heads cannot
    scores = score(tasks) if model.kind == "decoder" else {}
    record = {"suite": suite_name, "method": "base", "zero_shot": score(zero_shot), "scores": scores,
              "average": primary_average(scores, tasks) if scores else None,
              "published_zero_shot": suite.published_zero_shot,
              **provenance(f"moore bench {suite_name} --methods base")}
    write_json(results_dir / "base.json", record)
    return record


def run_suite(suite_name: str, methods: list[str] | None, results_dir: Path, runs_dir: Path,
              data_dir: Path | None, progress: bool = True) -> None:
    suite = get_suite(suite_name)
    known = ["base", "efficiency", *suite.methods]
    chosen = methods or known
    unknown = [m for m in chosen if m not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown} for {suite_name}; choose from {known}")
    for method in chosen:
        path = results_dir / f"{method}.json"
        if path.is_file():
            print(f"{suite_name}/{method}: already has a result ({path}); skipped")
            continue
        print(f"=== {suite_name}/{method}")
        if method == "base":
            base_reference(suite_name, results_dir, data_dir)
        elif method == "efficiency":
            from .efficiency import measure_efficiency

            measure_efficiency(suite_name, results_dir)
        else:
            run_method(suite_name, method, results_dir, runs_dir, data_dir, progress)
