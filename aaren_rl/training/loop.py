"""The one training loop: AdamW, warmup, clipping, evaluation, checkpoints, exact resume.

:class:`TrainingLoop` runs single-process or under ``torchrun`` with DistributedDataParallel
(gloo on CPU, NCCL on GPU) with no change of code: each process draws its own share of the
global batch from a sampler seeded by its rank, and only rank 0 writes logs and checkpoints.
Checkpoints hold every process's random-number and sampler state, so a resumed run draws the
same batches and dropout masks as one that never stopped.

A model plugs in three things:

- its **sampler**: ``make_sampler(seed) -> sampler`` with ``sample(n) -> batch``,
  ``state_dict()`` and ``load_state_dict()`` (the batch: a mapping of tensors/arrays, or an
  object with ``to_torch(device)``);
- its **loss**: :meth:`TrainingLoop.compute_loss` (override, or pass ``loss_fn(model, batch)``);
- its **evaluation**: :meth:`TrainingLoop.evaluate` returning records (objects with
  ``to_dict()`` or mappings; ``step`` and numeric fields go to TensorBoard under ``eval/``).

and, optionally, the top-level fields its checkpoints carry (:meth:`checkpoint_fields`) and
the ``metrics.json`` it writes at the end (:meth:`metrics_payload`).

Nothing stops a run silently or half-way:

- a non-finite loss or gradient stops the run *before* that update with a
  :class:`NonFiniteLossError` naming the step and the batch (:meth:`describe_batch`: the
  episode ids for a decision agent); the weights are untouched and the last good checkpoint is
  kept, not overwritten;
- SIGINT (Ctrl-C) and SIGTERM finish the current step, write a final checkpoint and raise
  :class:`TrainingInterrupted`; under torchrun every process stops at the same step (the
  processes agree on it each step), so the checkpoint is written under DDP too. A second
  signal inside a step stops at once (:class:`TrainingAborted`) and writes nothing: that
  step's state is half-updated, and the last checkpoint stays;
- a resumed run logs what an uninterrupted one would: TensorBoard purges only the steps after
  the checkpoint, the losses not yet logged travel in the checkpoint, and a run refuses to
  resume on data other than its own (:meth:`data_identity`);
- a SIGKILL at any point leaves the previous checkpoint intact (files are written to a temp
  name and renamed); the temp file of a killed write is removed when the run resumes.
"""

from __future__ import annotations

import dataclasses
import gc
import io
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from aaren_rl.training.checkpoint import (
    check_output_folder,
    load_checkpoint,
    new_run_id,
    unwrap_model,
    write_checkpoint,
)
from aaren_rl.training.config import LoopConfig
from aaren_rl.training.distributed import DistContext, derived_seed
from aaren_rl.training.files import write_json_atomic, write_text_atomic
from aaren_rl.training.fingerprint import describe_identity, identity_mismatch
from aaren_rl.training.rng import capture_rng_state, restore_rng_state, seed_everything
from aaren_rl.training.schedule import LRSchedule

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
EVAL_LOG_NAME = "eval.jsonl"

