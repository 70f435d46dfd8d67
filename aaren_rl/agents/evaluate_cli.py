"""``aaren-rl evaluate CHECKPOINT``: roll a trained decision agent out in vector environments.

It rebuilds the model from the checkpoint alone (no dataset needed), plays ``--episodes``
episodes in ``--envs`` environments side by side for each target return (the task's, or
``--target-return``), and prints the return, the normalised score, the model's time per step
and the memory per environment. ``--json`` also writes the numbers to a file.

``--task`` plays another task than the one the checkpoint was trained on (its environment,
episode limit, targets and reference scores), e.g. a longer T-maze; ``--stretch-timesteps``
then resizes the model's timestep table to that task's episode length by interpolation
(:func:`~aaren_rl.agents.decision_model.stretch_timesteps`, as ``aaren-rl train --init-from``
does), so a model trained on 100-step episodes runs 1000-step ones with every step at the same
relative place (the length curriculum of docs/memory.md, zero-shot).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from aaren_rl.cli import add_threads_argument, apply_threads


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", help="checkpoint.pt written by `aaren-rl train` (or its folder)"
    )
    parser.add_argument("--episodes", type=int, default=10, help="episodes per target (10)")
    parser.add_argument("--envs", type=int, default=1, help="environments stepped together (1)")
    parser.add_argument(
        "--target-return",
        type=float,
        action="append",
        dest="target_returns",
        metavar="R",
        help="return to condition on, unscaled; repeat for several (default: the task's)",
    )
    parser.add_argument(
        "--clip-return",
        action="store_true",
        help="clip the return-to-go at the largest one in the training data (model.clip_return)",
    )
    parser.add_argument("--seed", type=int, default=0, help="env i is seeded with seed + i (0)")
    parser.add_argument(
        "--task",
        default=None,
        help="play this task preset (name or .yaml path) instead of the checkpoint's own",
    )
    parser.add_argument(
        "--stretch-timesteps",
        action="store_true",
        help="resize the timestep table to the task's episode length by interpolation (a model "
        "trained on shorter episodes, e.g. T-maze L=100 played at L=1000)",
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)"
    )
    parser.add_argument(
        "--max-episode-steps",
        type=int,
        default=None,
        help="time limit per episode (default: the task's)",
    )
    parser.add_argument(
        "--autoreset-mode",
        choices=("NextStep", "SameStep"),
        default="NextStep",
        help="Gymnasium vector autoreset mode (both give the same episodes)",
    )
    parser.add_argument(
        "--reference-step",
        action="store_true",
        help="step Aaren with the model's own act/observe_action instead of FastDecisionStep "
        "(same actions within float32 rounding, several times slower)",
    )
    parser.add_argument(
        "--vectorization",
        choices=("sync", "async", "overlap"),
        default="sync",
        help="sync: one process; async: gymnasium's process per env; overlap: the envs in "
        "--workers + 1 groups (one here, one per worker process), each group's policy computed "
        "while the others simulate (same episodes as sync; see docs/performance.md)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes for --vectorization overlap (default 1: with this process, one "
        "per core of a 2-core machine)",
    )
    add_threads_argument(parser)
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        metavar="T",
        help="also step the model T times on random inputs (no env) and print ms/step and "
        "state bytes/env at t = 1, 10, 100, 1000, T (shows constant memory over long episodes)",
    )
    parser.add_argument(
        "--sample",
        action="store_true",
        help="discrete actions: draw from the model's softmax (seeded) instead of the argmax",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def normalized(returns: np.ndarray, task: dict[str, Any]) -> np.ndarray | None:
    """D4RL-style ``100 (return - random) / (expert - random)`` with the task's references."""
    refs = task.get("reference_scores")
    if isinstance(refs, dict):  # a raw table {"name": [lo, hi], "use": name}
        refs = refs.get(refs.get("use") or task.get("reference_source"))
    if refs is None or len(refs) != 2 or float(refs[1]) == float(refs[0]):
        return None
    low, high = float(refs[0]), float(refs[1])
    return 100.0 * (np.asarray(returns, dtype=np.float64) - low) / (high - low)


def write_json_atomic(path: Path, payload: Any, force: bool) -> None:
    """Write JSON to ``path`` atomically (``trainer.write_json_atomic``); never clobber unasked."""
    from aaren_rl.agents.trainer import write_json_atomic as write_atomic

    if path.exists() and not force:
        raise FileExistsError(f"{path}: already exists; pass --force to overwrite it")
    write_atomic(path, payload)


def _fmt_bytes(n: int) -> str:
    return f"{n} B" if n < 10_000 else f"{n / 1024:.1f} KiB"


