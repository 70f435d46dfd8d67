"""The Stable-Baselines3 layer's one error type and its checks.

Every problem a user can cause through the SB3 API (a saved file that is truncated or was
written by another algorithm, a ``predict`` state from another model, an ``episode_start`` of
the wrong length, a NaN observation, a NaN reward during ``learn``) raises :class:`SB3InputError`
with one message shape: ``WHERE: WHAT. Fix: FIX``. It subclasses ``ValueError``, so callers that
catch ``ValueError`` keep working.

The rollout check (:func:`check_rollout_step`) runs once per collected step, before anything of
it reaches the rollout buffer: a NaN reward stops ``learn`` before the update, so the weights
stay as they were.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np


class SB3InputError(ValueError):
    """Bad input to AarenPPO or its policy; the message reads ``WHERE: WHAT. Fix: FIX``."""

    def __init__(self, where: str, what: str, fix: str) -> None:
        super().__init__(f"{where}: {what}. Fix: {fix}")
        self.where, self.what, self.fix = where, what, fix


def first_non_finite(values: Any) -> tuple[int, int, float] | None:
    """``(row, entry, value)`` of the first NaN/inf of ``values`` (``[n, ...]``), else None.

    A dict (Dict observations) is checked key by key, in order; ``entry`` then counts across
    the keys' flattened entries."""
    if isinstance(values, dict):
        offset = 0
        for value in values.values():
            found = first_non_finite(value)
            if found is not None:
                return found[0], found[1] + offset, found[2]
            offset += int(np.prod(np.shape(value)[1:], dtype=np.int64))
        return None
    array = np.asarray(values)
    if array.dtype.kind not in "fc":
        return None  # integer and bool arrays hold no NaN
    finite = np.isfinite(array)
    if finite.all():
        return None
    flat = finite.reshape(array.shape[0], -1) if array.ndim else finite.reshape(1, 1)
    row = int(np.flatnonzero(~flat.all(axis=1))[0])
    entry = int(np.flatnonzero(~flat[row])[0])
    value = float(np.asarray(array).reshape(flat.shape)[row, entry])
    return row, entry, value


def check_rollout_step(
    observations: Any, rewards: np.ndarray, step: int, num_timesteps: int
) -> None:
    """The observation and reward an environment returned at ``step`` of a rollout must be
    finite (``observations [n_envs, ...]`` or a dict of them, ``rewards [n_envs]``)."""
    for name, values in (("reward", rewards), ("observation", observations)):
        found = first_non_finite(values)
        if found is None:
            continue
        env, entry, value = found
        where = f" (entry {entry})" if name == "observation" else ""
        raise SB3InputError(
            "AarenPPO.learn",
            f"the {name} of env {env} at step {step} of the rollout (total timesteps "
            f"{num_timesteps}) is {value}{where}; training stopped before the update, so the "
            "weights are unchanged",
            f"the environment returned it: check its {name}s (or wrap the VecEnv in SB3's "
            "VecCheckNan to find the action that caused it), then call learn again",
        )


def check_predict_observation(observation: Any) -> None:
    """A NaN/inf in ``predict``'s observation (``[n_envs, ...]`` tensors or arrays, or a dict
    of them, as ``obs_to_tensor`` returns) is an error naming the env and the entry."""

    def host(x: Any) -> Any:
        return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)

    batch = (
        {k: host(v) for k, v in observation.items()}
        if isinstance(observation, dict)
        else host(observation)
    )
    found = first_non_finite(batch)
    if found is None:
        return
    env, entry, value = found
    raise SB3InputError(
        "AarenActorCriticPolicy.predict",
        f"the observation of env {env} is {value} (entry {entry})",
        "pass finite observations; a NaN from the environment poisons the memory of that env "
        "until its episode restarts",
    )


