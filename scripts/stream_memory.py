"""Resident memory of the README's event stream, called exactly as the README writes it.

The README's events example (same data, model and calls: no ``torch.no_grad()`` around the
loop) fits the events head on a one-mark Hawkes process, then streams a long sequence of
that process's events one at a time with ``stream.observe(torch.tensor([t]),
torch.tensor([k]))``. The process's resident set size (RSS) is printed at 0 events and at
each ``--at`` count. A stream is inference, so it must stay flat: no autograd graph grows
with the events.

    PYTHONPATH=. .venv/bin/python scripts/stream_memory.py --threads 1
    PYTHONPATH=. .venv/bin/python scripts/stream_memory.py --train-steps 800  # the README's fit

``--train-steps`` (default 50) shortens the fit: memory does not depend on what the weights
learned. Prints a Markdown table; ``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch


def rss_mb() -> float:
    """Resident memory now, in MB (10^6 bytes): /proc on Linux, the peak elsewhere."""
    statm = Path("/proc/self/statm")
    if statm.is_file():
        return int(statm.read_text().split()[1]) * resource.getpagesize() / 1e6
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak if sys.platform == "darwin" else peak * 1024) / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--at", type=int, nargs="+", default=[10_000, 100_000], help="event counts")
    p.add_argument("--train-steps", type=int, default=50, help="the README fits 800")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the table here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    # ---- the README's example, as written (only the step count is a flag)
    from aaren_rl.data.events import EventData
    from aaren_rl.data.point_processes import HawkesProcess
    from aaren_rl.heads.fit import BackboneConfig, fit_head
    from aaren_rl.training.config import LoopConfig

    process = HawkesProcess([0.7], [[0.5]], beta=3.0)
    data = EventData.synthetic(process, 1000, end=50.0)
    model, _ = fit_head(
        "events",
        data,
        BackboneConfig("aaren", d_model=32),
        LoopConfig(steps=args.train_steps),
        progress=False,
    )
    stream = model.eval().stream(batch_size=1)  # O(1) state

    # ---- a long sequence of the same process, streamed one event at a time
    n_events = max(args.at)
    rate = float(process.stationary_rates().sum())
    rng = np.random.default_rng(0)
    times, marks = process.simulate(1.2 * n_events / rate, rng)
    while len(times) < n_events:
        more_t, more_k = process.simulate(times[-1] + 0.2 * n_events / rate, rng, times[-1])
        times = np.concatenate([times, more_t])
        marks = np.concatenate([marks, more_k])
    rows = [{"events": 0, "rss_mb": rss_mb(), "seconds": 0.0}]
    print(f"| events | RSS (MB) | seconds |\n|---:|---:|---:|\n| 0 | {rows[0]['rss_mb']:.0f} | 0 |")
    start, marks_at = time.perf_counter(), set(args.at)
    for i, (t, k) in enumerate(zip(times[:n_events], marks[:n_events], strict=True), start=1):
        nxt = stream.observe(torch.tensor([t]), torch.tensor([k]))  # as in the README
        if i in marks_at:
            rows.append({"events": i, "rss_mb": rss_mb(), "seconds": time.perf_counter() - start})
            print(f"| {i:,} | {rows[-1]['rss_mb']:.0f} | {rows[-1]['seconds']:.0f} |", flush=True)
    print(
        f"last next-event mean gap {float(nxt.mean()):.3f}; requires_grad of the state: "
        f"{any(x.requires_grad for s in stream.state for x in s)}"
    )
    if args.json:
        from aaren_rl.files import write_json_atomic

        write_json_atomic(Path(args.json), {"train_steps": args.train_steps, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
