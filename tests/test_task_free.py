"""Beyond task ids: routing a sample as a mixture of tasks, inferring it from the input
(``task_ids="infer"``), and adding a task to a trained adapter without disturbing the others."""

from __future__ import annotations

import math

import pytest
import torch

import moore
from helpers import build, output, perturb_adapter
from moore.task_inference import TaskClassifier, input_features

CONFIG = dict(num_tasks=3, task_dim=8, sample_dim=4, num_reflections=4)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    model = moore.get_moore_model(build("llama"), moore.MooreConfig(**CONFIG), svd_cache_dir=None)
    perturb_adapter(model, scale=0.3)
    return model.eval()


def _task_inputs(task: int, batch: int = 4, seed: int = 0) -> dict:
    """Each task draws its tokens from its own part of the vocabulary: a separable toy."""
    g = torch.Generator().manual_seed(seed + 17 * task)
    ids = torch.randint(5 + 30 * task, 30 + 30 * task, (batch, 7), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.no_grad()
def test_one_hot_task_mixtures_route_exactly_as_task_ids():
    model = _model()
    batch = _task_inputs(0, batch=6)
    ids = torch.tensor([0, 2, 1, 1, 0, 2])
    one_hot = torch.nn.functional.one_hot(ids, 3).float()
    assert torch.equal(output(model(**batch, task_ids=one_hot)), output(model(**batch, task_ids=ids)))
    halves = torch.full((6, 3), 0.0)
    halves[:, 0] = halves[:, 1] = 0.5  # a mixture lies between its tasks, not on either
    mixed = output(model(**batch, task_ids=halves))
    assert not torch.allclose(mixed, output(model(**batch, task_ids=torch.zeros(6, dtype=torch.long))))
    uniform = torch.full((6, 3), 1 / 3)  # the uniform mixture is the unseen-task (mean) embedding
    torch.testing.assert_close(output(model(**batch, task_ids=uniform)), output(model(**batch)), rtol=1e-5,
                               atol=1e-5)
    for bad, message in ((torch.full((6, 2), 0.5), "num_tasks=3"), (torch.full((6, 3), 0.5), "sum to 1"),
                         (-one_hot + 2 * one_hot.roll(1, 1), "non-negative")):
        with pytest.raises(ValueError, match=message):
            model(**batch, task_ids=bad)


def _fit(model) -> float:
    batches = [(_task_inputs(k, batch=16, seed=s), torch.full((16,), k)) for k in range(3) for s in range(3)]
    return model.fit_task_classifier(batches)


@torch.no_grad()
def test_inferred_routing_with_a_one_hot_classifier_equals_true_ids(tmp_path):
    model = _model()
    with pytest.raises(ValueError, match="needs a task classifier"):
        model(**_task_inputs(0), task_ids="infer")
    assert _fit(model) == 1.0  # the toy tasks are separable
    model.task_classifier.linear.weight.mul_(1e4)  # saturate the softmax: exact one-hot probabilities
    model.task_classifier.linear.bias.mul_(1e4)
    batch = {k: torch.cat([_task_inputs(t, batch=2, seed=9)[k] for t in (2, 0, 1)]) for k in ("input_ids",
                                                                                            "attention_mask")}
    truth = torch.tensor([2, 2, 0, 0, 1, 1])
    probs = model.infer_task_weights(**batch)
    assert torch.equal(probs, torch.nn.functional.one_hot(truth, 3).float())
    assert torch.equal(output(model(**batch, task_ids="infer")), output(model(**batch, task_ids=truth)))
    # generate follows the inferred mixture through the beams, as it follows ids
    prompt = {k: v[:, :4] for k, v in batch.items()}
    assert torch.equal(model.generate(**prompt, task_ids="infer", max_new_tokens=3, num_beams=2, do_sample=False),
                       model.generate(**prompt, task_ids=truth, max_new_tokens=3, num_beams=2, do_sample=False))
    # saved with the adapter, and reloaded
    model.save_pretrained(tmp_path / "adapter")
    reloaded = moore.MooreModel.from_pretrained(_base_of(model), tmp_path / "adapter")
    assert reloaded.task_classifier is not None
    assert torch.equal(output(reloaded(**batch, task_ids="infer")), output(model(**batch, task_ids="infer")))


def _base_of(model):
    """A fresh copy of the base model the adapter was built on (same seed, same random init)."""
    torch.manual_seed(0)
    return build("llama")


def test_a_classifier_learns_from_pooled_input_embeddings():
    """The features: mean input embedding, log length, share of second-segment tokens."""
    features = torch.cat([torch.randn(50, 6) + 3 * k for k in range(3)])
    labels = torch.arange(3).repeat_interleave(50)
    classifier = TaskClassifier.fit(features, labels, 3)
    assert (classifier(features).argmax(-1) == labels).float().mean() > 0.95
    with pytest.raises(ValueError, match="no examples of task ids \\[2\\]"):
        TaskClassifier.fit(features[:100], labels[:100], 3)
    model = _model()
    ids = torch.tensor([[5, 6, 7, 0]])
    pooled = input_features(model.model, ids, torch.tensor([[1, 1, 1, 0]]), token_type_ids=torch.tensor([[0, 1, 1, 1]]))
    torch.testing.assert_close(pooled[0, :-2], model.model.get_input_embeddings().weight[[5, 6, 7]].mean(0))
    torch.testing.assert_close(pooled[0, -2:], torch.tensor([math.log(3), 2 / 3]))


def test_mixtures_are_refused_by_a_method_without_a_task_table():
    model = moore.get_moore_model(build("llama"), moore.MtlLoraConfig(num_tasks=3, r=4, num_experts=2))
    with pytest.raises(ValueError, match="routes by task id only"):
        model(**_task_inputs(0), task_ids=torch.full((4, 3), 1 / 3))


def test_adding_a_task_leaves_the_others_bit_identical(tmp_path):
    model = _model()
    batch = _task_inputs(1, batch=6)
    old_ids = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        before = output(model(**batch, task_ids=old_ids))
        unseen = output(model(**batch))
    new = model.add_task()
    assert new == 3 and model.adapter_config.num_tasks == 4 and model.adapter_config.added_tasks == 1
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("added_task_embedding") for n in trainable)
    with torch.no_grad():  # the new task starts as the unseen task
        torch.testing.assert_close(output(model(**batch, task_ids=torch.full((6,), new))), unseen)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05, weight_decay=0.1)
    model.train()
    for step in range(3):
        loss = model(**batch, labels=batch["input_ids"], task_ids=torch.full((6,), new)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        assert torch.equal(output(model(**batch, task_ids=old_ids)), before)  # the old tasks: bit for bit
        assert torch.equal(output(model(**batch)), unseen)  # the unseen-task routing too
        trained = output(model(**batch, task_ids=torch.full((6,), new)))
        assert not torch.allclose(trained, unseen)  # and the new task did learn
    model.save_pretrained(tmp_path / "adapter")
    reloaded = moore.MooreModel.from_pretrained(_base_of(model), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(output(reloaded(**batch, task_ids=old_ids)), before)
        assert torch.equal(output(reloaded(**batch, task_ids=torch.full((6,), new))), trained)
    second = model.add_task()  # a second new task: the first joins the frozen table
    assert second == 4 and model.adapter_config.base_tasks == 3
    with torch.no_grad():
        assert torch.equal(output(model(**batch, task_ids=torch.full((6,), new))), trained)
    with pytest.raises(ValueError, match="needs a task table"):
        moore.get_moore_model(build("llama"), moore.LoraConfig(num_tasks=2, r=2)).add_task()


@pytest.mark.slow
def test_the_cli_infers_tasks_and_adds_one(tmp_path):
    """moore fit-task-classifier, moore eval --routing infer, moore add-task on a tiny encoder run;
    the old task's scores are unchanged in the adapter with the new task."""
    import json

    import yaml

    from training_fixtures import make_tasks, moore_cli, run_config, save_tiny_encoder, task_specs, write_config

    files = make_tasks(tmp_path / "data", n_train=32, n_test=16)
    config = run_config(save_tiny_encoder(tmp_path / "encoder"), files, ["mood", "count"],
                        tmp_path / "run", steps=4)
    moore_cli("train", write_config(tmp_path / "run.yaml", config), "--no-progress")
    fitted = moore_cli("fit-task-classifier", tmp_path / "run")
    assert "task classifier saved" in fitted.stdout and "mood:" in fitted.stdout
    assert (tmp_path / "run" / "final" / "task_classifier.safetensors").is_file()
    inferred = moore_cli("eval", tmp_path / "run", "--routing", "infer", "--json", tmp_path / "infer.json")
    assert "routing: infer" in inferred.stdout
    moore_cli("eval", tmp_path / "run", "--json", tmp_path / "own.json")

    # a third task from 24 examples, given as a task spec file
    spec = task_specs(make_tasks(tmp_path / "more", n_train=24, n_test=8), ["mood"])[0]
    spec["name"] = "mood2"
    (tmp_path / "mood2.yaml").write_text(yaml.safe_dump(spec))
    added = moore_cli("add-task", tmp_path / "run", "--task", tmp_path / "mood2.yaml", "--output-dir",
                      tmp_path / "added", "--steps", "5", "--no-progress")
    assert "added as task 2" in added.stdout
    moore_cli("eval", tmp_path / "added", "--tasks", "mood,count", "--json", tmp_path / "after.json")
    assert json.loads((tmp_path / "after.json").read_text())["scores"] == \
        json.loads((tmp_path / "own.json").read_text())["scores"]
    refused = moore_cli("add-task", tmp_path / "run", "--task", tmp_path / "mood2.yaml", "--output-dir",
                        tmp_path / "added", check=False)
    assert refused.returncode == 2 and "not empty" in refused.stderr


def test_an_adapter_saved_before_the_task_fields_existed_still_loads(tmp_path):
    """Adapters written before ``added_tasks``/``base_tasks`` were MoORE config fields: their config
    digest covers the config as written, without them."""
    import json

    from safetensors.torch import load_file, save_file

    from moore.io import json_sha256
    from moore.model import CONFIG_DIGEST

    model = _model()
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    for key in ("added_tasks", "base_tasks"):
        del meta["config"][key]
    (tmp_path / "adapter_config.json").write_text(json.dumps(meta))
    weights = load_file(str(tmp_path / "adapter_model.safetensors"))
    save_file(weights, str(tmp_path / "adapter_model.safetensors"),
              metadata={"format": "pt", CONFIG_DIGEST: json_sha256(meta["config"])})
    reloaded = moore.MooreModel.from_pretrained(_base_of(model), tmp_path)
    batch = _task_inputs(0)
    with torch.no_grad():
        assert torch.equal(output(reloaded(**batch, task_ids=[0, 1, 2, 0])), output(model(**batch, task_ids=[0, 1, 2, 0])))
