"""Files written atomically (a temporary file renamed into place) and saved JSON read back."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: Any) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def read_json(directory: str | os.PathLike, name: str, missing: str) -> Any:
    """``directory/name`` parsed; ``missing`` completes the error when the file is not there."""
    path = Path(directory) / name
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no {name}: {missing}")
    return json.loads(path.read_text())
