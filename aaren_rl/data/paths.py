"""Where datasets live, and how a name becomes a file. Nothing here downloads.

Three ways to name a dataset:

- an existing path, taken as is;
- ``builtin:NAME``: the file ``NAME`` shipped inside the package (``aaren_rl/assets/datasets``);
- a bare D4RL-style name such as ``hopper-medium-v5``: ``NAME.hdf5`` in :func:`data_dir`
  (D4RL's own file name, ``hopper_medium-v2.hdf5``, is found too).
"""

from __future__ import annotations

import os
from pathlib import Path

from aaren_rl.data.errors import DatasetError

BUILTIN_PREFIX = "builtin:"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "assets" / "datasets"
SHIPPED_POLICY_DIR = BUILTIN_DIR.parent / "policies"  # make-dataset's behaviour policies
# the behaviour policies each make-dataset level rolls out (medium-replay: SAC's replay buffer)
_LEVEL_POLICIES = {"random": (), "medium": ("medium",), "expert": ("expert",)}
_LEVEL_POLICIES["medium-expert"] = ("medium", "expert")
DATASET_SUFFIXES = (".hdf5", ".h5")


def data_dir() -> Path:
    """The folder that holds named datasets.

    ``$AAREN_RL_DATA_DIR``, else ``$D4RL_DATASET_DIR``, else ``~/.aaren_rl/datasets``.
    The folder is not created here.
    """
    for variable in ("AAREN_RL_DATA_DIR", "D4RL_DATASET_DIR"):
        value = os.environ.get(variable)
        if value:
            return Path(value).expanduser()
    return Path.home() / ".aaren_rl" / "datasets"


def _search_dirs() -> list[Path]:
    """data_dir() first, then D4RL's folders (its variable, its default), without duplicates."""
    dirs = [data_dir()]
    d4rl_env = os.environ.get("D4RL_DATASET_DIR")
    if d4rl_env:
        dirs.append(Path(d4rl_env).expanduser())
    dirs.append(Path.home() / ".d4rl" / "datasets")
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _file_names(name: str) -> list[str]:
    """``hopper-medium-v5`` -> [``hopper-medium-v5.hdf5``, ``hopper_medium-v5.hdf5`` (D4RL's)]."""
    if name.endswith(DATASET_SUFFIXES):
        return [name]
    names = [f"{name}.hdf5"]
    stem, dash, version = name.rpartition("-")
    if dash and version.startswith("v") and "-" in stem:
        names.append(f"{stem.replace('-', '_')}-{version}.hdf5")
    return names


def _build_hint(name: str) -> str:
    task = name.rsplit("-v", 1)[0] if "-v" in name else name
    env, _, level = task.partition("-")
    needs = _LEVEL_POLICIES.get(level)
    shipped = needs is not None and all(
        (SHIPPED_POLICY_DIR / f"{env}-{lv}-actor.pt").is_file() for lv in needs
    )
    if shipped:
        how = (
            f"build it in under a minute with `aaren-rl make-dataset {task}` (rolls out the "
            f"behaviour policy shipped with aaren-rl; writes into {data_dir()})"
        )
    else:
        how = (
            f"build it with `aaren-rl make-dataset {task} --train-sac` (trains SAC: hours on a "
            f"CPU; writes into {data_dir()})"
        )
    return (
        f"{how}, set AAREN_RL_DATA_DIR or D4RL_DATASET_DIR to the folder that holds it, "
        "or pass the file's path"
    )


def resolve_dataset_path(path_or_name: str | Path) -> Path:
    """The file a dataset path or name points to. Never downloads.

    Raises:
        DatasetError: nothing found; the message lists every place looked at and how to build it.
    """
    text = str(path_or_name)
    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX) :]
        candidates = [BUILTIN_DIR / n for n in ([name] if Path(name).suffix else _file_names(name))]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        shipped = sorted(p.name for p in BUILTIN_DIR.glob("*")) if BUILTIN_DIR.is_dir() else []
        raise DatasetError(
            f"{text}: no shipped dataset {name!r}; looked at {', '.join(map(str, candidates))}; "
            f"shipped datasets: {', '.join(shipped) or 'none'}. Fix: use one of those names "
            "(builtin:FILE), or pass a path or a dataset name",
            file=text,
        )
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise DatasetError(
            f"{path}: is a folder, expected a dataset file (.hdf5). Fix: pass the file inside it",
            file=path,
        )
    looks_like_path = os.sep in text or "/" in text or path.suffix in DATASET_SUFFIXES
    if looks_like_path and (path.is_absolute() or path.parent != Path(".")):
        raise DatasetError(
            f"{path}: no such file. Fix: check the path, or give a dataset name such as "
            "'hopper-medium-v5' to look it up in the data folder",
            file=path,
        )
    looked: list[Path] = []
    for folder in _search_dirs():
        for file_name in _file_names(text):
            candidate = folder / file_name
            looked.append(candidate)
            if candidate.is_file():
                return candidate
    raise DatasetError(
        f"{text}: dataset not found; looked at {', '.join(map(str, looked))}. "
        f"Fix: {_build_hint(text)}",
        file=text,
    )
