"""Memory tasks as Gymnasium environments, registered under the ``aaren_rl/`` id prefix.

Importing this package registers:

- ``aaren_rl/TMaze-L{20,100,500,1000}-v0``: the passive T-maze (:mod:`aaren_rl.envs.tmaze`)
  with a corridor of that length; ``aaren_rl/TMaze-v0`` takes ``corridor_length=L`` and
  :func:`register_tmaze` adds ``aaren_rl/TMaze-L{L}-v0`` for any other ``L``;
- ``aaren_rl/RepeatFirst-v0``: POPGym's RepeatFirst with flat observations
  (:mod:`aaren_rl.envs.popgym_tasks`).

A task spec names them as ``aaren_rl.envs:aaren_rl/TMaze-L100-v0``: Gymnasium imports the module
before the ``:``, so ``gym.make`` and ``gym.make_vec`` find the id in any process::

    import gymnasium as gym
    env = gym.make("aaren_rl.envs:aaren_rl/TMaze-L100-v0")
"""

from __future__ import annotations

import gymnasium as gym

from aaren_rl.envs.tmaze import TMazeEnv

STANDARD_LENGTHS = (20, 100, 500, 1000)
TMAZE_ENTRY = "aaren_rl.envs.tmaze:TMazeEnv"


def tmaze_id(corridor_length: int) -> str:
    """``aaren_rl/TMaze-L{corridor_length}-v0``."""
    return f"aaren_rl/TMaze-L{int(corridor_length)}-v0"


def register_tmaze(corridor_length: int) -> str:
    """Register (once) and return the id of the T-maze with this corridor length."""
    env_id = tmaze_id(corridor_length)
    if env_id not in gym.registry:
        TMazeEnv(corridor_length)  # validates the length before it reaches the registry
        gym.register(env_id, entry_point=TMAZE_ENTRY, kwargs={"corridor_length": corridor_length})
    return env_id


if "aaren_rl/TMaze-v0" not in gym.registry:
    gym.register("aaren_rl/TMaze-v0", entry_point=TMAZE_ENTRY)
for _length in STANDARD_LENGTHS:
    register_tmaze(_length)
if "aaren_rl/RepeatFirst-v0" not in gym.registry:
    gym.register(
        "aaren_rl/RepeatFirst-v0", entry_point="aaren_rl.envs.popgym_tasks:make_repeat_first"
    )

__all__ = ["STANDARD_LENGTHS", "TMazeEnv", "register_tmaze", "tmaze_id"]
