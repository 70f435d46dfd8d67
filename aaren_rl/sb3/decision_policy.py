"""A trained decision model behind Stable-Baselines3's recurrent ``predict`` contract.

``DecisionAarenPolicy.load("checkpoint.pt", target_return=3600)`` gives an object whose
``predict(observation, state=None, episode_start=None, deterministic=True) -> (action, state)``
behaves like sb3-contrib's ``RecurrentPPO.predict`` (docs/design.md section 5):

- ``state`` is a tuple of numpy arrays: the backbone's memory (Aaren: every layer's ``m, u,
  w``; the fast step's layout when it runs the model, see :attr:`state_names`; the Transformer:
  its KV cache or window and validity mask), then ``return_to_go [n_envs]`` (unscaled, float64),
  ``timestep [n_envs]`` (int64) and ``last_action [n_envs, act_dim]``.
- ``state=None`` builds the empty state for however many envs ``observation`` holds.
- Where ``episode_start`` is set, that env's state restarts (memory emptied by a select, the
  return-to-go back at the target, timestep 0) before its observation is used; the other envs
  are untouched. The caller's arrays are never modified.
- The rewards come through :class:`~aaren_rl.sb3.reward_feedback.RewardFeedback`: wrap the
  VecEnv with it and ``stable_baselines3.common.evaluation.evaluate_policy`` runs unchanged.

Per step the work is that of :func:`~aaren_rl.agents.rollout.evaluate_agent`: ``act`` (R_t and
s_t), the action clipped to the env's action space, ``observe_action`` (a_t), through the same
rollout step (Aaren's :class:`~aaren_rl.agents.fast_step.FastDecisionStep` where it applies), so
the two give the same episodes on the same seeds.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from aaren_rl.agents.checkpoint import load_agent
from aaren_rl.agents.decision_model import DecisionModel
from aaren_rl.agents.fast_step import FastState
from aaren_rl.agents.rollout import rollout_policy
from aaren_rl.sb3.state_tree import flatten_state

NumpyState = tuple[np.ndarray, ...]


class DecisionAarenPolicy:
    """A :class:`~aaren_rl.agents.decision_model.DecisionModel` as an SB3 recurrent policy.

    Args:
        model: the decision model (Aaren or Transformer backbone); put in eval mode.
        target_return: the return to condition every episode on (unscaled).
        fast_step: step an Aaren model with its fused :class:`FastDecisionStep` (same actions
            within float32 rounding); False, or a backbone it cannot run: the model's own step.
        device: where the model runs (default: where it is).
    """

    def __init__(
        self,
        model: DecisionModel,
        target_return: float,
        fast_step: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(model, DecisionModel):
            raise TypeError(
                f"DecisionAarenPolicy needs a DecisionModel, got {type(model).__name__}"
            )
        if device is not None:
            model.to(device)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.target_return = float(target_return)
        if not np.isfinite(self.target_return):
            raise ValueError(f"target_return must be a finite number, got {target_return}")
        self.stepper = rollout_policy(model, fast_step)
        self.obs_dim, self.act_dim = model.obs_dim, model.act_dim
        self.observation_space = spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32)
        low = -1.0 if model.config.action_tanh else -np.inf
        self.action_space = spaces.Box(low, -low, (self.act_dim,), np.float32)
        self._set_bounds(self.action_space)
        with torch.inference_mode():
            leaves, self._rebuild = flatten_state(self._backbone_leaves(self._empty_torch(1)))
        self._n_memory = len(leaves)
        self._pending_rewards: np.ndarray | None = None
        self.info: dict[str, Any] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        target_return: float | None = None,
        fast_step: bool = True,
        device: torch.device | str | None = None,
    ) -> DecisionAarenPolicy:
        """Rebuild the policy from a checkpoint written by ``aaren-rl train``.

        ``target_return`` defaults to the first of the task's ``target_returns``. A missing,
        corrupt or foreign file raises :class:`~aaren_rl.agents.checkpoint.CheckpointError`
        naming it.
        """
        model, info = load_agent(path, device=device)
        if target_return is None:
            targets = list((info.get("task") or {}).get("target_returns") or [])
            if not targets:
                raise ValueError(
                    f"{path}: the checkpoint's task gives no target_returns; pass "
                    "DecisionAarenPolicy.load(..., target_return=...)"
                )
            target_return = float(targets[0])
        policy = cls(model, target_return, fast_step=fast_step)
        policy.info = info
        return policy

    # ------------------------------------------------------------------ spaces
    def _set_bounds(self, action_space: spaces.Box) -> None:
        self._low = torch.as_tensor(action_space.low, dtype=torch.float32, device=self.device)
        self._high = torch.as_tensor(action_space.high, dtype=torch.float32, device=self.device)

    def check_spaces(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        """Raise ``ValueError`` (saying what the model expects) when an env does not fit; else
        adopt the env's action bounds (actions are clipped to them, as ``evaluate_agent`` does)."""
        if not isinstance(observation_space, spaces.Box) or observation_space.shape != (
            self.obs_dim,
        ):
            raise ValueError(
                f"the env gives observations {observation_space} but the policy expects a Box of "
                f"shape ({self.obs_dim},) (the checkpoint's obs_dim); evaluate it on the task it "
                "was trained for"
            )
        if not isinstance(action_space, spaces.Box) or action_space.shape != (self.act_dim,):
            raise ValueError(
                f"the env takes actions {action_space} but the policy predicts a Box of shape "
                f"({self.act_dim},) (the checkpoint's act_dim); evaluate it on the task it was "
                "trained for"
            )
        self.action_space = action_space
        self._set_bounds(action_space)

    # ------------------------------------------------------------------ rewards
    def receive_rewards(self, rewards: np.ndarray) -> None:
        """The rewards of the step just taken (``[n_envs]``), used at the next ``predict``."""
        rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)
        if self._pending_rewards is not None:
            rewards = self._pending_rewards + rewards  # two env steps between predicts
        self._pending_rewards = rewards

    def clear_rewards(self) -> None:
        """Forget rewards not yet used (the env was reset)."""
        self._pending_rewards = None

    # ------------------------------------------------------------------ state
    @property
    def state_names(self) -> tuple[str, ...]:
        """What each array of the state tuple holds, in order."""
        with torch.inference_mode():
            tree = self._backbone_leaves(self._empty_torch(1))
        names = [f"memory[{i}]" for i in range(len(flatten_state(tree)[0]))]
        if isinstance(tree, dict):
            names = _dict_leaf_names(tree)
        elif isinstance(tree, tuple) and hasattr(tree, "_fields"):
            names = list(tree._fields)
        return (*names, "return_to_go", "timestep", "last_action")

    def _empty_torch(self, n_envs: int) -> Any:
        return self.stepper.initial_state(n_envs, device=self.device)

    def _backbone_leaves(self, state: Any) -> Any:
        """The part of a torch state the numpy tuple holds before its last three arrays (the
        fast step's pending action is ``last_action``, not stored twice)."""
        if isinstance(state, FastState):
            return _FastMemory(state.m, state.u, state.w, state.pending_t, state.has_pending)
        return state

    def _to_numpy(self, state: Any, rtg: np.ndarray, t: np.ndarray, last: np.ndarray) -> NumpyState:
        leaves, _ = flatten_state(self._backbone_leaves(state))
        memory = tuple(leaf.detach().cpu().numpy().copy() for leaf in leaves)
        return (*memory, rtg, t, last)

    def _to_torch(self, state: NumpyState) -> Any:
        memory = [torch.from_numpy(np.array(a, copy=True)).to(self.device) for a in state[:-3]]
        tree = self._rebuild(memory)
        if isinstance(tree, _FastMemory):
            last = torch.as_tensor(np.asarray(state[-1]), dtype=torch.float32, device=self.device)
            return FastState(tree.m, tree.u, tree.w, last.clone(), tree.pending_t, tree.has_pending)
        return tree

    def initial_state(self, n_envs: int) -> NumpyState:
        """The empty state for ``n_envs`` envs (what ``predict(state=None)`` starts from)."""
        with torch.inference_mode():
            empty = self._empty_torch(n_envs)
        return self._to_numpy(
            empty,
            np.full(n_envs, self.target_return, dtype=np.float64),
            np.zeros(n_envs, dtype=np.int64),
            np.zeros((n_envs, self.act_dim), dtype=np.float32),
        )

    def _check_state(self, state: Any, n_envs: int) -> None:
        if not isinstance(state, tuple) or len(state) != self._n_memory + 3:
            raise ValueError(
                f"state must be the tuple of {self._n_memory + 3} numpy arrays that predict "
                "returned (or None for a fresh start)"
            )
        if np.shape(state[-3]) != (n_envs,):
            raise ValueError(
                f"state holds {np.shape(state[-3])[0] if np.ndim(state[-3]) else '?'} envs but "
                f"the observation holds {n_envs}; pass state=None to start afresh"
            )

    # ------------------------------------------------------------------ predict
    def predict(
        self,
        observation: np.ndarray,
        state: NumpyState | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, NumpyState]:
        """One step for every env: ``observation [n_envs, obs_dim]`` (or ``[obs_dim]``) ->
        ``(action [n_envs, act_dim], state)``; see the module docstring for ``state``.

        The model is deterministic, so ``deterministic`` changes nothing.
        """
        obs = np.asarray(observation, dtype=np.float32)
        single = obs.ndim == 1
        if single:
            obs = obs[None]
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(
                f"observation has shape {np.shape(observation)} but the policy expects "
                f"[n_envs, {self.obs_dim}] (obs_dim={self.obs_dim})"
            )
        n = obs.shape[0]
        starts = np.zeros(n, dtype=bool)
        if episode_start is not None:
            starts = np.asarray(episode_start, dtype=bool).reshape(-1)
            if starts.shape != (n,):
                raise ValueError(f"episode_start has shape {starts.shape}; expected ({n},)")
        pending, self._pending_rewards = self._pending_rewards, None
        if state is None:
            state = self.initial_state(n)
            starts = np.ones(n, dtype=bool)
        else:
            self._check_state(state, n)
            if pending is None and not starts.all():
                raise RuntimeError(
                    "predict got a state but no rewards since the last step: wrap the VecEnv "
                    "with aaren_rl.sb3.RewardFeedback(venv, policy) so the return-to-go can "
                    "follow the rewards"
                )
        rtg = np.array(state[-3], dtype=np.float64)
        timestep = np.array(state[-2], dtype=np.int64)
        last = np.array(state[-1], dtype=np.float32)
        if pending is not None:
            if pending.shape != (n,):
                raise ValueError(f"got rewards for {pending.shape[0]} envs but {n} observations")
            rtg -= pending
        rtg[starts] = self.target_return
        timestep[starts] = 0
        last[starts] = 0.0

        with torch.inference_mode():
            tstate = self._to_torch((*state[:-3], rtg, timestep, last))
            if starts.any():
                tstate = self.stepper.reset_state(
                    tstate, torch.as_tensor(starts, device=self.device)
                )
            obs_t = torch.as_tensor(obs, device=self.device)
            rtg_t = torch.as_tensor(rtg, dtype=torch.float32, device=self.device)
            t_t = torch.as_tensor(timestep, device=self.device)
            action, tstate = self.stepper.act(obs_t, rtg_t, t_t, tstate)
            action = torch.maximum(torch.minimum(action.float(), self._high), self._low)
            tstate = self.stepper.observe_action(action, t_t, tstate)
            action_np = action.cpu().numpy()
        new_state = self._to_numpy(tstate, rtg, timestep + 1, action_np.copy())
        return (action_np[0] if single else action_np), new_state


class _FastMemory(tuple):
    """The fast step's state without its pending action (kept as ``last_action``)."""

    _fields = ("m", "u", "w", "pending_t", "has_pending")

    def __new__(cls, *items: Any) -> _FastMemory:
        return super().__new__(cls, items)

    m = property(lambda self: self[0])
    u = property(lambda self: self[1])
    w = property(lambda self: self[2])
    pending_t = property(lambda self: self[3])
    has_pending = property(lambda self: self[4])


def _dict_leaf_names(tree: dict[str, Any], prefix: str = "") -> list[str]:
    names: list[str] = []
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, (tuple, list)):
            names += [f"{prefix}{key}[{i}]" for i in range(len(value))]
        else:
            names.append(f"{prefix}{key}")
    return names
