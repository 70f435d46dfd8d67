"""Rollout buffers that keep each step's memory and hand out padded sequences.

SB3's ``RolloutBuffer`` / ``DictRolloutBuffer`` (returns and GAE unchanged) plus the state
carried into every step (``[n_steps, n_envs, state_dim]``, packed by the policy). The update
reads the rollout as sequences: each env's ``n_steps`` cut into pieces of ``seq_len`` steps
(the last one padded), each with the state stored at its first step, the episode starts
inside it and a mask over the padding. Sequences are not cut at episode starts (the scan
restarts the memory there itself), so no sample is wasted on padding but the tail of each env.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.type_aliases import TensorDict


class AarenSequences(NamedTuple):
    """One minibatch of ``N`` sequences of ``T`` steps.

    ``observations``: ``[N * T, ...]`` (or a dict of them), sequence-major, padding included;
    ``actions``, ``old_values``, ``old_log_prob``, ``advantages``, ``returns``: at the valid
    steps only (``[M, ...]``, ``M = mask.sum()``, in the same order); ``states``: ``[N,
    state_dim]`` carried into each sequence; ``episode_starts``, ``mask``: ``[N, T]`` bool;
    ``action_masks``: ``[M, mask_dims]`` bool, the allowed actions at the valid steps (None
    when the buffer keeps no masks).
    """

    observations: torch.Tensor | TensorDict
    actions: torch.Tensor
    old_values: torch.Tensor
    old_log_prob: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    states: torch.Tensor
    episode_starts: torch.Tensor
    mask: torch.Tensor
    action_masks: torch.Tensor | None = None


def _to_sequences(x: np.ndarray, seq_len: int) -> np.ndarray:
    """``[n_steps, n_envs, ...]`` -> ``[n_envs * n_chunks, seq_len, ...]`` (time zero-padded)."""
    x = np.swapaxes(x, 0, 1)  # [n_envs, n_steps, ...]
    n_envs, n_steps = x.shape[:2]
    n_chunks = -(-n_steps // seq_len)
    pad = n_chunks * seq_len - n_steps
    if pad:
        x = np.concatenate([x, np.zeros((n_envs, pad, *x.shape[2:]), dtype=x.dtype)], axis=1)
    return x.reshape(n_envs * n_chunks, seq_len, *x.shape[2:])


class _SequenceMixin:
    """What both buffers add: the state per step and :meth:`sequences`."""

    state_dim: int
    states: np.ndarray

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        state_dim: int,
        device: torch.device | str = "auto",
        gae_lambda: float = 1,
        gamma: float = 0.99,
        n_envs: int = 1,
        mask_dims: int = 0,
    ) -> None:
        self.state_dim = state_dim
        self.mask_dims = mask_dims
        super().__init__(  # type: ignore[call-arg]  # the SB3 buffer after the mixin
            buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs
        )

    def reset(self) -> None:
        self.states = np.zeros((self.buffer_size, self.n_envs, self.state_dim), dtype=np.float32)
        # every action allowed unless a step's masks say otherwise (sb3-contrib's default)
        self.action_masks = (
            np.ones((self.buffer_size, self.n_envs, self.mask_dims), dtype=np.float32)
            if self.mask_dims
            else None
        )
        self._sequence_cache: tuple[int, dict[str, object]] | None = None
        super().reset()  # type: ignore[misc]

    def add(
        self, *args, state: np.ndarray, action_masks: np.ndarray | None = None, **kwargs
    ) -> None:
        """The SB3 buffer's ``add`` plus ``state [n_envs, state_dim]``, carried into this step,
        and with ``mask_dims`` the step's ``action_masks [n_envs, mask_dims]``."""
        if action_masks is not None:
            if self.action_masks is None:
                raise ValueError("this buffer keeps no action masks (built with mask_dims=0)")
            self.action_masks[self.pos] = np.asarray(action_masks).reshape(
                self.n_envs, self.mask_dims
            )
        super().add(*args, **kwargs)  # type: ignore[misc]
        self.states[self.pos - 1] = np.asarray(state, dtype=np.float32)  # pos has advanced
        self._sequence_cache = None

    def compute_returns_and_advantage(self, *args, **kwargs) -> None:
        super().compute_returns_and_advantage(*args, **kwargs)  # type: ignore[misc]
        self._sequence_cache = None  # returns and advantages changed

    def _observation_sequences(self, seq_len: int) -> np.ndarray | dict[str, np.ndarray]:
        raise NotImplementedError

    def _sequence_tensors(self, seq_len: int) -> dict[str, object]:
        """The whole rollout as sequences, on the device: built once per rollout and length
        (every epoch of the update reads the same), not once per epoch."""
        if self._sequence_cache is not None and self._sequence_cache[0] == seq_len:
            return self._sequence_cache[1]
        n_steps = self.buffer_size
        first = np.arange(0, n_steps, seq_len)
        obs = self._observation_sequences(seq_len)
        tensors: dict[str, object] = {
            "mask": _to_sequences(np.ones((n_steps, self.n_envs), dtype=bool), seq_len),
            "episode_starts": _to_sequences(self.episode_starts.astype(bool), seq_len),
            "states": np.swapaxes(self.states[first], 0, 1).reshape(-1, self.state_dim),
            "observations": obs,
        }
        # the float32 per-step fields side by side, so that a minibatch gathers them at once
        per_step = [getattr(self, k) for k in ("values", "log_probs", "advantages", "returns")]
        tensors["per_step"] = _to_sequences(np.stack(per_step, axis=-1), seq_len)
        tensors["actions"] = _to_sequences(self.actions, seq_len)  # the action space's dtype
        if self.action_masks is not None:
            tensors["action_masks"] = _to_sequences(self.action_masks > 0.5, seq_len)
        for name, value in tensors.items():  # copies: later rollouts reuse the arrays
            if isinstance(value, dict):
                tensors[name] = {k: self.to_torch(v) for k, v in value.items()}
            else:
                tensors[name] = self.to_torch(value)
        self._sequence_cache = (seq_len, tensors)
        return tensors

    def sequences(
        self, seq_len: int, batch_size: int, shuffle: bool = True
    ) -> Generator[AarenSequences, None, None]:
        """Minibatches of about ``batch_size`` steps: ``max(1, batch_size // seq_len)``
        sequences each, in random order (``shuffle``) or rollout order."""
        assert self.full, "the rollout buffer is not full"
        seq_len = min(seq_len, self.buffer_size)
        data = self._sequence_tensors(seq_len)
        mask, obs = data["mask"], data["observations"]
        n_seq = mask.shape[0]
        per_batch = max(1, batch_size // seq_len)
        # the global generator, as SB3's buffers use: set_random_seed(seed) makes it repeatable
        order = np.random.permutation(n_seq) if shuffle else np.arange(n_seq)  # noqa: NPY002
        order = torch.as_tensor(order, device=self.device)
        for lo in range(0, n_seq, per_batch):
            idx = order[lo : lo + per_batch]
            m = mask[idx]
            rows = data["per_step"][idx][m]  # [M, 4] at the valid steps
            if isinstance(obs, dict):
                batch_obs = {k: v[idx].reshape(-1, *v.shape[2:]) for k, v in obs.items()}
            else:
                batch_obs = obs[idx].reshape(-1, *obs.shape[2:])
            yield AarenSequences(
                observations=batch_obs,
                actions=data["actions"][idx][m],
                old_values=rows[:, 0],
                old_log_prob=rows[:, 1],
                advantages=rows[:, 2],
                returns=rows[:, 3],
                states=data["states"][idx],
                episode_starts=data["episode_starts"][idx],
                mask=m,
                action_masks=data["action_masks"][idx][m] if "action_masks" in data else None,
            )


class AarenRolloutBuffer(_SequenceMixin, RolloutBuffer):
    """SB3's ``RolloutBuffer`` plus the memory per step (see the module docstring)."""

    def _observation_sequences(self, seq_len: int) -> np.ndarray:
        return _to_sequences(self.observations, seq_len)


class AarenDictRolloutBuffer(_SequenceMixin, DictRolloutBuffer):
    """SB3's ``DictRolloutBuffer`` plus the memory per step (see the module docstring)."""

    def _observation_sequences(self, seq_len: int) -> dict[str, np.ndarray]:
        return {k: _to_sequences(v, seq_len) for k, v in self.observations.items()}
