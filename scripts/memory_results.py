"""Memory tasks: Decision Aaren against DT (K=20) and a full-KV-cache Transformer on the T-maze.

    PYTHONPATH=. .venv/bin/python scripts/memory_results.py --lengths 20 100 --seeds 0 1 2 \\
        --steps 400 --threads 1

For every corridor length L the script builds the T-maze dataset (aaren-rl
make-memory-dataset's behaviour mix, seed 0, the same file for every agent), trains every agent
with every seed on it for the same number of optimiser steps and the same batch (in sequences),
then measures on the trained model:

- success: the fraction of ``--eval-episodes`` T-maze episodes won, conditioned on return 1
  (greedy actions);
- memory per env: the rollout state's bytes per environment at the episode's last step
  (``state_nbytes``; Aaren's is constant, a full KV cache grows by one key and value per token
  and layer, DT's recompute window is bounded);
- time per step at the last step: the median over the last 10 steps of a one-env rollout of
  ``L + 1`` steps (``profile_steps``, one thread), side by side in one process.

Agents (``--agents``): ``aaren`` (Decision Aaren, trained on whole episodes from t = 0, the
prefix sampler's ``full`` mode: the turn is the episode's last step, so a random-length prefix
would hold it only once in L + 1 draws), ``dt`` (Decision Transformer: K = 20 windows, window
recompute at rollout), ``kv`` (the Transformer with full attention and a KV cache, whole
episodes like Aaren) and the Aaren variants ``aaren-heads4``, ``aaren-merged`` (return token
merged into the state token) and ``aaren-deep`` (4 layers).

The script is resumable: a finished run keeps its ``run.json`` (under ``--work``, with the
datasets and checkpoints) and is skipped. After every run it writes, over every finished run
under ``--work`` (this call's and earlier ones'), ``OUT/memory-results.json``,
``OUT/memory-results.md`` (the tables and every command that made them) and
``OUT/memory-results.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SMALL_MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 1, "dropout": 0.0}
AGENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "aaren": ("decision-aaren", {"train.sampler": "full"}),
    "dt": ("decision-transformer", {"train.sampler": "window", "model.step_mode": "recompute"}),
    "kv": (
        "decision-transformer",
        {"train.sampler": "full", "model.full_attention": True, "model.step_mode": "kv_cache"},
    ),
    "aaren-heads4": ("decision-aaren", {"train.sampler": "full", "model.n_heads": 4}),
    "aaren-merged": ("decision-aaren", {"train.sampler": "full", "model.return_token": "merged"}),
    "aaren-deep": ("decision-aaren", {"train.sampler": "full", "model.n_layers": 4}),
}
LABELS = {
    "aaren": "Decision Aaren",
    "dt": "DT K=20 (recompute)",
    "kv": "Transformer, full KV cache",
    "aaren-heads4": "Decision Aaren, 4 heads",
    "aaren-merged": "Decision Aaren, merged R token",
    "aaren-deep": "Decision Aaren, 4 layers",
}


def overrides_for(agent: str, length: int, args: argparse.Namespace) -> dict[str, Any]:
    """The preset overrides of one agent at corridor length ``length``."""
    _, extra = AGENTS[agent]
    out: dict[str, Any] = {f"model.{k}": v for k, v in SMALL_MODEL.items()}
    out.update(
        {
            "model.max_timestep": length + 1,
            "model.context": 20,
            "train.max_len": length + 1,
            "train.batch_size": args.batch_size,
            "train.steps": steps_for(length, args),
            "train.warmup_steps": max(1, steps_for(length, args) // 10),
            "train.lr": args.lr,
            "train.eval_every": 0,
            "train.eval_episodes": 0,  # evaluated below, with the costs
            "train.checkpoint_every": 100,
            "train.log_every": 25,
        }
    )
    out.update(extra)
    return out


def steps_for(length: int, args: argparse.Namespace) -> int:
    for item in args.steps_at or []:
        at, _, steps = item.partition("=")
        if int(at) == length:
            return int(steps)
    return int(args.steps)


def task_for(length: int, data_file: Path) -> Any:
    from aaren_rl.data.tasks import task_from_dict
    from aaren_rl.envs import register_tmaze

    env_id = "aaren_rl.envs:" + register_tmaze(length)
    raw = {
        "name": f"tmaze-l{length}",
        "env_id": env_id,
        "dataset": str(data_file),
        "dataset_format": "d4rl",
        "max_episode_steps": length + 1,
        "reward_scale": 1.0,
        "target_returns": [1.0],
        "reference_scores": {"success": [0.0, 1.0], "use": "success"},
    }
    return task_from_dict(raw, path=REPO / "envs" / f"tmaze-l{length}.yaml")


def one_run(agent: str, length: int, seed: int, task: Any, dataset: Any, args) -> dict[str, Any]:
    from aaren_rl.agents.rollout import evaluate_agent, profile_steps
    from aaren_rl.agents.train_cli import run_training

    steps = steps_for(length, args)
    out_dir = Path(args.work) / "runs" / f"L{length}-{steps}steps" / agent / f"seed{seed}"
    record_path = out_dir / "run.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    preset, _ = AGENTS[agent]
    t0 = time.perf_counter()
    result = run_training(
        preset,
        task,
        out_dir=out_dir,
        seed=seed,
        device="cpu",
        resume=(out_dir / "checkpoint.pt").is_file(),
        overrides=overrides_for(agent, length, args),
        progress=not args.no_progress,
        dataset=dataset,
    )
    train_s = time.perf_counter() - t0
    model = result.model
    res = evaluate_agent(
        model,
        task.env_id,
        target_return=1.0,
        n_episodes=args.eval_episodes,
        n_envs=args.eval_envs,
        seed=10_000 + seed,
        device="cpu",
        max_episode_steps=task.max_episode_steps,
    )
    prof = profile_steps(model, n_steps=length + 1, n_envs=1, seed=seed, device="cpu")
    ms_last, bytes_last = prof.at(length + 1)
    cue = cue_weight(model, dataset)
    record = {
        "agent": agent,
        "length": length,
        "seed": seed,
        "steps": result.end_step,
        "final_loss": float(np.mean(result.losses[-25:])) if result.losses else None,
        "success": float(np.mean(res.returns)),
        "episodes": len(res.returns),
        "state_bytes_per_env_last": bytes_last,
        "ms_per_step_last": ms_last,
        "ms_per_step_first": float(np.median(prof.latency_ms[:10])),
        "train_seconds": train_s,
        "cue_weight_by_layer": cue,
    }
    from aaren_rl.agents.trainer import write_json_atomic

    write_json_atomic(record_path, record)
    return record


def cue_weight(model: Any, dataset: Any, n_episodes: int = 32) -> list[float] | None:
    """Aaren only: per layer, the softmax weight the turn's s_t token gives to s_0 (the cue).

    On up to ``n_episodes`` data episodes that reached the junction, forward hooks take each
    layer's scores ``[batch, tokens, heads]``; at the last state token the weight of token s_0
    is ``softmax(scores[: last + 1])[s_0]``. Returns, per layer, the mean over episodes of the
    largest weight over heads (1 would be a head that reads the cue alone; 1 / tokens uniform).
    """
    import torch

    from aaren_rl.nn.aaren import AarenAttention

    layers = [m for m in model.backbone.modules() if isinstance(m, AarenAttention)]
    if not layers:
        return None
    episodes = [ep for ep in dataset.episodes if ep.observations[-1][2] > 0.5][:n_episodes]
    captured: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(
            lambda mod, inputs, output: captured.append(mod.scores_and_values(inputs[0])[0])
        )
        for layer in layers
    ]
    n_tok = model.config.tokens_per_step
    s_index = n_tok - 2
    weights = np.zeros((len(episodes), len(layers)))
    model.eval()
    try:
        with torch.no_grad():
            for i, ep in enumerate(episodes):
                captured.clear()
                rtg = np.cumsum(ep.rewards[::-1])[::-1].copy()
                model(
                    torch.as_tensor(ep.observations)[None],
                    torch.as_tensor(ep.actions)[None],
                    torch.as_tensor(rtg, dtype=torch.float32)[None],
                    torch.arange(len(ep))[None],
                )
                last = (len(ep) - 1) * n_tok + s_index
                for j, scores in enumerate(captured):
                    w = torch.softmax(scores[0, : last + 1].double(), dim=0)  # [tokens, heads]
                    weights[i, j] = float(w[s_index].max())
    finally:
        for h in hooks:
            h.remove()
    return [round(float(v), 4) for v in weights.mean(axis=0)]


def summarise(records: list[dict[str, Any]]) -> dict[tuple[str, int, int], dict[str, Any]]:
    """Rows keyed by (agent, L, training steps)."""
    table: dict[tuple[str, int, int], dict[str, Any]] = {}
    for r in records:
        table.setdefault((r["agent"], r["length"], r["steps"]), {"runs": []})["runs"].append(r)
    for row in table.values():
        runs = row["runs"]
        succ = np.array([r["success"] for r in runs])
        row.update(
            success_mean=float(succ.mean()),
            success_std=float(succ.std()),
            seeds=len(runs),
            steps=runs[0]["steps"],
            state_bytes=int(np.median([r["state_bytes_per_env_last"] for r in runs])),
            ms_last=float(np.median([r["ms_per_step_last"] for r in runs])),
            per_seed=[round(float(s), 3) for s in succ],
            cue_weight=_mean_cue(runs),
        )
    return table


def _mean_cue(runs: list[dict[str, Any]]) -> list[float] | None:
    cues = [r.get("cue_weight_by_layer") for r in runs]
    if any(c is None for c in cues):
        return None
    return [round(float(v), 3) for v in np.mean(np.array(cues), axis=0)]


def _fmt_bytes(n: int) -> str:
    return f"{n} B" if n < 10_000 else f"{n / 1024:.1f} KiB"


def measure_costs(lengths: list[int], agents: list[str], args) -> list[dict[str, Any]]:
    """Memory and time per step at the last step of an L + 1-step episode, per agent and L.

    Cost does not depend on what the weights learned, so these use freshly built models of
    the trained size (no training): every agent at every L, side by side in one process.
    """
    import torch

    from aaren_rl.agents.decision_model import build_decision_model
    from aaren_rl.agents.rollout import profile_steps
    from aaren_rl.agents.train_cli import resolve_agent

    rows = []
    for length in lengths:
        for agent in agents:
            preset, _ = AGENTS[agent]
            spec = resolve_agent(preset, overrides=overrides_for(agent, length, args))
            model_cfg = {**spec["model"], "action_space": "discrete"}
            torch.manual_seed(0)
            model = build_decision_model(model_cfg, 3, 4)
            # best of 3 passes per step: the machine is shared, a busy core only adds time
            profs = [
                profile_steps(model, n_steps=length + 1, n_envs=1, seed=0, device="cpu")
                for _ in range(3)
            ]
            latency = np.min([p.latency_ms for p in profs], axis=0)
            nbytes = int(profs[0].state_bytes_per_env[-1])
            ms = float(np.median(latency[-10:]))
            rows.append(
                {
                    "agent": agent,
                    "length": length,
                    "state_bytes_per_env_last": nbytes,
                    "ms_per_step_last": ms,
                    "ms_per_step_first": float(np.median(latency[:10])),
                }
            )
            print(f"cost L={length} {agent}: {nbytes} B/env, {ms:.2f} ms/step", flush=True)
    return rows


def finished_records(work: Path) -> list[dict[str, Any]]:
    """Every finished run under ``work/runs`` (all lengths and agents, earlier calls too)."""
    paths = sorted((work / "runs").glob("L*steps/*/seed*/run.json"))
    return [json.loads(p.read_text()) for p in paths]


def backfill_cue_weights(work: Path) -> None:
    """Add the cue weight to finished Aaren runs recorded before it was measured."""
    from aaren_rl.agents.checkpoint import load_agent
    from aaren_rl.agents.trainer import write_json_atomic
    from aaren_rl.data.d4rl_reader import load_d4rl

    for path in sorted((work / "runs").glob("L*steps/aaren*/seed*/run.json")):
        record = json.loads(path.read_text())
        if record.get("cue_weight_by_layer") is not None:
            continue
        length = int(record["length"])
        data = work / "data" / f"tmaze-l{length}-mixed-v0.hdf5"
        model, _ = load_agent(path.parent / "checkpoint.pt")
        dataset = load_d4rl(data, max_episode_steps=length + 1)
        record["cue_weight_by_layer"] = cue_weight(model, dataset)
        write_json_atomic(path, record)


def write_outputs(args: argparse.Namespace, command: str) -> None:
    """Tables, JSON and plot of every finished run under ``--work``."""
    import torch

    from aaren_rl.agents.trainer import write_json_atomic

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = finished_records(Path(args.work))
    table = summarise(records)
    agents = [a for a in AGENTS if any(k[0] == a for k in table)]
    lengths = sorted({k[1] for k in table})
    budgets = sorted({k[2] for k in table})
    stamp = (
        f"{platform.node()} ({platform.processor() or platform.machine()}), torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"
    )
    log = Path(args.work) / "commands.txt"
    commands = log.read_text().splitlines() if log.is_file() else []
    if command not in commands:
        commands.append(command)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("\n".join(commands) + "\n")
    lines = [
        "# T-maze: whole-episode memory against a 20-step window",
        "",
        f"Tables written on {stamp}, from the runs of:",
        "",
        *[f"    {c}" for c in commands],
        "",
        "Success = fraction of evaluation episodes that turned the cued way (target return 1,",
        f"greedy actions, {args.eval_episodes} episodes per run), mean ± std over seeds (per-seed",
        "values in brackets). Memory = rollout state bytes per env at the last step; time = median",
        "ms per env step over the last 10 steps of a one-env rollout of L + 1 steps, one thread.",
        "Cue weight (Aaren): per layer, the softmax weight the turn's s_t token puts on s_0 (the",
        "cue), largest over heads, mean over 32 data episodes and the seeds.",
        "",
        "| agent | L | steps | seeds | success | per seed | memory/env at last step "
        "| ms/step at last step | cue weight by layer |",
        "|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for agent in agents:
        for length in lengths:
            for steps in budgets:
                row = table.get((agent, length, steps))
                if row is None:
                    continue
                cue = row["cue_weight"] if row["cue_weight"] is not None else ""
                lines.append(
                    f"| {LABELS[agent]} | {length} | {steps} | {row['seeds']} | "
                    f"{100 * row['success_mean']:.0f}% ± {100 * row['success_std']:.0f} | "
                    f"{row['per_seed']} | {_fmt_bytes(row['state_bytes'])} | "
                    f"{row['ms_last']:.2f} | {cue} |"
                )
    costs_path = Path(args.work) / "costs.json"
    costs = json.loads(costs_path.read_text())["rows"] if costs_path.is_file() else []
    if costs:
        lines += [
            "",
            "## Cost per env at the last step of an L + 1-step episode",
            "",
            "Untrained models of the same size (cost does not depend on the weights), all in one",
            "process, one env, one thread: state bytes per env after the last step, median ms",
            "per step over the last 10 steps (and over the first 10), each step the best of 3",
            "passes (the CPU is shared with other jobs).",
            "",
            "| agent | L | memory/env at last step | ms/step at last step | ms/step at t<10 |",
            "|---|---:|---:|---:|---:|",
        ]
        for c in sorted(costs, key=lambda c: (list(AGENTS).index(c["agent"]), c["length"])):
            lines.append(
                f"| {LABELS[c['agent']]} | {c['length']} | "
                f"{_fmt_bytes(c['state_bytes_per_env_last'])} | {c['ms_per_step_last']:.2f} | "
                f"{c['ms_per_step_first']:.2f} |"
            )
    (out / "memory-results.md").write_text("\n".join(lines) + "\n")
    write_json_atomic(
        out / "memory-results.json",
        {"commands": commands, "stamp": stamp, "records": records, "costs": costs},
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for agent in agents:
        # per (agent, L), the run with the most training steps
        best = {}
        for (a, length, steps), row in table.items():
            if a == agent and steps >= best.get(length, (0, None))[0]:
                best[length] = (steps, row)
        xs = sorted(best)
        rows = [best[L][1] for L in xs]
        axes[0].errorbar(
            xs,
            [100 * r["success_mean"] for r in rows],
            yerr=[100 * r["success_std"] for r in rows],
            marker="o",
            capsize=3,
            label=LABELS[agent],
        )
        mine = sorted((c for c in costs if c["agent"] == agent), key=lambda c: c["length"])
        if mine:  # the cost sweep covers more lengths than the trained runs
            cx = [c["length"] for c in mine]
            kib = [c["state_bytes_per_env_last"] / 1024 for c in mine]
            ms = [c["ms_per_step_last"] for c in mine]
        else:
            cx, kib, ms = xs, [r["state_bytes"] / 1024 for r in rows], [r["ms_last"] for r in rows]
        axes[1].plot(cx, kib, marker="o", label=LABELS[agent])
        axes[2].plot(cx, ms, marker="o", label=LABELS[agent])
    axes[0].axhline(50, color="grey", ls=":", lw=1)
    axes[0].set(
        xscale="log",
        xlabel="corridor length L",
        ylabel="success % (most-trained runs)",
        ylim=(0, 105),
    )
    axes[1].set(xscale="log", yscale="log", xlabel="L", ylabel="state KiB per env, last step")
    axes[2].set(xscale="log", xlabel="L", ylabel="ms per step, last step (1 thread)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Passive T-maze: success, memory and time per step against corridor length")
    fig.tight_layout()
    fig.savefig(out / "memory-results.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--agents", nargs="+", default=["aaren", "dt", "kv"], choices=AGENTS)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument(
        "--steps-at", nargs="*", default=None, metavar="L=STEPS", help="other steps at length L"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--episodes", type=int, default=300, help="dataset episodes per L")
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--eval-envs", type=int, default=25)
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "memory"), help="tables")
    parser.add_argument(
        "--work", default=str(REPO / "runs" / "memory"), help="datasets and runs (checkpoints)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--report-only", action="store_true", help="only the tables of finished runs"
    )
    parser.add_argument(
        "--costs",
        type=int,
        nargs="*",
        default=None,
        metavar="L",
        help="instead of training: measure memory and time per step of --agents at these L",
    )
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from aaren_rl.data.d4rl_reader import load_d4rl
    from aaren_rl.envs.memory_datasets import Mix, build_dataset

    command = "PYTHONPATH=. .venv/bin/python scripts/memory_results.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    out = Path(args.out)
    if args.costs:
        from aaren_rl.agents.trainer import write_json_atomic

        rows = measure_costs(args.costs, args.agents, args)
        write_json_atomic(Path(args.work) / "costs.json", {"command": command, "rows": rows})
        args.report_only = True
    for length in [] if args.report_only else args.lengths:
        data_file = Path(args.work) / "data" / f"tmaze-l{length}-mixed-v0.hdf5"
        task = task_for(length, data_file)
        if not data_file.is_file():
            build_dataset(task, data_file, n_episodes=args.episodes, mix=Mix(), seed=0)
        dataset = load_d4rl(data_file, max_episode_steps=length + 1)
        for agent in args.agents:
            for seed in args.seeds:
                rec = one_run(agent, length, seed, task, dataset, args)
                print(
                    f"L={length} {agent} seed{seed}: success {rec['success']:.2f}, "
                    f"state {rec['state_bytes_per_env_last']} B/env, "
                    f"{rec['ms_per_step_last']:.2f} ms/step, trained {rec['train_seconds']:.0f} s",
                    flush=True,
                )
                write_outputs(args, command)
    backfill_cue_weights(Path(args.work))
    write_outputs(args, command)
    print(f"wrote {out / 'memory-results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
