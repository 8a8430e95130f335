"""A suite run as a study: converge, tune, repeat, and measure conflict against single-task runs.

The protocol, in phases; each phase is planned from the result files of the ones before it, so the
study resumes at any point and runs in pieces, in parallel, across sessions:

1. convergence: full fine-tuning and MoORE-L8 trained long at a constant rate, validation every
   ``eval_every`` steps; the suite's step count is where both validation averages come within
   ``plateau`` of their best.
2. grid: each tuned method at each rate of its family's grid, or of its own (``method_grids``)
   (seed 0, ``grid_fraction`` of the steps); the rate with the best validation average wins. MoORE-L8 also tries its reflections at
   a fraction of its rate (``param_lrs``), and keeps that if it wins. The other peers take the rate
   chosen for ``lr_donor`` (LoRA); the other variants of MoORE take MoORE-L8's (a variant is MoORE-L8
   with one change, and a LoRA rate can be ten times MoORE's, as on SmolLM2).
   With "precision" in ``bf16_phases``, a precision run repeats the reference's winning grid run in the
   other precision: bf16 autocast, or fp32 where the grid itself trains in bf16 ("grid" in ``bf16_phases``).
3. seeds: every method once at the chosen rate and the full step count; the main methods (and the
   peer with the best validation average) at every seed.
4. single: one adapter per task, with the steps that task got in the mixture, for ``single_methods``;
   taskcount: the same methods on each of ``task_subsets``, every task again with its mixture's
   share of examples, for the curve of conflict and oblivion against the number of tasks.

Every run writes ``runs/NAME.json`` under the results folder: test scores and predictions (for a
paired bootstrap), the validation and zero-shot curves, time and provenance.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..io import write_json
from ..precision import bf16_is_native, warn_if_bf16_is_slow
from ..runconfig import TrainingSpec
from ..training.checkpoints import latest_checkpoint, read_log, step_of
from ..training.mixing import mixing_probabilities
from .provenance import provenance
from .suites import ABLATION, OURS, PEER, REFERENCE, Study, Suite, get_suite, lr_text, next_rate, resolve_adapter


def beyond_specs(*args) -> list:
    from .beyond import beyond_specs as specs  # bench/beyond.py imports this module

    return specs(*args)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study."""

    name: str
    phase: str
    method: str
    lr: float
    seed: int = 0
    steps: int = 0
    tasks: tuple[str, ...] = ()  # empty: all the suite's tasks
    param_lrs: dict[str, float] = field(default_factory=dict)
    schedule: str | None = None  # None: the suite's
    bf16: bool = False  # bf16 autocast in training
    max_train: int | None = None  # train on this many examples of each task (None: the suite's)
    length_buckets: int = 1  # split each batch into this many by token length
    evaluation_bf16: bool | None = None  # bf16 autocast in scoring (None: the suite's ``evaluation.bf16``)


def run_folder(suite: Suite, name: str, runs_dir: Path) -> Path:
    """Where run ``name`` of ``suite`` trains: its checkpoints, log and ``final/`` model."""
    return Path(runs_dir) / suite.name / name


def is_beyond(spec: RunSpec) -> bool:
    """A task-free or add-a-task run of the reference: no training run of the usual kind, but work on
    the trained model of another run (``beyond.source_run``)."""
    return spec.phase in ("taskfree", "addtask") and spec.method == REFERENCE


def load_runs(results_dir: Path) -> dict[str, dict]:
    runs = {}
    for path in sorted((Path(results_dir) / "runs").glob("*.json")):
        runs[path.stem] = json.loads(path.read_text())
    return runs


# what a run file records of its spec; the tasks are compared apart (a file lists them all, a spec may name none)
RECORDED_FIELDS = ("phase", "method", "lr", "param_lrs", "seed", "steps", "bf16", "length_buckets")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    return a == b


def differences(spec: RunSpec, record: dict) -> dict[str, tuple[Any, Any]]:
    """Where a run file disagrees with the plan's spec of that run: field -> (recorded, planned). A file
    is held only to the fields it records: one written before a field existed ran at that field's
    default, which is what a spec of its time would have said. Precision counts only in the precision
    phase, whose point it is; elsewhere the plan's bf16 gives way to the hardware (``run_precision``)."""
    fields = [f for f in RECORDED_FIELDS if f != "bf16" or spec.phase == "precision"]
    out = {f: (record[f], getattr(spec, f)) for f in fields if f in record and not _same(record[f], getattr(spec, f))}
    if spec.tasks and record.get("tasks") is not None and sorted(record["tasks"]) != sorted(spec.tasks):
        out["tasks"] = (record["tasks"], list(spec.tasks))
    return out


