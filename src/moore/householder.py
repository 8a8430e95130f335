"""Products of Householder reflections in compact WY form.

H = H_1 H_2 ... H_L with H_l = I - 2 y_l y_lᵀ (y_l = r_l / ‖r_l‖) equals

    H = I - Yᵀ T Y,   Y = [y_1; ...; y_L] ∈ R^{L×D},   T⁻¹ = triu(Y Yᵀ, 1) + I/2

(Schreiber & Van Loan's compact WY form, with the inverse of T written in closed form). Applying H
to a batch of vectors costs two thin matmuls, O(L·D) per vector, with no Python loop over the
reflections and no D×D matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-12


def pair_init(num_reflections: int, dim: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """HRA's symmetric init: reflections come in equal pairs, so H = I. Returns (L, D) float32."""
    if num_reflections % 2:
        raise ValueError(
            f"num_reflections must be even (got {num_reflections}): a product of an odd number of "
            "reflections has determinant -1, so it can never be the identity, at init or after training"
        )
    half = torch.empty(num_reflections // 2, dim)
    torch.nn.init.kaiming_uniform_(half, a=5**0.5, generator=generator)
    return half.repeat_interleave(2, dim=0)


def compact_wy(reflections: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, D) reflection vectors -> (Y (L, D) unit rows, T (L, L) upper triangular), H = I - Yᵀ T Y."""
    y = reflections / reflections.norm(dim=1, keepdim=True).clamp_min(_EPS)
    gram = y @ y.T  # (L, L)
    eye = torch.eye(y.shape[0], dtype=y.dtype, device=y.device)
    t_inv = torch.triu(gram, diagonal=1) + 0.5 * eye
    t = torch.linalg.solve_triangular(t_inv, eye, upper=True)
    return y, t


def apply_householder(x: torch.Tensor, reflections: torch.Tensor, *, transpose: bool = False) -> torch.Tensor:
    """H x (or Hᵀ x) for x of shape (..., D), computed in x's dtype."""
    y, t = compact_wy(reflections.to(torch.promote_types(reflections.dtype, torch.float32)))
    if transpose:
        t = t.T
    coeffs = F.linear(F.linear(x, y.to(x.dtype)), t.to(x.dtype))  # (..., L)
    return x - F.linear(coeffs, y.T.to(x.dtype))


def fold_into_rows(rows: torch.Tensor, reflections: torch.Tensor, *, inverse: bool = False) -> torch.Tensor:
    """M H (or M Hᵀ = M H⁻¹ with ``inverse``) for a (R, D) matrix M, in float32 or better: how
    merging folds H into Vᵀ and unmerging takes it out again."""
    work = torch.promote_types(rows.dtype, torch.float32)
    # a row m of M becomes (H m)ᵀ = mᵀ Hᵀ under apply_householder; M H takes the transposed form
    return apply_householder(rows.to(work), reflections.to(work), transpose=not inverse).to(rows.dtype)


def householder_matrix(reflections: torch.Tensor) -> torch.Tensor:
    """The dense D×D matrix H (for tests and inspection only; never used in a forward pass)."""
    dim = reflections.shape[1]
    eye = torch.eye(dim, dtype=reflections.dtype, device=reflections.device)
    return apply_householder(eye, reflections.to(eye.dtype)).T  # rows of H·I are (H e_i)ᵀ
