"""Multi-task training end to end on tiny saved models and synthetic JSONL tasks.

Resume, distributed and CLI tests run ``moore`` in subprocesses, as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from moore.multitask import MultiTaskModel
from moore.runconfig import build_tasks, load_run_config
from moore.training import TaskMixer, lr_multiplier, mixing_probabilities, train
from training_fixtures import (free_port, make_tasks, moore_cli, run_config, save_tiny_decoder, save_tiny_encoder,
                               write_config, write_jsonl)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)  # the tiny models' random weights do not depend on which tests ran first
    return {"encoder": save_tiny_encoder(root / "encoder"), "decoder": save_tiny_decoder(root / "decoder"),
            "files": make_tasks(root / "data"), "root": root}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    out = load_file(str(run_dir / "final" / "adapter_model.safetensors"))
    out.update({f"head.{k}": v for k, v in load_file(str(run_dir / "final" / "heads.safetensors")).items()})
    return out


def _flat(scores: dict) -> dict:
    return {f"{task}/{metric}": value for task, metrics in scores.items() for metric, value in metrics.items()}


def _log(run_dir: Path, key: str = "loss") -> dict[int, float]:
    """step -> value (a flat mapping: pytest.approx compares it, as it no longer does nested lists)."""
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in lines if key in r}


# --- pieces -----------------------------------------------------------------------------------------
def test_schedules_follow_optimizer_steps():
    wsd = [lr_multiplier("wsd", 100, 10, 20)(s) for s in range(100)]
    assert wsd[0] == pytest.approx(1 / 11) and wsd[9] == pytest.approx(10 / 11)
    assert all(v == 1.0 for v in wsd[10:80]) and wsd[80] == 1.0
    assert all(a > b for a, b in zip(wsd[80:], wsd[81:])) and wsd[99] == pytest.approx(1 / 20)
    cosine = [lr_multiplier("cosine", 100, 0.1, min_lr_ratio=0.1)(s) for s in range(100)]
    assert cosine[10] == 1.0 and all(a >= b for a, b in zip(cosine[10:], cosine[11:])) and cosine[99] < 0.11


def test_task_mixing():
    assert np.allclose(mixing_probabilities([100, 400], "proportional"), [0.2, 0.8])
    assert np.allclose(mixing_probabilities([100, 400], "temperature", 2.0), [1 / 3, 2 / 3])
    assert np.allclose(mixing_probabilities([100, 400], "uniform"), [0.5, 0.5])
    mixer = TaskMixer([5, 50], "uniform", seed=3)
    draws = [mixer.draw(step, 8) for step in range(20)]
    assert all(len({t for t, _ in d}) == 2 for d in draws[:5])  # batches mix tasks
    first_task = [i for d in draws for t, i in d if t == 0]
    assert sorted(first_task[:5]) == [0, 1, 2, 3, 4]  # an epoch sees each example once
    again = TaskMixer([5, 50], "uniform", seed=3)
    again.load_state_dict(TaskMixer([5, 50], "uniform", seed=3).state_dict())
    assert [again.draw(step, 8) for step in range(20)] == draws
    resumed = TaskMixer([5, 50], "uniform", seed=3)
    for step in range(10):
        resumed.draw(step, 8)
    state = resumed.state_dict()
    restored = TaskMixer([5, 50], "uniform", seed=3)
    restored.load_state_dict(state)
    assert [restored.draw(step, 8) for step in range(10, 20)] == draws[10:]


def _model(world, kind: str, names: list[str]) -> MultiTaskModel:
    cfg = load_run_config(data=run_config(world[kind], world["files"], names, world["root"] / "unused"))
    tasks = build_tasks(cfg.tasks)
    return MultiTaskModel.build(cfg.model, cfg.adapter, tasks), tasks


def test_decoder_loss_is_on_answer_tokens_only(world):
    model, tasks = _model(world, "decoder", ["mood", "pick", "text"])
    examples = [tasks[0].load(None, "train")[0], tasks[1].load(None, "train")[0], tasks[2].load(None, "train")[0]]
    batch = model.collate(examples, ["mood", "pick", "text"])
    labels, ids = batch["labels"], batch["inputs"]["input_ids"]
    mask = batch["inputs"]["attention_mask"]
    assert (labels[mask == 0] == -100).all()  # padding is excluded
    tok = model.tokenizer
    answer = tok("positive" if examples[0]["label"] else "negative", add_special_tokens=False)["input_ids"]
    assert labels[0][labels[0] != -100].tolist() == answer + [tok.eos_token_id]  # the prompt is masked
    assert (labels[2][mask[2] == 1] == ids[2][mask[2] == 1]).all()  # language modelling: every token
    loss, units = model.loss(batch)
    logits = model.adapted(**batch["inputs"], task_ids=batch["task_ids"]).logits
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                               ignore_index=-100, reduction="sum")
    assert model.strategy.keeps_logits  # the loss came from the answer positions' logits only
    assert torch.allclose(loss, manual, rtol=1e-5) and units == int((labels[:, 1:] != -100).sum())


def _loglik_by_hand(model, task, examples, task_id) -> list[int]:
    """The option whose answer tokens have the highest summed log-probability, one sequence each."""
    tok = model.tokenizer
    picks = []
    for e in examples:
        scores = []
        for option in e["options"]:
            prompt = tok(model.strategy.prompt(task, e))["input_ids"]
            answer = tok(task.answer_prefix + option, add_special_tokens=False)["input_ids"]
            logp = model.adapted(input_ids=torch.tensor([prompt + answer]), task_ids=[task_id]).logits.log_softmax(-1)[0]
            scores.append(sum(logp[len(prompt) - 1 + j, a].item() for j, a in enumerate(answer)))
        picks.append(int(np.argmax(scores)))
    return picks


def test_loglik_scoring_equals_scoring_by_hand(world):
    model, tasks = _model(world, "decoder", ["mood", "pick"])
    pick = tasks[1]
    examples = pick.load(None, "test")[:6]
    # the options share every answer token but the last: the fast path scores them in one forward
    assert model.strategy.loglik_choices(pick, examples, 1, 4, False) == _loglik_by_hand(model, pick, examples, 1)
    # options that differ in more than their last token go through the per-option path
    slow_task = type(pick)(**{**pick.__dict__, "answer_prefix": ""})
    wrapped = [{**e, "options": [f"{o} !" for o in e["options"]]} for e in examples]
    assert model.strategy.loglik_choices(slow_task, wrapped, 1, 4, False) == _loglik_by_hand(model, slow_task, wrapped, 1)


def test_generation_scoring_runs_with_task_routing(world):
    model, tasks = _model(world, "decoder", ["mood", "pick"])
    scores = model.evaluate("pick", tasks[1].load(None, "test")[:4], scoring="generate", max_new_tokens=4)
    assert 0.0 <= scores["accuracy"] <= 1.0


# --- training runs ------------------------------------------------------------------------------------
def test_encoder_multitask_training_learns_and_saves_heads(world, tmp_path):
    out = tmp_path / "run"
    data = run_config(world["encoder"], world["files"], ["mood", "count"], out, steps=40, lr=3e-2, eval_every=20,
                      schedule="cosine", warmup_steps=4, batch_size=8)
    data["evaluation"]["before"] = True
    results = train(load_run_config(data=data), progress=False)
    assert results["after"]["mood"]["accuracy"] >= 0.75 > results["before"]["mood"]["accuracy"] + 0.15
    assert results["after"]["count"]["spearman"] > 0.5
    for name in ("final", "best", "checkpoints"):
        assert (out / name).is_dir()
    losses = list(_log(out).values())
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    lrs = list(_log(out, "lr").values())
    assert lrs[3] < lrs[4] == pytest.approx(3e-2) and lrs[-1] < 1e-3  # warmup, then cosine to ~0 within 40 optimizer steps
    heads = load_file(str(out / "final" / "heads.safetensors"))
    assert set(heads) == {"mood.weight", "mood.bias", "count.weight", "count.bias"}
    # the saved adapter and heads reload into a fresh model with the same scores
    tasks = build_tasks(load_run_config(data=data).tasks)
    reloaded = MultiTaskModel.load(out / "final", tasks)
    again = reloaded.evaluate("mood", tasks[0].load(None, "test"))
    assert again == results["after"]["mood"]


def test_grad_accumulation_equals_one_big_batch(world, tmp_path):
    runs = {}
    for name, batch, accum in (("big", 8, 1), ("accum", 2, 4)):
        data = run_config(world["encoder"], world["files"], ["mood", "count"], tmp_path / name, steps=3,
                          batch_size=batch, grad_accum_steps=accum)
        train(load_run_config(data=data), progress=False)
        runs[name] = _weights(tmp_path / name)
    for key, value in runs["big"].items():
        assert torch.allclose(value, runs["accum"][key], atol=1e-6), key


@pytest.fixture(scope="module")
def ragged(world):
    """Tasks whose texts run from 1 to 24 words: a batch padded whole is mostly padding."""
    import random

    rng, words = random.Random(1), ["sunny", "dark", "table", "river", "seven", "calm", "rude", "stone"]
    files = dict(world["files"])
    for name in ("mood", "count"):
        rows = []
        for i in range(48):
            text = " ".join(rng.choices(words, k=rng.choice([1, 2, 3, 12, 24])))
            rows.append({"text": text, "label": ["negative", "positive"][i % 2] if name == "mood" else float(i % 4)})
        files[name] = {split: write_jsonl(world["root"] / "ragged" / name / f"{split}.jsonl", rows)
                       for split in ("train", "test")}
    return files


@pytest.mark.parametrize("kind,names", [("encoder", ["mood", "count"]), ("decoder", ["mood", "pick", "text"])])
def test_length_buckets_give_the_same_training(world, ragged, tmp_path, kind, names):
    """Each micro-batch split by length into 3 buckets: the same weights as the batch padded whole."""
    runs = {}
    for buckets in (1, 3):
        data = run_config(world[kind], ragged, names, tmp_path / str(buckets), steps=3, batch_size=8,
                          length_buckets=buckets)
        train(load_run_config(data=data), progress=False)
        runs[buckets] = _weights(tmp_path / str(buckets))
    for key, value in runs[1].items():
        assert torch.allclose(value, runs[3][key], atol=1e-5), key


def test_length_buckets_pad_less_and_keep_every_example(world, ragged, tmp_path):
    from moore.training import Trainer

    data = run_config(world["encoder"], ragged, ["mood", "count"], tmp_path / "r", batch_size=16, length_buckets=4)
    config = load_run_config(data=data)
    trainer = Trainer(config, progress=False)
    trainer._load_data()
    trainer.model = MultiTaskModel.build(config.model, config.adapter, trainer.tasks, task_specs=config.tasks)
    examples = trainer.train_data["mood"][:8] + trainer.train_data["count"][:8]
    names = ["mood"] * 8 + ["count"] * 8
    whole = trainer.model.collate(examples, names)
    buckets = trainer._length_buckets(examples, names)
    assert len(buckets) == 4 and [len(b["task_ids"]) for b in buckets] == [4, 4, 4, 4]
    padded = sum(b["inputs"]["input_ids"].numel() for b in buckets)
    assert padded < whole["inputs"]["input_ids"].numel()
    assert sum(b["inputs"]["attention_mask"].sum() for b in buckets) == whole["inputs"]["attention_mask"].sum()
    assert sorted(torch.cat([b["labels"] for b in buckets]).tolist()) == sorted(whole["labels"].tolist())
    assert sorted(torch.cat([b["task_ids"] for b in buckets]).tolist()) == sorted(whole["task_ids"].tolist())


def test_scoring_in_length_order_keeps_each_examples_prediction(world, ragged):
    """predict() scores texts shortest first (less padding) and hands back predictions in the
    examples' own order: the same as scoring each example alone."""
    from moore.multitask.common import in_order, length_order

    examples = [{"text": "a " * n, "label": 0} for n in (5, 1, 9, 3)]
    order = length_order(examples)
    assert order == [1, 3, 0, 2] and in_order([examples[i]["text"] for i in order], order) == [e["text"] for e in examples]
    data = run_config(world["encoder"], ragged, ["mood", "count"], world["root"] / "unused")
    config = load_run_config(data=data)
    tasks = build_tasks(config.tasks)
    torch.manual_seed(0)
    model = MultiTaskModel.build(config.model, config.adapter, tasks, task_specs=config.tasks)
    test = tasks[1].load(None, "test")
    together = model.predict("count", test, batch_size=16)
    alone = [model.predict("count", [e], batch_size=1)[0] for e in test]
    assert np.allclose(together, alone, atol=1e-5)


def test_one_scoring_pass_gives_the_metrics_and_the_predictions(world):
    """evaluate_tasks fills ``predictions`` from the pass that gave the metrics: the same as predict()."""
    from moore.evaluation import evaluate_tasks

    model, tasks = _model(world, "decoder", ["mood", "pick", "text"])
    data = {t.name: (t, t.load(None, "test")[:6]) for t in tasks}
    predictions: dict = {}
    scores = evaluate_tasks(model, data, batch_size=4, predictions=predictions)
    assert set(predictions) == {"mood", "pick", "text"}
    # language modelling: each text window's summed NLL and token count, which give the perplexity again
    nll, tokens = np.asarray(predictions.pop("text")).sum(0)
    assert tokens > 0 and scores["text"]["perplexity"] == pytest.approx(np.exp(nll / tokens), rel=1e-5)  # float32 sums
    for name in predictions:
        task, examples = data[name]
        assert predictions[name] == model.predict(task, examples, batch_size=4)
        right = np.mean([p == e["label"] for p, e in zip(predictions[name], examples)])
        assert scores[name]["accuracy"] == pytest.approx(right)


def test_bf16_scoring_runs_the_layers_in_bf16(world):
    """evaluation.bf16: the forward passes of scoring run under bf16 autocast; without it, in fp32."""
    from moore.evaluation import evaluate_tasks

    model, tasks = _model(world, "decoder", ["mood", "pick"])
    seen = []
    layer = next(m for m in model.adapted.modules() if isinstance(m, torch.nn.Linear))
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    data = {t.name: (t, t.load(None, "test")[:4]) for t in tasks}
    fp32 = evaluate_tasks(model, data, batch_size=4)
    assert set(seen) == {torch.float32}
    seen.clear()
    bf16 = evaluate_tasks(model, data, batch_size=4, bf16=True)
    handle.remove()
    assert set(seen) == {torch.bfloat16} and set(bf16) == set(fp32)


