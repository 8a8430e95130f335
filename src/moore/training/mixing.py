"""Task mixing: which examples make up each optimizer step's global batch.

The draw for step ``s`` depends only on (seed, stage, s) and on how far each task's stream has been
read, so every process of a distributed run draws the same global batch, and a resumed run draws
what the interrupted one would have.
"""

from __future__ import annotations

import numpy as np


def mixing_probabilities(sizes: list[int], mixing: str, temperature: float = 2.0) -> np.ndarray:
    """proportional: p_k ∝ n_k; temperature: p_k ∝ n_k^(1/T) (T = 1 is proportional, large T uniform); uniform."""
    n = np.asarray(sizes, dtype=float)
    if (n <= 0).any():
        raise ValueError(f"every task needs training examples; sizes are {sizes}")
    if mixing == "proportional":
        w = n
    elif mixing == "temperature":
        w = n ** (1.0 / temperature)
    elif mixing == "uniform":
        w = np.ones_like(n)
    else:
        raise ValueError(f"mixing must be proportional, temperature or uniform, got {mixing!r}")
    return w / w.sum()


class TaskMixer:
    """Draws (task index, example index) pairs: a task by the mixing probabilities, then the next
    example of that task's stream, which walks a fresh permutation of the task's data each epoch."""

    def __init__(self, sizes: list[int], mixing: str = "proportional", temperature: float = 2.0, seed: int = 0,
                 stage: int = 0):
        self.sizes = list(sizes)
        self.probabilities = mixing_probabilities(sizes, mixing, temperature)
        self.seed, self.stage = seed, stage
        self.cursors = [0] * len(sizes)
        self._permutations: dict[tuple[int, int], np.ndarray] = {}

    def _permutation(self, task: int, epoch: int) -> np.ndarray:
        key = (task, epoch)
        if key not in self._permutations:
            self._permutations = {k: v for k, v in self._permutations.items() if k[0] != task}  # keep one per task
            rng = np.random.default_rng([self.seed, self.stage, task, epoch, 1])
            self._permutations[key] = rng.permutation(self.sizes[task])
        return self._permutations[key]

    def draw(self, step: int, count: int) -> list[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.stage, step, 0])
        tasks = rng.choice(len(self.sizes), size=count, p=self.probabilities)
        out = []
        for t in tasks.tolist():
            epoch, position = divmod(self.cursors[t], self.sizes[t])
            out.append((t, int(self._permutation(t, epoch)[position])))
            self.cursors[t] += 1
        return out

    def state_dict(self) -> dict:
        return {"cursors": list(self.cursors)}

    def load_state_dict(self, state: dict) -> None:
        if len(state["cursors"]) != len(self.sizes):
            raise ValueError("the checkpoint's task mixer is for another task list")
        self.cursors = [int(c) for c in state["cursors"]]
