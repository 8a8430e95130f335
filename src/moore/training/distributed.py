"""Running under torchrun / accelerate launch: PyTorch's own process group and DDP."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum of each value over all processes (float64 on the CPU for gloo, on the device for nccl)."""
        if not self.enabled:
            return list(values)
        device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()


    def broadcast_object(self, value):
        """Rank 0's value on every rank (evaluation results, decisions taken on rank 0)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, value) -> list:
        """Every rank's value, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        out = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    @torch.no_grad()
    def broadcast_tensors(self, tensors) -> None:
        """Overwrite each tensor in place with rank 0's copy (weights rank 0 restored from disk)."""
        if self.enabled:
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def check_replicas_agree(self, parameters) -> None:
        """Every process must end with the same weights; a difference is a bug, never a result."""
        if self.enabled:
            sums = self.gather_object(float(sum(p.detach().double().sum() for p in parameters)))
            if len(set(sums)) > 1:
                raise RuntimeError(f"the processes ended with different weights (parameter sums {sums})")


def init_distributed(device: str | None = None) -> DistributedContext:
    """The process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), or one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    target = torch.device(device) if device else torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistributedContext(rank=rank, world_size=world, local_rank=local_rank, device=target)


def shutdown(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
