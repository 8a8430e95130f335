"""A fingerprint of a base model's weights, so an adapter refuses a base model it was not made for.

For every parameter: its name, its shape and a fixed, evenly spaced sample of its values, kept in
the parameter's own dtype. Two copies of the same model match exactly; the same model loaded in
another precision (fp32 vs bf16) matches after rounding both samples to the coarser dtype; any
other model differs in names, shapes or values.

The adapted layers' weights (``hashed``), which the adapter is built from and which are read in
full anyway, are also hashed whole: a SHA-256 of their bytes in their own dtype, and one of their
values rounded to bfloat16. The same dtype must match the first exactly, so a single edited weight
is refused; fp32 against bf16 must match the second. Only an fp16 copy against another precision
falls back to the samples, since rounding fp16 to bf16 is not rounding fp32 to bf16.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

SAMPLES_PER_TENSOR = 256


HASH = "::sha256"
HASH_BF16 = "::sha256_bf16"


def sha256_of(tensor: torch.Tensor, tag: str = ""):
    """A ``hashlib`` SHA-256 of a tensor's shape, dtype, ``tag`` and bytes."""
    h = hashlib.sha256(f"{tuple(tensor.shape)}|{tensor.dtype}|{tag + '|' if tag else ''}".encode())
    flat = tensor.detach().contiguous().reshape(-1)
    chunk = 1 << 24  # 16M-element pieces: bounded host memory for weights on an accelerator
    for start in range(0, flat.numel(), chunk):
        h.update(flat[start : start + chunk].cpu().view(torch.uint8).numpy().tobytes())
    return h


def tensor_sha256(tensor: torch.Tensor) -> torch.Tensor:
    """SHA-256 of a tensor's bytes (and shape and dtype), as 32 uint8 values."""
    return torch.frombuffer(bytearray(sha256_of(tensor).digest()), dtype=torch.uint8)


def model_fingerprint(model: nn.Module, exclude_prefixes: tuple[str, ...] = (),
                      hashed: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Samples and shapes of every parameter; full hashes of the parameters named in ``hashed``."""
    fingerprint = {}
    for name in hashed:
        param = model.get_parameter(name)
        fingerprint[name + HASH] = tensor_sha256(param)
        fingerprint[name + HASH_BF16] = tensor_sha256(param.detach().to(torch.bfloat16))
    for name, param in model.named_parameters():
        if any(name == p or name.startswith(p + ".") for p in exclude_prefixes):
            continue
        flat = param.detach().reshape(-1)
        count = min(flat.numel(), SAMPLES_PER_TENSOR)
        # evenly spaced, in integers: float32 positions round past the end of tensors above 2^24 values
        index = torch.arange(count, device=flat.device) * (flat.numel() - 1) // max(count - 1, 1)
        sample = flat[index].cpu().clone()
        fingerprint[name] = sample
        fingerprint[name + "::shape"] = torch.tensor(list(param.shape), dtype=torch.int64)
    return fingerprint


def fingerprint_digest(fingerprint: dict[str, torch.Tensor]) -> str:
    """A short, dtype-independent digest for display (the comparison itself uses the samples)."""
    h = hashlib.sha256()
    for name in sorted(fingerprint):
        if name.endswith((HASH, HASH_BF16)):
            continue  # dtype-dependent
        value = fingerprint[name]
        if not name.endswith("::shape"):
            value = value.to(torch.bfloat16).float()
        h.update(name.encode())
        h.update(value.numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint_mismatches(saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between two fingerprints (empty when they match)."""
    problems = []
    missing = sorted(k for k in saved if k not in current and "::" not in k)
    extra = sorted(k for k in current if k not in saved and "::" not in k)
    if missing:
        problems.append(f"{len(missing)} parameters missing from the base model, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} parameters the adapter's base model did not have, e.g. {extra[:3]}")
    for name in sorted(saved):
        if "::" in name or name not in current:
            continue
        if not torch.equal(saved[name + "::shape"], current[name + "::shape"]):
            problems.append(
                f"{name}: shape {tuple(current[name + '::shape'].tolist())}, "
                f"expected {tuple(saved[name + '::shape'].tolist())}"
            )
            continue
        a, b = saved[name], current[name]
        coarse = a.dtype if torch.finfo(a.dtype).eps >= torch.finfo(b.dtype).eps else b.dtype
        a, b = a.to(coarse).float(), b.to(coarse).float()
        # one unit in the last place of the coarser dtype absorbs double rounding (fp16 -> bf16)
        if not torch.allclose(a, b, rtol=2 * torch.finfo(coarse).eps, atol=1e-30):
            problems.append(f"{name}: values differ")
            continue
        if name + HASH in saved and name + HASH in current:
            same_dtype = saved[name].dtype == current[name].dtype
            if same_dtype or torch.float16 not in (saved[name].dtype, current[name].dtype):
                key = HASH if same_dtype else HASH_BF16
                if not torch.equal(saved[name + key], current[name + key]):
                    problems.append(f"{name}: values differ (the sampled values match, the full hash does not: "
                                    "some weights were edited)")
    return problems
