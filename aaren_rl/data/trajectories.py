"""Transitions split into episodes: what the offline agents train on.

A :class:`TrajectoryDataset` keeps every transition in flat arrays (one row per step, episodes
back to back) and hands out :class:`Episode` views into them, so a million-step dataset costs
one copy of its arrays, not one per episode. Returns-to-go are undiscounted suffix sums:
``rtg[t] = sum_{t' >= t} r_t'`` within the episode (Decision Transformer's definition).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from aaren_rl.data.errors import DatasetError

STD_FLOOR = 1e-6


@dataclass
class Episode:
    """One episode of ``T`` steps.

    Attributes:
        observations: ``[T, obs_dim]`` float32, the state seen before each action.
        actions: ``[T, act_dim]`` float32.
        rewards: ``[T]`` float32.
        terminated: the episode ended on a terminal flag.
        truncated: the episode ended on a timeout, or the data ended mid-episode.
        unfinished: the data ended mid-episode (no flag on its last step; ``truncated`` is set
            too, as nothing terminated it): counted apart from timeouts in ``summary()``.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool
    truncated: bool
    unfinished: bool = False

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def total_return(self) -> float:
        """Undiscounted return of the episode (summed in float64)."""
        return float(self.rewards.sum(dtype=np.float64))


def _as_column(values: Any, name: str, source: str, expected: str, fix: str) -> np.ndarray:
    """A 1-D ``[n]`` array from ``[n]`` or ``[n, 1]`` values; any other shape is an error."""
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DatasetError.about(source, name, f"has shape {arr.shape}", expected, fix)
    return arr


def _as_flag(values: Any, name: str, source: str, n: int) -> np.ndarray:
    """A ``[n]`` bool array from bool / 0-1 integer or float flags; anything else is an error."""
    arr = _as_column(values, name, source, f"a 1-D array of {n} flags", "store one flag per step")
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DatasetError.about(
            source, name, f"has dtype {arr.dtype}", "bool or 0/1 numbers", "store the flags as bool"
        )
    bad = np.flatnonzero((arr != 0) & (arr != 1))
    if bad.size:
        i = int(bad[0])
        raise DatasetError.about(
            source,
            name,
            f"holds {arr[i].item()} at index {i} ({bad.size} values that are neither 0 nor 1)",
            "flags of 0/1 or bool",
            "store the flags as bool",
        )
    return arr != 0


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _to_float32(arr: np.ndarray, name: str, source: str) -> np.ndarray:
    """``arr`` as float32; finite values beyond float32's range are an error, not a silent inf."""
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4:
        with np.errstate(invalid="ignore"):
            too_big = np.isfinite(arr) & (np.abs(arr) > FLOAT32_MAX)
        if too_big.any():
            where = np.argwhere(too_big)
            row = int(where[0][0])
            value = float(arr[tuple(where[0])])
            raise DatasetError.about(
                source,
                name,
                f"holds {value:g} at row {row}, which overflows float32 (largest "
                f"{FLOAT32_MAX:.4g}; {where.shape[0]} such values in all)",
                "values within float32's range (data is trained on in float32)",
                "rescale or clip those values, or remove those transitions",
            )
    return arr.astype(np.float32, copy=False)


def _as_float_matrix(values: Any, name: str, source: str) -> np.ndarray:
    arr = np.asarray(values)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DatasetError.about(
            source, name, f"has dtype {arr.dtype}", "numbers (float32)", "store numeric arrays"
        )
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DatasetError.about(
            source,
            name,
            f"has shape {arr.shape}",
            "a 2-D array [num_transitions, dim]",
            "flatten each step's entry into a vector",
        )
    if arr.shape[1] == 0:
        raise DatasetError.about(
            source,
            name,
            f"has shape {arr.shape}: vectors of 0 features",
            "[num_transitions, dim] with dim >= 1",
            "store at least one feature per step (the file may have been written empty)",
        )
    return _to_float32(arr, name, source)


def _check_finite(arr: np.ndarray, name: str, source: str) -> None:
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad = np.argwhere(~finite)
    row = int(bad[0][0])
    value = arr[tuple(bad[0])]
    raise DatasetError.about(
        source,
        name,
        f"holds {float(value)} at row {row} ({bad.shape[0]} non-finite values)",
        "finite numbers (no NaN or inf)",
        "remove or repair those transitions before loading",
    )


