"""Multi-task training: task mixing, schedules, checkpoints, distributed data parallel."""

from .mixing import TaskMixer, mixing_probabilities
from .schedules import lr_multiplier
from .trainer import Trainer, train

__all__ = ["TaskMixer", "Trainer", "lr_multiplier", "mixing_probabilities", "train"]
