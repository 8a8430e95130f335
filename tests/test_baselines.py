"""Every method behind the same interface: identity at init, gradients, counts, save/load, merge."""

import pytest
import torch

import moore
from helpers import assert_routing_matches_one_task_batches, build, inputs, output, perturb_adapter, tiny_t5

MOORE, LORA, HRA = moore.MooreConfig.method, moore.LoraConfig.method, moore.HraConfig.method
SMALL = {  # small sizes so the tiny models stay tiny; every config class the package exports
    moore.MooreConfig: dict(task_dim=8, sample_dim=4, num_reflections=4),
    moore.LoraConfig: dict(r=4), moore.HraConfig: dict(r=4),
    moore.LoraMoeConfig: dict(r=2, num_experts=3, balance_loss=True),
    moore.MixLoraConfig: dict(r=2, num_experts=4, top_k=2), moore.MosldConfig: dict(r=2, num_experts=3),
    moore.HydraLoraConfig: dict(r=2, num_experts=3), moore.MtlLoraConfig: dict(r=2, num_experts=3),
    moore.OmoeConfig: dict(r=2, num_experts=3), moore.FullFinetuneConfig: dict(),
}
METHOD_NAMES = sorted(moore.METHODS)


def config_for(method, **kw):
    cls = moore.METHODS[method]
    return cls(num_tasks=3, **{**SMALL[cls], **kw})


def adapt(method, model="llama", **kw):
    return moore.get_moore_model(build(model), config_for(method, **kw), svd_cache_dir=None)


def test_every_method_is_registered():
    assert set(METHOD_NAMES) == {cls.method for cls in SMALL}
    assert all(moore.METHODS[cls.method] is cls for cls in SMALL)


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("model_name", ["llama", "gpt2"])
def test_identity_at_init(method, model_name):
    base = build(model_name)
    batch = inputs(model_name)
    with torch.no_grad():
        expected = output(base(**batch))
    model = moore.get_moore_model(base, config_for(method), svd_cache_dir=None)
    with torch.no_grad():
        got = output(model(**batch, task_ids=[0, 1, 2, 0]))
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_a_model_that_reads_its_layers_weight_works_under_every_method(method):
    # T5 reads ``self.wo.weight.dtype`` in its forward: every adapter layer gives the frozen weight
    base = tiny_t5().eval()
    ids = torch.randint(3, 97, (3, 7), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "decoder_input_ids": ids[:, :4]}
    with torch.no_grad():
        expected = base(**batch).logits
    model = moore.get_moore_model(base, config_for(method), svd_cache_dir=None)
    task_ids = torch.tensor([0, 2, 1])
    with torch.no_grad():
        assert torch.allclose(model(**batch, task_ids=task_ids).logits, expected, atol=1e-4)
        perturb_adapter(model)
        mixed = model(**batch, task_ids=task_ids).logits
        alone = torch.cat([model(**{k: v[i:i + 1] for k, v in batch.items()}, task_ids=task_ids[i:i + 1]).logits
                           for i in range(3)])
    assert torch.allclose(mixed, alone, atol=1e-5)
    beams = dict(max_new_tokens=3, num_beams=2, do_sample=False)
    generated = model.generate(input_ids=ids[:2], task_ids=[0, 2], **beams)
    for i, task in enumerate([0, 2]):  # beam search on a mixed-task batch: each sample as if alone
        assert torch.equal(generated[i], model.generate(input_ids=ids[i:i + 1], task_ids=[task], **beams)[0])
    for _, layer in model.adapter_layers():
        if hasattr(layer, "base_layer"):  # the layers that keep the base layer read through to it
            assert layer.weight is layer.base_layer.weight and layer.bias is layer.base_layer.bias


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_disable_adapter_gives_the_base_model_and_restores_the_adapter_after(method):
    base = build("gpt2")  # Conv1D layers: the merged weights are stored transposed
    batch = inputs("gpt2")
    with torch.no_grad():
        expected = output(base(**batch))
    model = moore.get_moore_model(base, config_for(method), svd_cache_dir=None)
    if moore.METHODS[method].trains_base_model:
        with pytest.raises(ValueError, match="no adapter to disable"):
            with model.disable_adapter():
                pass
        return
    assert model.get_base_model() is base  # the wrapped model, adapter layers in place, as in PEFT
    perturb_adapter(model)
    model.merge_adapter()
    merged = {n: layer.is_merged for n, layer in model.adapter_layers()}
    task_ids = [0, 1, 2, 0]
    with torch.no_grad():
        adapted = output(model(**batch, task_ids=task_ids))
    assert not torch.allclose(adapted, expected, atol=1e-3)
    with model.disable_adapter():
        got = output(model(**batch, task_ids=task_ids))
        model.train()
        model(**batch, task_ids=task_ids)
        assert model.auxiliary_loss() is None  # no load-balancing term from a disabled router
        model.eval()
    assert not got.requires_grad  # the adapter took no part: nothing trainable is in the graph
    assert torch.allclose(got, expected, atol=1e-5)
    assert {n: layer.is_merged for n, layer in model.adapter_layers()} == merged
    with torch.no_grad():
        assert torch.allclose(output(model(**batch, task_ids=task_ids)), adapted, atol=1e-5)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_gradients_reach_exactly_the_methods_parameters(method):
    model = adapt(method)
    model.train()
    own = {"model." + k for k in model.adapter_state_dict()}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == own
    loss = output(model(**inputs("llama"), task_ids=[0, 1, 2, 0])).pow(2).mean()
    aux = model.auxiliary_loss()
    if aux is not None:
        loss = loss + aux
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == own
    # zero-init B blocks A's first gradient, so check that something of every layer moved
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in own)


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("model_name", ["llama", "minilm"])
def test_parameter_counts_match_table_2(method, model_name):
    model = moore.get_moore_model(build(model_name), config_for(method), svd_cache_dir=None)
    trainable, _ = model.get_nb_trainable_parameters()
    config = model.adapter_config
    if moore.METHODS[method].trains_base_model:
        assert trainable == model.num_base_parameters
        return
    expected = sum(
        config.trainable_parameters_per_layer(l.in_features, l.out_features, module_name=n, rank=getattr(l, "rank", None))
        for n, l in model.adapter_layers())
    assert trainable == expected
    if method != MOORE:  # MoORE's r is the numerical rank, which the count from shapes cannot know
        assert moore.count_trainable_parameters(build(model_name), config) == expected


