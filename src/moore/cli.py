"""The ``moore`` command: train, eval, demo, info.

    moore train CONFIG.yaml [--data-dir DIR] [--output-dir DIR] [--resume] [-o training.steps=50 ...]
    moore eval RUN_OR_ADAPTER_DIR [--split test] [--tasks sst2,cola] [--zero-shot stsbenchmark]
    moore demo [--data-dir DIR]
    moore info DIR

Under ``torchrun --nproc_per_node N -m moore.cli train ...`` (or ``accelerate launch -m moore.cli``)
training runs data-parallel over N processes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer  # noqa: E402

from .errors import ConfigError  # noqa: E402
from .layers.moore import MooreConfig  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="MoORE: multi-task adaptation of pre-trained transformers, and its peers.")

DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help="folder with the task data "
                                                 "(default: the config's data_dir, then $MOORE_DATA_DIR)")]

DEMO_CONFIG = {
    "model": {"name_or_path": "minilm", "max_length": 64},
    "adapter": {"method": MooreConfig.method, "task_dim": 32, "sample_dim": 16, "num_reflections": 4},
    "tasks": [{"name": "sst2", "max_train": 2000, "max_eval": 400},
              {"name": "cola", "max_train": 2000, "max_eval": 400},
              {"name": "qnli", "max_train": 2000, "max_eval": 400}],
    "training": {"steps": 150, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.01, "schedule": "wsd",
                 "warmup_steps": 0.1, "decay_steps": 0.2, "eval_every": 50, "log_every": 10, "seed": 0},
    "evaluation": {"batch_size": 64, "before": True},
    "output_dir": "runs/demo",
}


_DEBUG = {"on": bool(os.environ.get("MOORE_DEBUG"))}


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="show the full traceback of any error")] = False
             ) -> None:
    _DEBUG["on"] = _DEBUG["on"] or debug


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@contextmanager
def _user_errors():
    """The library's user-facing errors (``MooreError``) become one message and exit code 2; anything
    else is a bug and keeps its traceback. ``--debug`` shows the traceback of both."""
    from .errors import MooreError

    try:
        yield
    except MooreError as e:
        if _DEBUG["on"]:
            raise
        _fail(str(e))


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        import transformers

        transformers.logging.set_verbosity_error()


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="the run's YAML config")],
    data_dir: DataDir = None,
    output_dir: Annotated[Optional[Path], typer.Option(help="where checkpoints and results go")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in the output dir from its latest "
                                         "checkpoint (the config must be the same)")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace the run in a non-empty output dir")] = False,
    override: Annotated[Optional[list[str]], typer.Option("--override", "-o", help="key.sub=value, e.g. training.steps=50")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 (default: the process's GPU if any)")] = None,
    progress: Annotated[bool, typer.Option(help="tqdm progress bars")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Adapt a base model to several tasks at once (or in stages), then score each task."""
    from .runconfig import load_run_config
    from .training import train as run_training

    _setup_logging(verbose)
    with _user_errors():
        cfg = load_run_config(config, override)
        run_training(cfg, data_dir=data_dir, output_dir=output_dir, resume=resume, overwrite=overwrite,
                     progress=progress, device=device)


@app.command()
def demo(
    data_dir: DataDir = None,
    output_dir: Annotated[Path, typer.Option(help="where the run goes")] = Path("runs/demo"),
    steps: Annotated[int, typer.Option(help="optimizer steps")] = 150,
    print_config: Annotated[bool, typer.Option("--print-config", help="print the demo's YAML config and exit")] = False,
    progress: Annotated[bool, typer.Option(help="tqdm progress bars")] = True,
) -> None:
    """A short real run: MoORE on MiniLM, SST-2 + CoLA + QNLI at once; scores before and after."""
    import yaml

    from .runconfig import load_run_config
    from .training import train as run_training

    data = json.loads(json.dumps(DEMO_CONFIG))
    data["training"]["steps"] = steps
    if print_config:
        typer.echo(yaml.safe_dump(data, sort_keys=False))
        return
    _setup_logging(False)
    if data_dir is None and not os.environ.get("MOORE_DATA_DIR"):
        guess = Path(__file__).resolve().parents[3] / "shared" / "data"
        data_dir = guess if guess.is_dir() else Path("../shared/data")
    with _user_errors():
        cfg = load_run_config(data=data)
        run_training(cfg, data_dir=data_dir, output_dir=output_dir, overwrite=True, progress=progress)


