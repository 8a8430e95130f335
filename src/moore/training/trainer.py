"""``moore train``: multi-task (and sequential) adaptation, with checkpoints that resume exactly.

One optimizer step reads a global batch of ``batch_size × grad_accum_steps × world_size``
examples drawn by the task mixer; each process takes its own ``grad_accum_steps`` micro-batches
of it. Losses are sums over units (samples, or answer tokens for decoders) divided by the global
unit count, so accumulation and any number of processes give the gradient of the same global batch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..data.tasks import Task
from ..evaluation import evaluate_tasks, forgetting_matrix, primary_average, results_markdown
from ..errors import TrainingDivergedError
from ..hub import check_model_source
from ..io import write_json
from ..multitask import MultiTaskModel
from ..precision import warn_if_bf16_is_slow
from ..runconfig import ConfigError, RunConfig, build_tasks, check_data
from .checkpoints import (
    TrainerState,
    CONFIG_NAME,
    LOG_NAME,
    STATE_NAME,
    JsonlLog,
    claim_run_folder,
    config_differences,
    latest_checkpoint,
    prune_checkpoints,
    replace_dir,
)
from .distributed import DistributedContext, init_distributed, shutdown
from .mixing import TaskMixer
from .sharding import (
    as_float,
    full_parameters,
    is_sharded,
    load_full_state,
    load_optimizer_state,
    optimizer_state,
    shard,
)
from .schedules import lr_multiplier

logger = logging.getLogger(__name__)


def validation_sets(config: RunConfig, tasks: list[Task], zero_shot: list[Task], data_dir: Path,
                    seed: int) -> tuple[dict, dict]:
    """What a run validates on at every evaluation: each task's validation subset, and (with
    ``evaluation.track_zero_shot``) each zero-shot probe's, both drawn with the run's seed."""
    specs = {s.name: s for s in config.tasks}
    validation = {t.name: (t, t.load(data_dir, "validation", seed=seed,
                                     limit=specs[t.name].max_validation or specs[t.name].max_eval))
                  for t in tasks}
    zs = {s.name: s for s in config.evaluation.zero_shot}
    zero_shot_validation = {t.name: (t, t.load(data_dir, "validation", limit=zs[t.name].max_eval, seed=seed))
                            for t in zero_shot} if config.evaluation.track_zero_shot else {}
    return validation, zero_shot_validation


class Trainer:
    def __init__(self, config: RunConfig, *, data_dir: Path | None = None, output_dir: str | Path | None = None,
                 progress: bool = True, device: str | None = None):
        self.config = config
        self.spec = config.training
        self.data_dir = config.resolved_data_dir(data_dir)
        self.output_dir = Path(output_dir or config.output_dir)
        self.progress = progress
        self.tasks: list[Task] = build_tasks(config.tasks, config._base_dir)
        self.zero_shot: list[Task] = build_tasks(config.evaluation.zero_shot, config._base_dir)
        self.stages = config.stages or [[t.name for t in self.tasks]]
        eval_split = config.evaluation.split
        # everything a user can get wrong is refused here, before a process group or a model exists
        check_model_source(config.model.name_or_path, config.model.gguf_file)
        check_data(self.tasks, self.data_dir, ("train", "validation", eval_split))
        check_data(self.zero_shot, self.data_dir,
                   (eval_split, "validation") if config.evaluation.track_zero_shot else (eval_split,))
        self.ctx: DistributedContext = init_distributed(device)
        self.model: MultiTaskModel | None = None

    # --- data ---------------------------------------------------------------------------------
    def _load_data(self) -> None:
        seed = self.spec.seed
        specs = {s.name: s for s in self.config.tasks}
        self.train_data = {t.name: t.load(self.data_dir, "train", limit=specs[t.name].max_train, seed=seed)
                           for t in self.tasks}
        self.eval_data, self.zero_shot_validation = validation_sets(self.config, self.tasks, self.zero_shot,
                                                                    self.data_dir, seed)
        # test subsets do not follow the run's seed: every seed scores the same examples, so runs pair up
        split = self.config.evaluation.split
        self.test_data = {t.name: (t, t.load(self.data_dir, split, limit=specs[t.name].max_eval, seed=0))
                          for t in self.tasks}
        self.test_predictions: dict[str, list] = {}  # filled by the last stage's test scoring
        self.zero_shot_predictions: dict[str, list] = {}  # filled by the final zero-shot scoring
        zs = {s.name: s for s in self.config.evaluation.zero_shot}
        self.zero_shot_data = {t.name: (t, t.load(self.data_dir, split, limit=zs[t.name].max_eval, seed=0))
                               for t in self.zero_shot}
        for name, examples in self.train_data.items():
            logger.info("task %s: %d train, %d validation, %d %s examples", name, len(examples),
                        len(self.eval_data[name][1]), len(self.test_data[name][1]), split)

    # --- the run folder -------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.checkpoint_dir)

    def _checkpoint_to_resume(self, resume: bool) -> Path | None:
        """The checkpoint ``--resume`` continues from, once its config is known to be this run's."""
        if not resume:
            return None
        checkpoint = self.latest_checkpoint()
        saved_config = next((p / CONFIG_NAME for p in (checkpoint, self.output_dir)
                             if p is not None and (p / CONFIG_NAME).is_file()), None)
        if saved_config is not None:
            saved = json.loads(saved_config.read_text())
            try:  # through today's schema: fields added since the checkpoint take their defaults on both sides
                saved = RunConfig.model_validate(saved).model_dump(mode="json")
            except ValidationError:
                pass  # a config today's schema refuses: compare it as written
            changed = config_differences(saved, self.config.model_dump(mode="json"))
            if changed:
                raise ConfigError(
                    f"--resume: the config differs from the one {saved_config.parent} was trained with, in ways "
                    "that change the run:\n  " + "\n  ".join(changed) + "\nrestore those settings, or start a new "
                    "run (another --output-dir, or --overwrite)")
        if checkpoint is None:
            logger.warning("--resume: no checkpoint under %s; starting from scratch", self.checkpoint_dir)
        return checkpoint

    def _restore(self, checkpoint: Path | None, log: JsonlLog) -> TrainerState:
        if checkpoint is None:
            log.truncate_after(-1)
            return TrainerState(world_size=self.ctx.world_size)
        state = TrainerState.from_dict(torch.load(checkpoint / STATE_NAME, map_location="cpu", weights_only=True))
        if state.world_size != self.ctx.world_size:
            raise ConfigError(f"--resume: {checkpoint} was written by {state.world_size} process(es) and this run has "
                              f"{self.ctx.world_size}; the global batch would change. Resume with "
                              f"--nproc_per_node {state.world_size}")
        self.model.load_weights(checkpoint / "model")
        log.truncate_after(state.global_step)
        if self.ctx.is_main:
            print(f"resuming from {checkpoint} at step {state.global_step}")
        return state

    @property
    def sharded(self) -> bool:
        return self.model is not None and is_sharded(self.model)

    def _whole(self):
        """The weights whole on every process while they are saved or scored (FSDP); a no-op otherwise."""
        return full_parameters(self.model) if self.sharded else nullcontext()

    def _save_checkpoint(self, state: TrainerState, optimizer, scheduler, mixer) -> None:
        state.optimizer = optimizer_state(self.model, optimizer) if self.sharded else optimizer.state_dict()
        state.scheduler, state.mixer = scheduler.state_dict(), mixer.state_dict()
        state.rng = self.ctx.gather_object(torch.get_rng_state())
        if self.ctx.device.type == "cuda":
            state.cuda_rng = self.ctx.gather_object(torch.cuda.get_rng_state(self.ctx.device))
        with self._whole():
            self._check_weights_finite(state)
            if self.ctx.is_main:
                def build(tmp: Path) -> None:
                    self.model.save(tmp / "model")
                    torch.save(asdict(state), tmp / STATE_NAME)  # plain tensors and numbers: loads with weights_only
                    (tmp / "trainer_state.json").write_text(json.dumps(state.summary(), indent=2) + "\n")
                    (tmp / CONFIG_NAME).write_text(self.config.model_dump_json(indent=2) + "\n")

                replace_dir(build, self.checkpoint_dir / f"step-{state.global_step:07d}")
                prune_checkpoints(self.checkpoint_dir, self.spec.keep_checkpoints)
        self.ctx.barrier()

    def _check_weights_finite(self, state: TrainerState) -> None:
        bad = [n for n, p in self.model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
        if bad:
            raise self._diverged(state, f"{len(bad)} trained tensor(s) hold NaN or Inf values, e.g. {bad[0]}")

    def _diverged(self, state: TrainerState, what: str) -> TrainingDivergedError:
        last = self.latest_checkpoint()
        return TrainingDivergedError(
            f"training diverged at step {state.global_step + 1}: {what} (lr {self.spec.lr:g}). Nothing non-finite was "
            f"saved; the last good checkpoint is {last or 'none'}. Lower training.lr (or add warmup_steps, set "
            "max_grad_norm) and start again with --overwrite")

    # --- the run ------------------------------------------------------------------------------
    def run(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        lock = claim_run_folder(self.output_dir, self.ctx, resume=resume, overwrite=overwrite)
        try:
            torch.manual_seed(self.spec.seed)
            if self.spec.bf16:
                warn_if_bf16_is_slow(self.ctx.device, "training.bf16")
            self._load_data()  # data errors surface before any model loads
            checkpoint = self._checkpoint_to_resume(resume)
            self.model = MultiTaskModel.build(
                self.config.model, self.config.adapter, self.tasks, task_specs=self.config.tasks,
                gradient_checkpointing=self.spec.gradient_checkpointing,
            ).to(self.ctx.device)
            if self.ctx.is_main:
                (self.output_dir / CONFIG_NAME).write_text(self.config.model_dump_json(indent=2) + "\n")
                self.model.adapted.print_trainable_parameters()
            log = JsonlLog(self.output_dir / LOG_NAME, self.ctx.is_main, self.spec.tensorboard)
            state = self._restore(checkpoint, log)

            eval_spec = self.config.evaluation
            if eval_spec.before and state.before is None:
                state.before = self._evaluate(self.test_data, final=True)
                # every method starts as the base model, so this is the base model's own zero-shot skill
                state.zero_shot_before = self._evaluate(self.zero_shot_data, final=True, task_id=None)
                log.log({"step": 0, "split": eval_spec.split, "before": state.before,
                         "zero_shot_before": state.zero_shot_before})

            resumed_stage = state.stage if checkpoint is not None else None
            for stage in range(state.stage, len(self.stages)):
                self._run_stage(stage, state, log, resuming=stage == resumed_stage)
            return self._finish(state)
        finally:
            if lock is not None:
                lock.release()
            shutdown(self.ctx)

    def _optimizer(self, stage_tasks: list[str]) -> torch.optim.Optimizer:
        spec = self.spec
        heads = [p for name, head in self.model.heads.items() if name in stage_tasks for p in head.parameters()]
        head_ids = {id(p) for h in self.model.heads.values() for p in h.parameters()}
        adapter = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in head_ids]
        groups = []
        for lr in [spec.lr, *sorted(set(spec.param_lrs.values()))]:  # param_lrs: a rate by parameter name
            mine = [p for n, p in adapter if spec.param_lrs.get(n.rsplit(".", 1)[-1], spec.lr) == lr]
            groups += [{"params": [p for p in mine if p.dim() >= 2], "weight_decay": spec.weight_decay, "lr": lr},
                       {"params": [p for p in mine if p.dim() < 2], "weight_decay": 0.0, "lr": lr}]
        groups.append({"params": heads, "weight_decay": spec.weight_decay, "lr": spec.head_lr or spec.lr})
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=spec.lr, foreach=False)

    def _run_stage(self, stage: int, state: TrainerState, log: JsonlLog, resuming: bool) -> None:
        spec, ctx = self.spec, self.ctx
        stage_tasks = self.stages[stage]
        mixer = TaskMixer([len(self.train_data[n]) for n in stage_tasks], spec.mixing, spec.temperature,
                          seed=spec.seed, stage=stage)
        if ctx.enabled and spec.parallelism == "fsdp":
            shard(self.model)  # before the optimizer, which must hold the shards
        optimizer = self._optimizer(stage_tasks)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_multiplier(spec.schedule, spec.steps, spec.warmup_steps, spec.decay_steps, spec.min_lr_ratio))
        if resuming and state.stage_step > 0:
            if self.sharded:
                load_optimizer_state(self.model, optimizer, state.optimizer)
            else:
                optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            mixer.load_state_dict(state.mixer)
            torch.set_rng_state(state.rng[ctx.rank])
            if state.cuda_rng is not None and ctx.device.type == "cuda":
                torch.cuda.set_rng_state(state.cuda_rng[ctx.rank], ctx.device)
        else:
            state.stage, state.stage_step, state.best_score, state.best_step = stage, 0, None, None
        params = [p for g in optimizer.param_groups for p in g["params"]]
        model = self.model
        if ctx.enabled and not self.sharded:
            model = DistributedDataParallel(self.model, find_unused_parameters=True, broadcast_buffers=False)
        global_batch = spec.batch_size * spec.grad_accum_steps * ctx.world_size
        if ctx.is_main:
            print(f"stage {stage + 1}/{len(self.stages)} ({', '.join(stage_tasks)}): {spec.steps} steps of "
                  f"{global_batch} examples ({ctx.world_size} process(es){' sharded by FSDP' if self.sharded else ''} × "
                  f"{spec.grad_accum_steps} micro-batches "
                  f"× {spec.batch_size}), mixing {dict(zip(stage_tasks, mixer.probabilities.round(3).tolist()))}")
        self.model.train()
        bar = tqdm(total=spec.steps, initial=state.stage_step, desc=f"stage {stage + 1}", disable=not
                   (self.progress and ctx.is_main), dynamic_ncols=True)
        while state.stage_step < spec.steps:
            started = time.time()
            batches = self._batches(mixer, stage_tasks, state.stage_step, global_batch)
            lr = optimizer.param_groups[0]["lr"]
            loss, grad_norm = self._step(model, batches, params, state)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.stage_step += 1
            state.global_step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            done = state.stage_step == spec.steps
            if state.stage_step % spec.log_every == 0 or done:
                log.log({"step": state.global_step, "stage": stage + 1, "loss": loss, "lr": lr,
                         "grad_norm": grad_norm, "time": time.time()})
            if spec.eval_every and (state.stage_step % spec.eval_every == 0 or done):
                self._eval_and_keep_best(state, log)
            state.seconds += time.time() - started
            # the last step's checkpoint comes before the stage's test scoring (an hour on a decoder
            # suite): a crash there resumes to the scoring, not to the last periodic checkpoint
            if done or (spec.save_every and state.stage_step % spec.save_every == 0):
                self._save_checkpoint(state, optimizer, scheduler, mixer)
        bar.close()
        if len(state.stage_results) <= stage:  # the stage's end, also when resumed from its last step
            started = time.time()
            self._end_stage(state, log)
            state.seconds += time.time() - started
            self._save_checkpoint(state, optimizer, scheduler, mixer)  # with its test scores: a resume skips them
        self.model.eval()

    def _batches(self, mixer: TaskMixer, stage_tasks: list[str], step: int, global_batch: int) -> list[dict]:
        """This process's micro-batches of the step's global batch (the same draw on every process)."""
        spec, rank = self.spec, self.ctx.rank
        drawn = mixer.draw(step, global_batch)
        micro = spec.batch_size
        mine = [drawn[(rank * spec.grad_accum_steps + j) * micro:][:micro] for j in range(spec.grad_accum_steps)]
        batches = []
        for chunk in mine:
            examples = [self.train_data[stage_tasks[t]][i] for t, i in chunk]
            names = [stage_tasks[t] for t, _ in chunk]
            batches += self._length_buckets(examples, names)
        return batches

    def _length_buckets(self, examples: list, names: list[str]) -> list[dict]:
        """One micro-batch, as ``length_buckets`` batches of examples of similar token length. Losses
        are sums over units divided by the step's unit count, so the gradient is the micro-batch's;
        a mixed-task batch padded whole is mostly padding (NLU: a third of its tokens are real)."""
        batch = self.model.collate(examples, names)
        pieces = min(self.spec.length_buckets, len(examples))
        if pieces == 1:
            return [batch]
        lengths = batch["inputs"]["attention_mask"].sum(-1).tolist()
        order = sorted(range(len(examples)), key=lengths.__getitem__)
        size, extra = divmod(len(order), pieces)  # near-equal contiguous parts, as numpy's array_split
        bounds = [k * size + min(k, extra) for k in range(pieces + 1)]
        return [self.model.collate([examples[i] for i in order[a:b]], [names[i] for i in order[a:b]])
                for a, b in zip(bounds, bounds[1:])]

    def _step(self, model, batches: list[dict], params: list, state: TrainerState) -> tuple[float, float]:
        """Forward and backward over the micro-batches, then clipping; (mean loss, gradient norm).
        A non-finite loss or gradient norm stops the run before the optimizer can use it."""
        spec, ctx = self.spec, self.ctx
        autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16) if spec.bf16 else nullcontext()
        (total_units,) = ctx.all_reduce_sum([float(sum(self.model.count_units(b) for b in batches))])
        loss_sum = 0.0
        for j, batch in enumerate(batches):
            sync = j == len(batches) - 1 or not ctx.enabled
            if self.sharded:  # FSDP reduces the gradients of the last micro-batch only
                model.set_requires_gradient_sync(sync)
            with (nullcontext() if sync or self.sharded else model.no_sync()), autocast:
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
        if spec.max_grad_norm:
            grad_norm = as_float(torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm))
        else:
            grad_norm = as_float(torch.nn.utils.get_total_norm([p.grad for p in params]))
        (loss_total,) = ctx.all_reduce_sum([loss_sum])
        loss_mean = loss_total / max(total_units, 1)
        if not (math.isfinite(loss_mean) and math.isfinite(grad_norm)):
            raise self._diverged(state, f"the loss is {loss_mean} and the gradient norm {grad_norm}")
        return loss_mean, grad_norm

    def _evaluate(self, data: dict, final: bool = False, task_id="own", predictions: dict | None = None) -> dict:
        """Scores on rank 0, handed to every rank, so that all ranks take the same decisions. Under
        FSDP every rank runs the same evaluation: a forward gathers each block from all of them.
        ``predictions`` (rank 0): filled with each task's predictions from the same pass."""
        results = {}
        if self.ctx.is_main or self.sharded:
            ev = self.config.evaluation
            with self._whole():
                results = evaluate_tasks(self.model, data, batch_size=ev.batch_size, scoring=ev.scoring,
                                         max_new_tokens=ev.max_new_tokens, task_id=task_id,
                                         progress=self.progress and final and self.ctx.is_main, predictions=predictions,
                                         bf16=ev.bf16)
        return self.ctx.broadcast_object(results)

    def _eval_and_keep_best(self, state: TrainerState, log: JsonlLog) -> None:
        stage_tasks = self.stages[state.stage]
        results = self._evaluate({n: self.eval_data[n] for n in stage_tasks})
        score = primary_average(results, [self.eval_data[n][0] for n in stage_tasks])
        record = {"step": state.global_step, "split": "validation", "eval": results, "average": score}
        if self.config.evaluation.track_zero_shot and self.zero_shot:  # forgetting, step by step
            record["zero_shot"] = self._evaluate(self.zero_shot_validation, task_id=None)
        if self.ctx.is_main:
            log.log(record)
            tqdm.write(f"step {state.global_step}: validation " + ", ".join(
                f"{n} {self.eval_data[n][0].metric}={results[n][self.eval_data[n][0].metric]:.4f}" for n in stage_tasks))
        improved = score is not None and math.isfinite(score) and (state.best_score is None or score > state.best_score)
        if self.spec.keep_best and improved:
            with self._whole():
                self._check_weights_finite(state)
                state.best_score, state.best_step = score, state.global_step
                if self.ctx.is_main:
                    replace_dir(lambda tmp: self.model.save(tmp), self.output_dir / "best")
            self.ctx.barrier()

    def _end_stage(self, state: TrainerState, log: JsonlLog) -> None:
        """After a stage: with keep-best (one stage), go back to the best weights on every rank; then
        score every task (the row of the forgetting matrix)."""
        best = self.output_dir / "best"
        if (len(self.stages) == 1 and self.spec.keep_best and state.best_step is not None
                and state.best_step != state.global_step):
            if self.sharded:  # rank 0 reads them whole; every rank takes its shard
                load_full_state(self.model, self.model.saved_weights(best) if self.ctx.is_main else {})
            else:
                if self.ctx.is_main:
                    self.model.load_weights(best)
                # rank 0 read them; the others take its copy, so every replica ends identical
                self.ctx.broadcast_tensors([p for p in self.model.parameters() if p.requires_grad])
            if self.ctx.is_main:
                print(f"keep-best: restored the weights of step {state.best_step} "
                      f"(validation average {state.best_score:.4f})")
        self.test_predictions = {}  # this stage's test predictions (rank 0), from the scoring pass below
        results = self._evaluate(self.test_data, final=True, predictions=self.test_predictions)
        state.stage_results = state.stage_results[: state.stage] + [results]
        if self.ctx.is_main:
            log.log({"step": state.global_step, "stage": state.stage + 1, "split": self.config.evaluation.split,
                     "eval": results, "average": primary_average(results, self.tasks)})

    def _finish(self, state: TrainerState) -> dict[str, Any]:
        if not self.sharded:  # under FSDP each process holds its own shard by design
            self.ctx.check_replicas_agree([p for p in self.model.parameters() if p.requires_grad])
        after = state.stage_results[-1]
        self.zero_shot_predictions = {}
        zero_shot = self._evaluate(self.zero_shot_data, final=True, task_id=None,
                                   predictions=self.zero_shot_predictions) if self.zero_shot else {}
        results = {
            "split": self.config.evaluation.split,
            "tasks": [t.describe() for t in self.tasks],
            "before": state.before,
            "after": after,
            "average": {"before": primary_average(state.before, self.tasks) if state.before else None,
                        "after": primary_average(after, self.tasks)},
            "zero_shot": zero_shot,
            "zero_shot_before": state.zero_shot_before or {},
            "best_step": state.best_step,
            "steps": state.global_step,
            "seconds": state.seconds,
            "stages": self.stages,
        }
        if len(self.stages) > 1:
            results["forgetting_matrix"] = forgetting_matrix(state.stage_results, self.tasks)
        final = self.output_dir / "final"
        with self._whole():
            if self.ctx.is_main:
                replace_dir(lambda tmp: self.model.save(tmp), final)
        if self.ctx.is_main:
            write_json(self.output_dir / "results.json", results)
            report = results_markdown(results, self.tasks, self.zero_shot, self.stages, self.output_dir)
            (self.output_dir / "results.md").write_text(report + "\n")
            print("\n" + report)
            print(f"\nadapter and heads: {final}   results: {self.output_dir / 'results.json'}")
        self.ctx.barrier()  # no rank tears the process group down while rank 0 still writes (gloo aborts)
        return results


def train(config: RunConfig, *, data_dir=None, output_dir=None, resume: bool = False, overwrite: bool = False,
          progress: bool = True, device: str | None = None) -> dict[str, Any]:
    """Run ``moore train``; returns the results (also written to OUTPUT_DIR/results.json).

    A non-empty output folder is refused unless ``resume`` (continue the run there, with the same
    config) or ``overwrite`` (replace it)."""
    trainer = Trainer(config, data_dir=data_dir, output_dir=output_dir, progress=progress, device=device)
    return trainer.run(resume=resume, overwrite=overwrite)
