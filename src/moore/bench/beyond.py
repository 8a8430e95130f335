"""Beyond the paper, measured on a study suite: task-free inference and adding a task.

- ``taskfree~moore-L8~sN``: the reference's seed-N run gets a task classifier fitted on its
  training inputs; each task is scored with its true id, the inferred mixture and the mean
  embedding, the classifier's task identification is scored on the test inputs, and the
  zero-shot tasks are scored with the inferred mixture and with the mean embedding.
- ``heldout~moore-L8``: the reference trained on every task but ``added_task`` (each with its
  share of the full mixture). ``addtask~moore-L8~nN`` then adds that task from N training
  examples twice: a new task-table row and head (``add_task``), and, as the mean-embedding
  baseline, the head alone with the row left at the unseen-task embedding; it records whether the
  other tasks' outputs stayed bit-identical. ``addtask~lora~nN`` (an ordinary run) trains LoRA on
  the same N examples alone, at its chosen rate, for the same number of steps.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..evaluation import evaluate_tasks
from ..io import write_json
from ..multitask import MultiTaskModel
from ..precision import warn_if_bf16_is_slow
from ..runconfig import TaskSpec
from ..training.new_task import add_and_train_task, train_trainable
from .provenance import provenance
from .study import RunSpec, plan, run_folder, train_run, zero_shot_predictions_record
from .suites import REFERENCE, Suite

logger = logging.getLogger(__name__)

ROUTINGS = {"own": "own", "infer": "infer", "unseen": None}


def beyond_specs(suite: Suite, runs: dict, main: dict[str, RunSpec], per_task: dict[str, int]) -> list[RunSpec]:
    study, specs = suite.study, []
    if REFERENCE not in main:
        return specs
    if study.task_free:
        specs += [RunSpec(f"taskfree~{REFERENCE}~s{seed}", "taskfree", REFERENCE, main[REFERENCE].lr, seed=seed)
                  for seed in study.seeds if f"seed~{REFERENCE}~s{seed}" in runs]
    if study.added_task:
        others = tuple(t for t in per_task if t != study.added_task)
        held = replace(main[REFERENCE], name=f"heldout~{REFERENCE}~{study.added_task}", phase="heldout",
                       tasks=others, steps=sum(per_task[t] for t in others), bf16="seed" in study.bf16_phases)
        specs.append(held)
        for n in study.added_sizes:
            if held.name in runs:
                specs.append(RunSpec(f"addtask~{REFERENCE}~n{n}", "addtask", REFERENCE, study.added_lr,
                                     steps=study.added_steps, tasks=(study.added_task,), max_train=n))
            if "lora" in main:
                specs.append(replace(main["lora"], name=f"addtask~lora~n{n}", phase="addtask", steps=study.added_steps,
                                     tasks=(study.added_task,), max_train=n, bf16=False, param_lrs={}))
    return specs


def source_run(suite: Suite, spec: RunSpec) -> str:
    """The run whose trained model a task-free or add-a-task run of the reference starts from."""
    if spec.phase == "taskfree":
        return f"seed~{REFERENCE}~s{spec.seed}"
    return f"heldout~{REFERENCE}~{suite.study.added_task}"


def trained_folder(suite: Suite, name: str, runs_dir: Path) -> Path:
    """Where run ``name`` leaves its trained model."""
    return run_folder(suite, name, runs_dir) / "final"


def execute_beyond(suite: Suite, spec: RunSpec, runs: dict, results_dir: Path, runs_dir: Path,
                   data_dir: Path | None, device: str | None = None) -> dict:
    start = time.time()
    source = source_run(suite, spec)
    folder, retrained = _trained_folder(suite, source, runs, runs_dir, data_dir, device)
    if spec.phase == "taskfree":
        record = _task_free(suite, spec, folder, data_dir, device)
    else:
        record = _added_task(suite, spec, folder, data_dir, device)
    record["source_run"] = {"name": source, **retrained}
    record.update({"suite": suite.name, "name": spec.name, "phase": spec.phase, "method": spec.method,
                   "lr": spec.lr, "seed": spec.seed, "steps": spec.steps, "wall_seconds": time.time() - start,
                   "train_seconds": record.get("train_seconds", 0.0), "device": device or "cpu",
                   **provenance(f"moore bench {suite.name} --run {spec.name}")})
    write_json(Path(results_dir) / "runs" / f"{spec.name}.json", record)
    return record


def _evaluation(suite: Suite) -> tuple[int, str, list[dict], bool]:
    ev = suite.config["evaluation"]
    return ev.get("batch_size", 32), ev.get("split", "test"), ev.get("zero_shot", []), bool(ev.get("bf16"))


def _trained_folder(suite: Suite, name: str, runs: dict, runs_dir: Path, data_dir: Path | None,
                    device: str | None) -> tuple[Path, dict]:
    """The ``final/`` folder of a finished run of the plan, and whether it had to be trained again.

    Runs folders do not travel (checkpoints are not results): on a new machine the run is trained
    again from its seed, and the record says whether its test scores came out as recorded (the same
    code and thread count give the same run; another BLAS or thread count may differ in the last bits)."""
    folder = trained_folder(suite, name, runs_dir)
    if (folder / "adapter_config.json").is_file():
        return folder, {"retrained": False}
    if name not in runs:
        raise ValueError(f"{name} has not run yet; it comes before this run in the plan")
    logger.warning("%s: no trained model under %s (a new machine?); training it again from its seed", name, folder)
    spec = next(s for s in plan(suite, runs) if s.name == name)
    # in the precisions it was recorded with (not this machine's choice), or it would be another run
    spec = replace(spec, bf16=runs[name].get("bf16", spec.bf16), evaluation_bf16=runs[name].get("evaluation_bf16"))
    for setting, on in (("training.bf16", spec.bf16), ("evaluation.bf16", spec.evaluation_bf16)):
        if on:
            warn_if_bf16_is_slow(device, setting, advice=f"{name} is trained again as it was recorded, in bf16.")
    _, _, results, seconds = train_run(suite, spec, runs_dir, data_dir, device=device)
    reproduced = results["after"] == runs[name]["scores"]
    if not reproduced:
        logger.warning("%s trained again scores %s, not the recorded %s", name, results["after"], runs[name]["scores"])
    return folder, {"retrained": True, "retrain_seconds": seconds, "scores_reproduced": reproduced}


def _task_free(suite: Suite, spec: RunSpec, folder: Path, data_dir: Path | None, device: str | None) -> dict:
    _, specs = MultiTaskModel.read_specs(folder)
    tasks = [s.build() for s in specs]
    model = MultiTaskModel.load(folder, tasks).to(device or "cpu")
    batch_size, split, zero, bf16 = _evaluation(suite)
    limits = {s.name: s.max_train for s in specs}
    sizes = {s.name: s.max_eval for s in specs}  # the suite's test subsets (None: in full), as the runs scored
    train = {t.name: t.load(data_dir, "train", limit=limits[t.name], seed=spec.seed) for t in tasks}
    test = {t.name: (t, t.load(data_dir, split, limit=sizes[t.name], seed=0)) for t in tasks}  # as the runs scored
    zero_tasks = [TaskSpec.model_validate(z).build() for z in zero]
    zero_data = {t.name: (t, t.load(data_dir, split, limit=z.get("max_eval"))) for t, z in zip(zero_tasks, zero)}
    started = time.time()
    fitted = model.fit_task_classifier(train)
    seconds = time.time() - started
    identification = model.task_identification({n: examples for n, (_, examples) in test.items()},
                                               max_per_task=10**9)
    predictions: dict[str, dict] = {r: {} for r in ROUTINGS}  # for a paired bootstrap between routings
    scores = {r: evaluate_tasks(model, test, batch_size=batch_size, task_id=tid, bf16=bf16, predictions=predictions[r])
              for r, tid in ROUTINGS.items()}
    zero_predictions: dict[str, dict] = {r: {} for r in ("infer", "unseen")}
    zero_shot = {r: evaluate_tasks(model, zero_data, batch_size=batch_size, task_id=ROUTINGS[r], bf16=bf16,
                                   predictions=zero_predictions[r]) for r in ("infer", "unseen")}
    return {"tasks": [t.name for t in tasks], "classifier_train_accuracy": fitted, "identification": identification,
            "scores_by_routing": scores, "zero_shot_by_routing": zero_shot, "predictions_by_routing": predictions,
            "zero_shot_predictions_by_routing": zero_predictions,
            "zero_shot_labels": zero_shot_predictions_record(zero_data, zero_predictions["unseen"])["zero_shot_labels"],
            "labels": {n: [e["label"] for e in examples] for n, (_, examples) in test.items()}, "train_seconds": seconds}


@torch.no_grad()
def _outputs(model: MultiTaskModel, probes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Each old task's raw outputs (pooled encodings or logits) on a few of its test inputs."""
    out = {}
    for name, (task, examples) in probes.items():
        inputs = {k: v.to(model.device) for k, v in model.strategy.inputs(task, examples).items()}
        result = model.adapted(**inputs, task_ids=torch.full((len(examples),), model.task_id(name),
                                                             device=model.device))
        out[name] = (result.logits if getattr(result, "logits", None) is not None else result.last_hidden_state).cpu()
    return out


