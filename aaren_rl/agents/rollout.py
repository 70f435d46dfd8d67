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
from torch import Tensor
from tqdm.auto import tqdm

from aaren_rl.nn.backbone import state_nbytes

from .decision_model import DecisionModel, action_space_kind
from .fast_step import FastDecisionStep, check_supported
from .overlap_envs import BatchedWorkerEnvs
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


VECTORIZATION_MODES = ("sync", "async", "overlap")


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


def describe_rollout_step(
    net: torch.nn.Module, fast_step: bool = True, reference_flag: str = "fast_step=False"
) -> str:
    """One line saying which step a rollout of ``net`` runs and how to get the other one.

    The three paths: :class:`FastDecisionStep` compiled by numba (CPU float32), the same fused
    step in PyTorch (numba missing, CUDA or float64), or the model's own ``act`` (a
    Transformer, a post-norm Aaren, or ``fast_step=False``). ``reference_flag`` names the
    caller's switch to the model's own step (``--reference-step`` on the command line).
    """
    from aaren_rl.agents import fast_step_numba

    net = _unwrap(net)
    if not fast_step:
        return (
            f"rollout step: the model's own act/observe_action ({reference_flag}); without it "
            "an Aaren model runs FastDecisionStep (same actions, fused weights, far faster)"
        )
    try:
        check_supported(net)
    except ValueError as exc:
        return f"rollout step: the model's own act/observe_action (no fast step: {exc})"
    p = next(net.parameters())
    if p.device.type == "cpu" and p.dtype == torch.float32 and fast_step_numba.AVAILABLE:
        return (
            "rollout step: FastDecisionStep compiled by numba (one call per step); "
            f"{reference_flag} runs the model's own step instead"
        )
    if not fast_step_numba.AVAILABLE:
        why = "numba is not installed: `pip install numba` gives the compiled CPU step"
    else:
        why = f"the model is {p.dtype} on {p.device}; the numba step runs on CPU float32"
    return (
        f"rollout step: FastDecisionStep in PyTorch ({why}); "
        f"{reference_flag} runs the model's own step instead"
    )


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
    n_workers: int | None = None,
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
        vectorization_mode: ``"sync"`` (one process), ``"async"`` (gymnasium's
            ``AsyncVectorEnv``, a process per environment) or ``"overlap"``
            (:class:`~aaren_rl.agents.overlap_envs.BatchedWorkerEnvs`: the environments in
            ``n_workers + 1`` groups, one simulated in this process and each other one in a
            worker process, and each group's policy computed while the others simulate; the
            same episodes and returns as ``"sync"``: docs/performance.md).
        n_workers: ``"overlap"`` only: worker processes, default 1 (with this process: one
            per core of a 2-core machine); capped so that every group has an environment.
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
            n_workers=n_workers,
        )
    except NonFiniteInputError as exc:
        raise NonFiniteInputError(
            f"rollout in {env_id} (target return {target_return:g}): {exc}",
            name=exc.name,
            env_index=exc.env_index,
            step=exc.step,
        ) from None


