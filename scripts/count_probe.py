"""Can the memory count, or recall the card k steps ago? POPGym's recall tasks as supervised
learning, without RL.

    python scripts/count_probe.py --steps 1500 --seeds 0 1 --threads 1
    python scripts/count_probe.py --task repeat-previous --k 32 --steps 1500 --seeds 0 1

``count`` (POPGym's CountRecallEasy): 51 cards of two colours are dealt and at every step the
task asks how many cards of a queried colour have been dealt so far (one of 27 classes); the
features are ``[dealt one-hot, query one-hot]``. ``repeat-previous`` (POPGym's RepeatPrevious,
Easy k = 4, Medium 32, Hard 64): one of 4 suits per step, and the answer is the suit of the
card k steps ago (before that, any answer is counted as class 0). The script trains a small
MLP read-out of the memory's output (with the current features beside it, as AarenPPO's heads
read them) with cross-entropy, for a fixed number of Adam steps, and measures the accuracy on
fresh episodes.
Memories: AarenPPO's (``AarenMemory`` with the policy's defaults), the same with
``log_mass=True``, and RecurrentPPO's (an LSTM of 64). The accuracy on fresh episodes says
whether a memory can represent the count at all, apart from what PPO makes of it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aaren_rl.sb3.policies import AarenMemory

EPISODE = 51  # cards dealt after the first: POPGym's CountRecallEasy
CLASSES = 27  # counts 0..26


def repeat_previous(n: int, rng: np.random.Generator, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` episodes of RepeatPrevious: features ``[n, 52, 4]`` (the suit one-hot) and
    targets ``[n, 52]`` (the suit k steps ago; 0 for the first k steps)."""
    t = EPISODE + 1
    suits = rng.integers(0, 4, size=(n, t))
    target = np.zeros_like(suits)
    target[:, k:] = suits[:, :-k]
    return torch.from_numpy(np.eye(4, dtype=np.float32)[suits]), torch.from_numpy(target).long()


def episodes(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` episodes: features ``[n, 52, 4]`` (dealt, query one-hot) and targets ``[n, 52]``
    (the count of the queried colour among the cards dealt so far, this one included)."""
    t = EPISODE + 1
    # a shuffled deck of 26 + 26 cards, and queries drawn from a second deck
    dealt = np.stack([rng.permutation(np.repeat([0, 1], 26)) for _ in range(n)])[:, :t]
    query = np.stack([rng.permutation(np.repeat([0, 1], 26)) for _ in range(n)])[:, :t]
    counts = np.stack([np.cumsum(dealt == 0, 1), np.cumsum(dealt == 1, 1)], -1)
    target = np.take_along_axis(counts, query[..., None], -1)[..., 0]
    x = np.concatenate([np.eye(2)[dealt], np.eye(2)[query]], -1).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(target).long()


class Probe(nn.Module):
    """A memory and an MLP read-out of ``[memory output, features]``. ``kind``: ``lstm``,
    ``aaren`` (AarenPPO's memory), ``aaren-log-mass``, ``aaren-2-layers`` or ``aaren-conv-K``
    (a short convolution over the last K steps instead of 4); ``aaren-no-time`` and
    ``aaren-log-mass-no-time`` drop the step embedding."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        if kind == "lstm":
            self.memory = nn.LSTM(4, 64, batch_first=True)
            width = 64
        else:
            conv = int(kind.rsplit("-", 1)[1]) if kind.startswith("aaren-conv-") else 4
            layers = 2 if kind == "aaren-2-layers" else 1
            steps = 0 if kind.endswith("-no-time") else 512  # the step embedding's rows
            self.memory = AarenMemory(4, 64, layers, 4, None, 32, timestep_embedding=steps,
                                      decay=True, short_conv=conv, skip_conv=True,
                                      log_mass=kind.startswith("aaren-log-mass"))  # fmt: skip
            width = self.memory.out_dim
        self.head = nn.Sequential(nn.Linear(width + 4, 64), nn.ReLU(), nn.Linear(64, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [batch, time, 4]`` -> logits ``[batch, time, 27]``."""
        b, t, _ = x.shape
        if self.kind == "lstm":
            y, _ = self.memory(x)
        else:
            state = self.memory.backbone.initial_state(b)
            resets = torch.zeros(b, t, dtype=torch.bool)
            resets[:, 0] = True
            mask = torch.ones(b, t, dtype=torch.bool)
            steps = torch.arange(t).expand(b, t)
            history = self.memory.initial_history(b)
            y = self.memory.sequence(x, state, resets, mask, steps, history)
        return self.head(torch.cat([y, x], -1))


def run(kind: str, seed: int, steps: int, batch: int, task: str = "count", k: int = 4) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    def draw(n: int, generator: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return episodes(n, generator) if task == "count" else repeat_previous(n, generator, k)

    probe = Probe(kind)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = draw(batch, rng)
        loss = nn.functional.cross_entropy(probe(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = draw(512, np.random.default_rng(10_000 + seed))
    with torch.no_grad():
        pred = probe(x).argmax(-1)
    first = 0 if task == "count" else k  # repeat-previous: only steps that have an answer
    late = max(26, first)  # the second half of the episode (counts up to 26)
    return {
        "task": task if task == "count" else f"{task}-k{k}",
        "memory": kind,
        "seed": seed,
        "steps": steps,
        "accuracy": float((pred[:, first:] == y[:, first:]).float().mean()),
        "accuracy_second_half": float((pred[:, late:] == y[:, late:]).float().mean()),
        "within_one": float(((pred[:, first:] - y[:, first:]).abs() <= 1).float().mean()),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", choices=["count", "repeat-previous"], default="count")
    p.add_argument("--k", type=int, default=4, help="repeat-previous: how far back")
    p.add_argument("--memories", nargs="+", default=["aaren", "aaren-log-mass", "lstm"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write the runs as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for kind in args.memories:
        for seed in args.seeds:
            rows.append(run(kind, seed, args.steps, args.batch, args.task, args.k))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| memory | accuracy (mean over seeds) | second half of the episode | within one |")
    print("|---|---|---|---|")
    for kind in args.memories:
        got = [r for r in rows if r["memory"] == kind]
        cells = [
            np.mean([r[k] for r in got]) for k in ("accuracy", "accuracy_second_half", "within_one")
        ]
        print(f"| {kind} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    if args.out is not None:
        from aaren_rl.files import write_json_atomic

        write_json_atomic(args.out, {"command": " ".join(sys.argv), "runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