def current_runs(suite: Suite, runs: dict[str, dict]) -> tuple[dict[str, dict], dict[str, dict]]:
    """(current, stale): the run files split by whether they match the run the plan names under their
    name. A stale file (trained at another rate, step count, seed, ... than the plan now asks, say after
    a rule changed or an earlier phase gained a run) is no evidence for the protocol, and the plan is
    made without it, so nothing downstream is chosen from it; stale maps its name to its differences.
    Files the plan does not name are kept as they are."""
    current, stale = dict(runs), {}
    while True:  # dropping a stale file can change what the plan names after it
        found = {}
        for spec in plan(suite, current):
            if spec.name in current and (diff := differences(spec, current[spec.name])):
                found[spec.name] = diff
        if not found:
            return current, stale
        for name in found:
            del current[name]
        stale.update(found)


def superseded_name(name: str, diff: dict[str, tuple[Any, Any]]) -> str:
    """A stale file's name in ``superseded/``: the run's name and what it was trained with instead."""
    def text(value: Any) -> str:
        if isinstance(value, float):
            return lr_text(value)
        if isinstance(value, dict):
            return "-".join(f"{k}{text(v)}" for k, v in value.items()) or "none"
        return "-".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

    return "~".join([name, *(f"{field}{text(recorded)}" for field, (recorded, _) in diff.items())])


def supersede(results_dir: Path, name: str, diff: dict[str, tuple[Any, Any]]) -> Path:
    """Move a stale run file to ``superseded/`` (kept as evidence, never overwritten; the report does not
    read that folder) before the run is trained again as the plan now says."""
    folder = Path(results_dir) / "superseded"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{superseded_name(name, diff)}.json"
    n = 1
    while target.exists():
        n += 1
        target = folder / f"{superseded_name(name, diff)}~{n}.json"
    (Path(results_dir) / "runs" / f"{name}.json").replace(target)
    logger.warning("%s: its file was trained with %s, not as the plan now says; moved to %s and trained again",
                   name, ", ".join(f"{f} {r!r} (plan: {p!r})" for f, (r, p) in diff.items()), target)
    return target


# --- the plan -----------------------------------------------------------------------------------------
def chosen_steps(study: Study, runs: dict[str, dict]) -> int | None:
    """The first evaluated step where every convergence run is within ``plateau`` of its best
    validation average (None until those runs are done)."""
    steps = []
    for method in study.convergence:
        record = runs.get(f"convergence~{method}")
        if record is None:
            return None
        curve = [(c["step"], c["average"]) for c in record["curve"] if c.get("average") is not None]
        best = max(a for _, a in curve)
        steps.append(next(s for s, a in curve if a >= best - study.plateau))
    return max(steps)


def task_steps(suite: Suite, data_sizes: dict[str, int], steps: int) -> dict[str, int]:
    """How many optimizer steps' worth of examples each task gets in the mixture."""
    training = TrainingSpec.model_validate(suite.config["training"])  # the defaults live there
    names = list(data_sizes)
    p = mixing_probabilities([data_sizes[n] for n in names], training.mixing, training.temperature)
    return {n: max(1, round(steps * float(pk))) for n, pk in zip(names, p)}


