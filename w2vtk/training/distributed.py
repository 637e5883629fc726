"""Process-group setup under torchrun, the DistributedDataParallel wrapper, and the few other
collectives the trainer needs.

Gradients are summed over processes by torch's DistributedDataParallel during the backward (bucket
by bucket, overlapping it), and the trainer divides the sum by the total number of units over all
processes: N processes x 1 micro-batch give the update of 1 process accumulating N. LayerDrop skips
layers at random per rank and fine-tuning runs frozen parts under no_grad, so DDP looks for
parameters a rank did not use (`find_unused_parameters`).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from w2vtk.errors import W2vtkError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job; `launched` False for a plain single process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launched: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """A process group exists (under torchrun, even with one process): collectives and DDP run."""
        return self.launched


def local_rank() -> int:
    """This process's index on its machine under torchrun (0 without it): its GPU is cuda:local_rank()."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA), also
    for a job of one process; without torchrun's variables, a plain single process."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30),
                                device_id=device if device.type == "cuda" else None)
    return DistInfo(dist.get_rank(), local_rank(), dist.get_world_size(), launched=True)


def _sum_gradients(group, bucket):  # no annotations: DDP checks them, and this module's are strings
    """DDP's communication hook: sum a bucket of gradients (a dist.GradBucket) over processes (DDP's
    own hook averages them); returns a torch.futures.Future of the summed buffer."""
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def wrap_model(module: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """`module` inside DistributedDataParallel under torchrun (gradients summed, not averaged), or
    `module` itself in a single process. Only the parameters that require gradients now take part:
    wrap again when that set changes."""
    if not info.enabled:
        return module
    with _collective(info, "setting up DistributedDataParallel"):
        ddp = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False,
            find_unused_parameters=True)  # LayerDrop and frozen parts leave parameters unused on a rank
        ddp.register_comm_hook(None, _sum_gradients)
    return ddp


@contextlib.contextmanager
def _collective(info: DistInfo, what: str):
    """A failed collective (gloo and nccl raise RuntimeError or its subclasses; often because another
    process of the job died) stops this process with a one-line message that says what failed,
    instead of a traceback; torchrun then ends the job."""
    try:
        yield
    except RuntimeError as e:
        raise collective_error(info, what, e) from None


def is_collective_failure(error: BaseException) -> bool:
    """Whether an error raised during a backward under DDP comes from its collectives (a backend
    error, or gloo's and nccl's own RuntimeErrors) rather than from the model."""
    text = str(error)
    return isinstance(error, dist.DistError) or any(word in text for word in ("Gloo", "gloo", "NCCL", "nccl",
                                                                              "Connection", "connection"))


def collective_error(info: DistInfo, what: str, error: BaseException) -> W2vtkError:
    """The one-line error for a failed collective: which rank, what it was doing, and the error."""
    detail = " ".join(str(error).split())[:300] or type(error).__name__
    return W2vtkError(f"rank {info.rank}: {what} failed: {type(error).__name__}: {detail}. If another process "
                      "of the job stopped, run the same command to resume from the last checkpoint")


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        with _collective(info, "summing statistics over processes"):
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


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