LossFn = Callable[[nn.Module, Any], torch.Tensor]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient) of a step is NaN or inf: the run stops before that update.

    ``step`` is the update that was refused (1-based, as logged), ``batch`` what
    :meth:`TrainingLoop.describe_batch` says about the batch, ``checkpoint_step`` the step of
    the last good checkpoint (None when none was written).
    """

    def __init__(self, message: str, *, step: int, batch: str, checkpoint_step: int | None) -> None:
        super().__init__(message)
        self.step, self.batch, self.checkpoint_step = step, batch, checkpoint_step


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run after a final checkpoint (``signum``, ``step``)."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step


class TrainingAborted(KeyboardInterrupt):
    """A second SIGINT/SIGTERM stopped the run at once, inside a step: no checkpoint of that
    half-finished step is written; the last one on disk (``checkpoint_step``) is kept."""

    def __init__(self, signum: int, step: int, checkpoint_step: int | None) -> None:
        kept = (
            f"the last checkpoint (step {checkpoint_step}) is kept: --resume continues from it"
            if checkpoint_step is not None
            else "no checkpoint had been written yet"
        )
        super().__init__(
            f"a second {signal.Signals(signum).name} stopped the run at once during step "
            f"{step + 1}; that half-finished step was not saved and {kept}"
        )
        self.signum, self.step, self.checkpoint_step = signum, step, checkpoint_step


@dataclass
class LoopResult:
    """What one call of :meth:`TrainingLoop.train` did (``model``: the trained, unwrapped
    model; ``evaluations``: the records :meth:`TrainingLoop.evaluate` returned)."""

    start_step: int
    end_step: int
    losses: list[float]
    evaluations: list[Any]
    finished: bool
    out_dir: Path | None
    seconds: float
    model: nn.Module | None = None


def model_config_dict(model: nn.Module) -> dict[str, Any] | None:
    """The model's dataclass ``config`` as a dict (None when it has none)."""
    config = getattr(unwrap_model(model), "config", None)
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None


def batch_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors (and numpy arrays) of a batch on ``device``: an object with ``to_torch``, a
    mapping, a tuple/list, an array or a tensor."""
    if hasattr(batch, "to_torch"):
        return batch.to_torch(device)
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, np.ndarray):
        return torch.from_numpy(batch).to(device)
    if isinstance(batch, Mapping):
        return {k: batch_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(batch_to_device(v, device) for v in batch)
    return batch


def record_dict(record: Any) -> dict[str, Any]:
    """An evaluation record as a plain dict (``to_dict()``, a dataclass or a mapping)."""
    if hasattr(record, "to_dict"):
        return dict(record.to_dict())
    if dataclasses.is_dataclass(record):
        return dataclasses.asdict(record)
    return dict(record)


class TrainingLoop:
    """Trains ``model`` for ``config.steps`` optimiser steps on batches from a sampler.

    Args:
        model: the module to train, not yet wrapped in DDP.
        make_sampler: ``seed -> sampler`` (called once with this process's seed).
        config: a :class:`LoopConfig` (or a subclass of it).
        out_dir: where checkpoint.pt, tb/, eval.jsonl and metrics.json go (None: nowhere).
        dist_ctx: from :func:`~aaren_rl.training.distributed.setup_distributed` (default:
            single process on ``model``'s device).
        resume: continue from ``out_dir/checkpoint.pt`` if there is one. Without it an existing
            checkpoint is an error, never overwritten.
        progress: show a tqdm bar (rank 0 only).
        loss_fn: ``(model, batch) -> scalar loss``; the default :meth:`compute_loss` calls it.
        description: the progress bar's label.
    """

    def __init__(
        self,
        model: nn.Module,
        make_sampler: Callable[[int], Any],
        config: LoopConfig,
        out_dir: str | os.PathLike[str] | None = None,
        dist_ctx: DistContext | None = None,
        resume: bool = False,
        progress: bool = True,
        loss_fn: LossFn | None = None,
        description: str = "train",
    ) -> None:
        self.cfg = config
        self.ctx = dist_ctx or DistContext(device=next(model.parameters()).device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.description = description
        self._loss_fn = loss_fn
        if self.cfg.batch_size % self.ctx.world_size:
            raise ValueError(
                f"train.batch_size={self.cfg.batch_size} must be divisible by the number of "
                f"processes ({self.ctx.world_size})"
            )
        self.local_batch = self.cfg.batch_size // self.ctx.world_size

        self.model = model.to(self.ctx.device)
        rank_seed = derived_seed(self.cfg.seed, self.ctx.rank)
        self.sampler = make_sampler(rank_seed)
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
        self.saved_step: int | None = None  # the step of the last checkpoint on disk
        self._signal: int | None = None  # a stop signal received and not yet acted on
        self._agreed_signal: int | None = None  # the one every process stops for
        self._saving = False  # a checkpoint write is under way (a second signal waits for it)
        self._window: list[float] = []  # this process's losses since the last logged step
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
            self.saved_step = self.step
        if self.out_dir is not None and self.ctx.is_main:
            check_output_folder(self.out_dir)  # a read-only --out stops here, not at step 1000
            self._remove_stale_temp_files()

        self.ddp: nn.Module = self.model
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)

    # ---------------------------------------------------------------- plug-in points

    def compute_loss(self, batch: Any) -> torch.Tensor:
        """The training loss of one batch (already on the device), through ``self.ddp``."""
        if self._loss_fn is None:
            raise NotImplementedError(
                f"{type(self).__name__}: pass loss_fn= or override compute_loss"
            )
        return self._loss_fn(self.ddp, batch)

    def evaluate(self) -> list[Any]:
        """Records of one evaluation at ``self.step`` (rank 0; the default: none)."""
        return []

    def describe_batch(self, batch: Any) -> str:
        """What a :class:`NonFiniteLossError` says about the batch: its ``episodes`` (or
        ``ids``) entry when it has one, else its keys."""
        if isinstance(batch, Mapping):
            for key in ("episodes", "ids"):
                if key in batch:
                    ids = torch.as_tensor(batch[key]).flatten().tolist()
                    return f"{key} {ids}"
            return f"a batch with keys {sorted(batch)}"
        return f"a batch of type {type(batch).__name__}"

    def checkpoint_fields(self) -> dict[str, Any]:
        """Top-level fields every checkpoint of this model carries (besides the weights,
        optimiser, scheduler, step and RNG; a ``model_config`` here replaces
        :meth:`checkpoint_model_config`'s)."""
        return {"train_config": self.cfg.to_dict()}

    def data_identity(self) -> dict[str, Any] | None:
        """What the run trains on (stored as ``data_identity``; a resume must match it): see
        :func:`~aaren_rl.training.fingerprint.data_identity`. Default: none (not checked)."""
        return None

    def checkpoint_model_config(self) -> dict[str, Any] | None:
        """How to rebuild the model (stored as ``model_config``; a resume must match it):
        by default the model's dataclass ``config``."""
        return model_config_dict(self.model)

    def metrics_payload(self, evaluations: list[Any], seconds: float) -> dict[str, Any]:
        """What ``metrics.json`` holds at the end of a run."""
        return {
            "run_id": self.run_id,
            "step": self.step,
            "seed": self.cfg.seed,
            "world_size": self.ctx.world_size,
            "train_seconds_this_call": seconds,
            "final_eval": [record_dict(r) for r in evaluations if _step_of(r) == self.step],
        }

    def log_eval(self, records: list[Any], writer: Any) -> None:
        """Log evaluation records: numeric fields to TensorBoard (``eval/NAME``), each record
        as one line of ``eval.jsonl``."""
        if not records or not self.ctx.is_main:
            return
        for rec in records:
            data = record_dict(rec)
            if writer is not None:
                step = int(data.get("step", self.step))
                for key, value in data.items():
                    if (
                        key != "step"
                        and isinstance(value, (int, float))
                        and not isinstance(value, bool)
                    ):
                        writer.add_scalar(f"eval/{key}", value, step)
            self.append_eval_log(data)

    def append_eval_log(self, data: dict[str, Any]) -> None:
        """Append one record to ``out_dir/eval.jsonl``."""
        if self.out_dir is not None:
            with open(self.out_dir / EVAL_LOG_NAME, "a") as handle:
                handle.write(json.dumps(data) + "\n")

    @contextmanager
    def evaluation_mode(self) -> Iterator[None]:
        """Eval mode, no gradients, and the training RNG streams untouched (forked)."""
        devices = [self.ctx.device] if self.ctx.device.type == "cuda" else []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    # ---------------------------------------------------------------- paths and state

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None

    def _load(self, path: Path) -> None:
        data = load_checkpoint(path, map_location="cpu")
        stored = data.get("model_config")
        current = self.checkpoint_model_config()
        config_type = type(getattr(unwrap_model(self.model), "config", None))
        if isinstance(stored, dict) and hasattr(config_type, "from_dict"):
            # keys added since the checkpoint was written take their defaults
            stored = dataclasses.asdict(
                config_type.from_dict(stored, source=f"{path} model_config")
            )
        self._check_data_identity(path, data.get("data_identity"))
        if current is not None and stored != current:
            diff = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
            raise ValueError(
                f"{path}: cannot resume: the checkpoint's model config differs in {diff} "
                f"(checkpoint {[stored.get(k) for k in diff]}, now "
                f"{[current.get(k) for k in diff]}); use the same settings or another --out"
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
            self._window = [float(x) for x in ranks[self.ctx.rank].get("loss_window") or []]
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

    def _check_data_identity(self, path: Path, stored: Any) -> None:
        """Refuse to resume on data other than the checkpoint's (naming both)."""
        current = self._identity()
        differ = identity_mismatch(stored, current)
        if differ:
            raise ValueError(
                f"{path}: cannot resume: this run was trained on {describe_identity(stored)}, "
                f"but it was started now on {describe_identity(current)} (they differ in "
                f"{', '.join(differ)}); resume with the data it was trained on, or train into "
                "another --out"
            )

    def _gather_rng(self) -> dict[str, Any]:
        mine = capture_rng_state(self.sampler, self.ctx.device)
        mine["loss_window"] = list(self._window)  # the logged mean after a resume stays exact
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
        """Write ``out_dir/checkpoint.pt`` (collective under DDP: every rank must call it).

        A stop signal that arrives during the write waits for it to finish."""
        self._saving = True
        try:
            self._save()
        finally:
            self._saving = False

    def _save(self) -> None:
        rng = self._gather_rng()
        if self.checkpoint_path is None:
            return
        if not self.ctx.is_main:
            self.saved_step = self.step  # rank 0 writes it; every rank knows it is there
            return
        write_checkpoint(
            self.checkpoint_path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            step=self.step,
            rng_state=rng,
            run_id=self.run_id,
            data_identity=self._identity(),
            **{"model_config": self.checkpoint_model_config(), **self.checkpoint_fields()},
        )
        self.saved_step = self.step

    def _identity(self) -> dict[str, Any] | None:
        if not hasattr(self, "_identity_cache"):
            self._identity_cache = self.data_identity()
        return self._identity_cache

    def _remove_stale_temp_files(self) -> None:
        """Temp files of writes that a kill cut short (the real files were never touched)."""
        for name in (CHECKPOINT_NAME, METRICS_NAME):
            for stale in self.out_dir.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)

    # ---------------------------------------------------------------- training

    def next_batch(self) -> Any:
        """This process's share of the next global batch, on the device."""
        return batch_to_device(self.sampler.sample(self.local_batch), self.ctx.device)

    def train_step(self) -> tuple[float, float]:
        """One optimiser step on one batch; returns (loss, gradient norm before clipping).

        Raises :class:`NonFiniteLossError` (before the update: the weights stay as they were)
        when the loss or the gradient is NaN or inf on any process.
        """
        batch = self.next_batch()
        loss = self.compute_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        loss_value, norm_value = float(loss.detach()), float(grad_norm)
        bad_here = not (np.isfinite(loss_value) and np.isfinite(norm_value))
        bad_anywhere = self._agree_on_stop(bad_here)
        if bad_anywhere:
            raise self._non_finite_error(loss_value, norm_value, batch, bad_here)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss_value, norm_value

    def _agree_on_stop(self, bad_here: bool) -> bool:
        """Whether any process saw a non-finite loss; also shares the stop signals, so that
        every process stops at the same step (one small all-reduce per step under DDP)."""
        if not self.ctx.distributed:
            return bad_here
        flags = torch.tensor([float(bad_here), float(self._signal or 0)], dtype=torch.float64).to(
            self.ctx.device
        )
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[1] > 0:
            self._agreed_signal = int(flags[1])
        return bool(flags[0] > 0)

    def _non_finite_error(
        self, loss: float, grad_norm: float, batch: Any, bad_here: bool
    ) -> NonFiniteLossError:
        step = self.step + 1
        described = self.describe_batch(batch)
        where = f"rank {self.ctx.rank}: " if self.ctx.distributed else ""
        what = (
            f"the training loss is {loss} (gradient norm {grad_norm}) on {described}"
            if bad_here
            else f"another process's loss or gradient is not finite (here: loss {loss} on "
            f"{described})"
        )
        if self.saved_step is None:
            kept = "no checkpoint had been written yet"
        else:
            kept = (
                f"the last good checkpoint {self.checkpoint_path} (step {self.saved_step}) is kept"
            )
        return NonFiniteLossError(
            f"{where}step {step}: {what}. Training stopped before this update (the weights are "
            f"unchanged) and {kept}. Fix: check those examples in the data, or lower train.lr "
            "/ train.grad_clip; resume with --resume",
            step=step,
            batch=described,
            checkpoint_step=self.saved_step,
        )

    @contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """While training: SIGINT and SIGTERM ask for a stop after the current step. A second
        one stops at once (:class:`TrainingAborted`) without saving the half-finished step,
        except while the final checkpoint is being written: that write finishes first."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

        def ask_to_stop(signum: int, frame: Any) -> None:
            if self._signal is None:
                self._signal = signum
            elif self._saving:
                return  # the checkpoint being written is whole; the run stops right after it
            elif self.saved_step == self.step:
                raise TrainingInterrupted(signum, self.step)  # this step is on disk already
            else:
                raise TrainingAborted(signum, self.step, self.saved_step)

        for sig in STOP_SIGNALS:
            signal.signal(sig, ask_to_stop)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _mean_across_ranks(self, value: float) -> float:
        if not self.ctx.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(t)
        return float(t.item()) / self.ctx.world_size

    def _evaluate_main(self) -> list[Any]:
        return self.evaluate() if self.ctx.is_main else []

    def train(self, stop_at: int | None = None) -> LoopResult:
        """Train until ``config.steps`` (or ``stop_at``, then checkpoint and return).

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
            desc=self.description,
            disable=not (self.progress and self.ctx.is_main),
            dynamic_ncols=True,
            # a log file (no terminal) gets a line every 30 s, not one per step
            mininterval=0.1 if sys.stderr.isatty() else 30.0,
        )
        losses: list[float] = []
        evaluations: list[Any] = []
        t0 = time.perf_counter()
        if start >= self.cfg.steps:  # resumed a finished run: evaluate only if never done
            bar.close()
            done = self.out_dir is not None and (self.out_dir / METRICS_NAME).is_file()
            if not done:
                evaluations = self._evaluate_main()
                self.log_eval(evaluations, writer)
                if self.ctx.is_main and self.out_dir is not None:
                    self._write_metrics(evaluations, 0.0)
            if writer is not None:
                writer.close()
            self._wait_for_every_rank()
            return self._result(start, start, [], evaluations, True, 0.0)
        self.model.train()
        self._signal = self._agreed_signal = None
        try:
            with self._stop_signals():
                self._train_until(end, start, t0, bar, writer, losses, evaluations)
        except BaseException:
            # a KeyboardInterrupt other than TrainingInterrupted came in the middle of a step
            # (a second Ctrl-C): its state is half-updated, so nothing is saved; the last
            # checkpoint on disk stays whole
            if writer is not None:
                writer.close()
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
        self._wait_for_every_rank()
        return self._result(start, self.step, losses, evaluations, finished, seconds)

    def _train_until(
        self,
        end: int,
        start: int,
        t0: float,
        bar: Any,
        writer: Any,
        losses: list[float],
        evaluations: list[Any],
    ) -> None:
        """The steps of :meth:`train` up to ``end``; a stop signal ends them with a checkpoint."""
        while self.step < end:
            if self._signal is not None and not self.ctx.distributed:
                self._agreed_signal = self._signal
                self._stop_for_signal(bar)
            loss, grad_norm = self.train_step()
            losses.append(loss)
            self._window.append(loss)
            bar.update(1)
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                mean_loss = self._mean_across_ranks(float(np.mean(self._window)))
                self._window.clear()
                bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
                if writer is not None:
                    writer.add_scalar("train/loss", mean_loss, self.step)
                    writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
                    writer.add_scalar("train/grad_norm", grad_norm, self.step)
                    elapsed = time.perf_counter() - t0
                    writer.add_scalar("train/steps_per_s", (self.step - start) / elapsed, self.step)
            last = self.step == self.cfg.steps
            periodic = self.cfg.eval_every > 0 and self.step % self.cfg.eval_every == 0
            if periodic or last:  # before the checkpoint: a resume from it never repeats it
                records = self._evaluate_main()
                evaluations.extend(records)
                self.log_eval(records, writer)
            if self.step % self.cfg.checkpoint_every == 0 and self.step < end:
                self.save()
            if not self.ctx.distributed:
                self._agreed_signal = self._signal
            if self._agreed_signal is not None:  # under DDP: agreed on in train_step
                self._stop_for_signal(bar)

    def _stop_for_signal(self, bar: Any) -> None:
        """Write the final checkpoint (every process, at the same step) and stop."""
        signum = int(self._agreed_signal)
        if self.ctx.is_main:
            name = signal.Signals(signum).name
            bar.write(f"{name} at step {self.step}: writing a checkpoint to resume from")
        self.save()
        raise TrainingInterrupted(signum, self.step)

    def _result(
        self,
        start: int,
        end: int,
        losses: list[float],
        evaluations: list[Any],
        finished: bool,
        seconds: float,
    ) -> Any:
        """The value :meth:`train` returns (a subclass may return its own result type)."""
        return LoopResult(
            start, end, losses, evaluations, finished, self.out_dir, seconds, self.model
        )

    # ---------------------------------------------------------------- outputs

    def _writer(self, start: int) -> Any:
        if self.out_dir is None:
            return None
        from torch.utils.tensorboard import SummaryWriter

        self.out_dir.mkdir(parents=True, exist_ok=True)
        # purge_step drops the events at steps >= it: those logged after the checkpoint by a run
        # that was stopped later, which the resumed run logs again. The checkpoint's own step
        # was logged before the checkpoint was written, so it stays.
        if start > 0:
            self._truncate_eval_log(start)
        return SummaryWriter(str(self.out_dir / "tb"), purge_step=start + 1 if start > 0 else None)

    def _truncate_eval_log(self, start: int) -> None:
        """Drop the ``eval.jsonl`` records past the checkpoint's step (the resumed run writes
        them again), so each evaluation appears once."""
        path = self.out_dir / EVAL_LOG_NAME
        if not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                step = json.loads(line).get("step")
            except (ValueError, AttributeError):
                continue  # a line cut by a kill
            if step is None or int(step) <= start:
                kept.append(line if line.endswith("\n") else line + "\n")
        if kept != lines:
            write_text_atomic(path, "".join(kept))

    def _write_metrics(self, evaluations: list[Any], seconds: float) -> None:
        write_json_atomic(self.out_dir / METRICS_NAME, self.metrics_payload(evaluations, seconds))

    def _wait_for_every_rank(self) -> None:
        """Under DDP, return from :meth:`train` together: rank 0 writes the checkpoint, the
        metrics and TensorBoard after the last collective, and no rank may tear the process
        group down (``close``) while another is still at work."""
        if self.ctx.distributed and dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        """Leave the process group if this trainer joined it.

        The DistributedDataParallel wrapper goes first: its reducer holds the process group,
        and left to the interpreter's exit it would be torn down after the group, in whatever
        order the exit frees objects. Then the group is destroyed, on every rank after
        :meth:`train` returned on all of them.
        """
        if self.ddp is not self.model:
            self.ddp = self.model
            gc.collect()
        if self.ctx.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def _step_of(record: Any) -> int | None:
    if hasattr(record, "step"):
        return int(record.step)
    if isinstance(record, Mapping) and "step" in record:
        return int(record["step"])
    return None
