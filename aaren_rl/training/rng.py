"""Random-number state: seed every generator, capture it and restore it bit for bit."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def _encode(obj: Any) -> Any:
    """Make numpy values loadable with ``torch.load(weights_only=True)``."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj)).clone()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_encode(v) for v in obj)
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__"}:
            return obj["__ndarray__"].numpy()
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_decode(v) for v in obj)
    return obj


def capture_rng_state(sampler: Any, device: torch.device) -> dict[str, Any]:
    """This process's random-number state: python, numpy, torch (CPU and CUDA), sampler.

    ``sampler`` is anything with ``state_dict()`` (numpy arrays inside are fine).
    """
    state = {
        "python": random.getstate(),
        "numpy": _encode(np.random.get_state(legacy=False)),  # noqa: NPY002 (global stream)
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "sampler": _encode(sampler.state_dict()),
    }
    return state


def restore_rng_state(state: dict[str, Any], sampler: Any, device: torch.device) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(_decode(state["numpy"]))  # noqa: NPY002
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    sampler.load_state_dict(_decode(state["sampler"]))


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 (third-party code may use it)
    torch.manual_seed(seed)
