"""Memory benchmark: AarenPPO against RecurrentPPO (LSTM), PPO and PPO on 4 stacked frames.

A measurement, not a test. Every (task, agent, seed) trains for the same number of steps, then
plays 10 deterministic evaluation episodes; the run's wall-clock fps is its steps over the
training time. Results go to a JSON file after every run (written atomically), and a rerun
skips the runs already there, so an interrupted benchmark resumes. ``--report`` turns the JSON
into a markdown table and a plot of the training curves.

    .venv/bin/python scripts/bench_sb3.py --tasks CartPoleNoVel-v1 --seeds 0 1 2 --threads 1
    .venv/bin/python scripts/bench_sb3.py --report   # docs/benchmarks/sb3/: sb3_table.md, sb3.png

Hyper-parameters: rl-baselines3-zoo's ``ppo_lstm.yml`` where it has the task (CartPoleNoVel,
PendulumNoVel), the same for every agent on a task (only the memory differs); the POPGym task
has no zoo entry and uses the settings in ``TASKS`` below.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecFrameStack, VecNormalize
from torch import nn

from aaren_rl.files import save_figure_atomic, write_json_atomic, write_text_atomic
from aaren_rl.sb3 import AarenPPO
from aaren_rl.sb3.envs import OneHot, register_memory_envs

AGENTS = ("aaren_ppo", "aaren_ppo_nodecay", "recurrent_ppo", "ppo", "ppo_stack4")
ZOO_POLICY = dict(ortho_init=False, activation_fn=nn.ReLU, net_arch=dict(pi=[64], vf=[64]))


# AarenPPO's memory on every task (docs/sb3.md has the screening behind it): one Aaren layer
# of width 64, 4 heads with learned recency decays, a step embedding (zero at first), a short
# causal convolution over the last 4 steps in front of the memory, the heads reading the
# current step's features and the convolution's output beside the memory, one memory for
# actor and critic
AAREN_PRESET = dict(
    d_model=64,
    n_layers=1,
    n_heads=4,
    timestep_embedding=512,
    decay=True,
    skip_features=True,
    critic="joint",
    short_conv=4,
    skip_conv=True,
)
# AarenPPO's own PPO settings where they differ from the task's (the baselines keep the zoo's
# tuned settings). CartPoleNoVel: the zoo's 20 epochs, stopped early once a minibatch's
# approximate KL passes 1.5 * 0.01 (SB3's target_kl): the one screened variant with all of
# seeds 0-5 at 450 or more (docs/sb3.md, "Screening, session 6")
AAREN_HP: dict[str, dict[str, Any]] = {"CartPoleNoVel-v1": dict(target_kl=0.01)}
# aaren_ppo_nodecay: the paper's Aaren (no recency) and heads that read only the memory
# (every memory keyword written out: the policy's defaults are the preset's)
AAREN_PAPER = dict(
    d_model=64,
    n_layers=1,
    n_heads=2,
    timestep_embedding=512,
    decay=False,
    skip_features=False,
    critic="separate",
    short_conv=0,
    skip_conv=False,
)


def linear(start: float):
    """rl-zoo's ``lin_<start>``: linear decay from ``start`` to 0 over training."""

    def schedule(progress_remaining: float) -> float:
        return progress_remaining * start

    schedule.__name__ = f"lin_{start}"
    return schedule


def _schedule(value: Any) -> Any:
    """A screening setting as rl-zoo writes it: ``"lin_<start>"`` is :func:`linear`."""
    if isinstance(value, str) and value.startswith("lin_"):
        return linear(float(value[4:]))
    return value


# The POPGym sweep (docs/benchmarks/popgym.md): its tasks, fixed before it ran
POPGYM_SWEEP = (
    "popgym-RepeatFirstEasy-v0",
    "popgym-RepeatPreviousEasy-v0",
    "popgym-CountRecallEasy-v0",
    "popgym-AutoencodeEasy-v0",
    "popgym-ConcentrationEasy-v0",
    "popgym-BattleshipEasy-v0",
    "popgym-NoisyPositionOnlyCartPoleEasy-v0",
    "popgym-NoisyPositionOnlyPendulumEasy-v0",
)
# every POPGym task's settings (none of them has a zoo entry)
POPGYM: dict[str, Any] = dict(
    n_envs=8,
    timesteps=100_000,
    normalize=None,
    hp=dict(
        n_steps=64,
        batch_size=256,
        gae_lambda=0.95,
        gamma=0.99,
        n_epochs=10,
        ent_coef=0.01,
        learning_rate=linear(1e-3),
        clip_range=0.2,
    ),
    sequence_length=64,
)

