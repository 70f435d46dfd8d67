"""Cost of the Aaren scan (training) and of one rollout step, for comparing two checkouts.

    PYTHONPATH=. python scripts/bench_step_overhead.py            # this tree
    PYTHONPATH=/path/to/other/checkout python scripts/bench_step_overhead.py

Times are CPU time of the one thread (less disturbed by other jobs than wall time). Prints a markdown table stamped with the machine, the thread count and the versions. Run the
two trees alternately (a shared machine is noisy) and compare medians side by side.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import aaren_rl
from aaren_rl.agents.decision_model import build_decision_model
from aaren_rl.nn.aaren_attention import aaren_scan


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return min(times)


def scan_ms(batch: int, time_len: int, head_dim: int, repeats: int) -> float:
    """Forward + backward of aaren_scan on ``[batch, time_len, 1, head_dim]``, best of repeats."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(batch, time_len, 1, generator=g, requires_grad=True)
    values = torch.randn(batch, time_len, 1, head_dim, generator=g, requires_grad=True)
    mask = torch.ones(batch, time_len, dtype=torch.bool)
    mask[:, -time_len // 6 :] = False

    def run():
        out, _ = aaren_scan(scores, values, mask=mask)
        out.sum().backward()

    return _best(run, repeats) * 1e3


def step_us(n_envs: int, steps: int) -> float:
    """Median µs per env step (act + observe_action) of Decision Aaren at width 128, 3 layers."""
    torch.manual_seed(0)
    config = {"d_model": 128, "n_layers": 3, "n_heads": 1, "dropout": 0.0}
    model = build_decision_model(config, 11, 3, reward_scale=1e-3).eval()
    obs, rtg = torch.randn(n_envs, 11), torch.full((n_envs,), 3600.0)
    times = []
    with torch.inference_mode():
        state = model.initial_state(n_envs)
        for t in range(steps):
            timestep = torch.full((n_envs,), t, dtype=torch.long)
            t0 = time.thread_time()
            action, state = model.act(obs, rtg, timestep, state)
            state = model.observe_action(action, timestep, state)
            times.append(time.thread_time() - t0)
    return statistics.median(times[10:]) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"machine {platform.machine()} {platform.processor() or ''}, threads {args.threads}, "
        f"torch {torch.__version__}, aaren_rl {aaren_rl.__version__} from {aaren_rl.__file__}"
    )
    print("| measurement | value |\n| --- | --- |")
    print(
        f"| scan fwd+bwd, B=8 T=3000 Dh=128 (CPU ms, best) | {scan_ms(8, 3000, 128, args.repeats):.1f} |"
    )
    for n in (1, 64):
        print(
            f"| rollout step, {n} env(s) (CPU µs per vector step, median) | {step_us(n, args.steps):.0f} |"
        )


if __name__ == "__main__":
    main()
