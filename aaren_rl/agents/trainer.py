"""Offline training of a decision agent: AdamW, warmup, clipping, evaluation, exact resume.

One :class:`Trainer` runs single-process or under ``torchrun`` with DistributedDataParallel
(gloo on CPU, NCCL on GPU) with no change of code: each process draws its own share of the
global batch from a sampler seeded by its rank, and only rank 0 writes logs and checkpoints.
Checkpoints hold every process's random-number and sampler state, so a resumed run draws the
same batches and dropout masks as one that never stopped.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from aaren_rl.agents.checkpoint import (
    load_checkpoint,
    new_run_id,
    save_checkpoint,
    unwrap_model,
)

SAMPLERS = ("window", "prefix", "full")
SCHEDULES = ("constant", "cosine")
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
EVAL_LOG_NAME = "eval.jsonl"


@dataclass
class TrainConfig:
    """How to train (the ``train:`` section of an agent preset).

    ``batch_size`` is the global batch: under torchrun each of the ``world_size`` processes
    draws ``batch_size / world_size`` sequences. ``sampler`` picks the training sequences:
    ``window`` = Decision Transformer's random windows of ``context`` steps; ``prefix`` =
    episode prefixes of random length up to ``max_len`` starting at the episode start (what a
    recurrent Aaren state sees at rollout); ``full`` = whole episodes cut at ``max_len``.
    ``eval_every=0`` evaluates only at the end; ``eval_episodes=0`` never evaluates.
    """

    steps: int = 100_000
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 10_000
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.25
    sampler: str = "window"
    max_len: int = 1000
    eval_every: int = 10_000
    eval_episodes: int = 10
    eval_envs: int = 5
    target_returns: list[float] | None = None
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if self.target_returns is not None:
            self.target_returns = [float(r) for r in self.target_returns]
        problems = []
        if self.sampler not in SAMPLERS:
            problems.append(f"sampler={self.sampler!r} (expected one of {SAMPLERS})")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule={self.schedule!r} (expected one of {SCHEDULES})")
        for name in ("steps", "batch_size", "max_len", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)!r} (expected >= 1)")
        for name in ("warmup_steps", "eval_every", "eval_episodes", "eval_envs"):
            if int(getattr(self, name)) < 0:
                problems.append(f"{name}={getattr(self, name)!r} (expected >= 0)")
        if not self.lr > 0:
            problems.append(f"lr={self.lr!r} (expected > 0)")
        if not self.grad_clip > 0:
            problems.append(f"grad_clip={self.grad_clip!r} (expected > 0)")
        if problems:
            raise ValueError("invalid train config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "train config") -> TrainConfig:
        """Build from a mapping; an unknown key is an error naming ``source`` and the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown train key(s) {unknown}; known keys: {sorted(known)}"
            )
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping (lists instead of tuples) for YAML, JSON and checkpoints."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out


class LRSchedule:
    """Learning-rate multiplier per optimiser step: linear warmup, then constant or cosine.

    ``factor(s) = min(1, (s + 1) / warmup)`` during warmup (Decision Transformer's rule); after
    it, 1 (constant) or ``min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2`` with ``p`` the
    fraction of the post-warmup steps done (cosine).
    """

    def __init__(self, warmup_steps: int, total_steps: int, kind: str, min_ratio: float = 0.0):
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.kind = kind
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


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


# ----------------------------------------------------------------------------- distributed