def plan(suite: Suite, runs: dict[str, dict]) -> list[RunSpec]:
    """Every run the study needs that the results so far let us name, done or not."""
    study = suite.study
    specs = [RunSpec("base", "base", "base", 0.0)]  # the untrained model: what training gains, and forgets
    specs += [RunSpec(f"convergence~{m}", "convergence", m, lr, steps=study.convergence_steps, schedule="constant")
              for m, lr in study.convergence.items()]
    steps = chosen_steps(study, runs)
    if steps is None:
        return specs
    grid_steps = max(1, round(steps * study.grid_fraction))
    methods = [m for m in suite.methods if suite.family(m) != ABLATION]
    tuned = [m for m in methods if m in study.tuned_methods]
    rates: dict[str, tuple[float, dict]] = {}  # method -> (lr, param_lrs) chosen on validation
    winners: dict[str, RunSpec] = {}
    for m in tuned:
        rates_tried = list(study.grid(suite.family(m), m))
        grid = []
        for extension in range(study.grid_extensions + 1):
            grid += [RunSpec(f"grid~{m}~lr{lr_text(lr)}", "grid", m, lr, steps=grid_steps,
                             bf16="grid" in study.bf16_phases) for lr in rates_tried[len(grid):]]
            if not all(s.name in runs for s in grid):
                break
            winner = max(grid, key=lambda s: runs[s.name]["validation_best"])
            if winner.lr not in (min(rates_tried), max(rates_tried)) or extension == study.grid_extensions:
                break
            rates_tried.append(next_rate(winner.lr, up=winner.lr == max(rates_tried)))  # past the edge it sits on
        specs += grid
        if not all(s.name in runs for s in grid):
            continue
        if m == REFERENCE and study.reflection_factors:
            variants = [replace(winner, name=f"grid~{m}~lr{lr_text(winner.lr)}~refl{f:g}",
                                param_lrs={"reflections": winner.lr * f}) for f in study.reflection_factors]
            specs += variants
            if not all(v.name in runs for v in variants):
                continue
            winner = max([winner, *variants], key=lambda s: runs[s.name]["validation_best"])
        rates[m] = (winner.lr, winner.param_lrs)
        winners[m] = winner
    if "precision" in study.bf16_phases and REFERENCE in winners:  # the same run, other precision: what bf16 costs
        twin_bf16 = not winners[REFERENCE].bf16
        specs.append(replace(winners[REFERENCE], name=f"precision~{REFERENCE}~{'bf16' if twin_bf16 else 'fp32'}",
                             phase="precision", bf16=twin_bf16))
    for m in methods:  # untuned: a variant of MoORE (MoORE with one change) waits for the reference's
        donor = REFERENCE if suite.family(m) == OURS else study.lr_donor  # rates, a peer for the donor's rate
        if m not in tuned and donor in rates:
            rates[m] = rates[donor] if donor == REFERENCE else (rates[donor][0], {})
    main = {m: RunSpec(f"seed~{m}~s{study.seeds[0]}", "seed", m, lr, seed=study.seeds[0], steps=steps,
                       param_lrs=param_lrs, bf16="seed" in study.bf16_phases) for m, (lr, param_lrs) in rates.items()}
    specs += main.values()
    peers = [m for m in methods if suite.family(m) == PEER]
    strongest = None
    if peers and all(p in main and main[p].name in runs for p in peers):
        strongest = max(peers, key=lambda p: runs[main[p].name]["validation_best"])
    for m in dict.fromkeys([*study.main_methods, *([strongest] if strongest else [])]):
        if m in main:
            specs += [replace(main[m], name=f"seed~{m}~s{seed}", seed=seed) for seed in study.seeds[1:]]
    sizes = next((r["train_sizes"] for r in runs.values() if r.get("train_sizes")), None)
    for m in study.single_methods:
        if m in main and sizes:
            per_task = task_steps(suite, sizes, steps)
            for task, n in per_task.items():
                specs.append(replace(main[m], name=f"single~{m}~{task}", phase="single", steps=n, tasks=(task,),
                                     bf16="single" in study.bf16_phases))
            for subset in study.task_subsets:  # every task with the examples it got in the full mixture
                specs.append(replace(main[m], name=f"taskcount~{m}~k{len(subset)}", phase="taskcount",
                                     steps=sum(per_task[t] for t in subset), tasks=tuple(subset),
                                     bf16="taskcount" in study.bf16_phases))
    if sizes:
        specs += beyond_specs(suite, runs, main, task_steps(suite, sizes, steps))
    return [replace(s, length_buckets=study.length_buckets) if s.phase in study.length_bucket_phases else s
            for s in specs]


def chosen_runs(suite: Suite, runs: dict[str, dict]) -> dict[str, list[dict]]:
    """For each method, its runs at the chosen configuration and the full step count, one per seed."""
    out = {}
    for m in suite.methods:
        mine = [r for name, r in runs.items() if name.startswith(f"seed~{m}~s")]
        if mine:
            out[m] = sorted(mine, key=lambda r: r["seed"])
    return out


# --- one run --------------------------------------------------------------------------------------------
def run_config(suite: Suite, spec: RunSpec, adapter: dict, runs_dir: Path) -> dict:
    data = copy.deepcopy(suite.config)
    if spec.tasks:
        data["tasks"] = [t for t in data["tasks"] if t["name"] in spec.tasks]
    if spec.max_train:
        data["tasks"] = [{**t, "max_train": spec.max_train} for t in data["tasks"]]
    data["adapter"] = adapter
    training = data["training"]
    training.update(lr=spec.lr, seed=spec.seed, steps=spec.steps, param_lrs=dict(spec.param_lrs), bf16=spec.bf16)
    if spec.evaluation_bf16 is not None:
        data["evaluation"]["bf16"] = spec.evaluation_bf16
    if spec.length_buckets > 1:  # written only where used: runs from before the option resume unchanged
        training.update(length_buckets=spec.length_buckets)
    every = suite.study.eval_every
    if spec.phase != "convergence" and suite.study.curve_every:
        every = suite.study.curve_every
    training.update(eval_every=max(1, min(every, spec.steps)), save_every=max(1, min(every, spec.steps)))
    if spec.schedule:
        training.update(schedule=spec.schedule, warmup_steps=0)
    data["output_dir"] = str(run_folder(suite, spec.name, runs_dir))
    return data


