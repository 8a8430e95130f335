"""The benchmark suites and the one list of compared methods.

A suite is plain data: the run config every method shares, the methods (in the order the report
shows them), and what the report says about how the suite was cut down. Peers marked ``budget``
are sized to the suite's reference method (MoORE-L8) with ``moore.match_budget``.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field, replace
from typing import Any

from ..budget import count_trainable_parameters, match_budget
from ..config import AdapterConfig
from ..precision import bf16_is_native
from ..layers import (
    FullFinetuneConfig,
    HraConfig,
    HydraLoraConfig,
    LoraConfig,
    LoraMoeConfig,
    MixLoraConfig,
    MooreConfig,
    MosldConfig,
    MtlLoraConfig,
    OmoeConfig,
)

REFERENCE = "moore-L8"  # the method every peer's budget is matched to, and the report's subject
# families of methods: what the report compares with what
OURS, PEER, FULL, ABLATION = "ours", "peer", "full-model", "ablation"


@dataclass(frozen=True)
class Method:
    """One row of a suite: an adapter config (as a dict) and how the suite treats it.

    family: FULL (every weight trains), PEER (a compared adapter), OURS (MoORE and its variants),
        or ABLATION (MoORE with parts switched off, paper Table 13).
    budget: size the adapter to the reference method's trainable-parameter count.
    lr: a learning rate of its own (full fine-tuning); None takes the suite's.
    label: how the ablation table names it.
    """

    adapter: dict[str, Any]
    family: str
    budget: bool = False
    lr: float | None = None
    label: str = ""


def compared_methods(moore: dict[str, Any], num_experts: int) -> dict[str, Method]:
    """Full fine-tuning, every peer sized to MoORE-L8's budget, and MoORE with L = 0 and 8."""
    experts = {"num_experts": num_experts}
    return {
        "full": Method({"method": FullFinetuneConfig.method}, FULL, lr=5e-5),
        "lora": Method({"method": LoraConfig.method}, PEER, budget=True),
        "hra": Method({"method": HraConfig.method}, PEER, budget=True),
        "loramoe": Method({"method": LoraMoeConfig.method, **experts}, PEER, budget=True),
        "mixlora": Method({"method": MixLoraConfig.method, **experts, "top_k": 2}, PEER, budget=True),
        "mosld": Method({"method": MosldConfig.method, **experts}, PEER, budget=True),
        "hydralora": Method({"method": HydraLoraConfig.method, **experts}, PEER, budget=True),
        "mtl_lora": Method({"method": MtlLoraConfig.method, **experts}, PEER, budget=True),
        "omoe": Method({"method": OmoeConfig.method, **experts}, PEER, budget=True),
        "moore-L0": Method({**moore, "num_reflections": 0}, OURS),
        REFERENCE: Method({**moore, "num_reflections": 8}, OURS, label="all three (MoORE, L = 8)"),
    }


def ablation(moore: dict[str, Any]) -> dict[str, Method]:
    """Paper Table 13: task routing only, sample routing only, reflections only (all three = MoORE-L8)."""
    dt, ds = moore["task_dim"], moore["sample_dim"]
    return {
        "ablation-task-only": Method({**moore, "task_dim": dt, "sample_dim": 0, "num_reflections": 0}, ABLATION,
                                     label="task routing only"),
        "ablation-sample-only": Method({**moore, "task_dim": 0, "sample_dim": ds, "num_reflections": 0}, ABLATION,
                                       label="sample routing only"),
        "ablation-reflections-only": Method({**moore, "task_dim": 0, "sample_dim": 0, "num_reflections": 8},
                                            ABLATION, label="reflections only"),
    }


