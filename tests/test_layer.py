"""The MoORE layer on its own: the properties of METHOD.md §1."""

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from moore import MooreConfig, MooreLinear
from moore.householder import householder_matrix
from moore.routing import TaskRouting
from moore.svd import FactoredWeight


def make_layer(base, num_tasks=3, **kw):
    config = MooreConfig(num_tasks=num_tasks, **kw)
    routing = TaskRouting(num_tasks)
    return MooreLinear.from_base(base, config, routing), routing


def randomize(layer, scale=0.1):
    with torch.no_grad():
        for name in layer.adapter_parameter_names:
            p = getattr(layer, name)
            if p is not None:
                p.add_(torch.randn_like(p) * scale)


@pytest.mark.parametrize("din, dout", [(16, 16), (24, 10), (10, 24)])
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_identity_at_init(din, dout, kind):
    base = nn.Linear(din, dout) if kind == "linear" else Conv1D(dout, din)
    if kind == "conv1d":
        nn.init.normal_(base.bias)
    layer, routing = make_layer(base)
    x = torch.randn(2, 5, din)
    with routing.use(torch.tensor([0, 2])):
        assert torch.allclose(layer(x), base(x), atol=1e-5)
    assert layer.rank == min(din, dout)
    # W itself is dropped: nothing of its size is stored, and ``weight`` is computed from U, σ, Vᵀ
    assert {n for n, _ in layer.named_buffers()} == {"u", "s", "vh"}
    assert {n for n, _ in layer.named_parameters()} <= {*layer.adapter_parameter_names, "bias"}
    assert isinstance(layer.weight, FactoredWeight)


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_reads_as_the_frozen_weight_in_the_base_layers_layout(kind, dtype):
    base = (nn.Linear(12, 7) if kind == "linear" else Conv1D(7, 12)).to(dtype)
    layer, _ = make_layer(base)
    weight = layer.weight
    assert (weight.shape, weight.dtype, weight.device) == (base.weight.shape, dtype, base.weight.device)
    atol = 1e-5 if dtype == torch.float32 else 0.02
    assert torch.allclose(weight.float(), base.weight.float(), atol=atol)  # any op sees the values
    assert type(weight.float() + 0) is torch.Tensor and not weight.requires_grad
    randomize(layer)
    layer.merge()  # H folded into Vᵀ: weight is now W H, what the layer applies with its router at zero
    dense = layer.weight.float() if kind == "linear" else layer.weight.float().T  # (Dout, Din)
    expected = (layer.u.float() * layer.s.float()) @ layer.vh.float()
    assert torch.allclose(dense, expected, atol=atol)


def train_a_little(layer, routing, steps=20):
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=0.05)
    for _ in range(steps):
        x = torch.randn(4, 7, layer.in_features)
        with routing.use(torch.tensor([0, 1, 1, 0])):
            loss = (layer(x) - torch.randn(4, 7, layer.out_features)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("dout, din, rank", [(20, 12, 12), (12, 20, 6), (16, 16, 5)])
def test_experts_orthogonal_and_output_in_range_of_w_after_training(dout, din, rank):
    # tall (Range(W) is a proper subspace of R^Dout) and rank-deficient weights
    w = torch.randn(dout, rank) @ torch.randn(rank, din)
    base = nn.Linear(din, dout)
    base.weight.data.copy_(w)
    bias = base.bias.detach().clone()
    layer, routing = make_layer(base, num_tasks=2, task_dim=4, sample_dim=3, num_reflections=4)
    assert layer.rank == rank
    u0, vh0 = layer.u.clone(), layer.vh.clone()
    train_a_little(layer, routing)
    assert torch.equal(layer.u, u0) and torch.equal(layer.vh, vh0)  # experts never train
    assert torch.allclose(layer.u.T @ layer.u, torch.eye(rank), atol=1e-5)
    assert torch.allclose(layer.vh @ layer.vh.T, torch.eye(rank), atol=1e-5)
    h = householder_matrix(layer.reflections.detach().double())
    assert torch.allclose(h.T @ h, torch.eye(din, dtype=torch.float64), atol=1e-10)
    assert not torch.allclose(h, torch.eye(din, dtype=torch.float64), atol=1e-3)  # H did move
    # the output minus bias has no component outside W's column space
    basis = torch.linalg.qr(w)[0][:, :rank]
    with torch.no_grad(), routing.use(torch.tensor([1, 0])):
        y = layer(torch.randn(2, 9, din)) - bias
    residual = y - y @ basis @ basis.T
    assert y.abs().max() > 1e-2
    assert residual.abs().max() < 1e-4 * y.abs().max()


def test_trainable_parameter_formula():
    base = nn.Linear(30, 18)
    config = MooreConfig(num_tasks=5, task_dim=7, sample_dim=3, num_reflections=4)
    layer = MooreLinear.from_base(base, config, TaskRouting(5))
    count = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    r = 18
    assert count == 7 * 5 + 7 * r + 3 * r + 3 * 30 + 4 * 30 == config.trainable_parameters_per_layer(30, 18)


@pytest.mark.parametrize("kw, present, absent", [
    (dict(task_dim=0), ["sample_down", "sample_up", "reflections"], ["task_embedding", "task_proj"]),
    (dict(sample_dim=0), ["task_embedding", "reflections"], ["sample_down", "sample_up"]),
    (dict(num_reflections=0), ["task_embedding", "sample_down"], ["reflections"]),
])
def test_switching_parts_off(kw, present, absent):
    layer, routing = make_layer(nn.Linear(8, 8), **kw)
    randomize(layer)
    for name in present:
        assert getattr(layer, name) is not None
    for name in absent:
        assert getattr(layer, name) is None
    with routing.use(torch.tensor([1])):
        assert layer(torch.randn(1, 3, 8)).shape == (1, 3, 8)


def test_clamp_option_applies_relu_to_singular_values():
    torch.manual_seed(0)
    base = nn.Linear(8, 8, bias=False)
    layer, routing = make_layer(base, sample_dim=0, num_reflections=0, clamp_singular_values=True)
    with torch.no_grad():
        layer.task_proj.fill_(0)
        layer.task_proj[:, 0] = -100.0  # drives σ + g far below zero for a task whose t[0] > 0
        layer.task_embedding[0, 0] = 1.0
    x = torch.randn(1, 2, 8)
    with routing.use(torch.tensor([0])):
        assert torch.count_nonzero(layer(x)) == 0
    layer.clamp_singular_values = False
    with routing.use(torch.tensor([0])):
        assert layer(x).abs().max() > 1


def test_normalized_sample_router_gives_a_massive_activation_ordinary_offsets():
    torch.manual_seed(0)
    base = nn.Linear(12, 8)
    plain, routing = make_layer(base, task_dim=0, sample_dim=4, num_reflections=2)
    normed, _ = make_layer(base, task_dim=0, sample_dim=4, num_reflections=2, normalize_sample_router=True)
    randomize(plain)
    normed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 12)
    with routing.use(torch.tensor([0])):
        offsets = normed.expert_weights(x) - normed.s
        # a token 500× larger (an LLM's attention sink) gets the same offsets, unlike the paper's router
        assert torch.allclose(normed.expert_weights(500 * x) - normed.s, offsets, atol=1e-4)
        plain_offsets = plain.expert_weights(500 * x) - plain.s
        assert torch.allclose(plain_offsets, 500 * (plain.expert_weights(x) - plain.s), rtol=1e-3, atol=1e-4)
        # the rest of the layer is the same equation: y = U diag(σ + g) Vᵀ H x + b with g from x / rms(x)
        rms = x.pow(2).mean(-1, keepdim=True).sqrt()
        sample_offsets = (x / rms) @ normed.sample_down.T @ normed.sample_up.T
        assert torch.allclose(offsets, sample_offsets, atol=1e-5)
        assert not torch.allclose(normed(x), plain(x), atol=1e-4)
    fresh, routing = make_layer(base, normalize_sample_router=True)
    with routing.use(torch.tensor([1])):
        assert torch.allclose(fresh(x), base(x), atol=1e-5)  # still the identity at init
    assert "normalize_sample_router=True" in repr(fresh)


