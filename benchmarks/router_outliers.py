"""Which of a trained MoORE model's token-level routers moves its outputs most, and on which tokens.

    MOORE_DATA_DIR=../shared/data python benchmarks/router_outliers.py \\
        runs/bench/csr-mtl-mini/moore-L0/final [--lines 60] [--top 3]

It scores the first ``--lines`` lines of WikiText-2's test set (the suites' own perplexity, with
the unseen-task embedding) and, through hooks, prints for every MoORE layer the largest
token-level offset |Qᵀ Γ x| against the layer's median singular value, the position of that
token and its input norm against the median token's. Then, for the ``--top`` layers, the
perplexity with every offset zeroed except that layer's token router. This is how the CSR
report's "massive activation" finding was found (README, CSR results).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from moore.data.tasks import default_data_dir, get_task
from moore.layers.moore import MooreLinear
from moore.multitask import MultiTaskModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a saved run (adapter_config.json, moore_tasks.json, ...)")
    parser.add_argument("--lines", type=int, default=60, help="WikiText-2 test lines to score")
    parser.add_argument("--top", type=int, default=3, help="layers to try alone")
    args = parser.parse_args()

    model = MultiTaskModel.load(args.run_dir)
    wikitext = get_task("wikitext2")
    examples = wikitext.load(default_data_dir(), "test", limit=args.lines)

    def perplexity() -> float:
        return model.evaluate(wikitext, examples, task_id=None, batch_size=8)["perplexity"]

    layers = [m for m in model.modules() if isinstance(m, MooreLinear) and m.sample_down is not None]
    if not layers:
        raise SystemExit(f"{args.run_dir}: no MoORE layer with a token-level router (sample_dim > 0)")
    worst: dict[str, tuple[float, int, float]] = {}

    def hook(layer, inputs, _output):
        x = inputs[0]  # (B, T, Din)
        offsets = layer.expert_weights(x) - layer.s  # (B, T, r): task part + token part
        if layer.task_embedding is not None:
            offsets = offsets - layer.task_gate(None).to(offsets.dtype)  # the unseen task's part
        size = offsets.abs().amax(-1)  # (B, T)
        b, t = divmod(int(size.argmax()), size.shape[1])
        ratio = float(size[b, t] / layer.s.median())
        if ratio > worst.get(layer.module_name, (0.0,))[0]:
            norms = x.norm(dim=-1)
            worst[layer.module_name] = (ratio, t, float(norms[b, t] / norms.median()))

    handles = [layer.register_forward_hook(hook) for layer in layers]
    print(f"perplexity as trained: {perplexity():.2f}")
    for h in handles:
        h.remove()
    ranked = sorted(worst, key=lambda name: -worst[name][0])
    print("\nlayer | max |token offset| / median σ | at position | that token's |x| / median |x|")
    for name in ranked[:15]:
        ratio, position, norm_ratio = worst[name]
        print(f"{name} | {ratio:.3f} | {position} | {norm_ratio:.1f}")

    trained = {layer.module_name: layer.sample_up.detach().clone() for layer in layers}

    def keep_only(kept: str | None) -> None:
        """Zero every task-level offset and every token router but ``kept``'s."""
        with torch.no_grad():
            for layer in layers:
                if layer.task_proj is not None:
                    layer.task_proj.zero_()
                layer.sample_up.copy_(trained[layer.module_name])
                if layer.module_name != kept:
                    layer.sample_up.zero_()

    print("\nperplexity with only one layer's token router kept (every other offset zeroed):")
    for name in ranked[: args.top]:
        keep_only(name)
        print(f"{name}: {perplexity():.2f}")
    keep_only(None)
    print(f"every offset zeroed (the base model, up to H): {perplexity():.2f}")


if __name__ == "__main__":
    main()
