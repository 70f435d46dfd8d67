"""Offline training of a decision agent on the shared loop (:mod:`aaren_rl.training`).

The generic machinery (DDP, seeding and RNG capture, atomic run-guarded checkpoints, exact
resume, the LR schedule, TensorBoard, progress) lives in
:class:`aaren_rl.training.loop.TrainingLoop`. This module plugs in what is the decision
agent's own: its sequence samplers (:func:`make_sampler`), its loss (:func:`decision_loss`)
and its evaluation (rollouts in the environment at each target return).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aaren_rl.agents.checkpoint import checkpoint_fields
from aaren_rl.config_values import apply_checks, choice, integer, number_list, show
from aaren_rl.nn.dropout import use_fast_dropout
from aaren_rl.training.config import LoopConfig
from aaren_rl.training.distributed import (  # noqa: F401 (public names of this module)
    DistContext,
    derived_seed,
    resolve_device,
    setup_distributed,
)
from aaren_rl.training.files import write_json_atomic  # noqa: F401 (public name)
from aaren_rl.training.loop import (  # noqa: F401 (public names of this module)
    CHECKPOINT_NAME,
    EVAL_LOG_NAME,
    METRICS_NAME,
    TrainingLoop,
)
from aaren_rl.training.rng import (  # noqa: F401 (public names of this module)
    capture_rng_state,
    restore_rng_state,
    seed_everything,
)
from aaren_rl.training.schedule import SCHEDULES, LRSchedule  # noqa: F401

SAMPLERS = ("window", "prefix", "full")


@dataclass
class TrainConfig(LoopConfig):
    """How to train a decision agent (the ``train:`` section of an agent preset).

    The loop's settings (:class:`~aaren_rl.training.config.LoopConfig`: ``steps``,
    ``batch_size``, ``lr``, ...) plus the agent's own. ``batch_size`` is the global batch:
    under torchrun each of the ``world_size`` processes draws ``batch_size / world_size``
    sequences. ``sampler`` picks the training sequences: ``window`` = Decision Transformer's
    random windows of ``context`` steps; ``prefix`` = episode prefixes of random length up to
    ``max_len`` starting at the episode start (what a recurrent Aaren state sees at rollout);
    ``full`` = whole episodes cut at ``max_len``. ``pack`` (prefix and full only) concatenates
    a batch's sequences into one row with a memory reset between them instead of padding
    each to the longest (:func:`aaren_rl.data.samplers.pack_sequences`): the same targets
    and the same loss, fewer steps to compute. ``fast_dropout`` swaps the model's dropouts for
    :class:`aaren_rl.nn.dropout.Dropout` (a cheaper CPU mask, same distribution; a different
    run from the same seed than ``nn.Dropout``). ``eval_every=0`` evaluates only at the end;
    ``eval_episodes=0`` never evaluates.
    """

    sampler: str = "window"
    max_len: int = 1000
    pack: bool = False
    fast_dropout: bool = False
    eval_episodes: int = 10
    eval_envs: int = 5
    target_returns: list[float] | None = None

    def problems(self) -> list[str]:
        problems = apply_checks(self, {"sampler": lambda v: choice(v, SAMPLERS)})
        problems += super().problems()
        for name in ("pack", "fast_dropout"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}={show(getattr(self, name))} (expected true or false)")
        if self.pack is True and self.sampler == "window":
            problems.append(
                "pack=true (expected false with sampler=window: pack joins episode prefixes, "
                "sampler prefix or full; DT windows are short and nearly unpadded)"
            )
        return problems + apply_checks(
            self,
            {
                "max_len": lambda v: integer(v, 1),
                "eval_episodes": lambda v: integer(v, 0),
                "eval_envs": lambda v: integer(v, 0),
                "target_returns": lambda v: None if v is None else number_list(v),
            },
        )


def masked_action_mse(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Mean squared error over the valid positions only.

    pred, target: ``[batch, time, act_dim]``; mask: ``[batch, time]`` bool (True = valid) or
    None. The mean runs over valid positions times action dimensions, as in Decision
    Transformer (``pred[mask]`` against ``target[mask]``).
    """
    if pred.shape != target.shape:
        raise ValueError(f"predicted actions {tuple(pred.shape)} vs targets {tuple(target.shape)}")
    sq = (pred - target).pow(2)
    if mask is None:
        return sq.mean()
    weight = mask.to(sq.dtype).unsqueeze(-1)
    count = weight.sum() * sq.shape[-1]
    return (sq * weight).sum() / count.clamp_min(1.0)