def run_precision(suite: Suite, spec: RunSpec, runs_dir: Path, device: str | None) -> RunSpec:
    """The spec with the precisions this run trains and scores in. The plan asks for bf16 autocast where
    it is fast; on a device that emulates it (an x86 CPU without AVX-512 BF16 or AMX: steps 15-18x
    slower) the run goes in fp32 instead, except in the precision phase, which exists to compare the
    two (its measured gap, a tenth of a point or two, is what lets seeds of either precision stand side
    by side; the run file records which it was). A run already begun keeps the precision it began
    with (its latest checkpoint's config says which), so that it resumes on any machine."""
    bf16, evaluation_bf16, begun = _precision(suite, spec, runs_dir, device)
    planned_evaluation = bool(suite.config["evaluation"].get("bf16"))
    for setting, planned, used in (("training.bf16", spec.bf16, bf16),
                                   ("evaluation.bf16", planned_evaluation, evaluation_bf16)):
        if planned and not used:
            logger.warning("%s: %s's plan sets %s, but %s; it runs in fp32 (its file records that)", spec.name,
                           suite.name, setting, "the run began in fp32" if begun is not None else
                           "this device emulates bf16 (no AVX-512 BF16 or AMX)")
        elif used:  # bf16 kept (a precision run, a run begun in bf16): slow here, say so once
            warn_if_bf16_is_slow(device, setting, advice=(
                f"{spec.name} " + ("began in bf16 and keeps it, so that it resumes as it began"
                                   if begun is not None and spec.phase != "precision"
                                   else "is the precision run, which compares bf16 with fp32")
                + "; expect it to take many times as long here as on a CPU with AVX-512 BF16 or a GPU."))
    return replace(spec, bf16=bf16, evaluation_bf16=evaluation_bf16)


def _precision(suite: Suite, spec: RunSpec, runs_dir: Path, device: str | None) -> tuple[bool, bool, Path | None]:
    """``run_precision``'s choice, said nowhere: (bf16 in training, bf16 in scoring, the checkpoint the
    run would resume from, or None)."""
    checkpoint = latest_checkpoint(run_folder(suite, spec.name, runs_dir) / "checkpoints")
    if checkpoint is not None:
        saved = json.loads((checkpoint / "run_config.json").read_text())
        return (bool(saved.get("training", {}).get("bf16", False)),
                bool(saved.get("evaluation", {}).get("bf16", False)), checkpoint)
    if spec.phase == "precision" or bf16_is_native(device):
        return spec.bf16, bool(suite.config["evaluation"].get("bf16")), None
    return False, False, None


def pending(suite: Suite, runs: dict[str, dict]) -> list[RunSpec]:
    """The runs the plan names and ``runs`` (current files) lack, in the order a study starts them:
    shortest first, so that more results land sooner and a run cut short costs least."""
    return [s for s in sorted(plan(suite, runs), key=lambda s: s.steps) if s.name not in runs]


