"""Learning-rate schedules, as functions of the optimizer step (never of micro-steps)."""

from __future__ import annotations

import math
from collections.abc import Callable


def _steps(value: int | float, total: int) -> int:
    return int(round(value * total)) if isinstance(value, float) and value < 1 else int(value)


def lr_multiplier(schedule: str, total_steps: int, warmup_steps: int | float = 0, decay_steps: int | float = 0.2,
                  min_lr_ratio: float = 0.0) -> Callable[[int], float]:
    """f(step) in [min_lr_ratio, 1] for optimizer step ``step`` (0-based: the factor for the update
    that takes the model from step to step+1). ``warmup_steps``/``decay_steps`` are step counts, or
    fractions of ``total_steps`` when below 1.

    - wsd: linear warmup, a stable plateau, then a linear decay to min_lr_ratio over the last decay_steps;
    - cosine: linear warmup, then a cosine to min_lr_ratio;
    - linear: linear warmup, then linear to min_lr_ratio; constant: warmup, then 1.
    Every schedule but constant reaches min_lr_ratio just after the last update.
    """
    warmup = min(_steps(warmup_steps, total_steps), total_steps)
    decay = min(_steps(decay_steps, total_steps), total_steps - warmup)

    def progress(step: int, start: int) -> float:  # 0 at `start`, 1 just after the last update
        span = total_steps - start
        return 1.0 if span <= 0 else min(max((step - start) / span, 0.0), 1.0)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        if schedule == "cosine":
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress(step, warmup)))
        if schedule == "linear":
            return 1.0 - (1 - min_lr_ratio) * progress(step, warmup)
        if schedule == "wsd":
            start = total_steps - decay
            if step < start or decay == 0:
                return 1.0
            return 1.0 - (1 - min_lr_ratio) * progress(step, start)
        raise ValueError(f"unknown schedule {schedule!r}; use wsd, cosine, linear or constant")

    return f
