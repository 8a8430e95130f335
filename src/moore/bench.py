"""``moore bench SUITE``: every method on the same data, with the same budget and seed; a report.

Each method's run writes one JSON file under ``benchmarks/results/<suite>/`` (scores, zero-shot
scores, trainable parameters, time, the exact command, git commit, seed and machine). A method
that already has a file is skipped, so a suite can run in pieces, in the background, across
sessions. ``--report`` rebuilds ``REPORT.md`` and its PNG plots from those files alone.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from .io import write_json

logger = logging.getLogger(__name__)

_MOORE_NLU = {"method": "moore", "task_dim": 32, "sample_dim": 16}
_MOORE_CSR = {"method": "moore", "task_dim": 64, "sample_dim": 32}


def _methods(moore: dict, experts: int) -> dict[str, dict]:
    """The compared methods: MoORE (L = 0 and 8) and every peer, sized to MoORE-L8's budget."""
    return {
        "moore-L8": {**moore, "num_reflections": 8},
        "moore-L0": {**moore, "num_reflections": 0},
        "lora": {"method": "lora", "budget": True},
        "hra": {"method": "hra", "budget": True},
        "loramoe": {"method": "loramoe", "num_experts": experts, "budget": True},
        "mixlora": {"method": "mixlora", "num_experts": experts, "top_k": 2, "budget": True},
        "mosld": {"method": "mosld", "num_experts": experts, "budget": True},
        "hydralora": {"method": "hydralora", "num_experts": experts, "budget": True},
        "mtl_lora": {"method": "mtl_lora", "num_experts": experts, "budget": True},
        "omoe": {"method": "omoe", "num_experts": experts, "budget": True},
        "full": {"method": "full", "lr": 5e-5},
    }


def _ablation(moore: dict) -> dict[str, dict]:
    """Paper Table 13: task routing only, sample routing only, reflections only (all three = moore-L8)."""
    dt, ds = moore["task_dim"], moore["sample_dim"]
    return {
        "ablation-task-only": {"method": "moore", "task_dim": dt, "sample_dim": 0, "num_reflections": 0},
        "ablation-sample-only": {"method": "moore", "task_dim": 0, "sample_dim": ds, "num_reflections": 0},
        "ablation-reflections-only": {"method": "moore", "task_dim": 0, "sample_dim": 0, "num_reflections": 8},
    }


SUITES: dict[str, dict[str, Any]] = {
    "nlu-mtl-mini": {
        "title": "NLU-MTL-mini: all-MiniLM-L6-v2 on five GLUE tasks at once",
        "config": {
            "model": {"name_or_path": "minilm", "max_length": 64},
            "tasks": [{"name": n, "max_train": 1000, "max_eval": 300} for n in ("cola", "sst2", "mrpc", "rte", "qnli")],
            "training": {"steps": 200, "batch_size": 32, "lr": 3e-4, "weight_decay": 0.01, "schedule": "wsd",
                         "warmup_steps": 0.06, "decay_steps": 0.2, "mixing": "proportional", "seed": 0,
                         "log_every": 10, "head_lr": 3e-3, "save_every": 50},
            "evaluation": {"batch_size": 64, "split": "test",
                           "zero_shot": [{"name": "stsbenchmark"}]},
        },
        "methods": {**_methods(_MOORE_NLU, 4), **_ablation(_MOORE_NLU)},
        "routing_layer": "encoder.layer.3.attention.self.query",
        "published_zero_shot": {"stsbenchmark": {"spearman": 0.8203}},
        "subsampling": "1000 training examples per task (fixed seed), 300 scored per task (test split; CoLA, RTE: "
                       "GLUE dev; SST-2: GLUE dev; MRPC: its test file; QNLI: the held-out tenth of GLUE dev); "
                       "200 optimizer steps of 32; sequences cut at 64 tokens. STS Benchmark test in full.",
    },
    "csr-mtl-mini": {
        "title": "CSR-MTL-mini: SmolLM2-135M-Instruct on four commonsense tasks at once",
        "config": {
            "model": {"name_or_path": "smollm2", "max_length": 160},
            "tasks": [{"name": n, "max_train": 400, "max_eval": 150} for n in ("arc-c", "arc-e", "boolq", "obqa")],
            "training": {"steps": 60, "batch_size": 8, "lr": 3e-4, "schedule": "wsd", "warmup_steps": 0.06,
                         "decay_steps": 0.2, "mixing": "proportional", "seed": 0, "log_every": 10, "save_every": 20},
            "evaluation": {"batch_size": 16, "split": "test", "scoring": "loglik",
                           "zero_shot": [{"name": "wikitext2", "max_eval": 200}, {"name": "sst2", "max_eval": 150},
                                         {"name": "rte", "max_eval": 150}]},
        },
        "methods": {**_methods(_MOORE_CSR, 4),
                    "moore-L8-rms": {**_MOORE_CSR, "num_reflections": 8, "normalize_sample_router": True}},
        "notes": "`moore-L8-rms` is not in the paper: MoORE-L8 whose token-level router sees x / rms(x) instead "
                 "of x (`normalize_sample_router=True`). SmolLM2's first token carries a massive activation (its "
                 "MLP input at layer 11 has norm ~3000 against a median of ~6), and the paper's linear router "
                 "gives it offsets of the size of the singular values themselves.",
        "routing_layer": "model.layers.15.self_attn.q_proj",
        "efficiency": {"batch_size": 4, "length": 128},  # OMoE needs ~20 GB at 8 × 128
        "published_zero_shot": {},
        "subsampling": "400 training examples per task (fixed seed), 150 scored per task (test split); "
                       "60 optimizer steps of 8 (480 examples, under a third of an epoch); sequences cut at 160 "
                       "tokens; WikiText-2 test: its first 200 lines; SST-2 and RTE zero-shot: 150 each. "
                       "Sized so that one method takes about 10 minutes on 2 CPU cores.",
    },
}


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def resolve_adapter(suite: dict, name: str, base_model) -> tuple[dict, dict]:
    """(adapter dict, training overrides) for a method, sized to MoORE-L8's budget where asked."""
    from .budget import count_trainable_parameters, match_budget
    from .config import AdapterConfig

    spec = dict(suite["methods"][name])
    training = {"lr": spec.pop("lr")} if "lr" in spec else {}
    if spec.pop("budget", False):
        num_tasks = len(suite["config"]["tasks"])
        reference = AdapterConfig.from_dict({**suite["methods"]["moore-L8"], "num_tasks": num_tasks})
        budget = count_trainable_parameters(base_model, reference)
        matched = match_budget(base_model, AdapterConfig.from_dict({**spec, "num_tasks": num_tasks}), budget)
        spec = {k: v for k, v in matched.to_dict().items() if k != "num_tasks"}
    return spec, training