class _Lane:
    """The rollout bookkeeping of environments ``start:stop`` (one group), with its own policy
    state: the model's step before a vector step (:meth:`act`), the returns, episode ends and
    resets after it (:meth:`observe`). Episodes go to ``per_env`` by global env index."""

    def __init__(self, run: _Run, start: int, stop: int) -> None:
        self.run, self.start, self.stop = run, start, stop
        n = stop - start
        self.n = n
        self.targets = run.targets[start:stop]
        self.counts = np.zeros(n, dtype=np.int64)
        self.buffers: list[dict[str, list]] = [_empty_buffer() for _ in range(n)]
        self.rtg = np.full(n, run.target, dtype=np.float64)
        self.timestep = np.zeros(n, dtype=np.int64)
        self.ep_return = np.zeros(n, dtype=np.float64)
        self.ep_length = np.zeros(n, dtype=np.int64)
        self.pending_reset = np.zeros(n, dtype=bool)  # NEXT_STEP: next step() only resets
        self.state = run.policy.initial_state(n, device=run.device)
        self.obs: np.ndarray | None = None
        self.stepping = np.ones(n, dtype=bool)

    def active(self) -> bool:
        return bool((self.counts < self.targets).any())

    def _global(self, exc: NonFiniteInputError) -> NonFiniteInputError:
        """``exc`` with the lane's row turned into the global env index."""
        if self.start == 0:
            return exc
        row = exc.env_index
        return NonFiniteInputError(
            f"(env {self.start + row} is row {row} of the group of envs {self.start} to "
            f"{self.stop - 1}) {exc}",
            name=exc.name,
            env_index=self.start + row,
            step=exc.step,
        )

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The actions for ``obs [n, obs_dim]`` (the environments' format), state updated."""
        run = self.run
        self.obs = obs
        t0 = time.perf_counter()
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=run.device)
        t_t = torch.as_tensor(self.timestep, device=run.device)
        rtg_t = torch.as_tensor(self.rtg, dtype=torch.float32, device=run.device)
        try:
            if run.discrete:
                net = run.policy
                action, self.state = net.act(obs_t, rtg_t, t_t, self.state, run.sample, run.gen)
                self.state = net.observe_action(action, t_t, self.state)
                action_np = action.float().cpu().numpy()
                env_action = action_np.argmax(axis=1) + run.first_action
            else:
                action, self.state = run.policy.act(obs_t, rtg_t, t_t, self.state)
                action = torch.maximum(torch.minimum(action.float(), run.high), run.low)
                self.state = run.policy.observe_action(action, t_t, self.state)
                action_np = env_action = action.cpu().numpy()
        except NonFiniteInputError as exc:
            raise self._global(exc) from None
        run.model_ms.append((time.perf_counter() - t0) * 1e3)
        run.note_bytes(round(state_nbytes(self.state) / self.n))
        self.stepping = ~self.pending_reset  # envs whose step() is a real environment step
        if run.record:
            for i in np.flatnonzero(self.stepping & (self.counts < self.targets)):
                buf = self.buffers[i]
                buf["observations"].append(np.asarray(obs[i], dtype=np.float64))
                buf["actions"].append(action_np[i])
                buf["returns_to_go"].append(self.rtg[i])
                buf["timesteps"].append(self.timestep[i])
        return env_action

    def observe(self, reward: Any, terminated: Any, truncated: Any) -> None:
        """Book the vector step's results; reset the memory of rows that start an episode."""
        run, stepping = self.run, self.stepping
        reward = np.where(stepping, np.asarray(reward, dtype=np.float64), 0.0)
        try:
            check_step_inputs(self.timestep, reward=reward)
        except NonFiniteInputError as exc:
            raise self._global(exc) from None
        self.ep_return += reward
        self.ep_length += stepping
        self.rtg -= reward
        self.timestep += stepping
        if run.record:
            for i in np.flatnonzero(stepping & (self.counts < self.targets)):
                self.buffers[i]["rewards"].append(reward[i])

        done = stepping & (np.asarray(terminated) | np.asarray(truncated))
        for i in np.flatnonzero(done):
            if self.counts[i] >= self.targets[i]:
                continue
            rec = None
            if run.record:
                rec = _to_record(
                    self.buffers[i], self.start + i, bool(terminated[i]), bool(truncated[i])
                )
            run.per_env[self.start + i].append(
                (float(self.ep_return[i]), int(self.ep_length[i]), rec)
            )
            self.counts[i] += 1
            run.bar.update(1)

        if run.mode == AutoresetMode.NEXT_STEP:
            new_episode = self.pending_reset.copy()
            self.pending_reset = done
        else:
            new_episode = done
        if new_episode.any():
            self.state = run.policy.reset_state(
                self.state, torch.as_tensor(new_episode, device=run.device)
            )
            self.rtg[new_episode] = run.target
            self.timestep[new_episode] = 0
            self.ep_return[new_episode] = 0.0
            self.ep_length[new_episode] = 0
            for i in np.flatnonzero(new_episode):
                self.buffers[i] = _empty_buffer()


@dataclass
class _Run:
    """What every lane of one evaluation shares (the policy, the action bounds, the results)."""

    policy: Any
    device: torch.device
    target: float
    targets: np.ndarray
    mode: AutoresetMode
    record: bool
    discrete: bool
    bar: Any
    sample: bool = False
    gen: torch.Generator | None = None
    first_action: int = 0
    low: Tensor | None = None
    high: Tensor | None = None
    per_env: list[list[tuple[float, int, EpisodeRecord | None]]] = field(default_factory=list)
    model_ms: list[float] = field(default_factory=list)
    env_ms: list[float] = field(default_factory=list)
    bytes_first: int | None = None
    bytes_last: int | None = None
    bytes_max: int | None = None

    def note_bytes(self, nbytes: int) -> None:
        self.bytes_first = nbytes if self.bytes_first is None else self.bytes_first
        self.bytes_last = nbytes
        self.bytes_max = nbytes if self.bytes_max is None else max(self.bytes_max, nbytes)


