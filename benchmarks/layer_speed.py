"""Micro-benchmark: a MoORE layer, and each peer's, against the linear layer it replaces, side by
side in one run.

    python benchmarks/layer_speed.py [--tokens 256] [--dtype float32] [--models llama-3.1-8b smollm2]
                                     [--methods moore lora hra ...]

For each layer shape it prints the MoORE forward and forward+backward time as a ratio to the base
``nn.Linear`` (frozen weight, input that needs a gradient, as inside a network), the forward with
H folded into V (``merge()``), and the theoretical floor r(Din+Dout)/(Din·Dout): the ratio of
weights an exact factored forward must read. Timings use torch.utils.benchmark (median of
adaptive repeats); the factors are random orthonormal-free matrices, since speed does not depend
on their values, so no SVD is run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch
from torch import nn
from torch.utils import benchmark

from moore import (
    METHODS,
    HraConfig,
    HydraLoraConfig,
    LoraConfig,
    LoraMoeConfig,
    MixLoraConfig,
    MooreConfig,
    MooreLinear,
    MosldConfig,
    MtlLoraConfig,
    OmoeConfig,
)
from moore.routing import TaskRouting

SHAPES = {  # (layer, Din, Dout)
    "llama-3.1-8b": [("q_proj/o_proj", 4096, 4096), ("k_proj/v_proj", 4096, 1024),
                     ("gate_proj/up_proj", 4096, 14336), ("down_proj", 14336, 4096)],
    "smollm2": [("q_proj/o_proj", 576, 576), ("k_proj/v_proj", 576, 192),
                ("gate_proj/up_proj", 576, 1536), ("down_proj", 1536, 576)],
}
NUM_TASKS = 9
# Peers at the sizes used in the comparisons: M = 8 experts of rank 8 (MoORE's L = 8 reflections is
# "comparable to M"), top-2 for MixLoRA, LoRA at the same total rank 64, HRA with 8 reflections.
PEER_SIZES = {cls.method: size for cls, size in [
    (LoraConfig, dict(r=64)), (HraConfig, dict(r=8)), (LoraMoeConfig, dict(r=8, num_experts=8)),
    (MixLoraConfig, dict(r=8, num_experts=8, top_k=2)), (MosldConfig, dict(r=8, num_experts=8)),
    (HydraLoraConfig, dict(r=8, num_experts=8)), (MtlLoraConfig, dict(r=8, num_experts=8)),
    (OmoeConfig, dict(r=8, num_experts=8)),
]}


def peer_layer(method: str, din: int, dout: int, dtype, device) -> nn.Module:
    config = METHODS[method](num_tasks=NUM_TASKS, **PEER_SIZES[method])
    base = nn.Linear(din, dout, bias=False, dtype=dtype, device=device).requires_grad_(False)
    # MixLoRA puts its experts on FFN layers: name the layer as one
    layer = config.layer_cls.from_base(base, config, TaskRouting(NUM_TASKS), module_name="mlp.up_proj")
    with torch.no_grad():
        for name in layer.adapter_parameter_names:
            if getattr(layer, name) is not None:
                getattr(layer, name).add_(torch.randn_like(getattr(layer, name)) * 0.01)
    return layer


def moore_layer(din: int, dout: int, dtype, device, config: MooreConfig) -> MooreLinear:
    r = min(din, dout)
    u = torch.randn(dout, r, dtype=dtype, device=device) / r**0.5
    s = torch.rand(r, dtype=dtype, device=device)
    vh = torch.randn(r, din, dtype=dtype, device=device) / din**0.5
    layer = MooreLinear(u, s, vh, None, config, TaskRouting(config.num_tasks))
    with torch.no_grad():  # away from init, so no term is trivially zero
        for name in layer.adapter_parameter_names:
            p = getattr(layer, name)
            if p is not None:
                p.add_(torch.randn_like(p) * 0.01)
    return layer


def median_seconds(fn, min_run_time: float) -> float:
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def measure(layer: nn.Module, x: torch.Tensor, routing: TaskRouting | None, task_ids, min_run_time: float):
    def forward():
        with torch.no_grad():
            if routing is None:
                return layer(x)
            with routing.use(task_ids):
                return layer(x)

    xg = x.detach().requires_grad_(True)

    def forward_backward():
        if routing is None:
            y = layer(xg)
        else:
            with routing.use(task_ids):
                y = layer(xg)
        y.sum().backward()
        xg.grad = None
        for p in layer.parameters():
            p.grad = None

    forward(), forward_backward()  # warm-up
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def timed(fn):
        def run():
            fn()
            sync()
        return median_seconds(run, min_run_time)

    return timed(forward), timed(forward_backward)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256, help="tokens per batch (batch 4 × tokens/4)")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--methods", nargs="*", default=list(PEER_SIZES), choices=list(PEER_SIZES),
                        help="peers to time beside MoORE")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per measurement")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    config = MooreConfig(num_tasks=NUM_TASKS)  # the paper's defaults: Dt=128, Ds=64, L=8
    batch = 4
    print(f"# MoORE layer speed vs nn.Linear — {device.type} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), {dtype}, {args.tokens} tokens, torch {torch.__version__}")
    print(f"# MoORE: task_dim={config.task_dim}, sample_dim={config.sample_dim}, "
          f"num_reflections={config.num_reflections}, num_tasks={NUM_TASKS}")
    header = f"{'model':13s} {'layer':18s} {'Din':>6s} {'Dout':>6s} {'floor':>6s} {'fwd':>6s} {'fwd+bwd':>8s} {'merged fwd':>10s}"
    print(header)
    print("-" * len(header))
    rows = []
    for model_name in args.models:
        for layer_name, din, dout in SHAPES[model_name]:
            torch.manual_seed(0)
            x = torch.randn(batch, args.tokens // batch, din, dtype=dtype, device=device)
            task_ids = torch.randint(0, NUM_TASKS, (batch,), device=device)
            base = nn.Linear(din, dout, bias=False, dtype=dtype, device=device).requires_grad_(False)
            layer = moore_layer(din, dout, dtype, device, config)
            base_fwd, base_fb = measure(base, x, None, None, args.min_run_time)
            moore_fwd, moore_fb = measure(layer, x, layer.routing, task_ids, args.min_run_time)
            layer.merge()
            merged_fwd, _ = measure(layer.eval(), x, layer.routing, task_ids, args.min_run_time)
            r = min(din, dout)
            row = {
                "model": model_name, "layer": layer_name, "din": din, "dout": dout,
                "floor": r * (din + dout) / (din * dout),
                "forward": moore_fwd / base_fwd, "forward_backward": moore_fb / base_fb,
                "merged_forward": merged_fwd / base_fwd,
                "base_forward_ms": base_fwd * 1e3, "base_forward_backward_ms": base_fb * 1e3,
            }
            for method in args.methods:
                peer = peer_layer(method, din, dout, dtype, device)
                fwd, fb = measure(peer, x, peer.routing, task_ids, args.min_run_time)
                row[method] = {"forward": fwd / base_fwd, "forward_backward": fb / base_fb}
            rows.append(row)
            print(f"{model_name:13s} {layer_name:18s} {din:6d} {dout:6d} {row['floor']:6.2f} {row['forward']:6.2f} "
                  f"{row['forward_backward']:8.2f} {row['merged_forward']:10.2f}", flush=True)
    print("\nratios are MoORE time / nn.Linear time, measured side by side; floor = r(Din+Dout)/(Din·Dout)")
    if args.methods:
        print(f"\n# every method, forward / forward+backward time as a ratio to nn.Linear (peer sizes: {PEER_SIZES})")
        names = [MooreConfig.method] + args.methods
        print(f"{'model':13s} {'layer':18s} " + " ".join(f"{n:>11s}" for n in names))
        for row in rows:
            cells = [f"{row['forward']:.2f}/{row['forward_backward']:.2f}"]
            cells += [f"{row[n]['forward']:.2f}/{row[n]['forward_backward']:.2f}" for n in args.methods]
            print(f"{row['model']:13s} {row['layer']:18s} " + " ".join(f"{c:>11s}" for c in cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device.type, "dtype": str(dtype), "tokens": args.tokens,
                       "torch": torch.__version__, "argv": sys.argv, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
