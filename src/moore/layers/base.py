"""What every adapter layer shares: the frozen linear map it replaces, and task routing."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..routing import TaskRouting

LINEAR_TYPES = (nn.Linear, Conv1D)


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, LINEAR_TYPES)


def linear_weight(layer: nn.Module) -> torch.Tensor:
    """The (Dout, Din) weight of an ``nn.Linear`` or a GPT-2 ``Conv1D`` (which stores Wᵀ)."""
    if isinstance(layer, Conv1D):
        return layer.weight.T
    if isinstance(layer, nn.Linear):
        return layer.weight
    raise TypeError(f"{type(layer).__name__} is not a linear layer (nn.Linear or transformers Conv1D)")


def layer_type(layer: nn.Module) -> str:
    """"linear" or "conv1d" (GPT-2's transposed ``Conv1D``): what merging gives back."""
    return "conv1d" if isinstance(layer, Conv1D) else "linear"


def dense_layer(weight: torch.Tensor, bias: torch.Tensor | None, layer_type: str) -> nn.Module:
    """A plain ``nn.Linear`` (or ``Conv1D``) holding a (Dout, Din) weight: what merging returns."""
    out_features, in_features = weight.shape
    with torch.device("meta"):
        layer = Conv1D(out_features, in_features) if layer_type == "conv1d" else nn.Linear(
            in_features, out_features, bias=bias is not None
        )
    layer.weight = nn.Parameter(weight.T.contiguous() if layer_type == "conv1d" else weight.contiguous(), False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    elif layer_type == "conv1d":
        layer.bias = nn.Parameter(torch.zeros(out_features, dtype=weight.dtype, device=weight.device), False)
    return layer


class AdapterLayer(nn.Module):
    """Base class of the layers that replace a frozen ``nn.Linear``/``Conv1D``.

    Subclasses build themselves from the base layer with ``from_base`` and list their trainable
    tensors in ``adapter_parameter_names``; those, and nothing else of the layer, are saved.
    Every layer has a ``weight`` (the frozen weight, in the base layer's layout), as PEFT's layers
    do, because some models read it in their forward (T5: ``self.wo.weight.dtype``).
    """

    adapter_parameter_names: tuple[str, ...] = ()
    supports_task_mixtures = False  # True: task_ids may be (N, K) mixture weights (a task table to mix)

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None, layer_type: str,
                 routing: TaskRouting):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.layer_type = layer_type  # "linear" or "conv1d": what merging gives back
        if not isinstance(self, KeepsBaseLayer):  # there, bias reads through to the base layer
            self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.routing = routing
        self.module_name = ""  # full name in the model, for error messages; set at injection
        self.adapter_enabled = True  # False inside MooreModel.disable_adapter(): the frozen W x + b alone

    @classmethod
    def from_base(cls, base_layer: nn.Module, config, routing: TaskRouting, **context) -> "AdapterLayer":
        raise NotImplementedError

    def task_ids_for(self, x: torch.Tensor) -> torch.Tensor | None:
        """The task id of every row of x (leading dim), or None for an unseen task; (N, K) task
        mixture weights for a layer that ``supports_task_mixtures``."""
        ids = self.routing.ids_for(x.shape[0], self.module_name or type(self).__name__)
        if ids is not None and ids.is_floating_point() and not self.supports_task_mixtures:
            raise ValueError(f"{type(self).__name__} routes by task id only; task mixtures (task_ids='infer' or "
                             "(B, K) weights) need a task table to mix, as MoORE has")
        return ids

    # --- inference merging: subclasses implement what their math allows --------------------------
    @property
    def is_merged(self) -> bool:
        """Whether ``merge`` has folded something into the frozen factors."""
        return False

    def merge(self) -> None:
        """Fold whatever is input-independent into the frozen factors (reversible by ``unmerge``)."""

    def unmerge(self) -> None:
        """Undo ``merge``."""

    def to_dense(self, task_id: int | None) -> nn.Module:
        """A plain linear layer equal to this layer for task ``task_id`` (None: an unseen task)."""
        raise NotImplementedError(f"{type(self).__name__} has no dense form")

    def auxiliary_loss(self) -> torch.Tensor | None:
        """A loss term the layer adds to the task loss (e.g. load balancing), or None."""
        return None


class KeepsBaseLayer:
    """Mixin of the layers that keep the frozen base layer as ``self.base_layer``: its weight and
    bias read through (merged updates included), as on PEFT's layers."""

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias
