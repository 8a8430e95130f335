"""MoORE: a frozen linear map turned into a mixture of orthogonal rank-one experts.

    W = U diag(σ) Vᵀ                                   (thin SVD, once, cached)
    g(x, k) = Pᵀ t_k + Qᵀ Γ x                           (hybrid router: task level + token level)
              (or Qᵀ Γ x / rms(x) with ``normalize_sample_router``)
    H = Π_l (I − 2 r_l r_lᵀ / ‖r_l‖²)                  (orthogonal input adapter)
    y = U diag(σ + g(x, k)) Vᵀ H x + b

Expert d is u_d v_dᵀ H. U and V never train, so the experts stay orthogonal and the output
(minus bias) stays in Range(W). See METHOD.md §1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AdapterConfig, check_non_negative_int, register_method
from ..householder import compact_wy, fold_into_rows, pair_init
from ..routing import TaskRouting
from ..svd import FactoredWeight, cached_svd
from .base import AdapterLayer, dense_layer, layer_type, linear_weight


@dataclass
class MooreConfig(AdapterConfig):
    """MoORE's options.

    task_dim: size of the task embedding t_k (Dt); 0 turns task-level routing off.
    sample_dim: width of the token-level router Γ (Ds); 0 turns token-level routing off, which
        lets ``merge_and_unload(task_id=k)`` produce one plain dense matrix per task.
    num_reflections: Householder reflections in H (L); must be even so that H = I at init.
    clamp_singular_values: use ReLU(σ + g) as the reference code does (the paper has no clamp).
    normalize_sample_router: feed the token-level router x / rms(x) instead of x (not in the
        paper). Decoder LLMs have "massive activations": a few tokens (often the first, the
        attention sink) whose hidden state is hundreds of times larger than the rest. The
        paper's linear router gives those tokens offsets hundreds of times larger too, which
        shifts the attention sink and with it every later token (benchmarks/results/csr-mtl-mini).
    svd_dtype: precision of the one-off SVD, "float32" or "float64".
    added_tasks: how many of the task table's last rows ``add_task`` appended since the table was
        last frozen; only those train (set by ``add_task``, not by hand).
    base_tasks: the tasks the adapter was trained on, whose mean embedding routes an unseen task;
        None: all of them (rows added later leave the unseen-task routing alone).
    """

    method: ClassVar[str] = "moore"
    counts_numerical_rank: ClassVar[bool] = True  # a layer's size depends on its weight's rank
    size_field: ClassVar[str] = "task_dim"

    task_dim: int = 128
    sample_dim: int = 64
    num_reflections: int = 8
    clamp_singular_values: bool = False
    normalize_sample_router: bool = False
    svd_dtype: str = "float32"
    added_tasks: int = 0
    base_tasks: int | None = None

    def validate(self) -> None:
        check_non_negative_int(self, "task_dim", "sample_dim", "num_reflections", "added_tasks")
        if self.added_tasks >= self.num_tasks:
            raise ValueError(f"added_tasks ({self.added_tasks}) must be fewer than num_tasks ({self.num_tasks})")
        if self.base_tasks is not None and not 1 <= self.base_tasks <= self.num_tasks - self.added_tasks:
            raise ValueError(f"base_tasks must be between 1 and num_tasks - added_tasks, got {self.base_tasks}")
        if self.num_reflections % 2:
            raise ValueError(
                f"num_reflections must be even (got {self.num_reflections}): H is a product of "
                "reflections, and an odd number of them has determinant -1, so H could never be the "
                "identity and the adapted model could not start equal to the base model"
            )
        if self.task_dim == 0 and self.sample_dim == 0 and self.num_reflections == 0:
            raise ValueError("task_dim, sample_dim and num_reflections are all 0: MoORE would train nothing")
        if self.svd_dtype not in ("float32", "float64"):
            raise ValueError(f"svd_dtype must be 'float32' or 'float64', got {self.svd_dtype!r}")

    def trainable_parameters_per_layer(self, in_features: int, out_features: int, *, rank: int | None = None, **_) -> int:
        """METHOD.md §1: Dt·K + Dt·r + Ds·r + Ds·Din + L·Din, with r = min(Din, Dout) by default.

        A layer's r is its weight's numerical rank: min(Din, Dout) unless some singular values are
        negligible (below σ_max·max(Din, Dout)·eps), whose directions are dropped."""
        r = min(in_features, out_features) if rank is None else rank
        dt, ds = self.task_dim, self.sample_dim
        return dt * self.num_tasks + dt * r + ds * r + ds * in_features + self.num_reflections * in_features


class MooreLinear(AdapterLayer):
    """Replaces ``nn.Linear``/``Conv1D``. Frozen buffers U, σ, Vᵀ in the model's dtype (W is
    dropped); trainable router and reflections in float32 whatever the model's dtype."""

    adapter_parameter_names = ("task_embedding", "added_task_embedding", "task_proj", "sample_down", "sample_up",
                               "reflections")
    supports_task_mixtures = True

    def __init__(self, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, bias: torch.Tensor | None,
                 config: MooreConfig, routing: TaskRouting, layer_type: str = "linear"):
        out_features, rank = u.shape
        in_features = vh.shape[1]
        super().__init__(in_features, out_features, bias, layer_type, routing)
        self.rank = rank
        self.clamp_singular_values = config.clamp_singular_values
        self.normalize_sample_router = config.normalize_sample_router
        self.register_buffer("u", u, persistent=False)  # (Dout, r)
        self.register_buffer("s", s, persistent=False)  # (r,)
        self.register_buffer("vh", vh, persistent=False)  # (r, Din), Vᵀ; Vᵀ H once merged
        self.reflections_merged = False

        def param(tensor):
            return nn.Parameter(tensor.to(device=u.device, dtype=torch.float32))

        dt, ds, num_reflections = config.task_dim, config.sample_dim, config.num_reflections
        # Task level: P zero-init so g = 0 at init; the table N(0, 1) as in the reference code.
        # rows appended by add_task live apart, so that training them cannot move the others
        frozen_rows = config.num_tasks - config.added_tasks
        self.task_embedding = param(torch.randn(frozen_rows, dt)) if dt else None  # (K, Dt)
        self.added_task_embedding = param(torch.zeros(config.added_tasks, dt)) if dt and config.added_tasks else None
        self.base_tasks = config.base_tasks or frozen_rows
        self.task_proj = param(torch.zeros(rank, dt)) if dt else None  # Pᵀ: (r, Dt)
        # Token level: Γ kaiming-init, Q zero-init, so g = 0 at init.
        if ds:
            gamma = torch.empty(ds, in_features)
            nn.init.kaiming_uniform_(gamma, a=math.sqrt(5))
            self.sample_down = param(gamma)  # Γ: (Ds, Din)
            self.sample_up = param(torch.zeros(rank, ds))  # Qᵀ: (r, Ds)
        else:
            self.sample_down = self.sample_up = None
        # Reflections in equal pairs, so H = I at init (HRA's init).
        self.reflections = param(pair_init(num_reflections, in_features)) if num_reflections else None  # (L, Din)

    @classmethod
    def from_base(cls, base_layer: nn.Module, config: MooreConfig, routing: TaskRouting, *,
                  svd_cache_dir=None, module_name: str = "", **_) -> "MooreLinear":
        weight = linear_weight(base_layer)
        u, s, vh = cached_svd(weight, config.svd_dtype, svd_cache_dir, name=f"the weight of {module_name or 'the layer'}")
        return cls(u, s, vh, base_layer.bias, config, routing, layer_type(base_layer))

    @property
    def weight(self) -> torch.Tensor:
        """The frozen weight ``U diag(σ) Vᵀ`` (``Vᵀ H`` once merged) in the base layer's layout,
        computed only when its values are used: W itself is not kept."""
        return FactoredWeight(self.u, self.s, self.vh, transpose=self.layer_type == "conv1d")

    # --- the router -----------------------------------------------------------------------------
    def task_table(self) -> torch.Tensor:
        """Every task's embedding t_k: (K, Dt)."""
        if self.added_task_embedding is None:
            return self.task_embedding
        return torch.cat([self.task_embedding, self.added_task_embedding])

    def task_gate(self, task_ids: torch.Tensor | None) -> torch.Tensor:
        """Pᵀ t_k per row: (N, r), or (1, r) for an unseen task (the mean embedding of the tasks
        the adapter was trained on). ``task_ids`` may also hold task mixtures, (N, K) weights:
        t = Σ_k w_k t_k, which Pᵀ, being linear, turns into the same mixture of task offsets."""
        if task_ids is None:
            t = self.task_embedding[: self.base_tasks].mean(0, keepdim=True)  # (1, Dt)
        elif task_ids.is_floating_point():
            t = task_ids.to(self.task_embedding.dtype) @ self.task_table()  # (N, K) @ (K, Dt)
        else:
            t = self.task_table()[task_ids]  # (N, Dt)
        return F.linear(t, self.task_proj)

    @torch.no_grad()
    def add_task(self) -> None:
        """Append a task-table row, equal to the unseen-task embedding (so the new task starts as
        the zero-shot model); rows added before it join the frozen table."""
        if self.task_embedding is None:
            raise ValueError(f"{self.module_name or 'layer'} has no task table (task_dim=0): add_task needs one")
        new = self.task_embedding[: self.base_tasks].mean(0, keepdim=True)
        self.task_embedding = nn.Parameter(self.task_table().detach().clone(), requires_grad=False)
        self.added_task_embedding = nn.Parameter(new.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, ..., Din) with N the batch (or batch·beams, or flattened tokens)
        if self.reflections_merged and self.training and torch.is_grad_enabled():
            raise RuntimeError(f"{self.module_name or 'layer'}: reflections are merged; call unmerge_adapter() before training")
        if not self.adapter_enabled:  # disable_adapter(): W x + b (unmerged there, so vh is Vᵀ)
            return F.linear(F.linear(x, self.vh) * self.s, self.u, self.bias)
        dtype = x.dtype
        use_reflections = self.reflections is not None and not self.reflections_merged
        z = F.linear(x, self.vh)  # Vᵀ x: (..., r)

        # One thin matmul gives both Y x (for H) and Γ x (for the token-level router).
        side = []
        if use_reflections:
            y, t = compact_wy(self.reflections)  # H = I − Yᵀ T Y; y: (L, Din), t: (L, L)
            side.append(y)
        if self.sample_down is not None:
            side.append(self.sample_down)
        proj = F.linear(x, torch.cat(side).to(dtype)) if side else None  # (..., L + Ds)

        if use_reflections:
            num_reflections = y.shape[0]
            # Vᵀ H x = Vᵀ x − (Vᵀ Yᵀ T)(Y x): an (r, L) matrix per step, no Din×Din matrix
            coupling = F.linear(self.vh, y.to(self.vh.dtype)).float() @ t  # (r, L)
            z = z - F.linear(proj[..., :num_reflections], coupling.to(dtype))
        else:
            num_reflections = 0

        gate = self._gate(x, proj[..., num_reflections:] if self.sample_down is not None else None)
        return F.linear(z * gate, self.u, self.bias)  # U diag(σ + g) (Vᵀ H x) + b

    def _gate(self, x: torch.Tensor, sample_proj: torch.Tensor | None) -> torch.Tensor:
        """σ + Pᵀ t_k + Qᵀ Γ x: (..., r), or (r,) with no routing; sample_proj = Γ x."""
        gate = self.s  # (r,)
        if sample_proj is not None:
            if self.normalize_sample_router:
                # Γ (x / rms(x)) = (Γ x) / rms(x): the same thin matmul, rescaled per token
                rms = x.float().pow(2).mean(-1, keepdim=True).add(1e-6).sqrt().to(x.dtype)  # (..., 1)
                sample_proj = sample_proj / rms
            gate = gate + F.linear(sample_proj, self.sample_up.to(x.dtype))  # (..., r)
        if self.task_embedding is not None:
            g_task = self.task_gate(self.task_ids_for(x)).to(x.dtype)  # (N or 1, r)
            gate = gate + g_task.view(g_task.shape[0], *([1] * (x.dim() - 2)), self.rank)
        if self.clamp_singular_values:
            gate = F.relu(gate)
        return gate

    @torch.no_grad()
    def expert_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The experts' weights σ + g(x, k) for each row of x (..., r): what routing analysis plots.
        Call it inside the model's forward (a hook), where the batch's task ids are set."""
        sample_proj = F.linear(x, self.sample_down.to(x.dtype)) if self.sample_down is not None else None
        return self._gate(x, sample_proj).expand(*x.shape[:-1], self.rank)

    # --- inference --------------------------------------------------------------------------------
    @property
    def is_merged(self) -> bool:
        return self.reflections_merged

    @torch.no_grad()
    def merge(self) -> None:
        """Fold H into V once: V'ᵀ = Vᵀ H (the paper's inference merge)."""
        if self.reflections is not None and not self.reflections_merged:
            self.vh = fold_into_rows(self.vh, self.reflections)
            self.reflections_merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.reflections_merged:
            self.vh = fold_into_rows(self.vh, self.reflections, inverse=True)
            self.reflections_merged = False

    @torch.no_grad()
    def dense_weight(self, task_id: int | None) -> torch.Tensor:
        """U diag(σ + Pᵀ t_k) Vᵀ H as a (Dout, Din) matrix; needs token-level routing off."""
        if self.sample_down is not None:
            raise ValueError(
                f"{self.module_name or 'layer'} routes every token (sample_dim > 0), so it has no single "
                "dense matrix per task; merge_and_unload(task_id=...) needs sample_dim=0 (merge_adapter() still folds H)"
            )
        work = torch.promote_types(self.vh.dtype, torch.float32)
        vh = self.vh.to(work)
        if self.reflections is not None and not self.reflections_merged:
            vh = fold_into_rows(vh, self.reflections)
        gate = self.s.to(work)
        if self.task_embedding is not None:
            ids = None if task_id is None else torch.tensor([task_id], device=self.s.device)
            gate = gate + self.task_gate(ids)[0].to(work)
        if self.clamp_singular_values:
            gate = F.relu(gate)
        return ((self.u.to(work) * gate) @ vh).to(self.vh.dtype)

    def to_dense(self, task_id: int | None) -> nn.Module:
        return dense_layer(self.dense_weight(task_id), self.bias, self.layer_type)

    def extra_repr(self) -> str:
        dt = 0 if self.task_embedding is None else self.task_embedding.shape[1]
        ds = 0 if self.sample_down is None else self.sample_down.shape[0]
        num_reflections = 0 if self.reflections is None else self.reflections.shape[0]
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"task_dim={dt}, sample_dim={ds}, num_reflections={num_reflections}, bias={self.bias is not None}"
                + (", normalize_sample_router=True" if self.normalize_sample_router else ""))


register_method(MooreConfig, MooreLinear)
