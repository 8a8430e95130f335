"""Scoring tasks one by one, and the tables and plots people read: per-task scores, forgetting."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from .data.metrics import LOWER_IS_BETTER
from .data.tasks import Example, Task
from .multitask import MultiTaskModel
from .precision import warn_if_bf16_is_slow


def evaluate_tasks(model: MultiTaskModel, data: dict[str, tuple[Task, list[Example]]], *, batch_size: int = 32,
                   scoring: str = "loglik", max_new_tokens: int = 16, task_id="own",
                   progress: bool = False, predictions: dict[str, list] | None = None,
                   bf16: bool = False) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} for each (task, examples) in ``data``. ``task_id="own"`` routes each
    task by its own id; ``None`` scores with the unseen-task (mean) embedding (zero-shot). Pass a
    dict as ``predictions`` to have it filled with each task's predictions from the same pass.
    ``bf16``: in bf16 autocast (log-probabilities still taken in float32)."""
    if bf16:
        warn_if_bf16_is_slow(model.device, "evaluation.bf16")
    results = {}
    for name, (task, examples) in data.items():
        how = scoring
        if task_id in (None, "infer") and task.kind == "regression" and model.kind == "encoder" and name not in model.heads:
            how = "similarity"  # no head for it: cosine of the two texts' encodings, as sentence encoders are scored
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            results[name], predicted = model.evaluate_and_predict(task, examples, batch_size=batch_size, scoring=how,
                                                                  max_new_tokens=max_new_tokens, task_id=task_id,
                                                                  progress=progress)
        if predictions is not None and predicted is not None:
            predictions[name] = predicted
    return results


def primary_average(results: dict[str, dict[str, float]], tasks: Sequence[Task]) -> float | None:
    """The mean of each task's first metric; perplexity (lower is better) does not enter it."""
    values = [results[t.name][t.metric] for t in tasks if t.name in results and t.metric not in LOWER_IS_BETTER]
    return sum(values) / len(values) if values else None


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.2f}" if abs(value) <= 1 else f"{value:.2f}"  # scores in [-1, 1] as percentages


def scores_table(columns: dict[str, dict[str, dict[str, float]]], tasks: Sequence[Task]) -> str:
    """A Markdown table: one row per task metric, one column per result set (e.g. before / after).
    Scores in [-1, 1] are shown ×100; perplexity as is."""
    names = list(columns)
    lines = ["| task | metric | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for task in tasks:
        for metric in task.metrics:
            row = [_fmt(columns[c].get(task.name, {}).get(metric)) for c in names]
            lines.append(f"| {task.name} | {metric} | " + " | ".join(row) + " |")
    averages = [_fmt(primary_average(columns[c], tasks)) for c in names]
    lines.append("| **average** | primary | " + " | ".join(averages) + " |")
    return "\n".join(lines)


def forgetting_matrix(stage_results: list[dict[str, dict[str, float]]], tasks: Sequence[Task]) -> list[list[float | None]]:
    """Row i: each task's primary metric after stage i (None where it was not scored)."""
    return [[r.get(t.name, {}).get(t.metric) for t in tasks] for r in stage_results]


def forgetting_markdown(matrix: list[list[float | None]], stages: list[list[str]], tasks: Sequence[Task]) -> str:
    lines = ["| after stage | " + " | ".join(f"{t.name} ({t.metric})" for t in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    for i, (row, stage) in enumerate(zip(matrix, stages)):
        lines.append(f"| {i + 1}: {'+'.join(stage)} | " + " | ".join(_fmt(v) for v in row) + " |")
    drops = []
    for j, task in enumerate(tasks):
        trained = [i for i, s in enumerate(stages) if task.name in s]
        if trained and trained[-1] < len(matrix) - 1 and matrix[trained[-1]][j] is not None:
            drops.append(f"{task.name}: {_fmt(matrix[trained[-1]][j])} → {_fmt(matrix[-1][j])}")
    if drops:
        lines += ["", "Forgetting (score right after its stage → at the end): " + "; ".join(drops)]
    return "\n".join(lines)


def plot_forgetting(matrix: list[list[float | None]], stages: list[list[str]], tasks: Sequence[Task],
                    path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(tasks), 1.0 + 0.6 * len(stages)))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(tasks)), [f"{t.name}\n({t.metric})" for t in tasks])
    ax.set_yticks(range(len(stages)), [f"{i + 1}: {'+'.join(s)}" for i, s in enumerate(stages)])
    ax.set_xlabel("task scored")
    ax.set_ylabel("after stage")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(image, ax=ax)
    ax.set_title("Sequential adaptation: scores after each stage")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_markdown(results: dict, tasks: Sequence[Task], zero_shot: Sequence[Task], stages: list[list[str]],
                     output_dir: Path) -> str:
    """``results.md`` of a run: per-task scores before and after, zero-shot scores, and with stages
    the forgetting matrix (and its plot, written to ``output_dir/forgetting.png``)."""
    columns = {}
    if results["before"]:
        columns["before"] = results["before"]
    columns["after"] = results["after"]
    parts = [f"## Per-task scores ({results['split']} split; ×100 where a score is in [-1, 1])", "",
             scores_table(columns, tasks)]
    if results["zero_shot"]:
        zs = {"before": results["zero_shot_before"]} if results["zero_shot_before"] else {}
        parts += ["", "## Zero-shot (unseen-task embedding)", "",
                  scores_table({**zs, "after": results["zero_shot"]}, zero_shot)]
    if "forgetting_matrix" in results:
        matrix = results["forgetting_matrix"]
        parts += ["", "## Forgetting matrix", "", forgetting_markdown(matrix, stages, tasks)]
        plot_forgetting(matrix, stages, tasks, output_dir / "forgetting.png")
        parts += ["", "![forgetting](forgetting.png)"]
    return "\n".join(parts)
