"""``moore train``: multi-task (and sequential) adaptation, with checkpoints that resume exactly.

One optimizer step reads a global batch of ``batch_size × grad_accum_steps × world_size``
examples drawn by the task mixer; each process takes its own ``grad_accum_steps`` micro-batches
of it. Losses are sums over units (samples, or answer tokens for decoders) divided by the global
unit count, so accumulation and any number of processes give the gradient of the same global batch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..data.tasks import Task
from ..evaluation import (
    evaluate_tasks,
    forgetting_markdown,
    forgetting_matrix,
    plot_forgetting,
    primary_average,
    scores_table,
)
from ..io import write_json
from ..multitask import MultiTaskModel
from ..runconfig import RunConfig, build_tasks, check_data
from .distributed import DistributedContext, init_distributed, shutdown
from .mixing import TaskMixer
from .schedules import lr_multiplier

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.pt"
KILL_ENV = "MOORE_KILL_AFTER_STEP"  # tests: SIGKILL this process right after that step's checkpoint


class JsonlLogger:
    """Appends one JSON object per line; on resume, drops what came after the checkpoint."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool = False):
        self.path, self.enabled = path, enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:
                logger.warning("tensorboard is not installed (pip install tensorboard); logging to JSONL only")

    def truncate_after(self, step: int) -> None:
        if self.enabled and self.path.is_file():
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= step]
            self.path.write_text("".join(line + "\n" for line in keep))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in _flatten(record).items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key, value, record["step"])