@dataclass(frozen=True)
class Study:
    """How a suite is run as a study (``bench/study.py``): its grids, seeds and which methods get what."""

    grids: dict[str, tuple[float, ...]]  # family -> learning rates; FULL, and "adapter" for the others
    main_methods: tuple[str, ...]  # run at every seed (with the best peer of the grid)
    single_methods: tuple[str, ...]  # also trained one task at a time
    seeds: tuple[int, ...] = (0, 1, 2)
    convergence: dict[str, float] = field(default_factory=dict)  # method -> rate of its long run
    convergence_steps: int = 4000
    eval_every: int = 200
    # the other phases' validation (and zero-shot) curves, where evaluation costs more than training
    # (option scoring on a decoder); None: eval_every
    curve_every: int | None = None
    plateau: float = 0.005  # a validation average within this of the best has stopped improving
    reflection_factors: tuple[float, ...] = (0.1, 0.3)  # MoORE-L8's reflections at lr × these
    grid_fraction: float = 0.5  # selection runs are this share of the chosen steps
    # a winner at the grid's edge says only that the best rate may lie beyond it: try the next rate on
    # the 1-3-10 ladder past that edge, up to this many times per method (0: the grid as given)
    grid_extensions: int = 0
    tuned_methods: tuple[str, ...] = ()  # get a grid of their own; the others take lr_donor's rate
    # a tuned method's own rates where its family's grid does not fit it (method -> rates)
    method_grids: dict[str, tuple[float, ...]] = field(default_factory=dict)
    lr_donor: str = "lora"
    # phases trained in bf16 autocast (evaluation: ``evaluation.bf16``). With "precision", a precision run
    # repeats the reference's winning grid run in the other precision (fp32 if "grid" is here, else bf16),
    # so the report can set the fp32/bf16 gap against seed noise.
    bf16_phases: tuple[str, ...] = ()
    # phases whose batches train split by token length (``training.length_buckets``): the same gradient,
    # less padding. Not the grid and precision runs, which are compared with each other as they ran.
    length_buckets: int = 1
    length_bucket_phases: tuple[str, ...] = ()
    # the task-count curve: the single-task methods also trained on these subsets of the tasks, each
    # task with the examples it got in the full mixture (K = 1 and K = all come from the other phases)
    task_subsets: tuple[tuple[str, ...], ...] = ()
    # beyond the paper (bench/beyond.py): task-free inference on the reference's seed runs, and a task
    # added to the reference trained without it, from each of added_sizes examples, against LoRA
    task_free: bool = False
    added_task: str | None = None
    added_sizes: tuple[int, ...] = ()
    added_steps: int = 200
    added_lr: float = 1e-2

    def grid(self, family: str, method: str | None = None) -> tuple[float, ...]:
        if method in self.method_grids:
            return self.method_grids[method]
        return self.grids[FULL] if family == FULL else self.grids["adapter"]


def next_rate(lr: float, up: bool) -> float:
    """The neighbour of ``lr`` on the 1-3-10 ladder (1e-4 -> 3e-4 up, 3e-5 down); off the ladder, ×/÷ 3."""
    exponent = math.floor(math.log10(lr) + 1e-9)
    mantissa = lr / 10**exponent
    if math.isclose(mantissa, 1, rel_tol=1e-6):
        return float(f"3e{exponent}") if up else float(f"3e{exponent - 1}")
    if math.isclose(mantissa, 3, rel_tol=1e-6):
        return float(f"1e{exponent + 1}") if up else float(f"1e{exponent}")
    return lr * 3 if up else lr / 3


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    config: dict[str, Any]  # the run config every method shares (YAML sections, without adapter)
    methods: dict[str, Method]  # in the report's order
    routing_layer: str
    subsampling: str
    published_zero_shot: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: str = ""
    efficiency: dict[str, int] = field(default_factory=dict)  # batch_size, length of the efficiency run
    study: Study | None = None  # run as a study: converge, tune, repeat, single-task runs

    def family(self, row: str) -> str:
        """The family of a method or of a report row named after one ("moore-L8 (merged)")."""
        method = self.methods.get(row.split(" (")[0])
        return method.family if method else "base"


_MOORE_NLU = {"method": MooreConfig.method, "task_dim": 32, "sample_dim": 16}
_MOORE_CSR = {"method": MooreConfig.method, "task_dim": 64, "sample_dim": 32}

