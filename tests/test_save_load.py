"""save_pretrained / from_pretrained, the base-model fingerprint, and the SVD cache."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import moore
from helpers import build, inputs, perturb_adapter, tiny_llama
from moore.errors import AdapterFileError

CONFIG = dict(num_tasks=3, task_dim=8, sample_dim=4, num_reflections=4)


def test_round_trip_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    base = tiny_llama().eval()
    base.save_pretrained(tmp_path / "base")
    model = moore.get_moore_model(base, moore.MooreConfig(**CONFIG), svd_cache_dir=None)
    perturb_adapter(model)
    model.save_pretrained(tmp_path / "adapter")
    batch = inputs("llama")
    task_ids = torch.tensor([2, 0, 1, 2])
    with torch.no_grad():
        torch.save({"batch": batch, "task_ids": task_ids, "logits": model(**batch, task_ids=task_ids).logits},
                   tmp_path / "expected.pt")

    script = textwrap.dedent(f"""
        import torch, moore
        from transformers import AutoModelForCausalLM
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        base = AutoModelForCausalLM.from_pretrained({str(tmp_path / "base")!r})
        model = moore.MooreModel.from_pretrained(base, {str(tmp_path / "adapter")!r}, svd_cache_dir=None)
        assert not any(p.requires_grad for p in model.parameters()) and not model.training
        with torch.no_grad():
            logits = model(**expected["batch"], task_ids=expected["task_ids"]).logits
        diff = (logits - expected["logits"]).abs().max().item()
        print("max abs diff", diff)
        assert diff < 1e-5, diff
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max abs diff" in result.stdout


def test_saved_files_hold_no_pickle_and_only_the_adapter(tmp_path):
    model = moore.get_moore_model(build("gpt2"), moore.MooreConfig(**CONFIG), svd_cache_dir=None)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "base_fingerprint.safetensors"]
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["config"] == {"method": "moore", **{k: v for k, v in moore.MooreConfig(**CONFIG).to_dict().items()
                                                    if k != "method"}}
    assert meta["base_model"]["class"] == "GPT2LMHeadModel"
    weights = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert set(weights) == set(model.adapter_state_dict())
    assert all(t.dtype == torch.float32 for t in weights.values())
    assert not any(k.endswith((".u", ".s", ".vh")) for k in weights)  # frozen factors are not saved


def test_trainable_reload_and_modules_to_save(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=40, num_labels=3)
    torch.manual_seed(0)
    base = BertForSequenceClassification(cfg).eval()
    base.save_pretrained(tmp_path / "base")
    config = moore.MooreConfig(**CONFIG, modules_to_save=["classifier"])
    model = moore.get_moore_model(base, config, svd_cache_dir=None)
    assert not any(n.startswith("classifier") for n, _ in model.adapter_layers())  # heads are not MoE-ized
    assert model.model.classifier.weight.requires_grad
    perturb_adapter(model)
    model.save_pretrained(tmp_path / "adapter")
    batch = {"input_ids": torch.randint(0, 100, (2, 5))}
    with torch.no_grad():
        expected = model(**batch, task_ids=[1, 2]).logits
    torch.manual_seed(1)  # a fresh classifier head: the saved one must replace it
    fresh = BertForSequenceClassification.from_pretrained(tmp_path / "base").eval()
    loaded = moore.MooreModel.from_pretrained(fresh, tmp_path / "adapter", is_trainable=True, svd_cache_dir=None)
    with torch.no_grad():
        assert torch.allclose(loaded(**batch, task_ids=[1, 2]).logits, expected, atol=1e-5)
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable == {"model." + k for k in loaded.adapter_state_dict()}
    assert "model.classifier.weight" in trainable


def test_refuses_another_base_model(tmp_path):
    model = moore.get_moore_model(build("llama"), moore.MooreConfig(**CONFIG), svd_cache_dir=None)
    model.save_pretrained(tmp_path)
    torch.manual_seed(99)
    with pytest.raises(ValueError, match="saved for another base model.*values differ"):
        moore.MooreModel.from_pretrained(build("llama"), tmp_path, svd_cache_dir=None)
    with pytest.raises(ValueError, match="saved for another base model"):
        moore.MooreModel.from_pretrained(build("qwen2"), tmp_path, svd_cache_dir=None)
    with pytest.raises(AdapterFileError, match="not a saved moore adapter"):
        moore.MooreModel.from_pretrained(build("llama"), tmp_path / "nowhere")


def test_same_base_in_bf16_is_accepted(tmp_path):
    torch.manual_seed(0)
    base = build("llama")
    base.save_pretrained(tmp_path / "base")
    moore.get_moore_model(base, moore.MooreConfig(**CONFIG), svd_cache_dir=None).save_pretrained(tmp_path / "a")
    from transformers import AutoModelForCausalLM

    bf16 = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.bfloat16)
    loaded = moore.MooreModel.from_pretrained(bf16, tmp_path / "a", svd_cache_dir=None)
    layer = next(layer for _, layer in loaded.adapter_layers())
    assert layer.u.dtype == torch.bfloat16 and layer.task_proj.dtype == torch.float32


def test_corrupt_adapter_weights_are_refused(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = moore.get_moore_model(build("llama"), moore.MooreConfig(**CONFIG), svd_cache_dir=None)
    model.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "adapter_model.safetensors"))
    key = next(iter(weights))
    weights[key][0] = float("nan")
    save_file(weights, str(tmp_path / "adapter_model.safetensors"))
    torch.manual_seed(0)  # the same base model
    with pytest.raises(ValueError, match="NaN"):
        moore.MooreModel.from_pretrained(build("llama"), tmp_path, svd_cache_dir=None)


def test_svd_cache_skips_the_second_svd(tmp_path, monkeypatch):
    import moore.svd

    calls = []
    real = moore.svd.compute_svd
    monkeypatch.setattr(moore.svd, "compute_svd", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    base = build("llama")
    state = {k: v.clone() for k, v in base.state_dict().items()}
    first = moore.get_moore_model(base, moore.MooreConfig(**CONFIG), svd_cache_dir=tmp_path)
    n_layers = len(list(first.adapter_layers()))
    assert len(calls) == n_layers and len(list(tmp_path.glob("*.safetensors"))) == n_layers
    again = build("llama")
    again.load_state_dict(state)
    second = moore.get_moore_model(again, moore.MooreConfig(**CONFIG), svd_cache_dir=tmp_path)
    assert len(calls) == n_layers  # every factorisation came from the cache
    for (_, a), (_, b) in zip(first.adapter_layers(), second.adapter_layers()):
        assert torch.equal(a.u, b.u) and torch.equal(a.s, b.s) and torch.equal(a.vh, b.vh)
    # a corrupt entry is detected and recomputed, not trusted
    victim = sorted(tmp_path.glob("*.safetensors"))[0]
    victim.write_bytes(b"garbage")
    third = build("llama")
    third.load_state_dict(state)
    moore.get_moore_model(third, moore.MooreConfig(**CONFIG), svd_cache_dir=tmp_path)
    assert len(calls) == n_layers + 1


def test_fingerprint_samples_stay_inside_large_tensors():
    from moore.fingerprint import model_fingerprint

    big = torch.nn.Embedding(49152, 576)  # SmolLM2's embedding: 28,311,552 values, past float32's exact integers
    sample = model_fingerprint(big)["weight"]
    assert sample[-1] == big.weight.reshape(-1)[-1] and sample[0] == big.weight.reshape(-1)[0]
