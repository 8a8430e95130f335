"""Commonsense tasks scored on their options' texts (answer_format: text): the conversion from
LLM-Adapters' label format, and accuracy / accuracy_norm from one scoring pass."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from moore.data.readers import llm_adapters_as_text, llm_adapters_example
from moore.runconfig import ModelSpec, TaskSpec
from moore.multitask import MultiTaskModel
from moore.layers.lora import LoraConfig
from training_fixtures import save_tiny_decoder

# made-up items in LLM-Adapters' format (no dataset text)
CHOICE = ("Please choose the correct answer to the question: Which tool fits a zorp?\n\nAnswer1: a blue "
          "flimmet Answer2: the quork Answer3: two plinths and a vell\n\nAnswer format: answer1/answer2/answer3")
TRUE_FALSE = "Please answer the following question with true or false, question: is a zorp a tool?\n\nAnswer format: true/false"


def test_label_format_becomes_question_and_option_texts():
    choice = llm_adapters_as_text(llm_adapters_example(CHOICE, "", "answer2"))
    assert choice == {"prompt": "Question: Which tool fits a zorp?\nAnswer:",
                      "options": ["a blue flimmet", "the quork", "two plinths and a vell"], "label": 1}
    boolean = llm_adapters_as_text(llm_adapters_example(TRUE_FALSE, "", "false"))
    assert boolean == {"prompt": "Question: is a zorp a tool?\nAnswer:", "options": ["yes", "no"], "label": 1}
    task = TaskSpec(name="arc-e", answer_format="text").build()
    assert task.metrics == ("accuracy_norm", "accuracy") and task.answer_prefix == " " and task.template is None
    with pytest.raises(ValueError, match="no text form"):
        TaskSpec(name="sst2", answer_format="text")


def test_accuracy_norm_divides_each_option_by_its_length(tmp_path):
    torch.manual_seed(0)
    spec = TaskSpec(name="arc-e", answer_format="text")
    task = spec.build()
    model = MultiTaskModel.build(ModelSpec(name_or_path=str(save_tiny_decoder(tmp_path / "m")), max_length=64),
                                 LoraConfig(num_tasks=1, r=2), [task], task_specs=[spec])
    examples = [llm_adapters_as_text(llm_adapters_example(CHOICE, "", f"answer{k}")) for k in (1, 2, 3)] * 2
    scores = model.strategy.option_logliks(task, examples, 0, 4, False)
    # by hand: the option's tokens' log-probabilities after the prompt, one sequence each
    tok = model.tokenizer
    for row, example in zip(scores, examples):
        for k, option in enumerate(example["options"]):
            prompt = tok(example["prompt"])["input_ids"]
            answer = tok(" " + option, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = model.adapted(input_ids=torch.tensor([prompt + answer]), task_ids=[0]).logits.log_softmax(-1)[0]
            expected = sum(logp[len(prompt) - 1 + j, a].item() for j, a in enumerate(answer))
            assert row[k] == pytest.approx(expected, rel=1e-5, abs=1e-5)
    result = model.evaluate(task, examples, batch_size=4)
    labels = np.array([e["label"] for e in examples])
    raw = np.array([np.argmax(r) for r in scores])
    normed = np.array([np.argmax([s / len((" " + o).encode()) for s, o in zip(r, e["options"])])
                       for r, e in zip(scores, examples)])
    assert result == {"accuracy": pytest.approx((raw == labels).mean()),
                      "accuracy_norm": pytest.approx((normed == labels).mean())}
    assert model.predict(task, examples, batch_size=4) == normed.tolist()  # the first metric's picks


REAL_DATA = Path(os.environ.get("MOORE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.mark.skipif(not (REAL_DATA / "csr" / "ARC-Easy").is_dir(), reason=f"no real CSR data at {REAL_DATA}")
@pytest.mark.parametrize("name", ["arc-c", "arc-e", "boolq", "obqa"])
def test_every_real_item_converts(name):
    task = TaskSpec(name=name, answer_format="text").build()
    for split in ("train", "test"):
        for example in task.load(REAL_DATA, split):
            assert example["prompt"].startswith("Question: ") and all(example["options"])
            assert 0 <= example["label"] < len(example["options"])


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_options_read_after_a_cached_prompt_score_as_whole_sequences(arch):
    """The key-value-cache path (prompts left-padded, read once) against one whole sequence per option."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, \
        Qwen2ForCausalLM

    import moore
    from helpers import minilm_path

    vocab = 30522
    base = {"gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4)),
            "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=48,
                                                          num_hidden_layers=2, num_attention_heads=4,
                                                          num_key_value_heads=2)),
            "llama": lambda: LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48,
                                                          num_hidden_layers=2, num_attention_heads=4,
                                                          num_key_value_heads=2))}[arch]
    torch.manual_seed(0)
    adapted = moore.get_moore_model(base().eval(), moore.MooreConfig(num_tasks=2, task_dim=4, sample_dim=2,
                                                                     num_reflections=2), svd_cache_dir=None)
    with torch.no_grad():  # routing and reflections away from the identity
        for tensor in adapted.adapter_state_dict().values():
            tensor.add_(torch.randn_like(tensor) * 0.3)
    spec = TaskSpec(name="arc-e", answer_format="text")
    task = spec.build()
    model = MultiTaskModel(adapted, AutoTokenizer.from_pretrained(minilm_path()), [task], task_specs=[spec],
                           model_spec=ModelSpec(name_or_path="tiny", kind="decoder", max_length=64)).eval()
    examples = [llm_adapters_as_text(llm_adapters_example(CHOICE, "", f"answer{k}")) for k in (1, 2, 3)]
    examples[1] = dict(examples[1], prompt="Question: a much longer question about the zorp and its tools?\nAnswer:")
    assert model.strategy.caches
    cached = model.strategy.option_logliks(task, examples, 1, 4, False)
    model.strategy.__dict__["caches"] = False  # the plain path: one sequence per option
    whole = model.strategy.option_logliks(task, examples, 1, 4, False)
    np.testing.assert_allclose(np.array(cached), np.array(whole), rtol=1e-5, atol=1e-4)