def test_router_parameters_stay_float32_in_bf16():
    base = nn.Linear(16, 16).to(torch.bfloat16)
    layer, routing = make_layer(base)
    assert layer.u.dtype == layer.s.dtype == layer.vh.dtype == torch.bfloat16
    for name in layer.adapter_parameter_names:
        if getattr(layer, name) is not None:  # added_task_embedding exists only once a task is added
            assert getattr(layer, name).dtype == torch.float32
    x = torch.randn(2, 3, 16, dtype=torch.bfloat16)
    with routing.use(torch.tensor([0, 1])):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.task_proj.grad.dtype == torch.float32 and layer.task_proj.grad.abs().sum() > 0


def test_merge_folds_h_and_unmerge_restores():
    layer, routing = make_layer(nn.Linear(16, 12))
    randomize(layer)
    x = torch.randn(3, 4, 16)
    layer.eval()
    with torch.no_grad(), routing.use(torch.tensor([0, 1, 2])):
        before = layer(x)
        vh = layer.vh.clone()
        layer.merge()
        merged = layer(x)
        layer.unmerge()
        after = layer(x)
    assert torch.allclose(merged, before, atol=1e-5)
    assert torch.allclose(after, before, atol=1e-5) and torch.allclose(layer.vh, vh, atol=1e-5)


def test_dense_weight_per_task_needs_sample_dim_zero():
    layer, routing = make_layer(nn.Linear(16, 12), sample_dim=0)
    randomize(layer)
    x = torch.randn(2, 16)
    for task in (0, 2, None):
        dense = layer.to_dense(task)
        assert isinstance(dense, nn.Linear)
        ids = None if task is None else torch.full((2,), task)
        with torch.no_grad(), routing.use(ids):
            assert torch.allclose(dense(x), layer(x), atol=1e-5)
    token_routed, _ = make_layer(nn.Linear(16, 12))
    with pytest.raises(ValueError, match="sample_dim"):
        token_routed.to_dense(0)


def test_nan_weight_is_refused():
    base = nn.Linear(8, 8)
    base.weight.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        make_layer(base)


@pytest.mark.parametrize("kw, match", [
    (dict(num_reflections=3), "even"),
    (dict(task_dim=0, sample_dim=0, num_reflections=0), "nothing"),
    (dict(num_tasks=0), "num_tasks"),
    (dict(sample_dim=-1), "sample_dim"),
    (dict(svd_dtype="bfloat16"), "svd_dtype"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        MooreConfig(**{"num_tasks": 2, **kw})


def test_config_json_round_trip(tmp_path):
    from moore import AdapterConfig

    config = MooreConfig(num_tasks=4, target_modules=["q_proj", "v_proj"], task_dim=16, num_reflections=2)
    config.save(tmp_path / "c.json")
    assert AdapterConfig.load(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match="unknown moore config keys"):
        AdapterConfig.from_dict({"method": "moore", "num_tasks": 2, "task_dimension": 3})
    with pytest.raises(ValueError, match="unknown method"):
        AdapterConfig.from_dict({"method": "nope"})