TASKS: dict[str, dict[str, Any]] = {
    # ppo_lstm.yml, CartPoleNoVel-v1
    "CartPoleNoVel-v1": dict(
        n_envs=8,
        timesteps=100_000,
        normalize=dict(norm_obs=True, norm_reward=False),  # the zoo's normalize_kwargs
        hp=dict(
            n_steps=32,
            batch_size=256,
            gae_lambda=0.8,
            gamma=0.98,
            n_epochs=20,
            ent_coef=0.0,
            learning_rate=linear(1e-3),
            clip_range=linear(0.2),
        ),
        sequence_length=32,
    ),
    # ppo_lstm.yml, PendulumNoVel-v1 (no batch_size there: RecurrentPPO's default, 128)
    "PendulumNoVel-v1": dict(
        n_envs=4,
        timesteps=100_000,
        normalize=None,
        hp=dict(
            n_steps=1024,
            batch_size=128,
            gae_lambda=0.95,
            gamma=0.9,
            n_epochs=10,
            ent_coef=0.0,
            learning_rate=1e-3,
            clip_range=0.2,
            use_sde=True,
            sde_sample_freq=4,
        ),
        sequence_length=128,
    ),
    # no zoo entry: CartPoleNoVel's settings with a rollout longer than an episode (51 steps)
    "popgym-RepeatFirstEasy-v0": POPGYM,
    # the same settings on POPGym tasks the preset was not screened on
    **{task: POPGYM for task in POPGYM_SWEEP if task != "popgym-RepeatFirstEasy-v0"},
}


def _wrapper(task: str):
    probe = gym.make(task)
    space = probe.observation_space
    discrete = isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)) or (
        isinstance(space, spaces.Tuple)
        and all(isinstance(s, spaces.Discrete) for s in space.spaces)
    )
    probe.close()
    return OneHot if discrete else None


def make_env(task: str, agent: str, n_envs: int, seed: int, normalize: dict | None, training: bool):
    """The task's vector env; ``normalize`` holds VecNormalize's keywords (None: none)."""
    venv = make_vec_env(task, n_envs=n_envs, seed=seed, wrapper_class=_wrapper(task))
    if agent == "ppo_stack4":
        venv = VecFrameStack(venv, n_stack=4)
    if normalize is not None:
        venv = VecNormalize(venv, training=training, **normalize)
    return venv


class Curve(BaseCallback):
    """Mean training-episode return (SB3's Monitor, last 100 episodes) after every rollout."""

    def __init__(self) -> None:
        super().__init__()
        self.points: list[tuple[int, float]] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if len(self.model.ep_info_buffer):
            mean = float(np.mean([ep["r"] for ep in self.model.ep_info_buffer]))
            self.points.append((int(self.num_timesteps), mean))


def build(agent: str, task: str, venv, seed: int, variant: dict[str, Any] | None = None):
    """The agent on ``task``; ``variant`` (AarenPPO only) overrides the preset's policy
    keywords (``policy``) and the PPO settings (``hp``, ``sequence_length`` included)."""
    spec = TASKS[task]
    hp = dict(spec["hp"])
    common = dict(seed=seed, device="cpu", verbose=0)
    if agent.startswith("aaren_ppo"):
        variant = variant or {}
        kwargs = dict(ZOO_POLICY, **(AAREN_PRESET if agent == "aaren_ppo" else AAREN_PAPER))
        kwargs.update(variant.get("policy", {}))
        # PPO's target_kl unless AAREN_HP sets one (AarenPPO's own default is 0.01)
        hp = dict(hp, sequence_length=spec["sequence_length"], target_kl=None)
        hp.update(AAREN_HP.get(task, {}))
        hp.update({k: _schedule(v) for k, v in variant.get("hp", {}).items()})
        return AarenPPO("MlpAarenPolicy", venv, policy_kwargs=kwargs, **hp, **common)
    if agent == "recurrent_ppo":
        from sb3_contrib import RecurrentPPO

        kwargs = dict(ZOO_POLICY, lstm_hidden_size=64, enable_critic_lstm=True)
        return RecurrentPPO("MlpLstmPolicy", venv, policy_kwargs=kwargs, **hp, **common)
    return PPO("MlpPolicy", venv, policy_kwargs=dict(ZOO_POLICY), **hp, **common)


