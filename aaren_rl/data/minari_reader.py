"""Read a Minari dataset from the local ``MINARI_DATASETS_PATH``. Never downloads.

Minari stores each episode with ``T`` actions, rewards, terminations and truncations but
``T + 1`` observations (the last one is the observation after the final step). The state seen
before action ``t`` is ``observations[t]``, so the last observation is dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from aaren_rl.data.errors import DatasetError
from aaren_rl.data.trajectories import TrajectoryDataset, validate_transitions


def minari_root() -> Path:
    """``$MINARI_DATASETS_PATH``, else ``~/.minari/datasets`` (Minari's own rule; not created)."""
    value = os.environ.get("MINARI_DATASETS_PATH")
    return Path(value).expanduser() if value else Path.home() / ".minari" / "datasets"


def load_minari(dataset_id: str) -> TrajectoryDataset:
    """Load a local Minari dataset as episodes.

    Args:
        dataset_id: e.g. ``"mujoco/hopper/medium-v0"``.

    Returns:
        A :class:`TrajectoryDataset` (source ``minari:ID``); observations ``[T, obs_dim]`` per
        episode (Minari's ``T + 1``-th observation dropped). An episode whose last step has
        neither flag is marked truncated.

    Raises:
        DatasetError: minari not installed, the dataset not found locally, dict observations,
            or inconsistent episode arrays.
    """
    folder = minari_root() / dataset_id
    source = f"minari:{dataset_id} ({folder})"
    try:
        import minari
    except ImportError as exc:
        raise DatasetError(
            f"{source}: reading Minari datasets needs the minari package. "
            "Fix: pip install 'aaren-rl[minari]'",
            file=str(folder),
        ) from exc
    if not (folder / "data").is_dir():
        raise DatasetError(
            f"{source}: no local dataset (looked for {folder / 'data'}). Fix: set "
            "MINARI_DATASETS_PATH to the folder holding it, fetch it yourself with "
            f"`minari download {dataset_id}`, or build one with `aaren-rl make-dataset`",
            file=str(folder),
        )
    data = minari.load_dataset(dataset_id, download=False)
    obs_parts, act_parts, rew_parts = [], [], []
    lengths, terminated, truncated = [], [], []
    for episode in data.iterate_episodes():
        where = f"{source} episode {episode.id}"
        obs = episode.observations
        if isinstance(obs, dict | tuple):
            raise DatasetError.about(
                where,
                "observations",
                "is a dict/tuple observation",
                "Box (array) observations",
                "flatten the observations before building the dataset",
            )
        obs, actions = np.asarray(obs), np.asarray(episode.actions)
        rewards = np.asarray(episode.rewards)
        terms = np.asarray(episode.terminations, dtype=bool)
        truncs = np.asarray(episode.truncations, dtype=bool)
        t = rewards.shape[0]
        if t == 0:
            continue
        if obs.shape[0] != t + 1:
            raise DatasetError.about(
                where,
                "observations",
                f"has {obs.shape[0]} entries for {t} steps",
                f"{t + 1} (Minari stores the final next observation too)",
                "rewrite the dataset with Minari's API",
            )
        flags = terms[:-1] | truncs[:-1]
        if flags.any():
            raise DatasetError.about(
                where,
                "terminations",
                f"ends the episode at step {int(np.argmax(flags))} of {t}",
                "an end flag only at the last step",
                "split the data into one Minari episode per environment episode",
            )
        obs_parts.append(obs[:-1].reshape(t, -1))
        act_parts.append(actions.reshape(t, -1))
        rew_parts.append(rewards)
        lengths.append(t)
        terminated.append(bool(terms[-1]))
        truncated.append(bool(truncs[-1]) or not bool(terms[-1]))
    if not lengths:
        raise DatasetError.about(
            source, None, "holds no steps", "at least one episode with steps", "rebuild the dataset"
        )
    n = int(np.sum(lengths))
    flat = validate_transitions(
        np.concatenate(obs_parts),
        np.concatenate(act_parts),
        np.concatenate(rew_parts),
        np.zeros(n, dtype=bool),
        None,
        source,
    )
    return TrajectoryDataset.from_flat(
        flat["observations"],
        flat["actions"],
        flat["rewards"],
        np.asarray(lengths, dtype=np.int64),
        np.asarray(terminated, dtype=bool),
        np.asarray(truncated, dtype=bool),
        source=f"minari:{dataset_id}",
    )
