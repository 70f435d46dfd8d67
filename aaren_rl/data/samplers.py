"""Batches of sequences for the decision agents, right-padded with a mask.

Two samplers, both choosing each sequence's episode with probability proportional to its
length (as Decision Transformer does), both seeded by a numpy ``Generator`` whose state can be
saved and restored so that a resumed run draws the same batches:

- :class:`WindowSampler`: Decision Transformer's random windows of ``context`` steps, starting
  anywhere in the episode (a window that runs past the episode's end is padded).
- :class:`PrefixSampler`: sequences that start at the episode's first step, where a recurrent
  state starts at rollout: random-length prefixes, or whole episodes.

Random-length prefixes padded to the longest of their batch are mostly padding (about 40% of
the steps of a batch of 4 to 8 hopper prefixes). :func:`pack_sequences` concatenates a batch's
sequences into one row with a memory reset at the first step of each, so no step is padding;
a backbone that honours resets (Aaren's scan, the Transformer's segment mask) computes exactly
what it computes on the padded rows.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from aaren_rl.data.errors import DatasetError
from aaren_rl.data.seeded_sampler import SeededSampler
from aaren_rl.data.trajectories import TrajectoryDataset


@dataclass
class SequenceBatch:
    """A batch of ``B`` sequences of ``K`` steps, RIGHT-padded (real steps first, padding after).

    Padding positions hold zeros. Attributes:
        observations: ``[B, K, obs_dim]`` float32, raw (not normalised; the model normalises).
        actions: ``[B, K, act_dim]`` float32.
        rewards: ``[B, K]`` float32.
        returns_to_go: ``[B, K]`` float32, unscaled undiscounted suffix sums.
        timesteps: ``[B, K]`` int64, the step's index inside its episode.
        mask: ``[B, K]`` bool, True at real steps.
        episodes: ``[B]`` int64, each row's episode index in the dataset (None if unknown):
            what an error about this batch names. In a packed batch: ``[n_sequences]``, the
            episode of each sequence in the row.
        resets: ``[B, K]`` bool, True at the first step of a sequence packed after another
            one in the same row (the memory restarts there), or None (one sequence per row).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    returns_to_go: np.ndarray
    timesteps: np.ndarray
    mask: np.ndarray
    episodes: np.ndarray | None = None
    resets: np.ndarray | None = None

    def to_torch(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """The same fields as torch tensors on ``device`` (CPU when None; None fields left out)."""
        return {
            f.name: torch.from_numpy(getattr(self, f.name)).to(device, non_blocking=True)
            for f in fields(self)
            if getattr(self, f.name) is not None
        }

    @property
    def lengths(self) -> np.ndarray:
        """``[B]`` int64 number of real steps in each row."""
        return self.mask.sum(axis=1).astype(np.int64)


def gather_sequences(
    dataset: TrajectoryDataset,
    episodes: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    width: int,
) -> SequenceBatch:
    """Cut ``B`` sequences out of a dataset, vectorised.

    Args:
        dataset: the source.
        episodes: ``[B]`` episode indices.
        offsets: ``[B]`` first step of each sequence inside its episode.
        lengths: ``[B]`` number of real steps (>= 1, within the episode).
        width: ``K``, padded length (>= lengths.max()).

    Returns:
        A :class:`SequenceBatch` with ``K = width``.
    """
    steps = np.arange(width, dtype=np.int64)[None, :]
    mask = steps < lengths[:, None]
    rows = dataset.episode_starts[episodes][:, None] + offsets[:, None] + steps
    rows = np.where(mask, rows, 0)
    mask_f = mask.astype(np.float32)
    return SequenceBatch(
        observations=dataset.observations[rows] * mask_f[..., None],
        actions=dataset.actions[rows] * mask_f[..., None],
        rewards=dataset.rewards[rows] * mask_f,
        returns_to_go=dataset.rtg[rows] * mask_f,
        timesteps=np.where(mask, offsets[:, None] + steps, 0),
        mask=mask,
        episodes=np.asarray(episodes, dtype=np.int64),
    )


def pack_sequences(batch: SequenceBatch) -> SequenceBatch:
    """Concatenate the real steps of a batch's rows into one row, with resets between them.

    Row ``i`` of ``batch`` (its ``lengths[i]`` real steps, padding dropped) follows row
    ``i - 1``; ``resets`` is True at the first step of every row but the first. Nothing is cut
    and nothing is padded: the packed row holds ``sum(lengths)`` steps.

    Args:
        batch: ``B`` right-padded rows ``[B, K, ...]`` without resets of their own.

    Returns:
        A :class:`SequenceBatch` of one row, arrays ``[1, sum(lengths), ...]``, with
        ``resets [1, sum(lengths)]`` and the same ``episodes``.
    """
    if batch.resets is not None:
        raise ValueError("pack_sequences: the batch is packed already (it has resets)")
    lengths = batch.lengths
    real = batch.mask  # right padding: each row's real steps come first

    def flat(a: np.ndarray) -> np.ndarray:
        return a[real][None]

    resets = np.zeros(int(lengths.sum()), dtype=bool)
    resets[np.cumsum(lengths)[:-1]] = True
    return SequenceBatch(
        observations=flat(batch.observations),
        actions=flat(batch.actions),
        rewards=flat(batch.rewards),
        returns_to_go=flat(batch.returns_to_go),
        timesteps=flat(batch.timesteps),
        mask=np.ones((1, resets.size), dtype=bool),
        episodes=batch.episodes,
        resets=resets[None],
    )


class _Sampler(SeededSampler):
    """Shared parts: the length-weighted episode choice (and, from the base, the generator)."""

    def __init__(self, dataset: TrajectoryDataset, seed: int | None) -> None:
        super().__init__(seed)
        self.dataset = dataset
        # P(episode i) = T_i / N: the episode holding a uniformly drawn transition.
        self._episode_ends = np.cumsum(dataset.episode_lengths)

    def _episodes(self, batch_size: int) -> np.ndarray:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rows = self.rng.integers(0, int(self._episode_ends[-1]), size=batch_size)
        return np.searchsorted(self._episode_ends, rows, side="right")


class WindowSampler(_Sampler):
    """Decision Transformer's random windows of ``context`` steps.

    The start is uniform over the episode's steps; the window runs ``context`` steps or to the
    episode's end, whichever comes first, and is right-padded to ``context``.
    """

    def __init__(self, dataset: TrajectoryDataset, context: int, seed: int | None = None) -> None:
        if context < 1:
            raise ValueError(f"context must be >= 1, got {context}")
        super().__init__(dataset, seed)
        self.context = int(context)

    def sample(self, batch_size: int) -> SequenceBatch:
        """``batch_size`` windows; arrays ``[batch_size, context, ...]``."""
        episodes = self._episodes(batch_size)
        ep_len = self.dataset.episode_lengths[episodes]
        offsets = self.rng.integers(0, ep_len)
        lengths = np.minimum(self.context, ep_len - offsets)
        return gather_sequences(self.dataset, episodes, offsets, lengths, self.context)


class PrefixSampler(_Sampler):
    """Sequences that start at each episode's first step (timestep 0).

    mode ``"prefix"``: a prefix of length ``L`` uniform in ``[1, min(T, max_len)]``.
    mode ``"full"``: whole episodes; every episode must fit in ``max_len`` (an error otherwise,
    never a silent truncation).

    Rows are padded to the longest sequence in the batch, or to ``max_len`` with
    ``pad_to_max_len=True`` (fixed shapes). With ``pack=True`` the batch's sequences are drawn
    the same way and returned as one row without padding (:func:`pack_sequences`): the same
    action targets, the same random stream, 40% fewer steps to compute on hopper prefixes.
    """

    MODES = ("prefix", "full")

    def __init__(
        self,
        dataset: TrajectoryDataset,
        max_len: int,
        mode: str = "prefix",
        seed: int | None = None,
        pad_to_max_len: bool = False,
        pack: bool = False,
    ) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if mode == "full" and dataset.max_episode_length > max_len:
            longest = int(np.argmax(dataset.episode_lengths))
            raise DatasetError.about(
                dataset.source,
                None,
                f"episode {longest} has {dataset.max_episode_length} steps, more than "
                f"max_len={max_len} allowed by mode='full'",
                f"every episode at most {max_len} steps",
                f"raise max_len to {dataset.max_episode_length} or more, or use mode='prefix'",
            )
        super().__init__(dataset, seed)
        self.max_len = int(max_len)
        self.mode = mode
        self.pad_to_max_len = bool(pad_to_max_len)
        self.pack = bool(pack)
        if self.pack and self.pad_to_max_len:
            raise ValueError("pack=True packs the sequences without padding: drop pad_to_max_len")

    def sample(self, batch_size: int) -> SequenceBatch:
        """``batch_size`` sequences from step 0; arrays ``[batch_size, K, ...]``, or
        ``[1, sum of lengths, ...]`` with ``pack=True``."""
        episodes = self._episodes(batch_size)
        ep_len = self.dataset.episode_lengths[episodes]
        if self.mode == "full":
            lengths = ep_len
        else:
            upper = np.minimum(ep_len, self.max_len)
            lengths = self.rng.integers(1, upper + 1)
        width = self.max_len if self.pad_to_max_len else int(lengths.max())
        offsets = np.zeros(batch_size, dtype=np.int64)
        batch = gather_sequences(self.dataset, episodes, offsets, lengths, width)
        return pack_sequences(batch) if self.pack else batch
