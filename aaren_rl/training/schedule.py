"""The learning-rate schedule of the training loop."""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


class LRSchedule:
    """Learning-rate multiplier per optimiser step: linear warmup, then constant or cosine.

    ``factor(s) = min(1, (s + 1) / warmup)`` during warmup (Decision Transformer's rule); after
    it, 1 (constant) or ``min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2`` with ``p`` the
    fraction of the post-warmup steps done (cosine).
    """

    def __init__(self, warmup_steps: int, total_steps: int, kind: str, min_ratio: float = 0.0):
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.kind = kind
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