def test_bf16_on_a_cpu_that_emulates_it_is_named_once_per_setting(world, tmp_path, monkeypatch, caplog):
    """Without AVX-512 BF16 or AMX an x86 CPU emulates bf16 (15-18x slower steps, measured): scoring and
    training in bf16 there each warn once, by the setting's name; where bf16 is native, nothing."""
    from moore import precision
    from moore.evaluation import evaluate_tasks
    from moore.training import Trainer

    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    for avx512_bf16, amx, native in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert precision.bf16_is_native("cpu") is native
    monkeypatch.setattr(precision.platform, "machine", lambda: "aarch64")
    assert precision.bf16_is_native("cpu")  # probes are x86's: elsewhere nothing to warn about
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)  # an AVX2-only CPU
    monkeypatch.setattr(precision, "_warned", set())

    model, tasks = _model(world, "decoder", ["mood"])
    data = {t.name: (t, t.load(None, "test")[:2]) for t in tasks}
    with caplog.at_level("WARNING", logger="moore.precision"):
        evaluate_tasks(model, data, batch_size=2)  # fp32: nothing to say
        assert not caplog.records
        evaluate_tasks(model, data, batch_size=2, bf16=True)
        evaluate_tasks(model, data, batch_size=2, bf16=True)
        config = run_config(world["encoder"], world["files"], ["mood"], tmp_path / "run", steps=1, bf16=True)
        Trainer(load_run_config(data=config), progress=False).run()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "evaluation.bf16 is on" in messages[0] and "training.bf16 is on" in messages[1]
    assert all("neither AVX-512 BF16 nor AMX" in m for m in messages)