def test_table_2_formulas_by_hand():
    d, dout, m, r, k = 40, 24, 3, 2, 5
    c = dict(num_tasks=k, r=r, num_experts=m)
    assert moore.LoraConfig(num_tasks=k, r=r).trainable_parameters_per_layer(d, dout) == r * (d + dout)
    assert moore.LoraMoeConfig(**c).trainable_parameters_per_layer(d, dout) == m * d + m * (dout + d) * r
    assert moore.MosldConfig(**c).trainable_parameters_per_layer(d, dout) == m * d + (dout + m * d) * r
    assert moore.HydraLoraConfig(**c).trainable_parameters_per_layer(d, dout) == m * d + (m * dout + d) * r
    assert moore.MtlLoraConfig(**c).trainable_parameters_per_layer(d, dout) == m * k + (m * dout + k * r + d) * r
    assert moore.OmoeConfig(**c).trainable_parameters_per_layer(d, dout) == m * d + m * (dout + d) * r
    assert moore.HraConfig(num_tasks=k, r=4).trainable_parameters_per_layer(d, dout) == 4 * d
    mix = moore.MixLoraConfig(**c)
    assert mix.trainable_parameters_per_layer(d, dout, module_name="model.layers.0.mlp.up_proj") == m * d + m * (dout + d) * r
    assert mix.trainable_parameters_per_layer(d, dout, module_name="model.layers.0.self_attn.q_proj") == r * (d + dout)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_save_load_round_trip(method, tmp_path):
    torch.manual_seed(0)
    model = adapt(method)
    perturb_adapter(model, scale=0.05)
    model.save_pretrained(tmp_path)
    batch = inputs("llama")
    model.eval()
    with torch.no_grad():
        expected = output(model(**batch, task_ids=[2, 1, 0, 2]))
    torch.manual_seed(0)
    loaded = moore.MooreModel.from_pretrained(build("llama"), tmp_path, svd_cache_dir=None)
    assert type(loaded.adapter_config) is type(model.adapter_config)
    with torch.no_grad():
        assert torch.allclose(output(loaded(**batch, task_ids=[2, 1, 0, 2])), expected, atol=1e-5)


