"""Where a CPU training step of the decision agents goes, and what packing and the CPU dropout
save: seconds per update of each variant, measured side by side.

    OMP_NUM_THREADS=1 python scripts/offline_update_cost.py --task hopper-medium --rounds 20

Every variant builds the same model (the preset's ``cpu-curve`` protocol, seed 0) and times
``Trainer.train_step`` (sampling, forward, backward, clipping, AdamW). The variants run in
rounds, one step of each per round, so that a machine busy with other work slows them alike;
the table gives the median over rounds, the ratio to the variant's baseline, and the action
targets (real steps) per batch. ``--profile`` adds torch's profiler table of one variant.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

# (label, agent preset, train overrides, baseline label): the cpu-curve protocol's settings
# with one thing at a time undone
VARIANTS = [
    ("decision-aaren, 8 padded rows, nn.Dropout", "decision-aaren",
     {"train.pack": False, "train.fast_dropout": False}, None),
    ("decision-aaren, 8 packed, nn.Dropout", "decision-aaren",
     {"train.pack": True, "train.fast_dropout": False}, 0),
    ("decision-aaren, 8 packed, CPU dropout (cpu-curve)", "decision-aaren",
     {"train.pack": True, "train.fast_dropout": True}, 0),
    ("decision-aaren, 4 padded rows, nn.Dropout (cpu protocol)", "decision-aaren",
     {"train.batch_size": 4, "train.pack": False, "train.fast_dropout": False}, 0),
    ("decision-transformer, 64 windows, nn.Dropout", "decision-transformer",
     {"train.fast_dropout": False}, None),
    ("decision-transformer, 64 windows, CPU dropout (cpu-curve)", "decision-transformer",
     {"train.fast_dropout": True}, 4),
]  # fmt: skip


def build(agent: str, overrides: dict, task, dataset):
    from aaren_rl.agents.decision_model import build_decision_model
    from aaren_rl.agents.train_cli import resolve_agent
    from aaren_rl.agents.trainer import TrainConfig, Trainer, seed_everything

    resolved = resolve_agent(agent, protocol="cpu-curve", overrides=overrides)
    seed_everything(0)
    model = build_decision_model(
        resolved["model"],
        dataset.obs_dim,
        dataset.act_dim,
        dataset.state_mean,
        dataset.state_std,
        reward_scale=task.reward_scale,
    )
    return Trainer(model, dataset, task, TrainConfig.from_dict(resolved["train"]), progress=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", default="hopper-medium")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", type=int, default=None, metavar="I", help="profile variant I")
    p.add_argument(
        "--prefixes",
        type=int,
        default=8,
        help="Decision Aaren's prefixes per batch in the first three variants (cpu-curve: 8)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from aaren_rl.data.tasks import load_task

    task = load_task(args.task)
    dataset = task.load_dataset()
    variants = [
        (label.replace("8 ", f"{args.prefixes} ", 1), agent, ov, base)
        if i < 3
        else (label, agent, ov, base)
        for i, (label, agent, ov, base) in enumerate(VARIANTS)
    ]
    variants = [
        (label, agent, ov | ({"train.batch_size": args.prefixes} if i < 3 else {}), base)
        for i, (label, agent, ov, base) in enumerate(variants)
    ]
    trainers = [build(agent, ov, task, dataset) for _, agent, ov, _ in variants]
    times: list[list[float]] = [[] for _ in VARIANTS]
    targets: list[list[int]] = [[] for _ in VARIANTS]
    for tr in trainers:
        tr.train_step()  # warm-up
    for _ in range(args.rounds):
        for i, tr in enumerate(trainers):
            batch = tr.sampler.rng.bit_generator.state
            t0 = time.perf_counter()
            tr.train_step()
            times[i].append(time.perf_counter() - t0)
            tr.sampler.rng.bit_generator.state = batch  # count the batch it just trained on
            targets[i].append(int(tr.sampler.sample(tr.local_batch).mask.sum()))
    medians = [float(np.median(t)) for t in times]
    print(
        f"Seconds per training step on {task.name}, {args.threads} thread(s), torch "
        f"{torch.__version__}, {platform.machine()} with {os.cpu_count()} CPUs; median of "
        f"{args.rounds} rounds (one step of every variant per round):\n"
    )
    print("| variant | action targets per batch | s per step | vs. baseline |")
    print("|---|---|---|---|")
    for (label, _, _, base), med, tg in zip(variants, medians, targets, strict=True):
        ratio = "baseline" if base is None else f"{med / medians[base]:.2f}x"
        print(f"| {label} | {np.mean(tg):.0f} | {med:.3f} | {ratio} |")
    if args.profile is not None:
        from torch.profiler import profile

        with profile() as prof:
            for _ in range(5):
                trainers[args.profile].train_step()
        print(f"\nprofile of: {variants[args.profile][0]} (5 steps)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    sys.exit(main())
