"""``aaren-rl fit events``: the event head's arguments, data, outputs and reference rows.

Hooked into :mod:`aaren_rl.heads.cli` (the shared ``fit`` command and training loop). Data is
either synthetic with its true process (``--synthetic hawkes5|hawkes1|sinusoid``) or three
EasyTPP-layout JSON files (``--train/--val/--test``, see :mod:`aaren_rl.data.events`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aaren_rl.files import save_figure_atomic

SYNTHETIC = ("hawkes5", "hawkes1", "sinusoid")


def synthetic_process(name: str) -> Any:
    """The true process of a named synthetic setting (see docs/events.md)."""
    from aaren_rl.data.point_processes import HawkesProcess, SinusoidalPoisson

    if name == "hawkes1":  # the reference setting: mu 0.7, branching 0.5, beta 3
        return HawkesProcess([0.7], [[0.5]], 3.0)
    if name == "hawkes5":  # 5 marks: self-excitation 0.3, each mark excites the next by 0.25
        branching = 0.3 * np.eye(5) + 0.25 * np.roll(np.eye(5), 1, axis=0)
        return HawkesProcess([0.3, 0.2, 0.2, 0.15, 0.1], branching, 2.0)
    if name == "sinusoid":  # a + b sin(2 pi t / period), 3 marks at fixed odds
        return SinusoidalPoisson(1.0, 0.8, 10.0, np.array([0.5, 0.3, 0.2]))
    raise ValueError(f"--synthetic {name!r}: expected one of {SYNTHETIC}")


def add_event_parser(sub: Any) -> argparse.ArgumentParser:
    ev = sub.add_parser("events", help="forecast the next event (time and mark) of event streams")
    src = ev.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", choices=SYNTHETIC, help="simulate with the true process")
    src.add_argument("--train", help="EasyTPP-layout JSON (needs --val and --test)")
    ev.add_argument("--val", help="validation JSON (with --train)")
    ev.add_argument("--test", help="test JSON (with --train)")
    ev.add_argument("--n-marks", type=int, default=None, help="marks (default: dim_process)")
    ev.add_argument("--n-sequences", type=int, default=1000, help="synthetic sequences")
    ev.add_argument("--window", type=float, default=50.0, help="synthetic window [0, W]")
    ev.add_argument("--data-seed", type=int, default=0)
    ev.add_argument("--write-data", default=None, help="also write the synthetic splits here")
    ev.add_argument("--components", type=int, default=16, help="log-normal mixture size")
    return ev


def load_event_data(args: argparse.Namespace) -> Any:
    from aaren_rl.data.events import EventData, write_event_json

    if args.synthetic:
        data = EventData.synthetic(
            synthetic_process(args.synthetic),
            args.n_sequences,
            args.window,
            seed=args.data_seed,
            name=f"{args.synthetic} ({args.n_sequences} seqs, window {args.window:g})",
        )
        if args.write_data:
            for split, seqs in data.splits.items():
                path = Path(args.write_data) / f"{split}.json"
                if not path.exists():
                    write_event_json(path, seqs)
        return data
    if not (args.val and args.test):
        raise ValueError("--train needs --val and --test")
    return EventData.from_files(args.train, args.val, args.test, args.n_marks)


def event_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"n_components": args.components, "dropout": args.dropout}


def event_data_name(args: argparse.Namespace) -> str:
    if args.synthetic:
        return f"{args.synthetic} ({args.n_sequences} seqs, window {args.window:g})"
    return f"{Path(args.train).name} / {Path(args.val).name} / {Path(args.test).name}"


def _longest(seqs: Any) -> int:
    return int(np.argmax(seqs.lengths))


def stream_check(model: Any, seqs: Any, row: int, device: torch.device) -> dict[str, float]:
    """Stream one sequence event by event; compare each next-event distribution with the
    parallel forward's. Returns the max abs differences and the ms per event."""
    batch = {k: torch.from_numpy(v).to(device) for k, v in seqs.batch(np.array([row])).items()}
    rel = batch["times"] - batch["start"][:, None]
    parallel = model.distributions(batch["gaps"], rel, batch["marks"], batch["mask"])
    stream = model.stream(1, float(batch["start"][0]))
    diffs = {"mixture": 0.0, "mean": 0.0}
    t0 = time.perf_counter()
    n = int(batch["lengths"][0])
    outs = [stream.observe(batch["times"][:, i], batch["marks"][:, i]) for i in range(n)]
    ms = (time.perf_counter() - t0) / n * 1e3
    for i, d in enumerate(outs):
        p = parallel.index((slice(None), i))
        diffs["mixture"] = max(
            diffs["mixture"],
            float((d.logits - p.logits).abs().max()),
            float((d.loc - p.loc).abs().max()),
            float((d.log_scale - p.log_scale).abs().max()),
        )
        diffs["mean"] = max(diffs["mean"], float(((d.mean() - p.mean()) / p.mean()).abs().max()))
    return {
        "stream_vs_parallel_max_abs_diff": diffs["mixture"],
        "stream_vs_parallel_mean_rel_diff": diffs["mean"],
        "stream_ms_per_observation": ms,
        "stream_events_checked": n,
    }


