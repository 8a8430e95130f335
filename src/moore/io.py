"""Files written atomically (a temporary file renamed into place) and saved JSON read back."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import AdapterFileError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` a temporary file beside ``path``, then rename it over ``path``.

    The file gets the mode any new file gets (0666 less the umask), not mkstemp's private 0600,
    so saved adapters and the SVD cache can be shared like other files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def finite_or_none(data: Any) -> Any:
    """``data`` with every NaN or ±Inf float replaced by None (JSON has no such numbers)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_or_none(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_none(v) for v in data]
    return data


def write_json(path: Path, data: Any) -> None:
    """Strict JSON (a NaN score is written as null), atomically."""
    text = json.dumps(finite_or_none(data), indent=2, allow_nan=False) + "\n"
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def read_json(directory: str | os.PathLike, name: str, missing: str, *, expect: type = dict) -> Any:
    """``directory/name`` parsed; ``missing`` completes the error when the file is not there."""
    path = Path(directory) / name
    if not path.is_file():
        raise AdapterFileError(f"{directory} holds no {name}: {missing}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterFileError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, expect):
        raise AdapterFileError(f"{path}: expected a JSON {'object' if expect is dict else expect.__name__}, "
                               f"found {type(data).__name__}")
    return data


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> tuple[dict, dict[str, str]]:
    """(tensors, metadata) of a safetensors file; an error naming the file if it is missing or damaged."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"{path} is missing")
    try:
        with safe_open(str(path), "pt", device=device) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AdapterFileError(f"{path} is truncated or not a safetensors file ({e})") from None


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata in a safetensors file's header (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"{path} is missing")
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AdapterFileError(f"{path} is truncated or not a safetensors file ({e})") from None


def json_sha256(data: Any) -> str:
    """A digest of JSON-able data that does not depend on key order or layout."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
