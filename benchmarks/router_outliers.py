"""Which of a trained MoORE model's token-level routers moves its outputs most, and on which tokens.

    python benchmarks/router_outliers.py runs/bench/csr-mtl-mini/moore-L0/final --model smollm2 \\
        --text ../shared/data/wikitext-2/test.txt [--lines 40] [--top 5]

For every MoORE layer it runs the base model's text through the adapted model (unseen-task
embedding) and prints the largest token-level offset |Qᵀ Γ x| against the layer's median
singular value, the position of that token and its input norm against the median token's. Then,
for the `--top` layers, the perplexity with every offset zeroed except that layer's token router.
This is how the CSR report's "massive activation" finding was found (README, CSR results).
"""

from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from moore.layers.moore import MooreLinear
from moore.model import MooreModel
from moore.multitask import load_base_model


def perplexity(model, batches) -> float:
    nll, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            n = int((labels[:, 1:] != -100).sum())
            nll += model(**batch, labels=labels).loss.item() * n
            count += n
    return math.exp(nll / count)


def load(run_dir: str, model_name: str) -> MooreModel:
    base, _, _ = load_base_model(model_name)
    return MooreModel.from_pretrained(base, run_dir).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--text", required=True, help="a plain-text file, one passage a line")
    parser.add_argument("--lines", type=int, default=40)
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()

    _, tokenizer, _ = load_base_model(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with open(args.text, encoding="utf-8") as f:
        lines = [line.strip() for line in f if len(line.strip()) > 100][: args.lines]
    batches = [tokenizer(lines[i:i + 8], return_tensors="pt", padding=True, truncation=True,
                         max_length=args.max_length) for i in range(0, len(lines), 8)]

    model = load(args.run_dir, args.model)
    layers = [m for m in model.modules() if isinstance(m, MooreLinear) and m.sample_down is not None]
    if not layers:
        raise SystemExit(f"{args.run_dir}: no MoORE layer with a token-level router (sample_dim > 0)")
    worst: dict[str, tuple] = {}

    def hook(layer, inputs, _output):
        x = inputs[0]  # (B, T, Din)
        offsets = layer.expert_weights(x) - layer.s  # (B, T, r)
        if layer.task_embedding is not None:
            offsets = offsets - layer.task_gate(None).to(offsets.dtype)
        size = offsets.abs().amax(-1)  # (B, T)
        norms = x.norm(dim=-1)
        b, t = divmod(int(size.argmax()), size.shape[1])
        previous = worst.get(layer.module_name, (0.0,))
        ratio = float(size[b, t] / layer.s.median())
        if ratio > previous[0]:
            worst[layer.module_name] = (ratio, t, float(norms[b, t] / norms.median()))

    handles = [layer.register_forward_hook(hook) for layer in layers]
    base_batches = batches
    print(f"perplexity as trained: {perplexity(model, base_batches):.2f}")
    for h in handles:
        h.remove()
    ranked = sorted(worst.items(), key=lambda kv: -kv[1][0])
    print("\nlayer | max |token offset| / median σ | at position | that token's |x| / median |x|")
    for name, (ratio, position, norm_ratio) in ranked[:15]:
        print(f"{name} | {ratio:.3f} | {position} | {norm_ratio:.1f}")

    print("\nperplexity with only one layer's token router kept (every other offset zeroed):")
    state = {k: v.clone() for k, v in model.state_dict().items() if "task_proj" in k or "sample_up" in k}
    for name, _ in ranked[: args.top]:
        model.load_state_dict(state, strict=False)
        with torch.no_grad():
            for layer in layers:
                if layer.task_proj is not None:
                    layer.task_proj.zero_()
                if layer.module_name != name:
                    layer.sample_up.zero_()
        print(f"{name}: {perplexity(model, base_batches):.2f}")
    with torch.no_grad():
        for layer in layers:
            layer.sample_up.zero_()
            if layer.task_proj is not None:
                layer.task_proj.zero_()
    print(f"every offset zeroed (the base model, up to H): {perplexity(model, base_batches):.2f}")


if __name__ == "__main__":
    main()
