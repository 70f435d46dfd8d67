"""D4RL's normalised score: ``100 * (return - random) / (expert - random)``.

The reference returns are D4RL's (``d4rl/infos.py``, used for every ``-v2`` MuJoCo dataset).
Environments built here on Gymnasium v5 differ from D4RL's v2 ones; a task spec
(:mod:`aaren_rl.data.tasks`) records which references a score uses.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

# family -> (random-policy return, expert return), D4RL's table.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}


def env_family(env_or_task: str) -> str:
    """``"hopper-medium-v2"``, ``"Hopper-v5"``, ``"hopper_medium"`` -> ``"hopper"``.

    Raises:
        KeyError: not a family of :data:`D4RL_REF_SCORES`.
    """
    head = re.split(r"[-_/:]", env_or_task.strip().lower(), maxsplit=1)[0]
    head = {"half_cheetah": "halfcheetah", "cheetah": "halfcheetah", "walker": "walker2d"}.get(
        head, head
    )
    if head not in D4RL_REF_SCORES:
        raise KeyError(
            f"no D4RL reference scores for {env_or_task!r} (read as {head!r}); known: "
            f"{', '.join(D4RL_REF_SCORES)}. Pass refs=(random_return, expert_return) instead"
        )
    return head


def normalized_score(
    env_or_task: str, returns: Any, refs: tuple[float, float] | None = None
) -> np.ndarray | float:
    """D4RL's normalised score of one return or an array of returns.

    Args:
        env_or_task: names the reference pair when ``refs`` is None (``"hopper-medium-v2"``).
        returns: a float or an array of episode returns.
        refs: ``(random_return, expert_return)``; default D4RL's for the family.

    Returns:
        ``100 * (returns - random) / (expert - random)``: a float for a scalar input, else an
        array of the input's shape.
    """
    low, high = refs if refs is not None else D4RL_REF_SCORES[env_family(env_or_task)]
    if high == low:
        raise ValueError(
            f"reference scores for {env_or_task!r} are equal ({low}); cannot normalise"
        )
    scores = 100.0 * (np.asarray(returns, dtype=np.float64) - low) / (high - low)
    return float(scores) if scores.ndim == 0 else scores
