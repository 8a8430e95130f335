import pytest
import torch

from moore.householder import apply_householder, compact_wy, householder_matrix, pair_init


def sequential_product(reflections: torch.Tensor) -> torch.Tensor:
    dim = reflections.shape[1]
    h = torch.eye(dim, dtype=reflections.dtype)
    for r in reflections:
        h = h @ (torch.eye(dim, dtype=r.dtype) - 2 * torch.outer(r, r) / (r @ r))
    return h


@pytest.mark.parametrize("num_reflections, dim", [(1, 5), (2, 9), (8, 16), (7, 64)])
def test_compact_wy_equals_product_of_reflections(num_reflections, dim):
    reflections = torch.randn(num_reflections, dim, dtype=torch.float64)
    assert torch.allclose(householder_matrix(reflections), sequential_product(reflections), atol=1e-12)


@pytest.mark.parametrize("num_reflections", [2, 8, 16])
def test_h_is_orthogonal(num_reflections):
    h = householder_matrix(torch.randn(num_reflections, 32, dtype=torch.float64))
    eye = torch.eye(32, dtype=torch.float64)
    assert torch.allclose(h.T @ h, eye, atol=1e-12)
    assert torch.allclose(h @ h.T, eye, atol=1e-12)
    assert not torch.allclose(h, eye, atol=1e-3)  # a real rotation, not a trivial one


def test_apply_matches_matrix_and_transpose_inverts():
    reflections = torch.randn(6, 20, dtype=torch.float64)
    x = torch.randn(3, 4, 20, dtype=torch.float64)
    h = householder_matrix(reflections)
    assert torch.allclose(apply_householder(x, reflections), x @ h.T, atol=1e-12)
    back = apply_householder(apply_householder(x, reflections), reflections, transpose=True)
    assert torch.allclose(back, x, atol=1e-12)


def test_pair_init_is_identity_and_odd_is_refused():
    reflections = pair_init(8, 24)
    assert torch.equal(reflections[0], reflections[1]) and not torch.equal(reflections[0], reflections[2])
    assert torch.allclose(householder_matrix(reflections.double()), torch.eye(24, dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="even"):
        pair_init(3, 24)


def test_wy_parts_are_triangular_and_unit():
    y, t = compact_wy(torch.randn(5, 11))
    assert torch.allclose(y.norm(dim=1), torch.ones(5), atol=1e-6)
    assert torch.equal(t, torch.triu(t))
