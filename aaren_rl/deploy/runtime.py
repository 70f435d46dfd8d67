"""Run an exported policy without PyTorch: ONNX Runtime and numpy only.

:class:`OnnxStep` wraps one exported graph (any kind of :mod:`aaren_rl.deploy.spec`): it
holds the ONNX Runtime ``InferenceSession``, makes the empty state
(:meth:`OnnxStep.initial_state`), empties the rows of finished episodes
(:meth:`OnnxStep.reset`) and calls the graph with the state carried (:meth:`OnnxStep.step`).
Its state is a dict of numpy arrays, batch first, whose size
never depends on how many steps came before.

:func:`evaluate_onnx` rolls a Decision Aaren step out in Gymnasium vector environments with
the bookkeeping of :func:`aaren_rl.agents.rollout.evaluate_agent`: each env keeps its own
return-to-go (the target minus its episode's rewards, unscaled), timestep and state row;
episodes are shared out as SB3's ``evaluate_policy`` does (env i plays
``(n_episodes + i) // n_envs``); env i is seeded ``seed + i``; with Gymnasium's default
``NEXT_STEP`` autoreset the step after an episode's end only resets that env (it counts for
nothing) and the env's state row is emptied before the new episode's first observation.

Nothing here imports torch; ``tests/test_deploy.py`` runs this module in a process where
``import torch`` fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .spec import fill_value, initial_state, loads_spec

__all__ = ["OnnxRollout", "OnnxStep", "evaluate_onnx", "load_step"]


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "running an exported policy needs onnxruntime: pip install 'aaren-rl[deploy]' "
            "(or pip install onnxruntime numpy)"
        ) from None
    return onnxruntime


class OnnxStep:
    """One exported aaren-rl graph in an ONNX Runtime ``InferenceSession`` (see the module docstring).

    Args:
        path: the ``.onnx`` file written by ``aaren-rl export``.
        threads: ONNX Runtime's intra-op threads (1: one core; 0: ONNX Runtime's choice).
    """

    def __init__(self, path: str | os.PathLike[str], threads: int = 1) -> None:
        ort = _ort()
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(
                f"{self.path}: no such file (export one with `aaren-rl export`)"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.spec = loads_spec(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.kind: str = self.spec["kind"]
        self.state_names = [s["name"] for s in self.spec["state"]]
        self.next_names = [s["next"] for s in self.spec["state"]]
        self.fills = {s["name"]: fill_value(s) for s in self.spec["state"]}
        state_set = set(self.state_names)
        self.data_inputs = [i for i in self.spec["inputs"] if i["name"] not in state_set]
        self.output_names = [o["name"] for o in self.spec["outputs"]]
        self._dtypes = {i["name"]: np.dtype(i["dtype"]) for i in self.spec["inputs"]}
        self._shapes = {i["name"]: tuple(i["shape"]) for i in self.spec["inputs"]}

    # ------------------------------------------------------------------ state
    def initial_state(self, batch_size: int) -> dict[str, np.ndarray]:
        """The empty state of ``batch_size`` rows: ``{name: [batch, ...]}``."""
        return initial_state(self.spec, batch_size)

    def state_nbytes(self, state: Mapping[str, np.ndarray]) -> int:
        """Bytes held by ``state`` (every array)."""
        return int(sum(state[name].nbytes for name in self.state_names))

    def reset(self, state: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
        """Empty the state of the rows where ``rows [batch]`` (bool) is True, in place."""
        rows = np.asarray(rows, dtype=bool)
        for name in self.state_names:
            state[name][rows] = self.fills[name]
        return state

    # ------------------------------------------------------------------ step
    def _feed(self, inputs: Mapping[str, Any], batch: int | None) -> dict[str, np.ndarray]:
        feed = {}
        for item in self.data_inputs:
            name = item["name"]
            if name not in inputs:
                raise ValueError(f"{self.path}: missing input {name!r}")
            a = np.asarray(inputs[name])
            want = self._dtypes[name]
            if a.dtype != want:
                if want.kind in "iu" and a.dtype.kind not in "iu":
                    raise TypeError(f"input {name!r} must hold integers, got {a.dtype}")
                a = a.astype(want)
            batch = a.shape[0] if batch is None and a.ndim else batch
            if a.shape != (batch, *self._shapes[name]):
                raise ValueError(
                    f"input {name!r} has shape {a.shape}; the graph expects "
                    f"{(batch, *self._shapes[name])} (batch, ...)"
                )
            if want.kind == "f" and not np.isfinite(a).all():
                row = int(np.flatnonzero(~np.isfinite(a.reshape(batch, -1)).all(1))[0])
                raise ValueError(f"input {name!r} holds NaN or inf (row {row})")
            feed[name] = np.ascontiguousarray(a)
        return feed

    def step(
        self, state: Mapping[str, np.ndarray], **inputs: Any
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Call the graph once: ``inputs`` by name (``observation=..., return_to_go=...``),
        ``state`` as given by :meth:`initial_state` or the previous call ->
        ``(outputs, new state)``; ``outputs`` maps every non-state output's name to its array."""
        batch = state[self.state_names[0]].shape[0]
        feed = self._feed(inputs, batch)
        for name in self.state_names:
            feed[name] = state[name]
        results = self.session.run(self.output_names, feed)
        by_name = dict(zip(self.output_names, results, strict=True))
        new_state = {
            name: by_name.pop(nxt)
            for name, nxt in zip(self.state_names, self.next_names, strict=True)
        }
        return by_name, new_state


