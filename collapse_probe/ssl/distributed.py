"""DDP plumbing for torchrun: process-group setup and an all-gather that keeps the gradient.

Every process computes the *same* loss over the whole gathered global batch. Its backward sums
the gradient that reaches each process's rows over all processes (all-reduce), so the gradient
on process k's local embeddings is ``world_size * dL/dz_k``; DDP then averages parameter
gradients over processes, which leaves exactly the single-process gradient ``dL/dtheta``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from collapse_probe._utils.ranks import is_distributed, world_size


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Rank and world size of the running job (from the process group, else torchrun's env vars)."""
    if is_distributed():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )


def init_distributed(device_type: str) -> DistInfo:
    """Join the torchrun job if there is one (NCCL on CUDA, gloo on CPU); a no-op otherwise."""
    info = dist_info()
    if info.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return dist_info()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        ctx.rank, ctx.batch = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's (B, ...) tensor into (world * B, ...), rank order, with gradient.

    Without an initialised process group (or with one process) it returns ``x`` unchanged.

    >>> gather_with_grad(torch.ones(2, 3)).shape
    torch.Size([2, 3])
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over processes (a copy; ``x`` itself when not distributed)."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / dist.get_world_size()