def _check_returns_fit_float32(rtg: np.ndarray, starts: np.ndarray, source: str) -> None:
    """Returns-to-go are sums of rewards stored in float32: a sum past its range is an error
    naming the row and its episode (otherwise it turns into inf, then a NaN loss far from its
    cause). ``rtg``: ``[N]`` float64 returns-to-go; ``starts``: ``[E]`` episode row offsets."""
    limit = float(np.finfo(np.float32).max)
    too_big = ~(np.abs(rtg) <= limit)
    if not too_big.any():
        return
    row = int(np.flatnonzero(too_big)[0])
    episode = int(np.searchsorted(starts, row, side="right")) - 1
    raise DatasetError.about(
        source,
        "rewards",
        f"the return-to-go at row {row} (episode {episode}) is {float(rtg[row]):.4g}, which "
        f"overflows float32 (largest {limit:.4g}), the type returns-to-go are trained in",
        "rewards whose sums over an episode fit in float32",
        "rescale the rewards (divide them by a constant; set the task's reward_scale to match) "
        "or check the file",
    )


SCALED_RETURN_LIMIT = 1e15  # past ~1.8e19 the squares inside a layer norm overflow float32


def check_return_scale(dataset: TrajectoryDataset, reward_scale: float, where: str) -> None:
    """The model reads returns-to-go times ``reward_scale``; values past
    :data:`SCALED_RETURN_LIMIT` overflow its float32 layers (a NaN loss at the first step).
    Raises a DatasetError naming the file's rewards and the scale (``where``: the task spec)."""
    largest = float(np.abs(dataset.rtg).max()) if dataset.rtg.size else 0.0
    if largest * reward_scale <= SCALED_RETURN_LIMIT:
        return
    raise DatasetError.about(
        dataset.source,
        "rewards",
        f"returns-to-go reach {largest:.4g}, {largest * reward_scale:.4g} after reward_scale "
        f"{reward_scale:g} ({where}): the model's float32 layers overflow past about 1e19",
        "scaled returns-to-go of order 1 to 1000",
        f"set reward_scale in {where} to about {1.0 / largest:.3g} (1 / the largest return), "
        "or check the rewards in the file",
    )


def validate_transitions(
    observations: Any,
    actions: Any,
    rewards: Any,
    terminals: Any,
    timeouts: Any = None,
    source: str = "<arrays>",
) -> dict[str, np.ndarray]:
    """Check and convert transition arrays; return them as float32 / bool numpy arrays.

    Args:
        observations: ``[N, obs_dim]`` (a ``[N]`` array is taken as ``obs_dim = 1``).
        actions: ``[N, act_dim]`` (likewise).
        rewards: ``[N]`` or ``[N, 1]``.
        terminals: ``[N]`` flags (bool or 0/1).
        timeouts: ``[N]`` flags, or None for all False.
        source: the file the arrays came from, named in errors.

    Returns:
        ``observations [N, obs_dim] float32``, ``actions [N, act_dim] float32``,
        ``rewards [N] float32``, ``terminals [N] bool``, ``timeouts [N] bool``.

    Raises:
        DatasetError: wrong shape or dtype, different lengths, NaN/inf, or no transitions.
    """
    obs = _as_float_matrix(observations, "observations", source)
    act = _as_float_matrix(actions, "actions", source)
    n = obs.shape[0]
    if n == 0:
        raise DatasetError.about(
            source,
            "observations",
            "is empty (0 transitions)",
            "at least one transition",
            "check that the file was fully written",
        )
    rew = _as_column(
        rewards, "rewards", source, f"[{n}] (one scalar per step)", "store one reward per step"
    )
    if not (np.issubdtype(rew.dtype, np.floating) or np.issubdtype(rew.dtype, np.integer)):
        raise DatasetError.about(
            source, "rewards", f"has dtype {rew.dtype}", "numbers", "store numeric rewards"
        )
    rew = _to_float32(rew, "rewards", source)
    term = _as_flag(terminals, "terminals", source, n)
    tout = (
        np.zeros(n, dtype=bool) if timeouts is None else _as_flag(timeouts, "timeouts", source, n)
    )
    for name, arr in (("actions", act), ("rewards", rew), ("terminals", term), ("timeouts", tout)):
        if arr.shape[0] != n:
            raise DatasetError.about(
                source,
                name,
                f"has {arr.shape[0]} entries but 'observations' has {n}",
                "one entry per transition in every array",
                "rewrite the file so that all arrays have the same length",
            )
    for name, arr in (("observations", obs), ("actions", act), ("rewards", rew)):
        _check_finite(arr, name, source)
    return {
        "observations": obs,
        "actions": act,
        "rewards": rew,
        "terminals": term,
        "timeouts": tout,
    }