def load_step(path: str | os.PathLike[str], threads: int = 1) -> OnnxStep:
    """An :class:`OnnxStep` for the file at ``path``."""
    return OnnxStep(path, threads=threads)


@dataclass
class OnnxRollout:
    """Returns of :func:`evaluate_onnx`, listed by environment then in play order.

    ``step_latency_ms``: median time of one graph call for all envs; ``state_bytes_per_env``:
    the state's bytes per env after every vector step (it never changes).
    ``actions`` (``record=True``): per episode, the actions sent to the env ``[T, ...]``.
    """

    target_return: float
    n_envs: int
    returns: np.ndarray
    lengths: np.ndarray
    episode_env: np.ndarray
    mean_return: float
    std_return: float
    step_latency_ms: float
    state_bytes_per_env: int
    actions: list[np.ndarray] | None = field(default=None, repr=False)


def _make_envs(env_id: str, n_envs: int, make_kwargs: dict[str, Any], mode: Any) -> Any:
    import gymnasium as gym

    return gym.make_vec(
        env_id,
        num_envs=n_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": mode},
        **make_kwargs,
    )


def evaluate_onnx(
    policy: OnnxStep | str | os.PathLike[str],
    env_id: str | None = None,
    target_return: float | None = None,
    n_episodes: int = 10,
    n_envs: int = 1,
    seed: int = 0,
    max_episode_steps: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    *,
    autoreset_mode: str = "NextStep",
    record: bool = False,
) -> OnnxRollout:
    """Play ``n_episodes`` episodes of ``env_id`` with an exported Decision Aaren step.

    Args:
        policy: an :class:`OnnxStep` of kind ``decision_step``, or the path of one.
        env_id: a Gymnasium id (default: the exported task's ``env_id``).
        target_return: the return to condition on, unscaled (default: the task's first).
        n_episodes: episodes in all; ``n_envs`` is lowered to it if larger.
        n_envs: environments stepped together (one graph call per vector step).
        seed: env i is seeded ``seed + i``.
        max_episode_steps: time limit (default: the task's, else the env's own).
        env_kwargs: more keyword arguments for ``gym.make``.
        autoreset_mode: ``"NextStep"`` (Gymnasium's default) or ``"SameStep"``.
        record: keep every episode's actions in ``result.actions``.
    """
    from gymnasium.vector import AutoresetMode

    step = policy if isinstance(policy, OnnxStep) else OnnxStep(policy)
    if step.kind != "decision_step":
        raise ValueError(f"{step.path}: evaluate_onnx runs a decision_step, not a {step.kind}")
    task = step.spec.get("task") or {}
    env_id = env_id or task.get("env_id")
    if not env_id:
        raise ValueError(f"{step.path}: no env_id given and the exported task names none")
    if target_return is None:
        targets = task.get("target_returns") or []
        if not targets:
            raise ValueError(f"{step.path}: no target_return given and the task has none")
        target_return = float(targets[0])
    if n_episodes < 1 or n_envs < 1:
        raise ValueError(f"n_episodes and n_envs must be >= 1, got {n_episodes} and {n_envs}")
    mode = AutoresetMode(autoreset_mode)
    if mode == AutoresetMode.DISABLED:
        raise ValueError("autoreset_mode 'Disabled' is not supported; use 'NextStep' or 'SameStep'")
    n_envs = min(n_envs, n_episodes)
    make_kwargs = dict(task.get("env_kwargs") or {})
    make_kwargs.update(env_kwargs or {})
    limit = max_episode_steps or task.get("max_episode_steps")
    if limit is not None:
        make_kwargs["max_episode_steps"] = int(limit)
    envs = _make_envs(env_id, n_envs, make_kwargs, mode)
    try:
        return _rollout(step, envs, float(target_return), n_episodes, n_envs, seed, mode, record)
    finally:
        envs.close()


