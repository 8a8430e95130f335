"""YAML run configs: validated once, with errors that name the key and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from moore.runconfig import ConfigError, RunConfig, build_tasks, check_data, load_run_config


def _config(**overrides) -> dict:
    data = {"model": {"name_or_path": "minilm"}, "tasks": [{"name": "sst2"}, {"name": "cola"}]}
    data.update(overrides)
    return data


def test_a_valid_config_and_its_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_config(adapter={"task_dim": 16})))
    cfg = load_run_config(path, ["training.steps=7", "training.lr=0.5"])
    assert cfg.training.steps == 7 and cfg.training.lr == 0.5 and cfg.training.schedule == "wsd"
    adapter = cfg.adapter
    assert adapter.method == "moore" and adapter.num_tasks == 2 and adapter.task_dim == 16


@pytest.mark.parametrize("data, message", [
    (_config(trainig={"steps": 3}), r"trainig: unknown key"),
    (_config(training={"stepz": 3}), r"training.stepz: unknown key"),
    (_config(training={"steps": 0}), r"training.steps: Input should be greater than 0"),
    (_config(tasks=[{"name": "mine", "files": {"train": "x.jsonl"}, "kind": "classification",
                     "label_names": ["a", "b"]}]), r"task 'mine' has no metric"),
    (_config(tasks=[{"name": "mine", "files": {"train": "x.jsonl"}, "kind": "regression",
                     "metrics": ["bleu"]}]), r"unknown metric\(s\) \['bleu'\]"),
    (_config(tasks=[{"name": "sst3"}]), r"unknown task 'sst3'"),
    (_config(tasks=[{"name": "sst2", "metrics": ["f1"]}]), r"registered task; \['metrics'\]"),
    (_config(tasks=[{"name": "sst2"}, {"name": "sst2"}]), r"tasks listed twice: \['sst2'\]"),
    (_config(adapter={"method": "lorra"}), r"unknown method 'lorra'"),
    (_config(adapter={"method": "lora", "rank": 8}), r"unknown lora config keys \['rank'\]"),
    (_config(adapter={"num_reflections": 3}), r"num_reflections"),
    (_config(adapter={"num_tasks": 3}), r"num_tasks is set from the task list"),
    (_config(stages=[["sst2"], ["mrpc"]]), r"stages name tasks that are not in tasks: \['mrpc'\]"),
    (_config(model={}), r"model.name_or_path: Field required"),
    (_config(tasks=[{"name": "mine", "files": {"train": "x.jsonl"}, "kind": "classification", "metrics": ["accuracy"],
                     "label_names": ["a", "b"]}]), r"task 'mine' has no test file, and the run is scored on"),
    (_config(tasks=[{"name": "mine", "files": {"test": "x.jsonl"}, "kind": "classification", "metrics": ["accuracy"],
                     "label_names": ["a", "b"]}]), r"task 'mine' is trained but has no train file"),
    (_config(tasks=[{"name": "mine", "files": {"train": "x.jsonl"}, "kind": "multiple_choice", "metrics": ["accuracy"],
                     "options_field": "opts", "template": "Q: {question}\nA:"}]),
     r"template field\(s\) \['question'\] unknown; a multiple_choice example gives \['prompt', 'text'\]"),
    (_config(tasks=[{"name": "mine", "files": {"train": "x.jsonl"}, "kind": "classification", "metrics": ["accuracy"],
                     "label_names": ["a", "b"], "template": "{text} / {text_pair}"}]),
     r"template field\(s\) \['text_pair'\] unknown; a classification example gives \['text'\]"),
    (_config(tasks=[{"name": "mine", "files": {"train": "x.jsonl"}, "kind": "classification", "metrics": ["accuracy"],
                     "label_names": ["a", "b"], "template": "{text"}]), r"is not a format string"),
    (_config(tasks=[{"name": "mine", "files": {"train": "x.jsonl"}, "kind": "language_modeling",
                     "metrics": ["perplexity"], "template": "{text}"}]), r"template does not apply"),
])
def test_bad_configs_are_refused_with_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(data=data)


def test_yaml_and_override_errors(tmp_path):
    with pytest.raises(ConfigError, match="no config file"):
        load_run_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(bad)
    with pytest.raises(ConfigError, match="not of the form"):
        load_run_config(data=_config(), overrides=["training.steps"])


def test_missing_data_files_are_listed_before_any_model_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_run_config(data=_config())
    with pytest.raises(ConfigError, match=r"(?s)task 'sst2': missing data file .*SST-2/train.tsv.*task 'cola'"):
        check_data(build_tasks(cfg.tasks), tmp_path)


def test_user_task_files_resolve_from_the_config_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train.jsonl").write_text('{"text": "a b", "label": "yes"}\n' * 20)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_config(tasks=[{"name": "mine", "files": {"train": "mine/train.jsonl"},
                                                   "kind": "classification", "metrics": ["accuracy"],
                                                   "label_names": ["no", "yes"]}],
                                            evaluation={"split": "validation"})))
    cfg = load_run_config(path)
    (task,) = build_tasks(cfg.tasks, cfg._base_dir)
    examples = task.load(None, "train")
    assert examples[0] == {"text": "a b", "label": 1} and len(examples) == 18  # 2 held out for validation
    assert len(task.load(None, "validation")) == 2


def test_a_template_formats_every_kind_of_user_task_with_its_text(tmp_path):
    from moore.multitask.decoder import DecoderTasks

    rows = {"pair": ('{"q": "a b", "p": "c d", "y": "yes"}\n', dict(kind="classification", label_names=["no", "yes"],
                                                                       text_pair_field="p", template="{text} | {text_pair}?")),
            "choice": ('{"q": "a b", "opts": ["x", "y"], "y": 1}\n', dict(kind="multiple_choice", options_field="opts",
                                                                           template="Q: {text}\nA:"))}
    tasks = []
    for name, (row, spec) in rows.items():
        (tmp_path / f"{name}.jsonl").write_text(row * 20)
        tasks.append({"name": name, "files": {"train": f"{name}.jsonl"}, "metrics": ["accuracy"], "text_field": "q",
                      "label_field": "y", **spec})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_config(tasks=tasks, evaluation={"split": "validation"})))
    cfg = load_run_config(path)
    prompts = [DecoderTasks(None).prompt(task, task.load(None, "train")[0]) for task in build_tasks(cfg.tasks, cfg._base_dir)]
    assert prompts == ["a b | c d?", "Q: a b\nA:"]


def test_the_shipped_configs_validate():
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        cfg = load_run_config(path)
        assert cfg.adapter.num_tasks == len(cfg.tasks)


def test_a_saved_run_config_reads_back_and_older_ones_compare_equal():
    """run_config.json validates again to the same config, and a checkpoint's config written before a
    field existed is not a difference on --resume (both sides take today's defaults)."""
    from moore.training.checkpoints import config_differences

    cfg = load_run_config(data={"model": {"name_or_path": "minilm"}, "tasks": [{"name": "sst2"}, {"name": "cola"}],
                                "adapter": {"method": "lora", "r": 4}})
    dumped = json.loads(cfg.model_dump_json())
    assert RunConfig.model_validate(dumped).model_dump(mode="json") == dumped
    older = json.loads(json.dumps(dumped))
    del older["training"]["param_lrs"], older["tasks"][0]["max_validation"], older["evaluation"]["track_zero_shot"]
    assert config_differences(RunConfig.model_validate(older).model_dump(mode="json"), dumped) == []
