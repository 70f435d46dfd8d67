"""Can the memory count? CountRecall as supervised learning, without RL.

    python scripts/count_probe.py --steps 3000 --seeds 0 1 2 --threads 1

POPGym's CountRecallEasy deals 51 cards of two colours and at every step asks how many cards
of a queried colour have been dealt so far (the answer is one of 27 classes). This script
draws such episodes, feeds ``[dealt one-hot, query one-hot]`` to a memory and trains a
linear read-out of the memory's output (with the current features beside it, as AarenPPO's
heads read them) to predict the count with cross-entropy, for a fixed number of Adam steps.
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
    """A memory and a linear read-out of ``[memory output, features]``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        if kind == "lstm":
            self.memory = nn.LSTM(4, 64, batch_first=True)
            width = 64
        else:
            self.memory = AarenMemory(4, 64, 1, 4, None, 32, timestep_embedding=512, decay=True,
                                      short_conv=4, skip_conv=True, log_mass=kind == "aaren-log-mass")  # fmt: skip
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


def run(kind: str, seed: int, steps: int, batch: int) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    probe = Probe(kind)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = episodes(batch, rng)
        loss = nn.functional.cross_entropy(probe(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = episodes(512, np.random.default_rng(10_000 + seed))
    with torch.no_grad():
        pred = probe(x).argmax(-1)
    late = slice(26, None)  # the second half of the episode: counts up to 26
    return {
        "memory": kind,
        "seed": seed,
        "steps": steps,
        "accuracy": float((pred == y).float().mean()),
        "accuracy_second_half": float((pred[:, late] == y[:, late]).float().mean()),
        "within_one": float(((pred - y).abs() <= 1).float().mean()),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
            rows.append(run(kind, seed, args.steps, args.batch))
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