def run_one(
    task: str, agent: str, seed: int, timesteps: int, variant: dict[str, Any] | None = None
) -> dict[str, Any]:
    spec = TASKS[task]
    venv = make_env(task, agent, spec["n_envs"], seed, spec["normalize"], training=True)
    model = build(agent, task, venv, seed, variant)
    curve = Curve()
    t0 = time.perf_counter()
    model.learn(timesteps, callback=curve)
    wall = time.perf_counter() - t0
    eval_env = make_env(task, agent, 1, 10_000 + seed, spec["normalize"], training=False)
    if spec["normalize"] is not None:
        eval_env.obs_rms = venv.obs_rms
    returns, lengths = evaluate_policy(
        model, eval_env, n_eval_episodes=10, deterministic=True, return_episode_rewards=True
    )
    venv.close()
    eval_env.close()
    return dict(
        task=task,
        agent=agent,
        seed=seed,
        timesteps=int(model.num_timesteps),
        wall_s=wall,
        fps=model.num_timesteps / wall,
        eval_returns=[float(r) for r in returns],
        eval_mean=float(np.mean(returns)),
        eval_std=float(np.std(returns)),
        curve=curve.points,
    )


def stamp(threads: int) -> dict[str, Any]:
    import sb3_contrib
    import stable_baselines3

    return dict(
        machine=f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} cores)".strip(),
        python=platform.python_version(),
        torch=torch.__version__,
        stable_baselines3=stable_baselines3.__version__,
        sb3_contrib=sb3_contrib.__version__,
        threads=threads,
        load_average=os.getloadavg()[0],
    )


def report_paths(runs: Path) -> tuple[Path, Path]:
    """The table and the plot ``--report`` writes beside a runs file: ``NAME_runs.json`` ->
    ``NAME_table.md``, ``NAME.png`` (``sb3_runs.json`` -> ``sb3_table.md``, ``sb3.png``)."""
    name = runs.stem.removesuffix("_runs")
    return runs.with_name(f"{name}_table.md"), runs.with_name(f"{name}.png")


