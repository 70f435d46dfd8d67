"""Learning curves of Decision Aaren and Decision Transformer on the CPU; a table and a plot.

    python scripts/offline_curves.py --tasks hopper-medium walker2d-medium --seeds 0 --threads 1

Each (task, seed, agent) trains with the agent preset's ``cpu-curve`` protocol (10,000 steps,
evaluation every 2,500 steps, 10 episodes per target return) into
``RUNS/<protocol>-<steps>steps/<task>/<agent>/seed<seed>``. The script is resumable: a
finished run is skipped, an interrupted one continues exactly from its checkpoint when the same
command runs again; each call's wall time is appended to the run's ``wall.jsonl``. At the end
it reads every run's ``eval.jsonl`` and writes

- the table between ``<!-- curves:begin -->`` and ``<!-- curves:end -->`` in ``--doc``
  (docs/results.md), with this command, the machine and the versions;
- the plot ``--plot``: normalised score against training steps for every agent and task, with
  the 1,500-step GPU runs of the same agents (docs/results/gpu-1500steps), the dataset's own
  normalised mean and the published Decision Transformer scores marked for reference.

``--no-train`` only renders what has finished or stopped so far. Two calls can share a 2-core
machine, one agent each (``--agents decision-aaren --train-only`` beside ``--agents
decision-transformer --train-only``); a last ``--no-train`` call renders both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import finished_metrics, run_dir  # noqa: E402 (the shared run layout)

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- curves:begin -->", "<!-- curves:end -->"
DEFAULT_AGENTS = ["decision-aaren", "decision-transformer"]
# Decision Aaren's packed prefixes per batch on each task, by one rule fixed before the runs:
# the largest batch whose update costs no more than DT's 64 windows and holds at least as many
# action targets (scripts/offline_update_cost.py --prefixes N; docs/results.md). Other tasks
# take the preset's (8).
PREFIX_BATCH = {"hopper-medium": 8, "walker2d-medium": 4}
NAMES = {"decision-aaren": "Decision Aaren", "decision-transformer": "Decision Transformer"}
COLOURS = {"decision-aaren": "tab:blue", "decision-transformer": "tab:orange"}
# Decision Transformer's published D4RL scores (Chen et al. 2021, table 2; medium datasets of
# MuJoCo v2, 100k updates): context only, the datasets here are rebuilt on MuJoCo v5.
PUBLISHED_DT = {"hopper-medium": 67.6, "halfcheetah-medium": 42.6, "walker2d-medium": 74.0}
GPU_POINTS = REPO / "docs" / "results"  # the 1,500-step runs of docs/results.md
# The normalised mean return of each local 1M-transition dataset (the datasets table of
# docs/results.md, from make-dataset's summary): the level of the data the agents imitate.
DATASET_MEAN = {"hopper-medium": 35.3, "walker2d-medium": 28.1, "halfcheetah-medium": 35.0}


def eval_points(run: Path) -> dict[int, dict[str, Any]]:
    """``step -> record`` of the run's evaluations at its first target return (the last record
    of a step wins: a step evaluated again after a resume is counted once)."""
    points: dict[int, dict[str, Any]] = {}
    file = run / "eval.jsonl"
    if not file.is_file():
        return points
    records = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    if not records:
        return points
    first_target = records[0]["target_return"]
    for rec in records:
        if rec["target_return"] == first_target:
            points[int(rec["step"])] = rec
    return points


def wall_seconds(run: Path) -> float:
    """Sum of the wall times of every call that trained this run (``wall.jsonl``)."""
    file = run / "wall.jsonl"
    if not file.is_file():
        return 0.0
    return sum(json.loads(x)["seconds"] for x in file.read_text().splitlines() if x.strip())


def train_one(task: Any, agent: str, seed: int, args: argparse.Namespace, data: Any) -> Path:
    """Train, resume or skip one run; returns its folder."""
    from aaren_rl.agents.train_cli import resolve_agent, run_training
    from aaren_rl.files import write_text_atomic

    overrides = {}
    if agent == "decision-aaren" and task.name in PREFIX_BATCH:
        overrides["train.batch_size"] = PREFIX_BATCH[task.name]
    resolved = resolve_agent(agent, protocol=args.protocol, overrides=overrides)
    steps = args.steps or int(resolved["train"]["steps"])
    episodes = int(resolved["train"]["eval_episodes"])
    out = run_dir(args.runs, args.protocol, steps, task.name, agent, seed)
    if finished_metrics(out, steps, episodes) is not None:
        print(f"skip  {task.name} {agent} seed {seed}: finished ({out})", flush=True)
        return out
    if args.no_train:
        print(f"miss  {task.name} {agent} seed {seed}: not finished ({out})", flush=True)
        return out
    print(f"train {task.name} {agent} seed {seed} to {steps} steps -> {out}", flush=True)
    t0 = time.perf_counter()
    result = run_training(
        agent,
        task,
        out_dir=out,
        steps=steps,
        seed=seed,
        device=args.device,
        resume=True,
        protocol=args.protocol,
        overrides=overrides,
        progress=not args.no_progress,
        dataset=data,
    )
    segment = {
        "from_step": result.start_step,
        "to_step": result.end_step,
        "seconds": round(time.perf_counter() - t0, 1),
        "threads": args.threads,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    wall = out / "wall.jsonl"
    previous = wall.read_text() if wall.is_file() else ""
    write_text_atomic(wall, previous + json.dumps(segment) + "\n")
    return out


def gpu_point(task: str, agent: str) -> tuple[float, float, int] | None:
    """(mean, std over seeds, n) of the 1,500-step GPU runs at the task's first target."""
    scores = []
    for run in sorted((GPU_POINTS / "gpu-1500steps" / task / agent).glob("seed*")):
        metrics = finished_metrics(run, 1500, 10)
        if metrics is not None:
            scores.append(metrics["final_eval"][0]["normalized_mean"])
    if not scores:
        return None
    return float(np.mean(scores)), float(np.std(scores)), len(scores)