def check_predict_state(state: Any, expected: list[tuple[int, ...]], n_envs: int) -> None:
    """``state`` must be the tuple ``predict`` returned for this policy and ``n_envs`` envs:
    ``expected`` lists each array's shape."""
    fix = (
        "pass the state this model's predict returned for these envs, or state=None to start afresh"
    )
    where = "AarenActorCriticPolicy.predict"
    if not isinstance(state, tuple) or len(state) != len(expected):
        got = f"a {type(state).__name__} of {len(state)}" if hasattr(state, "__len__") else "not"
        raise SB3InputError(
            where,
            f"state is {got} arrays; this policy's state is a tuple of {len(expected)} "
            f"(another model's state, or an LSTM's (h, c) pair?)",
            fix,
        )
    for i, (array, shape) in enumerate(zip(state, expected, strict=True)):
        got = tuple(np.shape(array))
        if got != shape:
            what = (
                f"state holds {got[0]} envs but the observation holds {n_envs}"
                if got[1:] == shape[1:] and got
                else f"state[{i}] has shape {got}, but this policy's is {shape}: the state "
                "comes from another model (other layers, heads or width)"
            )
            raise SB3InputError(where, what, fix)


def check_episode_start(episode_start: Any, n_envs: int) -> np.ndarray:
    """``episode_start`` as ``[n_envs]`` bool; another length is an error."""
    starts = np.asarray(episode_start, dtype=bool).reshape(-1)
    if starts.shape[0] != n_envs:
        raise SB3InputError(
            "AarenActorCriticPolicy.predict",
            f"episode_start holds {starts.shape[0]} flags but the observation holds {n_envs} envs",
            "pass one flag per env (the dones of the previous step), or None",
        )
    return starts


def check_saved_model(path: Any, algorithm: str, policy_base: type) -> None:
    """A file for ``ALGORITHM.load`` must be a whole SB3 zip whose policy subclasses
    ``policy_base`` (the algorithm's Aaren policy class).

    Raises :class:`SB3InputError` naming the file for a missing file, a truncated or corrupt
    zip (every member's CRC is checked), a zip without SB3's ``data`` entry, and a save of
    another algorithm (its policy class is named). File objects are checked only when seekable.
    """
    from stable_baselines3.common.save_util import json_to_data

    if isinstance(path, (str, os.PathLike)):
        name = str(path)
        file = Path(path)
        if not file.exists() and file.with_suffix(".zip").exists():
            file = file.with_suffix(".zip")  # SB3 adds .zip as save() did
        if not file.is_file():
            raise SB3InputError(
                name, "no such file", f"pass the .zip that {algorithm}.save(PATH) wrote"
            )
        source: Any = file
    elif hasattr(path, "seek") and hasattr(path, "read"):
        name, source = getattr(path, "name", "<file object>"), path
    else:
        return
    fix_zip = f"use an intact copy of the file, or save the model again with {algorithm}.save"
    try:
        with zipfile.ZipFile(source) as archive:
            broken = archive.testzip()
            names = archive.namelist()
            raw = archive.read("data").decode() if "data" in names else None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise SB3InputError(
            name,
            f"not a complete SB3 save: the zip is truncated or corrupt ({exc})",
            fix_zip,
        ) from None
    finally:
        if isinstance(source, io.IOBase) or hasattr(source, "seek"):
            try:
                source.seek(0)
            except (OSError, ValueError, AttributeError):
                pass
    if broken is not None:
        raise SB3InputError(name, f"not a complete SB3 save: member {broken!r} is corrupt", fix_zip)
    if raw is None:
        raise SB3InputError(
            name,
            "not a complete SB3 save: no 'data' entry (the zip is truncated or corrupt, or was "
            "not written by save)",
            fix_zip,
        )
    try:
        stored = json.loads(raw).get("policy_class", {})
    except ValueError:
        raise SB3InputError(
            name, "its 'data' entry is not JSON: the save is corrupt", fix_zip
        ) from None
    module = stored.get("__module__", "?") if isinstance(stored, dict) else "?"
    try:
        policy_class = json_to_data(raw).get("policy_class")
    except Exception:  # noqa: BLE001 (a class whose module is not installed)
        policy_class = None
    if isinstance(policy_class, type):
        if issubclass(policy_class, policy_base):
            return
        label = f"{policy_class.__module__}.{policy_class.__qualname__}"
    elif module.startswith("aaren_rl."):
        return
    else:
        label = f"a class from {module}"
    hint = " (sb3_contrib's RecurrentPPO)" if "recurrent" in module else ""
    raise SB3InputError(
        name,
        f"saved by another algorithm{hint}: its policy is {label}, not an Aaren policy",
        "load it with the class that saved it (e.g. sb3_contrib.RecurrentPPO.load); to train "
        "an Aaren memory on that task, start AarenPPO('MlpAarenPolicy', env) afresh",
    )
