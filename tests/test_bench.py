"""The benchmark runner's bookkeeping and the report, from result files alone."""

from __future__ import annotations

import json

import pytest

from moore.bench import SUITES, Method, Suite, run_suite, write_report
from moore.bench.suites import OURS, PEER

TASKS = ("cola", "sst2", "mrpc", "rte", "qnli")


def _record(method: str, score: float, sts: float) -> dict:
    metric = {"cola": "mcc", "mrpc": "f1"}
    return {"suite": "nlu-mtl-mini", "method": method, "trainable_parameters": 1000, "share": 0.01,
            "scores": {t: {metric.get(t, "accuracy"): score} for t in TASKS}, "average": score,
            "zero_shot": {"stsbenchmark": {"spearman": sts}}, "git_commit": "abc", "seed": 0,
            "machine": {"processor": "x86_64", "cpu_count": 2, "torch": "2.13.0", "gpu": None},
            "routing": {"layer": "l", "tasks": ["cola", "sst2"], "sigma": [3.0, 2.0, 1.0],
                        "per_task": {"cola": {"mean": [0.1, 0.0, -0.1], "std": [0.1] * 3, "tokens": 5},
                                     "sst2": {"mean": [0.0, 0.2, 0.1], "std": [0.1] * 3, "tokens": 5}},
                        "distances": [[0.0, 0.3], [0.3, 0.0]]} if method == "moore-L8" else None}


def test_report_is_rebuilt_from_result_files_and_says_where_moore_loses(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps({"zero_shot": {"stsbenchmark": {"spearman": 0.82}},
                                                    "published_zero_shot": {"stsbenchmark": {"spearman": 0.8203}}}))
    for method, score, sts in (("moore-L8", 0.70, 0.81), ("lora", 0.75, 0.60), ("hra", 0.65, 0.79)):
        (tmp_path / f"{method}.json").write_text(json.dumps(_record(method, score, sts)))
    report = write_report("nlu-mtl-mini", tmp_path).read_text()
    assert "| lora | 1,000 (1.00%) | **75.00** |" in report
    assert "**Where MoORE loses:**" in report and "lora (75.00)" in report
    assert "| moore-L8 | 81.00 (-1.00) |" in report and "| **base model (measured here)** | 82.00 |" in report
    assert "Not run yet:" in report and "moore-L0" in report
    assert "On stsbenchmark, MoORE-L8 (81.00) kept the most" in report
    assert "300 scored examples per task: an accuracy near 50% has a 95% interval of ±5.7 points" in report
    for png in ("per_task.png", "average.png", "oblivion.png", "routing_weights.png", "routing_distances.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_runner_skips_methods_with_results_and_refuses_unknown_ones(tmp_path, capsys):
    (tmp_path / "lora.json").write_text("{}")
    run_suite("nlu-mtl-mini", ["lora"], tmp_path, tmp_path / "runs", None)
    assert "already has a result" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown method"):
        run_suite("nlu-mtl-mini", ["lorra"], tmp_path, tmp_path / "runs", None)
    with pytest.raises(ValueError, match="unknown suite"):
        run_suite("nlu-mini", None, tmp_path, tmp_path / "runs", None)


def test_suites_compare_every_method_at_one_budget():
    from moore import METHODS

    for suite in SUITES.values():
        methods = suite.methods
        if suite.name.endswith("-quick"):  # a smoke test: a few methods of the full suite
            assert set(methods) < set(SUITES[suite.name.removesuffix("-quick")].methods)
            continue
        assert {m.adapter["method"] for m in methods.values()} == set(METHODS)  # every registered method
        assert {"moore-L8", "moore-L0"} <= set(methods)
        assert all(m.budget for m in methods.values() if m.family == PEER)


def test_efficiency_rows_are_ratios_measured_side_by_side(tmp_path, monkeypatch):
    from training_fixtures import save_tiny_decoder

    from moore.bench.efficiency import measure_efficiency

    model_dir = save_tiny_decoder(tmp_path / "decoder")
    suite = Suite("tiny", "tiny", {"model": {"name_or_path": str(model_dir)}, "tasks": [{"name": "a"}, {"name": "b"}]},
                  {"moore-L8": Method({"method": "moore", "task_dim": 8, "sample_dim": 4, "num_reflections": 2}, OURS),
                   "moore-task": Method({"method": "moore", "task_dim": 8, "sample_dim": 0, "num_reflections": 2},
                                        OURS),
                   "lora": Method({"method": "lora"}, PEER, budget=True)}, routing_layer="", subsampling="")
    monkeypatch.setitem(SUITES, "tiny", suite)
    rows = measure_efficiency("tiny", tmp_path, batch_size=4, length=8, repeats=1)["rows"]
    assert set(rows) == {"base (full model trains)", "base", "moore-L8", "moore-L8 (merged)", "moore-task",
                         "moore-task (merged)", "moore-task (merged for one task)", "lora"}
    assert rows["base (full model trains)"]["train_step_ratio"] == rows["base"]["inference_ratio"] == 1.0
    # an adapter keeps no gradients or AdamW state for the frozen weights: it holds less than full fine-tuning
    assert rows["lora"]["train_memory_ratio"] < 1.0 and rows["moore-L8"]["train_memory_ratio"] < 1.0
    assert abs(rows["lora"]["trainable_parameters"] - rows["moore-L8"]["trainable_parameters"]) \
        <= 0.1 * rows["moore-L8"]["trainable_parameters"]
    assert json.loads((tmp_path / "efficiency.json").read_text())["rows"].keys() == rows.keys()


def test_efficiency_verdict_names_the_cheaper_peers():
    from moore.bench.report import _efficiency_verdict

    rows = {"base (full model trains)": {"train_step_ratio": 1.0, "train_memory_ratio": 1.0, "inference_ratio": 0.9},
            "base": {"inference_ratio": 1.0},
            "moore-L8": {"train_step_ratio": 1.1, "train_memory_ratio": 0.5, "inference_ratio": 0.5},
            "moore-L8 (merged)": {"inference_ratio": 0.7},
            "lora": {"train_step_ratio": 0.8, "train_memory_ratio": 0.6, "inference_ratio": 0.8},
            "omoe": {"train_step_ratio": 3.0, "train_memory_ratio": 7.0, "inference_ratio": 0.3},
            "full": {"train_step_ratio": 0.9, "train_memory_ratio": 1.0, "inference_ratio": 1.0}}
    suite = SUITES["nlu-mtl-mini"]
    text = "\n".join(_efficiency_verdict(rows, suite))
    assert "training step time):** lora (MoORE-L8: 1.10×)" in text  # full and base are not peers
    assert "training memory" not in text  # no peer needs less than MoORE here
    assert "inference speed (MoORE merged)):** lora (MoORE-L8: 0.70×)" in text  # merged is MoORE's best case
    assert _efficiency_verdict({k: v for k, v in rows.items() if k != "moore-L8"}, suite) == []