def describe_plan(suite_name: str, results_dir: Path, runs_dir: Path, device: str | None = None) -> str:
    """What is left of a study, for a person deciding what to run where: each run its plan names and
    its results lack, in the order a study starts them, with its settings, the precision it would
    train in on ``device`` and the checkpoint it would resume from; then the stale files."""
    from .beyond import source_run, trained_folder

    suite = get_suite(suite_name)
    runs, stale = current_runs(suite, load_runs(results_dir))
    todo = pending(suite, runs)
    lines = [f"{suite_name}: {len(runs)} runs done; {len(todo)} named by the plan and not yet run"
             + (", in the order a study starts them:" if todo else ".")]
    width = max((len(s.name) for s in todo), default=0)
    for spec in todo:
        settings = f"{spec.phase}, {spec.method}, lr {lr_text(spec.lr)}, seed {spec.seed}"
        if spec.phase == "base":
            lines.append(f"  {spec.name:<{width}}  the base model scored on every split and probe, no training")
            continue
        if is_beyond(spec):
            source = source_run(suite, spec)
            folder = trained_folder(suite, source, runs_dir)
            if (folder / "adapter_config.json").is_file():
                where = f"starts from {source}'s model ({folder})"
            else:  # what execute_beyond will do: train the source again, in the precision it was recorded in
                recorded = runs.get(source, {})
                where = (f"{source}'s model is not under {runs_dir}: trains it again first, as recorded ("
                         f"{recorded.get('steps', '?')} steps, {'bf16' if recorded.get('bf16') else 'fp32'})")
            lines.append(f"  {spec.name:<{width}}  {settings}; {where}")
            continue
        bf16, _, checkpoint = _precision(suite, spec, runs_dir, device)
        where = (f"resumes from step {step_of(checkpoint)} ({run_folder(suite, spec.name, runs_dir)})"
                 if checkpoint else "starts afresh")
        steps = f"{spec.steps} steps" if spec.steps else "no training"
        lines.append(f"  {spec.name:<{width}}  {settings}, {steps}, {'bf16' if bf16 else 'fp32'}; {where}")
    for name, diff in sorted(stale.items()):
        lines.append(f"stale, trained again when the study reaches it: {name} ("
                     + ", ".join(f"{f} {r!r}, plan {p!r}" for f, (r, p) in diff.items()) + ")")
    if todo:
        lines.append(f"Later phases are planned as these land. One by hand: moore bench {suite_name} --run NAME")
    else:  # the plan is made from the runs there are: with none missing, no phase is left to name
        lines.append(f"The study is complete; `moore bench {suite_name} --report` rebuilds its report.")
    return "\n".join(lines)


def train_run(suite: Suite, spec: RunSpec, runs_dir: Path, data_dir: Path | None, *, device: str | None = None,
              progress: bool = False) -> tuple[Any, dict, dict, float]:
    """Train one run of the plan into ``runs_dir`` (resuming from its checkpoints); (trainer, adapter
    dict, the trainer's results, seconds)."""
    from ..hub import load_base_model
    from ..runconfig import load_run_config
    from ..training import Trainer

    base, _, _ = load_base_model(suite.config["model"]["name_or_path"])
    adapter, _ = resolve_adapter(suite, spec.method, base)
    del base
    config = load_run_config(data=run_config(suite, spec, adapter, runs_dir))
    torch.manual_seed(spec.seed)
    trainer = Trainer(config, data_dir=data_dir, progress=progress, device=device)
    start = time.time()
    # nothing to resume (a run stopped before its first checkpoint, perhaps under other settings): start afresh
    results = trainer.run(resume=True) if trainer.latest_checkpoint() else trainer.run(overwrite=True)
    return trainer, adapter, results, time.time() - start