@pytest.mark.parametrize("method", [moore.LoraConfig.method, moore.HraConfig.method, moore.MooreConfig.method])
def test_merge_fold_equivalence(method):
    model = adapt(method)
    perturb_adapter(model)
    batch = inputs("llama")
    with torch.no_grad():
        before = output(model(**batch, task_ids=[0, 1, 2, 0]))
        model.merge_adapter()
        merged = output(model(**batch, task_ids=[0, 1, 2, 0]))
        model.unmerge_adapter()
        after = output(model(**batch, task_ids=[0, 1, 2, 0]))
    assert torch.allclose(merged, before, atol=1e-4) and torch.allclose(after, before, atol=1e-4)


@pytest.mark.parametrize("method, kw", [(LORA, {}), (HRA, {}), (moore.MtlLoraConfig.method, {}),
                                        (MOORE, dict(sample_dim=0))])
def test_merge_per_task_equivalence(method, kw):
    model = adapt(method, **kw)
    perturb_adapter(model)
    batch = inputs("llama")
    with torch.no_grad():
        routed = output(model(**batch, task_ids=[1, 1, 1, 1]))
        plain = model.merge_and_unload(task_id=1)
        assert not any(isinstance(m, moore.AdapterLayer) for m in plain.modules())
        assert torch.allclose(output(plain(**batch)), routed, atol=1e-4)
        model.unmerge_adapter()


@pytest.mark.parametrize("method", [moore.LoraMoeConfig.method, moore.MixLoraConfig.method, moore.MosldConfig.method, moore.HydraLoraConfig.method, moore.OmoeConfig.method])
def test_token_routed_methods_have_no_dense_form(method):
    model = adapt(method)
    with pytest.raises(NotImplementedError, match="routes each token"):
        model.merge_and_unload(task_id=0)


def test_mtl_lora_routes_per_sample_like_one_task_batches():
    model = adapt(moore.MtlLoraConfig.method)
    perturb_adapter(model, scale=0.2)
    assert_routing_matches_one_task_batches(model, "llama")


def test_mixlora_puts_experts_on_the_ffn_and_lora_on_attention():
    model = adapt(moore.MixLoraConfig.method)
    kinds = {n.split(".")[-1]: type(l).__name__ for n, l in model.adapter_layers()}
    assert kinds["q_proj"] == kinds["o_proj"] == "LoraLinear"
    assert kinds["gate_proj"] == kinds["up_proj"] == kinds["down_proj"] == "MixLoraLinear"
    bert = adapt(moore.MixLoraConfig.method, model="minilm")
    kinds = {n: type(l).__name__ for n, l in bert.adapter_layers()}
    assert kinds["encoder.layer.0.attention.output.dense"] == "LoraLinear"
    assert kinds["encoder.layer.0.intermediate.dense"] == kinds["encoder.layer.0.output.dense"] == "MixLoraLinear"


def test_mixlora_top_k_gates_and_balance_loss():
    model = adapt(moore.MixLoraConfig.method)
    perturb_adapter(model)
    layer = next(l for n, l in model.adapter_layers() if n.endswith("up_proj"))
    layer.train()
    gates = layer.top_k_gates(torch.randn(5, 7, layer.in_features))
    assert torch.equal((gates > 0).sum(-1), torch.full((5, 7), 2))
    assert torch.allclose(gates.sum(-1), torch.ones(5, 7))
    assert layer.auxiliary_loss() >= 1.0 - 1e-5  # M·Σ f_m P_m is 1 when balanced, more otherwise
    model.train()
    model(**inputs("llama"), task_ids=[0, 1, 2, 0])
    assert model.auxiliary_loss() > 0


def test_loramoe_balance_loss_is_optional():
    on, off = adapt(moore.LoraMoeConfig.method), adapt(moore.LoraMoeConfig.method, balance_loss=False)
    for model in (on, off):
        model.train()
        model(**inputs("llama"), task_ids=[0, 1, 2, 0])
    assert on.auxiliary_loss() is not None and off.auxiliary_loss() is None