@app.command()
def bench(
    suite: Annotated[str, typer.Argument(help="a suite: nlu-mtl, csr-mtl (studies, with -quick smoke-test variants), nlu-mtl-mini, csr-mtl-mini")],
    methods: Annotated[Optional[str], typer.Option(help="comma-separated subset (default: all, plus base and "
                                                   "efficiency); methods with a result are skipped")] = None,
    data_dir: DataDir = None,
    results_dir: Annotated[Optional[Path], typer.Option(help="default: benchmarks/results/SUITE")] = None,
    runs_dir: Annotated[Path, typer.Option(help="training runs (checkpoints; not part of the results)")] = Path("runs/bench"),
    report: Annotated[bool, typer.Option("--report", help="only rebuild REPORT.md and plots from the result files")] = False,
    run: Annotated[Optional[str], typer.Option("--run", help="a study: train and score this one run of its plan")] = None,
    workers: Annotated[int, typer.Option(help="a study: runs at a time, each its own process")] = 1,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda (default: the GPU if any)")] = None,
    time_budget: Annotated[Optional[float], typer.Option(help="a study: start no run after this many seconds")] = None,
    progress: Annotated[bool, typer.Option(help="tqdm progress bars")] = True,
    show_plan: Annotated[bool, typer.Option("--plan", help="a study: list the runs its plan names and its results "
                                            "lack (in the order a study starts them, with the checkpoint each would "
                                            "resume from) and any stale files; runs nothing")] = False,
    add_zero_shot_predictions: Annotated[bool, typer.Option(
        "--add-zero-shot-predictions", help="a study: score the zero-shot probes again from the saved models of "
        "run files written before runs kept their zero-shot predictions, and add them (then rebuild the report); "
        "with --run, that run's file only")] = False,
) -> None:
    """Run every method of a suite on the same data and budget (a study suite: its whole protocol), then
    write the report."""
    from .bench import get_suite, run_suite, write_report
    from .bench.study import describe_plan, execute, run_study
    from .bench.study_report import write_study_report
    from .data.tasks import default_data_dir

    with _user_errors():
        try:
            chosen = get_suite(suite)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    results_dir = results_dir or Path("benchmarks/results") / suite
    data_dir = data_dir or default_data_dir()
    _setup_logging(False)
    with _user_errors():
        if show_plan and chosen.study is None:
            raise ConfigError(f"--plan: {suite} is not a study (it runs every method once: "
                              f"{', '.join(chosen.methods)})")
        if chosen.study is not None:
            if show_plan:
                typer.echo(describe_plan(suite, results_dir, runs_dir, device))
                return
            if add_zero_shot_predictions:  # with --run: that run's file only
                from .bench.study import add_zero_shot_predictions as add

                added = add(suite, results_dir, runs_dir, data_dir, device, names=[run] if run else None)
                typer.echo(f"zero-shot predictions added to: {', '.join(added) or 'none'}")
                report, run = True, None
            if run:
                execute(suite, run, results_dir, runs_dir, data_dir, device=device, progress=progress)
                return
            if not report:
                run_study(suite, results_dir, runs_dir, data_dir, workers=workers, device=device,
                          time_budget=time_budget)
            typer.echo(f"report: {write_study_report(suite, results_dir)}")
            return
        if not report:
            try:
                run_suite(suite, [m.strip() for m in methods.split(",")] if methods else None, results_dir, runs_dir,
                          data_dir, progress)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        typer.echo(f"report: {write_report(suite, results_dir)}")


