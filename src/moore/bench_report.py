"""The benchmark report, rebuilt from the result files alone."""

from __future__ import annotations

from pathlib import Path


def write_report(suite_name: str, results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "REPORT.md"
    path.write_text(f"# {suite_name}\n\n(no results yet)\n")
    return path