def render(runs: dict[tuple[str, str], list[Path]], args: argparse.Namespace) -> str:
    """The markdown table: normalised score at every evaluated step, per task and agent."""
    steps = sorted({s for paths in runs.values() for p in paths for s in eval_points(p)})
    head = (
        "| task | agent | seeds | "
        + " | ".join(f"{s:,} steps" for s in steps)
        + " | GPU, 1,500 steps (3 seeds) | published DT | wall time per run |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for (task, agent), paths in runs.items():
        cells = []
        for s in steps:
            vals = [eval_points(p)[s]["normalized_mean"] for p in paths if s in eval_points(p)]
            if not vals:
                cells.append("")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.1f}")
            else:
                cells.append(f"{np.mean(vals):.1f} ± {np.std(vals):.1f}")
        gpu = gpu_point(task, agent)
        walls = [wall_seconds(p) for p in paths]
        rows.append(
            f"| {task} | {agent} | {len(paths)} | "
            + " | ".join(cells)
            + f" | {'' if gpu is None else f'{gpu[0]:.1f} ± {gpu[1]:.1f}'}"
            + f" | {PUBLISHED_DT.get(task, '') if agent == 'decision-transformer' else ''}"
            + f" | {', '.join(f'{w / 3600:.2f} h' for w in walls)} |"
        )
    return "\n".join(rows)