SUITES: dict[str, Suite] = {s.name: s for s in [
    Suite(
        name="nlu-mtl-mini",
        title="NLU-MTL-mini: all-MiniLM-L6-v2 on five GLUE tasks at once",
        config={
            "model": {"name_or_path": "minilm", "max_length": 64},
            "tasks": [{"name": n, "max_train": 1000, "max_eval": 300} for n in ("cola", "sst2", "mrpc", "rte", "qnli")],
            "training": {"steps": 200, "batch_size": 32, "lr": 3e-4, "weight_decay": 0.01, "schedule": "wsd",
                         "warmup_steps": 0.06, "decay_steps": 0.2, "mixing": "proportional", "seed": 0,
                         "log_every": 10, "head_lr": 3e-3, "save_every": 50},
            "evaluation": {"batch_size": 64, "split": "test", "zero_shot": [{"name": "stsbenchmark"}]},
        },
        methods={**compared_methods(_MOORE_NLU, 4), **ablation(_MOORE_NLU)},
        routing_layer="encoder.layer.3.attention.self.query",
        published_zero_shot={"stsbenchmark": {"spearman": 0.8203}},
        subsampling="1000 training examples per task (fixed seed), 300 scored per task (test split; CoLA, RTE: "
                    "GLUE dev; SST-2: GLUE dev; MRPC: its test file; QNLI: the held-out tenth of GLUE dev); "
                    "200 optimizer steps of 32; sequences cut at 64 tokens. STS Benchmark test in full.",
    ),
    Suite(
        name="csr-mtl-mini",
        title="CSR-MTL-mini: SmolLM2-135M-Instruct on four commonsense tasks at once",
        config={
            "model": {"name_or_path": "smollm2", "max_length": 160},
            "tasks": [{"name": n, "max_train": 400, "max_eval": 150} for n in ("arc-c", "arc-e", "boolq", "obqa")],
            "training": {"steps": 60, "batch_size": 8, "lr": 3e-4, "schedule": "wsd", "warmup_steps": 0.06,
                         "decay_steps": 0.2, "mixing": "proportional", "seed": 0, "log_every": 10, "save_every": 20},
            "evaluation": {"batch_size": 16, "split": "test", "scoring": "loglik",
                           "zero_shot": [{"name": "wikitext2", "max_eval": 200}, {"name": "sst2", "max_eval": 150},
                                         {"name": "rte", "max_eval": 150}]},
        },
        methods={**compared_methods(_MOORE_CSR, 4),
                 "moore-L8-rms": Method({**_MOORE_CSR, "num_reflections": 8, "normalize_sample_router": True},
                                        OURS)},
        notes="`moore-L8-rms` is not in the paper: MoORE-L8 whose token-level router sees x / rms(x) instead "
              "of x (`normalize_sample_router=True`). SmolLM2's first token carries a massive activation (its "
              "MLP input at layer 11 has norm ~3000 against a median of ~6), and the paper's linear router "
              "gives it offsets of the size of the singular values themselves.",
        routing_layer="model.layers.15.self_attn.q_proj",
        efficiency={"batch_size": 4, "length": 128},  # OMoE needs ~20 GB at 8 × 128
        subsampling="400 training examples per task (fixed seed), 150 scored per task (test split); "
                    "60 optimizer steps of 8 (480 examples, under a third of an epoch); sequences cut at 160 "
                    "tokens; WikiText-2 test: its first 200 lines; SST-2 and RTE zero-shot: 150 each. "
                    "Sized so that one method takes about 10 minutes on 2 CPU cores.",
    ),
]}


def _quick_bf16_phases(phases: tuple[str, ...]) -> tuple[str, ...]:
    """A quick suite's bf16 phases: the full suite's on a CPU with bf16 in hardware; elsewhere only the
    precision run, which still takes the bf16 path once. Emulated bf16 makes a step 15-18x slower
    (moore/precision.py), and a smoke test should take minutes on any CPU. The full suites never adapt:
    their precision is part of each run's record."""
    return phases if bf16_is_native("cpu") else tuple(p for p in phases if p == "precision")