def test_omoe_expert_outputs_are_orthogonal():
    model = adapt(moore.OmoeConfig.method)
    perturb_adapter(model, scale=0.3)
    layer = next(l for _, l in model.adapter_layers())
    x = torch.randn(4, 6, layer.in_features)
    with torch.no_grad():  # the layer's coefficients applied to the raw expert outputs
        experts = layer.orthogonalisation(layer.expert_inputs(x)).double() @ layer.expert_outputs(x).double()
    gram = experts @ experts.transpose(-1, -2)  # (..., M, M)
    off_diagonal = gram - torch.diag_embed(torch.diagonal(gram, dim1=-2, dim2=-1))
    assert off_diagonal.abs().max() < 1e-4 * gram.abs().max()
    assert gram.abs().max() > 1e-6


def test_omoe_gram_form_equals_plain_gram_schmidt_with_its_gradient():
    """The layer orthogonalises through each token's Gram matrix; the plain form must give the same."""
    from moore.layers.omoe import gram_schmidt

    model = adapt(moore.OmoeConfig.method)
    perturb_adapter(model, scale=0.3)
    layer = next(l for _, l in model.adapter_layers())
    x = torch.randn(3, 5, layer.in_features)
    plain = (layer.softmax_router(layer.router, x).unsqueeze(-1) * gram_schmidt(layer.expert_outputs(x))).sum(-2)
    fast = layer.delta(x)
    assert torch.allclose(fast, plain, rtol=1e-4, atol=1e-5 * plain.abs().max().item())
    for p, q in zip(torch.autograd.grad(plain.square().sum(), (layer.router, layer.lora_A, layer.lora_B)),
                    torch.autograd.grad(fast.square().sum(), (layer.router, layer.lora_A, layer.lora_B))):
        assert torch.allclose(q, p, rtol=1e-3, atol=1e-4 * p.abs().max().item())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 training: GS itself stays in float32
        h = layer.expert_inputs(x)
        assert h.dtype == torch.bfloat16
        coefficients = layer.orthogonalisation(h)
    assert coefficients.dtype == torch.float32
    assert torch.allclose(coefficients, layer.orthogonalisation(h.float()))
    with torch.no_grad():  # zero B (the start): no update, and the gradient is defined
        layer.lora_B.zero_()
    out = layer.delta(x)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.isfinite(torch.autograd.grad(out.sum(), layer.lora_B)[0]).all()


@pytest.mark.parametrize("method", [moore.LoraConfig.method, moore.LoraMoeConfig.method, moore.HraConfig.method, moore.MooreConfig.method, moore.MtlLoraConfig.method])
def test_match_budget(method):
    base = build("llama")
    budget = 20000
    sized = moore.match_budget(base, config_for(method), budget)
    count = moore.count_trainable_parameters(base, sized)
    field = sized.size_field
    step = 2 if method == HRA else 1  # HRA's reflections come in pairs
    step_up = moore.count_trainable_parameters(base, type(sized)(**{**sized.__dict__, field: getattr(sized, field) + step}))
    assert abs(count - budget) <= abs(step_up - budget)  # no larger value is closer
    if getattr(sized, field) > 2:
        smaller = type(sized)(**{**sized.__dict__, field: getattr(sized, field) - step})
        assert abs(count - budget) <= abs(moore.count_trainable_parameters(base, smaller) - budget)


# --- cross-checks against PEFT ------------------------------------------------------------------
def test_lora_matches_peft():
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    torch.manual_seed(0)
    ours = adapt(moore.LoraConfig.method, target_modules=["q_proj", "v_proj", "down_proj"], r=4, lora_alpha=8)
    perturb_adapter(ours, scale=0.1)
    torch.manual_seed(0)
    theirs = get_peft_model(build("llama"), PeftLoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                           target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, layer in ours.adapter_layers():
            peft_layer = theirs.base_model.model.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
        batch = inputs("llama")
        assert torch.allclose(output(ours(**batch)), output(theirs(**batch)), atol=1e-5)


def test_hra_matches_peft():
    from peft import HRAConfig, get_peft_model

    torch.manual_seed(0)
    ours = adapt(moore.HraConfig.method, target_modules=["q_proj", "up_proj"], r=4)
    perturb_adapter(ours, scale=0.3)
    torch.manual_seed(0)
    theirs = get_peft_model(build("llama"), HRAConfig(r=4, target_modules=["q_proj", "up_proj"]))
    with torch.no_grad():
        for name, layer in ours.adapter_layers():
            theirs.base_model.model.get_submodule(name).hra_u["default"].copy_(layer.reflections.T)
        batch = inputs("llama")
        assert torch.allclose(output(ours(**batch)), output(theirs(**batch)), atol=1e-5)
