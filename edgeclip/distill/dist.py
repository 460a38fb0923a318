"""torch.distributed helpers: process-group set-up, gathers that keep gradients, grad averaging."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
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


def process_group_options(device: torch.device, timeout_s: float) -> tuple[str, dict, dict]:
    """``(backend, init_process_group kwargs, environment to set)`` for a run on ``device``.

    On CUDA: nccl, with ``device_id`` (binds the group to this process's GPU at once) and
    ``TORCH_NCCL_BLOCKING_WAIT=1``, so that a collective that times out because a peer died
    raises a Python exception, as gloo does, instead of the watchdog aborting the process.
    """
    kwargs: dict = {"timeout": timedelta(seconds=timeout_s)}
    if device.type == "cuda":
        kwargs["device_id"] = device
        return "nccl", kwargs, {"TORCH_NCCL_BLOCKING_WAIT": "1"}
    return "gloo", kwargs, {}


def init(timeout_s: float = 120.0) -> tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on GPU).

    The timeout bounds every collective, so a dead peer makes the others fail, not hang.
    """
    rank, world, local = world_info()
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend, kwargs, env = process_group_options(device, timeout_s)
        for k, v in env.items():
            os.environ.setdefault(k, v)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        try:
            dist.init_process_group(backend, **kwargs)
        except (RuntimeError, ConnectionError, ValueError) as e:  # before: torch's traceback
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise DistributedError(
                f"process {rank} of {world}: the processes did not all join at {where} within "
                f"--dist-timeout {timeout_s:g} s ({reason}); start all {world} together "
                f"(torchrun --nproc_per_node {world} ...)"
            ) from None
    return rank, world, device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPUs that support it (Ampere and newer); ``None`` (fp32) elsewhere.

    Pre-Ampere GPUs and some Jetsons lack bf16; fp16 would need a gradient scaler, so they
    train in fp32.
    """
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def final_wait_s(base_s: float, eval_images: int, samples_per_s: float, n_params: int) -> float:
    """How long the other processes wait while rank 0 evaluates and exports.

    ``base_s`` (the collective timeout) plus three times an estimate: the evaluation images at
    this process's training rate (a training sample costs more than an evaluation forward, so
    this over-estimates) and 30 s + 20 MB/s for writing the weights.
    """
    rate = samples_per_s if samples_per_s > 0 else 10.0
    return base_s + 3.0 * (eval_images / rate + 30.0 + 4.0 * n_params / 20e6)


@contextmanager
def rank0_alone(timeout_s: float) -> Iterator[None]:
    """Every process enters; rank 0 works alone inside; the others wait at the exit up to ``timeout_s``.

    gloo's ``monitored_barrier`` applies its ``timeout`` on rank 0 only: the other processes wait
    with their group's timeout. So the wait gets a gloo group of its own, made here with the
    sized timeout (whatever the backend). Before, the others waited in a group with the
    ``--dist-timeout`` and gave up after it, however long rank 0's evaluation and export needed.
    """
    if not active():
        yield
        return
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    yield  # rank 0's work raising skips the barrier: the others see it stop and fail fast
    dist.monitored_barrier(group=group, timeout=timedelta(seconds=timeout_s))
    dist.destroy_process_group(group)


def wait_for_rank0(timeout_s: float) -> None:
    """Wait until every process, rank 0 included, is here (up to ``timeout_s``)."""
    with rank0_alone(timeout_s):
        pass


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


def total(n: int, device: torch.device) -> int:
    """``n`` summed over the processes (``n`` itself on one process)."""
    if not active():
        return n
    t = torch.tensor([n], dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return int(t.item())


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
