"""Roll behaviour policies out into episodes, and turn an SB3 replay buffer into transitions.

Episodes are collected from ``n_envs`` independent environments stepped in lock-step, so the
policy is called on a batch ``[n_active, obs_dim]``. To keep the kept episodes unbiased in length
(short episodes finish first), episodes are kept in the order they *started*: once enough steps
have been started, no new episode starts, every running one is played to its end, and the
episodes are then cut to exactly ``n_transitions`` in start order (the last kept one may be cut;
its last step is then marked as a timeout, as D4RL does).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from tqdm import tqdm

ActFn = Callable[[np.ndarray], np.ndarray]
"""A behaviour policy: observations ``[batch, obs_dim]`` -> actions ``[batch, act_dim]``."""


@dataclass
class Episode:
    """One episode of ``T`` steps; ``rewards`` are kept in float64 as the env returned them."""

    observations: np.ndarray  # [T, obs_dim]
    actions: np.ndarray  # [T, act_dim]
    rewards: np.ndarray  # [T] float64
    next_observations: np.ndarray  # [T, obs_dim]
    qpos: np.ndarray | None  # [T, nq] physics state at each observation (MuJoCo envs)
    qvel: np.ndarray | None  # [T, nv]
    terminated: bool  # the env terminated (fell over): D4RL ``terminals`` on the last step
    truncated: bool  # time limit or cut by the transition budget: D4RL ``timeouts``

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def episode_return(self) -> float:
        """Undiscounted return (float64 sum of the env's rewards)."""
        return float(self.rewards.sum())

    def cut(self, length: int) -> Episode:
        """The first ``length`` steps, marked truncated (not terminated) when shortened."""
        if length >= len(self):
            return self
        return Episode(
            self.observations[:length],
            self.actions[:length],
            self.rewards[:length],
            self.next_observations[:length],
            None if self.qpos is None else self.qpos[:length],
            None if self.qvel is None else self.qvel[:length],
            terminated=False,
            truncated=True,
        )


def uniform_policy(action_space: gym.spaces.Box, seed: int) -> ActFn:
    """D4RL's random policy: actions drawn uniformly from the Box, from a seeded generator."""
    rng = np.random.default_rng(seed)
    low, high = action_space.low, action_space.high

    def act(obs: np.ndarray) -> np.ndarray:
        return rng.uniform(low, high, size=(len(obs), *low.shape)).astype(action_space.dtype)

    return act


def sb3_policy(model, deterministic: bool = False) -> ActFn:
    """Wrap an SB3 model: stochastic by default (D4RL sampled its behaviour policies' actions)."""

    def act(obs: np.ndarray) -> np.ndarray:
        action, _ = model.predict(obs, deterministic=deterministic)
        return np.asarray(action)

    return act


def _physics(env: gym.Env) -> tuple[np.ndarray, np.ndarray] | None:
    data = getattr(env.unwrapped, "data", None)
    if data is None or not hasattr(data, "qpos"):
        return None
    return data.qpos.copy(), data.qvel.copy()


def collect_episodes(
    make_env: Callable[[], gym.Env],
    act: ActFn,
    *,
    n_transitions: int | None = None,
    max_episodes: int | None = None,
    n_envs: int = 8,
    seed: int = 0,
    desc: str | None = None,
) -> list[Episode]:
    """Play ``act`` in ``n_envs`` copies of the env; stop at ``n_transitions`` or ``max_episodes``.

    Env ``i`` is reset with ``seed + i`` once, then continues its own random stream. Returns the
    episodes in the order they started; their lengths sum to exactly ``n_transitions`` when that
    is given (the last one cut if needed) and there are at most ``max_episodes`` of them.
    """
    if n_transitions is None and max_episodes is None:
        raise ValueError("give n_transitions or max_episodes (or both)")
    if n_transitions is not None and n_transitions <= 0:
        raise ValueError(f"n_transitions must be positive, got {n_transitions}")
    if max_episodes is not None and max_episodes <= 0:
        raise ValueError(f"max_episodes must be positive, got {max_episodes}")
    if max_episodes is not None:
        n_envs = min(n_envs, max_episodes)
    envs = [make_env() for _ in range(n_envs)]
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    ep_id = list(range(n_envs))
    started = n_envs
    steps = 0
    active = [True] * n_envs
    buffers: list[dict[str, list]] = [_new_buffer() for _ in range(n_envs)]
    finished: dict[int, Episode] = {}
    bar = tqdm(
        total=n_transitions or max_episodes,
        desc=desc,
        unit="step" if n_transitions else "ep",
        disable=desc is None,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )

    def may_start() -> bool:
        if max_episodes is not None and started >= max_episodes:
            return False
        return n_transitions is None or steps < n_transitions

    try:
        while any(active):
            idx = [i for i in range(n_envs) if active[i]]
            actions = act(np.stack([obs[i] for i in idx]).astype(np.float32))
            for j, i in enumerate(idx):
                buf, env = buffers[i], envs[i]
                phys = _physics(env)
                if phys is not None:
                    buf["qpos"].append(phys[0])
                    buf["qvel"].append(phys[1])
                next_obs, reward, terminated, truncated, _ = env.step(actions[j])
                buf["obs"].append(obs[i])
                buf["act"].append(actions[j])
                buf["rew"].append(float(reward))
                buf["next"].append(next_obs)
                steps += 1
                if n_transitions is not None:
                    bar.update(1)
                if terminated or truncated:
                    finished[ep_id[i]] = _to_episode(buf, bool(terminated), bool(truncated))
                    if max_episodes is not None and n_transitions is None:
                        bar.update(1)
                    buffers[i] = _new_buffer()
                    if may_start():
                        obs[i] = env.reset()[0]
                        ep_id[i] = started
                        started += 1
                    else:
                        active[i] = False
                else:
                    obs[i] = next_obs
    finally:
        bar.close()
        for env in envs:
            env.close()
    episodes = [finished[k] for k in sorted(finished)]
    if n_transitions is None:
        return episodes
    kept, total = [], 0
    for ep in episodes:
        if total >= n_transitions:
            break
        ep = ep.cut(n_transitions - total)
        kept.append(ep)
        total += len(ep)
    return kept


def _new_buffer() -> dict[str, list]:
    return {"obs": [], "act": [], "rew": [], "next": [], "qpos": [], "qvel": []}


def _to_episode(buf: dict[str, list], terminated: bool, truncated: bool) -> Episode:
    return Episode(
        observations=np.asarray(buf["obs"], dtype=np.float64),
        actions=np.asarray(buf["act"], dtype=np.float32),
        rewards=np.asarray(buf["rew"], dtype=np.float64),
        next_observations=np.asarray(buf["next"], dtype=np.float64),
        qpos=np.asarray(buf["qpos"]) if buf["qpos"] else None,
        qvel=np.asarray(buf["qvel"]) if buf["qvel"] else None,
        terminated=terminated,
        truncated=truncated or not terminated,
    )


def episodes_to_arrays(
    episodes: list[Episode],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Concatenate episodes into D4RL arrays ``(data, infos)``; ``[N, ...]`` each."""
    if not episodes:
        raise ValueError("no episodes to write")
    n = sum(len(ep) for ep in episodes)
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    end = np.cumsum([len(ep) for ep in episodes]) - 1
    terminals[end] = [ep.terminated for ep in episodes]
    timeouts[end] = [not ep.terminated for ep in episodes]
    data = {
        "observations": np.concatenate([ep.observations for ep in episodes]).astype(np.float32),
        "actions": np.concatenate([ep.actions for ep in episodes]).astype(np.float32),
        "rewards": np.concatenate([ep.rewards for ep in episodes]).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "next_observations": np.concatenate([ep.next_observations for ep in episodes]).astype(
            np.float32
        ),
    }
    infos: dict[str, np.ndarray] = {}
    if all(ep.qpos is not None for ep in episodes):
        infos["qpos"] = np.concatenate([ep.qpos for ep in episodes]).astype(np.float32)
        infos["qvel"] = np.concatenate([ep.qvel for ep in episodes]).astype(np.float32)
    return data, infos


def replay_buffer_to_arrays(buffer, n: int | None = None, unscale=None) -> dict[str, np.ndarray]:
    """The first ``n`` transitions of an SB3 ``ReplayBuffer`` (single env) as D4RL arrays.

    ``terminals`` = done and not a time-limit truncation; ``timeouts`` = time-limit
    truncations, plus every place where one transition's next observation is not the following
    transition's observation (an episode cut by an interrupted-and-resumed run) and the final
    transition (the episode in progress when the snapshot was taken). ``unscale`` maps SB3's
    stored actions (scaled to [-1, 1]) back to the env's range.
    """
    size = buffer.buffer_size if buffer.full else buffer.pos
    n = size if n is None else n
    if n > size or n <= 0:
        raise ValueError(f"replay buffer holds {size} transitions, asked for {n}")
    if buffer.full and buffer.pos != 0:
        raise ValueError("the replay buffer has wrapped around; make buffer_size >= total steps")
    if buffer.n_envs != 1:
        raise ValueError(f"expected a single-env replay buffer, got n_envs={buffer.n_envs}")
    obs = buffer.observations[:n, 0].astype(np.float32)
    next_obs = buffer.next_observations[:n, 0].astype(np.float32)
    actions = buffer.actions[:n, 0]
    if unscale is not None:
        actions = unscale(actions)
    dones = buffer.dones[:n, 0].astype(bool)
    truncs = buffer.timeouts[:n, 0].astype(bool)
    terminals = dones & ~truncs
    timeouts = dones & truncs
    gap = np.zeros(n, bool)
    gap[:-1] = ~dones[:-1] & np.any(next_obs[:-1] != obs[1:], axis=1)
    timeouts |= gap
    if not (terminals[-1] or timeouts[-1]):
        timeouts[-1] = True
    return {
        "observations": obs,
        "actions": np.asarray(actions, np.float32),
        "rewards": buffer.rewards[:n, 0].astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "next_observations": next_obs,
    }
