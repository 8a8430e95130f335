"""Full fine-tuning: every weight of the base model trains; no layer is replaced."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import AdapterConfig, register_method


@dataclass
class FullFinetuneConfig(AdapterConfig):
    method: ClassVar[str] = "full"
    trains_base_model: ClassVar[bool] = True


register_method(FullFinetuneConfig, None)
