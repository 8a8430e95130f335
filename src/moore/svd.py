"""The one-off SVD of a weight matrix, with an on-disk cache keyed by the weight's content.

The SVD runs on the weight's device in float32 or float64 (never bf16/fp16) and the factors are
returned in the weight's dtype, which is all a MoORE layer keeps. The cache key is a SHA-256 of
the weight's bytes, shape, dtype and the SVD precision, so a second MoE-ization of the same base
model (or a reload of a saved adapter) skips the SVD. Cached factors are checked against the weight
on a random probe before use, so a corrupt file is recomputed rather than trusted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils._pytree import tree_map

from .fingerprint import sha256_of
from .io import atomic_write

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def default_cache_dir() -> Path | None:
    """``$MOORE_SVD_CACHE`` (``off`` disables the cache), else ``~/.cache/moore/svd``."""
    env = os.environ.get("MOORE_SVD_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "none", "false") else Path(env)
    return Path.home() / ".cache" / "moore" / "svd"


def weight_digest(weight: torch.Tensor, svd_dtype: str) -> str:
    return sha256_of(weight, svd_dtype).hexdigest()  # the same key as before: shape|dtype|svd_dtype|bytes


def _reconstruction_error(weight: torch.Tensor, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> float:
    # a private generator: a cache hit must not shift the global random stream (and with it every
    # initialisation after it), or the same seed would give another run with a warm cache
    generator = torch.Generator(device=weight.device).manual_seed(0)
    probe = torch.randn(weight.shape[1], 4, dtype=torch.float32, device=weight.device, generator=generator)
    exact = weight.float() @ probe
    approx = u.float() @ (s.float()[:, None] * (vh.float() @ probe))
    return float((exact - approx).norm() / exact.norm().clamp_min(1e-30))


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype in (torch.float32, torch.float64) else 5e-2


def _rank(s: torch.Tensor, shape, work: torch.dtype) -> int:
    """How many singular values are not negligible (σ > σ_max · max(Dout, Din) · eps)."""
    return int((s > s[0] * max(shape) * torch.finfo(work).eps).sum()) if s.numel() else 0


@torch.no_grad()
def numerical_rank(weight: torch.Tensor, svd_dtype: str = "float32") -> int:
    """The rank ``compute_svd`` keeps for this weight: singular values only, nothing cached."""
    work = _DTYPES[svd_dtype]
    return _rank(torch.linalg.svdvals(weight.detach().to(work)), weight.shape, work)


def compute_svd(weight: torch.Tensor, svd_dtype: str = "float32", *, name: str = "the weight"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of a (Dout, Din) weight: U (Dout, r), σ (r,), Vᵀ (r, Din), in the weight's dtype.

    r is the numerical rank, min(Dout, Din) for any full-rank weight. Directions with σ ≈ 0 are
    dropped: their u_d lie outside Range(W), and a router that scaled them up would take the
    output out of W's column space.
    """
    if not torch.isfinite(weight).all():
        bad = int((~torch.isfinite(weight)).sum())
        raise ValueError(f"{name} holds {bad} NaN or Inf value(s); its SVD is undefined (is the checkpoint corrupt?)")
    work = _DTYPES[svd_dtype]
    u, s, vh = torch.linalg.svd(weight.detach().to(work), full_matrices=False)
    rank = _rank(s, weight.shape, work)
    if rank == 0:
        raise ValueError(f"{name} is all zeros: it has no singular directions to adapt")
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    return u.to(weight.dtype).contiguous(), s.to(weight.dtype).contiguous(), vh.to(weight.dtype).contiguous()


def cached_svd(
    weight: torch.Tensor, svd_dtype: str = "float32", cache_dir: str | Path | None = None, *, name: str = "the weight"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``compute_svd`` through the on-disk cache (no cache when ``cache_dir`` is None)."""
    if cache_dir is None:
        return compute_svd(weight, svd_dtype, name=name)
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{weight_digest(weight, svd_dtype)}.safetensors"
    if path.exists():
        try:
            f = load_file(str(path), device=str(weight.device))
            u, s, vh = f["u"], f["s"], f["vh"]
            if _reconstruction_error(weight, u, s, vh) <= _tolerance(weight.dtype):
                logger.debug("SVD cache hit %s", path.name)
                return u, s, vh
            logger.warning("SVD cache entry %s does not reconstruct its weight; recomputing", path)
        except Exception as err:  # a truncated or foreign file: recompute rather than fail
            logger.warning("unreadable SVD cache entry %s (%s); recomputing", path, err)
    u, s, vh = compute_svd(weight, svd_dtype, name=name)
    try:
        factors = {"u": u.cpu(), "s": s.cpu(), "vh": vh.cpu()}
        atomic_write(path, lambda tmp: save_file(factors, tmp))  # readers never see a half-written entry
    except OSError as err:
        logger.warning("could not write the SVD cache in %s (%s); continuing without it", cache_dir, err)
    return u, s, vh


class FactoredWeight(torch.Tensor):
    """The weight ``U diag(σ) Vᵀ`` that a layer keeps only as its SVD factors, without storing it.

    Its dtype, device and shape cost nothing; any operation on its values computes the matrix
    for that operation. That is what a MoORE layer gives as ``.weight``, because some models read
    it in every forward (T5: ``self.wo.weight.dtype``) and a stored copy would undo dropping W.
    ``transpose=True`` gives the (Din, Dout) layout of GPT-2's ``Conv1D``.
    """

    @staticmethod
    def __new__(cls, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, transpose: bool = False):
        shape = (vh.shape[1], u.shape[0]) if transpose else (u.shape[0], vh.shape[1])
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=vh.dtype, device=vh.device, requires_grad=False)

    def __init__(self, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, transpose: bool = False):
        self.factors = (u, s, vh)  # (Dout, r), (r,), (r, Din)
        self.transpose = transpose

    def dense(self) -> torch.Tensor:
        u, s, vh = (t.detach() for t in self.factors)
        work = torch.promote_types(vh.dtype, torch.float32)
        weight = ((u.to(work) * s.to(work)) @ vh.to(work)).to(vh.dtype)  # (Dout, Din)
        return weight.T if self.transpose else weight

    def __repr__(self) -> str:
        return f"FactoredWeight(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        def dense(t):
            return t.dense() if isinstance(t, FactoredWeight) else t

        return func(*tree_map(dense, args), **tree_map(dense, kwargs or {}))