def _flatten(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _replace_dir(build, target: Path) -> None:
    """Write a folder through ``build(tmp)`` and move it into place in one rename."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    if target.exists():
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


class Trainer:
    def __init__(self, config: RunConfig, *, data_dir: Path | None = None, output_dir: str | Path | None = None,
                 progress: bool = True, device: str | None = None):
        self.config = config
        self.spec = config.training
        self.data_dir = config.resolved_data_dir(data_dir)
        self.output_dir = Path(output_dir or config.output_dir)
        self.progress = progress
        self.ctx: DistributedContext = init_distributed(device)
        self.tasks: list[Task] = build_tasks(config.tasks, config._base_dir)
        self.zero_shot: list[Task] = build_tasks(config.evaluation.zero_shot, config._base_dir)
        self.stages = config.stages or [[t.name for t in self.tasks]]
        eval_split = config.evaluation.split
        check_data(self.tasks, self.data_dir, ("train", "validation", eval_split))
        check_data(self.zero_shot, self.data_dir, (eval_split,))
        self.model: MultiTaskModel | None = None

    # --- data ---------------------------------------------------------------------------------
    def _load_data(self) -> None:
        seed = self.spec.seed
        specs = {s.name: s for s in self.config.tasks}
        self.train_data = {t.name: t.load(self.data_dir, "train", limit=specs[t.name].max_train, seed=seed)
                           for t in self.tasks}
        self.eval_data = {t.name: (t, t.load(self.data_dir, "validation", limit=specs[t.name].max_eval, seed=seed))
                          for t in self.tasks}
        split = self.config.evaluation.split
        self.test_data = {t.name: (t, t.load(self.data_dir, split, limit=specs[t.name].max_eval, seed=seed))
                          for t in self.tasks}
        zs = {s.name: s for s in self.config.evaluation.zero_shot}
        self.zero_shot_data = {t.name: (t, t.load(self.data_dir, split, limit=zs[t.name].max_eval, seed=seed))
                               for t in self.zero_shot}
        for name, examples in self.train_data.items():
            logger.info("task %s: %d train, %d validation, %d %s examples", name, len(examples),
                        len(self.eval_data[name][1]), len(self.test_data[name][1]), split)

    # --- checkpoints --------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        if not self.checkpoint_dir.is_dir():
            return None
        done = [p for p in self.checkpoint_dir.glob("step-*") if p.is_dir() and not p.name.endswith((".tmp", ".old"))
                and (p / STATE_NAME).is_file()]
        return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)

    def _save_checkpoint(self, state: dict) -> None:
        if self.ctx.is_main:
            def build(tmp: Path) -> None:
                self.model.save(tmp / "model")
                torch.save(state, tmp / STATE_NAME)  # plain tensors and numbers: loads with weights_only
                (tmp / "trainer_state.json").write_text(json.dumps(
                    {k: state[k] for k in ("global_step", "stage", "stage_step", "best_score", "best_step")}, indent=2))

            _replace_dir(build, self.checkpoint_dir / f"step-{state['global_step']:07d}")
            done = sorted((p for p in self.checkpoint_dir.glob("step-*") if p.name[5:].isdigit()),
                          key=lambda p: int(p.name[5:]))
            for old in done[: -self.spec.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.ctx.barrier()
        if os.environ.get(KILL_ENV) == str(state["global_step"]):
            os.kill(os.getpid(), signal.SIGKILL)  # a hard crash right after the checkpoint, for resume tests

    # --- the run ------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        torch.manual_seed(self.spec.seed)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._load_data()
        self.model = MultiTaskModel.build(
            self.config.model.model_dump(), self.config.adapter, self.tasks,
            task_specs=[s.model_dump(exclude_defaults=True) for s in self.config.tasks],
            gradient_checkpointing=self.spec.gradient_checkpointing,
        ).to(self.ctx.device)
        if self.ctx.is_main:
            (self.output_dir / "run_config.json").write_text(self.config.model_dump_json(indent=2) + "\n")
            self.model.adapted.print_trainable_parameters()
        log = JsonlLogger(self.output_dir / "log.jsonl", self.ctx.is_main, self.spec.tensorboard)

        state: dict[str, Any] = {"global_step": 0, "stage": 0, "stage_step": 0, "best_score": None, "best_step": None,
                                 "stage_results": [], "before": None}
        checkpoint = self.latest_checkpoint() if resume else None
        if resume and checkpoint is None:
            logger.warning("--resume: no checkpoint under %s; starting from scratch", self.checkpoint_dir)
        if checkpoint is not None:
            state = torch.load(checkpoint / STATE_NAME, map_location="cpu", weights_only=True)
            self.model.load_weights(checkpoint / "model")
            log.truncate_after(state["global_step"])
            logger.info("resuming from %s (step %d)", checkpoint, state["global_step"])
            if self.ctx.is_main:
                print(f"resuming from {checkpoint} at step {state['global_step']}")
        elif self.ctx.is_main:
            log.truncate_after(-1)

        eval_spec = self.config.evaluation
        if eval_spec.before and state["before"] is None:
            state["before"] = self._evaluate(self.test_data, final=True)
            # every method starts as the base model, so this is the base model's own zero-shot skill
            state["zero_shot_before"] = self._evaluate(self.zero_shot_data, final=True, task_id=None)
            if self.ctx.is_main:
                log.log({"step": 0, "split": eval_spec.split, "before": state["before"],
                         "zero_shot_before": state["zero_shot_before"]})

        for stage in range(state["stage"], len(self.stages)):
            self._run_stage(stage, state, log, checkpoint if stage == state["stage"] else None)
            checkpoint = None

        results = self._finish(state)
        shutdown(self.ctx)
        return results

    def _optimizer(self, stage_tasks: list[str]) -> torch.optim.Optimizer:
        spec = self.spec
        heads = [p for name, head in self.model.heads.items() if name in stage_tasks for p in head.parameters()]
        head_ids = {id(p) for h in self.model.heads.values() for p in h.parameters()}
        adapter = [p for p in self.model.parameters() if p.requires_grad and id(p) not in head_ids]
        decay = [p for p in adapter if p.dim() >= 2]
        no_decay = [p for p in adapter if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": spec.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0},
                  {"params": heads, "weight_decay": spec.weight_decay, "lr": spec.head_lr or spec.lr}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=spec.lr, foreach=False)

    def _run_stage(self, stage: int, state: dict, log: JsonlLogger, checkpoint: Path | None) -> None:
        spec, ctx = self.spec, self.ctx
        stage_tasks = self.stages[stage]
        sizes = [len(self.train_data[n]) for n in stage_tasks]
        mixer = TaskMixer(sizes, spec.mixing, spec.temperature, seed=spec.seed, stage=stage)
        optimizer = self._optimizer(stage_tasks)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_multiplier(spec.schedule, spec.steps, spec.warmup_steps, spec.decay_steps, spec.min_lr_ratio))
        if checkpoint is not None and state["stage_step"] > 0:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            mixer.load_state_dict(state["mixer"])
            torch.set_rng_state(state["rng"])
        else:
            state.update(stage=stage, stage_step=0, best_score=None, best_step=None)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        model = self.model
        if ctx.enabled:
            model = DistributedDataParallel(self.model, find_unused_parameters=True, broadcast_buffers=False)
        micro = spec.batch_size
        global_batch = micro * spec.grad_accum_steps * ctx.world_size
        if ctx.is_main:
            print(f"stage {stage + 1}/{len(self.stages)} ({', '.join(stage_tasks)}): {spec.steps} steps of "
                  f"{global_batch} examples ({ctx.world_size} process(es) × {spec.grad_accum_steps} micro-batches "
                  f"× {micro}), mixing {dict(zip(stage_tasks, mixer.probabilities.round(3).tolist()))}")
        autocast = (torch.autocast(ctx.device.type, dtype=torch.bfloat16) if spec.bf16 else nullcontext())
        self.model.train()
        bar = tqdm(total=spec.steps, initial=state["stage_step"], desc=f"stage {stage + 1}", disable=not
                   (self.progress and ctx.is_main), dynamic_ncols=True)
        while state["stage_step"] < spec.steps:
            step = state["stage_step"]
            drawn = mixer.draw(step, global_batch)
            mine = [drawn[(ctx.rank * spec.grad_accum_steps + j) * micro:][:micro] for j in range(spec.grad_accum_steps)]
            batches = [self.model.collate([self.train_data[stage_tasks[t]][i] for t, i in chunk],
                                          [stage_tasks[t] for t, _ in chunk]) for chunk in mine]
            local_units = sum(self.model.count_units(b) for b in batches)
            (total_units,) = ctx.all_reduce_sum([float(local_units)])
            loss_sum = 0.0
            for j, batch in enumerate(batches):
                sync = j == len(batches) - 1 or not ctx.enabled
                with (nullcontext() if sync else model.no_sync()), autocast:
                    summed, _ = model(batch)
                    loss = summed * (ctx.world_size / max(total_units, 1.0))
                    aux = self.model.adapted.auxiliary_loss()
                    if aux is not None and spec.aux_loss_weight > 0:
                        loss = loss + spec.aux_loss_weight * aux / len(batches)
                loss.backward()
                loss_sum += summed.item()
            for p in params:  # a parameter no sample reached gets a zero gradient, as DDP would give it
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            grad_norm = (torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm).item()
                         if spec.max_grad_norm else None)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["stage_step"] += 1
            state["global_step"] += 1
            (loss_total,) = ctx.all_reduce_sum([loss_sum])
            bar.update(1)
            bar.set_postfix(loss=f"{loss_total / max(total_units, 1):.4f}", lr=f"{lr:.2e}")
            done = state["stage_step"] == spec.steps
            if state["stage_step"] % spec.log_every == 0 or done:
                log.log({"step": state["global_step"], "stage": stage + 1, "loss": loss_total / max(total_units, 1),
                         "lr": lr, "grad_norm": grad_norm, "time": time.time()})
            if spec.eval_every and (state["stage_step"] % spec.eval_every == 0 or done):
                self._eval_and_keep_best(state, log)
            if (spec.save_every and state["stage_step"] % spec.save_every == 0) or done:
                state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                             mixer=mixer.state_dict(), rng=torch.get_rng_state())
                if done:
                    bar.close()
                    self._end_stage(state, log)
                self._save_checkpoint(state)
        bar.close()
        self.model.eval()

    def _evaluate(self, data: dict, final: bool = False, task_id="own") -> dict:
        results = {}
        if self.ctx.is_main:
            ev = self.config.evaluation
            results = evaluate_tasks(self.model, data, batch_size=ev.batch_size, scoring=ev.scoring,
                                     max_new_tokens=ev.max_new_tokens, task_id=task_id,
                                     progress=self.progress and final)
        self.ctx.barrier()
        return results

    def _eval_and_keep_best(self, state: dict, log: JsonlLogger) -> None:
        stage_tasks = self.stages[state["stage"]]
        data = {n: self.eval_data[n] for n in stage_tasks}
        results = self._evaluate(data)
        if not self.ctx.is_main:
            return
        score = primary_average(results, [self.eval_data[n][0] for n in stage_tasks])
        log.log({"step": state["global_step"], "split": "validation", "eval": results, "average": score})
        tqdm.write(f"step {state['global_step']}: validation " + ", ".join(
            f"{n} {self.eval_data[n][0].metric}={results[n][self.eval_data[n][0].metric]:.4f}" for n in stage_tasks))
        if self.spec.keep_best and score is not None and (state["best_score"] is None or score > state["best_score"]):
            state["best_score"], state["best_step"] = score, state["global_step"]
            _replace_dir(lambda tmp: self.model.save(tmp), self.output_dir / "best")

    def _end_stage(self, state: dict, log: JsonlLogger) -> None:
        """After a stage: with keep-best (one stage), go back to the best weights; then score every task
        (the row of the forgetting matrix)."""
        best = self.output_dir / "best"
        if len(self.stages) == 1 and self.spec.keep_best and state["best_step"] is not None and best.is_dir():
            if state["best_step"] != state["global_step"]:
                self.model.load_weights(best)
                if self.ctx.is_main:
                    print(f"keep-best: restored the weights of step {state['best_step']} "
                          f"(validation average {state['best_score']:.4f})")
        results = self._evaluate(self.test_data, final=True)
        state["stage_results"] = state["stage_results"][: state["stage"]] + [results]
        if self.ctx.is_main:
            log.log({"step": state["global_step"], "stage": state["stage"] + 1, "split": self.config.evaluation.split,
                     "eval": results, "average": primary_average(results, self.tasks)})

    def _finish(self, state: dict) -> dict[str, Any]:
        after = state["stage_results"][-1]
        zero_shot = self._evaluate(self.zero_shot_data, final=True, task_id=None) if self.zero_shot else {}
        results = {
            "split": self.config.evaluation.split,
            "tasks": [t.describe() for t in self.tasks],
            "before": state["before"],
            "after": after,
            "average": {"before": primary_average(state["before"], self.tasks) if state["before"] else None,
                        "after": primary_average(after, self.tasks)},
            "zero_shot": zero_shot,
            "zero_shot_before": state.get("zero_shot_before") or {},
            "best_step": state["best_step"],
            "steps": state["global_step"],
            "stages": self.stages,
        }
        if len(self.stages) > 1:
            results["forgetting_matrix"] = forgetting_matrix(state["stage_results"], self.tasks)
        if self.ctx.is_main:
            final = self.output_dir / "final"
            _replace_dir(lambda tmp: self.model.save(tmp), final)
            write_json(self.output_dir / "results.json", results)
            report = self._report(results)
            (self.output_dir / "results.md").write_text(report + "\n")
            print("\n" + report)
            print(f"\nadapter and heads: {final}   results: {self.output_dir / 'results.json'}")
        return results

    def _report(self, results: dict) -> str:
        columns = {}
        if results["before"]:
            columns["before"] = results["before"]
        columns["after"] = results["after"]
        parts = [f"## Per-task scores ({results['split']} split; ×100 where a score is in [-1, 1])", "",
                 scores_table(columns, self.tasks)]
        if results["zero_shot"]:
            zs = {"before": results["zero_shot_before"]} if results["zero_shot_before"] else {}
            parts += ["", "## Zero-shot (unseen-task embedding)", "",
                      scores_table({**zs, "after": results["zero_shot"]}, self.zero_shot)]
        if "forgetting_matrix" in results:
            matrix = results["forgetting_matrix"]
            parts += ["", "## Forgetting matrix", "", forgetting_markdown(matrix, self.stages, self.tasks)]
            plot_forgetting(matrix, self.stages, self.tasks, self.output_dir / "forgetting.png")
            parts += ["", "![forgetting](forgetting.png)"]
        return "\n".join(parts)


def train(config: RunConfig, *, data_dir=None, output_dir=None, resume: bool = False, progress: bool = True,
          device: str | None = None) -> dict[str, Any]:
    """Run ``moore train``; returns the results (also written to OUTPUT_DIR/results.json)."""
    return Trainer(config, data_dir=data_dir, output_dir=output_dir, progress=progress, device=device).run(resume)
