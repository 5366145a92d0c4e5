"""torchrun support: process-group set-up from the environment, the device of each rank, and reductions
that are no-ops alone."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_from_env(use_cuda: bool) -> Context:
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); alone, do nothing."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return Context(rank=rank, world_size=world_size, local_rank=local_rank)


def select_device(cuda: bool, local_rank: int = 0,
                  warn: Callable[[str], None] = logging.getLogger("hparr").warning) -> torch.device:
    """This rank's GPU when --cuda asks for one and there is one; otherwise the CPU, with a warning if asked."""
    if cuda and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if cuda:
        warn("--cuda given but no GPU available: running on the CPU")
    return torch.device("cpu")


def shutdown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of numbers over all ranks (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()

