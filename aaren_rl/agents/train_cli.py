"""``aaren-rl train``: an agent preset + a task preset -> a trained, checkpointed agent.

    aaren-rl train --agent decision-aaren --task hopper-medium [--steps N] [--seed S]
                   [--out DIR] [--resume] [--init-from CKPT] [--device auto|cpu|cuda]
                   [--protocol cpu]
                   [--set train.batch_size=32 ...]

Presets are names (``agents/*.yaml``, ``envs/*.yaml``) or paths to your own files. The same
command runs under ``torchrun --nproc_per_node N`` with DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from aaren_rl import presets
from aaren_rl.agents.checkpoint import CheckpointError
from aaren_rl.agents.trainer import (
    TrainConfig,
    Trainer,
    TrainResult,
    seed_everything,
    setup_distributed,
)
from aaren_rl.cli import add_threads_argument, apply_threads, interrupted_exit, seed_value
from aaren_rl.config_values import show
from aaren_rl.files import write_text_atomic
from aaren_rl.nn.size import check_model_fits
from aaren_rl.training.loop import NonFiniteLossError

AGENT_KEYS = ("name", "description", "model", "train", "protocols")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    if len(parts) != 2 or parts[0] not in ("model", "train"):
        raise ValueError(
            f"{source}: --set {dotted!r} must look like model.KEY=VALUE or train.KEY=VALUE"
        )
    tree.setdefault(parts[0], {})[parts[1]] = value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["train.steps=100", "model.d_model=64"]`` -> ``{"train.steps": 100, ...}`` (YAML values)."""
    from aaren_rl.presets import _yaml_problem, load_yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. train.batch_size=32")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = load_yaml(raw)
        except yaml.YAMLError as exc:
            raise ValueError(
                f"--set {item!r}: the value is not valid YAML ({_yaml_problem(exc)})"
            ) from None
    return out


NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")