def episode_bounds(
    terminals: np.ndarray, timeouts: np.ndarray, max_episode_steps: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split ``N`` transitions into episodes.

    An episode ends at a step whose terminal or timeout flag is set; with ``max_episode_steps``
    it also ends (truncated) once it reaches that many steps without a flag, which is how files
    without timeouts are read (Decision Transformer does the same). Steps after the last flag
    form a final episode marked truncated.

    Args:
        terminals: ``[N]`` bool.
        timeouts: ``[N]`` bool.
        max_episode_steps: split episodes longer than this, or None.

    Returns:
        ``starts [E] int64``, ``lengths [E] int64``, ``terminated [E] bool``, ``truncated [E] bool``.
    """
    n = terminals.shape[0]
    ends = np.flatnonzero(terminals | timeouts)
    if ends.size == 0 or ends[-1] != n - 1:
        ends = np.append(ends, n - 1)
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    lengths = (ends + 1 - starts).astype(np.int64)
    terminated = terminals[ends].copy()
    truncated = timeouts[ends] | ~(terminals[ends] | timeouts[ends])
    if max_episode_steps is not None and lengths.size and lengths.max() > max_episode_steps:
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        pieces = np.maximum(1, -(-lengths // max_episode_steps))  # ceil division
        episode_of_piece = np.repeat(np.arange(lengths.size), pieces)
        piece_index = np.arange(episode_of_piece.size) - np.repeat(
            np.cumsum(pieces) - pieces, pieces
        )
        new_starts = starts[episode_of_piece] + piece_index * max_episode_steps
        new_lengths = np.minimum(
            max_episode_steps, lengths[episode_of_piece] - piece_index * max_episode_steps
        )
        last_piece = piece_index == pieces[episode_of_piece] - 1
        terminated = np.where(last_piece, terminated[episode_of_piece], False)
        truncated = np.where(last_piece, truncated[episode_of_piece], True)
        starts, lengths = new_starts.astype(np.int64), new_lengths.astype(np.int64)
    return starts, lengths, terminated.astype(bool), truncated.astype(bool)


class TrajectoryDataset:
    """Episodes of an offline dataset, with returns-to-go and state statistics.

    Attributes:
        episodes: list of :class:`Episode` (views into the flat arrays).
        obs_dim: size of an observation vector.
        act_dim: size of an action vector.
        source: where the data came from (a file path, a Minari id, ``<arrays>``).
        state_mean: ``[obs_dim]`` float32, mean over all transitions.
        state_std: ``[obs_dim]`` float32, standard deviation over all transitions, floored at 1e-6.
        returns_to_go: per episode, ``[T]`` float32 undiscounted suffix sums of the rewards.
        observations, actions, rewards, rtg: the flat ``[N, ...]`` arrays behind the episodes.
        episode_starts, episode_lengths: ``[num_episodes]`` int64 row offsets and lengths.
    """

    def __init__(self, episodes: list[Episode], source: str = "<episodes>") -> None:
        """Gather episodes (copied into flat arrays). See :meth:`from_arrays` for raw transitions."""
        if not episodes:
            raise DatasetError.about(source, None, "holds no episodes", "at least one episode")
        for key in ("observations", "actions"):
            dims = {np.shape(getattr(e, key))[1:] for e in episodes}
            if len(dims) > 1:
                raise DatasetError.about(
                    source,
                    key,
                    f"episodes have different shapes per step: {sorted(dims)}",
                    "the same vector size in every episode",
                    "keep episodes of one environment together",
                )
        lengths = np.array([len(e) for e in episodes], dtype=np.int64)
        flat = validate_transitions(
            np.concatenate([e.observations for e in episodes]),
            np.concatenate([e.actions for e in episodes]),
            np.concatenate([e.rewards for e in episodes]),
            np.zeros(int(lengths.sum()), dtype=bool),
            None,
            source,
        )
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        self._setup(
            flat["observations"],
            flat["actions"],
            flat["rewards"],
            starts,
            lengths,
            np.array([e.terminated for e in episodes], dtype=bool),
            np.array([e.truncated for e in episodes], dtype=bool),
            source,
            np.array([e.unfinished for e in episodes], dtype=bool),
        )

    @classmethod
    def from_arrays(
        cls,
        observations: Any,
        actions: Any,
        rewards: Any,
        terminals: Any,
        timeouts: Any = None,
        source: str = "<arrays>",
        max_episode_steps: int | None = None,
        cut_unflagged: bool = False,
    ) -> TrajectoryDataset:
        """Build from D4RL-style flat transitions.

        Args:
            observations: ``[N, obs_dim]``.
            actions: ``[N, act_dim]``.
            rewards: ``[N]``.
            terminals: ``[N]`` flags; an episode ends (terminated) where set.
            timeouts: ``[N]`` flags; an episode ends (truncated) where set. None: all False.
            source: named in errors and kept as :attr:`source`.
            max_episode_steps: also end an episode after this many steps (for files without
                timeouts), or None.
            cut_unflagged: data with no episode end at all (terminals and timeouts all 0) and
                more than ``max_episode_steps`` rows is an error unless this is True (then it
                is cut every ``max_episode_steps`` rows): without flags, episodes cannot be
                told apart, and cutting at the time limit glues pieces of different episodes.
        """
        flat = validate_transitions(observations, actions, rewards, terminals, timeouts, source)
        n = flat["rewards"].shape[0]
        flagged = bool(flat["terminals"].any() or flat["timeouts"].any())
        if (
            not (flagged or cut_unflagged)
            and max_episode_steps is not None
            and n > max_episode_steps
        ):
            raise DatasetError.about(
                source,
                "terminals",
                f"no step of the {n} transitions ends an episode (terminals all 0, timeouts "
                f"all 0 or absent), so episodes cannot be delimited; cutting every max_episode_steps={max_episode_steps} rows would glue "
                "pieces of different episodes together",
                "a 1 in 'terminals' where an episode ends by failure and in 'timeouts' where it "
                "hits the time limit",
                "add those flags to the file; or, if the data is one stream meant to be cut at "
                "the time limit, set `episode_ends: time-limit` in the task spec "
                "(cut_unflagged=True)",
            )
        starts, lengths, terminated, truncated = episode_bounds(
            flat["terminals"], flat["timeouts"], max_episode_steps
        )
        # the data ends mid-episode: no flag on the last step and (when episodes are cut at a
        # time limit) short of it
        unfinished = np.zeros(lengths.shape[0], dtype=bool)
        unfinished[-1] = not (flat["terminals"][-1] or flat["timeouts"][-1]) and (
            max_episode_steps is None or lengths[-1] < max_episode_steps
        )
        return cls.from_flat(
            flat["observations"],
            flat["actions"],
            flat["rewards"],
            lengths,
            terminated,
            truncated,
            source,
            starts=starts,
            unfinished=unfinished,
        )

    @classmethod
    def from_flat(
        cls,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        lengths: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        source: str = "<arrays>",
        starts: np.ndarray | None = None,
        unfinished: np.ndarray | None = None,
    ) -> TrajectoryDataset:
        """Build from flat, already validated arrays and explicit episode boundaries (no copy).

        Args:
            observations: ``[N, obs_dim]`` float32; actions ``[N, act_dim]``; rewards ``[N]``.
            lengths: ``[E]`` episode lengths (>= 1) summing to ``N``; episodes are back to back.
            terminated, truncated: ``[E]`` bool end flags of each episode.
            starts: ``[E]`` row offsets, or None to derive them from ``lengths``.
            unfinished: ``[E]`` bool, episodes the data cut off mid-way (None: none).
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        if starts is None:
            starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        if lengths.size == 0 or lengths.min() < 1 or int(lengths.sum()) != rewards.shape[0]:
            raise DatasetError.about(
                source,
                None,
                f"episode lengths sum to {int(lengths.sum())} "
                f"(min {int(lengths.min()) if lengths.size else '-'})",
                f"positive lengths summing to the {rewards.shape[0]} transitions",
            )
        dataset = cls.__new__(cls)
        dataset._setup(
            observations,
            actions,
            rewards,
            np.asarray(starts, dtype=np.int64),
            lengths,
            np.asarray(terminated, dtype=bool),
            np.asarray(truncated, dtype=bool),
            source,
            None if unfinished is None else np.asarray(unfinished, dtype=bool),
        )
        return dataset

    def _setup(
        self,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        source: str,
        unfinished: np.ndarray | None = None,
    ) -> None:
        if unfinished is None:
            unfinished = np.zeros(lengths.shape[0], dtype=bool)
        self.source = str(source)
        self.observations = observations
        self.actions = actions
        self.rewards = rewards
        self.episode_starts = starts
        self.episode_lengths = lengths
        self.obs_dim = int(observations.shape[1])
        self.act_dim = int(actions.shape[1])
        # Returns-to-go for all steps at once: within an episode [s, e),
        # rtg[t] = C[e] - C[t] with C the float64 running sum (C[0] = 0).
        csum = np.concatenate(([0.0], np.cumsum(rewards, dtype=np.float64)))
        ends = starts + lengths
        episode_end_of_row = np.repeat(ends, lengths)
        rtg = csum[episode_end_of_row] - csum[:-1]
        _check_returns_fit_float32(rtg, starts, source)
        self.rtg = rtg.astype(np.float32)
        self._returns = csum[ends] - csum[starts]
        self.episodes = []
        self.returns_to_go = []
        for s, n, term, trunc, cut in zip(
            starts.tolist(),
            lengths.tolist(),
            terminated.tolist(),
            truncated.tolist(),
            unfinished.tolist(),
            strict=True,
        ):
            e = s + n
            self.episodes.append(
                Episode(
                    observations[s:e],
                    actions[s:e],
                    rewards[s:e],
                    bool(term),
                    bool(trunc),
                    bool(cut),
                )
            )
            self.returns_to_go.append(self.rtg[s:e])
        mean = observations.mean(axis=0, dtype=np.float64)
        var = np.square(observations, dtype=np.float64).mean(axis=0) - np.square(mean)
        # The one-pass variance can lose digits when |mean| >> std; recompute exactly then.
        if np.any(var < 1e-6 * np.maximum(np.square(mean), 1.0)):
            var = observations.var(axis=0, dtype=np.float64)
        self.state_mean = mean.astype(np.float32)
        self.state_std = np.maximum(np.sqrt(np.maximum(var, 0.0)), STD_FLOOR).astype(np.float32)

    @property
    def num_transitions(self) -> int:
        """Total number of steps ``N``."""
        return int(self.rewards.shape[0])

    @property
    def num_episodes(self) -> int:
        """Number of episodes ``E``."""
        return len(self.episodes)

    @property
    def max_episode_length(self) -> int:
        """Length of the longest episode."""
        return int(self.episode_lengths.max())

    def episode_returns(self) -> np.ndarray:
        """``[num_episodes]`` float64 undiscounted return of each episode."""
        return self._returns.copy()

    def timesteps(self, index: int) -> np.ndarray:
        """``[T]`` int64 step indices ``0..T-1`` of episode ``index``."""
        return np.arange(self.episode_lengths[index], dtype=np.int64)

    def summary(self) -> dict[str, float | int | str]:
        """Counts and return statistics, e.g. for a dataset card.

        ``terminated``, ``truncated`` (timeouts and time-limit cuts) and ``unfinished`` (cut off
        by the end of the data) count each episode once.
        """
        returns = self._returns
        return {
            "source": self.source,
            "transitions": self.num_transitions,
            "episodes": self.num_episodes,
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "return_min": float(returns.min()),
            "return_max": float(returns.max()),
            "length_mean": float(self.episode_lengths.mean()),
            "length_max": self.max_episode_length,
            "terminated": int(sum(e.terminated for e in self.episodes)),
            "truncated": int(sum(e.truncated and not e.unfinished for e in self.episodes)),
            "unfinished": int(sum(e.unfinished for e in self.episodes)),
        }

    def __repr__(self) -> str:
        return (
            f"TrajectoryDataset(source={self.source!r}, transitions={self.num_transitions}, "
            f"episodes={self.num_episodes}, obs_dim={self.obs_dim}, act_dim={self.act_dim})"
        )
