"""Task specs: which environment, which dataset, which references, read from ``envs/*.yaml``.

A spec file looks like::

    name: hopper-medium
    env_id: Hopper-v5
    dataset: hopper-medium-v5          # a path, builtin:FILE, or a name under data_dir()
    dataset_format: d4rl               # d4rl | minari (then dataset is a Minari id)
    max_episode_steps: 1000
    reward_scale: 0.001                # returns-to-go are MULTIPLIED by this before the model
    target_returns: [3600, 1800]       # conditioning returns at rollout (unscaled)
    reference_scores:                  # (random, expert) returns for the normalised score
      d4rl-v2: [-20.272305, 3234.3]
      measured-v5: [-18.0, 3300.0]     # optional, more tables may be added
      use: d4rl-v2                     # which table scores use

``reference_scores`` may also be a plain ``[random, expert]`` pair together with a
``reference_source: NAME`` field.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aaren_rl import presets
from aaren_rl.config_values import BadValue, integer, number, number_list, show, sorted_keys
from aaren_rl.data.errors import DatasetError
from aaren_rl.data.paths import BUILTIN_PREFIX, DATASET_SUFFIXES
from aaren_rl.data.scores import normalized_score
from aaren_rl.data.trajectories import TrajectoryDataset, check_return_scale

DATASET_FORMATS = ("d4rl", "minari")
EXAMPLES: dict[str, str] = {
    "name": "hopper-medium",
    "env_id": "Hopper-v5",
    "dataset": "hopper-medium-v5",
    "dataset_format": "d4rl",
    "max_episode_steps": "1000",
    "reward_scale": "0.001",
    "target_returns": "[3600, 1800]",
    "reference_scores": "{d4rl-v2: [-20.272305, 3234.3], use: d4rl-v2}",
    "reference_source": "d4rl-v2",
    "episode_ends": "flags",
}
EPISODE_ENDS = ("flags", "time-limit")


@dataclass(frozen=True)
class TaskSpec:
    """One offline-RL task.

    Attributes:
        name: the task's name (``hopper-medium``).
        env_id: Gymnasium id of the environment rolled out in (``Hopper-v5``).
        dataset: a file path, ``builtin:FILE``, a D4RL-style name, or a Minari id.
        dataset_format: ``"d4rl"`` or ``"minari"``.
        max_episode_steps: the environment's time limit.
        reward_scale: multiplier applied to returns-to-go (and rewards) fed to the model.
        target_returns: conditioning returns tried at evaluation, unscaled.
        reference_scores: ``(random, expert)`` returns used by :meth:`normalized_score`.
        reference_source: which table those come from (``d4rl-v2``, ``measured-v5``).
        reference_table: every table the spec file gives, by name.
        spec_path: the YAML file the spec was read from, if any.
        episode_ends: ``flags`` (episodes end where ``terminals``/``timeouts`` say; a file
            with no flag at all is an error) or ``time-limit`` (such a file is one stream,
            cut every ``max_episode_steps`` rows).
    """

    name: str
    env_id: str
    dataset: str
    dataset_format: str
    max_episode_steps: int
    reward_scale: float
    target_returns: tuple[float, ...]
    reference_scores: tuple[float, float]
    reference_source: str
    reference_table: dict[str, tuple[float, float]] = field(
        default_factory=dict, compare=False, hash=False
    )
    spec_path: str | None = field(default=None, compare=False, hash=False)
    episode_ends: str = "flags"

    def load_dataset(self, check_spaces: bool = True) -> TrajectoryDataset:
        """Load this task's dataset; with ``check_spaces`` its shapes are checked against the env's.

        Episodes are also cut at ``max_episode_steps`` (a no-op for files with timeouts).
        """
        spaces = self.env_spaces() if check_spaces else None
        if self.dataset_format == "minari":
            from aaren_rl.data.d4rl_reader import check_spaces as check
            from aaren_rl.data.minari_reader import load_minari

            dataset = load_minari(self.dataset)
            if spaces is not None:
                check(dataset, spaces)
            check_return_scale(dataset, self.reward_scale, self.spec_path or self.name)
            return dataset
        from aaren_rl.data.d4rl_reader import load_d4rl

        dataset = load_d4rl(
            self.dataset,
            env_spaces=spaces,
            max_episode_steps=self.max_episode_steps,
            cut_unflagged=self.episode_ends == "time-limit",
        )
        check_return_scale(dataset, self.reward_scale, self.spec_path or self.name)
        return dataset

    def env_spaces(self) -> tuple[Any, Any]:
        """``(observation_space, action_space)`` of ``env_id`` (the env is made, then closed)."""
        import gymnasium as gym

        env = gym.make(self.env_id)
        try:
            return env.observation_space, env.action_space
        finally:
            env.close()

    def normalized_score(self, returns: Any) -> np.ndarray | float:
        """``100 * (returns - random) / (expert - random)`` with this spec's references."""
        return normalized_score(self.name, returns, refs=self.reference_scores)

    def with_reference(self, source: str) -> TaskSpec:
        """The same spec scoring with another table of :attr:`reference_table`."""
        if source not in self.reference_table:
            raise KeyError(
                f"task {self.name!r} ({self.spec_path}) has no reference table {source!r}; "
                f"it has: {', '.join(self.reference_table)}"
            )
        return dataclasses.replace(
            self, reference_scores=self.reference_table[source], reference_source=source
        )


