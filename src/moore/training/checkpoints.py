"""A run's folder on disk: its lock, what may be written into it, atomic checkpoint folders, the log.

    OUTPUT_DIR/
      .moore.lock            held (flock) by the run that writes here; names its PID
      run_config.json        the config of the run
      log.jsonl              one JSON object per line: losses, learning rates, evaluations
      checkpoints/step-N/    model/ + trainer_state.pt + run_config.json, written to a tmp folder
                             and renamed into place: a crash never leaves half a checkpoint
      best/ final/           adapter + heads, also renamed into place
      results.json results.md
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import RunFolderError
from ..io import atomic_write, finite_or_none

logger = logging.getLogger(__name__)

LOCK_NAME = ".moore.lock"
STATE_NAME = "trainer_state.pt"
CONFIG_NAME = "run_config.json"
LOG_NAME = "log.jsonl"
# what a run writes: --overwrite removes these and nothing else
RUN_FILES = ("checkpoints", "best", "final", "results.json", "results.md", LOG_NAME, CONFIG_NAME, "tensorboard",
             "forgetting.png")


# --- what a checkpoint holds besides the weights ------------------------------------------------------
@dataclass
class TrainerState:
    """Where a run is: what a checkpoint holds besides the weights (plain data, loads with weights_only)."""

    global_step: int = 0
    stage: int = 0
    stage_step: int = 0
    best_score: float | None = None
    best_step: int | None = None
    stage_results: list[dict] = field(default_factory=list)  # the test scores after each stage
    before: dict | None = None  # the test scores before training
    zero_shot_before: dict | None = None
    world_size: int = 1
    seconds: float = 0.0  # time spent in the training loop, across resumes
    optimizer: dict | None = None
    scheduler: dict | None = None
    mixer: dict | None = None
    rng: list[torch.Tensor] | None = None  # each rank's CPU generator state
    cuda_rng: list[torch.Tensor] | None = None  # each rank's CUDA generator state, on GPUs

    @classmethod
    def from_dict(cls, data: dict) -> "TrainerState":
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in known})
        if torch.is_tensor(state.rng):  # checkpoints of moore 0.1 held one state for rank 0
            state.rng = [state.rng]
        return state

    def summary(self) -> dict:
        return {"global_step": self.global_step, "stage": self.stage, "stage_step": self.stage_step,
                "best_score": self.best_score, "best_step": self.best_step, "world_size": self.world_size}


# --- folders written in one rename ------------------------------------------------------------------
def replace_dir(build: Callable[[Path], None], target: Path) -> None:
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


def step_of(path: Path) -> int | None:
    """The step a checkpoint folder (``step-NNNNNNN``) holds, or None for any other folder."""
    suffix = path.name.removeprefix("step-")
    return int(suffix) if path.name.startswith("step-") and suffix.isdigit() else None


def checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints under ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    done = [p for p in directory.iterdir() if p.is_dir() and step_of(p) is not None and (p / STATE_NAME).is_file()]
    return sorted(done, key=step_of)


def latest_checkpoint(directory: Path) -> Path | None:
    found = checkpoints(directory)
    return found[-1] if found else None


def prune_checkpoints(directory: Path, keep: int) -> None:
    for old in checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# --- the folder belongs to one run ------------------------------------------------------------------
class RunLock:
    """An exclusive lock on a run folder for the run's lifetime (``flock``: the kernel releases it
    when the process dies, even by SIGKILL, so a crash never leaves the folder locked)."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_NAME
        self._file = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunFolderError(f"{self.path.parent} is in use by another moore run (PID {holder}); wait for it "
                                 "to finish, stop it, or choose another --output-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def claim_run_folder(directory: Path, ctx, *, resume: bool, overwrite: bool) -> RunLock | None:
    """Rank 0 locks the folder and checks that the run may write there (``prepare_output_dir``);
    every rank learns the verdict, so a refused run stops everywhere. Returns rank 0's lock."""
    lock, error = None, None
    if ctx.is_main:
        try:
            if directory.exists() and not directory.is_dir():
                raise RunFolderError(f"the output dir {directory} is a file")
            lock = RunLock(directory).acquire()
            prepare_output_dir(directory, resume=resume, overwrite=overwrite)
        except RunFolderError as e:
            if lock is not None:
                lock.release()
            error = e
    (refused,) = ctx.all_reduce_sum([float(error is not None)])
    if error is not None:
        raise error
    if refused:
        raise RunFolderError(f"{directory}: rank 0 refused the output folder (see its error)")
    return lock


def prepare_output_dir(directory: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to write a new run over anything: a non-empty folder needs ``resume`` (the same run)
    or ``overwrite`` (which removes what a run writes there, and nothing else)."""
    if resume and overwrite:
        raise RunFolderError("--resume continues the run in the folder and --overwrite replaces it: give one")
    present = sorted(p.name for p in directory.iterdir() if p.name != LOCK_NAME) if directory.is_dir() else []
    if not present or resume:
        return
    if overwrite:
        for name in RUN_FILES:
            path = directory / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return
    shown = ", ".join(present[:6]) + (", ..." if len(present) > 6 else "")
    raise RunFolderError(f"{directory} is not empty ({shown}): continue its run with --resume, replace it with "
                         "--overwrite, or choose another --output-dir")


# --- resuming the same run ---------------------------------------------------------------------------
# changes that leave the trained weights as they were: what to log, score and keep on disk, and
# more (or fewer) steps, where the schedule is stretched to the new length from the step reached
SAFE_CHANGES = ("output_dir", "data_dir", "training.steps", "training.log_every", "training.save_every",
                "training.keep_checkpoints", "training.tensorboard", "evaluation.")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): data}


def config_differences(saved: dict, current: dict) -> list[str]:
    """The differences between two run configs (as JSON data) that would change the trained weights,
    as ``key: saved → current``. Lists (tasks, stages) compare whole: their order is the task ids."""
    a, b = _flatten(saved), _flatten(current)
    changed = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key) and not any(key == s or (s.endswith(".") and key.startswith(s))
                                                for s in SAFE_CHANGES):
            changed.append(f"{key}: {_short(a.get(key))} → {_short(b.get(key))}")
    return changed


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- the log -------------------------------------------------------------------------------------------
class JsonlLog:
    """Appends one JSON object per line (strict JSON: a NaN is written as null)."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool = False):
        self.path, self.enabled = Path(path), enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.path.parent / "tensorboard"))
            except ImportError:
                logger.warning("tensorboard is not installed (pip install tensorboard); logging to JSONL only")

    def read(self) -> list[dict[str, Any]]:
        return read_log(self.path)

    def truncate_after(self, step: int) -> None:
        """Keep what was logged up to ``step`` (a resumed run logs the rest again)."""
        if self.enabled:
            keep = [r for r in self.read() if r.get("step", 0) <= step]
            atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(_line(r) for r in keep)))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(_line(record))
        if self.writer is not None:
            for key, value in _flatten(record).items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key.replace(".", "/"), value, record["step"])


def _line(record: dict) -> str:
    return json.dumps(finite_or_none(record), allow_nan=False) + "\n"


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl``; a torn line (a write cut short by a crash or a full disk) is
    skipped with a warning instead of making the folder unreadable."""
    if not Path(path).is_file():
        return []
    records = []
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            where = "its last line" if number == len(lines) else f"line {number}"
            logger.warning("%s: skipping %s, which is not a complete JSON record (a write cut short?)", path, where)
            continue
        records.append(record)
    return records