CHAT_TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} [end]{% endfor %}"
                 "{% if add_generation_prompt %}[bot] {% endif %}")


def test_chat_format_puts_the_prompt_in_the_users_turn(tmp_path):
    """chat: true (registered or file tasks) wraps the prompt in the tokenizer's chat template; the
    answer follows the assistant's opening and carries the loss; a tokenizer without a template is refused."""
    torch.manual_seed(0)
    spec = TaskSpec(name="sst2", chat=True)
    task = spec.build()
    assert task.chat and not TaskSpec(name="sst2").build().chat
    model = MultiTaskModel.build(ModelSpec(name_or_path=str(save_tiny_decoder(tmp_path / "m")), max_length=64),
                                 LoraConfig(num_tasks=1, r=2), [task], task_specs=[spec])
    example = {"text": "a zorp is lovely", "label": 1}
    with pytest.raises(ValueError, match="no chat template"):
        model.strategy.prompt_ids(task, example)
    model.tokenizer.chat_template = CHAT_TEMPLATE
    turn = "[user] " + task.template.format(**example).strip() + " [end][bot] "
    expected = model.tokenizer(turn, add_special_tokens=False)["input_ids"]
    assert model.strategy.prompt_ids(task, example) == expected
    ids, labels = model.strategy.sequence(task, example)
    answer = model.tokenizer("positive", add_special_tokens=False)["input_ids"] + [model.tokenizer.eos_token_id]
    assert ids == expected + answer and labels == [-100] * len(expected) + answer
    scores = model.evaluate(task, [example, {**example, "label": 0}], batch_size=2)
    assert set(scores) == {"accuracy"}
    spec = TaskSpec(name="sst2", chat=True, system_prompt="Be brief.")
    with_system = replace(task, system_prompt=spec.build().system_prompt)
    system = model.tokenizer("[system] Be brief. [end]" + turn, add_special_tokens=False)["input_ids"]
    assert model.strategy.prompt_ids(with_system, example) == system
    with pytest.raises(ValueError, match="chat: true only"):
        TaskSpec(name="sst2", system_prompt="Be brief.")
    custom = TaskSpec(name="mine", files={"test": "x.jsonl"}, kind="classification", metrics=["accuracy"],
                      label_names=["no", "yes"], template="{text}?", chat=True).build()
    assert custom.chat