def _mapping(value: Any, source: str, where: str) -> dict[str, Any]:
    """A preset section: a mapping (an empty entry, ``model:``, is an empty one)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(
            f"{source}: '{where}' must be a mapping of keys to values, got {type(value).__name__}"
        )
    return dict(value)


def _validate(tree: dict[str, Any], source: str) -> None:
    from aaren_rl.agents.decision_model import DecisionModelConfig

    DecisionModelConfig.from_dict(tree["model"], source=source)
    TrainConfig.from_dict(tree["train"], source=source)


def resolve_agent(
    agent: str | os.PathLike[str] | dict[str, Any],
    protocol: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read an agent preset and apply a protocol and overrides.

    Returns ``{"name", "source", "protocol", "model": {...}, "train": {...}}`` where ``train``
    has been checked by :class:`TrainConfig` (unknown keys and bad values are errors naming the
    file). ``protocol`` picks ``protocols.<name>`` from the file (e.g. ``cpu``): its ``model`` and
    ``train`` entries replace the top-level ones. ``overrides`` maps ``"train.KEY"`` or
    ``"model.KEY"`` to a value and is applied last.
    """
    if isinstance(agent, dict):
        data, source = copy.deepcopy(agent), "<agent mapping>"
        name = data.get("name", "custom")
    else:
        raw, path = presets.load("agents", agent)
        data, source = copy.deepcopy(raw), str(path)
        name = data.get("name", path.stem)
    unknown = sorted(str(k) for k in set(data) - set(AGENT_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown top-level key(s) {unknown}; expected {AGENT_KEYS}")
    if not isinstance(name, str) or not name or not set(name) <= NAME_CHARS or name[0] == ".":
        raise ValueError(
            f"{source}: 'name' is {name!r}; expected a name of letters, digits, '.', '_', '+' "
            "or '-' (it names the run folder runs/NAME/...)"
        )
    model = _mapping(data.get("model"), source, "model")
    train = _mapping(data.get("train"), source, "train")
    if protocol:
        protocols = _mapping(data.get("protocols"), source, "protocols")
        if protocol not in protocols:
            names = sorted(str(k) for k in protocols) or "none"
            raise ValueError(
                f"{source}: no protocol {protocol!r} under 'protocols'; the file defines {names}"
            )
        chosen = _mapping(protocols[protocol], source, f"protocols.{protocol}")
        bad = sorted(str(k) for k in set(chosen) - {"model", "train", "description"})
        if bad:
            raise ValueError(f"{source}: protocols.{protocol} has unknown key(s) {bad}")
        model.update(_mapping(chosen.get("model"), source, f"protocols.{protocol}.model"))
        train.update(_mapping(chosen.get("train"), source, f"protocols.{protocol}.train"))
    tree = {"model": model, "train": train}
    where = source if not protocol else f"{source} (protocol {protocol})"
    final = copy.deepcopy(tree)
    for dotted, value in (overrides or {}).items():
        _set_dotted(final, dotted, value, source)
    try:
        _validate(final, where)
    except ValueError:
        # name what brought the bad value: the file itself, or the first --set that breaks it
        _validate(tree, where)
        for dotted, value in (overrides or {}).items():
            _set_dotted(tree, dotted, value, source)
            _validate(tree, f"--set {dotted}={show(value)} (over {where})")
        raise
    tree = final
    return {
        "name": name,
        "source": source,
        "protocol": protocol,
        "model": tree["model"],
        "train": tree["train"],
    }


def with_action_space(preset: dict[str, Any], spec: Any) -> dict[str, Any]:
    """The preset with ``model.action_space`` set from the task's environment (box/discrete).

    A preset that names an action space of the other kind is an error naming the file.
    """
    from aaren_rl.agents.decision_model import action_space_kind

    kind = action_space_kind(spec.env_spaces()[1])
    stated = preset["model"].get("action_space")
    if stated is not None and stated != kind:
        raise ValueError(
            f"{preset['source']}: model.action_space is {stated!r} but task {spec.name!r} "
            f"({spec.env_id}) has {kind} actions; remove the key or set it to {kind!r}"
        )
    out = copy.deepcopy(preset)
    out["model"]["action_space"] = kind
    return out


def default_out_dir(agent_name: str, task_name: str, seed: int) -> Path:
    """``runs/<agent>/<task>/seed<seed>``."""
    return Path("runs") / agent_name / task_name / f"seed{seed}"


def run_training(
    agent: str | os.PathLike[str] | dict[str, Any],
    task: Any,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    steps: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    resume: bool = False,
    protocol: str | None = None,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    stop_at: int | None = None,
    dataset: Any = None,
    init_from: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train an agent preset on a task (name, path or TaskSpec); returns the TrainResult.

    ``steps`` and ``seed`` override the preset's ``train.steps`` / ``train.seed``. The model is
    built on the dataset's dimensions and normalisation (state mean/std, the task's reward
    scale). Works the same under torchrun (rank 0 writes ``out_dir``).

    ``init_from`` (fine-tuning, e.g. a length curriculum) starts from the weights and buffers
    of another run's checkpoint instead of a fresh model; see :func:`init_model_from`. The
    optimiser, schedule and step count start afresh. With ``resume`` and a checkpoint in
    ``out_dir``, that checkpoint wins (the run continues where it stopped).
    """
    from aaren_rl.agents.decision_model import build_decision_model
    from aaren_rl.data.tasks import load_task

    ctx = setup_distributed(device)
    extra = dict(overrides or {})
    if steps is not None:
        extra["train.steps"] = int(steps)
    if seed is not None:
        extra["train.seed"] = int(seed)
    preset = resolve_agent(agent, protocol=protocol, overrides=extra)
    spec = load_task(task) if isinstance(task, (str, os.PathLike)) else task
    train_cfg = TrainConfig.from_dict(preset["train"], source=preset["source"])
    if out_dir is None:
        out_dir = default_out_dir(preset["name"], spec.name, train_cfg.seed)
    out_dir = Path(out_dir)
    if dataset is None:
        dataset = spec.load_dataset()
    preset = with_action_space(preset, spec)
    seed_everything(train_cfg.seed)  # identical initial weights on every rank

    def build() -> torch.nn.Module:
        return build_decision_model(
            preset["model"],
            dataset.obs_dim,
            dataset.act_dim,
            state_mean=dataset.state_mean,
            state_std=dataset.state_std,
            reward_scale=spec.reward_scale,
            return_max=float(dataset.rtg.max()),
        )

    sizes = {k: preset["model"].get(k) for k in ("d_model", "n_layers", "d_ff", "max_timestep")}
    check_model_fits(  # counted on the meta device: the statistics do not change the size
        lambda: build_decision_model(preset["model"], dataset.obs_dim, dataset.act_dim),
        ctx.device,
        ", ".join(f"model.{k}={v}" for k, v in sizes.items() if v is not None)
        + f" ({preset['source']}{' with the --set overrides' if overrides else ''})",
        "lower model.d_model (or n_layers, d_ff) in the preset or with --set",
    )
    model = init_model_from(init_from, preset, dataset) if init_from is not None else build()
    trainer = Trainer(
        model,
        dataset,
        spec,
        train_cfg,
        agent_config=preset,
        out_dir=out_dir,
        dist_ctx=ctx,
        resume=resume,
        progress=progress,
    )
    try:
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            _write_yaml_atomic(
                out_dir / "config.yaml",
                {"agent": preset, "task": trainer.task_dict, "world_size": ctx.world_size},
            )
        return trainer.train(stop_at=stop_at)
    finally:
        trainer.close()


def init_model_from(
    path: str | os.PathLike[str], preset: dict[str, Any], dataset: Any
) -> torch.nn.Module:
    """The model of checkpoint ``path``, ready to fine-tune under ``preset`` on ``dataset``.

    The checkpoint's model config must equal the preset's in every key but ``max_timestep``
    (a clear error names the keys that differ). A different ``max_timestep`` resizes the
    timestep table by interpolation (:func:`~aaren_rl.agents.decision_model.stretch_timesteps`).
    The normalisation buffers (state mean/std, reward scale, return max) are the checkpoint's:
    the weights were learned against them, so they stay, whatever the new dataset's statistics.
    """
    from aaren_rl.agents.checkpoint import load_agent
    from aaren_rl.agents.decision_model import DecisionModelConfig, stretch_timesteps

    model, info = load_agent(path)
    wanted = DecisionModelConfig.from_dict(preset["model"], source=preset["source"]).to_dict()
    stored = model.config.to_dict()
    differ = sorted(k for k in wanted if k != "max_timestep" and wanted[k] != stored.get(k))
    if differ:
        detail = ", ".join(f"{k}: {stored.get(k)!r} there, {wanted[k]!r} here" for k in differ)
        raise ValueError(
            f"{path}: cannot fine-tune from this checkpoint, its model differs from "
            f"{preset['source']} in {detail}; use the same model settings"
        )
    if (model.obs_dim, model.act_dim) != (dataset.obs_dim, dataset.act_dim):
        raise ValueError(
            f"{path}: the checkpoint's model takes obs_dim={model.obs_dim}, act_dim="
            f"{model.act_dim} but the dataset has {dataset.obs_dim} and {dataset.act_dim}; "
            "fine-tune on a dataset of the same task family"
        )
    stretch_timesteps(model, int(wanted["max_timestep"]))
    model.train()
    return model


def _write_yaml_atomic(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomic(path, yaml.safe_dump(payload, sort_keys=False))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent", default="decision-aaren", help="agent preset name or .yaml path")
    parser.add_argument("--task", required=True, help="task preset name (envs/*.yaml) or path")
    parser.add_argument("--steps", type=int, default=None, help="total optimiser steps")
    parser.add_argument(
        "--seed", type=seed_value, default=None, help="seed (default: the preset's)"
    )
    parser.add_argument("--out", default=None, help="output folder (runs/AGENT/TASK/seedS)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="CHECKPOINT",
        help="fine-tune: start from another run's weights (same model settings; a different "
        "model.max_timestep stretches its timestep table)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda:0")
    parser.add_argument(
        "--protocol", default=None, help="a preset's protocols.NAME override set (e.g. cpu)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one preset value, e.g. --set train.batch_size=32 (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    try:
        result = run_training(
            args.agent,
            args.task,
            out_dir=args.out,
            steps=args.steps,
            seed=args.seed,
            device=args.device,
            resume=args.resume,
            protocol=args.protocol,
            overrides=parse_overrides(args.overrides),
            progress=not args.no_progress,
            init_from=args.init_from,
        )
    except (FileNotFoundError, FileExistsError, ValueError, CheckpointError) as exc:
        print(f"aaren-rl train: error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"aaren-rl train: stopped: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # SIGINT or SIGTERM: see aaren_rl.cli.interrupted_exit
        return interrupted_exit("train", exc)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained steps {result.start_step}..{result.end_step} -> {result.out_dir}")
        for rec in result.evaluations:
            if rec.step == result.end_step:
                print(
                    f"  target {rec.target_return:g}: return {rec.mean_return:.1f} "
                    f"± {rec.std_return:.1f}, normalised {rec.normalized_mean:.1f} "
                    f"± {rec.normalized_std:.1f}"
                )
    return 0
