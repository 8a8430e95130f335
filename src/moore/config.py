"""Adapter configurations: plain data, validated once, saved as JSON.

Every method has a config class registered under its name; ``AdapterConfig.from_dict`` picks the
class from the ``method`` field, so a saved adapter reloads as the method that wrote it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

METHODS: dict[str, type["AdapterConfig"]] = {}


def register_method(config_cls: type["AdapterConfig"], layer_cls: type) -> None:
    """Make a method available by name: its config class, and the layer class that config builds."""
    if config_cls.method in METHODS:
        raise ValueError(f"method {config_cls.method!r} is registered twice")
    config_cls.layer_cls = layer_cls
    METHODS[config_cls.method] = config_cls


@dataclass
class AdapterConfig:
    """Fields every method shares.

    target_modules: which linear layers to adapt. A list of names or name suffixes
        (``["q_proj", "v_proj"]``), one regular expression matched against the full module name,
        or ``"all-linear"`` (every ``nn.Linear``/``Conv1D`` except the output head and classifiers).
    exclude_modules: the same forms, removed from what ``target_modules`` selected.
    modules_to_save: modules trained in full and saved with the adapter (e.g. task heads).
    """

    method: ClassVar[str] = ""
    layer_cls: ClassVar[type]  # set by register_method
    # True when trainable_parameters_per_layer needs rank=, the weight's numerical rank
    counts_numerical_rank: ClassVar[bool] = False
    # the field the method grows with, which match_budget sets (None: no size to match)
    size_field: ClassVar[str | None] = None
    trains_base_model: ClassVar[bool] = False  # full fine-tuning: every base weight trains

    num_tasks: int = 1
    target_modules: list[str] | str = "all-linear"
    exclude_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if not isinstance(self.num_tasks, int) or isinstance(self.num_tasks, bool) or self.num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive integer, got {self.num_tasks!r}")
        if not self.target_modules:
            raise ValueError("target_modules is empty: name the layers to adapt, or use 'all-linear'")
        self.validate()

    def validate(self) -> None:
        """Method-specific checks; subclasses raise ValueError naming the bad field."""

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdapterConfig":
        data = dict(data)
        method = data.pop("method", cls.method or None)
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known methods: {sorted(METHODS)}")
        target = METHODS[method]
        if cls is not AdapterConfig and not issubclass(target, cls):
            raise ValueError(f"the config is for method {method!r}, not {cls.method!r}")
        names = {f.name for f in dataclasses.fields(target)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown {method} config keys {unknown}; valid keys: {sorted(names)}")
        return target(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "AdapterConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def check_non_negative_int(config: AdapterConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
