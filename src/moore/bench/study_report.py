"""The report of a study suite, rebuilt from its run files alone: convergence, learning rates, scores
over seeds with paired-bootstrap significance, conflict against single-task runs, forgetting over
steps, cost, and what is left to run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.metrics import LOWER_IS_BETTER, METRICS
from ..data.tasks import get_task
from ..runconfig import TaskSpec
from .study import chosen_runs, chosen_steps, current_runs, load_runs, pending, plan, study_cost
from .suites import REFERENCE, Suite, get_suite, lr_text

BOOTSTRAP = 1000


def _pct(value, scale: float = 100) -> str:
    return "–" if value is None else f"{scale * value:.2f}"


def _mean_std(values: list[float], scale: float = 100) -> str:
    if not values:
        return "–"
    mean = scale * float(np.mean(values))
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {scale * float(np.std(values, ddof=1)):.2f}"


def _scale(task: str) -> float:
    """Scores print ×100; a perplexity prints as it is."""
    return 1.0 if get_task(task).metric in LOWER_IS_BETTER else 100.0


def _zero_label(task: str) -> str:
    metric = get_task(task).metric
    return f"zero-shot {task} ({metric}{'' if metric in LOWER_IS_BETTER else ' ×100'})"


def _metric(record: dict, task: str) -> str:
    """The task's first metric as the run scored it: accuracy_norm where options were scored as
    texts (``answer_format: text``), else the registered task's."""
    return "accuracy_norm" if "accuracy_norm" in record.get("scores", {}).get(task, {}) else get_task(task).metric


def _primary(record: dict, task: str) -> float | None:
    return record["scores"].get(task, {}).get(_metric(record, task))


def _zero_shot(record: dict, task: str) -> float | None:
    return record.get("zero_shot", {}).get(task, {}).get(get_task(task).metric)


