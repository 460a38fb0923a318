"""torch.distributed helpers: process-group set-up, gathers that keep gradients, grad averaging."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from edgeclip.errors import EdgeclipError


class DistributedError(EdgeclipError, RuntimeError):
    """Another process of a multi-process run failed or stopped answering."""


def is_peer_failure(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because another process died or went silent."""
    if isinstance(e, (dist.DistError, ConnectionError)):
        return True
    text = str(e).lower()
    return any(w in text for w in ("gloo", "nccl", "connection", "timed out", "timeout", "peer"))


def world_info() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` without it)."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def init(timeout_s: float = 120.0) -> tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on GPU).

    The timeout bounds every collective, so a dead peer makes the others fail, not hang.
    """
    rank, world, local = world_info()
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return rank, world, device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns this process's slice of the summed gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every process computes the same global loss, so summing the gradients and later
        # averaging parameter gradients over processes gives exactly the 1-process gradient.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        r = dist.get_rank()
        return grad[r * n : (r + 1) * n]


def gather(x: torch.Tensor | None, with_grad: bool = True) -> torch.Tensor | None:
    """Concatenate ``x`` from every process in rank order (identity on one process)."""
    if x is None or not active():
        return x
    if with_grad and x.requires_grad:
        return _GatherWithGrad.apply(x)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over processes in one flat all-reduce (params without grad get zeros)."""
    if not active():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    off = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[off : off + n].view_as(p))
        off += n


def all_gather_object(obj):
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
