"""MoE-ization of whole transformers models: routing, training, merging, errors."""

import pytest
import torch

import moore
from helpers import DECODERS, assert_routing_matches_one_task_batches, build, inputs, output, perturb_adapter

CONFIG = dict(num_tasks=3, task_dim=8, sample_dim=4, num_reflections=4)


def moe(name, dtype=torch.float32, **kw):
    return moore.get_moore_model(build(name, dtype), moore.MooreConfig(**{**CONFIG, **kw}), svd_cache_dir=None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_identity_at_init(model_name, dtype):
    base = build(model_name, dtype)
    batch = inputs(model_name)
    with torch.no_grad():
        expected = output(base(**batch)).float()
    model = moore.get_moore_model(base, moore.MooreConfig(**CONFIG), svd_cache_dir=None)
    with torch.no_grad():
        got = output(model(**batch, task_ids=torch.tensor([0, 1, 2, 1]))).float()
        unseen = output(model(**batch)).float()
    # fp32: the SVD reconstructs W to rounding; bf16: U, σ, V are stored in bf16
    atol = 1e-4 if dtype == torch.float32 else 0.05 * expected.abs().max().item()
    assert torch.allclose(got, expected, atol=atol)
    assert torch.allclose(unseen, expected, atol=atol)


def test_all_linear_targets_every_projection_but_the_head(model_name):
    model = moe(model_name)
    names = [n for n, _ in model.adapter_layers()]
    suffixes = {n.split(".")[-1] for n in names}
    expected = {
        "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
        "qwen2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
        "gpt2": {"c_attn", "c_proj", "c_fc"},
        "minilm": {"query", "key", "value", "dense"},
    }[model_name]
    assert suffixes == expected
    assert not any("lm_head" in n for n in names)


def test_trainable_parameters_match_the_formula(model_name, capsys):
    model = moe(model_name)
    config = model.adapter_config
    expected = sum(config.trainable_parameters_per_layer(l.in_features, l.out_features, rank=l.rank) for _, l in model.adapter_layers())
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == expected
    assert total == model.num_base_parameters + expected
    model.print_trainable_parameters()
    assert f"trainable params: {expected:,d}" in capsys.readouterr().out


def test_only_adapter_parameters_change_in_training(model_name):
    model = moe(model_name)
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    adapter = {k: v.detach().clone() for k, v in model.adapter_state_dict().items()}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"model." + k for k in adapter}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        out = model(**inputs(model_name, seed=step), task_ids=torch.tensor([0, 1, 2, 0]))
        loss = output(out).float().pow(2).mean()
        if getattr(out, "pooler_output", None) is not None:  # BERT's pooler is adapted too
            loss = loss + out.pooler_output.float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    changed = [k for k, v in model.adapter_state_dict().items() if not torch.equal(v, adapter[k])]
    assert len(changed) == len(adapter)  # every router and reflection tensor got a gradient


def test_per_sample_routing_equals_one_task_batches(model_name):
    model = moe(model_name)
    perturb_adapter(model)
    assert_routing_matches_one_task_batches(model, model_name)


def test_unseen_task_equals_mean_task_embedding(model_name):
    model = moe(model_name)
    perturb_adapter(model)
    batch = inputs(model_name)
    with torch.no_grad():
        unseen = output(model(**batch))
        for _, layer in model.adapter_layers():
            layer.task_embedding[0] = layer.task_embedding.mean(0)
        explicit = output(model(**batch, task_ids=torch.zeros(4, dtype=torch.long)))
    assert torch.allclose(unseen, explicit, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "gpt2", "minilm"])
def test_gradient_checkpointing_keeps_task_ids(name):
    batch = inputs(name)
    task_ids = torch.tensor([0, 2, 1, 2])

    def grads(checkpointing):
        torch.manual_seed(0)
        model = moe(name)
        perturb_adapter(model)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        output(model(**batch, task_ids=task_ids)).float().pow(2).mean().backward()
        return {k: v.grad.clone() for k, v in model.adapter_state_dict().items() if v.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for key in plain:
        assert torch.allclose(plain[key], checkpointed[key], atol=1e-6, rtol=1e-4), key
    assert any(v.abs().sum() > 0 for k, v in plain.items() if k.endswith("task_embedding"))


def test_gradient_checkpointing_recompute_sees_its_own_forward_task_ids():
    """Two forwards before one backward: each recomputation must use its own forward's ids."""
    batch = inputs("llama")
    ids_a, ids_b = torch.tensor([0, 0, 1, 1]), torch.tensor([2, 2, 2, 2])

    def grads(checkpointing):
        torch.manual_seed(0)
        model = moe("llama")
        perturb_adapter(model)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        loss_a = output(model(**batch, task_ids=ids_a)).pow(2).mean()
        loss_b = output(model(**batch, task_ids=ids_b)).abs().mean()
        (loss_a + loss_b).backward()
        return {k: v.grad.clone() for k, v in model.adapter_state_dict().items() if v.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for key in plain:
        assert torch.allclose(plain[key], checkpointed[key], atol=1e-6, rtol=1e-4), key


@pytest.mark.parametrize("name", DECODERS)
def test_generate_routes_each_sample_beam_search_included(name):
    model = moe(name)
    perturb_adapter(model, scale=0.2)
    batch = inputs(name, batch=3, length=5)
    task_ids = torch.tensor([2, 0, 1])
    gen = dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False, pad_token_id=0)
    together = model.generate(**batch, task_ids=task_ids, **gen)
    for i in range(3):
        alone = model.generate(**{k: v[i : i + 1] for k, v in batch.items()}, task_ids=task_ids[i : i + 1], **gen)
        assert torch.equal(together[2 * i : 2 * i + 2], alone)
    greedy = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    a = model.generate(**batch, task_ids=torch.tensor([0, 0, 0]), **greedy)
    b = model.generate(**batch, task_ids=torch.tensor([1, 1, 1]), **greedy)
    assert not torch.equal(a, b)  # the task ids do reach generation


@pytest.mark.parametrize("task_ids, error, match", [
    (torch.tensor([0, 1, 3, 0]), ValueError, "task id 3 is out of range"),
    (torch.tensor([0, -1, 0, 0]), ValueError, "task id -1 is out of range"),
    (torch.tensor([0, 1]), ValueError, "task_ids has 2 entries but the batch has 4"),
    (torch.tensor([[0, 1, 2, 0]]), ValueError, "1-D"),
    (torch.tensor([0.0, 1.0, 2.0, 0.0]), TypeError, "integers"),
])
def test_bad_task_ids_are_refused(task_ids, error, match):
    model = moe("llama")
    with pytest.raises(error, match=match):
        model(**inputs("llama"), task_ids=task_ids)


def test_task_ids_may_be_a_list_or_one_int():
    model = moe("llama")
    perturb_adapter(model)
    batch = inputs("llama")
    with torch.no_grad():
        a = output(model(**batch, task_ids=[1, 1, 1, 1]))
        b = output(model(**batch, task_ids=1))
        c = output(model(**batch, task_ids=torch.ones(4, dtype=torch.long)))
    assert torch.equal(a, c) and torch.equal(b, c)


@pytest.mark.parametrize("target, match", [
    (["nonexistent_proj"], "matches no linear layer"),
    (r".*\.mlp$", "not linear layers"),
    (["self_attn"], "not linear layers"),
])
def test_bad_targets_are_refused(target, match):
    with pytest.raises(ValueError, match=match):
        moore.get_moore_model(build("llama"), moore.MooreConfig(num_tasks=2, target_modules=target), svd_cache_dir=None)


def test_target_forms():
    suffix = moe("llama", target_modules=["q_proj", "v_proj"])
    assert {n.split(".")[-1] for n, _ in suffix.adapter_layers()} == {"q_proj", "v_proj"}
    regex = moe("llama", target_modules=r"model\.layers\.0\..*_proj")
    assert all(n.startswith("model.layers.0.") for n, _ in regex.adapter_layers())
    assert len(list(regex.adapter_layers())) == 7
    excluded = moe("llama", exclude_modules=["down_proj"])
    assert not any(n.endswith("down_proj") for n, _ in excluded.adapter_layers())


def test_merge_folds_reflections_and_unmerge_restores(model_name):
    model = moe(model_name)
    perturb_adapter(model)
    batch, task_ids = inputs(model_name), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        before = output(model(**batch, task_ids=task_ids))
        assert model.merge_adapter() is None
        merged = output(model(**batch, task_ids=task_ids))
        model.unmerge_adapter()
        after = output(model(**batch, task_ids=task_ids))
    assert torch.allclose(merged, before, atol=1e-4)
    assert torch.allclose(after, before, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_per_task_gives_a_plain_model(model_name, dtype):
    model = moe(model_name, dtype=dtype, sample_dim=0)
    perturb_adapter(model)
    base_type = type(model.model)
    batch = inputs(model_name)
    tol = 1e-4 if dtype == torch.float32 else 0.03
    with torch.no_grad():
        routed = {t: output(model(**batch, task_ids=torch.full((4,), t))).float() for t in (0, 2)}
        unseen = output(model(**batch)).float()
        for task in (0, 2, None):
            plain = model.merge_and_unload(task_id=task)
            assert type(plain) is base_type
            assert not any(isinstance(m, moore.AdapterLayer) for m in plain.modules())
            expected = unseen if task is None else routed[task]
            got = output(plain(**batch)).float()
            assert torch.allclose(got, expected, atol=tol * max(1.0, expected.abs().max().item())), task
        with pytest.raises(ValueError, match="merged for task"):
            model(**batch, task_ids=torch.zeros(4, dtype=torch.long))
        model.unmerge_adapter()
        assert any(isinstance(m, moore.AdapterLayer) for m in model.model.modules())
        again = output(model(**batch, task_ids=torch.full((4,), 2))).float()
    assert torch.allclose(again, routed[2], atol=1e-6)
    model.train()
    output(model(**batch, task_ids=torch.full((4,), 2))).float().mean().backward()  # unmerge restores training


def test_merge_per_task_refuses_token_routing():
    model = moe("llama")
    with pytest.raises(ValueError, match="sample_dim"):
        model.merge_and_unload(task_id=0)
    assert any(isinstance(m, moore.AdapterLayer) for m in model.model.modules())  # nothing half-merged
    with pytest.raises(ValueError, match="out of range"):
        moe("llama", sample_dim=0).merge_and_unload(task_id=7)