def test_every_seed_scores_the_same_test_subset(world, tmp_path):
    from moore.training import Trainer

    subsets = []
    for seed in (0, 1):
        data = run_config(world["decoder"], world["files"], ["mood", "pick"], tmp_path / f"s{seed}", seed=seed)
        data["tasks"] = [{**t, "max_eval": 5, "max_train": 20} for t in data["tasks"]]
        trainer = Trainer(load_run_config(data=data), progress=False)
        trainer._load_data()  # what run() reads first
        subsets.append(({n: [str(e) for e in ex] for n, (_, ex) in trainer.test_data.items()},
                        {n: [str(e) for e in ex] for n, ex in trainer.train_data.items()}))
    assert subsets[0][0] == subsets[1][0]  # test: fixed whatever the seed, so runs pair up example by example
    assert subsets[0][1] != subsets[1][1]  # train: a subset of its own per seed


def test_decoder_training_with_checkpointing_and_bf16(world, tmp_path):
    data = run_config(world["decoder"], world["files"], ["mood", "pick", "text"], tmp_path / "dec", steps=4,
                      gradient_checkpointing=True, bf16=True, eval_every=2)
    results = train(load_run_config(data=data), progress=False)
    assert set(results["after"]) == {"mood", "pick", "text"} and results["after"]["text"]["perplexity"] > 1
    assert _log(tmp_path / "dec", "average")


