"""How a trained MoORE layer routes: each expert's weight per task (paper Fig. 13) and the
distances between the tasks' mean routing vectors (paper Fig. 12)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .layers.moore import MooreLinear
from .multitask import MultiTaskModel


@torch.no_grad()
def routing_statistics(model: MultiTaskModel, layer_name: str, data: dict, limit: int = 64,
                       batch_size: int = 16) -> dict:
    """For ``layer_name``: per task, the mean and standard deviation over tokens of each expert's
    routing offset g = (σ + g) − σ, and the Euclidean distances between the tasks' mean vectors."""
    layer = dict(model.adapted.adapter_layers()).get(layer_name)
    if not isinstance(layer, MooreLinear):
        names = [n for n, m in model.adapted.adapter_layers() if isinstance(m, MooreLinear)]
        raise ValueError(f"{layer_name!r} is not a MoORE layer of this model; MoORE layers: {names[:8]}...")
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda mod, args, out: captured.append(mod.expert_weights(args[0]).float()))
    was_training = model.training
    model.eval()
    stats = {}
    try:
        for name, (task, examples) in data.items():
            rows = []
            for start in range(0, min(limit, len(examples)), batch_size):
                chunk = examples[start:min(start + batch_size, limit)]
                batch = model._to(model.collate(chunk, [name] * len(chunk)))
                captured.clear()
                model.adapted(**batch["inputs"], task_ids=batch["task_ids"])
                mask = batch["inputs"]["attention_mask"].bool()  # (B, T): real tokens only
                rows.append(captured[0][mask] - layer.s.float())  # (tokens, r)
            g = torch.cat(rows)
            stats[name] = {"mean": g.mean(0).tolist(), "std": g.std(0).tolist(), "tokens": g.shape[0]}
    finally:
        handle.remove()
        model.train(was_training)
    names = list(stats)
    means = torch.tensor([stats[n]["mean"] for n in names])
    return {"layer": layer_name, "tasks": names, "sigma": layer.s.float().tolist(), "per_task": stats,
            "distances": torch.cdist(means, means).tolist()}


def plot_routing(routing: dict, path_weights, path_distances, top: int = 48) -> None:
    """Two PNGs: mean ± std of the routing offset of the ``top`` largest-σ experts, per task; and the
    task-distance heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names: Sequence[str] = routing["tasks"]
    order = np.argsort(routing["sigma"])[::-1][:top]
    fig, ax = plt.subplots(figsize=(11, 4))
    for name in names:
        mean = np.array(routing["per_task"][name]["mean"])[order]
        std = np.array(routing["per_task"][name]["std"])[order]
        ax.plot(range(len(order)), mean, label=name, lw=1.2)
        ax.fill_between(range(len(order)), mean - std, mean + std, alpha=0.15)
    ax.set_xlabel(f"expert (by singular value, largest first; top {len(order)})")
    ax.set_ylabel("routing offset g (mean ± std over tokens)")
    ax.set_title(f"MoORE expert weights per task: {routing['layer']}")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(ncol=len(names), fontsize=8)
    fig.tight_layout()
    fig.savefig(path_weights, dpi=120)
    plt.close(fig)

    d = np.array(routing["distances"])
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(names), 1.2 + 0.8 * len(names)))
    image = ax.imshow(d, cmap="magma")
    ax.set_xticks(range(len(names)), names, rotation=45)
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{d[i, j]:.2f}", ha="center", va="center", color="w" if d[i, j] < d.max() / 2 else "k",
                    fontsize=8)
    fig.colorbar(image, ax=ax)
    ax.set_title("distance between tasks' mean routing")
    fig.tight_layout()
    fig.savefig(path_distances, dpi=120)
    plt.close(fig)
