"""Episode returns of an exported policy: ONNX Runtime float32 and int8 against the model.

For each checkpoint: export the rollout step (float32) and its int8 variant (ONNX Runtime's
dynamic quantisation), then play the same episodes (same seeds: env i seeded ``seed + i``) with
``evaluate_agent`` (the model in PyTorch: the fast step for Box actions, the model's own step
for Discrete), ``evaluate_onnx`` on the float32 file and ``evaluate_onnx`` on the int8 file.
Writes (merges into) a JSON file keyed by task and prints the markdown table of docs/deploy.md:

    python scripts/deploy_returns.py runs/deploy/hopper-medium/checkpoint.pt --episodes 10 \\
        --envs 10 --out docs/benchmarks/deploy-returns/deploy_returns.json
    python scripts/deploy_returns.py runs/deploy/tmaze-l100/checkpoint.pt --episodes 100 \\
        --envs 25 --out docs/benchmarks/deploy-returns/deploy_returns.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from aaren_rl.agents.checkpoint import load_agent
from aaren_rl.agents.rollout import evaluate_agent
from aaren_rl.deploy import evaluate_onnx
from aaren_rl.deploy.export import export_onnx
from aaren_rl.deploy.quantize import quantize_int8
from aaren_rl.files import write_json_atomic


def _summary(returns: np.ndarray) -> dict:
    return {
        "returns": [float(r) for r in returns],
        "mean": float(np.mean(returns)),
        "std": float(np.std(returns)),
    }


def evaluate_checkpoint(path: Path, episodes: int, envs: int, seed: int) -> dict:
    model, info = load_agent(path)
    task = info["task"] or {}
    target = float(task["target_returns"][0])
    limit = task.get("max_episode_steps")
    kw = dict(n_episodes=episodes, n_envs=envs, seed=seed, max_episode_steps=limit)
    t0 = time.perf_counter()
    ref = evaluate_agent(model, task["env_id"], target, **kw)
    out = {
        "task": task.get("name"),
        "env_id": task["env_id"],
        "checkpoint": str(path),
        "train_step": info["step"],
        "target_return": target,
        "episodes": episodes,
        "n_envs": envs,
        "seed": seed,
        "pytorch_evaluate_agent": _summary(ref.returns),
    }
    with tempfile.TemporaryDirectory() as tmp:
        f32 = export_onnx(path, Path(tmp) / "step.onnx")
        int8 = quantize_int8(f32, Path(tmp) / "step.int8.onnx")
        out["file_bytes"] = {"float32": f32.stat().st_size, "int8": int8.stat().st_size}
        for label, file in (("onnx_float32", f32), ("onnx_int8", int8)):
            r = evaluate_onnx(file, task["env_id"], target, **kw)
            out[label] = _summary(r.returns)
            out[label]["lengths"] = [int(n) for n in r.lengths]
    out["seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--envs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path("docs/benchmarks/deploy-returns/deploy_returns.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for ckpt in args.checkpoints:
        r = evaluate_checkpoint(ckpt, args.episodes, args.envs, args.seed)
        results[r["task"]] = r
        write_json_atomic(args.out, results)
    print(
        "| task | episodes | PyTorch (evaluate_agent) | ONNX float32 | ONNX int8 | float32 / int8 file |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        cells = [
            f"{r[k]['mean']:.1f} ± {r[k]['std']:.1f}"
            for k in ("pytorch_evaluate_agent", "onnx_float32", "onnx_int8")
        ]
        sizes = (
            f"{r['file_bytes']['float32'] / 1024:.0f} / {r['file_bytes']['int8'] / 1024:.0f} KiB"
        )
        print(f"| {name} | {r['episodes']} | " + " | ".join(cells) + f" | {sizes} |")


if __name__ == "__main__":
    main()
