"""FSDP (``training.parallelism: fsdp``) against DDP, two gloo processes on the CPU: the same steps
give the same weights and the same saved files, and a sharded run resumes exactly."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training_fixtures import free_port, make_tasks, moore_cli, run_config, save_tiny_decoder, save_tiny_encoder, \
    write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    torch.manual_seed(0)
    return {"encoder": save_tiny_encoder(root / "encoder"), "decoder": save_tiny_decoder(root / "decoder"),
            "files": make_tasks(root / "data", n_train=32, n_test=8)}


def _torchrun(config: Path, *args) -> str:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    return moore_cli("train", config, "--no-progress", "--device", "cpu", *args,
                     launcher=[torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m",
                               "moore.cli"]).stdout


def _files(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(str(run_dir / "final" / name)) for name in ("adapter_model.safetensors",
                                                                         "heads.safetensors")}


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if "loss" in r]


def _assert_same_files(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    for name in fa:
        assert fa[name].keys() == fb[name].keys(), name
        for key, value in fa[name].items():
            assert value.dtype == fb[name][key].dtype, key
            torch.testing.assert_close(fb[name][key], value, rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")


# encoder/moore: a rate high enough that the best validation step comes before the last (keep-best restores it)
@pytest.mark.parametrize("kind,tasks,method,lr", [("encoder", ["mood", "count"], "moore", 0.3),
                                                  ("decoder", ["mood", "pick"], "moore", 0.05),
                                                  ("encoder", ["mood", "count"], "full", 0.05)])
def test_fsdp_takes_the_same_steps_as_ddp(world, tmp_path, kind, tasks, method, lr):
    runs = {}
    for parallelism in ("ddp", "fsdp"):
        config = run_config(world[kind], world["files"], tasks, tmp_path / parallelism, steps=4, batch_size=2,
                            lr=lr, eval_every=1, save_every=2, schedule="constant", warmup_steps=0,
                            parallelism=parallelism, gradient_checkpointing=kind == "decoder")
        if method == "full":
            config["adapter"] = {"method": "full"}
        runs[parallelism] = write_config(tmp_path / f"{parallelism}.yaml", config)
        assert "2 process(es)" in _torchrun(runs[parallelism])
    _assert_same_files(tmp_path / "ddp", tmp_path / "fsdp")
    assert _losses(tmp_path / "fsdp") == pytest.approx(_losses(tmp_path / "ddp"), rel=1e-5)
    ddp, fsdp = (json.loads((tmp_path / p / "results.json").read_text()) for p in ("ddp", "fsdp"))
    flat = {name: {f"{t}/{m}": v for t, ms in run["after"].items() for m, v in ms.items()}
            for name, run in (("ddp", ddp), ("fsdp", fsdp))}
    assert flat["fsdp"] == pytest.approx(flat["ddp"]) and fsdp["best_step"] == ddp["best_step"]
    if lr == 0.3:
        assert fsdp["best_step"] < 4, "the test needs a best step before the last to restore"
    if method == "moore":  # the adapter's own tensors stay float32 (the router, the reflections)
        assert all(v.dtype == torch.float32 for v in _files(tmp_path / "fsdp")["adapter_model.safetensors"].values())


def test_a_sharded_run_resumes_exactly(world, tmp_path):
    common = dict(batch_size=2, lr=0.05, save_every=2, schedule="constant", warmup_steps=0, parallelism="fsdp",
                  keep_best=False)
    straight = run_config(world["encoder"], world["files"], ["mood", "count"], tmp_path / "straight", steps=4,
                          **common)
    _torchrun(write_config(tmp_path / "straight.yaml", straight))
    first = run_config(world["encoder"], world["files"], ["mood", "count"], tmp_path / "resumed", steps=2, **common)
    _torchrun(write_config(tmp_path / "first.yaml", first))
    more = write_config(tmp_path / "more.yaml", {**first, "training": {**first["training"], "steps": 4}})
    assert "resuming from" in _torchrun(more, "--resume")  # the optimizer state comes back whole, then sharded
    _assert_same_files(tmp_path / "straight", tmp_path / "resumed")