def _added_task(suite: Suite, spec: RunSpec, folder: Path, data_dir: Path | None, device: str | None) -> dict:
    study = suite.study
    batch_size, split, _, bf16 = _evaluation(suite)
    spec_data = next(t for t in suite.config["tasks"] if t["name"] == study.added_task)
    task_spec = TaskSpec.model_validate({**spec_data, "max_train": spec.max_train})
    task = task_spec.build()
    examples = task.load(data_dir, "train", limit=spec.max_train, seed=spec.seed)
    test = {task.name: (task, task.load(data_dir, split, limit=task_spec.max_eval, seed=0))}
    record: dict = {"added_task": task.name, "train_examples": len(examples), "train_seconds": 0.0}
    train_batch = suite.config["training"]["batch_size"]  # the batches the suite trains its tasks in
    for variant in ("head_only", "row_and_head"):  # the mean-embedding baseline, then MoORE's new row
        model = MultiTaskModel.load(folder).to(device or "cpu")
        probes = {t.name: (t, t.load(data_dir, split, limit=32, seed=0)) for t in model.tasks}
        before = _outputs(model, probes)
        torch.manual_seed(spec.seed)
        started = time.time()
        if variant == "head_only":  # the new row stays the unseen-task embedding: only the head trains
            model.add_task(task, task_spec)
            for _, layer in model.adapted.adapter_layers():
                layer.added_task_embedding.requires_grad_(False)
            if any(p.requires_grad for p in model.parameters()):  # a decoder has no head to train
                train_trainable(model, task, examples, steps=spec.steps, lr=spec.lr,
                                batch_size=train_batch, seed=spec.seed)
        else:
            add_and_train_task(model, task, examples, spec=task_spec, steps=spec.steps, lr=spec.lr,
                               batch_size=train_batch, seed=spec.seed, progress=False)
        record["train_seconds"] += time.time() - started
        after = _outputs(model, probes)
        record[variant] = {
            "scores": evaluate_tasks(model, test, batch_size=batch_size, bf16=bf16),
            "old_tasks_bit_identical": all(torch.equal(before[n], after[n]) for n in before),
        }
    return record