def run(args: argparse.Namespace) -> int:
    import torch

    from aaren_rl.agents.checkpoint import CheckpointError, load_agent
    from aaren_rl.agents.rollout import describe_rollout_step, evaluate_agent, profile_steps

    if args.episodes < 1 or args.envs < 1:
        print("error: --episodes and --envs must be >= 1", file=sys.stderr)
        return 2
    if args.json is not None and args.json.exists() and not args.force:
        print(f"error: {args.json}: already exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    apply_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model, info = load_agent(args.checkpoint, device=device)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.clip_return:
        if not torch.isfinite(model.return_max):
            print(
                f"error: {args.checkpoint}: the checkpoint has no return_max to clip at (written "
                "before model.return_max existed); retrain it, or leave out --clip-return",
                file=sys.stderr,
            )
            return 2
        model.config.clip_return = True
    task = info.get("task") or {}
    if args.task is not None:
        from aaren_rl.agents.trainer import task_to_dict
        from aaren_rl.data.tasks import load_task

        try:
            task = task_to_dict(load_task(args.task))
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: --task {args.task}: {exc}", file=sys.stderr)
            return 2
    if args.stretch_timesteps:
        from aaren_rl.agents.decision_model import stretch_timesteps

        n_rows = args.max_episode_steps or task.get("max_episode_steps")
        if not n_rows:
            print(
                f"error: --stretch-timesteps: task {task.get('name')!r} gives no "
                "max_episode_steps; pass --max-episode-steps",
                file=sys.stderr,
            )
            return 2
        before = model.config.max_timestep
        stretch_timesteps(model, int(n_rows))
        print(f"timestep table stretched from {before} to {int(n_rows)} rows")
    env_id = task.get("env_id")
    if not env_id:
        print(f"error: {args.checkpoint}: the checkpoint's task has no env_id", file=sys.stderr)
        return 2
    targets = args.target_returns or list(task.get("target_returns") or [])
    if not targets:
        print(
            f"error: {args.checkpoint}: the task gives no target_returns; pass --target-return",
            file=sys.stderr,
        )
        return 2
    max_steps = args.max_episode_steps or task.get("max_episode_steps")
    cfg = info.get("model_config") or {}
    print(
        f"{info.get('path')}: {cfg.get('backbone')} agent, step {info.get('step')}, "
        f"task {task.get('name')} ({env_id}), {args.episodes} episodes x {args.envs} envs, "
        f"device {device}"
        + (f", returns-to-go clipped at {float(model.return_max):.1f}" if args.clip_return else "")
    )
    print(describe_rollout_step(model, not args.reference_step, "--reference-step"), flush=True)

    rows = []
    try:
        for target in targets:
            res = evaluate_agent(
                model,
                env_id,
                target_return=float(target),
                n_episodes=args.episodes,
                n_envs=args.envs,
                seed=args.seed,
                device=device,
                max_episode_steps=max_steps,
                autoreset_mode=args.autoreset_mode,
                progress=not args.no_progress,
                fast_step=not args.reference_step,
                sample=args.sample,
                vectorization_mode=args.vectorization,
                n_workers=args.workers,
            )
            row = res.summary()
            scores = normalized(res.returns, task)
            row["normalized_mean"] = None if scores is None else float(scores.mean())
            row["normalized_std"] = None if scores is None else float(scores.std())
            rows.append(row)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    header = (
        f"{'target':>8} {'return':>19} {'normalised':>15} {'length':>7} "
        f"{'model ms/step':>13} {'env ms/step':>11} {'state/env t=1 -> end':>22}"
    )
    print(header)
    for row in rows:
        norm = (
            "n/a"
            if row["normalized_mean"] is None
            else f"{row['normalized_mean']:.1f} ± {row['normalized_std']:.1f}"
        )
        state = (
            f"{_fmt_bytes(row['state_bytes_per_env_first'])} -> "
            f"{_fmt_bytes(row['state_bytes_per_env_last'])}"
        )
        print(
            f"{row['target_return']:>8.0f} "
            f"{row['mean_return']:>9.1f} ± {row['std_return']:<7.1f} {norm:>15} "
            f"{np.mean(row['lengths']):>7.1f} {row['step_latency_ms']:>13.3f} "
            f"{row['env_step_latency_ms']:>11.3f} {state:>22}"
        )
    profile = None
    if args.profile_steps > 0:
        prof = profile_steps(
            model,
            args.profile_steps,
            n_envs=args.envs,
            seed=args.seed,
            fast_step=not args.reference_step,
        )
        marks = sorted(
            {t for t in (1, 10, 100, 1000) if t <= args.profile_steps} | {args.profile_steps}
        )
        print(
            f"step profile ({args.envs} envs, random inputs; ms = median of the 10 steps up to t)"
        )
        print(f"{'t':>8} {'model ms/step':>13} {'state/env':>12}")
        profile = []
        for t in marks:
            ms, nbytes = prof.at(t)
            profile.append({"t": t, "step_latency_ms": ms, "state_bytes_per_env": nbytes})
            print(f"{t:>8} {ms:>13.3f} {_fmt_bytes(nbytes):>12}")
    if args.json is not None:
        payload = {
            "checkpoint": info.get("path"),
            "step": info.get("step"),
            "task": task.get("name"),
            "env_id": env_id,
            "model_config": cfg,
            "device": str(device),
            "seed": args.seed,
            "results": rows,
            "profile": profile,
        }
        write_json_atomic(args.json, payload, force=args.force)
        print(f"wrote {args.json}")
    return 0
