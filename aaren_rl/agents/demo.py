"""``aaren-rl demo``: the README's main job, in a few minutes on a CPU.

1. trains Decision Aaren (``agents/decision-aaren.yaml``, protocol ``demo``) on the shipped
   ``hopper-medium-small`` dataset, resuming from ``OUT/train`` if a run is there;
2. rolls it out on Hopper-v5 with a constant-memory recurrent state per environment
   (``evaluate_agent``) and reports the D4RL-normalised score;
3. times one environment step (act + observe_action) at t = 1 .. 1000 for Aaren's
   ``FastDecisionStep`` (what the rollout runs: fused weights, numba-compiled on CPU) and the
   model's own recurrent step, against Decision Transformer's window recompute and a
   full-attention KV cache of the same width, with the state bytes each keeps per environment;
4. prints a table and writes ``OUT/demo.json`` and ``OUT/demo.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from aaren_rl.cli import add_threads_argument, apply_threads
from aaren_rl.files import save_figure_atomic

DEFAULT_TASK = "hopper-medium-small"
DEFAULT_OUT = Path("runs") / "demo"
MARKER = "aaren-rl demo"

# label -> (agent preset whose model is timed, overrides of its model section, fast step)
STEP_COSTS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "Aaren, FastDecisionStep": ("decision-aaren", {}, True),
    "Aaren, the model's own step": ("decision-aaren", {}, False),
    "Transformer, DT window recompute": (
        "decision-transformer",
        {"step_mode": "recompute"},
        False,
    ),
    "Transformer, full KV cache": (
        "decision-transformer",
        {"step_mode": "kv_cache", "full_attention": True},
        False,
    ),
}


def _check_outputs_are_ours(out: Path) -> None:
    """Refuse to replace files in ``out`` that an earlier demo did not write."""
    report, plot = out / "demo.json", out / "demo.png"
    if report.exists():
        try:
            ours = json.loads(report.read_text()).get("written_by") == MARKER
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise FileExistsError(
                f"{report}: exists and was not written by `aaren-rl demo`; "
                "pass another --out or move the file"
            )
    elif plot.exists():
        raise FileExistsError(
            f"{plot}: exists and was not written by `aaren-rl demo`; pass another --out"
        )


def step_costs(
    trained: Any, obs_dim: int, act_dim: int, n_steps: int, device: Any, seed: int
) -> dict[str, dict[str, Any]]:
    """Per-step latency (ms) and state bytes per env over t = 1 .. n_steps, for each model.

    The trained Aaren model is timed as is, through :class:`FastDecisionStep` (the rollout's
    step; ``"backend"`` says numba or torch) and through its own step; the Transformer variants
    are built at the width of the decision-transformer preset (their cost does not depend on
    their weights).
    """
    import torch

    from aaren_rl.agents.decision_model import build_decision_model
    from aaren_rl.agents.rollout import profile_steps
    from aaren_rl.agents.train_cli import resolve_agent

    results = {}
    for label, (preset, model_overrides, fast) in STEP_COSTS.items():
        if preset == "decision-aaren":
            model = trained
        else:
            config = resolve_agent(preset)["model"] | model_overrides
            torch.manual_seed(seed)
            model = build_decision_model(config, obs_dim, act_dim).to(device)
        # warm-up (the numba step compiles at its first call)
        profile_steps(model, n_steps=min(5, n_steps), seed=seed, device=device, fast_step=fast)
        prof = profile_steps(model, n_steps=n_steps, seed=seed, device=device, fast_step=fast)
        lat, nbytes = prof.latency_ms, prof.state_bytes_per_env
        first, last = prof.at(min(10, n_steps)), prof.at(n_steps)
        results[label] = {
            "backend": _backend(model, fast),
            "ms_per_step_first10": first[0],
            "ms_per_step_last10": last[0],
            "state_bytes_t1": int(nbytes[0]),
            "state_bytes_last": int(nbytes[-1]),
            "latency_ms": [round(float(x), 4) for x in lat],
            "state_bytes_per_env": [int(x) for x in nbytes],
        }
    return results


def _backend(model: Any, fast: bool) -> str:
    """What ``profile_steps(model, fast_step=fast)`` runs: "numba", "torch" or "model"."""
    from aaren_rl.agents.rollout import rollout_policy

    policy = rollout_policy(model, fast)
    return getattr(policy, "active_backend", "model")


def write_plot(path: Path, costs: dict[str, dict[str, Any]], title: str) -> Path:
    """Two panels against t: ms per environment step, and state bytes per environment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aaren_rl.plots import readable_log_axes

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.4))
    for label, c in costs.items():
        name = f"{label} ({c['backend']})" if c.get("backend") not in (None, "model") else label
        lat = np.asarray(c["latency_ms"])
        t = np.arange(1, len(lat) + 1)
        k = max(1, min(25, len(lat) // 20))
        smooth = np.convolve(lat, np.ones(k) / k, mode="valid")
        ax_t.plot(t[k - 1 :], smooth, label=name)
        ax_m.plot(t, np.asarray(c["state_bytes_per_env"]) / 1024, label=name)
    ax_t.set(
        xlabel="environment step t",
        ylabel="ms per step, batch of 1 (moving mean)",
        title="time per step: Aaren backbone vs Transformer backbone",
    )
    ax_m.set(
        xlabel="environment step t",
        ylabel="state KiB per environment",
        title="memory per environment",
    )
    for ax in (ax_t, ax_m):
        ax.set_yscale("log")
        readable_log_axes(ax)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="training steps (preset: 300)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (runs/demo)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda:0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", default=DEFAULT_TASK, help="task preset or .yaml path")
    parser.add_argument("--episodes", type=int, default=5, help="evaluation episodes")
    parser.add_argument("--envs", type=int, default=5, help="parallel environments")
    parser.add_argument(
        "--profile-steps", type=int, default=1000, help="t = 1..N for the timing (1000)"
    )
    add_threads_argument(parser, default=1)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:

    from aaren_rl.agents.checkpoint import CheckpointError
    from aaren_rl.agents.rollout import describe_rollout_step, evaluate_agent
    from aaren_rl.agents.train_cli import run_training
    from aaren_rl.agents.trainer import task_to_dict, write_json_atomic
    from aaren_rl.data.tasks import load_task

    apply_threads(args.threads)
    out = Path(args.out)
    try:
        _check_outputs_are_ours(out)
        task = load_task(args.task)
        print(f"[1/3] training Decision Aaren on {task.name} ({out / 'train'})", flush=True)
        t0 = time.perf_counter()
        trained = run_training(
            "decision-aaren",
            task,
            out_dir=out / "train",
            steps=args.steps,
            seed=args.seed,
            device=args.device,
            resume=True,
            protocol="demo",
            progress=not args.no_progress,
        )
    except (FileNotFoundError, FileExistsError, ValueError, CheckpointError) as exc:
        print(f"aaren-rl demo: error: {exc}", file=sys.stderr)
        return 2
    train_s = time.perf_counter() - t0
    model = trained.model.eval()
    device = next(model.parameters()).device
    target = float(task.target_returns[0])
    print(
        f"[2/3] rolling out {args.episodes} episodes in {args.envs} {task.env_id} envs "
        f"(target return {target:g})",
        flush=True,
    )
    print(describe_rollout_step(model, True, "evaluate_agent(..., fast_step=False)"), flush=True)
    res = evaluate_agent(
        model,
        task.env_id,
        target_return=target,
        n_episodes=args.episodes,
        n_envs=min(args.envs, args.episodes),
        seed=args.seed + 10_000,
        device=device,
        max_episode_steps=task.max_episode_steps,
    )
    scores = np.asarray(task.normalized_score(np.asarray(res.returns)), dtype=float)
    print(f"[3/3] timing one env step at t = 1..{args.profile_steps}", flush=True)
    costs = step_costs(model, model.obs_dim, model.act_dim, args.profile_steps, device, args.seed)

    score_line = (
        f"normalised score {scores.mean():.1f} ± {scores.std():.1f} "
        f"(return {res.mean_return:.0f} ± {res.std_return:.0f}, {len(scores)} episodes, "
        f"mean length {np.mean(res.lengths):.0f}; references {task.reference_source})"
    )
    n = args.profile_steps
    print()
    print(f"Decision Aaren on {task.name}, {trained.end_step} training steps: {score_line}")
    print(
        f"rollout: {res.step_latency_ms:.2f} ms per vector step for {res.n_envs} envs, "
        f"state {res.state_bytes_per_env_first} B/env at step 1 and "
        f"{res.state_bytes_per_env_last} B/env at the last step"
    )
    header = f"{'one env step, batch of 1':42s} {'ms t<=10':>9s} {f'ms t~{n}':>9s}"
    header += f" {'state B t=1':>12s} {f'state B t={n}':>13s}"
    print(header)
    for label, c in costs.items():
        name = f"{label} ({c['backend']})" if c["backend"] != "model" else label
        print(
            f"{name:42s} {c['ms_per_step_first10']:9.3f} {c['ms_per_step_last10']:9.3f} "
            f"{c['state_bytes_t1']:12d} {c['state_bytes_last']:13d}"
        )

    report = {
        "written_by": MARKER,
        "task": task_to_dict(task),
        "train": {
            "dir": str(out / "train"),
            "steps": trained.end_step,
            "seconds_this_call": train_s,
            "final_loss": trained.losses[-1] if trained.losses else None,
        },
        "evaluation": res.summary()
        | {
            "normalized_scores": scores.tolist(),
            "normalized_mean": float(scores.mean()),
            "normalized_std": float(scores.std()),
        },
        "step_costs": costs,
        "device": str(device),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "demo.json", report)
    title = f"Decision Aaren on {task.name}: {score_line}"
    write_plot(out / "demo.png", costs, title)
    print(f"wrote {out / 'demo.json'} and {out / 'demo.png'}")
    return 0
