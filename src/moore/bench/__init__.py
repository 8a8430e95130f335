"""``moore bench``: suites that compare MoORE with its peers on the same data, budget and seed."""

from .report import write_report
from .runner import run_suite
from .suites import SUITES, Method, Suite, get_suite

__all__ = ["SUITES", "Method", "Suite", "get_suite", "run_suite", "write_report"]
