"""The settings the training loop itself reads (a model's own settings extend them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from aaren_rl.config_values import apply_checks, choice, integer, number, number_list, sorted_keys
from aaren_rl.training.schedule import SCHEDULES

MAX_SEED = 2**32 - 1  # numpy's seeds; torch and python take these too (as aaren_rl.cli's)


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
        problems = self.problems()
        if problems:
            raise ValueError("invalid train config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """What is wrong with these settings (empty: nothing), one ``key=VALUE (expected ...)``
        each; valid values are stored converted (``1.0e5`` steps -> 100000). Subclasses add
        theirs."""
        return apply_checks(
            self,
            {
                "schedule": lambda v: choice(v, SCHEDULES),
                "steps": lambda v: integer(v, 1),
                "batch_size": lambda v: integer(v, 1),
                "checkpoint_every": lambda v: integer(v, 1),
                "log_every": lambda v: integer(v, 1),
                "warmup_steps": lambda v: integer(v, 0),
                "eval_every": lambda v: integer(v, 0),
                "seed": lambda v: integer(v, 0, MAX_SEED),
                "lr": lambda v: number(v, above=0.0),
                "weight_decay": lambda v: number(v, minimum=0.0),
                "min_lr_ratio": lambda v: number(v, minimum=0.0, maximum=1.0),
                "grad_clip": lambda v: number(v, above=0.0, allow_inf=True),
                "betas": lambda v: tuple(number_list(v, length=2, minimum=0.0, below=1.0)),
            },
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "train config") -> Any:
        """Build from a mapping; an unknown key is an error naming ``source`` and the key."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: the train settings must be a mapping of keys to values")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted_keys(set(data) - known)
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
