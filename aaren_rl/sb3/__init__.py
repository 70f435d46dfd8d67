"""Stable-Baselines3 integration: Aaren policies in SB3 pipelines (docs/design.md section 5).

- :class:`DecisionAarenPolicy` (``decision_policy``): a trained decision model (Aaren or the
  Transformer baseline) behind SB3's recurrent ``predict`` contract, fed its rewards by the
  :class:`RewardFeedback` VecEnv wrapper so ``evaluate_policy`` runs unchanged.
- :class:`AarenPPO` (``ppo``): on-policy training with an Aaren memory, the update running
  whole padded sequences through the parallel scan; policies ``MlpAarenPolicy``,
  ``CnnAarenPolicy`` (images, SB3's NatureCNN) and ``MultiInputAarenPolicy`` (Dict).
- :class:`MaskableAarenPPO` (``maskable``): AarenPPO with sb3-contrib's invalid-action masks.

Imports are lazy so that ``import aaren_rl.sb3`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AarenPPO",
    "CnnAarenPolicy",
    "DecisionAarenPolicy",
    "MaskableAarenPPO",
    "MlpAarenPolicy",
    "MultiInputAarenPolicy",
    "RewardFeedback",
]

_WHERE = {
    "DecisionAarenPolicy": "aaren_rl.sb3.decision_policy",
    "RewardFeedback": "aaren_rl.sb3.reward_feedback",
    "AarenPPO": "aaren_rl.sb3.ppo",
    "MaskableAarenPPO": "aaren_rl.sb3.maskable",
    "MlpAarenPolicy": "aaren_rl.sb3.policies",
    "CnnAarenPolicy": "aaren_rl.sb3.policies",
    "MultiInputAarenPolicy": "aaren_rl.sb3.policies",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'aaren_rl.sb3' has no attribute {name!r}")
