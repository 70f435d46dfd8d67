"""Export D4RL-layout arrays as a Minari dataset (Minari's own API; no jax needed).

Minari stores one group per episode whose observations carry ``T + 1`` entries (the last one is
the observation after the final step); D4RL rows carry ``next_observations`` for that, so
``observations[t]`` for ``t < T`` and ``next_observations[T - 1]`` make the episode's ``T + 1``.
"""

from __future__ import annotations

import warnings

import numpy as np

from aaren_rl.data.d4rl_writer import episode_bounds


def write_minari(
    dataset_id: str,
    env_id: str,
    data: dict[str, np.ndarray],
    *,
    overwrite: bool = False,
    algorithm_name: str = "SB3 SAC (aaren-rl make-dataset)",
):
    """Write ``data`` (D4RL arrays with ``next_observations``) under ``MINARI_DATASETS_PATH``.

    Returns the ``MinariDataset``. An existing dataset of that id is an error unless
    ``overwrite=True``, which deletes it first.
    """
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.storage import get_dataset_path

    if "next_observations" not in data:
        raise KeyError(
            f"Minari export of {dataset_id!r} needs 'next_observations' for each episode's "
            "final observation"
        )
    if get_dataset_path(dataset_id).exists():
        if not overwrite:
            raise FileExistsError(
                f"Minari dataset {dataset_id!r} already exists at {get_dataset_path(dataset_id)}; "
                "pass --overwrite to replace it"
            )
        minari.delete_dataset(dataset_id)
    buffers = []
    for k, (start, stop) in enumerate(episode_bounds(data["terminals"], data["timeouts"])):
        obs = np.concatenate(
            [data["observations"][start:stop], data["next_observations"][stop - 1 : stop]]
        )
        terminations = data["terminals"][start:stop].astype(bool)
        truncations = data["timeouts"][start:stop].astype(bool)
        if not (terminations[-1] or truncations[-1]):
            truncations[-1] = True  # a trailing unfinished episode: Minari needs an end flag
        buffers.append(
            EpisodeBuffer(
                id=k,
                observations=obs,
                actions=data["actions"][start:stop],
                rewards=data["rewards"][start:stop],
                terminations=terminations,
                truncations=truncations,
                infos={},
            )
        )
    with warnings.catch_warnings():
        # Minari asks for author, e-mail and code link; a locally built dataset has none.
        warnings.filterwarnings("ignore", message=r"`(author|author_email|code_permalink)`")
        return minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers,
            env=env_id,
            eval_env=env_id,
            algorithm_name=algorithm_name,
            description="D4RL recipe on Gymnasium MuJoCo v5, built by aaren-rl make-dataset",
        )
