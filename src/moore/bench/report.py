"""The benchmark report, rebuilt from the result files alone: Markdown tables, PNG plots, the raw JSON."""

from __future__ import annotations

import json
from pathlib import Path

from ..data.metrics import LOWER_IS_BETTER
from ..data.tasks import get_task
from .suites import ABLATION, FULL, OURS, PEER, REFERENCE, Suite, get_suite, lr_text


def _load(results_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))}


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _score(value, metric: str) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if metric in LOWER_IS_BETTER else f"{100 * value:.2f}"


def _primary(record: dict, task: str) -> tuple[str, float | None]:
    metric = get_task(task).metric
    return metric, record.get("scores", {}).get(task, {}).get(metric)


def _zero_shot(record: dict, task: str) -> float | None:
    """A record's zero-shot score on a task's primary metric, or None."""
    return record.get("zero_shot", {}).get(task, {}).get(get_task(task).metric)


def _conflict_table(records: dict, methods: list[str], tasks: list[str]) -> list[str]:
    header = "| method | #params (% of base) | " + " | ".join(
        f"{t} ({get_task(t).metric})" for t in tasks) + " | average |"
    lines = [header, "|---|---|" + "---|" * (len(tasks) + 1)]
    base = records.get("base", {})
    if base.get("scores"):  # a decoder scored before any training
        lines.append("| base model, no training | 0 | " + " | ".join(_pct(_primary(base, t)[1]) for t in tasks)
                     + f" | {_pct(base.get('average'))} |")
    best = {}
    for t in tasks:
        values = [_primary(records[m], t)[1] for m in methods if _primary(records[m], t)[1] is not None]
        best[t] = max(values) if values else None
    best_avg = max((records[m]["average"] for m in methods if records[m].get("average") is not None), default=None)
    for m in methods:
        r = records[m]
        cells = []
        for t in tasks:
            value = _primary(r, t)[1]
            text = _pct(value)
            cells.append(f"**{text}**" if value is not None and value == best[t] else text)
        avg = r.get("average")
        avg_text = f"**{_pct(avg)}**" if avg is not None and avg == best_avg else _pct(avg)
        lines.append(f"| {m} | {r['trainable_parameters']:,d} ({100 * r['share']:.2f}%) | " + " | ".join(cells)
                     + f" | {avg_text} |")
    return lines