def plot(runs: dict[tuple[str, str], list[Path]], path: Path, title: str) -> None:
    """One panel per task: each agent's mean curve (seeds as thin lines), its GPU point at
    1,500 steps, and the published DT score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aaren_rl.files import save_figure_atomic

    tasks = list(dict.fromkeys(task for task, _ in runs))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for (t, agent), paths in runs.items():
            if t != task:
                continue
            colour = COLOURS.get(agent)
            curves = [eval_points(p) for p in paths]
            for curve in curves:
                xs = sorted(curve)
                ax.plot(
                    xs, [curve[x]["normalized_mean"] for x in xs], color=colour, lw=0.7, alpha=0.4
                )
            common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if common:
                ax.plot(
                    common,
                    [np.mean([c[x]["normalized_mean"] for c in curves]) for x in common],
                    "o-",
                    color=colour,
                    label=f"{NAMES.get(agent, agent)}, CPU (seeds: {len(paths)})",
                )
            gpu = gpu_point(task, agent)
            if gpu is not None:
                ax.errorbar(
                    [1500],
                    [gpu[0]],
                    yerr=[gpu[1]],
                    fmt="s",
                    color=colour,
                    mfc="white",
                    capsize=3,
                    label=f"{NAMES.get(agent, agent)}, GPU batch 64 (3 seeds)",
                )
        if task in DATASET_MEAN:
            ax.axhline(
                DATASET_MEAN[task], color="0.4", ls=":", lw=1,
                label=f"the dataset's own mean: {DATASET_MEAN[task]}",
            )  # fmt: skip
        if task in PUBLISHED_DT:
            ax.axhline(
                PUBLISHED_DT[task],
                color="tab:orange",
                ls="--",
                lw=1,
                label=f"DT published, 100k updates (MuJoCo v2): {PUBLISHED_DT[task]}",
            )
        ax.set_title(f"{task} (MuJoCo v5 rebuild)", fontsize=10)
        ax.set_xlabel("training steps (updates)")
        ax.set_ylabel("D4RL-normalised score (first target return)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def write_block(doc: Path, block: str) -> None:
    """Replace the curves block of ``doc`` (or append one), atomically."""
    from aaren_rl.files import write_text_atomic

    text = doc.read_text()
    section = f"{BEGIN}\n{block}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    write_text_atomic(doc, text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["hopper-medium", "walker2d-medium"])
    p.add_argument("--agents", nargs="+", default=DEFAULT_AGENTS, help="agent presets")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--protocol", default="cpu-curve", help="the presets' protocol")
    p.add_argument("--steps", type=int, default=None, help="training steps (protocol's)")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "curves", help="run folders")
    p.add_argument("--doc", type=Path, default=REPO / "docs" / "results.md")
    p.add_argument(
        "--plot", type=Path, default=REPO / "docs" / "results" / "cpu-curves" / "curves.png"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-train", action="store_true", help="only render the runs so far")
    p.add_argument(
        "--train-only",
        action="store_true",
        help="train and stop without rendering (for parallel calls, one per agent; a last call "
        "with --no-train renders them all)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from aaren_rl.data.tasks import load_task

    command = "python scripts/offline_curves.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    runs: dict[tuple[str, str], list[Path]] = {}
    for task_name in args.tasks:
        task = load_task(task_name)
        data = None if args.no_train else task.load_dataset()
        for seed in args.seeds:
            for agent in args.agents:
                out = train_one(task, agent, seed, args, data)
                runs.setdefault((task.name, agent), []).append(out)
    if args.train_only:
        return 0
    runs = {k: [p for p in v if eval_points(p)] for k, v in runs.items()}
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        print("no run has an evaluation yet")
        return 0
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = "\n".join(
        [
            f"Made by `{command}` on {stamp} ({platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}, {args.threads} thread(s) per run); protocol "
            f"`{args.protocol}`; normalised score at each task's first target return, "
            "10 episodes per evaluation (mean ± std over seeds where there are several).",
            "",
            render(runs, args),
            "",
            f"![learning curves]({os.path.relpath(args.plot, args.doc.parent)})",
        ]
    )
    plot(runs, args.plot, f"Decision Aaren vs Decision Transformer, protocol {args.protocol}")
    write_block(args.doc, block)
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
