"""Decision-agent checkpoints: the loop's checkpoint file (:mod:`aaren_rl.training.checkpoint`)
plus what it takes to act without the dataset.

On top of the loop's fields (model, optimiser, scheduler, step, the random-number state of
every process and sampler) an agent's file holds ``obs_dim``, ``act_dim``, the model config,
the agent preset and the task; the state mean/std and reward scale live in the model's
buffers. It is read with ``weights_only=True``, so loading a file never runs code from it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aaren_rl.training.checkpoint import (  # noqa: F401 (public names of this module)
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    existing_run_id,
    new_run_id,
    unwrap_model,
    write_checkpoint,
)
from aaren_rl.training.checkpoint import load_checkpoint as _load_checkpoint

REQUIRED_KEYS = ("format", "version", "step", "model_state", "obs_dim", "act_dim", "model_config")


def _model_config_dict(model: nn.Module, agent_config: dict[str, Any]) -> dict[str, Any]:
    config = getattr(model, "config", None)
    if config is not None and dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    if isinstance(agent_config.get("model"), dict):
        return dict(agent_config["model"])
    raise ValueError(
        "save_checkpoint: the model has no dataclass `config` and agent_config has no 'model' "
        "mapping; cannot record how to rebuild the model"
    )


def _model_dims(model: nn.Module) -> tuple[int, int]:
    try:
        return int(model.obs_dim), int(model.act_dim)
    except AttributeError as exc:
        raise ValueError(
            f"save_checkpoint: {type(model).__name__} has no obs_dim/act_dim attributes; "
            "checkpoints need them to rebuild the model without the dataset"
        ) from exc


def checkpoint_fields(
    model: nn.Module,
    agent_config: dict[str, Any],
    train_config: dict[str, Any],
    task: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The top-level fields of a decision agent's checkpoint (besides the loop's own)."""
    bare = unwrap_model(model)
    obs_dim, act_dim = _model_dims(bare)
    return {
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "model_config": _model_config_dict(bare, agent_config),
        "agent_config": agent_config,
        "train_config": train_config,
        "task": task,
        "extra": extra or {},
    }


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    step: int,
    agent_config: dict[str, Any],
    train_config: dict[str, Any],
    task: dict[str, Any],
    rng_state: dict[str, Any],
    extra: dict[str, Any] | None = None,
    run_id: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a decision agent's checkpoint atomically (see
    :func:`aaren_rl.training.checkpoint.write_checkpoint`).

    An existing file at ``path`` is replaced only if it belongs to the same run (same
    ``run_id``) or ``overwrite=True``; otherwise a :class:`CheckpointError` says so.
    """
    fields = checkpoint_fields(model, agent_config, train_config, task, extra)
    return write_checkpoint(
        path,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        step=step,
        rng_state=rng_state,
        run_id=run_id,
        overwrite=overwrite,
        **fields,
    )


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a decision agent's checkpoint (tensors mapped to ``map_location``).

    A missing path, a file that is not a torch file, or a torch file that is not an aaren-rl
    checkpoint raises :class:`CheckpointError` naming the file and what was expected.
    """
    return _load_checkpoint(path, map_location=map_location, required=REQUIRED_KEYS)


def load_agent(
    path: str | os.PathLike[str], device: str | torch.device | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained decision model from a checkpoint, with no dataset at hand.

    Returns ``(model, info)``: the model in eval mode on ``device`` (default CPU), and a dict
    with ``task`` (name, env_id, reward_scale, target_returns, reference_scores,
    max_episode_steps, ...), ``agent_config``, ``train_config``, ``model_config``, ``step``,
    ``obs_dim``, ``act_dim``, ``run_id`` and ``path``.
    """
    from aaren_rl.agents.decision_model import build_decision_model

    data = load_checkpoint(path)
    state = data["model_state"]
    obs_dim, act_dim = int(data["obs_dim"]), int(data["act_dim"])
    try:
        model = build_decision_model(data["model_config"], obs_dim, act_dim)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: the stored model does not fit this library's DecisionModel ({exc})"
        ) from exc
    model.to(device if device is not None else "cpu")
    model.eval()
    info = {
        key: data.get(key)
        for key in ("task", "agent_config", "train_config", "model_config", "step", "run_id")
    }
    info.update(obs_dim=obs_dim, act_dim=act_dim, path=str(path), extra=data.get("extra", {}))
    return model, info