def _nlu_mtl(quick: bool) -> Suite:
    """The NLU benchmark at convergence (issue: NLU-MTL at convergence). ``quick``: the same
    protocol on a few examples and steps, three methods, for a smoke test."""
    tasks = [{"name": "cola"}, {"name": "sst2", "max_train": 10000}, {"name": "mrpc"}, {"name": "rte"},
             {"name": "qnli"}]
    tasks = [{**t, "max_validation": 1000} for t in tasks]  # SST-2's dev set (6.7k) would dominate evaluation
    methods = compared_methods(_MOORE_NLU, 4)
    study = Study(grids={FULL: (2e-5, 5e-5, 1e-4), "adapter": (3e-4, 1e-3, 3e-3)},
                  main_methods=("moore-L8", "moore-L0", "lora", "full"), single_methods=("moore-L8", "lora", "full"),
                  tuned_methods=("moore-L8", "moore-L0", "lora", "full", "hra"),
                  # HRA trains nothing but Householder reflections, whose vectors Adam turns by ~1% of their
                  # length a step at 3e-4: at LoRA's rate it lost 26 zero-shot STS-B points by step 200 and
                  # never left CoLA's majority class, and MoORE-L8's own reflections chose 0.1x its rate
                  method_grids={"hra": (3e-5, 1e-4, 3e-4)},
                  convergence={"full": 5e-5, REFERENCE: 1e-3}, convergence_steps=4000, eval_every=200,
                  bf16_phases=("precision", "seed", "single", "taskcount"),  # bf16: 0.49x fp32 steps on this CPU
                  # 4 buckets: 0.55x the time of a step padded whole (benchmarks/length_buckets_speed.py)
                  length_buckets=4, length_bucket_phases=("seed", "single", "taskcount", "heldout", "addtask"),
                  task_subsets=(("cola", "sst2", "rte"),), task_free=True, added_task="rte",
                  added_sizes=(100, 1000))
    evaluation = {"batch_size": 128, "split": "test", "zero_shot": [{"name": "stsbenchmark"}], "track_zero_shot": True}
    if quick:
        tasks = [{**t, "max_train": 48, "max_eval": 16} for t in tasks[:3]]
        methods = {m: methods[m] for m in ("full", "lora", REFERENCE)}
        study = replace(study, grids={FULL: (5e-5,), "adapter": (1e-3,)}, main_methods=(REFERENCE,),
                        single_methods=(REFERENCE,), seeds=(0, 1), convergence_steps=4, eval_every=2,
                        reflection_factors=(0.1,), tuned_methods=(REFERENCE, "lora"), task_subsets=(("cola", "sst2"),),
                        added_task="mrpc", added_sizes=(20,), added_steps=3,
                        bf16_phases=_quick_bf16_phases(study.bf16_phases))
        evaluation["zero_shot"] = [{"name": "stsbenchmark", "max_eval": 16}]
        tasks = [{**t, "max_validation": 16} for t in tasks]
    return Suite(
        name="nlu-mtl-quick" if quick else "nlu-mtl",
        title="NLU-MTL: all-MiniLM-L6-v2 on five GLUE tasks at once, at convergence"
              + (" (quick smoke test)" if quick else ""),
        config={"model": {"name_or_path": "minilm", "max_length": 128}, "tasks": tasks,
                "training": {"batch_size": 8 if quick else 32, "weight_decay": 0.01, "schedule": "wsd",
                             "warmup_steps": 0.06, "decay_steps": 0.2, "mixing": "temperature", "temperature": 2.0,
                             "log_every": 50, "head_lr": 3e-3, "keep_checkpoints": 1},
                "evaluation": evaluation},
        methods=methods,
        routing_layer="encoder.layer.3.attention.self.query",
        published_zero_shot={"stsbenchmark": {"spearman": 0.8203}},
        subsampling="every training example of CoLA, MRPC, RTE and QNLI (QNLI: 80% of GLUE dev), SST-2 capped at "
                    "10,000; temperature mixing (T = 2); full test sets; validation (at most 1,000 per task) held "
                    "out of train where the data has none apart from its test set; sequences cut at 128 tokens.",
        study=study,
    )


SUITES.update({s.name: s for s in (_nlu_mtl(False), _nlu_mtl(True))})


