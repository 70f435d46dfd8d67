"""Will a model fit in memory? Counted before any weight is allocated.

A model is first built on PyTorch's ``meta`` device (shapes only, no storage), its parameters
counted, and training's footprint (the weights, their gradients and AdamW's two moments: four
copies) compared with the memory the device has free. A width such as ``d_model=1e8`` then
stops with one line naming the settings, instead of an allocator traceback or the kernel's
out-of-memory killer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

TRAINING_COPIES = 4  # weights, gradients, AdamW's exp_avg and exp_avg_sq


def count_parameters_without_allocating(build: Callable[[], nn.Module]) -> int | None:
    """The number of parameters ``build()`` would allocate (None if it cannot run on ``meta``,
    e.g. a constructor that reads tensor values). A ValueError (bad settings) is raised as is:
    the real build would raise it too, possibly after allocating."""
    try:
        with torch.device("meta"):
            model = build()
    except ValueError:
        raise
    except Exception:  # noqa: BLE001 (any constructor: the real build reports its own errors)
        return None
    return sum(p.numel() for p in model.parameters())


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``: CUDA's ``mem_get_info``, else the host's MemAvailable
    (Linux ``/proc/meminfo``); None when unknown."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def check_model_fits(
    build: Callable[[], nn.Module], device: Any, settings: str, fix: str
) -> int | None:
    """Raise ValueError (one line naming ``settings`` and ``fix``) when training the model
    ``build()`` makes would need more memory than ``device`` has free; returns the parameter
    count (None when it could not be counted or the free memory is unknown)."""
    device = torch.device(device)
    n = count_parameters_without_allocating(build)
    free = free_memory_bytes(device)
    if n is None or free is None:
        return n
    weights = 4 * n  # float32
    need = TRAINING_COPIES * weights
    if need > free:
        raise ValueError(
            f"{settings}: the model would hold {n:.3g} parameters ({_gb(weights)} of weights, "
            f"{_gb(need)} to train with gradients and AdamW's moments), but {device} has "
            f"{_gb(free)} free. Fix: {fix}"
        )
    return n