def _rollout(
    step: OnnxStep,
    envs: Any,
    target: float,
    n_episodes: int,
    n: int,
    seed: int,
    mode: Any,
    record: bool,
) -> OnnxRollout:
    from gymnasium.vector import AutoresetMode

    obs_dim = step.spec["observation"]["dim"]
    if envs.single_observation_space.shape != (obs_dim,):
        raise ValueError(
            f"the environment gives observations {envs.single_observation_space} but the "
            f"exported policy expects shape ({obs_dim},)"
        )
    targets = np.array([(n_episodes + i) // n for i in range(n)])
    counts = np.zeros(n, dtype=np.int64)
    rtg = np.full(n, target, dtype=np.float64)
    timestep = np.zeros(n, dtype=np.int64)
    ep_return = np.zeros(n, dtype=np.float64)
    ep_length = np.zeros(n, dtype=np.int64)
    pending_reset = np.zeros(n, dtype=bool)
    per_env: list[list[tuple[float, int, np.ndarray | None]]] = [[] for _ in range(n)]
    buffers: list[list[np.ndarray]] = [[] for _ in range(n)]
    state = step.initial_state(n)
    latency: list[float] = []
    nbytes = step.state_nbytes(state)
    obs, _ = envs.reset(seed=seed)
    while bool((counts < targets).any()):
        t0 = time.perf_counter()
        out, state = step.step(
            state,
            observation=np.asarray(obs, dtype=np.float32),
            return_to_go=rtg.astype(np.float32),
            timestep=timestep,
        )
        latency.append((time.perf_counter() - t0) * 1e3)
        if step.state_nbytes(state) != nbytes:  # the graph's contract: a fixed size per env
            raise AssertionError("the exported step's state changed size")
        action = out["action"]
        stepping = ~pending_reset
        if record:
            for i in np.flatnonzero(stepping & (counts < targets)):
                buffers[i].append(np.array(action[i]))
        obs, reward, terminated, truncated, _ = envs.step(action)
        reward = np.where(stepping, np.asarray(reward, dtype=np.float64), 0.0)
        ep_return += reward
        ep_length += stepping
        rtg -= reward
        timestep += stepping
        done = stepping & (np.asarray(terminated) | np.asarray(truncated))
        for i in np.flatnonzero(done):
            if counts[i] >= targets[i]:
                continue
            acts = np.stack(buffers[i]) if record else None
            per_env[i].append((float(ep_return[i]), int(ep_length[i]), acts))
            counts[i] += 1
        if mode == AutoresetMode.NEXT_STEP:
            new_episode = pending_reset.copy()
            pending_reset = done
        else:
            new_episode = done
        if new_episode.any():
            step.reset(state, new_episode)
            rtg[new_episode] = target
            timestep[new_episode] = 0
            ep_return[new_episode] = 0.0
            ep_length[new_episode] = 0
            for i in np.flatnonzero(new_episode):
                buffers[i] = []
    flat = [(i, r, k, a) for i in range(n) for (r, k, a) in per_env[i]]
    returns = np.array([r for _, r, _, _ in flat], dtype=np.float64)
    return OnnxRollout(
        target_return=target,
        n_envs=n,
        returns=returns,
        lengths=np.array([k for _, _, k, _ in flat], dtype=np.int64),
        episode_env=np.array([i for i, _, _, _ in flat], dtype=np.int64),
        mean_return=float(returns.mean()),
        std_return=float(returns.std()),
        step_latency_ms=float(np.median(latency)),
        state_bytes_per_env=nbytes // n,
        actions=[a for _, _, _, a in flat] if record else None,
    )
