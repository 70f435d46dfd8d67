"""Batched environment workers, so that the policy and the simulator overlap in time.

Gymnasium's ``AsyncVectorEnv`` (and Stable-Baselines3's ``SubprocVecEnv``) run one process per
environment and step them all behind one call; neither lets a worker hold several
environments, and neither lets the caller work on one part of the batch while another part
simulates. On a machine with few cores the first costs a process switch and a pipe round trip
per environment step (measured: 16 async Hopper envs on 2 cores took 1.8x the synchronous
time); the second leaves a core idle while the policy runs. :class:`BatchedWorkerEnvs` does
both differently:

- ``n_groups`` groups, each a synchronous vector env (``gym.make_vec(...,
  vectorization_mode="sync")``) over a contiguous slice of the ``n_envs`` environments, in its
  own process (one pipe round trip per group step), or, with ``first_in_process``, group 0 in
  the calling process, which then simulates it while the workers simulate the others.
- Groups are stepped independently: ``step_async(k, actions)`` returns at once, and
  ``step_wait(k)`` collects the result. A rollout computes group k's policy while the other
  groups simulate (double buffering: one policy state per group; ``rollout.evaluate_agent``
  with ``vectorization_mode="overlap"``).

Environment i is seeded with ``seed + i`` as in a gymnasium vector env (group k, whose first
environment is i0, resets its vector env with ``seed + i0``), so each environment plays the
episodes it would play in one synchronous vector env.

Shutdown: workers ignore SIGINT (a Ctrl-C reaches the whole process group; the parent decides
and closes them). An exception in a worker is sent back and raised in the parent as
:class:`WorkerError`, naming the group and its environments; :meth:`BatchedWorkerEnvs.close`
(also on ``with`` exit and on garbage collection) asks every worker to close its envs, waits
briefly, and terminates any that do not exit.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import traceback
from typing import Any

import numpy as np

__all__ = ["BatchedWorkerEnvs", "WorkerError", "split_groups"]

_JOIN_SECONDS = 2.0


class WorkerError(RuntimeError):
    """An environment worker failed (its traceback is in the message) or died."""


def split_groups(n_envs: int, n_groups: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: ``n_envs`` environments in ``n_groups`` contiguous slices, the
    first ones one larger when it does not divide (``n_groups`` is capped at ``n_envs``)."""
    if n_envs < 1 or n_groups < 1:
        raise ValueError(f"need n_envs >= 1 and n_groups >= 1, got {n_envs} and {n_groups}")
    n_groups = min(n_groups, n_envs)
    sizes = [n_envs // n_groups + (k < n_envs % n_groups) for k in range(n_groups)]
    bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _worker(conn, env_id: str, n_envs: int, make_kwargs: dict, vector_kwargs: dict) -> None:
    """A worker's loop: build the group's sync vector env, then serve reset/step/close."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    envs = None
    try:
        import gymnasium as gym

        envs = gym.make_vec(
            env_id,
            num_envs=n_envs,
            vectorization_mode="sync",
            vector_kwargs=vector_kwargs,
            **make_kwargs,
        )
        conn.send(("ok", (envs.single_observation_space, envs.single_action_space)))
        while True:
            command, payload = conn.recv()
            if command == "step":
                obs, reward, terminated, truncated, _ = envs.step(payload)
                conn.send(("ok", (obs, reward, terminated, truncated)))
            elif command == "reset":
                obs, _ = envs.reset(seed=payload)
                conn.send(("ok", obs))
            elif command == "close":
                break
            else:  # pragma: no cover - the parent only sends the commands above
                raise ValueError(f"unknown command {command!r}")
    except (EOFError, KeyboardInterrupt, BrokenPipeError):  # the parent went away
        pass
    except BaseException:  # noqa: BLE001 - everything goes back to the parent
        try:
            conn.send(("error", traceback.format_exc()))
        except (OSError, BrokenPipeError):  # pragma: no cover - the parent is gone
            pass
    finally:
        if envs is not None:
            envs.close()
        conn.close()


class BatchedWorkerEnvs:
    """``n_envs`` copies of ``env_id`` in ``n_groups`` groups, stepped group by group.

    Args:
        env_id: a Gymnasium id; each worker calls ``gym.make_vec(env_id, num_envs=group size,
            vectorization_mode="sync", vector_kwargs=vector_kwargs, **make_kwargs)``.
        n_envs: environments in all.
        n_groups: groups of environments, capped at ``n_envs``; each in a worker process
            (group 0 in the calling process with ``first_in_process``).
        make_kwargs: keyword arguments for ``gym.make`` (e.g. ``max_episode_steps``).
        vector_kwargs: keyword arguments for the sync vector env (e.g. ``autoreset_mode``).
        context: the multiprocessing start method (None: the platform's default, as
            gymnasium's ``AsyncVectorEnv``; with "spawn" the env id must be registered on
            import).
        first_in_process: step group 0 in the calling process (its ``step_wait`` runs the
            simulator there) and only the other groups in workers: one process fewer, and the
            caller simulates group 0 while the workers simulate theirs instead of waiting.

    ``groups[k] = (start, stop)`` are group k's environments. Observations and the other
    returns are numpy arrays of the group's rows, as from the group's vector env.
    """

    def __init__(
        self,
        env_id: str,
        n_envs: int,
        n_groups: int,
        make_kwargs: dict[str, Any] | None = None,
        vector_kwargs: dict[str, Any] | None = None,
        context: str | None = None,
        first_in_process: bool = False,
    ) -> None:
        self.env_id = env_id
        self.groups = split_groups(n_envs, n_groups)
        self.num_envs = n_envs
        self._pipes: list[Any] = []
        self._procs: list[Any] = []
        self._waiting = [False] * len(self.groups)
        self._local = None  # group 0's vector env, when it is stepped here
        self._local_actions: Any = None
        self.closed = False
        ctx = mp.get_context(context)
        try:
            if first_in_process:
                import gymnasium as gym

                start, stop = self.groups[0]
                self._local = gym.make_vec(
                    env_id,
                    num_envs=stop - start,
                    vectorization_mode="sync",
                    vector_kwargs=vector_kwargs or {},
                    **dict(make_kwargs or {}),
                )
                self._pipes.append(None)
                self._procs.append(None)
            for start, stop in self.groups[len(self._pipes) :]:
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_worker,
                    args=(
                        child,
                        env_id,
                        stop - start,
                        dict(make_kwargs or {}),
                        vector_kwargs or {},
                    ),
                    name=f"aaren-rl-envs-{start}-{stop - 1}",
                    daemon=True,
                )
                proc.start()
                child.close()
                self._pipes.append(parent)
                self._procs.append(proc)
            spaces = [self._receive(k) for k in range(len(self.groups)) if self._pipes[k]]
            if self._local is not None:
                spaces.insert(
                    0, (self._local.single_observation_space, self._local.single_action_space)
                )
        except BaseException:
            self.close()
            raise
        self.single_observation_space, self.single_action_space = spaces[0]

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def _describe(self, k: int) -> str:
        start, stop = self.groups[k]
        return f"{self.env_id} worker {k} (envs {start} to {stop - 1})"

    def _receive(self, k: int) -> Any:
        try:
            status, payload = self._pipes[k].recv()
        except (EOFError, OSError):
            code = self._procs[k].exitcode if k < len(self._procs) else None
            raise WorkerError(f"{self._describe(k)} died (exit code {code})") from None
        if status == "error":
            raise WorkerError(f"{self._describe(k)} failed:\n{payload}")
        return payload

    def reset(self, seed: int | None = None) -> list[np.ndarray]:
        """Reset every group (environment i with ``seed + i``); the observations by group."""
        for k, (start, _) in enumerate(self.groups):
            if self._pipes[k] is not None:
                self._pipes[k].send(("reset", None if seed is None else seed + start))
        out = [self._receive(k) if self._pipes[k] else None for k in range(self.n_groups)]
        if self._local is not None:
            out[0], _ = self._local.reset(seed=seed)
        return out

    def step_async(self, k: int, actions: np.ndarray) -> None:
        """Send group k its actions ``[group size, ...]``; it simulates while the caller works."""
        if self._waiting[k]:
            raise RuntimeError(f"group {k} is already stepping: call step_wait({k}) first")
        if self._pipes[k] is None:  # stepped here, in step_wait
            self._local_actions = actions
        else:
            self._pipes[k].send(("step", actions))
        self._waiting[k] = True

    def step_wait(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Group k's ``(obs, reward, terminated, truncated)`` after its ``step_async``."""
        if not self._waiting[k]:
            raise RuntimeError(f"group {k} is not stepping: call step_async({k}, actions) first")
        self._waiting[k] = False
        if self._pipes[k] is None:
            obs, reward, terminated, truncated, _ = self._local.step(self._local_actions)
            return obs, reward, terminated, truncated
        return self._receive(k)

    def close(self) -> None:
        """Close every worker's envs and end the processes (terminated if they hang)."""
        if self.closed:
            return
        self.closed = True
        pipes = [p for p in self._pipes if p is not None]
        for pipe in pipes:
            try:
                pipe.send(("close", None))
            except (OSError, BrokenPipeError):
                pass
        for proc in (p for p in self._procs if p is not None):
            proc.join(_JOIN_SECONDS)
            if proc.is_alive():
                proc.terminate()
                proc.join(_JOIN_SECONDS)
        for pipe in pipes:
            pipe.close()
        if self._local is not None:
            self._local.close()

    def __enter__(self) -> BatchedWorkerEnvs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
