"""The part every training sampler shares: its own generator, saved in a checkpoint and restored
from it, so that a resumed run draws the batches the uninterrupted run would have drawn."""

from __future__ import annotations

from typing import Any

import numpy as np


class SeededSampler:
    """A numpy generator seeded once, with ``state_dict`` / ``load_state_dict`` for checkpoints."""

    def __init__(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)

    def _distinct_rows(self, n: int, batch_size: int) -> np.ndarray:
        """``[batch_size]`` row indices below ``n``: distinct, unless the batch is larger than
        ``n`` (then drawn with replacement)."""
        return self.rng.choice(n, size=batch_size, replace=batch_size > n)

    def state_dict(self) -> dict[str, Any]:
        """The generator's state, to save in a checkpoint."""
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`; the next batches repeat the saved run's."""
        self.rng.bit_generator.state = state["bit_generator"]