def execute(suite_name: str, name: str, results_dir: Path, runs_dir: Path, data_dir: Path | None,
            device: str | None = None, progress: bool = False) -> dict:
    """Train and score one run of the study's plan; writes ``runs/NAME.json``."""
    from ..evaluation import evaluate_tasks

    suite = get_suite(suite_name)
    current, stale = current_runs(suite, load_runs(results_dir))
    specs = {s.name: s for s in plan(suite, current)}
    if name not in specs:
        raise ConfigError(f"{name!r} is not (yet) a run of {suite_name}'s plan; runs it can name now: {sorted(specs)}")
    spec = specs[name]
    if name in stale:  # the old file stays as evidence, out of the plan's way
        supersede(results_dir, name, stale[name])
    if spec.phase == "base":
        return _execute_base(suite, results_dir, data_dir, device)
    if is_beyond(spec):
        from .beyond import execute_beyond

        return execute_beyond(suite, spec, current, results_dir, runs_dir, data_dir, device=device)
    spec = run_precision(suite, spec, runs_dir, device)
    trainer, adapter, results, seconds = train_run(suite, spec, runs_dir, data_dir, device=device, progress=progress)
    config, model = trainer.config, trainer.model
    predictions = dict(trainer.test_predictions)  # from the final test pass
    if not predictions:  # the run had finished before: score its test sets once more, as the trainer does
        ev = config.evaluation
        evaluate_tasks(model, trainer.test_data, batch_size=ev.batch_size, scoring=ev.scoring,
                       max_new_tokens=ev.max_new_tokens, bf16=ev.bf16, predictions=predictions)
    zero_predictions = dict(trainer.zero_shot_predictions)
    if trainer.zero_shot and not zero_predictions:  # likewise for the zero-shot probes (perplexity has none)
        ev = config.evaluation
        evaluate_tasks(model, trainer.zero_shot_data, batch_size=ev.batch_size, scoring=ev.scoring,
                       max_new_tokens=ev.max_new_tokens, task_id=None, bf16=ev.bf16, predictions=zero_predictions)
    zero_shot_metric = {t.name: t.metric for t in trainer.zero_shot}
    curve = [{"step": r["step"], "average": r.get("average"),
              "scores": {t: s.get(trainer.eval_data[t][0].metric) for t, s in r["eval"].items()},
              "zero_shot": {t: s.get(zero_shot_metric[t]) for t, s in r.get("zero_shot", {}).items()}}
             for r in read_log(Path(config.output_dir) / "log.jsonl") if r.get("split") == "validation"]
    trainable, _ = model.adapted.get_nb_trainable_parameters()
    record = {
        "suite": suite_name, "name": name, "phase": spec.phase, "method": spec.method, "lr": spec.lr,
        "param_lrs": spec.param_lrs, "seed": spec.seed, "steps": spec.steps, "bf16": spec.bf16,
        "evaluation_bf16": spec.evaluation_bf16, "length_buckets": spec.length_buckets,
        "tasks": [t.name for t in trainer.tasks],
        "adapter": adapter, "trainable_parameters": trainable, "share": trainable / model.adapted.num_base_parameters,
        "scores": results["after"], "average": results["average"]["after"], "zero_shot": results["zero_shot"],
        "best_step": results["best_step"], "validation_best": max(c["average"] for c in curve),
        "curve": curve, "predictions": predictions,
        "labels": {t: [e["label"] for e in examples] for t, (_, examples) in trainer.test_data.items()},
        **zero_shot_predictions_record(trainer.zero_shot_data, zero_predictions),
        "train_sizes": {t: len(v) for t, v in trainer.train_data.items()} if not spec.tasks else None,
        "wall_seconds": seconds, "train_seconds": results["seconds"], "device": str(trainer.ctx.device),
        **provenance(f"moore bench {suite_name} --run {name}"),
    }
    write_json(Path(results_dir) / "runs" / f"{name}.json", record)
    return record


def _execute_base(suite: Suite, results_dir: Path, data_dir: Path | None, device: str | None) -> dict:
    """The base model scored as the runs are: the test tasks (decoders only: an encoder's task heads
    would be untrained) and the zero-shot tasks, through an adapter at its identity init; and step 0
    of every curve, on the validation sets the seed-0 runs evaluate at every step."""
    from ..evaluation import evaluate_tasks, primary_average
    from ..runconfig import build_tasks
    from ..training.trainer import validation_sets

    start = time.time()
    config, model = _base_model(suite, results_dir)
    model.to(device or "cpu")
    tasks, zero = model.tasks, build_tasks(config.evaluation.zero_shot)
    ev, data_dir = config.evaluation, config.resolved_data_dir(data_dir)
    limits = {s.name: s.max_eval for s in [*config.tasks, *ev.zero_shot]}
    test = {t.name: (t, t.load(data_dir, ev.split, limit=limits[t.name], seed=0)) for t in tasks}
    zero_data = {t.name: (t, t.load(data_dir, ev.split, limit=limits[t.name], seed=0)) for t in zero}
    kwargs = dict(batch_size=ev.batch_size, scoring=ev.scoring, max_new_tokens=ev.max_new_tokens, task_id=None,
                  bf16=ev.bf16)
    scores, predictions, zero_predictions = {}, {}, {}
    validation, zero_validation = validation_sets(config, tasks, zero, data_dir, seed=0)
    curve_point: dict = {"step": 0, "average": None, "scores": {}, "zero_shot": {}}
    if model.kind == "decoder":  # the LoRA's B is zero at init: these are the base model's own answers
        scores = evaluate_tasks(model, test, **kwargs, predictions=predictions)
        on_validation = evaluate_tasks(model, validation, **kwargs)
        curve_point.update(average=primary_average(on_validation, tasks),
                           scores={t.name: on_validation[t.name].get(t.metric) for t in tasks})
    if zero_validation:
        on_validation = evaluate_tasks(model, zero_validation, **kwargs)
        curve_point["zero_shot"] = {t.name: on_validation[t.name].get(t.metric) for t in zero}
    record = {
        "suite": suite.name, "name": "base", "phase": "base", "method": "base", "lr": 0.0, "seed": 0, "steps": 0,
        "tasks": [t.name for t in tasks], "scores": scores,
        "average": primary_average(scores, tasks) if scores else None,
        "zero_shot": evaluate_tasks(model, zero_data, **kwargs, predictions=zero_predictions),
        **zero_shot_predictions_record(zero_data, zero_predictions), "predictions": predictions,
        "labels": {n: [e["label"] for e in examples] for n, (_, examples) in test.items()} if predictions else {},
        "trainable_parameters": 0, "share": 0.0, "curve": [curve_point], "validation_best": None,
        "wall_seconds": time.time() - start, "train_seconds": 0.0, "device": str(model.device),
        **provenance(f"moore bench {suite.name} --run base"),
    }
    write_json(Path(results_dir) / "runs" / "base.json", record)
    return record