def _fail(path: Path, key: str, problem: str) -> DatasetError:
    return DatasetError.about(
        path, key, problem, f"for example `{key}: {EXAMPLES[key]}`", f"set {key!r} in {path.name}"
    )


def _string(raw: dict[str, Any], path: Path, key: str, default: str | None = None) -> str:
    if key not in raw:
        if default is not None:
            return default
        raise _fail(path, key, "is missing")
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, key, f"is {show(value)}, not a non-empty string")
    return value.strip()


def _checked(
    raw: dict[str, Any], path: Path, key: str, check: Any, expected: str, scalar: bool = True
) -> Any:
    """``check(raw[key])``; a missing key or a bad value is a DatasetError naming both
    (for a ``scalar`` key, ``is VALUE, not a number`` when it is no number at all)."""
    if key not in raw:
        raise _fail(path, key, "is missing")
    value = raw[key]
    try:
        return check(value)
    except BadValue as exc:
        if scalar and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            hint = str(exc).partition(";")[2]
            expected = "a number" + (f";{hint}" if hint else "")
        raise _fail(path, key, f"is {show(value)}, not {expected}") from None


def _pair(value: Any, path: Path, key: str) -> tuple[float, float]:
    try:
        low, high = number_list(value, length=2)
    except BadValue:
        raise _fail(
            path, key, f"holds {show(value)}, not a [random, expert] pair of finite numbers"
        ) from None
    if not high > low:
        raise _fail(path, key, f"holds {show(value)}: the expert return must exceed the random one")
    return low, high


def _references(
    raw: dict[str, Any], path: Path, choose: str | None
) -> tuple[tuple[float, float], str, dict[str, tuple[float, float]]]:
    key = "reference_scores"
    if key not in raw:
        raise _fail(path, key, "is missing")
    value = raw[key]
    if isinstance(value, dict):
        table = {str(k): _pair(v, path, key) for k, v in value.items() if k != "use"}
        if not table:
            raise _fail(path, key, "names no reference table")
        use = choose or value.get("use") or raw.get("reference_source")
        if use is not None and not isinstance(use, str):
            raise _fail(path, key, f"has `use: {show(use)}`, not the name of one of its tables")
        if use is None:
            if len(table) != 1:
                raise _fail(path, key, f"has several tables ({', '.join(table)}) but no `use:`")
            use = next(iter(table))
    else:
        pair = _pair(value, path, key)
        if choose is None and "reference_source" not in raw:
            # the pair is the field the user wrote: name it, and the field it needs beside it
            raise DatasetError.about(
                path,
                key,
                "is a bare [random, expert] pair, and `reference_source` is missing",
                f"for example `reference_source: {EXAMPLES['reference_source']}` beside it",
                f"set 'reference_source' in {path.name}",
            )
        use = choose or _string(raw, path, "reference_source")
        table = {use: pair}
    if use not in table:
        raise _fail(path, key, f"has no table {show(use)} (it has: {', '.join(table)})")
    return table[use], str(use), table


