"""Roll out a decision model in Gymnasium vector environments with one memory per environment.

Per vector step, for every environment at once: ``model.act`` feeds R_t and s_t and predicts
a_t, the action is clipped to the action space, ``model.observe_action`` feeds the executed
action, then the environments step. Each environment keeps its own return-to-go (the target
minus the rewards of its current episode, unscaled: the model scales it), its own timestep and
its own row of the recurrent state; when one environment's episode ends, only its row is reset.

Gymnasium 1.x vector environments reset finished environments themselves ("autoreset"). By
default they use ``AutoresetMode.NEXT_STEP``: the ``step`` after an episode ends ignores that
environment's action and returns the first observation of its next episode, with reward 0 and
no termination. The rollout knows this: that step counts for nothing (no reward, no timestep)
and the environment's memory is reset before the new episode's first observation is fed.
``AutoresetMode.SAME_STEP`` (the reset observation arrives with the final step) is supported
too and gives the same episodes.

Episodes are shared out as in Stable-Baselines3's ``evaluate_policy``: environment i runs
``(n_episodes + i) // n_envs`` episodes, so short episodes are not over-represented. With
``envs.reset(seed=seed)`` environment i is seeded with ``seed + i``, and its later episodes
follow from that seed, so environment i in a vector rollout plays exactly the episodes that a
one-environment rollout with seed ``seed + i`` plays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from tqdm.auto import tqdm

from aaren_rl.nn.backbone import state_nbytes

from .decision_model import DecisionModel, action_space_kind
from .fast_step import FastDecisionStep, check_supported
from .step_checks import NonFiniteInputError, check_step_inputs


@dataclass
class EpisodeRecord:
    """What one episode fed the model and got back (``record=True``), T = episode length.

    ``observations [T, obs_dim]`` raw, ``actions [T, act_dim]`` executed (after clipping; one-hot
    for discrete actions),
    ``rewards [T]``, ``returns_to_go [T]`` as fed (unscaled), ``timesteps [T]`` as fed.
    """

    env_index: int
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    returns_to_go: np.ndarray
    timesteps: np.ndarray
    terminated: bool
    truncated: bool


@dataclass
class RolloutResult:
    """Returns and costs of an evaluation.

    Episodes are listed by environment, then in the order that environment played them.
    ``step_latency_ms`` is the median wall-clock time of the model's work for one vector step
    (act + observe_action for all ``n_envs`` environments together, including the copy of the
    actions to the CPU); ``env_step_latency_ms`` the median time of the environments' step.
    ``state_bytes_per_env_*`` is ``state_nbytes(state) / n_envs`` after the first vector step,
    after the last one and the largest seen.
    """

    target_return: float
    n_envs: int
    returns: np.ndarray
    lengths: np.ndarray
    episode_env: np.ndarray
    mean_return: float
    std_return: float
    step_latency_ms: float
    env_step_latency_ms: float
    state_bytes_per_env_first: int
    state_bytes_per_env_last: int
    state_bytes_per_env_max: int
    latency_ms_by_step: np.ndarray = field(repr=False)
    episodes: list[EpisodeRecord] | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly dict of the scalar results and the per-episode returns."""
        return {
            "target_return": self.target_return,
            "n_envs": self.n_envs,
            "n_episodes": len(self.returns),
            "mean_return": self.mean_return,
            "std_return": self.std_return,
            "returns": [float(r) for r in self.returns],
            "lengths": [int(n) for n in self.lengths],
            "step_latency_ms": self.step_latency_ms,
            "env_step_latency_ms": self.env_step_latency_ms,
            "state_bytes_per_env_first": self.state_bytes_per_env_first,
            "state_bytes_per_env_last": self.state_bytes_per_env_last,
            "state_bytes_per_env_max": self.state_bytes_per_env_max,
        }


def _unwrap(model: torch.nn.Module) -> DecisionModel:
    inner = getattr(model, "module", model)  # DistributedDataParallel / DataParallel
    if not isinstance(inner, DecisionModel):
        raise TypeError(f"evaluate_agent needs a DecisionModel, got {type(inner).__name__}")
    return inner


def rollout_policy(net: DecisionModel, fast_step: bool = True) -> DecisionModel | FastDecisionStep:
    """What steps the rollout: Aaren's :class:`FastDecisionStep` (same actions, fused weights)
    where it can run the model and ``fast_step`` is set, else the model itself."""
    if not fast_step:
        return net
    try:
        check_supported(net)
    except ValueError:  # a Transformer, or a post-norm Aaren: the model's own step
        return net
    return FastDecisionStep(net)


