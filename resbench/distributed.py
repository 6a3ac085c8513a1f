"""One run on many devices under torchrun: the environment, the process group, and the few
collectives the training loop needs. Without torchrun everything here is a no-op for one process.

    torchrun --standalone --nproc_per_node=4 -m resbench train -c configs/resnet110.yaml

Rank r of W trains on slice r of every global batch (data.Batches draws the same permutation and
augmentation on every rank), so `optim.batch_size` stays the global batch of §4.2. Gradients are
averaged by DistributedDataParallel; losses and errors are summed here. DDP keeps the parameters
equal on every rank, but each rank updates its BN running statistics from its own slice, so before
an evaluation or a checkpoint every rank takes rank 0's buffers: what is evaluated is what is saved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0 alone writes files and prints."""
        return self.rank == 0


SINGLE = Dist()  # one process, no torchrun


def from_env() -> Dist:
    """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; a plain process is rank 0 of 1."""
    return Dist(
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def setup(d: Dist, device: torch.device) -> bool:
    """Join the process group (NCCL on CUDA, gloo on CPU); True if this call created it."""
    if not d.enabled or dist.is_initialized():
        return False
    cuda = device.type == "cuda"
    # device_id binds NCCL to this rank's GPU at once, instead of guessing it at the first collective
    dist.init_process_group(
        "nccl" if cuda else "gloo", rank=d.rank, world_size=d.world_size, device_id=device if cuda else None
    )
    return True


def teardown() -> None:
    """Leave together: a rank that exits while another still talks to it aborts the job."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_sum(*tensors: torch.Tensor) -> None:
    """Sum each tensor over the ranks, in place."""
    if dist.is_initialized():
        for t in tensors:
            dist.all_reduce(t)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (a signal may reach ranks at different steps)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor(int(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BN running statistics) on every rank, so that every rank holds the model
    rank 0 saves. DDP broadcasts them only before a training forward, which then updates them again
    from each rank's own slice of the batch."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's value on every rank."""
    if not dist.is_initialized():
        return value
    t = torch.tensor(value, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def shard(n: int, d: Dist) -> slice:
    """Rank d.rank's contiguous share of n items: every item exactly once, no padding."""
    return slice(n * d.rank // d.world_size, n * (d.rank + 1) // d.world_size)