def _bar_plot(path: Path, labels: list[str], values: list[float], title: str, ylabel: str, highlight: list[bool],
              reference: float | None = None, reference_label: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(labels)), 3.6))
    colors = ["tab:red" if mine else "tab:blue" for mine in highlight]
    ax.bar(range(len(labels)), values, color=colors)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    if reference is not None:
        ax.axhline(reference, color="k", ls="--", lw=1, label=reference_label)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    low = min(values + ([reference] if reference is not None else []))
    high = max(values + ([reference] if reference is not None else []))
    ax.set_ylim(max(0.0, low - 0.15 * (high - low + 1)), high + 0.1 * (high - low + 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _per_task_plot(path: Path, records: dict, methods: list[str], tasks: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(tasks)), 3.8))
    width = 0.8 / len(methods)
    cmap = plt.get_cmap("tab20")
    for i, m in enumerate(methods):
        values = [100 * (_primary(records[m], t)[1] or 0.0) for t in tasks]
        ax.bar(np.arange(len(tasks)) + i * width - 0.4 + width / 2, values, width, label=m, color=cmap(i))
    ax.set_xticks(range(len(tasks)), [f"{t}\n({get_task(t).metric})" for t in tasks])
    ax.set_ylabel("score ×100")
    ax.set_title("Per-task scores (conflict)")
    ax.legend(ncol=4, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _setup(suite: Suite) -> str:
    """How every method is trained, in words, from the suite's own settings."""
    training = suite.config["training"]
    heads = training.get("head_lr") is not None  # task heads: an encoder's classification/regression tasks
    reference_lr = " (the reference code's)" if training["lr"] == 3e-4 else ""
    text = ("Every method trains the same tasks with the same data, steps, schedule and seed; each peer's size "
            "(rank) is matched to MoORE-L8's trainable-parameter count (`moore.match_budget`)"
            + ("; task heads (the same for every method) are not counted" if heads else "")
            + f". Adapters train at learning rate {lr_text(training['lr'])}{reference_lr}"
            + (f", task heads at {lr_text(training['head_lr'])}" if heads else ""))
    own = [(name, m.lr) for name, m in suite.methods.items() if m.lr is not None]
    for name, lr in own:
        what = "full fine-tuning trains every weight" if suite.family(name) == FULL else f"{name} trains"
        text += f"; {what} at {lr_text(lr)}"
    return text + "."


def write_report(suite_name: str, results_dir: Path) -> Path:
    from ..routing_analysis import plot_routing

    suite = get_suite(suite_name)
    records = _load(results_dir)
    tasks = [t["name"] for t in suite.config["tasks"]]
    methods = [m for m in suite.methods if m in records and suite.family(m) != ABLATION]
    missing = [m for m in suite.methods if m not in records]
    base = records.get("base", {})
    lines = [f"# {suite.title}", "",
             "Rebuilt from the JSON files in this folder by `moore bench " + suite_name + " --report`; each file holds "
             "one method's run with its exact command, git commit, seed and machine.", "",
             f"**Subsampled to fit 2 CPU cores:** {suite.subsampling}", "", _setup(suite), ""]
    if suite.notes:
        lines += [suite.notes, ""]
    if missing:
        lines += [f"Not run yet: {', '.join(missing)} (`moore bench {suite_name} --methods "
                  f"{','.join(missing)}` adds them).", ""]
    if methods:
        machine = records[methods[0]]["machine"]
        commits = sorted({records[m].get("git_commit", "?")[:10] for m in methods})
        lines += [f"Machine: {machine['processor']}, {machine['cpu_count']} CPUs, torch {machine['torch']}"
                  f"{', GPU ' + machine['gpu'] if machine.get('gpu') else ', no GPU'}; commits {', '.join(commits)}.", ""]
        lines += ["## Conflict: per-task scores (test split, ×100)", ""] + _conflict_table(records, methods, tasks)
        sizes = [t["max_eval"] for t in suite.config["tasks"] if t.get("max_eval")]
        if sizes:  # one seed and small test samples: say how far apart two scores must be to mean much
            scored = min(sizes)
            half_width = 100 * 1.96 * (0.25 / scored) ** 0.5
            lines += ["", f"One seed, {scored} scored examples per task: an accuracy near 50% has a 95% interval of "
                      f"±{half_width:.1f} points, so smaller gaps between two methods on one task are noise."]
        lines += ["", "![per-task scores](per_task.png)", ""]
        _per_task_plot(results_dir / "per_task.png", records, methods, tasks)
        averages = [100 * records[m]["average"] for m in methods]
        _bar_plot(results_dir / "average.png", methods, averages, "Average of the tasks' primary metrics",
                  "score ×100", [suite.family(m) == OURS for m in methods])
        lines += ["![average](average.png)", ""]
        lines += _verdict(records, methods, tasks, suite)

    zero_names = [z["name"] for z in suite.config["evaluation"].get("zero_shot", [])]
    if methods and zero_names:
        lines += ["## Oblivion: what the base model could do before (unseen-task embedding)", ""]
        header = "| method | " + " | ".join(f"{z} ({get_task(z).metric})" for z in zero_names) + " |"
        lines += [header, "|---|" + "---|" * len(zero_names)]
        published = base.get("published_zero_shot", {})
        if published:
            lines.append("| base model (published) | " + " | ".join(
                _score(published.get(z, {}).get(get_task(z).metric), get_task(z).metric) for z in zero_names) + " |")
        if base:
            lines.append("| **base model (measured here)** | " + " | ".join(
                _score(_zero_shot(base, z), get_task(z).metric) for z in zero_names)
                + " |")
        for m in methods:
            cells = []
            for z in zero_names:
                metric = get_task(z).metric
                value, ref = _zero_shot(records[m], z), _zero_shot(base, z)
                delta = ""
                if value is not None and ref is not None:
                    d = (value - ref) if metric in LOWER_IS_BETTER else 100 * (value - ref)
                    delta = f" ({d:+.2f})"
                cells.append(_score(value, metric) + delta)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        first = zero_names[0]
        metric = get_task(first).metric
        values = [_zero_shot(records[m], first) for m in methods]
        if all(v is not None for v in values):
            scale = 1 if metric in LOWER_IS_BETTER else 100
            ref = _zero_shot(base, first)
            _bar_plot(results_dir / "oblivion.png", methods, [scale * v for v in values],
                      f"Oblivion: zero-shot {first} {metric} after multi-task adaptation", f"{metric}",
                      [suite.family(m) == OURS for m in methods], None if ref is None else scale * ref, "base model")
            lines += ["", "![oblivion](oblivion.png)"]
        lines += ["", "Δ: change against the base model (points ×100; perplexity: absolute). The adapted model is "
                  "run with the mean task embedding (MoORE, MTL-LoRA) or as it is (the others).", ""]
        lines += _oblivion_verdict(records, methods, zero_names, suite)

    parts = [m for m in suite.methods if suite.family(m) == ABLATION] + [REFERENCE]  # all three = MoORE-L8
    ablation = [(m, suite.methods[m].label) for m in parts if m in records]
    if len(ablation) > 1:
        lines += ["## Ablation (paper Table 13)", ""]
        header = "| variant | #params | " + " | ".join(tasks) + " | average | " + " | ".join(
            f"zero-shot {z} ({get_task(z).metric})" for z in zero_names) + " |"
        lines += [header, "|---|---|" + "---|" * (len(tasks) + 1 + len(zero_names))]
        for m, label in ablation:
            r = records[m]
            zero = [_score(_zero_shot(r, z), get_task(z).metric) for z in zero_names]
            lines.append(f"| {label} | {r['trainable_parameters']:,d} | " + " | ".join(
                _pct(_primary(r, t)[1]) for t in tasks) + f" | {_pct(r['average'])} | " + " | ".join(zero) + " |")
        lines.append("")

    routing = records.get(REFERENCE, {}).get("routing")
    if routing:
        plot_routing(routing, results_dir / "routing_weights.png", results_dir / "routing_distances.png")
        lines += ["## Routing analysis (MoORE-L8)", "",
                  f"Layer `{routing['layer']}`: each expert's routing offset g (mean ± std over the tokens of each "
                  "task's test examples; the 48 experts with the largest singular values), as in the paper's Fig. 13, "
                  "and the distances between the tasks' mean routing vectors (Fig. 12).", "",
                  "![routing weights](routing_weights.png)", "", "![task distances](routing_distances.png)", ""]

    efficiency = records.get("efficiency")
    if efficiency:
        lines += ["## Efficiency (ratios to the base model, measured in one run)", "",
                  f"Batch {efficiency['batch'][0]} × {efficiency['batch'][1]} tokens, median of "
                  f"{efficiency['repeats']} repeats. Training step and memory are relative to a full fine-tuning step "
                  "of the base model (forward, backward, AdamW); memory counts parameters, buffers, gradients, "
                  "optimizer state and the activations saved for backward. Inference is tokens/s relative to the "
                  "base model's forward (higher is faster).", "",
                  "| method | training step time | training memory | inference speed |", "|---|---|---|---|"]
        def ratio(row, key):
            return f"{row[key]:.2f}×" if key in row else "— (inference only)"

        rows = efficiency["rows"]
        for name, row in rows.items():
            lines.append(f"| {name} | {ratio(row, 'train_step_ratio')} | {ratio(row, 'train_memory_ratio')} | "
                         f"{row['inference_ratio']:.2f}× |")
        lines += [""] + _efficiency_verdict(rows, suite)

    lines += ["## Raw results", "", "One JSON file per method in this folder: " + ", ".join(
        f"[{name}.json]({name}.json)" for name in records) + "."]
    path = results_dir / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _verdict(records: dict, methods: list[str], tasks: list[str], suite: Suite) -> list[str]:
    """Plain sentences on where MoORE wins and where it loses."""
    if REFERENCE not in records:
        return []
    moore = records[REFERENCE]
    peers = [m for m in methods if suite.family(m) != OURS]
    better = [m for m in peers if records[m]["average"] > moore["average"]]
    lines = []
    if better:
        lines.append(f"**Where MoORE loses:** on the average, MoORE-L8 ({_pct(moore['average'])}) is behind "
                     + ", ".join(f"{m} ({_pct(records[m]['average'])})" for m in better) + ".")
    else:
        lines.append(f"MoORE-L8 has the best average of the methods run ({_pct(moore['average'])}).")
    per_task = []
    for t in tasks:
        ahead = [m for m in peers if (_primary(records[m], t)[1] or -1) > (_primary(moore, t)[1] or -1)]
        if ahead:
            per_task.append(f"{t}: " + ", ".join(ahead))
    if per_task:
        lines.append("Tasks where a peer scores higher than MoORE-L8 — " + "; ".join(per_task) + ".")
    return lines + [""]


def _oblivion_verdict(records: dict, methods: list[str], zero_names: list[str], suite: Suite) -> list[str]:
    """Per zero-shot task: the peers that kept more of the base model's skill than MoORE-L8."""
    if REFERENCE not in records:
        return []
    peers = [m for m in methods if suite.family(m) != OURS]
    lines = []
    for z in zero_names:
        metric = get_task(z).metric
        sign = -1 if metric in LOWER_IS_BETTER else 1
        values = {m: _zero_shot(records[m], z) for m in [*peers, REFERENCE]}
        mine = values[REFERENCE]
        if mine is None:
            continue
        ahead = [m for m in peers if values[m] is not None and sign * values[m] > sign * mine]
        shown = ", ".join(f"{m} ({_score(values[m], metric)})" for m in ahead)
        lines.append(f"**Where MoORE loses (oblivion, {z}):** {shown} kept more than MoORE-L8 "
                     f"({_score(mine, metric)})." if ahead else
                     f"On {z}, MoORE-L8 ({_score(mine, metric)}) kept the most of the methods run.")
    return lines + [""] if lines else []


def _efficiency_verdict(rows: dict, suite: Suite) -> list[str]:
    """Which peers are cheaper than MoORE-L8 (its best case: merged, for inference)."""
    if REFERENCE not in rows:
        return []
    peers = [m for m in rows if suite.family(m) == PEER]
    moore = rows[REFERENCE]
    infer = rows.get(f"{REFERENCE} (merged)", moore)["inference_ratio"]
    out = []
    for key, label in (("train_step_ratio", "training step time"), ("train_memory_ratio", "training memory"),
                       ("inference_ratio", "inference speed (MoORE merged)")):
        mine = infer if key == "inference_ratio" else moore.get(key)
        if mine is None:
            continue
        higher_is_better = key == "inference_ratio"
        ahead = [m for m in peers if key in rows[m] and (rows[m][key] > mine if higher_is_better else rows[m][key] < mine)]
        if ahead:
            out.append(f"**Where MoORE loses (efficiency, {label}):** {', '.join(ahead)} (MoORE-L8: {mine:.2f}×).")
    return out + [""] if out else []