def report(results: list[dict[str, Any]], md_path: Path, png_path: Path) -> str:
    """A markdown table (mean/std over seeds of the evaluation return, fps) and a plot of
    the untagged runs, written (atomically) to ``md_path`` and ``png_path``; screening runs
    (``--tag``) get a table of their own. Returns the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    screens = [r for r in results if r.get("tag")]
    results = [r for r in results if not r.get("tag")]
    tasks = [t for t in TASKS if any(r["task"] == t for r in results)]
    lines = [
        "| task | agent | seeds | steps | eval return (mean ± std over seeds) | per seed | fps |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5 * max(1, len(tasks)), 3.6))
    axes = np.atleast_1d(axes)
    for ax, task in zip(axes, tasks, strict=False):
        for agent in AGENTS:
            runs = [r for r in results if r["task"] == task and r["agent"] == agent]
            if not runs:
                continue
            means = np.array([r["eval_mean"] for r in runs])
            fps = np.array([r["fps"] for r in runs])
            per_seed = ", ".join(f"{m:.1f}" for m in means)
            lines.append(
                f"| {task} | {agent} | {len(runs)} | {runs[0]['timesteps']} | "
                f"{means.mean():.1f} ± {means.std():.1f} | {per_seed} | {fps.mean():.0f} |"
            )
            for i, r in enumerate(runs):
                if r["curve"]:
                    x, y = zip(*r["curve"], strict=True)
                    ax.plot(x, y, color=f"C{AGENTS.index(agent)}", alpha=0.8,
                            label=agent if i == 0 else None)  # fmt: skip
        ax.set_title(f"{task}: AarenPPO (Aaren memory) vs baselines", fontsize=9)
        ax.set_xlabel("timesteps")
        ax.set_ylabel("training episode return (last 100)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, png_path, dpi=110)
    table = "\n".join(lines + ["", *fps_ratios(results), *screening(screens)])
    write_text_atomic(md_path, table + "\n")
    return table


def screening(runs: list[dict[str, Any]]) -> list[str]:
    """One row per (task, agent, tag): eval mean ± std over seeds, per seed, the training
    curve's last point per seed, fps and load."""
    if not runs:
        return []
    lines = [
        "",
        "| task | agent | tag | seeds | eval (mean ± std) | per seed | curve end | fps (load) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = dict.fromkeys((r["task"], r["agent"], r["tag"]) for r in runs)
    for task, agent, tag in keys:
        group = [r for r in runs if (r["task"], r["agent"], r["tag"]) == (task, agent, tag)]
        means = np.array([r["eval_mean"] for r in group])
        seeds = ", ".join(f"{r['seed']}: {r['eval_mean']:.0f}" for r in group)
        ends = ", ".join(f"{r['curve'][-1][1]:.0f}" if r["curve"] else "-" for r in group)
        fps = ", ".join(f"{r['fps']:.0f} ({r['stamp']['load_average']:.1f})" for r in group)
        lines.append(
            f"| {task} | {agent} | {tag} | {len(group)} | {means.mean():.1f} ± "
            f"{means.std():.1f} | {seeds} | {ends} | {fps} |"
        )
    return lines


def fps_ratios(results: list[dict[str, Any]]) -> list[str]:
    """AarenPPO's fps over RecurrentPPO's, per task and seed (the two ran one after the other
    in one job), with each run's load average."""
    lines = [
        "| task | seed | aaren_ppo fps | recurrent_ppo fps | ratio | load (aaren, lstm) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    runs = {(r["task"], r["agent"], r["seed"]): r for r in results}
    for (task, agent, seed), aaren in runs.items():
        lstm = runs.get((task, "recurrent_ppo", seed))
        if agent != "aaren_ppo" or lstm is None:
            continue
        loads = f"{aaren['stamp']['load_average']:.1f}, {lstm['stamp']['load_average']:.1f}"
        lines.append(
            f"| {task} | {seed} | {aaren['fps']:.0f} | {lstm['fps']:.0f} | "
            f"{aaren['fps'] / lstm['fps']:.2f}x | {loads} |"
        )
    return lines


def run_key(run: dict[str, Any]) -> tuple:
    """What names a run: task, agent, seed, steps asked and screening tag."""
    return (run["task"], run["agent"], run["seed"], run["timesteps_asked"], run.get("tag", ""))


def merge_runs(data: dict[str, Any], paths: list[Path]) -> None:
    """Append the runs of the JSON files ``paths`` to ``data`` (in place); two runs with one
    key (:func:`run_key`) stop the merge with the file and key named, so none is lost."""
    keys = {run_key(r) for r in data["runs"]}
    for path in paths:
        for run in json.loads(path.read_text())["runs"]:
            if run_key(run) in keys:
                raise SystemExit(f"{path}: run {run_key(run)} is in the output already; merge once")
            keys.add(run_key(run))
            data["runs"].append(run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["CartPoleNoVel-v1", "PendulumNoVel-v1", "popgym-RepeatFirstEasy-v0"],
        choices=list(TASKS),
    )
    parser.add_argument(
        "--suite",
        choices=["popgym"],
        default=None,
        help="popgym: the POPGym sweep's tasks (POPGYM_SWEEP) instead of --tasks",
    )
    parser.add_argument(
        "--agents",
        nargs="+",
        default=[a for a in AGENTS if a != "aaren_ppo_nodecay"],
        choices=AGENTS,
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=None, help="override every task's")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/sb3/sb3_runs.json"))
    parser.add_argument("--report", action="store_true", help="only write the table and plot")
    parser.add_argument(
        "--variant",
        type=json.loads,
        default=None,
        help='screening: AarenPPO overrides as JSON, {"policy": {...}, "hp": {...}}',
    )
    parser.add_argument("--tag", default="", help="the variant's name (part of a run's key)")
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        help="add these JSON files' runs to --out (a run whose key is there already is an error)",
    )
    args = parser.parse_args(argv)
    if args.suite == "popgym":
        args.tasks = list(POPGYM_SWEEP)
    if args.variant is not None and not args.tag:
        parser.error("--variant needs a --tag naming it (runs are keyed by task, agent, seed, tag)")
    torch.set_num_threads(args.threads)
    register_memory_envs()
    data = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    if args.merge:
        merge_runs(data, args.merge)
        write_json_atomic(args.out, data, indent=1)
        print(f"{args.out}: {len(data['runs'])} runs")
        return 0
    if args.report:
        table = report(data["runs"], *report_paths(args.out))
        print(table)
        return 0
    for task in args.tasks:
        for seed in args.seeds:
            for agent in args.agents:
                steps = args.timesteps or TASKS[task]["timesteps"]
                if (task, agent, seed, steps, args.tag) in {run_key(r) for r in data["runs"]}:
                    continue
                print(f"{task} {agent} {args.tag} seed {seed}: {steps} steps ...", flush=True)
                variant = args.variant if agent.startswith("aaren_ppo") else None
                result = run_one(task, agent, seed, steps, variant)
                result.update(timesteps_asked=steps, stamp=stamp(args.threads))
                if args.tag:
                    result.update(tag=args.tag, variant=args.variant)
                print(
                    f"  eval {result['eval_mean']:.1f} ± {result['eval_std']:.1f}, "
                    f"{result['fps']:.0f} fps, {result['wall_s']:.0f} s",
                    flush=True,
                )
                data["runs"].append(result)
                write_json_atomic(args.out, data, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