def _autoreset_mode(mode: str | AutoresetMode) -> AutoresetMode:
    try:
        mode = AutoresetMode(mode)
    except ValueError:
        raise ValueError(
            f"autoreset_mode {mode!r} is not supported; use 'NextStep' or 'SameStep'"
        ) from None
    if mode == AutoresetMode.DISABLED:
        raise ValueError("autoreset_mode 'Disabled' is not supported; use 'NextStep' or 'SameStep'")
    return mode


def _check_spaces(envs: gym.vector.VectorEnv, model: DecisionModel, env_id: str) -> None:
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    if not isinstance(obs_space, gym.spaces.Box) or obs_space.shape != (model.obs_dim,):
        raise ValueError(
            f"environment {env_id} gives observations {obs_space} but the model expects "
            f"shape ({model.obs_dim},) (obs_dim={model.obs_dim}); evaluate it on the task it "
            "was trained for"
        )
    kind = model.config.action_space
    try:
        env_kind = action_space_kind(act_space)
    except ValueError as exc:
        raise ValueError(f"environment {env_id}: {exc}") from None
    if env_kind != kind:
        raise ValueError(
            f"environment {env_id} takes {env_kind} actions ({act_space}) but the model was "
            f"trained for {kind} actions (model config action_space: {kind}); evaluate it on "
            "the task it was trained for"
        )
    if kind == "discrete":
        fits, predicts = int(act_space.n) == model.act_dim, f"{model.act_dim} actions"
    else:
        fits, predicts = act_space.shape == (model.act_dim,), f"shape ({model.act_dim},)"
    if not fits:
        raise ValueError(
            f"environment {env_id} takes actions {act_space} but the model predicts {predicts} "
            f"(act_dim={model.act_dim}); evaluate it on the task it was trained for"
        )


def evaluate_agent(
    model: torch.nn.Module,
    env_id: str,
    target_return: float,
    n_episodes: int,
    n_envs: int = 1,
    seed: int = 0,
    device: torch.device | str | None = None,
    max_episode_steps: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    *,
    autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
    record: bool = False,
    progress: bool = False,
    fast_step: bool = True,
    vectorization_mode: str = "sync",
    sample: bool = False,
) -> RolloutResult:
    """Play ``n_episodes`` episodes of ``env_id`` with ``n_envs`` environments side by side.

    Args:
        model: a ``DecisionModel`` (or a DDP wrapper of one); put in eval mode for the rollout
            and given back in the mode it came in.
        env_id: a Gymnasium id (``gym.make_vec(env_id, ...)``, synchronous vector env).
        target_return: the return to condition on, unscaled (e.g. 3600 for hopper).
        n_episodes: episodes to play in all; ``n_envs`` is lowered to it if larger.
        n_envs: environments stepped together (one model call per vector step).
        seed: environment i is seeded with ``seed + i``.
        device: where the model runs (it is moved there); default: where it already is.
        max_episode_steps: time limit passed to ``gym.make`` (default: the env's own).
        env_kwargs: more keyword arguments for ``gym.make``.
        autoreset_mode: the vector env's autoreset mode, ``"NextStep"`` (Gymnasium's default)
            or ``"SameStep"``; both give the same episodes.
        record: keep every episode's inputs and actions in ``result.episodes`` (discrete
            actions as the one-hot vectors fed to the model).
        progress: show a progress bar over episodes.
        sample: discrete actions: draw each from the model's softmax (seeded by ``seed``)
            instead of taking the argmax.
        fast_step: step an Aaren model with :class:`FastDecisionStep` (the same actions within
            float32 rounding, several times faster); False: the model's own ``act``.
        vectorization_mode: ``"sync"`` (one process; measured the faster on one core for
            MuJoCo: docs/performance.md) or ``"async"`` (a process per environment).

    Raises:
        NonFiniteInputError: an observation, reward, return-to-go or action was NaN or inf; the
            message names ``env_id``, the env index and its step in the episode.
    """
    try:
        return _evaluate(
            model,
            env_id,
            target_return,
            n_episodes,
            n_envs,
            seed,
            device,
            max_episode_steps,
            env_kwargs,
            autoreset_mode=autoreset_mode,
            record=record,
            progress=progress,
            fast_step=fast_step,
            vectorization_mode=vectorization_mode,
            sample=sample,
        )
    except NonFiniteInputError as exc:
        raise NonFiniteInputError(
            f"rollout in {env_id} (target return {target_return:g}): {exc}",
            name=exc.name,
            env_index=exc.env_index,
            step=exc.step,
        ) from None


