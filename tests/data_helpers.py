"""Helpers for the data-layer tests: write small files in the real D4RL layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np


def write_d4rl(path: Path, **arrays: Any) -> Path:
    """Write ``arrays`` as top-level HDF5 datasets (keys with '/' become groups); return path."""
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=np.asarray(value))
    return path


def hand_example() -> dict[str, np.ndarray]:
    """Seven transitions with hand-checkable episodes, returns-to-go and statistics.

    Episodes: steps 0-1 (terminal at 1), steps 2-4 (timeout at 4), steps 5-6 (file ends
    mid-episode). Observation column 0 is 1..7 (mean 4, population std 2); column 1 is
    constant 5 (std 0, floored to 1e-6).
    """
    return {
        "observations": np.stack([np.arange(1, 8), np.full(7, 5)], axis=1).astype(np.float32),
        "actions": (np.arange(14, dtype=np.float32).reshape(7, 2) / 10.0),
        "rewards": np.arange(1, 8, dtype=np.float32),
        "terminals": np.array([0, 1, 0, 0, 0, 0, 0], dtype=bool),
        "timeouts": np.array([0, 0, 0, 0, 1, 0, 0], dtype=bool),
    }