@dataclass
class DistContext:
    """Where this process sits: rank, world size and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA if available, else CPU; anything else as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here")
    return device


def setup_distributed(device: str | torch.device | None = None) -> DistContext:
    """Join the torchrun process group if ``WORLD_SIZE > 1`` (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    initialized_here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        initialized_here = True
    return DistContext(rank, world_size, local_rank, dev, initialized_here)


def derived_seed(seed: int, rank: int) -> int:
    """A per-process seed: rank 0 keeps ``seed``; other ranks get well-separated seeds."""
    return (int(seed) + 1_000_003 * int(rank)) % (2**31 - 1)


# ----------------------------------------------------------------------------- RNG state


def _encode(obj: Any) -> Any:
    """Make numpy values loadable with ``torch.load(weights_only=True)``."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj)).clone()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_encode(v) for v in obj)
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__"}:
            return obj["__ndarray__"].numpy()
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_decode(v) for v in obj)
    return obj


def capture_rng_state(sampler: Any, device: torch.device) -> dict[str, Any]:
    """This process's random-number state: python, numpy, torch (CPU and CUDA), sampler."""
    state = {
        "python": random.getstate(),
        "numpy": _encode(np.random.get_state(legacy=False)),  # noqa: NPY002 (global stream)
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "sampler": _encode(sampler.state_dict()),
    }
    return state


def restore_rng_state(state: dict[str, Any], sampler: Any, device: torch.device) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(_decode(state["numpy"]))  # noqa: NPY002
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    sampler.load_state_dict(_decode(state["sampler"]))


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 (third-party code may use it)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- trainer


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
    return PrefixSampler(dataset, max_len=config.max_len, mode=config.sampler, seed=seed)


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


class Trainer:
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
        self.cfg = train_config
        self.ctx = dist_ctx or DistContext(device=next(model.parameters()).device)
        self.task = task
        self.task_dict = task_to_dict(task)
        self.agent_config = dict(agent_config or {})
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self._evaluate_fn = evaluate_fn
        if self.cfg.batch_size % self.ctx.world_size:
            raise ValueError(
                f"train.batch_size={self.cfg.batch_size} must be divisible by the number of "
                f"processes ({self.ctx.world_size})"
            )
        self.local_batch = self.cfg.batch_size // self.ctx.world_size

        self.model = model.to(self.ctx.device)
        context = int(getattr(getattr(model, "config", None), "context", 20))
        rank_seed = derived_seed(self.cfg.seed, self.ctx.rank)
        self.sampler = make_sampler(dataset, self.cfg, context, rank_seed)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=self.cfg.lr,
            weight_decay=self.cfg.weight_decay,
            betas=self.cfg.betas,
        )
        self.schedule = LRSchedule(
            self.cfg.warmup_steps, self.cfg.steps, self.cfg.schedule, self.cfg.min_lr_ratio
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.step = 0
        self.run_id = new_run_id()
        # dropout masks: a stream per process, set after the (identical) initialisation
        torch.manual_seed(rank_seed)
        if self.ctx.device.type == "cuda":
            torch.cuda.manual_seed(rank_seed)

        ckpt = self.checkpoint_path
        if ckpt is not None and ckpt.exists():
            if not resume:
                raise FileExistsError(
                    f"{ckpt}: a checkpoint is already there; pass --resume (resume=True) to "
                    "continue that run, or choose another output folder"
                )
            self._load(ckpt)

        self.ddp: nn.Module = self.model
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)

    # ---------------------------------------------------------------- paths and state

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None

    def _load(self, path: Path) -> None:
        data = load_checkpoint(path, map_location="cpu")
        stored = data.get("model_config")
        current = _model_config(self.model)
        config_type = type(getattr(unwrap_model(self.model), "config", None))
        if isinstance(stored, dict) and hasattr(config_type, "from_dict"):
            # keys added since the checkpoint was written take their defaults
            stored = dataclasses.asdict(
                config_type.from_dict(stored, source=f"{path} model_config")
            )
        if current is not None and stored != current:
            diff = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
            raise ValueError(
                f"{path}: cannot resume: the checkpoint's model config differs in {diff} "
                f"(checkpoint {[stored.get(k) for k in diff]}, now "
                f"{[current.get(k) for k in diff]}); use the same agent preset or another --out"
            )
        try:
            self.model.load_state_dict(data["model_state"])
        except RuntimeError as exc:  # parameter names or shapes of another library version
            detail = str(exc).strip().splitlines()
            raise ValueError(
                f"{path}: cannot resume: the checkpoint's weights do not fit this model "
                f"({' '.join(line.strip() for line in detail[:2])[:300]} ...); it was written by "
                "another version of aaren-rl: train into another --out"
            ) from exc
        self.model.to(self.ctx.device)
        if data.get("optimizer") is not None:
            self.optimizer.load_state_dict(data["optimizer"])
        if data.get("scheduler") is not None:
            self.scheduler.load_state_dict(data["scheduler"])
        self.step = int(data["step"])
        self.run_id = data.get("run_id") or self.run_id
        rng = data.get("rng_state") or {}
        ranks = rng.get("ranks") or []
        if rng.get("world_size") == self.ctx.world_size and len(ranks) > self.ctx.rank:
            restore_rng_state(ranks[self.ctx.rank], self.sampler, self.ctx.device)
        else:
            warnings.warn(
                f"{path}: saved with {rng.get('world_size')} process(es), resumed with "
                f"{self.ctx.world_size}: random streams are re-seeded, so the continuation is "
                "not bitwise identical to an uninterrupted run",
                stacklevel=2,
            )
            seed = derived_seed(self.cfg.seed + self.step, self.ctx.rank)
            seed_everything(seed)
        old = data.get("train_config") or {}
        changed = sorted(
            k for k, v in self.cfg.to_dict().items() if k in old and old[k] != v and k != "steps"
        )
        if changed and self.ctx.is_main:
            warnings.warn(f"{path}: resuming with changed train settings {changed}", stacklevel=2)

    def _gather_rng(self) -> dict[str, Any]:
        mine = capture_rng_state(self.sampler, self.ctx.device)
        if not self.ctx.distributed:
            return {"world_size": 1, "ranks": [mine]}
        # send bytes, not tensors: all_gather_object's own unpickler mishandles tensors
        buffer = io.BytesIO()
        torch.save(mine, buffer)
        gathered: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(gathered, buffer.getvalue())
        ranks = [torch.load(io.BytesIO(b), weights_only=True) for b in gathered]
        return {"world_size": self.ctx.world_size, "ranks": ranks}

    def save(self) -> None:
        """Write ``out_dir/checkpoint.pt`` (collective under DDP: every rank must call it)."""
        rng = self._gather_rng()
        if self.checkpoint_path is None or not self.ctx.is_main:
            return
        save_checkpoint(
            self.checkpoint_path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            step=self.step,
            agent_config=self.agent_config,
            train_config=self.cfg.to_dict(),
            task=self.task_dict,
            rng_state=rng,
            run_id=self.run_id,
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
        devices = [self.ctx.device] if self.ctx.device.type == "cuda" else []
        records = []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
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
        finally:
            self.model.train(was_training)
        return records

    # ---------------------------------------------------------------- training

    def train_step(self) -> tuple[float, float]:
        """One optimiser step on one batch; returns (loss, gradient norm before clipping)."""
        batch = self.sampler.sample(self.local_batch).to_torch(self.ctx.device)
        pred, _ = self.ddp(
            observations=batch["observations"],
            actions=batch["actions"],
            returns_to_go=batch["returns_to_go"],
            timesteps=batch["timesteps"],
            mask=batch["mask"],
        )
        loss = masked_action_mse(pred, batch["actions"], batch["mask"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return float(loss.detach()), float(grad_norm)

    def _mean_across_ranks(self, value: float) -> float:
        if not self.ctx.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(t)
        return float(t.item()) / self.ctx.world_size

    def train(self, stop_at: int | None = None) -> TrainResult:
        """Train until ``train_config.steps`` (or ``stop_at``, then checkpoint and return).

        Logs loss, learning rate and gradient norm every ``log_every`` steps, evaluates every
        ``eval_every`` steps and at the end, checkpoints every ``checkpoint_every`` steps, at
        ``stop_at``, at the end, and on Ctrl-C.
        """
        from tqdm.auto import tqdm

        start = self.step
        end = self.cfg.steps if stop_at is None else min(self.cfg.steps, int(stop_at))
        writer = self._writer(start) if self.ctx.is_main else None
        bar = tqdm(
            total=self.cfg.steps,
            initial=start,
            unit="step",
            desc=f"train {self.task_dict.get('name', '')}",
            disable=not (self.progress and self.ctx.is_main),
            dynamic_ncols=True,
            # a log file (no terminal) gets a line every 30 s, not one per step
            mininterval=0.1 if sys.stderr.isatty() else 30.0,
        )
        losses: list[float] = []
        evaluations: list[EvalRecord] = []
        t0 = time.perf_counter()
        window: list[float] = []
        if start >= self.cfg.steps:  # resumed a finished run: evaluate only if never done
            bar.close()
            done = self.out_dir is not None and (self.out_dir / METRICS_NAME).is_file()
            if not done:
                evaluations = self.evaluate()
                self._log_eval(evaluations, writer)
                if self.ctx.is_main and self.out_dir is not None:
                    self._write_metrics(evaluations, 0.0)
            if writer is not None:
                writer.close()
            return TrainResult(start, start, [], evaluations, True, self.out_dir, 0.0, self.model)
        self.model.train()
        try:
            while self.step < end:
                loss, grad_norm = self.train_step()
                losses.append(loss)
                window.append(loss)
                bar.update(1)
                if self.step % self.cfg.log_every == 0 or self.step == end:
                    mean_loss = self._mean_across_ranks(float(np.mean(window)))
                    window.clear()
                    bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
                    if writer is not None:
                        writer.add_scalar("train/loss", mean_loss, self.step)
                        writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
                        writer.add_scalar("train/grad_norm", grad_norm, self.step)
                        elapsed = time.perf_counter() - t0
                        writer.add_scalar(
                            "train/steps_per_s", (self.step - start) / elapsed, self.step
                        )
                if self.step % self.cfg.checkpoint_every == 0 and self.step < end:
                    self.save()
                last = self.step == self.cfg.steps
                periodic = self.cfg.eval_every > 0 and self.step % self.cfg.eval_every == 0
                if periodic or last:
                    records = self.evaluate()
                    evaluations.extend(records)
                    self._log_eval(records, writer)
        except KeyboardInterrupt:
            if not self.ctx.distributed:  # under DDP the other ranks may sit in a collective
                bar.write(f"interrupted at step {self.step}: writing a checkpoint to resume from")
                self.save()
            raise
        finally:
            bar.close()
        self.save()
        finished = self.step >= self.cfg.steps
        seconds = time.perf_counter() - t0
        if finished and self.ctx.is_main and self.out_dir is not None:
            self._write_metrics(evaluations, seconds)
        if writer is not None:
            writer.close()
        return TrainResult(
            start, self.step, losses, evaluations, finished, self.out_dir, seconds, self.model
        )

    # ---------------------------------------------------------------- outputs

    def _writer(self, start: int) -> Any:
        if self.out_dir is None:
            return None
        from torch.utils.tensorboard import SummaryWriter

        self.out_dir.mkdir(parents=True, exist_ok=True)
        return SummaryWriter(str(self.out_dir / "tb"), purge_step=start if start > 0 else None)

    def _log_eval(self, records: list[EvalRecord], writer: Any) -> None:
        if not records or not self.ctx.is_main:
            return
        for rec in records:
            tag = f"{rec.target_return:g}"
            if writer is not None:
                writer.add_scalar(f"eval/return/{tag}", rec.mean_return, rec.step)
                writer.add_scalar(f"eval/return_std/{tag}", rec.std_return, rec.step)
                writer.add_scalar(f"eval/normalized_score/{tag}", rec.normalized_mean, rec.step)
                writer.add_scalar(f"eval/episode_length/{tag}", rec.mean_length, rec.step)
            if self.out_dir is not None:
                with open(self.out_dir / EVAL_LOG_NAME, "a") as handle:
                    handle.write(json.dumps(rec.to_dict()) + "\n")

    def _write_metrics(self, evaluations: list[EvalRecord], seconds: float) -> None:
        final = [r.to_dict() for r in evaluations if r.step == self.step]
        payload = {
            "run_id": self.run_id,
            "step": self.step,
            "task": self.task_dict,
            "agent": self.agent_config.get("name"),
            "seed": self.cfg.seed,
            "world_size": self.ctx.world_size,
            "train_seconds_this_call": seconds,
            "final_eval": final,
        }
        write_json_atomic(self.out_dir / METRICS_NAME, payload)

    def close(self) -> None:
        """Leave the process group if this trainer joined it."""
        if self.ctx.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def _model_config(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(unwrap_model(model), "config", None)
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write JSON to ``path`` via a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path