def run_method(suite_name: str, method: str, results_dir: Path, runs_dir: Path, data_dir: Path | None,
               progress: bool = True) -> dict:
    from .hub import load_base_model
    from .runconfig import load_run_config
    from .training import Trainer

    suite = SUITES[suite_name]
    base, _, _ = load_base_model(suite["config"]["model"]["name_or_path"])
    adapter, training = resolve_adapter(suite, method, base)
    del base
    data = copy.deepcopy(suite["config"])
    data["adapter"] = adapter
    data["training"].update(training)
    data["output_dir"] = str(runs_dir / suite_name / method)
    config = load_run_config(data=data)
    torch.manual_seed(0)
    trainer = Trainer(config, data_dir=data_dir, progress=progress)
    start = time.time()
    results = trainer.run(resume=True)
    seconds = time.time() - start
    trainable, total = trainer.model.adapted.get_nb_trainable_parameters()
    record = {
        "suite": suite_name, "method": method, "adapter": adapter, "training": config.training.model_dump(),
        "trainable_parameters": trainable, "base_parameters": trainer.model.adapted.num_base_parameters,
        "share": trainable / trainer.model.adapted.num_base_parameters,
        "scores": results["after"], "average": results["average"]["after"], "zero_shot": results["zero_shot"],
        "best_step": results["best_step"], "wall_seconds": seconds,
        "command": "moore bench " + suite_name + " --methods " + method, "git_commit": _git_commit(),
        "seed": config.training.seed, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if method == "moore-L8":
        from .routing_analysis import routing_statistics

        record["routing"] = routing_statistics(trainer.model, suite["routing_layer"], trainer.test_data, limit=64)
    write_json(results_dir / f"{method}.json", record)
    return record


def base_reference(suite_name: str, results_dir: Path, data_dir: Path | None) -> dict:
    """The base model's own zero-shot scores (every adapter starts equal to it, so one is enough)."""
    from .evaluation import evaluate_tasks, primary_average
    from .multitask import MultiTaskModel
    from .runconfig import build_tasks, load_run_config

    suite = SUITES[suite_name]
    data = copy.deepcopy(suite["config"])
    data["adapter"] = suite["methods"]["moore-L8"]
    config = load_run_config(data=data)
    tasks = build_tasks(config.tasks)
    zero_shot = build_tasks(config.evaluation.zero_shot)
    model = MultiTaskModel.build(config.model.model_dump(), config.adapter, tasks)
    ev = config.evaluation
    limits = {s.name: s.max_eval for s in [*config.tasks, *ev.zero_shot]}

    def score(chosen):
        return evaluate_tasks(model, {t.name: (t, t.load(data_dir, ev.split, limit=limits[t.name])) for t in chosen},
                              batch_size=ev.batch_size, scoring=ev.scoring, task_id=None, progress=True)

    # a decoder can be scored on the suite's own tasks before any training; an encoder's heads cannot
    scores = score(tasks) if model.kind == "decoder" else {}
    record = {"suite": suite_name, "method": "base", "zero_shot": score(zero_shot), "scores": scores,
              "average": primary_average(scores, tasks) if scores else None,
              "published_zero_shot": suite["published_zero_shot"], "git_commit": _git_commit(),
              "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": f"moore bench {suite_name} --methods base"}
    write_json(results_dir / "base.json", record)
    return record


def run_suite(suite_name: str, methods: list[str] | None, results_dir: Path, runs_dir: Path,
              data_dir: Path | None, progress: bool = True) -> None:
    if suite_name not in SUITES:
        raise ValueError(f"unknown suite {suite_name!r}; suites: {sorted(SUITES)}")
    suite = SUITES[suite_name]
    known = ["base", "efficiency", *suite["methods"]]
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
