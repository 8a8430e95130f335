"""The model wrapper: injection, task routing, save/load, merging.

``get_moore_model(model, config)`` replaces the targeted linear layers of any transformers model
by the config's adapter layers (MoORE by default), freezes everything else, and returns a
``MooreModel`` that takes ``task_ids`` in ``forward`` and ``generate``. It mirrors PEFT's
``PeftModel`` where it can: ``save_pretrained``/``from_pretrained``,
``print_trainable_parameters``, attribute access that falls through to the base model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ._version import __version__
from .config import AdapterConfig
from .errors import AdapterFileError
from .io import atomic_write, json_sha256, load_safetensors, read_json, safetensors_metadata, write_json
from .fingerprint import fingerprint_digest, fingerprint_mismatches, model_fingerprint
from .layers.base import AdapterLayer, is_linear
from .routing import TaskRouting, route_checkpointed_modules
from .svd import default_cache_dir
from .task_inference import CLASSIFIER_NAME, TaskClassifier, collect_features, input_features

logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FINGERPRINT_NAME = "base_fingerprint.safetensors"
CONFIG_DIGEST = "moore_config_sha256"  # safetensors metadata of the weights file

HEAD_NAMES = ("lm_head", "classifier", "score", "qa_outputs")  # skipped by "all-linear"
_DEFAULT = object()


# --- choosing the layers -------------------------------------------------------------------------
def _matches(name: str, patterns: list[str] | str) -> bool:
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def _head_names(model: nn.Module) -> list[str]:
    heads = []
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    for name, module in model.named_modules():
        if (output is not None and module is output) or name.split(".")[-1] in HEAD_NAMES:
            heads.append(name)
    return heads


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def find_target_modules(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Names of the linear layers ``config`` selects, with errors that say why none match."""
    linear = [name for name, module in model.named_modules() if is_linear(module)]
    skip = list(config.modules_to_save or [])
    if config.target_modules == "all-linear":
        skip += _head_names(model)
        names = [n for n in linear if not _under(n, skip)]
    else:
        matched = [(n, m) for n, m in model.named_modules() if n and _matches(n, config.target_modules)]
        not_linear = [f"{n} ({type(m).__name__})" for n, m in matched if not is_linear(m)]
        if not_linear:
            raise ValueError(
                f"target_modules={config.target_modules!r} matches modules that are not linear layers: "
                f"{not_linear[:5]}; name nn.Linear/Conv1D layers (e.g. 'q_proj') instead"
            )
        names = [n for n, _ in matched if not _under(n, skip)]
    if config.exclude_modules:
        names = [n for n in names if not _matches(n, config.exclude_modules)]
    if not names:
        suffixes = sorted({n.split(".")[-1] for n in linear})
        raise ValueError(
            f"target_modules={config.target_modules!r} (exclude_modules={config.exclude_modules!r}) matches no "
            f"linear layer of {type(model).__name__}; its linear layers are named {suffixes}"
        )
    return names


def resolve_modules_to_save(model: nn.Module, config: AdapterConfig) -> list[str]:
    names = []
    for pattern in config.modules_to_save or []:
        found = [n for n, _ in model.named_modules() if n and _matches(n, [pattern])]
        if not found:
            raise ValueError(f"modules_to_save entry {pattern!r} matches no module of {type(model).__name__}")
        names += found
    return names


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    for key in ("input_ids", "inputs_embeds", "pixel_values", "input_values", "input_features"):
        if torch.is_tensor(kwargs.get(key)):
            return kwargs[key].shape[0]
    return next((a.shape[0] for a in args if torch.is_tensor(a) and a.dim() > 0), None)


def _fingerprint_for(model: nn.Module, config: AdapterConfig) -> dict[str, torch.Tensor]:
    """The base model's fingerprint: every weight sampled, the adapted layers' weights hashed whole."""
    exclude = tuple(resolve_modules_to_save(model, config))
    targets = [] if config.trains_base_model else find_target_modules(model, config)
    hashed = tuple(n for t in targets for n, _ in model.get_submodule(t).named_parameters(prefix=t, recurse=False)
                   if n == f"{t}.weight")
    return model_fingerprint(model, exclude, hashed)


def _load_classifier(path: Path, num_tasks: int) -> TaskClassifier:
    state, _ = load_safetensors(path)
    weight = state.get("linear.weight")
    if weight is None or weight.dim() != 2:
        raise AdapterFileError(f"{path}: not a task classifier (no 2-D linear.weight)")
    classifier = TaskClassifier(weight.shape[1], weight.shape[0])
    try:
        classifier.load_state_dict(state)
    except RuntimeError as e:
        raise AdapterFileError(f"{path}: {' '.join(str(e).split())[:300]}") from None
    if classifier.num_tasks > num_tasks:
        raise AdapterFileError(f"{path} classifies {classifier.num_tasks} tasks; the adapter has {num_tasks}")
    return classifier


# --- the wrapper ---------------------------------------------------------------------------------
class MooreModel(nn.Module):
    """A transformers model with adapter layers in place of its targeted linear layers."""

    def __init__(self, model: nn.Module, config: AdapterConfig, *, svd_cache_dir: Any = _DEFAULT,
                 _fingerprint: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.model = model
        self.adapter_config = config
        self.routing = TaskRouting(config.num_tasks)
        self.unloaded = False  # merge_and_unload: the adapter layers are swapped for dense ones
        self.unloaded_task_id: int | None = None
        self.task_classifier: TaskClassifier | None = None  # task_ids="infer" (fit_task_classifier)
        cache = default_cache_dir() if svd_cache_dir is _DEFAULT else svd_cache_dir

        saved = self._modules_to_save()
        trains_base = config.trains_base_model
        targets = [] if trains_base else find_target_modules(model, config)
        self.base_fingerprint = _fingerprint or _fingerprint_for(model, config)
        self.num_base_parameters = sum(p.numel() for p in model.parameters())
        model.requires_grad_(trains_base)

        self._adapter_layers: dict[str, AdapterLayer] = {}
        for name in tqdm(targets, desc=f"adapting {len(targets)} layers with {config.method}", leave=False):
            layer = config.layer_cls.from_base(model.get_submodule(name), config, self.routing,
                                               svd_cache_dir=cache, module_name=name)
            layer.module_name = name
            _set_submodule(model, name, layer)  # the base layer, and W with it, is released here
            self._adapter_layers[name] = layer
        for name in saved:
            model.get_submodule(name).requires_grad_(True)
        if getattr(config, "added_tasks", 0):  # an adapter with added tasks trains those rows and nothing else
            self.requires_grad_(False)
            for layer in self._adapter_layers.values():
                layer.added_task_embedding.requires_grad_(True)
        logger.info("%s: adapted %d layers of %s", config.method, len(targets), type(model).__name__)

    def _modules_to_save(self) -> list[str]:
        return resolve_modules_to_save(self.model, self.adapter_config)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    # --- running ----------------------------------------------------------------------------------
    def get_base_model(self) -> nn.Module:
        """The wrapped transformers model, its adapter layers in place (as PEFT's ``get_base_model``)."""
        return self.model

    def adapter_layers(self) -> Iterator[tuple[str, AdapterLayer]]:
        yield from self._adapter_layers.items()

    def _route(self, task_ids, args: tuple, kwargs: dict):
        device = next(self.model.parameters()).device
        if isinstance(task_ids, str):
            if task_ids != "infer":
                raise ValueError(f"task_ids={task_ids!r}: give task ids, None (an unseen task), (B, K) task mixture "
                                 "weights, or 'infer'")
            task_ids = self.infer_task_weights(*args, **kwargs)
        ids = self.routing.validate(task_ids, _batch_size(args, kwargs), device)
        if self.unloaded:
            want = None if ids is None else ids.unique().tolist()
            have = None if self.unloaded_task_id is None else [self.unloaded_task_id]
            if want != have:
                raise ValueError(
                    f"the model is merged for task {self.unloaded_task_id!r} but was called with task_ids={want}; "
                    "call unmerge_adapter() first, or merge_and_unload(task_id=...) for that task"
                )
        if self.training:
            route_checkpointed_modules(self.model, self.routing)
        return self.routing.use(ids)

    def forward(self, *args, task_ids=None, **kwargs):
        """The base model's forward; ``task_ids`` (LongTensor[B], or None for an unseen task) routes each sample."""
        with self._route(task_ids, args, kwargs):
            return self.model(*args, **kwargs)

    def generate(self, *args, task_ids=None, **kwargs):
        """``generate`` with per-sample task ids; they follow the batch through beam expansion."""
        with self._route(task_ids, args, kwargs):
            return self.model.generate(*args, **kwargs)

    @contextmanager
    def disable_adapter(self):
        """Within the block the model is its base model: every adapter layer computes its frozen
        ``W x + b`` and ignores the task ids (as PEFT's ``disable_adapter``), e.g. for base-model
        outputs without a second copy of the model. Merged layers are unmerged for the block and
        merged again after it."""
        if self.adapter_config.trains_base_model:
            raise ValueError(f"{self.adapter_config.method} trains the base model's own weights: there is no "
                             "adapter to disable (keep a copy of the base model instead)")
        if self.unloaded:
            raise ValueError("merge_and_unload() replaced the adapter layers by dense ones; call "
                             "unmerge_adapter() before disable_adapter()")
        layers = [layer for _, layer in self.adapter_layers()]
        merged = [layer for layer in layers if layer.is_merged]
        for layer in merged:
            layer.unmerge()
        for layer in layers:
            layer.adapter_enabled = False
        try:
            yield
        finally:
            for layer in layers:
                layer.adapter_enabled = True
            for layer in merged:
                layer.merge()

    # --- task-free inference and new tasks ---------------------------------------------------------
    def infer_task_weights(self, input_ids=None, attention_mask=None, inputs_embeds=None, token_type_ids=None,
                           **_) -> torch.Tensor:
        """(B, K) task probabilities from the task classifier, for ``task_ids="infer"``."""
        if self.task_classifier is None:
            raise ValueError("task_ids='infer' needs a task classifier: fit one with fit_task_classifier(...) "
                             "(moore fit-task-classifier RUN_DIR), or load an adapter saved with one")
        if self.task_classifier.num_tasks != self.routing.num_tasks:
            raise ValueError(f"the task classifier knows {self.task_classifier.num_tasks} tasks and the adapter has "
                             f"{self.routing.num_tasks} (a task was added): fit it again")
        features = input_features(self.model, input_ids, attention_mask, inputs_embeds, token_type_ids)
        return self.task_classifier.to(features.device)(features)

    def fit_task_classifier(self, batches) -> float:
        """Fit the task classifier on ``(inputs, task_ids)`` batches of the training tasks' inputs;
        returns its accuracy on them."""
        features, labels = collect_features(self.model, batches)
        self.task_classifier = TaskClassifier.fit(features, labels, self.routing.num_tasks)
        with torch.no_grad():
            predicted = self.task_classifier(features).argmax(-1)
        return float((predicted == labels).float().mean())

    def add_task(self) -> int:
        """Append a task to the adapter: one new row of every layer's task table, starting equal
        to the unseen-task embedding. Every other parameter is frozen, so training now moves only
        that row and the outputs of the existing tasks stay bit-identical. Returns the new id."""
        layers = [layer for _, layer in self.adapter_layers()]
        if not layers or not all(hasattr(layer, "add_task") for layer in layers):
            raise ValueError(f"add_task needs a task table in every adapted layer (MoORE with task_dim > 0); "
                             f"{self.adapter_config.method} has none")
        if self.unloaded or any(getattr(layer, "reflections_merged", False) for layer in layers):
            raise ValueError("add_task on a merged model: call unmerge_adapter() first")
        config = self.adapter_config
        for layer in layers:
            layer.add_task()
        self.requires_grad_(False)
        for layer in layers:
            layer.added_task_embedding.requires_grad_(True)
        base_tasks = config.base_tasks or config.num_tasks - config.added_tasks
        self.adapter_config = dataclasses.replace(config, num_tasks=config.num_tasks + 1, added_tasks=1,
                                                  base_tasks=base_tasks)
        self.routing.num_tasks += 1
        return self.routing.num_tasks - 1

    def auxiliary_loss(self) -> torch.Tensor | None:
        """Sum of the layers' auxiliary losses from the last forward (e.g. load balancing), or None."""
        losses = [loss for _, layer in self.adapter_layers() if (loss := layer.auxiliary_loss()) is not None]
        return torch.stack([loss.float() for loss in losses]).sum() if losses else None

    # --- parameters -------------------------------------------------------------------------------
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all): all counts the base model as loaded plus the adapter's new parameters."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        added = sum(
            getattr(layer, pname).numel()
            for _, layer in self.adapter_layers()
            for pname in layer.adapter_parameter_names
            if getattr(layer, pname) is not None
        )
        return trainable, self.num_base_parameters + added

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """What save_pretrained writes: each adapter layer's own parameters and the modules_to_save
        (with full fine-tuning: every parameter of the model)."""
        if self.adapter_config.trains_base_model:
            return dict(self.model.named_parameters())
        state = {}
        for name, layer in self.adapter_layers():
            for pname in layer.adapter_parameter_names:
                value = getattr(layer, pname)
                if value is not None:
                    state[f"{name}.{pname}"] = value
        for name in self._modules_to_save():
            for pname, value in self.model.get_submodule(name).named_parameters():
                state[f"{name}.{pname}"] = value
        return state

    def load_adapter_weights(self, path: str | os.PathLike) -> None:
        """``load_adapter_state_dict`` from a saved weights file, with errors that name the file."""
        state, _ = load_safetensors(path)
        try:
            self.load_adapter_state_dict(state)
        except ValueError as e:
            raise AdapterFileError(f"{path}: {e}") from None

    @torch.no_grad()
    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = self.adapter_state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"adapter weights do not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for key, target in own.items():
            if target.shape != state[key].shape:
                raise ValueError(f"adapter weight {key} has shape {tuple(state[key].shape)}, expected {tuple(target.shape)}")
            if not torch.isfinite(state[key]).all():
                raise ValueError(f"adapter weight {key} holds NaN or Inf values")
            target.copy_(state[key])

    # --- saving and loading -----------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write adapter_config.json, adapter_model.safetensors and base_fingerprint.safetensors."""
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.adapter_state_dict().items()}
        # the config's digest travels with the weights: an edited config (a flag that changes the
        # forward, say) is refused at load rather than silently giving other outputs
        metadata = {"format": "pt", CONFIG_DIGEST: json_sha256(self.adapter_config.to_dict())}
        atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(weights, tmp, metadata=metadata))
        atomic_write(path / FINGERPRINT_NAME, lambda tmp: save_file(self.base_fingerprint, tmp))
        if self.task_classifier is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in self.task_classifier.state_dict().items()}
            atomic_write(path / CLASSIFIER_NAME, lambda tmp: save_file(state, tmp))
        elif (path / CLASSIFIER_NAME).exists():  # a stale classifier of an earlier save would route this one
            (path / CLASSIFIER_NAME).unlink()
        base_config = getattr(self.model, "config", None)
        meta = {
            "moore_version": __version__,
            "config": self.adapter_config.to_dict(),
            "base_model": {
                "class": type(self.model).__name__,
                "name_or_path": getattr(base_config, "_name_or_path", None),
                "num_parameters": self.num_base_parameters,
                "fingerprint": fingerprint_digest(self.base_fingerprint),
            },
            "adapted_modules": list(self._adapter_layers),
        }
        # the config goes last: a folder with a config in it is complete
        write_json(path / CONFIG_NAME, meta)

    @staticmethod
    def read_metadata(directory: str | os.PathLike) -> dict:
        meta = read_json(directory, CONFIG_NAME, "it is not a saved moore adapter")
        if not isinstance(meta.get("config"), dict) or "method" not in meta["config"]:
            raise AdapterFileError(f"{Path(directory) / CONFIG_NAME} has no 'config' object with a 'method': "
                                   "it was not written by save_pretrained, or was edited")
        return meta

    @staticmethod
    def read_config(directory: str | os.PathLike, meta: dict | None = None) -> AdapterConfig:
        """The saved adapter config, checked against the digest stored with the weights."""
        meta = meta or MooreModel.read_metadata(directory)
        where = Path(directory) / CONFIG_NAME
        try:
            config = AdapterConfig.from_dict(meta["config"])
        except (TypeError, ValueError) as e:
            raise AdapterFileError(f"{where}: invalid config ({e})") from None
        metadata = safetensors_metadata(Path(directory) / WEIGHTS_NAME)
        saved = metadata.get(CONFIG_DIGEST)
        if saved is None:
            logger.warning("%s predates config digests; its config is trusted as it is", directory)
        elif saved != json_sha256(meta["config"]):  # as written: fields added to the config class since keep old files valid
            raise AdapterFileError(
                f"{where} does not match the config its weights were saved with (the digest in {WEIGHTS_NAME} "
                "differs): the file was edited after saving. Restore it, or save the adapter again"
            )
        return config

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | os.PathLike, *, is_trainable: bool = False,
                        svd_cache_dir: Any = _DEFAULT) -> "MooreModel":
        """Rebuild a saved adapter on ``model``; refuses a base model whose weights differ, and
        adapter files that are missing, truncated or edited."""
        meta = cls.read_metadata(directory)
        config = cls.read_config(directory, meta)
        saved_fingerprint, _ = load_safetensors(Path(directory) / FINGERPRINT_NAME)
        current = _fingerprint_for(model, config)
        problems = fingerprint_mismatches(saved_fingerprint, current)
        if problems:
            base = meta.get("base_model", {})
            raise AdapterFileError(
                f"{directory} was saved for another base model ({base.get('class')} "
                f"{base.get('name_or_path')!r}); this {type(model).__name__} differs: " + "; ".join(problems[:5])
            )
        wrapper = cls(model, config, svd_cache_dir=svd_cache_dir, _fingerprint=current)
        wrapper.load_adapter_weights(Path(directory) / WEIGHTS_NAME)
        if (Path(directory) / CLASSIFIER_NAME).is_file():
            wrapper.task_classifier = _load_classifier(Path(directory) / CLASSIFIER_NAME, wrapper.routing.num_tasks)
        if not is_trainable:
            wrapper.requires_grad_(False)
            wrapper.eval()
        return wrapper

    # --- merging for inference --------------------------------------------------------------------
    def merge_adapter(self) -> None:
        """Fold what every input shares into the frozen factors, in place (MoORE: H into V; LoRA,
        HRA: the update into W). The router still runs, so any mix of tasks in a batch stays exact.
        ``unmerge_adapter()`` undoes it; training needs it undone."""
        for _, layer in self.adapter_layers():
            layer.merge()

    def merge_and_unload(self, task_id: int | None = None) -> nn.Module:
        """The base model with every adapter layer replaced by a plain dense layer equal to it for
        task ``task_id`` (None: an unseen task, the mean task embedding): a plain transformers model
        that runs at the base model's cost. Needs layers with a dense form per task (MoORE with
        sample_dim=0, LoRA, HRA, MTL-LoRA). ``unmerge_adapter()`` puts the adapter layers back."""
        if task_id is not None:
            self.routing.validate(torch.tensor([task_id]), None, None)
        self.unmerge_adapter()
        dense = {name: layer.to_dense(task_id) for name, layer in self.adapter_layers()}  # all or nothing
        for name, layer in dense.items():
            _set_submodule(self.model, name, layer)
        self.unloaded, self.unloaded_task_id = True, task_id
        return self.model

    def unmerge_adapter(self) -> None:
        """Undo ``merge_adapter`` and ``merge_and_unload``: the adapter layers, as trained, are back."""
        if self.unloaded:
            for name, layer in self.adapter_layers():
                _set_submodule(self.model, name, layer)
            self.unloaded, self.unloaded_task_id = False, None
        for _, layer in self.adapter_layers():
            layer.unmerge()


def get_moore_model(model: nn.Module, config: AdapterConfig, *, svd_cache_dir: Any = _DEFAULT) -> MooreModel:
    """Adapt ``model`` with ``config`` (a ``MooreConfig`` or another method's config).

    ``svd_cache_dir``: where SVD factors are cached (default ``$MOORE_SVD_CACHE`` or
    ``~/.cache/moore/svd``; ``None`` disables the cache).
    """
    return MooreModel(model, config, svd_cache_dir=svd_cache_dir)
