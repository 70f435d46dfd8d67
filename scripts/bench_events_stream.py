"""Cost per event when streaming a long event sequence through the events head.

For each backbone (same width, depth and heads), one stream observes the events of a long
5-mark Hawkes sequence one at a time (``EventStream.observe``: one backbone step, the
next-event distribution out), timed in blocks, until all ``--events`` are in or the
per-backbone ``--budget-s`` is spent. Then, at each ``--probe-at`` position the stream did
not reach, the backbone state is filled with a chunked parallel forward over the same events
(for the Transformer that is its KV cache) and ``--probe-steps`` more events are timed.
Weights are random: the cost of a step does not depend on their values.

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_events_stream.py --threads 1

writes ``docs/events-stream.{json,md,png}`` (refuses to overwrite unless ``--force``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from aaren_rl.files import save_figure_atomic, write_text_atomic


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--backbones", default="aaren,transformer")
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--block", type=int, default=2000, help="events per timed block")
    p.add_argument("--budget-s", type=float, default=240.0, help="streaming time per backbone")
    p.add_argument("--probe-at", default="10000,30000,100000")
    p.add_argument("--probe-steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="docs/events-stream")
    p.add_argument("--force", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if not args.force and any(out.with_suffix(s).exists() for s in (".json", ".md", ".png")):
        raise SystemExit(f"{out}.json/.md/.png exist: pass --force to replace them")

    from aaren_rl.data.events import EventData, EventSequences
    from aaren_rl.heads.events_cli import synthetic_process
    from aaren_rl.heads.registry import get_head
    from aaren_rl.nn.backbone import state_nbytes
    from aaren_rl.nn.build import build_backbone

    process = synthetic_process("hawkes5")
    rate = float(process.stationary_rates().sum())
    rng = np.random.default_rng(0)
    times, marks = process.simulate(1.1 * args.events / rate, rng)
    while len(times) < args.events:  # extend (rarely needed)
        t2, k2 = process.simulate(0.2 * args.events / rate, rng)
        times, marks = np.concatenate([times, times[-1] + t2]), np.concatenate([marks, k2])
    times, marks = times[: args.events], marks[: args.events]
    fit_data = EventData.synthetic(process, 50, 50.0, seed=0)
    seq = EventSequences([times], [marks], np.array([times[-1]]), 5)
    arrays = {k: torch.from_numpy(v) for k, v in seq.batch(np.array([0])).items()}
    probes = [int(x) for x in args.probe_at.split(",") if x]
    results = {}
    for name in args.backbones.split(","):
        torch.manual_seed(0)
        model = get_head("events").build_model(
            fit_data, build_backbone(name, args.d_model, args.n_layers, args.n_heads, dropout=0.0)
        )
        model.eval()
        blocks, reached = [], 0
        with torch.no_grad():
            stream = model.stream(1)
            t_all = torch.from_numpy(times.astype(np.float32))
            k_all = torch.from_numpy(marks)
            start = time.perf_counter()
            while reached < args.events and time.perf_counter() - start < args.budget_s:
                t0 = time.perf_counter()
                stop = min(args.events, reached + args.block)
                for i in range(reached, stop):
                    stream.observe(t_all[i : i + 1], k_all[i : i + 1])
                ms = (time.perf_counter() - t0) / (stop - reached) * 1e3
                reached = stop
                blocks.append(
                    {
                        "events": reached,
                        "ms_per_event": ms,
                        "state_bytes": state_nbytes(stream.state),
                    }
                )
                print(f"{name}: {reached} events, {ms:.3f} ms/event", flush=True)
            probe_rows = []
            for at in probes:
                at = min(at, args.events - args.probe_steps)  # room for the timed steps
                if at <= reached:
                    continue
                state = model.backbone.initial_state(1)
                tokens = model.tokens(
                    arrays["gaps"][:, :at], arrays["times"][:, :at], arrays["marks"][:, :at]
                )
                for c in range(0, at, 256):
                    _, state = model.backbone(tokens[:, c : c + 256], state)
                stream.state, stream.last_time = state, arrays["times"][:, at - 1].clone()
                t0 = time.perf_counter()
                for i in range(at, at + args.probe_steps):
                    stream.observe(t_all[i : i + 1], k_all[i : i + 1])
                ms = (time.perf_counter() - t0) / args.probe_steps * 1e3
                probe_rows.append(
                    {"events": at, "ms_per_event": ms, "state_bytes": state_nbytes(stream.state)}
                )
                print(f"{name}: probe at {at} events, {ms:.3f} ms/event", flush=True)
        results[name] = {"streamed": blocks, "probes": probe_rows, "reached": reached}
    stamp = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "d_model": args.d_model,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "command": "python scripts/bench_events_stream.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "force"),
    }
    write_text_atomic(
        out.with_suffix(".json"), json.dumps({"stamp": stamp, "results": results}, indent=1)
    )
    write_text_atomic(out.with_suffix(".md"), _table(results, stamp))
    _plot(results, out.with_suffix(".png"), stamp)
    print(_table(results, stamp))
    return 0


def _at(rows: list[dict], n: int) -> dict | None:
    for r in rows:
        if r["events"] >= n:
            return r
    return None


def _table(results: dict, stamp: dict) -> str:
    marks = [2000, 10000, 30000, 100000]
    lines = [
        f"events head, streaming cost per event (d_model {stamp['d_model']}, {stamp['n_layers']} "
        f"layers, {stamp['threads']} thread(s), torch {stamp['torch']}, {stamp['machine']})",
        "",
        "| backbone | " + " | ".join(f"ms/event at {m:,}" for m in marks) + " | state at the end |",
        "|---|" + "---|" * (len(marks) + 1),
    ]
    for name, r in results.items():
        cells = []
        last = None
        for m in marks:
            row = _at(r["streamed"], m) if r["reached"] >= m else None
            how = "streamed"
            if row is None:
                near = [p for p in r["probes"] if abs(p["events"] - m) <= 0.01 * m]
                row, how = (near[0] if near else None), "probe"
            if row is None:
                cells.append("n/a")
                continue
            last = row
            cells.append(f"{row['ms_per_event']:.3f}" + (" (probe)" if how == "probe" else ""))
        state = f"{last['state_bytes']:,} B" if last else "n/a"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {state} |")
    lines += ["", f"command: `{stamp['command']}`", ""]
    return "\n".join(lines)


def _plot(results: dict, path: Path, stamp: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"aaren": "tab:blue", "transformer": "tab:orange"}
    for name, r in results.items():
        c = colors.get(name)
        ax.plot(
            [b["events"] for b in r["streamed"]],
            [b["ms_per_event"] for b in r["streamed"]],
            color=c,
            label=f"{name} (streamed)",
        )
        if r["probes"]:
            ax.plot(
                [b["events"] for b in r["probes"]],
                [b["ms_per_event"] for b in r["probes"]],
                "o--",
                color=c,
                label=f"{name} (state filled in parallel, then timed)",
            )
    ax.set_xlabel("events so far in the stream")
    ax.set_ylabel("ms per event")
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"events head on the Aaren and Transformer (KV cache) backbones, streaming a synthetic "
        f"stream: {stamp['threads']} thread(s), torch {stamp['torch']}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
