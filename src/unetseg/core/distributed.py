"""Multi-process training on PyTorch's own engine: torchrun sets the environment, DDP syncs gradients."""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600  # a rank that stops answering ends the job after this long instead of hanging it


@dataclass
class DistInfo:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> DistInfo:
    """Join the process group that torchrun describes in WORLD_SIZE/RANK/LOCAL_RANK; no-op without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return info


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks in place (integer counts stay exact)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_lists(items: list, info: DistInfo) -> list:
    """Concatenate every rank's list, in rank order."""
    if not info.enabled:
        return items
    gathered: list = [None] * info.world
    dist.all_gather_object(gathered, items)
    return [x for part in gathered for x in part]


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when it is true on one (e.g. a stop request)."""
    if not info.enabled:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


@contextlib.contextmanager
def main_first(info: DistInfo) -> Iterator[None]:
    """Rank 0 runs the block first, the other ranks after it (e.g. building a cache that they then read)."""
    if info.enabled and not info.is_main:
        dist.barrier()
    try:
        yield
    finally:
        if info.enabled and info.is_main:
            dist.barrier()


def cleanup(info: DistInfo | None = None, finished: bool = False) -> None:
    """Leave the process group (also on error paths: a live group at exit aborts the process).

    ``finished``: every process got here normally; they first wait for each other, so that none tears its
    connections down while another still uses them (gloo then aborts the other process).
    """
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
