"""Train and evaluate Decision Aaren against Decision Transformer; write the table into the docs.

    python scripts/results.py --tasks hopper-medium halfcheetah-medium walker2d-medium \\
        --seeds 0 1 2 --protocol cpu

Every (task, agent, seed) trains with the same protocol and number of steps into
``RUNS/<protocol>-<steps>steps/<task>/<agent>/seed<seed>`` and is evaluated at the end on
every target return of the task. The script is resumable: a finished run (its metrics.json)
is skipped, an interrupted one resumes from its checkpoint. At the end it replaces the block
between ``<!-- results:begin -->`` and ``<!-- results:end -->`` in the doc (docs/results.md)
with the tables and the exact command that made them; the rest of the doc is left as it is.

Agents are preset names, optionally with ``@SAMPLER`` to change the training sequences:
``decision-aaren`` (episode prefixes, its preset), ``decision-aaren@window`` (DT's random
windows with DT's batch size, to measure what prefix training buys), ``decision-transformer``.
``+merged`` after the preset name folds the return-to-go into the state token
(``model.return_token: merged``): ``decision-aaren+merged``, ``decision-transformer+merged``.
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

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
DEFAULT_AGENTS = ["decision-aaren", "decision-aaren@window", "decision-transformer"]
REPO = Path(__file__).resolve().parent.parent
WINDOW_BATCH_FROM = "decision-transformer"  # an @window variant trains with DT's batch size


def parse_agent(spec: str) -> tuple[str, str | None, str, bool]:
    """``"decision-aaren+merged@window"`` -> (preset, sampler override, label for paths and
    tables, whether ``+merged`` was given)."""
    preset, _, sampler = spec.partition("@")
    if sampler and sampler not in ("window", "prefix", "full"):
        raise ValueError(f"agent {spec!r}: sampler after '@' must be window, prefix or full")
    preset, plus, flag = preset.partition("+")
    if plus and flag != "merged":
        raise ValueError(f"agent {spec!r}: the only flag after '+' is merged")
    stem = Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset
    label = f"{stem}-merged" if flag else stem
    return preset, sampler or None, f"{label}-{sampler}" if sampler else label, bool(flag)


def agent_overrides(spec: str, protocol: str | None) -> tuple[str, dict[str, Any], str]:
    """(preset, preset overrides, label) of an agent spec (see the module docstring)."""
    from aaren_rl.agents.train_cli import resolve_agent

    preset, sampler, label, merged = parse_agent(spec)
    overrides: dict[str, Any] = {}
    if merged:
        overrides["model.return_token"] = "merged"
    if sampler:
        overrides["train.sampler"] = sampler
    if sampler == "window":  # DT's recipe for the sequences: its windows and its batch size
        baseline = resolve_agent(WINDOW_BATCH_FROM, protocol=protocol)
        overrides["train.batch_size"] = int(baseline["train"]["batch_size"])
    return preset, overrides, label


def protocol_dir(root: Path, protocol: str | None, steps: int) -> Path:
    """The folder of every run of one protocol and step count (and of their score plot)."""
    return root / f"{protocol or 'published'}-{steps}steps"


def run_dir(root: Path, protocol: str, steps: int, task: str, label: str, seed: int) -> Path:
    return protocol_dir(root, protocol, steps) / task / label / f"seed{seed}"


def finished_metrics(path: Path, steps: int, episodes: int) -> dict[str, Any] | None:
    """The run's metrics.json if it finished ``steps`` with ``episodes`` evaluation episodes."""
    file = path / "metrics.json"
    if not file.is_file():
        return None
    try:
        metrics = json.loads(file.read_text())
    except ValueError:
        return None
    final = metrics.get("final_eval") or []
    if metrics.get("step") != steps or not final:
        return None
    if any(len(rec.get("returns", [])) != episodes for rec in final):
        return None
    return metrics


