"""Evaluate finished runs at several conditioning returns, with and without ``clip_return``.

    python scripts/target_sweep.py runs/cpu-merged/cpu-2000steps/hopper-medium-replay \\
        --targets 3600 1800 1000 --clip both --episodes 10

For every run folder under ROOT (``AGENT/seedS/checkpoint.pt``, as ``scripts/results.py``
writes them) the checkpoint is rolled out at each target return, with the model's own
``clip_return`` off and on (``--clip``), and a markdown table of the normalised score (mean and
std over seeds of each seed's mean) is printed and written to ``ROOT/target-sweep.md``; every
rollout's returns go to ``ROOT/target-sweep.json``. Clipping needs the model's ``return_max``
buffer (the largest return-to-go of its training data); a checkpoint written before that buffer
existed gets it from its task's dataset, which is what training would have stored (the buffer
takes no part in training).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("root", type=Path, help="folder of AGENT/seedS run folders")
    p.add_argument("--targets", type=float, nargs="+", default=None, help="default: the task's")
    p.add_argument("--clip", choices=("off", "on", "both"), default="both")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--envs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)

    from aaren_rl.agents.checkpoint import load_agent
    from aaren_rl.agents.evaluate_cli import normalized
    from aaren_rl.agents.rollout import evaluate_agent
    from aaren_rl.agents.trainer import write_json_atomic
    from aaren_rl.data.tasks import load_task
    from aaren_rl.files import write_text_atomic

    clips = {"off": [False], "on": [True], "both": [False, True]}[args.clip]
    runs = sorted(args.root.glob("*/seed*/checkpoint.pt"))
    if not runs:
        raise SystemExit(f"{args.root}: no AGENT/seedS/checkpoint.pt below it")
    rtg_max: dict[str, float] = {}
    records = []
    for ckpt in runs:
        model, info = load_agent(ckpt)
        task = info["task"]
        if not torch.isfinite(model.return_max):
            if task["name"] not in rtg_max:
                rtg_max[task["name"]] = float(load_task(task["name"]).load_dataset().rtg.max())
            model.return_max.fill_(rtg_max[task["name"]])
        for clip in clips:
            model.config.clip_return = clip
            for target in args.targets or task["target_returns"]:
                res = evaluate_agent(
                    model,
                    task["env_id"],
                    float(target),
                    args.episodes,
                    n_envs=args.envs,
                    seed=args.seed,
                    max_episode_steps=task.get("max_episode_steps"),
                )
                score = float(normalized(res.returns, task).mean())
                records.append(
                    {
                        "agent": ckpt.parent.parent.name,
                        "seed": ckpt.parent.name,
                        "clip_return": clip,
                        "return_max": float(model.return_max),
                        "target": float(target),
                        "returns": [float(r) for r in res.returns],
                        "normalized_mean": score,
                    }
                )
                print(f"{ckpt.parent}: clip {clip} target {target:g}: {score:.1f}", flush=True)

    keys = sorted({(r["agent"], r["clip_return"]) for r in records})
    targets = list(dict.fromkeys(r["target"] for r in records))
    lines = [
        "| agent | clip_return | " + " | ".join(f"target {t:g}" for t in targets) + " |",
        "|---|---|" + "---|" * len(targets),
    ]
    for agent, clip in keys:
        cells = []
        for t in targets:
            s = [
                r["normalized_mean"]
                for r in records
                if (r["agent"], r["clip_return"], r["target"]) == (agent, clip, t)
            ]
            cells.append(f"{np.mean(s):.1f} ± {np.std(s):.1f} (n={len(s)})")
        lines.append(f"| {agent} | {'on' if clip else 'off'} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    write_text_atomic(args.root / "target-sweep.md", table + "\n")
    write_json_atomic(args.root / "target-sweep.json", records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
