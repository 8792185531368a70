"""QAT under ``torchrun``: one process per device (DDP; gloo on the CPU, nccl on CUDA).

Every rank builds the same quantized model. Calibration reads the batches a single process would read
(the same seeded loader), each rank a share of them (batch ``i`` on rank ``i % world``); the max pass's
ranges are reduced with MAX and the histograms with SUM, so every rank ends with the ``amax`` one
process gets on those images (exactly: the counts are integers). Fine-tuning wraps the student in
DistributedDataParallel over a DistributedSampler; rank 0 evaluates, selects and writes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` (-1 alone), ``local_rank``, ``world`` (processes)."""

    rank: int = -1
    local_rank: int = -1
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0 or a single process: evaluates, logs and writes."""
        return self.rank in (-1, 0)

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items`` (item ``i`` on rank ``i % world``)."""
        return (
            list(items)
            if not self.active
            else [x for i, x in enumerate(items) if i % self.world == self.rank]
        )

    def all_reduce(self, t: torch.Tensor, op: str) -> torch.Tensor:
        """``t`` reduced over the ranks in place (``op``: ``max`` or ``sum``); unchanged alone."""
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def from_env() -> DistContext:
    """The context ``torchrun`` sets up (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``)."""
    return DistContext(
        int(os.environ.get("RANK", -1)),
        int(os.environ.get("LOCAL_RANK", -1)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )


def setup(ctx: DistContext, device: str) -> torch.device | None:
    """Join the process group (nccl on this rank's GPU, else gloo on the CPU); ``None`` alone (the
    caller picks the device as usual)."""
    if not ctx.active:
        return None
    if torch.cuda.is_available() and device != "cpu":
        torch.cuda.set_device(ctx.local_rank)
        dev, backend = torch.device("cuda", ctx.local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return dev