def masked_action_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Cross-entropy of discrete actions over the valid positions only.

    logits, target: ``[batch, time, n_actions]`` (target one-hot; its argmax is the class);
    mask: ``[batch, time]`` bool (True = valid) or None. The mean runs over valid positions.
    """
    if logits.shape != target.shape:
        raise ValueError(f"action logits {tuple(logits.shape)} vs targets {tuple(target.shape)}")
    nll = nn.functional.cross_entropy(
        logits.flatten(0, -2), target.argmax(dim=-1).flatten(), reduction="none"
    ).reshape(target.shape[:-1])
    if mask is None:
        return nll.mean()
    weight = mask.to(nll.dtype)
    return (nll * weight).sum() / weight.sum().clamp_min(1.0)


def action_loss(
    model: nn.Module, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """The model's action loss: cross-entropy for a discrete action head, else MSE."""
    config = getattr(getattr(model, "module", model), "config", None)  # DDP wraps the model
    if getattr(config, "action_space", "box") == "discrete":
        return masked_action_cross_entropy(pred, target, mask)
    return masked_action_mse(pred, target, mask)


def decision_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The decision agent's training loss on one batch of sequences (the loop's plug-in).

    ``batch``: ``observations [B,K,obs]``, ``actions [B,K,act]``, ``returns_to_go [B,K]``,
    ``timesteps [B,K]``, ``mask [B,K]`` bool, and ``resets [B,K]`` bool when the sequences
    are packed. The model predicts every action from the tokens
    before it; the loss is :func:`action_loss` over the valid steps (MSE, or cross-entropy
    for discrete actions).
    """
    pred, _ = model(
        observations=batch["observations"],
        actions=batch["actions"],
        returns_to_go=batch["returns_to_go"],
        timesteps=batch["timesteps"],
        mask=batch["mask"],
        resets=batch.get("resets"),
    )
    return action_loss(model, pred, batch["actions"], batch["mask"])


def task_to_dict(task: Any) -> dict[str, Any]:
    """A TaskSpec (dataclass or mapping) as plain data for checkpoints and JSON."""
    raw = dataclasses.asdict(task) if dataclasses.is_dataclass(task) else dict(task)

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, (np.generic,)):
            return v.item()
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        return str(v)

    return {k: plain(v) for k, v in raw.items() if not callable(v)}


def make_sampler(dataset: Any, config: TrainConfig, context: int, seed: int) -> Any:
    """The training sampler the config names (see :class:`TrainConfig`)."""
    from aaren_rl.data.samplers import PrefixSampler, WindowSampler

    if config.sampler == "window":
        return WindowSampler(dataset, context=context, seed=seed)
    return PrefixSampler(
        dataset, max_len=config.max_len, mode=config.sampler, seed=seed, pack=config.pack
    )


@dataclass
class EvalRecord:
    """One evaluation at one target return."""

    step: int
    target_return: float
    mean_return: float
    std_return: float
    normalized_mean: float
    normalized_std: float
    mean_length: float
    step_latency_ms: float
    returns: list[float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What one call of :meth:`Trainer.train` did (``model``: the trained, unwrapped model)."""

    start_step: int
    end_step: int
    losses: list[float]
    evaluations: list[EvalRecord]
    finished: bool
    out_dir: Path | None
    seconds: float
    model: nn.Module | None = None


EvaluateFn = Callable[..., Any]