# --- paired bootstrap -------------------------------------------------------------------------------
def _resampled_metric(metric: str, predictions: np.ndarray, labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The metric on each bootstrap resample (rows of ``index``) of a binary task, a correlation of
    scores (spearman, pearson) or a perplexity over text windows, vectorised."""
    if metric == "perplexity":  # predictions: each window's (summed NLL, tokens); labels: none
        nll, tokens = predictions[:, 0][index], predictions[:, 1][index]  # (B, n)
        return np.exp(nll.sum(1) / np.maximum(tokens.sum(1), 1))
    p, y = predictions[index], labels[index]  # (B, n)
    if metric in ("spearman", "pearson"):
        if metric == "spearman":  # Pearson of the ranks, ties (resampled duplicates) at their mean rank
            from scipy.stats import rankdata

            p, y = rankdata(p, axis=1), rankdata(y, axis=1)
        p, y = p - p.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
        return (p * y).sum(1) / np.sqrt((p * p).sum(1) * (y * y).sum(1))
    if metric in ("accuracy", "accuracy_norm"):  # accuracy_norm: accuracy of the length-normalised picks
        return (p == y).mean(1)
    tp = ((p == 1) & (y == 1)).sum(1).astype(float)
    tn = ((p == 0) & (y == 0)).sum(1).astype(float)
    fp = ((p == 1) & (y == 0)).sum(1).astype(float)
    fn = ((p == 0) & (y == 1)).sum(1).astype(float)
    if metric == "f1":
        return np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
    if metric == "mcc":
        denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        return np.divide(tp * tn - fp * fn, denominator, out=np.zeros_like(tp), where=denominator > 0)
    raise ValueError(f"no bootstrap for metric {metric!r}")


def paired_bootstrap(a: list[dict], b: list[dict], tasks: list[str], seed: int = 0) -> dict[str, tuple]:
    """Δ = a − b per task and on the average, with a 95% interval: test examples resampled (the same
    resample for both methods), each method's score the mean over its seeds on that resample."""
    return paired_bootstrap_of(_minus, [a, b], tasks, seed)


def paired_bootstrap_of(statistic, groups: list[list[dict]], tasks: list[str], seed: int = 0) -> dict[str, tuple]:
    """``statistic`` of the groups' scores (a list, one array of resampled scores per group: each
    group's mean over its runs) per task and on the average, with a 95% interval; every group is
    scored on the same resamples of the test examples, so differences between them pair up."""
    rng = np.random.default_rng(seed)
    out, values = {}, []
    for task in tasks:
        metric = _metric(groups[0][0], task)
        n = len(groups[0][0]["predictions"][task])
        labels = np.asarray(groups[0][0]["labels"].get(task, [0] * n))  # a perplexity has none
        index = rng.integers(0, n, (BOOTSTRAP, n))
        scores = [np.mean([_resampled_metric(metric, np.asarray(r["predictions"][task]), labels, index)
                           for r in runs], axis=0) for runs in groups]
        value = statistic(scores)
        values.append(value)
        out[task] = _interval(value)
    out["average"] = _interval(np.mean(values, axis=0))
    return out


def _interval(delta: np.ndarray) -> tuple[float, float, float, bool]:
    low, high = np.percentile(delta, [2.5, 97.5])
    return float(delta.mean()), float(low), float(high), bool(low > 0 or high < 0)


# --- plots ---------------------------------------------------------------------------------------------
def _curves_plot(path: Path, curves: dict[str, list[dict]], key: str, title: str, ylabel: str,
                 mark: int | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for label, curve in curves.items():
        points = [(c["step"], key_value) for c in curve if (key_value := _curve_value(c, key)) is not None]
        if points:
            ax.plot(*zip(*points), marker=".", label=label)
    if mark:
        ax.axvline(mark, color="k", ls="--", lw=1, label=f"chosen: {mark} steps")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _step_0(base: dict | None) -> list[dict]:
    """The base model's point at step 0 of the seed-0 curves (its run scores the same validation
    sets), where its run file has one."""
    return [c for c in (base or {}).get("curve", []) if c.get("step") == 0][:1]


def _curve_value(point: dict, key: str) -> float | None:
    if key == "average":
        return None if point.get("average") is None else 100 * point["average"]
    value = point.get("zero_shot", {}).get(key)
    return None if value is None else _scale(key) * value


def _conflict_plot(path: Path, conflict: dict[str, dict[str, float]], tasks: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / max(1, len(conflict))
    for i, (method, row) in enumerate(conflict.items()):
        values = [100 * row.get(t, np.nan) for t in tasks]
        ax.bar(np.arange(len(tasks)) + i * width - 0.4 + width / 2, values, width, label=method)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("multi-task − single-task (×100)")
    ax.set_title("Conflict: what training the tasks together costs (< 0) or gains (> 0)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _task_count_plot(path: Path, curve: dict[str, dict[int, tuple]], intervals: dict[str, dict[int, tuple]],
                     zero: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for method, points in curve.items():
        ks = sorted(points)
        conflict = np.array([100 * points[k][0] for k in ks])
        bounds = [intervals.get(method, {}).get(k, (points[k][0], points[k][0])) for k in ks]  # K = 1: none
        spread = np.array([[c - 100 * lo for c, (lo, _) in zip(conflict, bounds)],
                           [100 * hi - c for c, (_, hi) in zip(conflict, bounds)]]).clip(min=0)
        left.errorbar(ks, conflict, yerr=spread, marker="o", capsize=3, label=method)
        right.plot(ks, [100 * points[k][1] if points[k][1] is not None else np.nan for k in ks], marker="o",
                   label=method)
    left.axhline(0, color="k", lw=0.8)
    left.set(xlabel="tasks trained together (K)", ylabel="multi − single (×100)", title="Conflict")
    right.set(xlabel="tasks trained together (K)", ylabel=_zero_label(zero), title="Oblivion")
    for ax in (left, right):
        ax.set_xticks(sorted({k for points in curve.values() for k in points}))
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _task_free_in_words(records: list[dict], tasks: list[str]) -> list[str]:
    """Where inferred routing and the mean embedding lose to the true ids, by a paired bootstrap over
    the test examples (seeds pooled); records from before predictions were kept get none."""
    if not all("predictions_by_routing" in r for r in records):
        return []

    def as_runs(routing: str) -> list[dict]:
        return [{"scores": r["scores_by_routing"][routing], "predictions": r["predictions_by_routing"][routing],
                 "labels": r["labels"]} for r in records]

    lines = ["", f"Against the true ids (Δ ×100 [95% interval], {BOOTSTRAP} paired resamples of the test examples, "
                 "seeds pooled; **bold**: the interval excludes 0):", "",
             "| routing | " + " | ".join(tasks) + " | average |", "|---|" + "---|" * (len(tasks) + 1)]
    words = []
    for routing, label, name in (("infer", "inferred", "inferred"), ("unseen", "mean embedding", "mean-embedding")):
        result = paired_bootstrap(as_runs(routing), as_runs("own"), tasks)
        lines.append(_bootstrap_row(label, result, tasks))
        worse = [f"{t} ({100 * result[t][0]:+.2f})" for t in tasks if result[t][3] and result[t][0] < 0]
        better = [f"{t} ({100 * result[t][0]:+.2f})" for t in tasks if result[t][3] and result[t][0] > 0]
        mean, low, high, significant = result["average"]
        words.append(f"The {name} routing loses to the true ids beyond the noise on {', '.join(worse) or 'no task'}"
                     + (f" and gains on {', '.join(better)}" if better else "")
                     + f"; its average is {100 * mean:+.2f} points from theirs [{100 * low:+.2f}, {100 * high:+.2f}]"
                     + ("." if significant else ", within the noise."))
    return lines + ["", " ".join(words)]


def _task_free_plot(path: Path, records: list[dict], tasks: list[str]) -> None:
    """Each task's test score with its true id, the inferred mixture and the mean embedding."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"own": "true task id", "infer": "inferred (task_ids=\"infer\")", "unseen": "mean embedding"}
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / len(labels)
    for i, (routing, label) in enumerate(labels.items()):
        values = np.array([[100 * _primary({"scores": rec["scores_by_routing"][routing]}, t) for t in tasks]
                           for rec in records])
        ax.bar(np.arange(len(tasks)) + i * width - 0.4 + width / 2, values.mean(0), width,
               yerr=values.std(0, ddof=1) if len(records) > 1 else None, label=label)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("test score (×100)")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.2)  # room for the legend above the bars
    ax.set_title(f"Task-free inference, MoORE-L8 ({_count(len(records), 'seed')})")
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _added_task_plot(path: Path, points: dict[str, dict[int, float]], task: str, majority: float | None) -> None:
    """The added task's test score against the examples it was added from."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for way, by_n in points.items():
        if by_n:
            ns = sorted(by_n)
            ax.plot(ns, [100 * by_n[n] for n in ns], marker="o", label=way)
    if majority is not None:
        ax.axhline(100 * majority, color="k", ls="--", lw=1, label="majority class")
    ax.set_xscale("log")
    ax.set(xlabel=f"{task} training examples", ylabel=f"{task} test {get_task(task).metric} (×100)",
           title=f"Adding {task} to a trained model")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _task_count(suite: Suite, runs: dict, chosen: dict, zero_names: list[str], results_dir: Path) -> list[str]:
    """Conflict (on a subset's tasks) and oblivion against the number of tasks trained together."""
    study, tasks = suite.study, [t["name"] for t in suite.config["tasks"]]
    if not study.task_subsets or not zero_names:
        return []
    z = zero_names[0]
    curve: dict[str, dict[int, tuple]] = {}
    intervals: dict[str, dict[int, tuple]] = {}  # method -> K -> conflict's 95% interval
    for m in study.single_methods:
        for subset in study.task_subsets:
            singles = {t: runs.get(f"single~{m}~{t}") for t in subset}
            grouped = runs.get(f"taskcount~{m}~k{len(subset)}")
            if any(r is None for r in singles.values()) or grouped is None or m not in chosen:
                continue
            single = {t: _primary(r, t) for t, r in singles.items()}
            full = chosen[m]
            curve[m] = {
                1: (0.0, float(np.mean([_zero_shot(r, z) for r in singles.values()]))),
                len(subset): (float(np.mean([_primary(grouped, t) - single[t] for t in subset])),
                              _zero_shot(grouped, z)),
                len(tasks): (float(np.mean([np.mean([_primary(r, t) for r in full]) - single[t] for t in subset])),
                             float(np.mean([_zero_shot(r, z) for r in full]))),
            }
            alone = _single_task_record(runs, m, list(subset))
            for k, together in ((len(subset), [grouped]), (len(tasks), full)):
                if alone is not None and _has_predictions(together, subset):
                    _, low, high, _ = paired_bootstrap_of(_minus, [together, [alone]], list(subset))["average"]
                    intervals.setdefault(m, {})[k] = (low, high)
    if not curve:
        return []
    _task_count_plot(results_dir / "task_count.png", curve, intervals, z)
    subset = study.task_subsets[0]
    lines = ["## Conflict and oblivion against the number of tasks", "",
             f"Conflict: the mean over {', '.join(subset)} of (score trained with K tasks − score trained alone), "
             f"×100; each task sees the same examples at every K (its share of the full mixture). K = 1: the "
             f"single-task runs (conflict 0 by definition; oblivion the mean of their zero-shot {z}); K = "
             f"{len(tasks)}: the main runs, mean over seeds. Interval: 95%, {BOOTSTRAP} paired resamples of the "
             f"test examples (the single-task runs' seed spread not included). {_zero_label(z)}: test split, "
             "unseen-task embedding.", "",
             "| method | K | conflict | 95% interval | zero-shot " + z + " |", "|---|---|---|---|---|"]
    for m, points in curve.items():
        for k in sorted(points):
            conflict, zero = points[k]
            interval = intervals.get(m, {}).get(k)
            cell = "–" if interval is None else f"[{100 * interval[0]:+.2f}, {100 * interval[1]:+.2f}]"
            lines.append(f"| {m} | {k} | {100 * conflict:+.2f} | {cell} | {_pct(zero, _scale(z))} |")
    return lines + ["", "![task count](task_count.png)", ""]


def _task_free(suite: Suite, runs: dict, results_dir: Path) -> list[str]:
    """Scores with true ids, inferred mixtures and the mean embedding; task identification."""
    records = [r for name, r in sorted(runs.items()) if name.startswith(f"taskfree~{REFERENCE}~")]
    if not records:
        return []
    tasks = records[0]["tasks"]
    lines = ["## Task-free inference (MoORE-L8)", "",
             "A task classifier (a linear softmax on the frozen input embeddings, mean-pooled, with the log length and "
             "the share of second-segment tokens) is fitted on each seed run's training inputs; then every task is "
             f"scored on its test set with its true id, the inferred mixture (`task_ids=\"infer\"`) and the mean task "
             f"embedding (the paper's unseen-task routing). Mean ± std over {len(records)} seed run(s), ×100.", "",
             "| task | identified | true id | inferred | mean embedding | inferred − true |", "|---|---|---|---|---|---|"]
    for t in tasks:
        values = {r: [_primary({"scores": rec["scores_by_routing"][r]}, t) for rec in records]
                  for r in ("own", "infer", "unseen")}
        identified = [rec["identification"][t] for rec in records]
        gap = [a - b for a, b in zip(values["infer"], values["own"])]
        lines.append(f"| {t} | {_mean_std(identified)} | {_mean_std(values['own'])} | {_mean_std(values['infer'])} | "
                     f"{_mean_std(values['unseen'])} | {_mean_std(gap)} |")
    _task_free_plot(results_dir / "task_free.png", records, tasks)
    lines += _task_free_in_words(records, tasks)
    zero = records[0]["zero_shot_by_routing"]["infer"]
    for z in zero:
        inferred = [_zero_shot({"zero_shot": rec["zero_shot_by_routing"]["infer"]}, z) for rec in records]
        mean = [_zero_shot({"zero_shot": rec["zero_shot_by_routing"]["unseen"]}, z) for rec in records]
        by_routing = {r: [{"zero_shot": rec["zero_shot_by_routing"][r],
                           "zero_shot_predictions": rec.get("zero_shot_predictions_by_routing", {}).get(r, {}),
                           "zero_shot_labels": rec.get("zero_shot_labels", {})} for rec in records]
                      for r in ("infer", "unseen")}
        delta = _zero_shot_bootstrap(by_routing["infer"], by_routing["unseen"], z)
        lines += ["", f"Zero-shot {z} ({get_task(z).metric}): inferred mixture {_mean_std(inferred, _scale(z))}, "
                      f"mean embedding {_mean_std(mean, _scale(z))}"
                      + (f"; inferred − mean embedding {_delta_cell(delta, _scale(z))} (95% interval, {BOOTSTRAP} paired "
                         "resamples of its test examples)." if delta is not None else ".")]
    return lines + ["", "![task-free inference](task_free.png)", ""]


ADDED_WAYS = {"MoORE: new row + head": (REFERENCE, "row_and_head"), "MoORE: head, mean embedding": (REFERENCE, "head_only"),
              "LoRA alone": ("lora", None)}


def _added_task(suite: Suite, runs: dict, results_dir: Path) -> list[str]:
    study = suite.study
    if not study.added_task:
        return []
    task, rows = study.added_task, []
    points: dict[str, dict[int, float]] = {way: {} for way in ADDED_WAYS}  # for the plot
    for n in study.added_sizes:
        records = {m: runs.get(f"addtask~{m}~n{n}") for m in (REFERENCE, "lora")}
        if not any(records.values()):
            continue
        cells = []
        for way, (m, key) in ADDED_WAYS.items():
            record = records[m]
            value = None if record is None else (record[key] if key else record)["scores"].get(task, {}).get(
                get_task(task).metric)
            if value is not None:
                points[way][n] = value
            cells.append(_pct(value) if value is not None else "–")
        moore = records[REFERENCE]
        identical = "yes" if moore and all(moore[v]["old_tasks_bit_identical"] for v in ("head_only", "row_and_head")) \
            else ("NO" if moore else "–")
        rows.append(f"| {n} | {' | '.join(cells)} | {identical} |")
    if not rows:
        return []
    lora = next((r for n in study.added_sizes if (r := runs.get(f"addtask~lora~n{n}"))), None)
    _added_task_plot(results_dir / "added_task.png", points, task, _majority_score(lora, task) if lora else None)
    held = runs.get(f"heldout~{REFERENCE}~{study.added_task}")
    return ["## Adding a task to a trained MoORE", "",
            f"MoORE-L8 trained on every task but {study.added_task} "
            + (f"(test average {_pct(held['average'])}) " if held else "")
            + f"gets {study.added_task} from N training examples: a new task-table row and head ({study.added_steps} "
            f"steps at {lr_text(study.added_lr)}), or the head alone with the row left at the mean embedding (the "
            f"unseen-task routing); LoRA is trained on the same N examples alone, at its chosen rate, for the same "
            f"steps. Test {get_task(study.added_task).metric} ×100, seed 0. Last column: the other tasks' outputs "
            "after adding it, compared bit for bit with before.", "",
            "| N | MoORE: new row + head | MoORE: head, mean embedding | LoRA alone | old tasks bit-identical |",
            "|---|---|---|---|---|", *rows, "", "![adding a task](added_task.png)", ""]


# --- the report -------------------------------------------------------------------------------------------
def write_study_report(suite_name: str, results_dir: Path) -> Path:
    suite = get_suite(suite_name)
    results_dir = Path(results_dir)
    loaded = load_runs(results_dir)
    runs, stale = current_runs(suite, loaded)  # a stale file is no evidence for the protocol
    tasks = [t["name"] for t in suite.config["tasks"]]
    zero_names = [z["name"] for z in suite.config["evaluation"].get("zero_shot", [])]
    planned = [s.name for s in plan(suite, runs)]
    todo = [s.name for s in pending(suite, runs)]  # in the order a study starts them, as `--plan` lists them
    lines = [f"# {suite.title}", "",
             f"Rebuilt from the run files in `runs/` by `moore bench {suite_name} --report`; each file holds one "
             f"run's scores, test predictions, validation curve, time, command, git commit and machine. Any row "
             f"reproduces with `moore bench {suite_name} --run NAME`.", "",
             f"**Data:** {suite.subsampling}", "", _protocol(suite), ""]
    if todo:
        lines += [f"**Status: {_count(len(runs), 'run')} done, {len(todo)} named by the plan so far still to run** (later phases "
                  f"are planned as earlier ones finish): {', '.join(f'`{n}`' for n in todo)}. Continue with "
                  f"`moore bench {suite_name} --workers N`; it resumes per run (`--plan` says where each would "
                  "resume).", ""]
    lines += _stale(suite_name, stale)
    lines += _convergence(suite, runs, results_dir)
    lines += _rates(suite, runs, todo)
    lines += _precision(suite, runs)
    lines += _precision_fallbacks(suite, runs)
    chosen = chosen_runs(suite, runs)
    if chosen:
        lines += _scores(suite, chosen, tasks, zero_names, runs.get("base"))
        lines += _scores_and_oblivion(chosen, zero_names, runs.get("base"), results_dir)
        lines += _provisional(chosen, [n for n in runs if n.startswith("seed~") and n not in planned])
        lines += _significance(chosen, tasks, results_dir)
        lines += _against_base(chosen, runs.get("base"), tasks)
        lines += _conflict(suite, runs, chosen, tasks, results_dir)
        lines += _forgetting(chosen, zero_names, runs.get("base"), results_dir)
        lines += _task_count(suite, runs, chosen, zero_names, results_dir)
    elif "base" in runs:  # until the main runs land: what training has to beat, and to keep
        lines += _scores(suite, {}, tasks, zero_names, runs["base"])
    lines += _task_free(suite, runs, results_dir)
    lines += _added_task(suite, runs, results_dir)
    cost = study_cost(loaded) if loaded else None  # what was spent, stale runs included
    if cost:
        lines += ["## Cost", "", f"{_count(cost['runs'], 'run')}, {cost['hours']:.2f} hours of training loop in all, on "
                  f"{', '.join(cost['devices'])} ({', '.join(cost['gpus'])}). Times per run are in the run files "
                  "(`train_seconds`, summed over resumes).", ""]
    path = results_dir / "REPORT.md"
    path.parent.mkdir(parents=True, exist_ok=True)  # a study with no run yet still gets its report
    path.write_text("\n".join(lines) + "\n")
    return path


def _stale(suite_name: str, stale: dict[str, dict]) -> list[str]:
    if not stale:
        return []
    rows = [f"| {name} | " + "; ".join(f"{field} {recorded} (plan: {planned})"
                                       for field, (recorded, planned) in diff.items()) + " |"
            for name, diff in sorted(stale.items())]
    return [f"**Left out: {_count(len(stale), 'stale run file')}.** Each was trained otherwise than the plan now "
            f"names that run, so no table or choice reads it. `moore bench {suite_name}` trains it again and moves "
            "the old file to `superseded/`.", "", "| run | recorded (plan) |", "|---|---|", *rows, ""]


def _protocol(suite: Suite) -> str:
    study, training = suite.study, suite.config["training"]
    grids = "; ".join(f"{'full fine-tuning' if family != 'adapter' else 'adapters'} "
                      f"{{{', '.join(lr_text(lr) for lr in lrs)}}}" for family, lrs in study.grids.items())
    grids += "".join(f"; {m} {{{', '.join(lr_text(lr) for lr in lrs)}}}" for m, lrs in study.method_grids.items())
    heads = f", task heads at {lr_text(training['head_lr'])}" if training.get("head_lr") else ""
    text = (f"**Protocol.** Batches of {training['batch_size']}, {training['schedule']} schedule{heads}. (1) Convergence: "
            + ", ".join(f"{m} at {lr_text(lr)}" for m, lr in study.convergence.items())
            + f" trained {study.convergence_steps} steps at a constant rate, validated every {study.eval_every}; the "
            f"step count is the first evaluation where both validation averages are within "
            f"{100 * study.plateau:.1f} points of their best. (2) Learning rates, on validation, seed 0, "
            f"{100 * study.grid_fraction:.0f}% of the steps, for {', '.join(study.tuned_methods)}: {grids}")
    if study.grid_extensions:
        text += (f"; a winner at an edge of its grid adds the next rate past that edge on the 1-3-10 ladder, up to "
                 f"{study.grid_extensions} times")
    if study.reflection_factors:
        text += (f"; MoORE-L8's reflections also at {', '.join(f'{f:g}×' for f in study.reflection_factors)} its rate "
                 "(`training.param_lrs`)")
    seeds = ", ".join(map(str, study.seeds))
    text += (f"; the other peers take {study.lr_donor}'s rate, the other variants of MoORE {REFERENCE}'s. "
             f"(3) Every method at its chosen rate and the full step count" + (f"; {', '.join(study.main_methods)} and the peer with the best validation average at "
                              f"seeds {seeds}." if len(study.seeds) > 1 else f", seed {seeds}."))
    if study.single_methods:
        text += (f" (4) Single-task runs of {', '.join(study.single_methods)}: one adapter per task, with the steps "
                 "that task got in the mixture.")
    if study.curve_every:
        text += f" After the convergence runs, validation and zero-shot curves are taken every {study.curve_every} steps."
    trained_bf16 = [p for p in study.bf16_phases if p != "precision"]
    if trained_bf16:
        text += f" Phases trained in bf16 autocast: {', '.join(trained_bf16)}."
    if "precision" in study.bf16_phases:
        text += (f" A precision run repeats {REFERENCE}'s winning grid run in "
                 f"{'fp32' if 'grid' in study.bf16_phases else 'bf16 autocast'}.")
    text += (" Every evaluation (validation, test, zero-shot) scores in bf16 autocast (`evaluation.bf16`)."
             if suite.config["evaluation"].get("bf16") else " Every evaluation scores in fp32.")
    if study.length_buckets > 1:
        text += (f" In {', '.join(study.length_bucket_phases)}, each batch trains as {study.length_buckets} pieces of "
                 "similar token length (`training.length_buckets`): the same gradient with less padding, dropout "
                 "masks aside.")
    return text


def _convergence(suite: Suite, runs: dict, results_dir: Path) -> list[str]:
    curves = {name.split("~")[1]: r["curve"] for name, r in runs.items() if name.startswith("convergence~")}
    if not curves:
        return []
    steps = chosen_steps(suite.study, runs)
    start = _step_0(runs.get("base"))
    _curves_plot(results_dir / "convergence.png", {m: [*start, *c] for m, c in curves.items()}, "average",
                 "Validation average (constant rate)", "average ×100", steps)
    lines = ["## Convergence", "", "| run | best validation average | at step | last |", "|---|---|---|---|"]
    if start and start[0]["average"] is not None:
        lines.append(f"| base model (step 0, the same validation sets) | – | 0 | {_pct(start[0]['average'])} |")
    for name, curve in curves.items():
        best = max(curve, key=lambda c: c["average"])
        lines.append(f"| {name} | {_pct(best['average'])} | {best['step']} | {_pct(curve[-1]['average'])} |")
    lines += ["", f"Chosen step count: **{steps}**." if steps else "Step count: not chosen yet.", "",
              "![convergence](convergence.png)", ""]
    return lines


def _rates(suite: Suite, runs: dict, todo: list[str]) -> list[str]:
    grid = {name: r for name, r in runs.items() if name.startswith("grid~")}
    if not grid:
        return []
    lines = ["## Learning rates (validation average, seed 0, shorter runs)", "", "| method | rate | validation |",
             "|---|---|---|"]
    best = {}
    for name, r in grid.items():
        if r["validation_best"] > best.get(r["method"], (None, -1.0))[1]:
            best[r["method"]] = (name, r["validation_best"])
    edges = []  # methods whose chosen rate is still the highest or lowest they tried
    for name, r in sorted(grid.items(), key=lambda item: (item[1]["method"], item[1]["lr"], len(item[0]))):
        rate = lr_text(r["lr"]) + "".join(f", {k} {lr_text(v)}" for k, v in r["param_lrs"].items())
        pending = any(n.startswith(f"grid~{r['method']}~") for n in todo)
        chosen = (" (best so far)" if pending else " (chosen)") if best[r["method"]][0] == name else ""
        lines.append(f"| {r['method']} | {rate}{chosen} | {_pct(r['validation_best'])} |")
        tried = [g["lr"] for g in grid.values() if g["method"] == r["method"]]
        if chosen == " (chosen)" and r["lr"] in (min(tried), max(tried)) and len(set(tried)) > 1:
            edges.append(f"{r['method']} ({lr_text(r['lr'])}, the {'lowest' if r['lr'] == min(tried) else 'highest'} "
                         "rate tried)")
    if edges:
        lines += ["", f"Chosen at an edge of the rates tried, so a rate beyond it might do better: {', '.join(edges)}"
                      + (f", after {suite.study.grid_extensions} extension(s) of the grid." if suite.study.grid_extensions
                         else "; this study does not extend its grids (`grid_extensions`).")]
    return lines + [""]


def _precision(suite: Suite, runs: dict) -> list[str]:
    """The reference's winning grid run against the same run in the other precision (fp32, bf16 autocast)."""
    twin_bf16 = f"precision~{REFERENCE}~bf16" in runs  # the name says the twin's precision
    twin = runs.get(f"precision~{REFERENCE}~{'bf16' if twin_bf16 else 'fp32'}")
    if twin is None:
        return []
    grid = next((r for name, r in runs.items() if name.startswith(f"grid~{REFERENCE}~") and r["lr"] == twin["lr"]
                 and r["param_lrs"] == twin["param_lrs"]), None)
    if grid is None:
        return []
    fp32, bf16 = (grid, twin) if twin_bf16 else (twin, grid)
    lines = ["## Precision: bf16 autocast against fp32", "",
             f"{REFERENCE}'s winning grid run repeated in {'bf16 autocast' if twin_bf16 else 'fp32'} "
             "(evaluation as in every run), same seed and steps. The seed-to-seed spread of the scores table is the "
             "noise to read the difference against.",
             "", "| precision | device | validation average | test average | s / step (loop, with evaluations) |", "|---|---|---|---|---|"]
    for label, r in (("fp32", fp32), ("bf16", bf16)):
        lines.append(f"| {label} | {r['device']} | {_pct(r['validation_best'])} | {_pct(r['average'])} | "
                     f"{r['train_seconds'] / r['steps']:.3f} |")
    delta = bf16["average"] - fp32["average"]
    phases = suite.study.bf16_phases
    lines += ["", f"bf16 − fp32 on the test average: {100 * delta:+.2f} points. Phases trained in bf16: "
              f"{', '.join(p for p in phases if p != 'precision')}; in fp32: convergence"
              + ("" if "grid" in phases else ", grid") + ". The step times are those of two separate runs, each "
              "sharing its machine with whatever else ran then, so they are not a speed comparison: "
              "`benchmarks/bf16_speed.py` measures that side by side."]
    if fp32["device"] != bf16["device"]:  # kernels differ between devices: the gap is not precision's alone
        lines[-1] += (f" The two ran on different devices ({fp32['device']}, {bf16['device']}), so the difference "
                      "holds the device's numerics as well as the precision's.")
    return lines + [""]


def _precision_fallbacks(suite: Suite, runs: dict) -> list[str]:
    """The runs that trained or scored in fp32 where the plan asks for bf16 (a device that emulates bf16:
    ``study.run_precision``), named, so that mixed-precision seeds are never hidden."""
    phases, planned_evaluation = suite.study.bf16_phases, bool(suite.config["evaluation"].get("bf16"))
    trained = sorted(n for n, r in runs.items() if r.get("phase") in phases and r["phase"] != "precision"
                     and r.get("bf16") is False)
    scored = sorted(n for n, r in runs.items() if planned_evaluation and r.get("evaluation_bf16") is False)
    if not trained and not scored:
        return []
    text = ("Precision where the hardware had no bf16: the plan trains these phases in bf16 autocast, but a run on a "
            "device that emulates bf16 (an x86 CPU without AVX-512 BF16 or AMX, where a step takes 15-18x as long) "
            "goes in fp32, and keeps the precision it began with when it resumes elsewhere. The precision section "
            "above measures what that changes.")
    if trained:
        text += f" Trained in fp32: {', '.join(trained)}."
    if scored:
        text += f" Scored in fp32: {', '.join(scored)}."
    return [text, ""]


def _majority_score(record: dict, task: str) -> float | None:
    """The task's metric when every test example gets its most frequent label (classification only)."""
    labels = record["labels"].get(task)
    metric = _metric(record, task)
    if not labels or metric not in METRICS or not all(isinstance(y, int) for y in labels):
        return None
    values, counts = np.unique(labels, return_counts=True)
    return METRICS[metric]([int(values[np.argmax(counts)])] * len(labels), labels)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _scores(suite: Suite, chosen: dict, tasks: list[str], zero_names: list[str], base: dict | None) -> list[str]:
    metrics = {spec["name"]: TaskSpec.model_validate(spec).build().metric for spec in suite.config["tasks"]}
    header = ("| method | seeds | #params (% of base) | " + " | ".join(f"{t} ({metrics[t]})" for t in tasks)
              + " | average | " + " | ".join(_zero_label(z) for z in zero_names) + " |")
    sampled = any(spec.get("max_eval") for spec in suite.config["tasks"])
    lines = [f"## Scores (test sets {'as sampled above' if sampled else 'in full'}; mean ± std over seeds, ×100)", "",
             header,
             "|---|---|---|" + "---|" * (len(tasks) + 1 + len(zero_names))]
    if base is not None:  # an encoder's base row has no task scores: its heads would be untrained
        lines.append("| base model (no training) | – | 0 | " + " | ".join(_pct(_primary(base, t)) for t in tasks)
                     + f" | {_pct(base['average'])} | " + " | ".join(_pct(_zero_shot(base, z), _scale(z)) for z in zero_names)
                     + " |")
    labelled = next((r for r in [base, *(rs[0] for rs in chosen.values())] if r and r.get("labels")), None)
    if labelled is not None:  # what a constant answer scores: the floor a method must clear to have learnt anything
        floor = [_majority_score(labelled, t) for t in tasks]
        known = [v for v in floor if v is not None]
        lines.append("| majority class (the most frequent test label, always) | – | – | "
                     + " | ".join(_pct(v) for v in floor)
                     + f" | {_pct(float(np.mean(known)) if len(known) == len(tasks) else None)} | "
                     + " | ".join("–" for _ in zero_names) + " |")
    for m in suite.methods:
        if m not in chosen:
            continue
        rs = chosen[m]
        cells = [_mean_std([v for r in rs if (v := _primary(r, t)) is not None]) for t in tasks]
        zero = [_mean_std([v for r in rs if (v := _zero_shot(r, z)) is not None], _scale(z)) for z in zero_names]
        lines.append(f"| {m} | {len(rs)} | {rs[0]['trainable_parameters']:,d} ({100 * rs[0]['share']:.2f}%) | "
                     + " | ".join(cells) + f" | {_mean_std([r['average'] for r in rs])} | " + " | ".join(zero) + " |")
    return lines + [""]


def _scores_and_oblivion(chosen: dict, zero_names: list[str], base: dict | None, results_dir: Path) -> list[str]:
    """The scores table's two questions in one picture: each method's test average against what it kept
    of each zero-shot probe (mean ± std over seeds), with the base model's probe score as a line."""
    if not zero_names:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(zero_names), figsize=(7 * len(zero_names), 4.2), squeeze=False)
    for ax, z in zip(axes[0], zero_names):
        for i, (m, rs) in enumerate(chosen.items()):
            kept = [_scale(z) * v for r in rs if (v := _zero_shot(r, z)) is not None]
            if not kept:
                continue
            averages = [100 * r["average"] for r in rs]
            ax.errorbar(np.mean(averages), np.mean(kept), xerr=np.std(averages) if len(rs) > 1 else None,
                        yerr=np.std(kept) if len(kept) > 1 else None, capsize=3, color=f"C{i % 10}",
                        fmt="s" if m.startswith("moore") else "D" if m == "full" else "o",
                        label=f"{m} ({_count(len(rs), 'seed')})")
        if base is not None and (v := _zero_shot(base, z)) is not None:
            ax.axhline(_scale(z) * v, color="grey", linestyle="--", linewidth=1, label="base model")
        ax.set(xlabel="test average (×100)", ylabel=_zero_label(z), title=f"Scores against oblivion: {z}")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(results_dir / "scores.png", dpi=120)
    plt.close(fig)
    return ["Each method's test average against its zero-shot score (points: mean over seeds; bars: std across "
            "seeds where there are several; squares: MoORE's variants, diamond: full fine-tuning; dashed: the base "
            "model).", "",
            "![scores against oblivion](scores.png)", ""]


def _forest_plot(path: Path, panels: dict[str, dict[str, tuple | None]], scales: dict[str, float], title: str,
                 xlabels: dict[str, str]) -> None:
    """Δ (MoORE-L8 − method) with its 95% interval, a row per method and a panel per column of a table;
    filled where the interval excludes 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(next(iter(panels.values())))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7.0, 3.2 * len(panels) + 1), 0.45 * len(methods) + 1.4),
                             squeeze=False, sharey=True)
    for ax, (column, results) in zip(axes[0], panels.items()):
        for row, m in enumerate(methods):
            if (r := results.get(m)) is None:
                continue
            mean, low, high, significant = r
            k = scales[column]
            ax.errorbar(k * mean, row, xerr=[[k * (mean - low)], [k * (high - mean)]], fmt="o", capsize=3,
                        color="C3" if significant else "grey", markerfacecolor="C3" if significant else "white")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set(title=column, xlabel=xlabels[column])
        ax.tick_params(labelsize=7)
    axes[0][0].set_yticks(range(len(methods)), methods)
    axes[0][0].invert_yaxis()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _provisional(chosen: dict, unplanned: list[str]) -> list[str]:
    """Rows resting on seed runs that the plan does not name now (``unplanned``): what they depend on (a
    method's rate, the strongest peer) is still being chosen, so they may yet prove stale."""
    waiting = {m: [n for n in unplanned if n.startswith(f"seed~{m}~s")] for m in chosen}
    waiting = {m: names for m, names in waiting.items() if names}
    if not waiting:
        return []
    rows = "; ".join(f"{m} ({', '.join(names)})" for m, names in waiting.items())
    return [f"Provisional: {rows}. The plan does "
            "not name these runs now: what they depend on (a learning rate, the strongest peer) is still being chosen, "
            "with runs pending. Once it is, a run trained otherwise is left out as stale and trained again.", ""]


def _significance(chosen: dict, tasks: list[str], results_dir: Path) -> list[str]:
    if REFERENCE not in chosen or not all(_has_predictions(rs, tasks) for rs in chosen.values()):
        return []
    lines = ["## MoORE-L8 against each method: paired bootstrap", "",
             f"Δ = MoORE-L8 − method, ×100, with its 95% interval: {BOOTSTRAP} resamples of the test examples, the "
             "same resample for both methods, each method's score the mean over its seeds on it (seeds pooled). "
             "**Bold**: the interval excludes 0.", "",
             "| method | " + " | ".join(tasks) + " | average |", "|---|" + "---|" * (len(tasks) + 1)]
    words, results = [], {}
    for m, rs in chosen.items():
        if m != REFERENCE:
            results[m] = result = paired_bootstrap(chosen[REFERENCE], rs, tasks)
            lines.append(_bootstrap_row(m, result, tasks))
            words.append(_against_in_words(m, result, tasks))
    if not results:
        return []
    seeds = min(len(rs) for rs in chosen.values())
    columns = [*tasks, "average"]
    _forest_plot(results_dir / "against_scores.png", {c: {m: r[c] for m, r in results.items()} for c in columns},
                 dict.fromkeys(columns, 100), f"{REFERENCE} − method, test scores ×100, 95% intervals (filled: beyond the noise)",
                 dict.fromkeys(columns, f"Δ (> 0: {REFERENCE} scores higher)"))
    return lines + ["", " ".join(words) + (" One seed for some method: the interval leaves the seed-to-seed spread "
                                           "out, so later seeds may close a gap." if seeds < 2 else ""), "",
                    "![MoORE-L8 against each method](against_scores.png)", ""]


def _against_in_words(method: str, result: dict[str, tuple], tasks: list[str]) -> str:
    """MoORE-L8 against one method in a sentence, from its bootstrap: the average, and the tasks where
    it wins or loses beyond the noise."""
    mean, low, high, significant = result["average"]
    verdict = ("above" if mean > 0 else "below") + " " if significant else "within the noise of "
    wins = [f"{t} ({100 * result[t][0]:+.2f})" for t in tasks if result[t][3] and result[t][0] > 0]
    losses = [f"{t} ({100 * result[t][0]:+.2f})" for t in tasks if result[t][3] and result[t][0] < 0]
    return (f"{REFERENCE}'s average is {verdict}{method}'s ({100 * mean:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]); "
            f"beyond the noise it wins on {', '.join(wins) or 'no task'} and loses on {', '.join(losses) or 'no task'}.")


def _bootstrap_row(name: str, result: dict[str, tuple], tasks: list[str]) -> str:
    """A table row of Δ [95% interval] per task and on the average; bold where the interval excludes 0."""
    return f"| {name} | " + " | ".join(_delta_cell(result[key], 100) for key in [*tasks, "average"]) + " |"


def _against_base(chosen: dict, base: dict | None, tasks: list[str]) -> list[str]:
    """Each method against the untrained model (decoders, whose base model answers every task)."""
    if not base or not base.get("predictions"):
        return []
    lines = ["## Each method against the base model: paired bootstrap", "",
             f"Δ = method − base model, ×100, with its 95% interval ({BOOTSTRAP} resamples of the test examples, seeds "
             "pooled as above). **Bold**: the interval excludes 0.", "",
             "| method | " + " | ".join(tasks) + " | average |", "|---|" + "---|" * (len(tasks) + 1)]
    lines += [_bootstrap_row(m, paired_bootstrap(rs, [base], tasks), tasks) for m, rs in chosen.items()]
    return lines + [""]


def _conflict(suite: Suite, runs: dict, chosen: dict, tasks: list[str], results_dir: Path) -> list[str]:
    conflict: dict[str, dict[str, float]] = {}
    for m in suite.study.single_methods:
        for t in tasks:
            single = runs.get(f"single~{m}~{t}")
            if single is not None and m in chosen:
                multi = np.mean([_primary(r, t) for r in chosen[m]])
                conflict.setdefault(m, {})[t] = float(multi - _primary(single, t))
    if not conflict:
        return []
    _conflict_plot(results_dir / "conflict.png", conflict, tasks)
    lines = ["## Conflict: multi-task − single-task (×100)", "",
             "Each single-task run trains one adapter on one task with the steps that task got in the mixture "
             "(seed 0); the multi-task score is the mean over seeds. Below 0: the other tasks cost this one.", "",
             "| method | " + " | ".join(tasks) + " | mean |", "|---|" + "---|" * (len(tasks) + 1)]
    for m, row in conflict.items():
        values = [row.get(t) for t in tasks]
        known = [v for v in values if v is not None]
        lines.append(f"| {m} | " + " | ".join("–" if v is None else f"{100 * v:+.2f}" for v in values)
                     + f" | {100 * np.mean(known):+.2f} |")
    return lines + ["", "![conflict](conflict.png)", "", *_conflict_noise(runs, chosen, conflict, tasks)]


def _single_task_record(runs: dict, method: str, tasks: list[str]) -> dict | None:
    """A method's single-task runs as one record, each task's scores and predictions from the run
    trained on it alone (None unless every task has one, with its predictions)."""
    singles = [runs.get(f"single~{method}~{t}") for t in tasks]
    if any(r is None or t not in r.get("predictions", {}) for r, t in zip(singles, tasks)):
        return None
    return {"scores": {t: r["scores"][t] for r, t in zip(singles, tasks)},
            "predictions": {t: r["predictions"][t] for r, t in zip(singles, tasks)},
            "labels": {t: r["labels"][t] for r, t in zip(singles, tasks)}}


def _has_predictions(records: list[dict], tasks) -> bool:
    return all(set(tasks) <= set(r.get("predictions", {})) for r in records)


def _minus(scores: list) -> np.ndarray:
    return scores[0] - scores[1]


def _conflict_noise(runs: dict, chosen: dict, conflict: dict[str, dict[str, float]], tasks: list[str]) -> list[str]:
    """Conflict with its 95% interval, and MoORE-L8's conflict against each other method's: a paired
    bootstrap over the test examples (multi-task seeds pooled), for the methods whose every task has
    its single-task run and whose runs kept their predictions."""
    complete = {}
    for m in conflict:
        single = _single_task_record(runs, m, tasks)
        if single is not None and _has_predictions(chosen[m], tasks):
            complete[m] = [chosen[m], [single]]
    if not complete:
        return []
    lines = [f"With 95% intervals ({BOOTSTRAP} paired resamples of the test examples, multi-task seeds pooled; the "
             "single-task runs are one seed, so their own seed-to-seed spread is not in the interval). **Bold**: the "
             "interval excludes 0.", "", "| method | " + " | ".join(tasks) + " | mean |",
             "|---|" + "---|" * (len(tasks) + 1)]
    lines += [_bootstrap_row(m, paired_bootstrap_of(_minus, groups, tasks), tasks) for m, groups in complete.items()]
    if REFERENCE in complete and len(complete) > 1:
        lines += ["", f"{REFERENCE}'s conflict minus each method's (> 0: training the tasks together costs "
                      f"{REFERENCE} less):", "", "| method | " + " | ".join(tasks) + " | mean |",
                  "|---|" + "---|" * (len(tasks) + 1)]
        for m, groups in complete.items():
            if m != REFERENCE:
                both = paired_bootstrap_of(lambda x: (x[0] - x[1]) - (x[2] - x[3]), complete[REFERENCE] + groups, tasks)
                lines.append(_bootstrap_row(m, both, tasks))
    return lines + [""]


def _zero_shot_view(record: dict) -> dict:
    """A run's zero-shot probes in the shape the paired bootstrap reads (scores, predictions, labels)."""
    return {"scores": record.get("zero_shot", {}), "predictions": record.get("zero_shot_predictions", {}),
            "labels": record.get("zero_shot_labels", {})}


def _zero_shot_bootstrap(a: list[dict], b: list[dict], z: str) -> tuple | None:
    """Δ = a − b on probe ``z`` with its 95% interval (test examples resampled, seeds pooled), or None
    where a run kept no predictions for it."""
    views = [[_zero_shot_view(r) for r in rs] for rs in (a, b)]
    if not all(_has_predictions(vs, [z]) for vs in views):
        return None
    return paired_bootstrap_of(_minus, views, [z])[z]


def _delta_cell(result: tuple | None, scale: float, fallback: str = "–") -> str:
    """Δ [95% interval] at ``scale``, bold where the interval excludes 0 (``fallback`` where there is none)."""
    if result is None:
        return fallback
    mean, low, high, significant = result
    text = f"{scale * mean:+.2f} [{scale * low:+.2f}, {scale * high:+.2f}]"
    return f"**{text}**" if significant else text


def _forgetting(chosen: dict, zero_names: list[str], base: dict | None, results_dir: Path) -> list[str]:
    """Oblivion: each zero-shot probe at the end (table, against the base model) and over steps (plot)."""
    if not zero_names:
        return []
    lines = ["## Oblivion: what the base model could do before", "",
             "Zero-shot probes of tasks no method trains on, scored with the unseen-task embedding (the mean task "
             "embedding; methods without task routing run as they are), on the test split at the end of training: "
             "mean ± std over seeds, and the change from the base model. " + "; ".join(
                 f"{z}: {'lower' if get_task(z).metric in LOWER_IS_BETTER else 'higher'} is better" for z in zero_names)
             + f". Δ: with its 95% interval where the runs kept their zero-shot predictions ({BOOTSTRAP} paired "
               "resamples of the probe's test examples, seeds pooled; **bold**: the interval excludes 0).", "",
             "| method | seeds | " + " | ".join(f"{_zero_label(z)} | Δ {z}" for z in zero_names) + " |",
             "|---|---|" + "---|---|" * len(zero_names)]
    if base is not None:
        lines.append("| base model (no training) | – | "
                     + " | ".join(f"{_pct(_zero_shot(base, z), _scale(z))} | –" for z in zero_names) + " |")
    for m, rs in chosen.items():
        cells = []
        for z in zero_names:
            values = [v for r in rs if (v := _zero_shot(r, z)) is not None]
            before = _zero_shot(base, z) if base is not None else None
            delta = "–" if not values or before is None else f"{_scale(z) * (float(np.mean(values)) - before):+.2f}"
            if base is not None and values:
                delta = _delta_cell(_zero_shot_bootstrap(rs, [base], z), _scale(z), delta)
            cells.append(f"{_mean_std(values, _scale(z))} | {delta}")
        lines.append(f"| {m} | {len(rs)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += _forgetting_against_reference(chosen, zero_names, results_dir)
    lines += _forgetting_across_seeds(chosen, zero_names)
    start = _step_0(base)
    curves = {m: [*start, *rs[0]["curve"]] for m, rs in chosen.items()
              if any(z in c.get("zero_shot", {}) for z in zero_names for c in rs[0]["curve"])}
    if curves:
        _forgetting_plot(results_dir / "forgetting.png", curves, zero_names)
        lines += ["Over training: each probe on its validation split at every evaluation of each method's seed-0 run"
                  + (", from the base model at step 0 (the same validation sets)." if start else ".")
                  + " The validation and test splits differ, so the curves' ends need not meet the table.", "",
                  "![forgetting](forgetting.png)", ""]
    return lines


def _forgetting_against_reference(chosen: dict, zero_names: list[str], results_dir: Path) -> list[str]:
    """MoORE-L8's zero-shot scores against each method's: a paired bootstrap over the probes' test
    examples, for the probes whose runs kept their predictions."""
    if REFERENCE not in chosen:
        return []
    rows = {m: [_zero_shot_bootstrap(chosen[REFERENCE], rs, z) for z in zero_names]
            for m, rs in chosen.items() if m != REFERENCE}
    rows = {m: r for m, r in rows.items() if any(x is not None for x in r)}
    if not rows:
        return []
    lines = [f"{REFERENCE} against each method: Δ = {REFERENCE} − method on each probe (> 0: {REFERENCE} keeps more "
             f"where higher is better), with its 95% interval ({BOOTSTRAP} paired resamples of the probe's test "
             "examples, seeds pooled; the seed-to-seed spread enters only through the pooled seeds). **Bold**: the "
             "interval excludes 0.", "", "| method | " + " | ".join(f"Δ {z}" for z in zero_names) + " |",
             "|---|" + "---|" * len(zero_names)]
    lines += [f"| {m} | " + " | ".join(_delta_cell(x, _scale(z)) for x, z in zip(r, zero_names)) + " |"
              for m, r in rows.items()]
    words = []
    for z in zero_names:
        lower = get_task(z).metric in LOWER_IS_BETTER
        keeps = {"keeps more": [], "forgets more": [], "within": []}
        for m, r in rows.items():
            x = dict(zip(zero_names, r))[z]
            if x is None:
                continue
            key = "within" if not x[3] else "keeps more" if (x[0] > 0) != lower else "forgets more"
            keeps[key].append(m)
        parts = [f"{phrase} {', '.join(keeps[key])}" for key, phrase in
                 (("keeps more", "keeps more of the base model's score than"), ("forgets more", "forgets more than"),
                  ("within", "is within the noise of")) if keeps[key]]
        if parts:
            words.append(f"On {z}, {REFERENCE} " + "; it ".join(parts) + ".")
    _forest_plot(results_dir / "against_oblivion.png", {z: {m: r[i] for m, r in rows.items()} for i, z in enumerate(zero_names)},
                 {z: _scale(z) for z in zero_names},
                 f"{REFERENCE} − method on each zero-shot probe, 95% intervals (filled: beyond the noise)",
                 {z: f"Δ ({'<' if get_task(z).metric in LOWER_IS_BETTER else '>'} 0: {REFERENCE} keeps more)"
                  for z in zero_names})
    return lines + ["", " ".join(words), "", f"![{REFERENCE} against each method on the probes](against_oblivion.png)", ""]


def _forgetting_across_seeds(chosen: dict, zero_names: list[str]) -> list[str]:
    """MoORE-L8's zero-shot scores against each method's: Welch's t-test across seeds (the seed-to-seed
    spread, which the bootstrap over test examples leaves out), for the methods with at least two seeds."""
    from scipy.stats import ttest_ind

    def values(m: str, z: str) -> list[float]:
        return [v for r in chosen.get(m, []) if (v := _zero_shot(r, z)) is not None]

    others = [m for m in chosen if m != REFERENCE and all(len(values(m, z)) >= 2 for z in zero_names)]
    if not others or not all(len(values(REFERENCE, z)) >= 2 for z in zero_names):
        return []
    lines = ["MoORE-L8 against each method with at least two seeds: Δ = MoORE-L8 − method on each probe, and the "
             "two-sided p-value of Welch's t-test across seeds (a test of the seed-to-seed spread, which resampling "
             "test examples leaves out; with 3 seeds a side it detects only large gaps). **Bold**: p < 0.05.", "",
             "| method | " + " | ".join(f"Δ {z} | p" for z in zero_names) + " |", "|---|" + "---|---|" * len(zero_names)]
    for m in others:
        cells = []
        for z in zero_names:
            ours, theirs = values(REFERENCE, z), values(m, z)
            delta = _scale(z) * (float(np.mean(ours)) - float(np.mean(theirs)))
            spread = np.ptp(ours) > 0 or np.ptp(theirs) > 0  # none on either side: nothing to test against
            p = float(ttest_ind(ours, theirs, equal_var=False).pvalue) if spread else float("nan")
            text = f"{delta:+.2f} | {'–' if np.isnan(p) else f'{p:.3f}'}"
            cells.append(f"**{delta:+.2f}** | **{p:.3f}**" if p < 0.05 else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines + [""]


def _forgetting_plot(path: Path, curves: dict[str, list[dict]], zero_names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(zero_names), figsize=(6 * len(zero_names), 3.6), squeeze=False)
    for ax, z in zip(axes[0], zero_names):
        for label, curve in curves.items():
            points = [(c["step"], v) for c in curve if (v := _curve_value(c, z)) is not None]
            if points:
                ax.plot(*zip(*points), marker=".", label=label)
        ax.set(xlabel="optimizer step", ylabel=_zero_label(z), title=f"Oblivion: {z} (validation)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
