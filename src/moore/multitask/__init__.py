"""A base model, its adapter and its tasks: batching, losses, scoring, saving (``MultiTaskModel``)."""

from .decoder import DecoderTasks, extract_choice
from .encoder import EncoderTasks
from .model import HEADS_NAME, TASKS_NAME, MultiTaskModel

__all__ = ["DecoderTasks", "EncoderTasks", "HEADS_NAME", "MultiTaskModel", "TASKS_NAME", "extract_choice"]