def _csr_mtl(quick: bool) -> Suite:
    """The decoder benchmark with a signal (issue: CSR on SmolLM2 where the base model is above
    chance): the options' own texts scored as lm-evaluation-harness does, trained to convergence.
    ``quick``: the same protocol on a few examples and steps, three methods, for a smoke test."""
    # test: at most 1,000 a task (scoring four option texts costs ~0.3 s an example on one core)
    tasks = [{"name": n, "answer_format": "text", "max_train": 2000, "max_validation": 200, "max_eval": 1000}
             for n in ("arc-c", "arc-e", "boolq", "obqa")]
    methods = {**compared_methods(_MOORE_CSR, 4),
               "moore-L8-rms": Method({**_MOORE_CSR, "num_reflections": 8, "normalize_sample_router": True}, OURS)}
    study = Study(grids={FULL: (1e-5, 3e-5, 1e-4), "adapter": (1e-4, 3e-4, 1e-3)},
                  main_methods=("moore-L8", "moore-L8-rms", "lora", "full"), single_methods=(),
                  tuned_methods=("moore-L8", "lora", "full", "hra"), convergence={"full": 3e-5, REFERENCE: 3e-4},
                  # HRA one rung lower, as in NLU, where it collapsed at the adapters' rate (and on SmolLM2 in
                  # csr-mtl-mini, perplexity 44 -> 142,625 at 3e-4); it includes MoORE-L8's chosen 1e-4
                  method_grids={"hra": (3e-5, 1e-4, 3e-4)},
                  convergence_steps=800, eval_every=100, seeds=(0, 1, 2), reflection_factors=(),
                  grid_extensions=2,  # full fine-tuning's best grid rate was its highest, 1e-4
                  # validation: ARC-C 111 + 3 x 200 examples, so its average has a standard error of about 1.9
                  # points; a smaller tolerance would pick the step of the noisiest evaluation, not a plateau
                  plateau=0.02,
                  bf16_phases=("precision", "grid", "seed"))  # bf16 steps: 0.6x fp32; the precision run checks
    # zero-shot probes where the base model is above chance: SST-2 in the chat format an instruct model is
    # used in (62.8% on its 872 test examples; 55.0% with the plain template). RTE, QNLI (chance) and
    # MRPC, CoLA (the majority class) measure nothing on this model, so they are left out.
    zero_shot = [{"name": "wikitext2", "max_eval": 200}, {"name": "sst2", "chat": True, "max_eval": 400}]
    scoring_bf16, max_length = True, 256
    if quick:  # SmolLM2 scores every option and WikiText-2 at each evaluation: kept small, the smoke test is minutes
        tasks = [{**t, "max_train": 24, "max_validation": 4, "max_eval": 8} for t in tasks[:2]]
        methods = {m: methods[m] for m in ("full", "lora", REFERENCE)}
        study = replace(study, grids={FULL: (3e-5,), "adapter": (3e-4,)}, main_methods=(REFERENCE,),
                        tuned_methods=(REFERENCE, "lora", "full"), convergence_steps=4, eval_every=2, grid_extensions=0,
                        seeds=(0, 1), bf16_phases=_quick_bf16_phases(study.bf16_phases))
        zero_shot = [{**z, "max_eval": 2 if z["name"] == "wikitext2" else 4} for z in zero_shot]
        max_length = 128
        scoring_bf16 = bf16_is_native("cpu")
    return Suite(
        name="csr-mtl-quick" if quick else "csr-mtl",
        title="CSR-MTL: SmolLM2-135M-Instruct on four commonsense tasks at once, answers as option texts"
              + (" (quick smoke test)" if quick else ""),
        config={"model": {"name_or_path": "smollm2", "max_length": max_length}, "tasks": tasks,
                "training": {"batch_size": 8, "schedule": "wsd", "warmup_steps": 0.06, "decay_steps": 0.2,
                             "mixing": "temperature", "temperature": 2.0, "log_every": 20, "keep_checkpoints": 1},
                # scoring in bf16: 2.7x faster on this CPU, the same picks (benchmarks/bf16_scoring.py)
                "evaluation": {"batch_size": 16, "split": "test", "scoring": "loglik", "track_zero_shot": True,
                               "zero_shot": zero_shot, "bf16": scoring_bf16}},
        methods=methods,
        routing_layer="model.layers.15.self_attn.q_proj",
        efficiency={"batch_size": 4, "length": 128},
        notes="Answers are the options' own texts after `Question: ...\nAnswer:` (lm-evaluation-harness's "
              "format): `accuracy` ranks them by summed log-likelihood, `accuracy_norm` by log-likelihood per "
              "byte. The paper's label format (`answer1`..`answer4`, `true`/`false`) left the 135M base model and "
              "every method at chance in csr-mtl-mini. `moore-L8-rms`: MoORE-L8 whose token-level router sees "
              "x / rms(x) (SmolLM2's attention-sink token carries a massive activation).",
        subsampling="at most 2,000 training examples per task (fixed seed), 200 held out for validation; test "
                    "sets: at most 1,000 a task, drawn with a fixed seed (ARC-C 1,000 of 1,172, ARC-E 1,000 of 2,376, "
                    "BoolQ 1,000 of 3,270 (questions only, no passage), OBQA all 500); temperature mixing (T = 2); "
                    "zero-shot: WikiText-2's first 200 lines, SST-2 400 (chat format).",
        study=study,
    )


SUITES.update({s.name: s for s in (_csr_mtl(False), _csr_mtl(True))})


def lr_text(value: float) -> str:
    """3e-4, not 0.0003."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; suites: {sorted(SUITES)}")
    return SUITES[name]


def resolve_adapter(suite: Suite, name: str, base_model) -> tuple[dict, dict]:
    """(adapter dict, training overrides) for a method, sized to the reference method's budget where asked."""
    method = suite.methods[name]
    spec = dict(method.adapter)
    training = {"lr": method.lr} if method.lr is not None else {}
    if method.budget:
        num_tasks = len(suite.config["tasks"])
        reference = AdapterConfig.from_dict({**suite.methods[REFERENCE].adapter, "num_tasks": num_tasks})
        budget = count_trainable_parameters(base_model, reference)
        matched = match_budget(base_model, AdapterConfig.from_dict({**spec, "num_tasks": num_tasks}), budget)
        spec = {k: v for k, v in matched.to_dict().items() if k != "num_tasks"}
    return spec, training