def test_sequential_stages_report_a_forgetting_matrix(world, tmp_path):
    out = tmp_path / "seq"
    data = run_config(world["encoder"], world["files"], ["mood", "count"], out, steps=3)
    data["stages"] = [["mood"], ["count"]]
    results = train(load_run_config(data=data), progress=False)
    matrix = results["forgetting_matrix"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    assert (out / "forgetting.png").stat().st_size > 0 and "Forgetting matrix" in (out / "results.md").read_text()
    # stage 2 trains only the count head: mood's head is exactly as stage 1 left it
    stage1 = load_file(str(sorted((out / "checkpoints").glob("step-*"))[0] / "model" / "heads.safetensors"))
    final = load_file(str(out / "final" / "heads.safetensors"))
    assert torch.equal(stage1["mood.weight"], final["mood.weight"])
    assert not torch.equal(stage1["count.weight"], final["count.weight"])


# --- as a user runs it ------------------------------------------------------------------------------------
def test_resume_after_a_kill_reproduces_the_uninterrupted_run(world, tmp_path):
    """Killed mid-training (step 4 of 6), and after the last step, while the test sets are scored
    (on a decoder suite that takes an hour): the resume goes on from there and ends as the
    uninterrupted run did; from the last step it trains nothing again."""
    base = run_config(world["decoder"], world["files"], ["mood", "pick"], tmp_path / "x", steps=6, save_every=2,
                      eval_every=3)
    for name in ("straight", "killed4", "killed6"):
        base["output_dir"] = str(tmp_path / name)
        write_config(tmp_path / f"{name}.yaml", base)
    moore_cli("train", tmp_path / "straight.yaml", "--no-progress")
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())

    def test_records(run: str) -> list[dict]:
        return [r for r in map(json.loads, (tmp_path / run / "log.jsonl").read_text().splitlines())
                if r.get("split") == "test"]

    assert test_records("straight")  # what a kill after the last step's checkpoint must not have reached yet
    for step in (4, 6):
        name = f"killed{step}"
        killed = moore_cli("train", tmp_path / f"{name}.yaml", "--no-progress", check=False,
                           launcher=[sys.executable, str(Path(__file__).parent / "kill_after_checkpoint.py"), str(step)])
        assert killed.returncode != 0 and not (tmp_path / name / "final").exists()
        assert (tmp_path / name / "checkpoints" / f"step-{step:07d}").is_dir()
        assert not test_records(name), "the last step's checkpoint comes before the test scoring"
        resumed = moore_cli("train", tmp_path / f"{name}.yaml", "--no-progress", "--resume")
        assert f"at step {step}" in resumed.stdout
        a, b = _weights(tmp_path / "straight"), _weights(tmp_path / name)
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6), key
        assert _log(tmp_path / "straight") == pytest.approx(_log(tmp_path / name))
        again = json.loads((tmp_path / name / "results.json").read_text())
        assert _flat(straight["after"]) == pytest.approx(_flat(again["after"]))
        assert again["best_step"] == straight["best_step"] and again["steps"] == 6


def test_two_gloo_processes_match_one_process(world, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    common = dict(steps=3, batch_size=2, eval_every=None)
    one = run_config(world["encoder"], world["files"], ["mood", "count"], tmp_path / "one", grad_accum_steps=2,
                     **common)
    two = run_config(world["encoder"], world["files"], ["mood", "count"], tmp_path / "two", **common)
    moore_cli("train", write_config(tmp_path / "one.yaml", one), "--no-progress", "--device", "cpu")
    result = moore_cli("train", write_config(tmp_path / "two.yaml", two), "--no-progress", "--device", "cpu",
                       launcher=[torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()),
                                 "-m", "moore.cli"])
    assert "2 process(es)" in result.stdout
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert _log(tmp_path / "one") == pytest.approx(_log(tmp_path / "two"), rel=1e-5)


def test_cli_eval_info_and_errors(world, tmp_path):
    out = tmp_path / "cli"
    config = write_config(tmp_path / "cli.yaml", run_config(world["encoder"], world["files"], ["mood", "count"], out,
                                                              steps=2))
    moore_cli("train", config, "--no-progress")
    scored = moore_cli("eval", out, "--json", tmp_path / "scores.json")
    assert "| mood | accuracy |" in scored.stdout
    saved = json.loads((out / "results.json").read_text())["after"]
    assert _flat(json.loads((tmp_path / "scores.json").read_text())["scores"]) == pytest.approx(_flat(saved))
    info = moore_cli("info", out).stdout
    assert "method:         moore" in info and "tasks:          0=mood, 1=count" in info and "BertModel" in info
    bad = write_config(tmp_path / "bad.yaml", {**run_config(world["encoder"], world["files"], ["mood"], out),
                                               "extra_section": 1})
    refused = moore_cli("train", bad, check=False)
    assert refused.returncode == 2 and "extra_section: unknown key" in refused.stderr
    not_adapter = moore_cli("info", tmp_path, check=False)
    assert not_adapter.returncode == 2 and "holds no saved adapter" in not_adapter.stderr


REAL_DATA = Path(os.environ.get("MOORE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_DATA / "glue" / "SST-2").is_dir(), reason=f"no real GLUE data at {REAL_DATA}")
def test_minilm_on_real_glue_end_to_end(tmp_path):
    """Real MiniLM, real SST-2 and RTE, a few MoORE steps through the CLI, then eval and info."""
    config = {
        "model": {"name_or_path": "minilm", "max_length": 48},
        "adapter": {"method": "moore", "task_dim": 16, "sample_dim": 8, "num_reflections": 2},
        "tasks": [{"name": "sst2", "max_train": 256, "max_eval": 64}, {"name": "rte", "max_train": 256, "max_eval": 64}],
        "training": {"steps": 12, "batch_size": 16, "lr": 3e-3, "eval_every": 6, "save_every": 6},
        "evaluation": {"batch_size": 64, "zero_shot": [{"name": "stsbenchmark", "max_eval": 64}]},
        "output_dir": str(tmp_path / "real"),
    }
    moore_cli("train", write_config(tmp_path / "real.yaml", config), "--data-dir", REAL_DATA, "--no-progress")
    results = json.loads((tmp_path / "real" / "results.json").read_text())
    assert set(results["after"]) == {"sst2", "rte"} and 0 <= results["after"]["sst2"]["accuracy"] <= 1
    assert results["zero_shot"]["stsbenchmark"]["spearman"] > 0.5  # MiniLM's own skill survives the adaptation
    scored = moore_cli("eval", tmp_path / "real", "--data-dir", REAL_DATA, "--split", "validation", "--max-eval", "32")
    assert "| sst2 | accuracy |" in scored.stdout
    assert "adapted layers: 37" in moore_cli("info", tmp_path / "real").stdout  # 6 blocks × 6 + the pooler