def _run_sync(envs: gym.vector.VectorEnv, run: _Run, seed: int) -> None:
    """One lane over the in-process (or gymnasium async) vector env: policy, then simulator."""
    lane = _Lane(run, 0, envs.num_envs)
    obs, _ = envs.reset(seed=seed)
    while lane.active():
        action = lane.act(obs)
        t1 = time.perf_counter()
        obs, reward, terminated, truncated, _ = envs.step(action)
        run.env_ms.append((time.perf_counter() - t1) * 1e3)
        lane.observe(reward, terminated, truncated)


def _run_overlap(pool: BatchedWorkerEnvs, run: _Run, seed: int) -> None:
    """One lane per worker group; group k's policy runs while the other groups simulate.

    ``env_ms`` records the time spent waiting for a group's step (what the overlap did not
    hide), not the simulator's own time.
    """
    lanes = [_Lane(run, start, stop) for start, stop in pool.groups]
    for k, obs in enumerate(pool.reset(seed=seed)):
        pool.step_async(k, lanes[k].act(obs))
    running = [True] * len(lanes)
    while any(running):
        for k, lane in enumerate(lanes):
            if not running[k]:
                continue
            t1 = time.perf_counter()
            obs, reward, terminated, truncated = pool.step_wait(k)
            run.env_ms.append((time.perf_counter() - t1) * 1e3)
            lane.observe(reward, terminated, truncated)
            if lane.active():
                pool.step_async(k, lane.act(obs))
            else:
                running[k] = False


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
    n_workers: int | None,
) -> RolloutResult:
    net = _unwrap(model)
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    if vectorization_mode not in VECTORIZATION_MODES:
        raise ValueError(
            f"vectorization_mode must be one of {VECTORIZATION_MODES}, got {vectorization_mode!r}"
        )
    if sample and not net.discrete:
        raise ValueError(
            "sample=True (--sample) draws discrete actions; this model has continuous actions"
        )
    if sample and vectorization_mode == "overlap":
        raise ValueError(
            "sample=True draws from one generator in step order, which the overlapped groups "
            "change; use vectorization_mode 'sync' or 'async' to sample"
        )
    if n_workers is not None and n_workers < 0:
        raise ValueError(f"n_workers must be >= 0, got {n_workers}")
    n_envs = min(n_envs, n_episodes)
    mode = _autoreset_mode(autoreset_mode)
    if device is not None:
        net.to(device)
    device = next(net.parameters()).device
    target = float(target_return)
    make_kwargs = dict(env_kwargs or {})
    if max_episode_steps is not None:
        make_kwargs["max_episode_steps"] = int(max_episode_steps)

    if vectorization_mode == "overlap":
        groups = 1 + (1 if n_workers is None else n_workers)
        envs = BatchedWorkerEnvs(
            env_id,
            n_envs,
            groups,
            make_kwargs,
            vector_kwargs={"autoreset_mode": mode},
            first_in_process=True,
        )
    else:
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
        act_space = envs.single_action_space
        run = _Run(
            policy=rollout_policy(net, fast_step),  # a discrete model: the model itself
            device=device,
            target=target,
            targets=np.array([(n_episodes + i) // n_envs for i in range(n_envs)]),
            mode=mode,
            record=record,
            discrete=net.discrete,
            bar=tqdm(total=n_episodes, desc=f"eval {env_id}", unit="ep", disable=not progress),
            sample=sample,
            per_env=[[] for _ in range(n_envs)],
        )
        if net.discrete:
            run.gen = torch.Generator(device=device).manual_seed(seed) if sample else None
            run.first_action = int(act_space.start)
        else:
            run.low = torch.as_tensor(act_space.low, dtype=torch.float32, device=device)
            run.high = torch.as_tensor(act_space.high, dtype=torch.float32, device=device)
        with torch.inference_mode():
            if vectorization_mode == "overlap":
                _run_overlap(envs, run, seed)
            else:
                _run_sync(envs, run, seed)
        run.bar.close()
    finally:
        envs.close()
        net.train(was_training)

    flat = [(i, ret, n, rec) for i in range(n_envs) for (ret, n, rec) in run.per_env[i]]
    returns = np.array([ret for _, ret, _, _ in flat], dtype=np.float64)
    return RolloutResult(
        target_return=target,
        n_envs=n_envs,
        returns=returns,
        lengths=np.array([n for _, _, n, _ in flat], dtype=np.int64),
        episode_env=np.array([i for i, _, _, _ in flat], dtype=np.int64),
        mean_return=float(returns.mean()),
        std_return=float(returns.std()),
        step_latency_ms=float(np.median(run.model_ms)),
        env_step_latency_ms=float(np.median(run.env_ms)),
        state_bytes_per_env_first=int(run.bytes_first),
        state_bytes_per_env_last=int(run.bytes_last),
        state_bytes_per_env_max=int(run.bytes_max),
        latency_ms_by_step=np.asarray(run.model_ms),
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