def event_outputs(model: Any, data: Any, out: Path, device: torch.device) -> dict[str, Any]:
    """Oracle and baselines on test, the streaming check and cost, and the intensity plot."""
    from aaren_rl.nn.backbone import state_nbytes

    test = data.splits["test"]
    row = _longest(test)
    extra: dict[str, Any] = stream_check(model, test, row, device)
    stream = model.stream(1)
    for t, k in zip(test.times[row], test.marks[row], strict=True):
        stream.observe(torch.tensor([t], dtype=torch.float32), torch.tensor([k]))
    extra["stream_state_bytes"] = state_nbytes(stream.state)
    extra["oracle_test"] = {k: float(v) for k, v in data.oracle("test").items()}
    extra["baseline_test"] = {k: float(v) for k, v in data.poisson_baseline("test").items()}
    extra["test_sequences"] = len(test)
    extra["test_events_scored"] = test.n_scored
    plot_intensity(model, data, 0, out / "predictions.png", device)
    return extra


@torch.no_grad()
def plot_intensity(
    model: Any, data: Any, row: int, path: Path, device: torch.device, span: float | None = None
) -> None:
    """The model's total intensity against the true one along test sequence ``row`` (and the
    predicted vs true next-gap density after one event)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aaren_rl.plots import backbone_label

    seqs = data.splits["test"]
    times, marks, start = seqs.times[row], seqs.marks[row], float(seqs.start[row])
    span = span or min(float(seqs.end[row] - start), 30.0 * float(np.mean(np.diff(times))))
    batch = {k: torch.from_numpy(v).to(device) for k, v in seqs.batch(np.array([row])).items()}
    dist = model.distributions(
        batch["gaps"], batch["times"] - batch["start"][:, None], batch["marks"], batch["mask"]
    )
    grid = np.linspace(times[0], times[0] + span, 2000)[1:]
    last = np.searchsorted(times, grid, side="left") - 1  # the latest event strictly before
    tau = torch.from_numpy((grid - times[last]).astype(np.float32)).to(device)
    at = dist.index((0, torch.from_numpy(last).to(device)))
    predicted = at.intensity(tau).sum(dim=-1).cpu().numpy()
    fig, axes = plt.subplots(2, 1, figsize=(9, 6))
    ax = axes[0]
    if data.process is not None:
        true = data.process.intensity_at(grid, times, marks).sum(axis=1)
        ax.plot(grid, true, color="k", lw=1.2, label="true intensity")
    ax.plot(grid, predicted, color="tab:red", lw=1.0, label="model intensity")
    shown = times[(times >= times[0]) & (times <= times[0] + span)]
    ax.plot(shown, np.zeros_like(shown), "|", color="0.3", ms=10, label="events")
    ax.set_xlabel("time")
    ax.set_ylabel("total intensity")
    ax.set_title(f"{backbone_label(model)} events head on {data.name}: test sequence {row}")
    ax.legend(loc="upper right", fontsize=8)
    # the next-gap density after event j, where the true density is known in closed form
    ax = axes[1]
    j = min(10, len(times) - 1)
    gaps = np.linspace(1e-3, 4 * float(np.mean(np.diff(times))), 400)
    d = dist.index((0, j))
    density = d.log_prob_time(torch.from_numpy(gaps.astype(np.float32))).exp().cpu().numpy()
    ax.plot(gaps, density, color="tab:red", label="model p(tau)")
    if data.process is not None:
        history = times[: j + 1]
        lam = data.process.intensity_at(history[-1] + gaps, history, marks[: j + 1]).sum(axis=1)
        survival = np.exp(
            -np.concatenate([[0.0], np.cumsum(0.5 * (lam[1:] + lam[:-1]) * np.diff(gaps))])
        )
        survival *= np.exp(-lam[0] * gaps[0])
        ax.plot(gaps, lam * survival, color="k", label="true p(tau)")
    ax.set_title(f"next-gap density after event {j}", fontsize=10)
    ax.set_xlabel(f"gap after event {j}")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def reference_lines(rows: list[dict[str, Any]]) -> str:
    """The true process's and the Poisson baseline's test scores, under the same definitions."""
    oracle, base = rows[0].get("oracle_test", {}), rows[0].get("baseline_test", {})
    lines = ["", "references on test (same definitions):", ""]
    if oracle:
        text = f"- true process: nll_per_event {oracle['nll_per_event']:.4f}"
        if "time_nll" in oracle:
            text += f" (time {oracle['time_nll']:.4f}, mark {oracle['mark_nll']:.4f})"
        text += f", Bayes mark accuracy {oracle['mark_accuracy']:.4f}"
        if "rmse" in oracle:
            text += f", rmse of the true conditional mean gap {oracle['rmse']:.4f}"
        lines.append(text)
    if base:
        lines.append(
            f"- Poisson per mark (train rates): nll_per_event {base['nll_per_event']:.4f}; "
            f"predicting the train mean gap: rmse {base['rmse_mean_gap']:.4f}; majority mark: "
            f"accuracy {base['mark_accuracy_majority']:.4f}"
        )
    return "\n".join(lines) + "\n"