def train_one(
    agent: str,
    task_name: str,
    seed: int,
    args: argparse.Namespace,
    dataset_cache: dict[str, Any],
) -> dict[str, Any] | None:
    """Train (or resume, or skip) one run; its metrics.json content (None: --no-train)."""
    from aaren_rl.agents.train_cli import resolve_agent, run_training
    from aaren_rl.data.tasks import load_task

    if task_name not in dataset_cache:
        dataset_cache[task_name] = [load_task(task_name), None]
    spec = dataset_cache[task_name][0]
    preset, overrides, label = agent_overrides(agent, args.protocol)
    overrides.update({"train.eval_episodes": args.eval_episodes, "train.eval_every": 0})
    resolved = resolve_agent(preset, protocol=args.protocol, overrides=overrides)
    steps = args.steps if args.steps is not None else int(resolved["train"]["steps"])
    out = run_dir(args.runs, args.protocol, steps, spec.name, label, seed)
    done = finished_metrics(out, steps, args.eval_episodes)
    if done is not None:
        print(f"skip  {spec.name} {label} seed {seed}: finished ({out})", flush=True)
        return done
    if args.no_train:
        print(f"miss  {spec.name} {label} seed {seed}: not finished ({out})", flush=True)
        return None
    print(f"train {spec.name} {label} seed {seed} for {steps} steps -> {out}", flush=True)
    if dataset_cache[task_name][1] is None:
        dataset_cache[task_name][1] = spec.load_dataset()
    dataset = dataset_cache[task_name][1]
    t0 = time.perf_counter()
    run_training(
        preset,
        spec,
        out_dir=out,
        steps=steps,
        seed=seed,
        device=args.device,
        resume=True,
        protocol=args.protocol,
        overrides=overrides,
        progress=not args.no_progress,
        dataset=dataset,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["label"] = label
    metrics["wall_seconds"] = time.perf_counter() - t0
    from aaren_rl.agents.trainer import write_json_atomic

    write_json_atomic(out / "metrics.json", metrics)
    return metrics


def time_steps(args: argparse.Namespace, n_steps: int) -> str:
    """Seconds per training step of each agent on the first task (no files written)."""
    import torch

    from aaren_rl.agents.decision_model import build_decision_model
    from aaren_rl.agents.train_cli import resolve_agent
    from aaren_rl.agents.trainer import TrainConfig, Trainer, resolve_device, seed_everything
    from aaren_rl.data.tasks import load_task

    spec = load_task(args.tasks[0])
    dataset = spec.load_dataset()
    device = resolve_device(args.device)
    rows = [
        f"Seconds per training step on {spec.name} ({device}, {torch.get_num_threads()} threads, "
        f"protocol `{args.protocol or 'published'}`, median of {n_steps} after one warm-up):",
        "",
        "| agent | sampler | batch | s per step |",
        "|---|---|---|---|",
    ]
    for agent in args.agents:
        preset, overrides, label = agent_overrides(agent, args.protocol)
        resolved = resolve_agent(preset, protocol=args.protocol, overrides=overrides)
        seed_everything(0)
        model = build_decision_model(
            resolved["model"], dataset.obs_dim, dataset.act_dim, reward_scale=spec.reward_scale
        )
        cfg = TrainConfig.from_dict(resolved["train"])
        trainer = Trainer(model.to(device), dataset, spec, cfg, progress=False)
        trainer.train_step()
        times = []
        for _ in range(n_steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            trainer.train_step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        rows.append(f"| {label} | {cfg.sampler} | {cfg.batch_size} | {np.median(times):.3f} |")
    return "\n".join(rows)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    arr = np.asarray(values, dtype=float)
    return f"{arr.mean():.1f} ± {arr.std():.1f}"


def render_tables(results: dict[tuple[str, str], list[dict[str, Any]]], agents: list[str]) -> str:
    """Markdown: main table (each task's first target return) and one row per target."""
    labels = [parse_agent(a)[2] for a in agents]
    tasks = list(dict.fromkeys(task for task, _ in results))
    lines = [
        "Normalised score (100 = the reference expert, 0 = random), mean ± std over seeds of "
        "each seed's mean over its evaluation episodes, at the task's first target return.",
        "",
        "| task | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for task in tasks:
        row = [task]
        for label in labels:
            runs = results.get((task, label), [])
            scores = [r["final_eval"][0]["normalized_mean"] for r in runs if r.get("final_eval")]
            row.append(f"{_mean_std(scores)} (n={len(scores)})")
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Every target return (score and raw return: mean ± std over seeds; ms per vector step "
        "of the rollout; training wall time per run):",
        "",
        "| task | agent | target | normalised score | return | seeds | ms/step | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in tasks:
        for label in labels:
            runs = [r for r in results.get((task, label), []) if r.get("final_eval")]
            if not runs:
                continue
            for i, first in enumerate(runs[0]["final_eval"]):
                recs = [r["final_eval"][i] for r in runs if len(r["final_eval"]) > i]
                score = _mean_std([x["normalized_mean"] for x in recs])
                ret = _mean_std([x["mean_return"] for x in recs])
                ms = np.median([x["step_latency_ms"] for x in recs])
                train_s = np.mean([r.get("wall_seconds", np.nan) for r in runs])
                lines.append(
                    f"| {task} | {label} | {first['target_return']:g} | {score} | {ret} | "
                    f"{len(recs)} | {ms:.2f} | {train_s:.0f} |"
                )
    return "\n".join(lines)


def plot_scores(
    results: dict[tuple[str, str], list[dict[str, Any]]], agents: list[str], path: Path, title: str
) -> dict[str, list[float]]:
    """Grouped bars: each task's normalised score at its first target return, one bar per agent
    (mean over seeds, the error bar their std, each seed a dot), written atomically to ``path``.
    Returns the bar heights, ``{agent label: [mean per task]}`` (NaN where a task has no run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aaren_rl.files import save_figure_atomic

    labels = [parse_agent(a)[2] for a in agents]
    tasks = list(dict.fromkeys(task for task, _ in results))
    names = {
        "decision-aaren": "Decision Aaren (prefix training)",
        "decision-aaren-window": "Decision Aaren trained on DT windows",
        "decision-transformer": "Decision Transformer",
    }
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(tasks) + 2), 4.5))
    width = 0.8 / max(len(labels), 1)
    heights: dict[str, list[float]] = {}
    for j, label in enumerate(labels):
        x = np.arange(len(tasks)) + (j - (len(labels) - 1) / 2) * width
        per_task = [
            [r["final_eval"][0]["normalized_mean"] for r in results.get((t, label), [])]
            for t in tasks
        ]
        means = [np.mean(v) if v else np.nan for v in per_task]
        stds = [np.std(v) if v else 0.0 for v in per_task]
        heights[label] = [float(m) for m in means]
        ax.bar(x, means, width, yerr=stds, capsize=3, label=names.get(label, label))
        for xi, v in zip(x, per_task, strict=True):
            ax.plot([xi] * len(v), v, ".", color="0.2", ms=4)
    ax.set_xticks(np.arange(len(tasks)), [t.replace("-medium", "\nmedium") for t in tasks])
    ax.set_ylabel("D4RL-normalised score (first target return)")
    ax.set_xlabel("task (MuJoCo v5, D4RL recipe)")
    ax.set_title(title, fontsize=10)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)
    return heights


def write_doc(doc: Path, block: str) -> None:
    """Replace the marked block of ``doc`` (or append one), atomically."""
    from aaren_rl.files import write_text_atomic

    text = doc.read_text() if doc.exists() else "# Results\n"
    section = f"{BEGIN}\n{block}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    write_text_atomic(doc, text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["hopper-medium-small"], help="task presets")
    p.add_argument(
        "--agents", nargs="+", default=DEFAULT_AGENTS, help="PRESET[+merged][@SAMPLER] ..."
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="training steps (protocol's)")
    p.add_argument("--protocol", default="cpu", help="preset protocol; '' for the published one")
    p.add_argument("--eval-episodes", type=int, default=10, help="final evaluation episodes")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "results", help="run folders")
    p.add_argument("--doc", type=Path, default=REPO / "docs" / "results.md")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--no-train", action="store_true", help="only tabulate the runs that already finished"
    )
    p.add_argument(
        "--time-steps",
        type=int,
        default=0,
        metavar="N",
        help="only time N training steps of each agent on the first task, print, exit",
    )
    args = p.parse_args(argv)
    args.protocol = args.protocol or None
    if args.eval_episodes < 1:
        p.error("--eval-episodes must be >= 1")
    for agent in args.agents:
        try:
            parse_agent(agent)
        except ValueError as exc:
            p.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.time_steps > 0:
        print(time_steps(args, args.time_steps))
        return 0
    command = "python scripts/results.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    cache: dict[str, Any] = {}
    t0 = time.perf_counter()
    for task in args.tasks:
        for seed in args.seeds:
            for agent in args.agents:
                metrics = train_one(agent, task, seed, args, cache)
                name = cache[task][0].name
                runs = results.setdefault((name, parse_agent(agent)[2]), [])
                if metrics is not None:
                    runs.append(metrics)
    import torch

    steps = sorted({r["step"] for runs in results.values() for r in runs})
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = "\n".join(
        [
            f"Made by `{command}` on {stamp} ({platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}, device {args.device}); protocol "
            f"`{args.protocol or 'published'}`, {', '.join(map(str, steps))} training steps, "
            f"{args.eval_episodes} evaluation episodes per target, seeds {args.seeds}.",
            "",
            render_tables(results, args.agents),
        ]
    )
    write_doc(args.doc, block)
    if len(steps) == 1 and any(results.values()):
        plot = protocol_dir(args.runs, args.protocol, steps[0])
        plot_scores(
            {k: [r for r in v if r.get("final_eval")] for k, v in results.items()},
            args.agents,
            plot / "scores.png",
            f"Decision Aaren vs Decision Transformer: protocol {args.protocol or 'published'}, "
            f"{steps[0]} training steps, seeds {args.seeds}",
        )
        print(f"wrote {plot / 'scores.png'}")
    print(block)
    print(f"\nwrote {args.doc} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
