"""Process-group setup under torchrun, and the few collectives the trainer needs.

Gradients are all-reduced by hand after accumulation instead of through DDP's hooks: fine-tuning
freezes parts of the model and layerdrop skips layers at random per rank, and a plain all-reduce of
every trainable parameter (zeros where a rank computed no gradient) handles both without
`find_unused_parameters` and keeps the update identical to one process with the whole batch.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from w2vtk.errors import W2vtkError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())


@contextlib.contextmanager
def _collective(info: DistInfo, what: str):
    """A collective that fails because another process of the job died (gloo/nccl raise RuntimeError)
    stops this process with a one-line message instead of a traceback; torchrun then ends the job."""
    try:
        yield
    except RuntimeError as e:
        detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise W2vtkError(f"rank {info.rank}: {what} failed ({detail}): another process of the job stopped; "
                         "run the same command to resume from the last checkpoint") from None


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        with _collective(info, "summing statistics over processes"):
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_grads(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Sum the gradients of `params` over ranks, one flat buffer per dtype (None counts as zeros)."""
    if not info.enabled:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        with _collective(info, "summing gradients over processes"):
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    with _collective(info, "gathering the random states of the processes"):
        dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        with _collective(info, "waiting for the other processes"):
            dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
