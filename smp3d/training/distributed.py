"""One process or many under ``torchrun``: which rank this is, and the device it trains on."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import TrainingError


@dataclass
class Dist:
    """This process's place in the process group (rank 0 of 1 without ``torchrun``)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (no-op without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


def resolve_device(name: str, dist_info: Dist) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` (this rank's GPU) or ``cuda:N``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainingError(f"--device {name!r} is not a device; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", dist_info.local_rank if dist_info.enabled else torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def share_from_main(dist_info: Dist, value: object) -> object:
    """Rank 0's ``value`` on every rank (itself without a process group)."""
    if not dist_info.enabled:
        return value
    shared = [value]
    torch.distributed.broadcast_object_list(shared, src=0)
    return shared[0]


__all__ = ["Dist", "init_distributed", "resolve_device", "share_from_main"]
