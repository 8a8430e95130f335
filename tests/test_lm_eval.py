"""The lm-evaluation-harness bridge, offline: harness tasks defined on small local JSONL files
(multiple choice and rolling log-likelihood), scored through ``MooreLM``, equal moore's own scorer
and the model's own forward on the same items."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from moore.integrations.harness import MooreLM, evaluate  # noqa: E402
from moore.multitask import MultiTaskModel  # noqa: E402
from moore.runconfig import load_run_config  # noqa: E402
from moore.training import Trainer  # noqa: E402
from training_fixtures import make_tasks, moore_cli, run_config, save_tiny_decoder, write_jsonl  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny decoder trained a few steps on two tasks, its run folder, and harness tasks built
    from the same items moore scores."""
    root = tmp_path_factory.mktemp("lmeval")
    torch.manual_seed(0)
    files = make_tasks(root / "data", n_train=32, n_test=12)
    config = run_config(save_tiny_decoder(root / "model"), files, ["mood", "pick"], root / "run", steps=4, lr=0.05)
    Trainer(load_run_config(data=config), progress=False, device="cpu").run()
    model = MultiTaskModel.load(root / "run" / "final")
    task = model.tasks[model.task_id("pick")]
    examples = task.load(root / "data", "test")
    strategy = model.strategy
    rows = [{"context": strategy.prompt(task, e), "label": e["label"],
             "choices": [task.answer_prefix + o for o in strategy.options(task, e)]} for e in examples]
    texts = [{"text": " ".join(["sunny bright table river"] * n)} for n in (1, 2, 12)]  # the last spans windows
    include = root / "harness"
    for name, data, body in (
        ("moore_pick", rows, 'output_type: multiple_choice\ndoc_to_text: "{{context}}"\n'
                             'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\ntarget_delimiter: ""\n'
                             "metric_list:\n  - metric: acc\n"),
        ("moore_text", texts, 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
                              "metric_list:\n  - metric: word_perplexity\n"),
    ):
        path = write_jsonl(root / f"{name}.jsonl", data)
        (include / f"{name}.yaml").parent.mkdir(exist_ok=True)
        (include / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\n"
            f"test_split: test\n{body}")
    return {"root": root, "model": model, "task": task, "examples": examples, "texts": texts, "include": include}


def _picks(samples: list[dict]) -> list[int]:
    ordered = sorted(samples, key=lambda s: s["doc_id"])
    return [max(range(len(s["filtered_resps"])), key=lambda k: s["filtered_resps"][k][0]) for s in ordered]


@pytest.mark.parametrize("task_id", ["pick", None])
def test_multiple_choice_through_the_harness_equals_moores_own_scorer(saved, task_id):
    model, task, examples = saved["model"], saved["task"], saved["examples"]
    own_id = None if task_id is None else model.task_id(task_id)
    ours = model.predict(task, examples, task_id=own_id)
    results = evaluate(saved["root"] / "run" / "final", ["moore_pick"], task_id=task_id,
                       include_path=saved["include"], batch_size=5)
    assert _picks(results["samples"]["moore_pick"]) == ours
    accuracy = sum(p == e["label"] for p, e in zip(ours, examples)) / len(examples)
    assert results["results"]["moore_pick"]["acc,none"] == pytest.approx(accuracy)


def test_rolling_loglikelihood_equals_the_models_own_forward(saved):
    model = saved["model"]
    lm = MooreLM(model, task_id="mood", batch_size=2)
    results = evaluate(saved["root"] / "run" / "final", ["moore_text"], task_id="mood", include_path=saved["include"])
    by_doc = {s["doc_id"]: s["filtered_resps"][0] for s in results["samples"]["moore_text"]}
    by_doc = {k: v[0] if isinstance(v, (list, tuple)) else v for k, v in by_doc.items()}
    for i, row in enumerate(saved["texts"]):
        ids = model.strategy.ids(row["text"], False)
        expected = 0.0  # the harness's windows, each scored by a plain forward of the adapted model
        for window in get_rolling_token_windows(token_list=ids, prefix_token=lm.end_of_text,
                                                max_seq_len=model.max_length, context_len=1):
            context, target = make_disjoint_window(window)
            sequence = torch.tensor([(context + target)[:-1]])
            with torch.no_grad():
                logp = model.adapted(input_ids=sequence, task_ids=[model.task_id("mood")]).logits.log_softmax(-1)
            expected += logp[0, -len(target):].gather(-1, torch.tensor(target)[:, None]).sum().item()
        assert by_doc[i] == pytest.approx(expected, rel=1e-5, abs=1e-4)
    assert len(model.strategy.ids(saved["texts"][-1]["text"], False)) > model.max_length  # several windows
    assert results["results"]["moore_text"]["word_perplexity,none"] > 1


def test_the_cli_scores_a_run_folder(saved, tmp_path):
    out = tmp_path / "scores.json"
    run = moore_cli("lm-eval", saved["root"] / "run", "--tasks", "moore_pick", "--include-path", saved["include"],
                    "--task-id", "pick", "--json", out, env={"HF_DATASETS_OFFLINE": "1"})
    assert "moore_pick" in run.stdout and "routed as task pick" in run.stdout
    model = saved["model"]
    ours = model.evaluate(saved["task"], saved["examples"], task_id=model.task_id("pick"))
    assert json.loads(out.read_text())["results"]["moore_pick"]["acc,none"] == pytest.approx(ours["accuracy"])
    bad = moore_cli("lm-eval", saved["root"] / "run", "--tasks", "moore_pick", "--include-path", saved["include"],
                    "--task-id", "7", check=False)
    assert bad.returncode == 2 and "out of range" in bad.stderr


def test_an_encoder_adapter_is_refused_with_the_reason(tmp_path):
    from training_fixtures import save_tiny_encoder

    files = make_tasks(tmp_path / "data", n_train=16, n_test=4)
    config = run_config(save_tiny_encoder(tmp_path / "enc"), files, ["mood"], tmp_path / "run", steps=1)
    Trainer(load_run_config(data=config), progress=False, device="cpu").run()
    with pytest.raises(ValueError, match="encoder"):
        MooreLM(Path(tmp_path / "run" / "final"))


def test_the_registered_model_name_takes_the_harness_model_args(saved):
    """``lm_eval.simple_evaluate(model="moore", model_args="path=...,task_id=...")``, as the harness's
    own entry points build a model."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(model="moore", model_args=f"path={saved['root'] / 'run' / 'final'},task_id=pick",
                                      tasks=["moore_pick"],  # the harness's ~15k own task files left unindexed
                                      task_manager=TaskManager(include_path=str(saved["include"]), include_defaults=False),
                                      bootstrap_iters=0)
    model = saved["model"]
    ours = model.evaluate(saved["task"], saved["examples"], task_id=model.task_id("pick"))
    assert results["results"]["moore_pick"]["acc,none"] == pytest.approx(ours["accuracy"])
