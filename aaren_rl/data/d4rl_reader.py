"""Read D4RL-layout HDF5 files with h5py alone (the ``d4rl`` package is not needed).

The layout: ``observations [N, obs_dim]``, ``actions [N, act_dim]``, ``rewards [N]``,
``terminals [N]``, ``timeouts [N]`` (optional: all False when absent), and optionally
``next_observations [N, obs_dim]``, ``infos/*`` (one row per transition) and ``metadata/*``
(datasets or attributes). An episode ends where ``terminals`` or ``timeouts`` is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from aaren_rl.data.errors import DatasetError
from aaren_rl.data.paths import resolve_dataset_path
from aaren_rl.data.trajectories import (
    TrajectoryDataset,
    _check_finite,
    _to_float32,
    validate_transitions,
)

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
LAYOUT_HINT = (
    "the D4RL layout: datasets observations [N, obs_dim], actions [N, act_dim], rewards [N], "
    "terminals [N] and timeouts [N]"
)


def _decode(value: Any) -> np.ndarray:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    arr = np.asarray(value)
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8", errors="replace")
    elif arr.dtype.kind == "O":
        arr = np.asarray(
            [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in arr.ravel()],
            dtype=object,
        ).reshape(arr.shape)
    return arr


def _read(obj: h5py.Dataset, path: Path, key: str) -> Any:
    """All of ``obj``; a chunk that cannot be read or decompressed is a DatasetError."""
    try:
        return obj[()]
    except (OSError, RuntimeError) as exc:  # h5py: "Can't synchronously read data (...)"
        reason = " ".join(str(exc).split())
        raise DatasetError.about(
            path,
            key,
            f"could not be read: the data is corrupt or truncated on disk ({reason})",
            "readable (and, when compressed, decompressible) chunks",
            "rebuild or download the file again; `h5dump -d "
            f"{key} FILE` shows which part is damaged",
        ) from None


def _read_group(group: h5py.Group, prefix: str, out: dict[str, np.ndarray], path: Path) -> None:
    """Every dataset under ``group`` as ``out[prefix/sub/path]``."""

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            out[f"{prefix}/{name}"] = _decode(_read(obj, path, f"{prefix}/{name}"))

    group.visititems(visit)


def _open(path: Path) -> h5py.File:
    if not h5py.is_hdf5(path):
        raise DatasetError.about(
            path,
            None,
            "is not an HDF5 file",
            LAYOUT_HINT,
            "pass a .hdf5 file (a D4RL download, or one written by `aaren-rl make-dataset`)",
        )
    try:
        return h5py.File(path, "r")
    except OSError as exc:  # truncated or corrupt
        raise DatasetError.about(
            path,
            None,
            f"could not be opened as HDF5 ({exc})",
            LAYOUT_HINT,
            "the file may be truncated; rebuild or download it again",
        ) from exc


def _dataset(f: h5py.File, path: Path, key: str) -> np.ndarray:
    if key not in f:
        present = ", ".join(sorted(f.keys())) or "nothing"
        raise DatasetError.about(
            path,
            key,
            f"is missing (the file holds: {present})",
            LAYOUT_HINT,
            f"add the {key!r} dataset, or check that this is a D4RL-layout file",
        )
    obj = f[key]
    if not isinstance(obj, h5py.Dataset):
        raise DatasetError.about(
            path, key, "is a group, not an array", LAYOUT_HINT, f"store {key!r} as one dataset"
        )
    return _read(obj, path, key)


def read_d4rl_hdf5(path_or_name: str | Path, extras: bool = True) -> dict[str, np.ndarray]:
    """Read and validate a D4RL-layout HDF5 file.

    Args:
        path_or_name: a file path, ``builtin:NAME``, or a dataset name (see
            :func:`aaren_rl.data.paths.resolve_dataset_path`).
        extras: also read ``next_observations``, ``infos/*`` and ``metadata/*`` (False reads
            only the five arrays that make episodes, which saves memory).

    Returns:
        ``observations [N, obs_dim] float32``, ``actions [N, act_dim] float32``,
        ``rewards [N] float32``, ``terminals [N] bool``, ``timeouts [N] bool`` (all False when
        the file has none), and when present ``next_observations [N, obs_dim] float32``,
        ``infos/NAME [N, ...]`` and ``metadata/NAME`` (from datasets under ``metadata/`` and
        attributes of the file or of the ``metadata`` group; strings decoded).

    Raises:
        DatasetError: not found, not HDF5, a missing key, different lengths, NaN/inf, empty.
    """
    path = resolve_dataset_path(path_or_name)
    with _open(path) as f:
        raw = {key: _dataset(f, path, key) for key in REQUIRED_KEYS}
        timeouts = _dataset(f, path, "timeouts") if "timeouts" in f else None
        out = validate_transitions(
            raw["observations"],
            raw["actions"],
            raw["rewards"],
            raw["terminals"],
            timeouts,
            source=str(path),
        )
        if not extras:
            return out
        n = out["rewards"].shape[0]
        if "next_observations" in f:
            nxt = np.asarray(_dataset(f, path, "next_observations"))
            if nxt.ndim == 1:
                nxt = nxt[:, None]
            if nxt.shape != out["observations"].shape:
                raise DatasetError.about(
                    path,
                    "next_observations",
                    f"has shape {nxt.shape}",
                    f"the shape of 'observations', {out['observations'].shape}",
                    "store one next observation per transition",
                )
            nxt = _to_float32(nxt, "next_observations", str(path))
            _check_finite(nxt, "next_observations", str(path))
            out["next_observations"] = nxt
        if "infos" in f and isinstance(f["infos"], h5py.Group):
            infos: dict[str, np.ndarray] = {}
            _read_group(f["infos"], "infos", infos, path)
            for key, arr in infos.items():
                if arr.ndim == 0 or arr.shape[0] != n:
                    raise DatasetError.about(
                        path,
                        key,
                        f"has shape {arr.shape}",
                        f"one row per transition ({n} rows)",
                        "store infos per transition, or move it under metadata/",
                    )
            out.update(infos)
        for name, value in f.attrs.items():
            out[f"metadata/{name}"] = _decode(value)
        if "metadata" in f:
            meta = f["metadata"]
            if isinstance(meta, h5py.Group):
                for name, value in meta.attrs.items():
                    out[f"metadata/{name}"] = _decode(value)
                _read_group(meta, "metadata", out, path)
            else:
                out["metadata"] = _decode(_read(meta, path, "metadata"))
    return out


def _space_shape(space: Any, role: str) -> tuple[int, ...]:
    n = getattr(space, "n", None)
    if getattr(space, "shape", None) == () and n is not None:
        return (int(n),)  # a Discrete space: its actions are stored one-hot, [N, n]
    shape = getattr(space, "shape", None)
    if shape is None:
        raise TypeError(f"the {role} space {space!r} has no shape; expected a gymnasium Box space")
    return tuple(int(s) for s in shape)


def _check_actions_in_box(dataset: TrajectoryDataset, space: Any, source: str) -> None:
    """Actions outside a bounded Box action space are an error naming the row and the range
    (a policy trained on them learns actions the environment clips, and a tanh head cannot
    reach them). A slack of 0.1% of the range allows rounding."""
    low, high = getattr(space, "low", None), getattr(space, "high", None)
    if low is None or high is None or getattr(space, "n", None) is not None:
        return
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    actions = dataset.actions
    if low.shape != actions.shape[1:] or not (np.isfinite(low).all() and np.isfinite(high).all()):
        return
    slack = 1e-3 * (high - low)
    outside = (actions < low - slack) | (actions > high + slack)
    if not outside.any():
        return
    row, entry = (int(i) for i in np.argwhere(outside)[0])
    rows = np.flatnonzero(outside.any(axis=1))
    raise DatasetError.about(
        source,
        "actions",
        f"holds {float(actions[row, entry]):.6g} at row {row} (entry {entry}), outside the "
        f"environment's action range [{low[entry]:g}, {high[entry]:g}] ({rows.size} rows are "
        f"outside; largest magnitude {float(np.abs(actions).max()):.6g})",
        f"actions within the Box {space}",
        "check that the file was recorded in this environment; if its actions are scaled, "
        "rescale them to the Box (or clip them with numpy.clip)",
    )


def check_spaces(dataset: TrajectoryDataset, env_spaces: Any, source: str | None = None) -> None:
    """Check that the dataset's vectors fit the environment's spaces.

    Args:
        dataset: the loaded dataset.
        env_spaces: ``(observation_space, action_space)``, or an object (an env) with
            ``observation_space`` and ``action_space``.
        source: the file named in errors (default: ``dataset.source``).

    A ``Discrete(n)`` space stands for one-hot vectors of size ``n`` (how discrete actions
    are stored in these files).

    Raises:
        DatasetError: ``observations`` or ``actions`` have another shape than the space, or
            actions lie outside a bounded Box action space.
    """
    if hasattr(env_spaces, "observation_space") and hasattr(env_spaces, "action_space"):
        obs_space, act_space = env_spaces.observation_space, env_spaces.action_space
    else:
        obs_space, act_space = env_spaces
    source = source or dataset.source
    for key, space, dim in (
        ("observations", obs_space, dataset.obs_dim),
        ("actions", act_space, dataset.act_dim),
    ):
        shape = _space_shape(space, key)
        if shape != (dim,):
            raise DatasetError.about(
                source,
                key,
                f"has vectors of size {dim}, but the environment's space has shape {shape}",
                f"[N, {int(np.prod(shape)) if shape else 1}] to match {space}",
                "use the dataset recorded in this environment (check the task's env_id and dataset)",
            )
    _check_actions_in_box(dataset, act_space, source)


def load_d4rl(
    path_or_name: str | Path,
    env_spaces: Any = None,
    max_episode_steps: int | None = None,
    cut_unflagged: bool = False,
) -> TrajectoryDataset:
    """Load a D4RL-layout HDF5 file as episodes.

    Args:
        path_or_name: a file path, ``builtin:NAME`` or a dataset name.
        env_spaces: optional ``(observation_space, action_space)`` or env; shapes are checked.
        max_episode_steps: also end episodes after this many steps (for files without timeouts).
        cut_unflagged: cut a file with no episode end flagged at all every
            ``max_episode_steps`` rows (otherwise that is an error; see
            :meth:`TrajectoryDataset.from_arrays`).

    Returns:
        A :class:`TrajectoryDataset` whose ``source`` is the resolved file path.
    """
    path = str(resolve_dataset_path(path_or_name))
    arrays = read_d4rl_hdf5(path, extras=False)
    dataset = TrajectoryDataset.from_arrays(
        arrays["observations"],
        arrays["actions"],
        arrays["rewards"],
        arrays["terminals"],
        arrays["timeouts"],
        source=path,
        max_episode_steps=max_episode_steps,
        cut_unflagged=cut_unflagged,
    )
    if env_spaces is not None:
        check_spaces(dataset, env_spaces, path)
    return dataset