def _base_model(suite: Suite, results_dir: Path):
    """(config, model): the suite's base model behind a LoRA at its identity init (B = 0), as the
    ``base`` run scores it."""
    from ..multitask import MultiTaskModel
    from ..runconfig import build_tasks, load_run_config

    data = copy.deepcopy(suite.config)
    data.update(adapter={"method": "lora"}, output_dir=str(Path(results_dir) / "unused"))
    config = load_run_config(data=data)
    torch.manual_seed(0)
    return config, MultiTaskModel.build(config.model, config.adapter, build_tasks(config.tasks), task_specs=config.tasks)


def zero_shot_predictions_record(data: dict, predictions: dict) -> dict:
    """The zero-shot probes' predictions and labels as a run file keeps them, for a paired bootstrap of
    forgetting (a perplexity's predictions are its text windows' summed NLL and tokens, without labels)."""
    return {"zero_shot_predictions": predictions,
            "zero_shot_labels": {n: [e["label"] for e in examples] for n, (_, examples) in data.items()
                                 if n in predictions and all("label" in e for e in examples)}}


def add_zero_shot_predictions(suite_name: str, results_dir: Path, runs_dir: Path, data_dir: Path | None,
                              device: str | None = None, names: list[str] | None = None) -> list[str]:
    """Zero-shot predictions for run files written before runs kept them (all, or a perplexity's text
    windows): each run's saved model (``RUNS/SUITE/NAME/final``; the base model rebuilt at its identity
    init) scores the missing zero-shot test sets again with the unseen-task embedding, as the run did.
    A file is rewritten only where every score comes out as recorded; runs whose model is not on this
    machine are left as they are. ``names``: only these runs. Returns the names of the files updated."""
    from ..evaluation import evaluate_tasks
    from ..multitask import MultiTaskModel
    from ..runconfig import build_tasks, load_run_config

    suite, updated = get_suite(suite_name), []
    for name, record in sorted(load_runs(results_dir).items()):
        kept = record.get("zero_shot_predictions", {})
        missing = [t for t in record.get("zero_shot", {}) if t not in kept]
        if not missing or record["phase"] in ("taskfree", "addtask") or (names is not None and name not in names):
            continue
        folder = run_folder(suite, name, runs_dir)
        if name == "base":
            config, model = _base_model(suite, results_dir)
        elif (folder / "final" / "adapter_config.json").is_file() and (folder / "run_config.json").is_file():
            config = load_run_config(folder / "run_config.json")
            _, specs = MultiTaskModel.read_specs(folder / "final")
            model = MultiTaskModel.load(folder / "final", [s.build() for s in specs])
        else:
            logger.info("%s: no saved model under %s; its file keeps no zero-shot predictions", name, folder)
            continue
        model.to(device or "cpu")
        ev, data_root = config.evaluation, config.resolved_data_dir(data_dir)
        probes = [t for t in build_tasks(ev.zero_shot) if t.name in missing]
        limits = {s.name: s.max_eval for s in ev.zero_shot}
        zero_data = {t.name: (t, t.load(data_root, ev.split, limit=limits[t.name], seed=0)) for t in probes}
        predictions: dict = {}
        scores = evaluate_tasks(model, zero_data, batch_size=ev.batch_size, scoring=ev.scoring,
                                max_new_tokens=ev.max_new_tokens, task_id=None, bf16=ev.bf16, predictions=predictions)
        off = {t: (s, record["zero_shot"][t]) for t, s in scores.items()
               if any(abs(v - record["zero_shot"][t].get(m, v)) > 1e-6 * max(1.0, abs(v)) for m, v in s.items())}
        if off:
            logger.warning("%s: its saved model scores %s, not the recorded %s; its file is left as it is", name,
                           {t: a for t, (a, _) in off.items()}, {t: b for t, (_, b) in off.items()})
            continue
        added = zero_shot_predictions_record(zero_data, predictions)
        record.update(zero_shot_predictions={**kept, **added["zero_shot_predictions"]},
                      zero_shot_labels={**record.get("zero_shot_labels", {}), **added["zero_shot_labels"]})
        write_json(Path(results_dir) / "runs" / f"{name}.json", record)
        updated.append(name)
        logger.info("%s: zero-shot predictions added (%s)", name, ", ".join(predictions))
    return updated