def _evaluate(
    model: torch.nn.Module,
    env_id: str,
    target_return: float,
    n_episodes: int,
    n_envs: int,
    seed: int,
    device: torch.device | str | None,
    max_episode_steps: int | None,
    env_kwargs: dict[str, Any] | None,
    *,
    autoreset_mode: str | AutoresetMode,
    record: bool,
    progress: bool,
    fast_step: bool,
    vectorization_mode: str,
    sample: bool,
) -> RolloutResult:
    net = _unwrap(model)
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    if sample and not net.discrete:
        raise ValueError(
            "sample=True (--sample) draws discrete actions; this model has continuous actions"
        )
    n_envs = min(n_envs, n_episodes)
    mode = _autoreset_mode(autoreset_mode)
    if device is not None:
        net.to(device)
    device = next(net.parameters()).device
    target = float(target_return)
    make_kwargs = dict(env_kwargs or {})
    if max_episode_steps is not None:
        make_kwargs["max_episode_steps"] = int(max_episode_steps)

    envs = gym.make_vec(
        env_id,
        num_envs=n_envs,
        vectorization_mode=vectorization_mode,
        vector_kwargs={"autoreset_mode": mode},
        **make_kwargs,
    )
    was_training = net.training
    net.eval()
    try:
        _check_spaces(envs, net, env_id)
        policy = rollout_policy(net, fast_step)  # a discrete model: the model itself
        act_space = envs.single_action_space
        if net.discrete:
            generator = torch.Generator(device=device).manual_seed(seed) if sample else None
            first_action = int(act_space.start)
        else:
            low = torch.as_tensor(act_space.low, dtype=torch.float32, device=device)
            high = torch.as_tensor(act_space.high, dtype=torch.float32, device=device)
        targets = np.array([(n_episodes + i) // n_envs for i in range(n_envs)])
        counts = np.zeros(n_envs, dtype=np.int64)
        per_env: list[list[tuple[float, int, EpisodeRecord | None]]] = [[] for _ in range(n_envs)]
        buffers: list[dict[str, list]] = [_empty_buffer() for _ in range(n_envs)]

        rtg = np.full(n_envs, target, dtype=np.float64)
        timestep = np.zeros(n_envs, dtype=np.int64)
        ep_return = np.zeros(n_envs, dtype=np.float64)
        ep_length = np.zeros(n_envs, dtype=np.int64)
        pending_reset = np.zeros(n_envs, dtype=bool)  # NEXT_STEP: next step() only resets
        model_ms: list[float] = []
        env_ms: list[float] = []
        bytes_first = bytes_last = bytes_max = None

        obs, _ = envs.reset(seed=seed)
        with torch.inference_mode():
            state = policy.initial_state(n_envs, device=device)
            bar = tqdm(total=n_episodes, desc=f"eval {env_id}", unit="ep", disable=not progress)
            while (counts < targets).any():
                t0 = time.perf_counter()
                obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
                t_t = torch.as_tensor(timestep, device=device)
                rtg_t = torch.as_tensor(rtg, dtype=torch.float32, device=device)
                if net.discrete:
                    action, state = net.act(obs_t, rtg_t, t_t, state, sample, generator)
                    state = net.observe_action(action, t_t, state)
                    action_np = action.float().cpu().numpy()
                    env_action = action_np.argmax(axis=1) + first_action
                else:
                    action, state = policy.act(obs_t, rtg_t, t_t, state)
                    action = torch.maximum(torch.minimum(action.float(), high), low)
                    state = policy.observe_action(action, t_t, state)
                    action_np = env_action = action.cpu().numpy()
                model_ms.append((time.perf_counter() - t0) * 1e3)

                nbytes = round(state_nbytes(state) / n_envs)
                bytes_first = nbytes if bytes_first is None else bytes_first
                bytes_last = nbytes
                bytes_max = nbytes if bytes_max is None else max(bytes_max, nbytes)

                stepping = ~pending_reset  # envs whose step() is a real environment step
                if record:
                    for i in np.flatnonzero(stepping & (counts < targets)):
                        buf = buffers[i]
                        buf["observations"].append(np.asarray(obs[i], dtype=np.float64))
                        buf["actions"].append(action_np[i])
                        buf["returns_to_go"].append(rtg[i])
                        buf["timesteps"].append(timestep[i])

                t1 = time.perf_counter()
                obs, reward, terminated, truncated, _ = envs.step(env_action)
                env_ms.append((time.perf_counter() - t1) * 1e3)

                reward = np.where(stepping, np.asarray(reward, dtype=np.float64), 0.0)
                check_step_inputs(timestep, reward=reward)
                ep_return += reward
                ep_length += stepping
                rtg -= reward
                timestep += stepping
                if record:
                    for i in np.flatnonzero(stepping & (counts < targets)):
                        buffers[i]["rewards"].append(reward[i])

                done = stepping & (np.asarray(terminated) | np.asarray(truncated))
                for i in np.flatnonzero(done):
                    if counts[i] >= targets[i]:
                        continue
                    rec = None
                    if record:
                        rec = _to_record(buffers[i], i, bool(terminated[i]), bool(truncated[i]))
                    per_env[i].append((float(ep_return[i]), int(ep_length[i]), rec))
                    counts[i] += 1
                    bar.update(1)

                if mode == AutoresetMode.NEXT_STEP:
                    new_episode = pending_reset.copy()
                    pending_reset = done
                else:
                    new_episode = done
                if new_episode.any():
                    state = policy.reset_state(state, torch.as_tensor(new_episode, device=device))
                    rtg[new_episode] = target
                    timestep[new_episode] = 0
                    ep_return[new_episode] = 0.0
                    ep_length[new_episode] = 0
                    for i in np.flatnonzero(new_episode):
                        buffers[i] = _empty_buffer()
            bar.close()
    finally:
        envs.close()
        net.train(was_training)

    flat = [(i, ret, n, rec) for i in range(n_envs) for (ret, n, rec) in per_env[i]]
    returns = np.array([ret for _, ret, _, _ in flat], dtype=np.float64)
    return RolloutResult(
        target_return=target,
        n_envs=n_envs,
        returns=returns,
        lengths=np.array([n for _, _, n, _ in flat], dtype=np.int64),
        episode_env=np.array([i for i, _, _, _ in flat], dtype=np.int64),
        mean_return=float(returns.mean()),
        std_return=float(returns.std()),
        step_latency_ms=float(np.median(model_ms)),
        env_step_latency_ms=float(np.median(env_ms)),
        state_bytes_per_env_first=int(bytes_first),
        state_bytes_per_env_last=int(bytes_last),
        state_bytes_per_env_max=int(bytes_max),
        latency_ms_by_step=np.asarray(model_ms),
        episodes=[rec for _, _, _, rec in flat] if record else None,
    )


def _empty_buffer() -> dict[str, list]:
    return {k: [] for k in ("observations", "actions", "rewards", "returns_to_go", "timesteps")}


def _to_record(buf: dict[str, list], env_index: int, terminated: bool, truncated: bool):
    return EpisodeRecord(
        env_index=env_index,
        observations=np.stack(buf["observations"]),
        actions=np.stack(buf["actions"]),
        rewards=np.asarray(buf["rewards"], dtype=np.float64),
        returns_to_go=np.asarray(buf["returns_to_go"], dtype=np.float64),
        timesteps=np.asarray(buf["timesteps"], dtype=np.int64),
        terminated=terminated,
        truncated=truncated,
    )


@dataclass
class StepProfile:
    """Cost of the model's rollout step against the timestep t = 1 .. n_steps.

    ``latency_ms[t - 1]``: wall-clock time of act + observe_action at step t for all rows;
    ``state_bytes_per_env[t - 1]``: ``state_nbytes(state) / n_envs`` after step t.
    """

    latency_ms: np.ndarray
    state_bytes_per_env: np.ndarray

    def at(self, t: int, window: int = 10) -> tuple[float, int]:
        """(median latency over the ``window`` steps ending at t, state bytes after step t)."""
        lo = max(0, t - window)
        return float(np.median(self.latency_ms[lo:t])), int(self.state_bytes_per_env[t - 1])


def profile_steps(
    model: torch.nn.Module,
    n_steps: int = 1000,
    n_envs: int = 1,
    seed: int = 0,
    device: torch.device | str | None = None,
    fast_step: bool = False,
) -> StepProfile:
    """Step the model ``n_steps`` times on random inputs (no environment) and time each step.

    Shows how time and memory per step behave over a long episode: flat for Aaren, growing
    for a full-attention KV cache, bounded by the window for Decision Transformer's recompute.
    ``fast_step``: profile Aaren's :class:`FastDecisionStep` instead of the model's own step.
    """
    net = _unwrap(model)
    if device is not None:
        net.to(device)
    device = next(net.parameters()).device
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n_steps, n_envs, net.obs_dim, generator=g).to(device)
    was_training = net.training
    net.eval()
    latency, nbytes = [], []
    try:
        with torch.inference_mode():
            policy = rollout_policy(net, fast_step)
            state = policy.initial_state(n_envs, device=device)
            rtg = torch.zeros(n_envs, device=device)
            for t in range(n_steps):
                ts = torch.full((n_envs,), t, dtype=torch.long, device=device)
                t0 = time.perf_counter()
                action, state = policy.act(obs[t], rtg, ts, state)
                state = policy.observe_action(action, ts, state)
                action.cpu()
                latency.append((time.perf_counter() - t0) * 1e3)
                nbytes.append(round(state_nbytes(state) / n_envs))
    finally:
        net.train(was_training)
    return StepProfile(np.asarray(latency), np.asarray(nbytes, dtype=np.int64))
