"""Distributed data parallel setup: one process per device, launched by torchrun.

torchrun sets RANK / LOCAL_RANK / WORLD_SIZE; without them this is a single process and every
helper here is a no-op. Backends: nccl between CUDA devices, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from src.config_utils import ConfigError
from src.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, evaluates into files and saves checkpoints."""
        return self.rank == 0


def setup_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Resolve the device and, under torchrun with more than one process, join the process group."""
    try:
        device = resolve_device(device_name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(f"multi-process training supports cuda and cpu, not {device.type}")
    # A long first token-cache build on rank 0 keeps the others waiting at a barrier.
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60))
    return info, device


def teardown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks, in place (a no-op for one process)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True if `flag` is true on any rank: all ranks then take the same branch (e.g. stop)."""
    if not info.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(value, info).item() > 0)


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered
