"""Checkpoint files of the training loop: atomic, run-guarded, read back with clear errors.

A checkpoint is one ``torch.save`` file holding everything needed to continue a run exactly
(model, optimiser, scheduler, step, the random-number state of every process and sampler) plus
whatever a model adds to rebuild itself (its config, dimensions, task). It is read with
``weights_only=True``, so loading a file never runs code from it.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import aaren_rl

FORMAT = "aaren-rl-checkpoint"
FORMAT_VERSION = 1
BASE_KEYS = ("format", "version", "step", "model_state", "model_config")


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, unreadable or not ours (the message names the file)."""


def new_run_id() -> str:
    """A fresh identifier for a training run (stored in its checkpoints)."""
    return uuid.uuid4().hex


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module inside a DistributedDataParallel (or DataParallel) wrapper."""
    return (
        model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    )


def existing_run_id(path: str | os.PathLike[str]) -> str | None:
    """The run id stored in an existing checkpoint file (None if the file holds none)."""
    return load_checkpoint(path).get("run_id")


def write_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    step: int,
    model_config: dict[str, Any],
    rng_state: dict[str, Any],
    run_id: str | None = None,
    overwrite: bool = False,
    **fields: Any,
) -> Path:
    """Write a checkpoint atomically (temp file in the same folder, then ``os.replace``).

    An existing file at ``path`` is replaced only if it belongs to the same run (same
    ``run_id``) or ``overwrite=True``; otherwise a :class:`CheckpointError` says so, so a new
    run never silently destroys another run's checkpoint. ``fields`` become top-level keys
    (a model's dimensions, its task, its configs). Everything must be tensors, numbers,
    strings, None, lists, tuples and dicts.
    """
    path = Path(path)
    bare = unwrap_model(model)
    if path.exists() and not overwrite:
        try:
            previous = existing_run_id(path)
        except CheckpointError:
            previous = None
        if run_id is None or previous != run_id:
            raise CheckpointError(
                f"{path}: a checkpoint of another run is already there "
                f"(its run id {previous!r}, this run {run_id!r}); resume that run, choose "
                "another output folder, or pass overwrite=True to replace it"
            )
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "library_version": aaren_rl.__version__,
        "torch_version": str(torch.__version__),
        "run_id": run_id,
        "step": int(step),
        **fields,
        "model_config": model_config,
        "model_state": {k: v.detach().cpu() for k, v in bare.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng_state": rng_state,
    }
    check_output_folder(path.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; keep the usual mode
        os.replace(tmp_name, path)
    except BaseException as exc:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        if isinstance(exc, (OSError, RuntimeError)):
            raise _write_error(path, exc, payload) from exc
        raise
    return path


NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _payload_bytes(payload: Any) -> int:
    """The tensor bytes in a checkpoint payload (what its file needs, near enough)."""
    if isinstance(payload, torch.Tensor):
        return payload.numel() * payload.element_size()
    if isinstance(payload, dict):
        return sum(_payload_bytes(v) for v in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(_payload_bytes(v) for v in payload)
    return 0


def _write_error(path: Path, exc: BaseException, payload: Any) -> CheckpointError:
    """A failed checkpoint write as one line: disk space when the disk is full (torch reports
    a full disk as ``RuntimeError: ... unexpected pos``), else the system's reason."""
    needed = _payload_bytes(payload)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    full = getattr(exc, "errno", None) in NO_SPACE or (free is not None and free < needed + 2**20)
    kept = (
        "the previous checkpoint is intact" if path.exists() else "no earlier checkpoint was there"
    )
    if full:
        room = (
            f" ({free / 1e6:.1f} MB free now, about {needed / 1e6:.1f} MB needed)"
            if free is not None
            else ""
        )
        return CheckpointError(
            f"{path}: no space left on the device to write the checkpoint{room}; {kept}. "
            "Fix: free disk space (or choose another --out), then run again with --resume"
        )
    reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:200]
    return CheckpointError(
        f"{path}: the checkpoint could not be written ({type(exc).__name__}: {reason}); {kept}. "
        "Fix: check that the folder is writable and the disk healthy, then run again with --resume"
    )


def check_output_folder(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` if needed and check that files can be written in it (by writing and
    removing a temp file: permissions, read-only mounts and full disks all show). Raises
    :class:`CheckpointError` naming the folder and the reason."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        where = exc.filename if exc.filename and str(exc.filename) != str(folder) else folder
        raise CheckpointError(
            f"{where}: the output folder cannot be written ({reason}). Fix: choose a writable "
            "--out (or fix the folder's permissions)"
        ) from None
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: Any = "cpu",
    required: Sequence[str] = BASE_KEYS,
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`write_checkpoint` (tensors mapped to ``map_location``).

    ``path`` may be a run folder holding ``checkpoint.pt``. A missing path, a file that is not
    a torch file, a torch file that is not an aaren-rl checkpoint, or one without the
    ``required`` keys raises :class:`CheckpointError` naming the file and what was expected.
    """
    path = Path(path)
    if path.is_dir() and (path / "checkpoint.pt").is_file():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such checkpoint; pass the checkpoint.pt written by `aaren-rl train` "
            "or `aaren-rl fit` (or its output folder)"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: is a folder without a checkpoint.pt inside")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many kinds for a truncated or foreign file
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc)[:200]}); "
            "the file is truncated, corrupt or not written by aaren-rl"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: a torch file, but not an aaren-rl checkpoint (no format={FORMAT!r} key)"
        )
    if data.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {data['version']} is newer than this library "
            f"reads ({FORMAT_VERSION}); upgrade aaren-rl"
        )
    missing = [k for k in required if k not in data]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks the keys {missing}")
    return data
