"""No silent wrong results, no lost runs, reproducible from the seed.

Each test here is a way a hostile or careless user broke moore once: a warm SVD cache that changed
the run, a divergence saved as NaN checkpoints, a finished run clobbered, two runs mixing their
weights, a changed config ignored on resume, a torn log, data and adapter files that failed with
tracebacks, private file modes, DDP replicas that ended different, and small counting and
fingerprint gaps.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import moore
from helpers import build, perturb_adapter, tiny_llama
from moore.data.tasks import get_task
from moore.errors import AdapterFileError, ConfigError, DataError, RunFolderError
from moore.io import write_json
from moore.multitask import MultiTaskModel
from moore.runconfig import build_tasks, load_run_config
from moore.svd import cached_svd
from moore.training import train
from moore.training.checkpoints import JsonlLog, RunLock, read_log
from training_fixtures import free_port, make_tasks, moore_cli, run_config, save_tiny_encoder, write_config, write_jsonl

CONFIG = dict(num_tasks=3, task_dim=8, sample_dim=4, num_reflections=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    torch.manual_seed(0)
    return {"encoder": save_tiny_encoder(root / "encoder"), "files": make_tasks(root / "data"), "root": root}


def _config(world, out: Path, names=("mood", "count"), **training) -> dict:
    return run_config(world["encoder"], world["files"], list(names), out, **training)


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def _all_finite(folder: Path) -> bool:
    return all(torch.isfinite(t).all() for f in folder.rglob("*.safetensors") for t in load_file(str(f)).values()
               if t.is_floating_point())


# --- 1. one seed fixes the run ------------------------------------------------------------------------
def test_a_warm_svd_cache_gives_the_same_run_as_a_cold_one(tmp_path):
    """A cache hit checks the cached factors on a random probe; that probe must not come from the
    global generator, or every initialisation after it (task table, Γ, heads) changes."""
    states = {}
    for name in ("cold", "warm", "off"):
        torch.manual_seed(7)
        model = moore.get_moore_model(build("llama"), moore.MooreConfig(**CONFIG),
                                      svd_cache_dir=None if name == "off" else tmp_path / "svd")
        states[name] = {k: v.detach().clone() for k, v in model.adapter_state_dict().items()}
    assert any((tmp_path / "svd").iterdir())  # the second build really hit the cache
    for key, value in states["cold"].items():
        assert torch.equal(value, states["warm"][key]), key
        assert torch.equal(value, states["off"][key]), key


def test_a_cache_hit_leaves_the_global_generator_alone(tmp_path):
    weight = torch.randn(24, 16)
    cached_svd(weight, cache_dir=tmp_path)  # miss: computes and stores
    before = torch.get_rng_state()
    cached_svd(weight, cache_dir=tmp_path)  # hit: verifies
    assert torch.equal(before, torch.get_rng_state())


# --- 2. divergence ------------------------------------------------------------------------------------
def test_divergence_stops_with_the_step_and_saves_nothing_non_finite(world, tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", _config(world, out, steps=12, lr=1e6, save_every=1, eval_every=1,
                                                       max_grad_norm=None))
    result = moore_cli("train", config, "--no-progress", check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert "diverged at step" in message and "--overwrite" in message and "Traceback" not in result.stderr
    assert not (out / "final").exists() and not (out / "results.json").exists()
    for folder in [*(out / "checkpoints").glob("step-*"), out / "best"]:
        if folder.exists():
            assert _all_finite(folder), folder
    for line in (out / "log.jsonl").read_text().splitlines():
        _strict_json(line)
    # moore eval scores what is good: best/, else the latest checkpoint (and says so)
    assert moore_cli("eval", out, check=False).returncode == 0
    shutil.rmtree(out / "best", ignore_errors=True)
    checkpoints = sorted((out / "checkpoints").glob("step-*"))
    scored = moore_cli("eval", out, check=False)
    assert checkpoints and scored.returncode == 0 and f"latest checkpoint, {checkpoints[-1].name}" in scored.stderr
    # the folder stays usable: a fixed config replaces the run, and --resume would say what differs
    fixed = write_config(tmp_path / "fixed.yaml", _config(world, out, steps=2, lr=1e-2))
    assert moore_cli("train", fixed, "--no-progress", "--overwrite").returncode == 0


def test_results_json_is_strict_json(tmp_path):
    write_json(tmp_path / "r.json", {"spearman": float("nan"), "nested": [float("inf"), 1.5]})
    assert _strict_json((tmp_path / "r.json").read_text()) == {"spearman": None, "nested": [None, 1.5]}


# --- 3. and 4. the run folder belongs to one run ------------------------------------------------------------
def test_a_finished_run_is_not_clobbered(world, tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", _config(world, out, steps=2))
    moore_cli("train", config, "--no-progress")
    (out / "notes.txt").write_text("mine")
    saved = {p: p.read_bytes() for p in [out / "results.json", out / "log.jsonl", *(out / "final").iterdir()]}
    again = moore_cli("train", config, "--no-progress", check=False)
    assert again.returncode == 2 and "is not empty" in again.stderr and "--overwrite" in again.stderr
    assert all(p.read_bytes() == data for p, data in saved.items())
    moore_cli("train", config, "--no-progress", "--overwrite")
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite removes what a run writes, nothing else
    assert len(read_log(out / "log.jsonl")) > 0


def test_a_second_run_into_a_locked_folder_is_refused_with_the_holder_pid(world, tmp_path):
    out = tmp_path / "run"
    lock = RunLock(out).acquire()
    try:
        result = moore_cli("train", write_config(tmp_path / "c.yaml", _config(world, out, steps=2)), "--no-progress",
                           check=False)
    finally:
        lock.release()
    assert result.returncode == 2 and f"PID {os.getpid()}" in result.stderr and "in use" in result.stderr
    assert not (out / "log.jsonl").exists()
    with pytest.raises(RunFolderError, match="in use"):  # the library refuses the same way
        with_lock = RunLock(out).acquire()
        try:
            train(load_run_config(data=_config(world, out, steps=2)), progress=False)
        finally:
            with_lock.release()


# --- 5. resume is for the same run -------------------------------------------------------------------------
def test_resume_refuses_a_config_that_changes_the_run(world, tmp_path):
    out = tmp_path / "run"
    data = _config(world, out, steps=4, save_every=2)
    train(load_run_config(data=data), progress=False)
    with pytest.raises(ConfigError, match=r"training\.lr: 0\.01 → 0\.02"):
        train(load_run_config(data={**data, "training": {**data["training"], "lr": 2e-2}}), resume=True,
              progress=False)
    swapped = {**data, "tasks": list(reversed(data["tasks"]))}
    with pytest.raises(ConfigError, match=r"tasks: .*→"):
        train(load_run_config(data=swapped), resume=True, progress=False)
    with pytest.raises(ConfigError, match=r"adapter\.task_dim"):
        train(load_run_config(data={**data, "adapter": {**data["adapter"], "task_dim": 4}}), resume=True,
              progress=False)
    # more steps is a safe change: the run continues from its last checkpoint
    longer = train(load_run_config(data={**data, "training": {**data["training"], "steps": 6}}), resume=True,
                   progress=False)
    assert longer["steps"] == 6
    assert json.loads((out / "run_config.json").read_text())["training"]["steps"] == 6


# --- 6. a torn log ------------------------------------------------------------------------------------------
def test_a_torn_last_log_line_is_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in read_log(path)] == [1, 2]
    assert "last line" in caplog.text
    JsonlLog(path, enabled=True).truncate_after(1)
    assert [r["step"] for r in read_log(path)] == [1]


def test_resume_after_a_torn_log_line(world, tmp_path):
    out = tmp_path / "run"
    data = _config(world, out, steps=4, save_every=2)
    config = write_config(tmp_path / "c.yaml", data)
    killed = moore_cli("train", config, "--no-progress", check=False,
                       launcher=[sys.executable, str(Path(__file__).parent / "kill_after_checkpoint.py"), "2"])
    assert killed.returncode != 0
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.')  # a disk-full in the middle of a write
    moore_cli("train", config, "--no-progress", "--resume")
    assert [r["step"] for r in read_log(out / "log.jsonl") if "loss" in r] == [1, 2, 3, 4]


# --- 7. data errors name the file, the line and the problem -----------------------------------------------
def _one_task(tmp_path: Path, train_text: bytes | None = None, test_text: bytes | None = None, **spec) -> dict:
    rows = [{"text": f"w{i} x", "label": ["neg", "pos"][i % 2]} for i in range(20)]
    files = {}
    for split, raw in (("train", train_text), ("test", test_text)):
        path = tmp_path / f"{split}.jsonl"
        if raw is None:
            write_jsonl(path, rows)
        else:
            path.write_bytes(raw)
        files[split] = str(path)
    return {"name": "mine", "files": files, "kind": "classification", "metrics": ["accuracy"],
            "label_names": ["neg", "pos"], **spec}


GOOD = b'{"text": "a b", "label": "pos"}\n{"text": "c d", "label": "neg"}\n'


@pytest.mark.parametrize("train_text, test_text, message", [
    (GOOD + b'{"text": "e f", "label": "pos"\n', None, r"train\.jsonl:3: not valid JSON"),
    (b"\xef\xbb\xbf" + GOOD, None, r"train\.jsonl:1: .*byte-order mark"),
    (GOOD + b'{"text": "caf\xe9", "label": "pos"}\n', None, r"train\.jsonl:3: not UTF-8"),
    (b"", None, r"train\.jsonl: no examples"),
    (None, b"\n", r"test\.jsonl: no examples"),
    (GOOD * 3, None, r"train\.jsonl: 6 examples are too few to hold out a validation set"),
    (GOOD * 6 + b'{"text": "e f", "label": 5}\n', None, r"train\.jsonl:13: label 5 is out of range"),
    (GOOD * 6 + b'{"text": "e f", "label": 0.5}\n', None, r"train\.jsonl:13: label 0\.5 is not a class"),
    (GOOD * 6 + b'[1, 2]\n', None, r"train\.jsonl:13: expected a JSON object"),
])
def test_bad_data_is_refused_with_file_and_line_before_any_model_loads(world, tmp_path, train_text, test_text,
                                                                         message):
    data = {**_config(world, tmp_path / "run"), "tasks": [_one_task(tmp_path, train_text, test_text)]}
    data["model"]["name_or_path"] = str(tmp_path / "no-model-here-yet")  # data is read before the model is checked
    with pytest.raises(DataError, match=message):
        task = build_tasks(load_run_config(data=data).tasks)[0]
        for split in ("train", "validation", "test"):
            task.load(None, split)


def test_the_cli_turns_user_errors_into_one_line_and_exit_2(world, tmp_path):
    task = _one_task(tmp_path, GOOD * 6 + b'{"text": "e f", "label": 7}\n')
    bad_data = write_config(tmp_path / "data.yaml", {**_config(world, tmp_path / "a"), "tasks": [task]})
    no_model = _config(world, tmp_path / "b")
    no_model["model"]["name_or_path"] = str(tmp_path / "missing-model")
    twins = {**_config(world, tmp_path / "c"), "tasks": [{"name": "sst2"}, {"name": "SST2"}]}
    choice = tmp_path / "choice.jsonl"
    write_jsonl(choice, [{"text": f"w{i} x", "options": ["a", "b"], "label": i % 2} for i in range(20)])
    wrong_model = {**_config(world, tmp_path / "d"), "tasks": [{"name": "pick", "files": {"train": str(choice), "test": str(choice)},
                   "kind": "multiple_choice", "metrics": ["accuracy"], "options_field": "options"}]}
    cases = [
        (bad_data, r"train.jsonl:13: label 7 is out of range"),
        (write_config(tmp_path / "model.yaml", no_model), "missing-model' does not exist"),
        (write_config(tmp_path / "twins.yaml", twins), "tasks listed twice"),
        (tmp_path, "is a folder"),
        (write_config(tmp_path / "kind.yaml", wrong_model), "task 'pick' (multiple_choice) needs a decoder model"),
    ]
    for config, message in cases:
        result = moore_cli("train", config, "--no-progress", check=False)
        assert result.returncode == 2, (config, result.stderr[-2000:])
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
        if config.name != "kind.yaml":  # a task's fit to the model is known once the model has loaded
            assert "trainable params" not in result.stdout  # refused before any model was built
    debug = moore_cli("--debug", "train", bad_data, "--no-progress", check=False)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "DataError" in debug.stderr


def test_registered_task_files_that_do_not_parse_name_the_file(tmp_path):
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\tmaybe\n")
    with pytest.raises(DataError, match=r"SST-2/train\.tsv: cannot read it as task 'sst2'"):
        get_task("sst2").load(tmp_path, "train")


# --- 8. tampered or truncated adapter files ------------------------------------------------------------------
def _saved_adapter(tmp_path: Path, **config):
    torch.manual_seed(0)
    base = tiny_llama().eval()
    model = moore.get_moore_model(base, moore.MooreConfig(**{**CONFIG, **config}), svd_cache_dir=None)
    perturb_adapter(model)
    model.save_pretrained(tmp_path / "adapter")
    return base, tmp_path / "adapter"


def _fresh_base():
    torch.manual_seed(0)
    return tiny_llama().eval()


def test_truncated_adapter_weights_are_refused_naming_the_file(tmp_path):
    _, adapter = _saved_adapter(tmp_path)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(AdapterFileError, match=r"adapter_model\.safetensors is truncated"):
        moore.MooreModel.from_pretrained(_fresh_base(), adapter, svd_cache_dir=None)
    _, adapter = _saved_adapter(tmp_path)
    fingerprint = adapter / "base_fingerprint.safetensors"
    fingerprint.write_bytes(b"\x00" * 7)
    with pytest.raises(AdapterFileError, match=r"base_fingerprint\.safetensors is truncated"):
        moore.MooreModel.from_pretrained(_fresh_base(), adapter, svd_cache_dir=None)


@pytest.mark.parametrize("content, message", [
    ("[1, 2, 3]", "expected a JSON object, found list"),
    ('{"moore_version": "0.1.0"}', "has no 'config' object"),
    ("{not json", "not valid JSON"),
])
def test_a_broken_adapter_config_is_refused_naming_the_file(tmp_path, content, message):
    _, adapter = _saved_adapter(tmp_path)
    (adapter / "adapter_config.json").write_text(content)
    with pytest.raises(AdapterFileError, match=message) as error:
        moore.MooreModel.from_pretrained(_fresh_base(), adapter, svd_cache_dir=None)
    assert "adapter_config.json" in str(error.value)


@pytest.mark.parametrize("flag", ["clamp_singular_values", "normalize_sample_router", "num_reflections"])
def test_an_edited_config_flag_is_refused(tmp_path, flag):
    """Flags that change the forward are covered by the digest saved with the weights."""
    _, adapter = _saved_adapter(tmp_path)
    path = adapter / "adapter_config.json"
    meta = json.loads(path.read_text())
    meta["config"][flag] = 2 if flag == "num_reflections" else True
    path.write_text(json.dumps(meta))
    with pytest.raises(AdapterFileError, match="edited after saving"):
        moore.MooreModel.from_pretrained(_fresh_base(), adapter, svd_cache_dir=None)


def test_reordered_tasks_are_refused(world, tmp_path):
    out = tmp_path / "run"
    train(load_run_config(data=_config(world, out, steps=2)), progress=False)
    path = out / "final" / "moore_tasks.json"
    meta = json.loads(path.read_text())
    meta["tasks"], meta["task_names"] = meta["tasks"][::-1], meta["task_names"][::-1]
    path.write_text(json.dumps(meta))
    tasks = [t for t in build_tasks(load_run_config(data=_config(world, out)).tasks)][::-1]
    with pytest.raises(AdapterFileError, match="tasks reordered"):
        MultiTaskModel.load(out / "final", tasks)
    result = moore_cli("eval", out, check=False)
    assert result.returncode == 2 and "moore_tasks.json" in result.stderr and "Traceback" not in result.stderr


# --- 9. file modes -----------------------------------------------------------------------------------------
def test_saved_files_follow_the_umask(tmp_path, world):
    old = os.umask(0o022)
    try:
        model = moore.get_moore_model(build("llama"), moore.MooreConfig(**CONFIG), svd_cache_dir=tmp_path / "svd")
        model.save_pretrained(tmp_path / "adapter")
        out = tmp_path / "run"
        train(load_run_config(data=_config(world, out, steps=2, save_every=1)), progress=False)
    finally:
        os.umask(old)
    files = [*(tmp_path / "adapter").iterdir(), *(tmp_path / "svd").iterdir(), *(out / "final").iterdir(),
             out / "results.json"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# --- 10. DDP with keep-best ---------------------------------------------------------------------------------
def test_ddp_keep_best_leaves_every_rank_with_the_same_weights(world, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    out = tmp_path / "ddp"
    # a learning rate high enough that the validation score peaks before the end
    config = write_config(tmp_path / "ddp.yaml", _config(world, out, steps=6, batch_size=2, lr=0.3, eval_every=1,
                                                         schedule="constant", warmup_steps=0))
    moore_cli(config, out / "ranks", launcher=[torchrun, "--nproc_per_node", "2", "--master_port",
                                               str(free_port()),
                                               str(Path(__file__).parent / "ddp_rank_weights.py")])
    results = json.loads((out / "results.json").read_text())
    assert results["best_step"] < 6, "the test needs a best step before the last to restore"
    rank0, rank1 = (load_file(str(out / "ranks" / f"rank{r}.safetensors")) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    best = load_file(str(out / "best" / "adapter_model.safetensors"))
    for key, value in best.items():  # both restored the best step's weights
        assert torch.equal(rank1[key], value), key
    state = torch.load(sorted((out / "checkpoints").glob("step-*"))[-1] / "trainer_state.pt", weights_only=True)
    assert len(state["rng"]) == 2  # each rank's random state, for an exact resume


# --- 11. smaller ones ----------------------------------------------------------------------------------------
def test_parameter_counts_see_dropped_singular_directions():
    base = build("llama")
    with torch.no_grad():  # a rank-deficient layer: MoORE keeps only its non-zero singular directions
        w = base.model.layers[0].self_attn.q_proj.weight
        w.copy_(w[:, :10] @ torch.randn(10, w.shape[1]))
    config = moore.MooreConfig(**CONFIG)
    counted = moore.count_trainable_parameters(base, config)
    built = moore.get_moore_model(base, config, svd_cache_dir=None)
    assert built.model.model.layers[0].self_attn.q_proj.rank == 10
    assert counted == built.get_nb_trainable_parameters()[0]


def test_a_nan_weight_error_names_the_layer():
    base = build("llama")
    with torch.no_grad():
        base.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj holds 1 NaN or Inf"):
        moore.get_moore_model(base, moore.MooreConfig(**CONFIG), svd_cache_dir=None)


def test_a_base_with_a_few_edited_weights_is_refused(tmp_path):
    base, adapter = _saved_adapter(tmp_path)
    edited = _fresh_base()
    with torch.no_grad():  # positions the 256-value sample skips: only a full hash sees them
        w = edited.model.layers[0].mlp.down_proj.weight
        w.view(-1)[1::997][:3] += 1e-3
    with pytest.raises(AdapterFileError, match=r"down_proj\.weight: values differ .*full hash"):
        moore.MooreModel.from_pretrained(edited, adapter, svd_cache_dir=None)
    # the same weights in another precision are still accepted
    moore.MooreModel.from_pretrained(_fresh_base().to(torch.bfloat16), adapter, svd_cache_dir=None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the CUDA random state")
def test_resume_on_a_gpu_restores_the_cuda_random_state(world, tmp_path):
    """LoRA dropout draws its masks on the GPU: a resumed run equals the uninterrupted one only if
    the checkpoint restored the CUDA generator."""
    runs = {}
    for name in ("straight", "killed"):
        data = _config(world, tmp_path / name, steps=4, save_every=2)
        data["adapter"] = {"method": "lora", "r": 4, "lora_dropout": 0.5}
        config = write_config(tmp_path / f"{name}.yaml", data)
        if name == "killed":
            moore_cli("train", config, "--no-progress", "--device", "cuda", check=False, launcher=[
                sys.executable, str(Path(__file__).parent / "kill_after_checkpoint.py"), "2"])
            moore_cli("train", config, "--no-progress", "--device", "cuda", "--resume")
        else:
            moore_cli("train", config, "--no-progress", "--device", "cuda")
        runs[name] = load_file(str(tmp_path / name / "final" / "adapter_model.safetensors"))
    state = torch.load(sorted((tmp_path / "killed" / "checkpoints").glob("step-*"))[-1] / "trainer_state.pt",
                       weights_only=True)
    assert len(state["cuda_rng"]) == 1
    for key, value in runs["straight"].items():
        assert torch.equal(value, runs["killed"][key]), key
