"""Invalid-action masking with an Aaren memory: :class:`MaskableAarenPPO`.

sb3-contrib's ``MaskablePPO`` convention, with AarenPPO's memory:

- the env says which actions are allowed through an ``action_masks()`` method (its own, or
  sb3-contrib's ``ActionMasker`` wrapper); a VecEnv's are stacked by sb3-contrib's
  ``get_action_masks`` (``[n_envs, mask_dims]``, True = allowed);
- collection asks for the masks before every step and samples from sb3-contrib's
  ``MaskableCategorical`` (disallowed logits set to -1e8, so a disallowed action is never
  drawn); the rollout buffer keeps each step's masks and the update's scan scores the stored
  actions under the same masks (log-probabilities and entropy of the masked distribution);
- ``learn(use_masking=False)`` trains without masks, as MaskablePPO's;
- ``predict(..., action_masks=...)``, :func:`evaluate_policy` (``use_masking=True``) and
  :class:`MaskableEvalCallback` evaluate with masks and carry the memory between steps.

Why not sb3-contrib's own ``evaluate_policy`` / ``MaskableEvalCallback``: with
``use_masking=True`` their loop stores the state ``predict`` returns under another name
(``actions, state = model.predict(...)``, then ``state=states``), so a recurrent policy would
start from an empty memory at every step. Here SB3's ``evaluate_policy`` (which carries the
state) runs with a model whose ``predict`` fetches the env's masks.
"""

from __future__ import annotations

from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common import evaluation
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback
from stable_baselines3.common.vec_env import VecEnv

from aaren_rl.sb3.ppo import AarenPPO

__all__ = ["MaskableAarenPPO", "MaskableEvalCallback", "evaluate_policy", "mask_dims"]

SelfMaskableAarenPPO = TypeVar("SelfMaskableAarenPPO", bound="MaskableAarenPPO")


def mask_dims(action_space: spaces.Space) -> int:
    """Numbers in one env's action mask, as sb3-contrib counts them: ``n`` for Discrete, the
    sum of ``nvec`` for MultiDiscrete, ``2 * n`` for MultiBinary; ``ValueError`` otherwise."""
    if isinstance(action_space, spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, spaces.MultiDiscrete):
        return int(np.sum(action_space.nvec))
    if isinstance(action_space, spaces.MultiBinary) and isinstance(action_space.n, int):
        return 2 * action_space.n
    raise ValueError(
        "MaskableAarenPPO needs a Discrete, MultiDiscrete or 1-d MultiBinary action space, got "
        f"{action_space}; use AarenPPO"
    )


def _contrib():
    try:
        from sb3_contrib.common.maskable import utils
    except ImportError as err:  # the sb3 extra
        raise ImportError(
            "action masking uses sb3-contrib's conventions: pip install 'aaren-rl[sb3]'"
        ) from err
    return utils


def get_action_masks(env: GymEnv) -> np.ndarray:
    """sb3-contrib's ``get_action_masks`` as ``[n_envs, mask_dims]`` bool (one env: ``[1,
    mask_dims]``)."""
    masks = np.asarray(_contrib().get_action_masks(env), dtype=bool)
    n_envs = env.num_envs if isinstance(env, VecEnv) else 1
    return masks.reshape(n_envs, -1)


def check_masking_supported(env: GymEnv) -> None:
    """``ValueError`` unless ``env`` (or every env of a VecEnv) has ``action_masks()``."""
    if not _contrib().is_masking_supported(env):
        raise ValueError(
            "the env has no action_masks() method: add one, or wrap it with sb3-contrib's "
            "ActionMasker(env, mask_fn); or train/evaluate with use_masking=False"
        )


class MaskableAarenPPO(AarenPPO):
    """AarenPPO with sb3-contrib's invalid-action masking (see the module docstring).

    Arguments are AarenPPO's; ``learn`` takes ``use_masking`` (default True) and ``predict``
    takes ``action_masks``.
    """

    _use_masking: bool = True

    def _mask_dims(self) -> int:
        return mask_dims(self.action_space)

    def _action_masks(self, env: VecEnv) -> np.ndarray | None:
        return get_action_masks(env) if self._use_masking else None

    def learn(
        self: SelfMaskableAarenPPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "MaskableAarenPPO",
        reset_num_timesteps: bool = True,
        use_masking: bool = True,
        progress_bar: bool = False,
    ) -> SelfMaskableAarenPPO:
        """AarenPPO's ``learn``; ``use_masking`` asks the env for its masks at every step."""
        if use_masking:
            assert self.env is not None, "learn needs an env (set_env)"
            check_masking_supported(self.env)
        self._use_masking = use_masking
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def predict(  # type: ignore[override]
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """The policy's recurrent ``predict`` with ``action_masks [n_envs, mask_dims]``."""
        return self.policy.predict(  # type: ignore[call-arg]
            observation, state, episode_start, deterministic, action_masks=action_masks
        )


class MaskedPredictor:
    """``model`` whose ``predict`` passes ``env``'s current action masks; every other
    attribute is the model's. SB3's ``evaluate_policy`` and ``EvalCallback`` call ``predict``
    right after each reset and step of ``env``, so the masks are the current step's."""

    def __init__(self, model: BaseAlgorithm, env: GymEnv) -> None:
        self.model, self.env = model, env

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None,
                deterministic: bool = False) -> tuple[np.ndarray, Any]:  # fmt: skip
        masks = get_action_masks(self.env)
        return self.model.predict(
            observation, state, episode_start, deterministic, action_masks=masks
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def evaluate_policy(
    model: MaskableAarenPPO,
    env: gym.Env | VecEnv,
    n_eval_episodes: int = 10,
    deterministic: bool = True,
    use_masking: bool = True,
    **kwargs: Any,
):
    """SB3's ``evaluate_policy`` (the memory carried between steps, restarted at episode
    starts) with the env's action masks at every step (``use_masking``), as sb3-contrib's
    maskable ``evaluate_policy``. Other keywords and the return value are SB3's."""
    if use_masking:
        check_masking_supported(env)
        model = MaskedPredictor(model, env)  # type: ignore[assignment]
    return evaluation.evaluate_policy(
        model, env, n_eval_episodes=n_eval_episodes, deterministic=deterministic, **kwargs
    )


class MaskableEvalCallback(EvalCallback):
    """SB3's ``EvalCallback`` evaluating with the eval env's action masks (``use_masking``)
    and the memory carried between steps (sb3-contrib's ``MaskableEvalCallback`` for
    MaskableAarenPPO)."""

    def __init__(self, *args: Any, use_masking: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.use_masking = use_masking
        if use_masking:
            check_masking_supported(self.eval_env)

    def init_callback(self, model: BaseAlgorithm) -> None:
        super().init_callback(model)
        if self.use_masking:  # evaluate_policy then calls the masked predict
            self.model = MaskedPredictor(model, self.eval_env)  # type: ignore[assignment]
