"""Task loaders on files in each real format (made-up text), metrics, answer extraction."""

from __future__ import annotations

import json

import pytest

from moore.data import TASKS, MissingDataError, get_task
from moore.data.metrics import METRICS, perplexity
from moore.multitask import extract_choice


@pytest.fixture
def data_dir(tmp_path):
    glue = tmp_path / "glue"
    for folder in ("CoLA", "SST-2", "MRPC", "RTE", "QNLI", "STS-B"):
        (glue / folder).mkdir(parents=True)
    cola = "src1\t1\t\tthe cat sat .\nsrc2\t0\t*\tcat the sat .\n"
    (glue / "CoLA" / "in_domain_train.tsv").write_text(cola * 10)
    (glue / "CoLA" / "in_domain_dev.tsv").write_text(cola)
    for split in ("train", "dev", "test"):
        (glue / "SST-2" / f"{split}.tsv").write_text('sentence\tlabel\na "quoted fine film\t1\nflat and dull\t0\n')
    mrpc = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "1\t1\t2\tA b c.\tA b c too.\n0\t3\t4\tX y.\tZ w.\n" * 20
    (glue / "MRPC" / "msr_paraphrase_train.txt").write_text(mrpc)
    (glue / "MRPC" / "msr_paraphrase_test.txt").write_text(mrpc)
    rte = "sentence1\tsentence2\tlabel\tidx\np one\th one\t0\t0\np two\th two\t1\t1\n"
    (glue / "RTE" / "train.tsv").write_text(rte)
    (glue / "RTE" / "dev.tsv").write_text(rte)
    qnli = "index\tquestion\tsentence\tlabel\n" + "".join(
        f"{i}\tq{i}?\ts{i}.\t{'entailment' if i % 3 else 'not_entailment'}\n" for i in range(100))
    (glue / "QNLI" / "dev.tsv").write_text(qnli)
    sts = "genre\tfilename\tyear\tindex\tsource1\tsource2\tsentence1\tsentence2\tscore\n"  # a GLUE-style header
    (glue / "STS-B" / "train.tsv").write_text(sts + "g\tf\ty\t0\tn\tn\ta man runs\ta man jogs\t4.200\n")
    (glue / "STS-B" / "dev.tsv").write_text(sts + "g\tf\ty\t0\tn\tn\ta dog\ta cat\t1.000\n")
    (tmp_path / "stsbenchmark").mkdir()
    (tmp_path / "stsbenchmark" / "sts-test.csv").write_text(
        "main-news\tf\t2012\t0001\t3.800\tone sentence\tanother sentence\textra\tfields\n")
    csr = tmp_path / "csr" / "ARC-Easy"
    csr.mkdir(parents=True)
    rows = [{"instruction": f"Please choose the correct answer to the question: q{i}?\n\nAnswer1: a Answer2: b "
                            "Answer3: c\n\nAnswer format: answer1/answer2/answer3",
             "input": "", "output": f"the correct answer is answer{i % 3 + 1}", "answer": f"answer{i % 3 + 1}"}
            for i in range(30)]
    (csr / "train.json").write_text(json.dumps(rows))
    (csr / "test.json").write_text(json.dumps(rows[:5]))
    (tmp_path / "wikitext-2").mkdir()
    (tmp_path / "wikitext-2" / "valid.txt").write_text(" \n = Title = \n \n first line . \n second line . \n")
    return tmp_path


def test_glue_formats(data_dir):
    cola = get_task("cola").load(data_dir, "train")
    assert cola[:2] == [{"text": "the cat sat .", "label": 1}, {"text": "cat the sat .", "label": 0}]
    sst2 = get_task("sst2").load(data_dir, "test")
    assert sst2[0] == {"text": 'a "quoted fine film', "label": 1}  # quotes are text, not CSV quoting
    mrpc = get_task("mrpc").load(data_dir, "test")
    assert mrpc[0] == {"text": "A b c.", "text_pair": "A b c too.", "label": 1}  # the BOM does not break the header
    assert get_task("rte").load(data_dir, "test")[0]["label"] == 0  # test = GLUE dev; validation comes out of train
    assert get_task("stsb").load(data_dir, "test")[0]["label"] == pytest.approx(1.0)  # the score is the last column
    sts = get_task("stsbenchmark").load(data_dir, "test")
    assert sts == [{"text": "one sentence", "text_pair": "another sentence", "label": 3.8}]


def test_splits_without_files_are_carved_deterministically(data_dir):
    qnli = get_task("qnli")
    parts = {s: qnli.load(data_dir, s) for s in ("train", "validation", "test")}
    assert [len(p) for p in parts.values()] == [80, 10, 10]
    keys = [{e["text"] for e in p} for p in parts.values()]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert parts["train"] == qnli.load(data_dir, "train")
    mrpc = get_task("mrpc")
    train, held = mrpc.load(data_dir, "train"), mrpc.load(data_dir, "validation")
    assert len(train) + len(held) == 40 and len(held) == 4


def test_llm_adapters_json(data_dir):
    arc = get_task("arc-e")
    test = arc.load(data_dir, "test")
    assert test[1]["options"] == ["answer1", "answer2", "answer3"] and test[1]["label"] == 1
    assert test[0]["prompt"].startswith("Please choose the correct answer")
    assert len(arc.load(data_dir, "train")) + len(arc.load(data_dir, "validation")) == 30


def test_wikitext_and_subsets(data_dir):
    wiki = get_task("wikitext2").load(data_dir, "validation")
    assert [e["text"] for e in wiki] == ["= Title =", "first line .", "second line ."]
    assert get_task("wikitext2").load(data_dir, "validation", limit=2) == wiki[:2]  # running text stays contiguous
    cola = get_task("cola")
    a, b = cola.load(data_dir, "train", limit=5, seed=1), cola.load(data_dir, "train", limit=5, seed=1)
    assert a == b and len(a) == 5


def test_missing_data_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingDataError, match=r"SST-2/train.tsv.*MOORE_DATA_DIR"):
        get_task("sst2").load(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown task 'sst3'"):
        get_task("sst3")
    with pytest.raises(ValueError, match="no 'train' split"):
        get_task("wikitext2").load(tmp_path, "train")


def test_every_registered_task_has_a_metric_and_data_files():
    for task in TASKS.values():
        assert task.metric and task.files and (task.kind != "classification" or len(task.label_names) >= 2)


def test_metrics_against_hand_computed_values():
    assert METRICS["accuracy"]([1, 0, 1, 1], [1, 0, 0, 1]) == 0.75
    # MCC for TP=2 TN=1 FP=1 FN=0: (2·1 − 1·0)/sqrt(3·2·1·2)
    assert METRICS["mcc"]([1, 0, 1, 1], [1, 0, 0, 1]) == pytest.approx(2 / 12 ** 0.5)
    assert METRICS["f1"]([1, 0, 1, 1], [1, 0, 0, 1]) == pytest.approx(0.8)
    assert METRICS["spearman"]([1, 2, 3, 4], [10, 20, 30, 35]) == pytest.approx(1.0)
    assert METRICS["pearson"]([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert METRICS["spearman"]([1, 1, 1], [1, 2, 3]) == 0.0  # constant predictions: no ranking, not NaN
    assert perplexity(0.0, 10) == 1.0


def test_extract_choice():
    assert extract_choice("the correct answer is answer3", ["answer1", "answer2", "answer3"]) == 2
    assert extract_choice("True, because ... false", ["true", "false"]) == 0
    assert extract_choice("answer10", ["answer1", "answer10"]) == 1  # whole words, not prefixes
    assert extract_choice("no idea", ["true", "false"]) == -1
