"""Where a process sits in a torchrun job: rank, world size, device; per-rank seeds."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    """Where this process sits: rank, world size and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def available_devices() -> list[str]:
    """The device names this machine can run on: ``auto``, ``cpu``, ``cuda``/``cuda:N`` per
    GPU, ``mps`` on Apple silicon."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA if available, else CPU; anything else as given.

    A name torch does not know (``tpu:7``), CUDA on a machine without it, or a GPU index
    past the last one is a ValueError listing the devices available here."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    valid = ", ".join(available_devices())
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"--device {str(device)!r} is not a device name; this machine has: {valid}"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {str(device)!r}: CUDA is not available here; this machine has: {valid}"
        )
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"--device {str(device)!r}: there are {torch.cuda.device_count()} GPU(s); this "
            f"machine has: {valid}"
        )
    if resolved.type not in ("cpu", "cuda") and str(device) not in available_devices():
        raise ValueError(
            f"--device {str(device)!r} is not available on this machine; it has: {valid}"
        )
    return resolved


def setup_distributed(device: str | torch.device | None = None) -> DistContext:
    """Join the torchrun process group if ``WORLD_SIZE > 1`` (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    initialized_here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        initialized_here = True
    return DistContext(rank, world_size, local_rank, dev, initialized_here)


def derived_seed(seed: int, rank: int) -> int:
    """A per-process seed: rank 0 keeps ``seed``; other ranks get well-separated seeds."""
    return (int(seed) + 1_000_003 * int(rank)) % (2**31 - 1)