def _dataset_field(raw: dict[str, Any], path: Path, fmt: str) -> str:
    dataset = _string(raw, path, "dataset")
    if fmt != "d4rl" or dataset.startswith(BUILTIN_PREFIX):
        return dataset
    as_path = Path(dataset).expanduser()
    looks_like_path = "/" in dataset or as_path.suffix in DATASET_SUFFIXES
    if looks_like_path and not as_path.is_absolute():
        beside_spec = path.parent / as_path
        if beside_spec.exists():  # relative paths are relative to the spec file
            return str(beside_spec)
    return dataset


def task_from_dict(
    raw: dict[str, Any], path: str | Path = "<task>", reference: str | None = None
) -> TaskSpec:
    """Validate a task mapping (as read from YAML) and build the :class:`TaskSpec`.

    Args:
        raw: the mapping.
        path: the file it came from, named in errors.
        reference: pick this reference table instead of the file's ``use:``.
    """
    path = Path(path)
    unknown = sorted_keys(set(raw) - set(EXAMPLES))
    if unknown:
        raise DatasetError.about(
            path,
            unknown[0],
            "is not a task field",
            f"one of {', '.join(EXAMPLES)}",
            "check the spelling",
        )
    fmt = _string(raw, path, "dataset_format", default="d4rl")
    if fmt not in DATASET_FORMATS:
        raise _fail(path, "dataset_format", f"is {fmt!r}, not one of {DATASET_FORMATS}")
    steps = _checked(raw, path, "max_episode_steps", lambda v: integer(v, 1), "a positive integer")
    scale = _checked(
        raw, path, "reward_scale", lambda v: number(v, above=0.0), "positive (a finite number > 0)"
    )
    targets = raw.get("target_returns")
    if targets is None:
        raise _fail(path, "target_returns", "is missing")
    if isinstance(targets, numbers.Real) and not isinstance(targets, bool):
        targets = [targets]
    targets = _checked(
        {"target_returns": targets},
        path,
        "target_returns",
        number_list,
        "a list of numbers (finite ones)",
        scalar=False,
    )
    refs, source, table = _references(raw, path, reference)
    ends = _string(raw, path, "episode_ends", default="flags")
    if ends not in EPISODE_ENDS:
        raise _fail(path, "episode_ends", f"is {ends!r}, not one of {EPISODE_ENDS}")
    return TaskSpec(
        name=_string(raw, path, "name", default=path.stem),
        env_id=_string(raw, path, "env_id"),
        dataset=_dataset_field(raw, path, fmt),
        dataset_format=fmt,
        max_episode_steps=int(steps),
        reward_scale=scale,
        target_returns=tuple(float(t) for t in targets),
        reference_scores=refs,
        reference_source=source,
        reference_table=table,
        spec_path=str(path),
        episode_ends=ends,
    )


def load_task(name_or_path: str | Path, reference: str | None = None) -> TaskSpec:
    """Read a task spec: a shipped name (``hopper-medium``) or a path to a YAML file.

    Args:
        name_or_path: preset name or file.
        reference: use this reference table instead of the file's choice (``measured-v5``).

    Raises:
        DatasetError: a missing or ill-typed field (the message names the file, the field and an
            example value). FileNotFoundError: no such preset or file.
    """
    raw, path = presets.load("envs", name_or_path)
    return task_from_dict(raw, path, reference)