# --- the whole study ---------------------------------------------------------------------------------------
def run_study(suite_name: str, results_dir: Path, runs_dir: Path, data_dir: Path | None, *, workers: int = 1,
              device: str | None = None, time_budget: float | None = None) -> None:
    """Run what the plan names and the results lack, ``workers`` runs at a time (each its own
    process), re-planning as runs finish, until the plan is done or ``time_budget`` seconds have
    passed (runs under way then are finished; none is started)."""
    suite = get_suite(suite_name)
    start = time.time()
    context = _run_context()
    running: dict[str, multiprocessing.process.BaseProcess] = {}
    failed: set[str] = set()
    warned: set[str] = set()
    while True:
        for name, proc in list(running.items()):
            if proc.exitcode is not None:
                del running[name]
                if proc.exitcode != 0:
                    failed.add(name)
                    logger.error("%s failed (exit %d); see %s", name, proc.exitcode, _log_path(results_dir, name))
                print(f"[{time.time() - start:7.0f}s] {name}: {'done' if proc.exitcode == 0 else 'FAILED'}",
                      flush=True)
        runs, stale = current_runs(suite, load_runs(results_dir))  # a stale file's run is trained again
        for name in stale.keys() - warned:
            warned.add(name)
            print(f"[{time.time() - start:7.0f}s] {name}: its file is stale (" + ", ".join(
                f"{f} {r!r}, plan {p!r}" for f, (r, p) in stale[name].items()) + "); it runs again", flush=True)
        todo = [s.name for s in pending(suite, runs) if s.name not in running and s.name not in failed]
        out_of_time = time_budget is not None and time.time() - start > time_budget
        if (not todo or out_of_time) and not running:
            break
        while todo and len(running) < workers and not out_of_time:
            name = todo.pop(0)
            # the run's own command, as `moore bench SUITE --run NAME` would run it by hand
            argv = ["bench", suite_name, "--run", name, "--no-progress",
                    "--results-dir", str(results_dir), "--runs-dir", str(runs_dir)]
            argv += ["--data-dir", str(data_dir)] if data_dir else []
            argv += ["--device", device] if device else []
            log = _log_path(results_dir, name)
            log.parent.mkdir(parents=True, exist_ok=True)
            running[name] = context.Process(target=_run_command, args=(argv, str(log)), name=name)
            running[name].start()
            print(f"[{time.time() - start:7.0f}s] {name}: started", flush=True)
        multiprocessing.connection.wait([p.sentinel for p in running.values()], timeout=2)
    runs, _ = current_runs(suite, load_runs(results_dir))
    left = pending(suite, runs)
    print(f"study {suite_name}: {len(runs)} runs done, {len(left)} left"
          + (f", failed: {sorted(failed)}" if failed else ""))


def _run_context() -> multiprocessing.context.BaseContext:
    """Where the study's runs start: each in a process of its own (a run's memory and threads end
    with it), forked from a server that imported torch and transformers once (``_preload``), where the
    platform has one; elsewhere spawned, as a fresh interpreter."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["moore.bench._preload"])
    return context


def _run_command(argv: list[str], log: str, error_log: str | None = None) -> None:
    """A `moore` command in a process of its own (a study run): its output in ``log``, its errors
    there too or in ``error_log``."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    out = os.open(log, flags, 0o644)
    err = os.open(error_log, flags, 0o644) if error_log else out
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in {out, err}:
        os.close(fd)
    from ..cli import app

    app(argv, prog_name="moore")  # exits with the command's status (SystemExit), as `moore` would


def _log_path(results_dir: Path, name: str) -> Path:
    return Path(results_dir) / "logs" / f"{name}.log"


def study_cost(runs: dict[str, dict]) -> dict[str, Any]:
    seconds = sum(r.get("train_seconds", r["wall_seconds"]) for r in runs.values())
    # records from before runs named their device: on a machine without a GPU it can only be the CPU
    devices = sorted({r.get("device") or ("?" if r["machine"].get("gpu") else "cpu") for r in runs.values()})
    return {"runs": len(runs), "hours": seconds / 3600, "devices": devices,
            "gpus": sorted({r["machine"].get("gpu") or "none" for r in runs.values()})}