def _adapter_dir(path: Path) -> Path:
    """A saved adapter folder, or the ``final``/``best`` folder of a run, or a checkpoint's model; for a
    run that has not finished, its latest checkpoint (said so on stderr)."""
    from .training.checkpoints import latest_checkpoint

    for candidate in (path, path / "final", path / "model", path / "best"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    checkpoint = latest_checkpoint(path / "checkpoints")
    if checkpoint is not None and (checkpoint / "model" / "adapter_config.json").is_file():
        typer.secho(f"{path} has no final/ yet (the run did not finish): using its latest checkpoint, {checkpoint.name}",
                    fg=typer.colors.YELLOW, err=True)
        return checkpoint / "model"
    _fail(f"{path} holds no saved adapter (adapter_config.json), and neither do its final/, model/, best/ or "
          "checkpoints/")


@app.command("eval")
def evaluate(
    path: Annotated[Path, typer.Argument(help="a run's output dir, or a folder written by moore train")],
    data_dir: DataDir = None,
    split: Annotated[str, typer.Option(help="validation or test")] = "test",
    tasks: Annotated[Optional[str], typer.Option(help="comma-separated task names (default: all trained tasks)")] = None,
    zero_shot: Annotated[Optional[str], typer.Option(help="comma-separated registered tasks to score with the "
                                                     "unseen-task (mean) embedding")] = None,
    scoring: Annotated[str, typer.Option(help="decoders: loglik or generate")] = "loglik",
    max_eval: Annotated[Optional[int], typer.Option(help="score a fixed random subset of this size per task")] = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    max_new_tokens: Annotated[int, typer.Option()] = 16,
    routing: Annotated[str, typer.Option(help="own (each task its id), infer (the task classifier's mixture), "
                                              "unseen (the mean task embedding)")] = "own",
    bf16: Annotated[bool, typer.Option("--bf16", help="score in bf16 autocast (GPU, or CPU with AVX-512 BF16)")] = False,
    output: Annotated[Optional[Path], typer.Option("--json", help="also write the scores to this JSON file")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Score a trained adapter task by task."""
    from .data.tasks import default_data_dir, get_task
    from .evaluation import evaluate_tasks, scores_table
    from .io import write_json
    from .multitask import MultiTaskModel
    from .runconfig import check_data

    _setup_logging(verbose)
    if split not in ("validation", "test"):
        _fail(f"--split must be validation or test, got {split!r}")
    if scoring not in ("loglik", "generate"):
        _fail(f"--scoring must be loglik or generate, got {scoring!r}")
    if routing not in ("own", "infer", "unseen"):
        _fail(f"--routing must be own, infer or unseen, got {routing!r}")
    directory = _adapter_dir(path)
    with _user_errors():
        _, specs = MultiTaskModel.read_specs(directory)
        all_tasks = [s.build() for s in specs]
        wanted = [t.strip() for t in tasks.split(",")] if tasks else [t.name for t in all_tasks]
        unknown = sorted(set(wanted) - {t.name for t in all_tasks})
        if unknown:
            raise ConfigError(f"{directory} was not trained on {unknown}; its tasks are "
                              f"{[t.name for t in all_tasks]} (score other tasks with --zero-shot)")
        try:
            extra = [get_task(n.strip()) for n in zero_shot.split(",")] if zero_shot else []
        except ValueError as e:
            raise ConfigError(f"--zero-shot: {e}") from None
        data_dir = data_dir or default_data_dir()
        selected = [t for t in all_tasks if t.name in wanted]
        check_data(selected + extra, data_dir, (split,))
        limits = {s.name: s.max_eval for s in specs}
        data = {t.name: (t, t.load(data_dir, split, limit=max_eval or limits.get(t.name))) for t in selected}
        zs_data = {t.name: (t, t.load(data_dir, split, limit=max_eval)) for t in extra}
        model = MultiTaskModel.load(directory, all_tasks)
        results = evaluate_tasks(model, data, batch_size=batch_size, scoring=scoring, max_new_tokens=max_new_tokens,
                                 task_id={"own": "own", "infer": "infer", "unseen": None}[routing], progress=True,
                                 bf16=bf16)
        zs = {}
        if extra:
            zs = evaluate_tasks(model, zs_data, batch_size=batch_size, scoring=scoring,
                                max_new_tokens=max_new_tokens, task_id=None, progress=True, bf16=bf16)
    typer.echo(f"{directory} — {split} split" + ("" if routing == "own" else f", routing: {routing}") + "\n")
    typer.echo(scores_table({"score": results}, selected))
    if zs:
        typer.echo("\nzero-shot (unseen-task embedding):\n")
        typer.echo(scores_table({"score": zs}, extra))
    if output:
        write_json(output, {"split": split, "scores": results, "zero_shot": zs})


@contextmanager
def _value_errors(what: str):
    """ValueErrors of a command whose input names the problem (a method without a task table, a
    task given twice) as user errors."""
    from pydantic import ValidationError

    from .runconfig import format_validation_error

    try:
        yield
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, what)) from None
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from None


@app.command("fit-task-classifier")
def fit_task_classifier(
    path: Annotated[Path, typer.Argument(help="a run's output dir, or a folder written by moore train")],
    data_dir: DataDir = None,
    max_per_task: Annotated[int, typer.Option(help="training inputs per task the classifier learns from")] = 1000,
) -> None:
    """Fit the task classifier of a saved MoORE adapter (task-free inference: --routing infer) on
    its tasks' training inputs, score it on their validation inputs, and save it with the adapter."""
    from .data.tasks import default_data_dir
    from .multitask import MultiTaskModel
    from .runconfig import check_data

    directory = _adapter_dir(path)
    with _user_errors():
        _, specs = MultiTaskModel.read_specs(directory)
        tasks = [s.build() for s in specs]
        data_dir = data_dir or default_data_dir()
        check_data(tasks, data_dir, ("train", "validation"))
        limits = {s.name: s.max_train for s in specs}
        train = {t.name: t.load(data_dir, "train", limit=limits[t.name], seed=0) for t in tasks}
        validation = {t.name: t.load(data_dir, "validation", seed=0) for t in tasks}
        model = MultiTaskModel.load(directory, tasks)
        with _value_errors("fit-task-classifier"):
            accuracy = model.fit_task_classifier(train, max_per_task=max_per_task)
        held_out = model.task_identification(validation, max_per_task=max_per_task)
        model.adapted.save_pretrained(directory)
    typer.echo(f"task classifier saved in {directory}: identifies the task of {100 * accuracy:.1f}% of the training "
               f"inputs it saw, and of the validation inputs:")
    for name, value in held_out.items():
        typer.echo(f"  {name}: {100 * value:.1f}%")


@app.command("add-task")
def add_task(
    path: Annotated[Path, typer.Argument(help="a trained MoORE run (or adapter folder) to add a task to")],
    task: Annotated[str, typer.Option(help="a registered task name, or a YAML file holding one task spec "
                                           "(as an entry of a run config's tasks)")],
    output_dir: Annotated[Path, typer.Option(help="where the adapter with the new task goes")],
    data_dir: DataDir = None,
    max_train: Annotated[Optional[int], typer.Option(help="train on this many examples of the task")] = 100,
    steps: Annotated[int, typer.Option()] = 200,
    lr: Annotated[float, typer.Option()] = 1e-2,
    batch_size: Annotated[int, typer.Option()] = 16,
    seed: Annotated[int, typer.Option()] = 0,
    progress: Annotated[bool, typer.Option(help="tqdm progress bars")] = True,
) -> None:
    """Add a task to a trained MoORE adapter from a few examples: one new task-table row (and head),
    trained alone; the adapter's other tasks keep their outputs bit for bit."""
    from .data.tasks import default_data_dir
    from .evaluation import evaluate_tasks, scores_table
    from .multitask import MultiTaskModel
    from .runconfig import TaskSpec, check_data
    from .training.checkpoints import replace_dir
    from .training.new_task import add_and_train_task

    directory = _adapter_dir(path)
    if output_dir.exists() and any(output_dir.iterdir()):
        _fail(f"{output_dir} is not empty; give add-task a new --output-dir")
    with _user_errors():
        if task.endswith((".yaml", ".yml", ".json")):
            import yaml

            if not Path(task).is_file():
                raise ConfigError(f"--task {task}: no such file")
            fields = yaml.safe_load(Path(task).read_text(encoding="utf-8"))
            if not isinstance(fields, dict):
                raise ConfigError(f"--task {task}: the file must hold one task spec (a mapping)")
            with _value_errors(f"--task {task}"):
                spec = TaskSpec.model_validate({**fields, "max_train": max_train})
            new = spec.build(Path(task).resolve().parent)
        else:
            spec = TaskSpec(name=task, max_train=max_train)
            new = spec.build()
        data_dir = data_dir or default_data_dir()
        check_data([new], data_dir, ("train", "test"))
        examples = new.load(data_dir, "train", limit=max_train, seed=seed)
        model = MultiTaskModel.load(directory)
        with _value_errors("add-task"):
            add_and_train_task(model, new, examples, spec=spec, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                               progress=progress)
        replace_dir(lambda tmp: model.save(tmp), output_dir)
        scores = evaluate_tasks(model, {new.name: (new, new.load(data_dir, "test"))}, batch_size=64)
    typer.echo(f"task {new.name!r} added as task {model.task_id(new.name)} from {len(examples)} examples; "
               f"adapter and heads: {output_dir}\n")
    typer.echo(scores_table({"score": scores}, [new]))


@app.command("lm-eval")
def lm_eval(
    path: Annotated[Path, typer.Argument(help="a run's output dir, or a folder written by moore train")],
    tasks: Annotated[str, typer.Option(help="comma-separated lm-evaluation-harness task names")],
    task_id: Annotated[Optional[str], typer.Option(help="route as this task (an id or a trained task's name); "
                                                        "default: an unseen task (the mean task embedding)")] = None,
    include_path: Annotated[Optional[Path], typer.Option(help="a folder of extra harness task YAML files")] = None,
    limit: Annotated[Optional[float], typer.Option(help="score only this many examples per task (or a fraction)")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option()] = None,
    batch_size: Annotated[int, typer.Option()] = 16,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, ...")] = None,
    output: Annotated[Optional[Path], typer.Option("--json", help="also write the harness's results to this file")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Score a saved adapter on lm-evaluation-harness tasks (needs: pip install 'moore[lm-eval]')."""
    from .io import write_json

    _setup_logging(verbose)
    directory = _adapter_dir(path)
    try:
        from .integrations.harness import evaluate as harness_evaluate
    except ImportError as e:
        _fail(str(e))
    with _user_errors():
        try:
            results = harness_evaluate(directory, [t.strip() for t in tasks.split(",") if t.strip()], task_id=task_id,
                                       include_path=include_path, limit=int(limit) if limit and limit >= 1 else limit,
                                       batch_size=batch_size, num_fewshot=num_fewshot, device=device)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"lm-eval: {e}") from None
    from lm_eval.utils import make_table

    typer.echo(f"{directory} — routed as {'task ' + task_id if task_id is not None else 'an unseen task'}\n")
    typer.echo(make_table(results))
    if output:
        write_json(output, {k: v for k, v in results.items() if k in ("results", "configs", "n-samples", "versions")})


@app.command()
def info(path: Annotated[Path, typer.Argument(help="a saved adapter folder or a run's output dir")]) -> None:
    """Say what a saved adapter is: method, settings, base model, tasks, size."""
    from safetensors import safe_open

    from .model import MooreModel

    from .errors import AdapterFileError

    directory = _adapter_dir(path)
    with _user_errors():
        meta = MooreModel.read_metadata(directory)
        weights = directory / "adapter_model.safetensors"
        try:
            with safe_open(str(weights), "pt") as f:
                count = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        except Exception as e:  # safetensors raises its own error types for a damaged header
            raise AdapterFileError(f"{weights} is missing, truncated or not a safetensors file ({e})") from None
    config, base = dict(meta["config"]), meta.get("base_model", {})
    method = config.pop("method")
    lines = [
        f"adapter:        {directory}",
        f"method:         {method}  (moore {meta.get('moore_version', '?')})",
        "settings:       " + ", ".join(f"{k}={v}" for k, v in config.items()),
        f"base model:     {base.get('class')} {base.get('name_or_path')!r}, {base.get('num_parameters', 0):,d} parameters",
        f"fingerprint:    {base.get('fingerprint', '?')[:16]}",
        f"adapted layers: {len(meta.get('adapted_modules', []))}",
        f"saved weights:  {count:,d} values, {weights.stat().st_size / 2**20:.2f} MiB"
        + (f" ({100 * count / base['num_parameters']:.3f}% of the base model)" if base.get("num_parameters") else ""),
    ]
    tasks_file = directory / "moore_tasks.json"
    if tasks_file.is_file():
        tmeta = json.loads(tasks_file.read_text())
        lines.append(f"model spec:     {tmeta['model']}")
        lines.append("tasks:          " + ", ".join(f"{i}={n}" for i, n in enumerate(tmeta["task_names"])))
    results = directory.parent / "results.json"
    if results.is_file():
        res = json.loads(results.read_text())
        avg = res.get("average", {}).get("after")
        if avg is not None:
            lines.append(f"results:        average {100 * avg:.2f} on the {res.get('split')} split ({results})")
    typer.echo("\n".join(lines))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
