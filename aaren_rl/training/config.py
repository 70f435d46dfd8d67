"""The settings the training loop itself reads (a model's own settings extend them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from aaren_rl.training.schedule import SCHEDULES


@dataclass
class LoopConfig:
    """How the loop trains: AdamW, warmup + schedule, clipping, and how often it logs,
    evaluates and checkpoints.

    ``batch_size`` is the global batch: under torchrun each of the ``world_size`` processes
    draws ``batch_size / world_size`` examples. ``eval_every=0`` evaluates only at the end.
    A model's own config subclasses this one and adds its fields (see
    ``aaren_rl.agents.trainer.TrainConfig``).
    """

    steps: int = 100_000
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 10_000
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.25
    eval_every: int = 10_000
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        problems = self.problems()
        if problems:
            raise ValueError("invalid train config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """What is wrong with these settings (empty: nothing). Subclasses add theirs."""
        problems = []
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule={self.schedule!r} (expected one of {SCHEDULES})")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)!r} (expected >= 1)")
        for name in ("warmup_steps", "eval_every"):
            if int(getattr(self, name)) < 0:
                problems.append(f"{name}={getattr(self, name)!r} (expected >= 0)")
        if not self.lr > 0:
            problems.append(f"lr={self.lr!r} (expected > 0)")
        if not self.grad_clip > 0:
            problems.append(f"grad_clip={self.grad_clip!r} (expected > 0)")
        return problems

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "train config") -> Any:
        """Build from a mapping; an unknown key is an error naming ``source`` and the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown train key(s) {unknown}; known keys: {sorted(known)}"
            )
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping (lists instead of tuples) for YAML, JSON and checkpoints."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out
