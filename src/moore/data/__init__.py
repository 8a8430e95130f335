"""Tasks (data, metrics, prompts) for multi-task training and evaluation."""

from .metrics import KNOWN_METRICS, LOWER_IS_BETTER, METRICS
from .readers import read_jsonl
from .tasks import (
    ALPACA_TEMPLATE,
    DATA_DIR_ENV,
    KINDS,
    SPLITS,
    TASKS,
    Example,
    MissingDataError,
    Task,
    default_data_dir,
    get_task,
    register_task,
)

__all__ = [
    "ALPACA_TEMPLATE", "DATA_DIR_ENV", "KINDS", "KNOWN_METRICS", "LOWER_IS_BETTER", "METRICS", "SPLITS", "TASKS",
    "Example", "MissingDataError", "Task", "default_data_dir", "get_task", "read_jsonl", "register_task",
]
