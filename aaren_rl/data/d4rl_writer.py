"""Write offline-RL data in D4RL's HDF5 layout, atomically and without clobbering files.

The layout (one row per transition, ``N`` rows)::

    observations       [N, obs_dim]  float32
    actions            [N, act_dim]  float32
    rewards            [N]           float32
    terminals          [N]           bool   (true termination only)
    timeouts           [N]           bool   (truncation: time limit, or a cut episode)
    next_observations  [N, obs_dim]  float32 (optional)
    infos/<name>       [N, ...]      (optional, e.g. infos/qpos, infos/qvel)
    metadata/<name>    scalars, strings or arrays (optional)

An episode ends at the first row where ``terminals`` or ``timeouts`` is set.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
FLOAT_KEYS = ("observations", "actions", "rewards", "next_observations")
BOOL_KEYS = ("terminals", "timeouts")


def _check_layout(
    path: Path, data: Mapping[str, np.ndarray], infos: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Validate and cast the arrays; errors name the file, the key and what was expected."""
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise KeyError(f"{path}: cannot write, missing key(s) {missing}; expected {REQUIRED_KEYS}")
    unknown = sorted(set(data) - set(REQUIRED_KEYS) - {"next_observations"})
    if unknown:
        raise KeyError(
            f"{path}: unknown top-level key(s) {unknown}; put extra per-step arrays in infos"
        )
    n = len(data["rewards"])
    if n == 0:
        raise ValueError(f"{path}: refusing to write an empty dataset (0 transitions)")
    out: dict[str, np.ndarray] = {}
    for key, value in data.items():
        arr = np.asarray(value)
        if len(arr) != n:
            raise ValueError(f"{path}: key {key!r} has {len(arr)} rows, expected {n} (= rewards)")
        if key in FLOAT_KEYS:
            arr = arr.astype(np.float32, copy=False)
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{path}: key {key!r} holds NaN or inf values")
        else:
            arr = arr.astype(bool, copy=False)
        out[key] = arr
    if out["rewards"].ndim != 1:
        raise ValueError(f"{path}: key 'rewards' must be 1-D [N], got shape {out['rewards'].shape}")
    for key in BOOL_KEYS:
        if out[key].ndim != 1:
            raise ValueError(f"{path}: key {key!r} must be 1-D [N], got shape {out[key].shape}")
    if "next_observations" in out and out["next_observations"].shape != out["observations"].shape:
        raise ValueError(
            f"{path}: key 'next_observations' has shape {out['next_observations'].shape}, "
            f"expected {out['observations'].shape} (= observations)"
        )
    for key, value in infos.items():
        if len(value) != n:
            raise ValueError(f"{path}: key 'infos/{key}' has {len(value)} rows, expected {n}")
    return out


def _write_metadata(group: h5py.Group, metadata: Mapping[str, Any]) -> None:
    for key, value in metadata.items():
        if isinstance(value, Mapping):
            _write_metadata(group.create_group(key), value)
        elif isinstance(value, str):
            group.create_dataset(key, data=value, dtype=h5py.string_dtype())
        elif value is None:
            group.create_dataset(key, data="None", dtype=h5py.string_dtype())
        else:
            group.create_dataset(key, data=np.asarray(value))


def write_d4rl(
    path: str | os.PathLike[str],
    data: Mapping[str, np.ndarray],
    *,
    infos: Mapping[str, np.ndarray] | None = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    compression: str | None = None,
) -> Path:
    """Write ``data`` (the keys of the module docstring) to ``path`` in D4RL's layout.

    The file is written to a temporary file in the same folder and moved into place with
    ``os.replace``, so a reader never sees half a file. An existing ``path`` is an error unless
    ``overwrite=True``. ``compression`` is passed to h5py (e.g. ``"gzip"``) for the per-step
    arrays. Returns the path written.
    """
    path = Path(path)
    infos = dict(infos or {})
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it, "
            "or choose another output folder"
        )
    arrays = _check_layout(path, data, infos)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp_name, "w") as f:
            for key, arr in arrays.items():
                f.create_dataset(key, data=arr, compression=compression)
            if infos:
                group = f.create_group("infos")
                for key, value in infos.items():
                    group.create_dataset(key, data=np.asarray(value), compression=compression)
            if metadata:
                _write_metadata(f.create_group("metadata"), metadata)
        os.chmod(tmp_name, default_file_mode())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def default_file_mode() -> int:
    """The mode a plain ``open(..., "w")`` would give (0o666 less the umask): ``mkstemp`` makes
    0o600 files, which other users of a shared data folder could not read."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def episode_bounds(terminals: np.ndarray, timeouts: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of each episode (stop exclusive); a trailing unfinished one too."""
    ends = np.flatnonzero(np.asarray(terminals, bool) | np.asarray(timeouts, bool)) + 1
    n = len(terminals)
    if len(ends) == 0 or ends[-1] != n:
        ends = np.append(ends, n)
    starts = np.concatenate([[0], ends[:-1]])
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True) if e > s]