class Trainer(TrainingLoop):
    """Trains ``model`` on ``dataset`` for ``train_config.steps`` optimiser steps.

    Args:
        model: a DecisionModel (``forward(observations, actions, returns_to_go, timesteps,
            mask) -> (pred_actions [B,K,act], state)``), not yet wrapped in DDP.
        dataset: a TrajectoryDataset (what the samplers read).
        task: the TaskSpec (env id, target returns, reference scores for normalised scores).
        train_config: a :class:`TrainConfig`.
        agent_config: the resolved agent preset (stored in checkpoints).
        out_dir: where checkpoint.pt, tb/, eval.jsonl and metrics.json go (None: nowhere).
        dist_ctx: from :func:`setup_distributed` (default: single process on ``model``'s device).
        resume: continue from ``out_dir/checkpoint.pt`` if there is one. Without it an existing
            checkpoint is an error, never overwritten.
        progress: show a tqdm bar (rank 0 only).
        evaluate_fn: replaces ``aaren_rl.agents.rollout.evaluate_agent`` (same signature).
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Any,
        task: Any,
        train_config: TrainConfig,
        agent_config: dict[str, Any] | None = None,
        out_dir: str | os.PathLike[str] | None = None,
        dist_ctx: DistContext | None = None,
        resume: bool = False,
        progress: bool = True,
        evaluate_fn: EvaluateFn | None = None,
    ) -> None:
        self.task = task
        self.task_dict = task_to_dict(task)
        self.agent_config = dict(agent_config or {})
        self._evaluate_fn = evaluate_fn
        self.dataset = dataset
        context = int(getattr(getattr(model, "config", None), "context", 20))
        if train_config.fast_dropout:
            use_fast_dropout(model)
        super().__init__(
            model,
            lambda seed: make_sampler(dataset, train_config, context, seed),
            train_config,
            out_dir=out_dir,
            dist_ctx=dist_ctx,
            resume=resume,
            progress=progress,
            loss_fn=decision_loss,
            description=f"train {self.task_dict.get('name', '')}",
        )

    # ---------------------------------------------------------------- checkpoints

    def checkpoint_fields(self) -> dict[str, Any]:
        return checkpoint_fields(
            self.model, self.agent_config, self.cfg.to_dict(), self.task_dict, extra=None
        )

    def data_identity(self) -> dict[str, Any]:
        """The task (name, environment) and the dataset's content: a resume on another task or
        other data (even of the same shapes) is refused."""
        from aaren_rl.training.fingerprint import data_identity

        arrays = {
            name: getattr(self.dataset, name, None)
            for name in ("observations", "actions", "rewards", "episode_starts", "episode_lengths")
        }
        label = getattr(self.dataset, "source", None) or self.task_dict.get("dataset")
        return data_identity(
            arrays,
            str(label),
            task=self.task_dict.get("name"),
            env_id=self.task_dict.get("env_id"),
        )

    # ---------------------------------------------------------------- evaluation

    def target_returns(self) -> list[float]:
        if self.cfg.target_returns is not None:
            return list(self.cfg.target_returns)
        targets = getattr(self.task, "target_returns", None)
        if targets is None and isinstance(self.task, dict):
            targets = self.task.get("target_returns")
        if not targets:
            raise ValueError(
                f"task {self.task_dict.get('name')!r} has no target_returns; set them in its "
                "envs/*.yaml or in the agent preset's train.target_returns"
            )
        return [float(t) for t in targets]

    def evaluate(self, n_episodes: int | None = None) -> list[EvalRecord]:
        """Roll the model out at every target return (rank 0 only; RNG streams untouched)."""
        if not self.ctx.is_main:
            return []
        n_episodes = int(n_episodes if n_episodes is not None else self.cfg.eval_episodes)
        if n_episodes <= 0:
            return []
        fn = self._evaluate_fn
        if fn is None:
            from aaren_rl.agents.rollout import evaluate_agent as fn
        records = []
        with self.evaluation_mode():
            for target in self.target_returns():
                res = fn(
                    self.model,
                    self.task_dict["env_id"],
                    target_return=target,
                    n_episodes=n_episodes,
                    n_envs=max(1, min(self.cfg.eval_envs, n_episodes)),
                    seed=self.cfg.seed + 10_000,
                    device=self.ctx.device,
                    max_episode_steps=self.task_dict.get("max_episode_steps"),
                )
                returns = [float(r) for r in np.asarray(res.returns).reshape(-1)]
                scores = [float(self.task.normalized_score(r)) for r in returns]
                records.append(
                    EvalRecord(
                        step=self.step,
                        target_return=float(target),
                        mean_return=float(np.mean(returns)),
                        std_return=float(np.std(returns)),
                        normalized_mean=float(np.mean(scores)),
                        normalized_std=float(np.std(scores)),
                        mean_length=float(np.mean(np.asarray(res.lengths))),
                        step_latency_ms=float(getattr(res, "step_latency_ms", float("nan"))),
                        returns=returns,
                    )
                )
        return records

    def log_eval(self, records: list[EvalRecord], writer: Any) -> None:
        if not records or not self.ctx.is_main:
            return
        for rec in records:
            tag = f"{rec.target_return:g}"
            if writer is not None:
                writer.add_scalar(f"eval/return/{tag}", rec.mean_return, rec.step)
                writer.add_scalar(f"eval/return_std/{tag}", rec.std_return, rec.step)
                writer.add_scalar(f"eval/normalized_score/{tag}", rec.normalized_mean, rec.step)
                writer.add_scalar(f"eval/episode_length/{tag}", rec.mean_length, rec.step)
            self.append_eval_log(rec.to_dict())

    def metrics_payload(self, evaluations: list[EvalRecord], seconds: float) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "step": self.step,
            "task": self.task_dict,
            "agent": self.agent_config.get("name"),
            "seed": self.cfg.seed,
            "world_size": self.ctx.world_size,
            "train_seconds_this_call": seconds,
            "final_eval": [r.to_dict() for r in evaluations if r.step == self.step],
        }

    def _result(self, start, end, losses, evaluations, finished, seconds) -> TrainResult:
        return TrainResult(
            start, end, losses, evaluations, finished, self.out_dir, seconds, self.model
        )
