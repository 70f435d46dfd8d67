"""The one training loop every model in aaren-rl uses (decision agents and sequence heads).

- :mod:`aaren_rl.training.loop`: :class:`TrainingLoop`, the generic machinery (DDP, seeding
  and RNG capture, atomic run-guarded checkpoints, exact resume, LR schedule, TensorBoard,
  progress). A model plugs in its batch sampler, its loss and its evaluation.
- :mod:`aaren_rl.training.config`: :class:`LoopConfig`, the settings the loop itself reads.
- :mod:`aaren_rl.training.checkpoint`: atomic checkpoint files that never clobber another run.
- :mod:`aaren_rl.training.distributed`, :mod:`~aaren_rl.training.rng`,
  :mod:`~aaren_rl.training.schedule`, :mod:`~aaren_rl.training.files`: the pieces.
"""

from aaren_rl.training.config import LoopConfig
from aaren_rl.training.distributed import (
    DistContext,
    derived_seed,
    resolve_device,
    setup_distributed,
)
from aaren_rl.training.files import write_json_atomic
from aaren_rl.training.loop import (
    LoopResult,
    NonFiniteLossError,
    TrainingInterrupted,
    TrainingLoop,
)
from aaren_rl.training.rng import capture_rng_state, restore_rng_state, seed_everything
from aaren_rl.training.schedule import LRSchedule

__all__ = [
    "DistContext",
    "LRSchedule",
    "LoopConfig",
    "LoopResult",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "TrainingLoop",
    "capture_rng_state",
    "derived_seed",
    "resolve_device",
    "restore_rng_state",
    "seed_everything",
    "setup_distributed",
    "write_json_atomic",
]
