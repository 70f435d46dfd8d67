"""``aaren-rl bench``: speed and memory of Aaren against a causal Transformer of the same size.

Two measurements, both at the same width, depth and heads:

1. Training: one forward + backward pass over ``[batch, T, d_model]`` for T = 256 .. 8192:
   wall time (median of repeats) and peak memory. Aaren runs its chunked prefix scan; the
   Transformer runs full causal self-attention through ``scaled_dot_product_attention``, once
   unmasked (``is_causal``: SDPA may pick a fused kernel that never stores the ``[T, T]``
   scores) and once with one padded token ("transformer-masked"), which makes it read an
   explicit ``[T, T]`` boolean mask, as any padded or multi-episode batch does.
2. Inference: the latency of one ``step`` at position t (t = 1 .. 10,000, log-spaced), median
   of repeats, and the bytes of the state at t (``aaren_rl.nn.backbone.state_nbytes``): the
   Aaren recurrent step, the Transformer KV cache (full, and bounded by a window) and Decision
   Transformer's window recompute (window 20 and 60).

Peak memory. On CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated before the
pass. On CPU there is no allocator peak counter, so the pass runs once under
``torch.profiler.profile(profile_memory=True)``: the CPU allocator reports every allocation and
free of tensor memory to the profiler (``[memory]`` events with a signed byte count); sorted by
time, their running sum is the memory held above the start, and its maximum is the peak. It
counts every tensor the pass allocates (activations saved for backward, temporaries such as
attention matrices, gradients), not the process's resident size.

Results go to ``OUT/bench.json`` (written after every measurement, atomically, so ``--resume``
continues an interrupted run) and ``OUT/bench.png``; a table is printed.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aaren_rl.bench.common import (
    format_bytes,
    format_table,
    growth_exponent,
    peak_memory_bytes,
    time_calls,
    train_pass,
    write_atomic,
)
from aaren_rl.cli import add_threads_argument, apply_threads
from aaren_rl.files import save_figure_atomic
from aaren_rl.nn.backbone import state_nbytes

TRAIN_LENGTHS = (256, 512, 1024, 2048, 4096, 8192)
STEP_POSITIONS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
QUICK_LENGTHS = (64, 128)
# training variants: label -> (backbone, padding). "transformer-masked" pads the last token,
# which forces an explicit [T, T] attention mask (what a padded or multi-episode batch costs).
TRAIN_VARIANTS = {
    "aaren": ("aaren", False),
    "transformer": ("transformer", False),
    "transformer-masked": ("transformer", True),
}
QUICK_POSITIONS = (1, 10, 100)
MEMORY_METHOD_CPU = "torch.profiler profile_memory: max running sum of CPU allocator events"
MEMORY_METHOD_CUDA = "torch.cuda.max_memory_allocated above the allocation before the pass"


# --------------------------------------------------------------------------- arguments
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``aaren-rl bench``."""
    parser.add_argument("--d-model", type=int, default=128, help="width (default 128, DT's)")
    parser.add_argument("--n-layers", type=int, default=3, help="blocks (default 3, DT's)")
    parser.add_argument("--n-heads", type=int, default=1, help="heads (default 1, DT's)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument(
        "--lengths",
        type=_int_list,
        default=None,
        help=f"training sequence lengths T (default {','.join(map(str, TRAIN_LENGTHS))})",
    )
    parser.add_argument(
        "--positions",
        type=_int_list,
        default=None,
        help=f"step positions t (default {','.join(map(str, STEP_POSITIONS))})",
    )
    parser.add_argument(
        "--windows",
        type=_int_list,
        default=[20, 60],
        help="windows for the recompute and windowed KV-cache steps (default 20,60)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed forward+backward passes")
    parser.add_argument("--step-repeats", type=int, default=30, help="timed steps per position")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="skip longer T for a backbone once one pass takes longer than this (default 60)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda:0")
    parser.add_argument("--dtype", choices=["float32", "float64", "bfloat16"], default="float32")
    add_threads_argument(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: T in {QUICK_LENGTHS}, t in {QUICK_POSITIONS}, window 20, 2 repeats",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace an existing bench.json")
    group.add_argument(
        "--resume", action="store_true", help="keep the measurements of an existing bench.json"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# --------------------------------------------------------------------------- measuring
def build_backbones(
    d_model: int, n_layers: int, n_heads: int, windows: Iterable[int]
) -> dict[str, nn.Module]:
    """The backbones compared, by label. All share width, depth, heads and d_ff = 4 d_model;
    their parameters are drawn from the same seed."""
    from aaren_rl.nn.aaren import AarenBackbone
    from aaren_rl.nn.transformer import TransformerBackbone

    size = dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads)
    nets: dict[str, nn.Module] = {
        "aaren": AarenBackbone(**size),
        "transformer": TransformerBackbone(**size),
    }
    for w in windows:
        nets[f"transformer-kv-w{w}"] = TransformerBackbone(**size, window=w)
        nets[f"transformer-recompute-w{w}"] = TransformerBackbone(
            **size, window=w, step_mode="recompute"
        )
    return nets


def prefill(net: nn.Module, x: torch.Tensor, t: int) -> Any:
    """The state before position ``t`` (1-based): the memory of ``x[:, :t-1]``.

    A windowed Transformer's state keeps only its last ``window - 1`` positions, so feeding it
    those is enough (same state shape and cost: what a step's timing depends on).
    """
    batch = x.shape[0]
    state = net.initial_state(batch, x.device, x.dtype)
    if t == 1:
        return state
    window = getattr(net, "window", None)
    start = 0 if window is None else max(0, t - window)
    _, state = net(x[:, start : t - 1], state)
    return state


def _key(record: dict[str, Any]) -> tuple:
    return (record["kind"], record["backbone"], record.get("T"), record.get("t"))


# --------------------------------------------------------------------------- reporting
def tables(results: dict[str, Any]) -> str:
    """The two tables (training, stepping) as text."""
    train = [r for r in results["records"] if r["kind"] == "train"]
    step = [r for r in results["records"] if r["kind"] == "step"]
    out = []
    names = sorted({r["backbone"] for r in train}, key=list(TRAIN_VARIANTS).index)
    lengths = sorted({r["T"] for r in train})
    by = {(r["backbone"], r["T"]): r for r in train}
    header = ["T"]
    for n in names:
        header += [f"{n} ms", f"{n} peak"]
    rows = []
    for length in lengths:
        row = [str(length)]
        for n in names:
            r = by.get((n, length))
            if r is None or r.get("skipped"):
                row += ["skipped" if r else "-", "-"]
            else:
                best = 1e3 * min(r["seconds"])
                row += [
                    f"{best:.0f}/{1e3 * r['seconds_median']:.0f}",
                    format_bytes(r["peak_bytes"]),
                ]
        rows.append(row)
    out.append("forward+backward per pass in ms (best/median of the repeats), peak tensor memory")
    out.append(format_table(header, rows))
    slopes = []
    for n in names:
        rs = [by[(n, L)] for L in lengths if (n, L) in by and not by[(n, L)].get("skipped")]
        if len(rs) >= 2 and all(r["peak_bytes"] > 0 for r in rs):
            mem = growth_exponent([r["T"] for r in rs], [r["peak_bytes"] for r in rs])
            sec = growth_exponent([r["T"] for r in rs], [r["seconds_median"] for r in rs])
            slopes.append(f"{n}: memory ~ T^{mem:.2f}, time ~ T^{sec:.2f}")
    if slopes:
        out.append(
            "log-log slopes over the measured T (1 linear, 2 quadratic):\n  " + "\n  ".join(slopes)
        )
    names = list(dict.fromkeys(r["backbone"] for r in step))
    positions = sorted({r["t"] for r in step})
    by = {(r["backbone"], r["t"]): r for r in step}

    def latency(r: dict[str, Any]) -> str:
        return f"{1e6 * min(r['seconds']):.0f}/{1e6 * r['seconds_median']:.0f}"

    header = ["t", *names]
    out.append("")
    out.append("one step at position t: latency in us (best/median of the repeats)")
    rows = [
        [str(t)] + [latency(by[(n, t)]) if (n, t) in by else "-" for n in names] for t in positions
    ]
    out.append(format_table(header, rows))
    out.append("")
    out.append("state bytes after the step at position t")
    rows = [
        [str(t)] + [format_bytes(by[(n, t)]["state_bytes"]) if (n, t) in by else "-" for n in names]
        for t in positions
    ]
    out.append(format_table(header, rows))
    slopes = []
    for n in names:
        rs = [by[(n, t)] for t in positions if (n, t) in by]
        if len(rs) >= 2:
            lat = growth_exponent([r["t"] for r in rs], [min(r["seconds"]) for r in rs])
            mem = growth_exponent([r["t"] for r in rs], [max(r["state_bytes"], 1) for r in rs])
            slopes.append(f"{n}: latency ~ t^{lat:.2f}, state ~ t^{mem:.2f}")
    if slopes:
        out.append(
            "log-log slopes over the measured t, best latency (0 flat, 1 linear):\n  "
            + "\n  ".join(slopes)
        )
    return "\n".join(out)


def plot(results: dict[str, Any], path: Path) -> None:
    """Four log-scale panels: pass time and peak memory vs T; step latency and state vs t."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    train = [r for r in results["records"] if r["kind"] == "train" and not r.get("skipped")]
    step = [r for r in results["records"] if r["kind"] == "step"]
    for name in dict.fromkeys(r["backbone"] for r in train):
        rs = sorted((r for r in train if r["backbone"] == name), key=lambda r: r["T"])
        ts = [r["T"] for r in rs]
        axes[0, 0].plot(ts, [1e3 * r["seconds_median"] for r in rs], "o-", label=name)
        axes[0, 1].plot(ts, [r["peak_bytes"] / 2**20 for r in rs], "o-", label=name)
    for name in dict.fromkeys(r["backbone"] for r in step):
        rs = sorted((r for r in step if r["backbone"] == name), key=lambda r: r["t"])
        ts = [r["t"] for r in rs]
        axes[1, 0].plot(ts, [1e6 * min(r["seconds"]) for r in rs], "o-", label=name)
        axes[1, 1].plot(ts, [max(r["state_bytes"], 1) for r in rs], "o-", label=name)
    titles = [
        "Training: one forward+backward pass",
        "Training: peak tensor memory",
        "Rollout: one step at position t",
        "Rollout: state carried between steps",
    ]
    labels = [
        ("sequence length T", "forward+backward, median (ms)"),
        ("sequence length T", "peak tensor memory (MiB)"),
        ("position t", "step latency, best of the repeats (us)"),
        ("position t", "state (bytes)"),
    ]
    from aaren_rl.plots import readable_log_axes

    for ax, title, (xl, yl) in zip(axes.flat, titles, labels, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        readable_log_axes(ax)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    lengths = sorted({r["T"] for r in train})
    from matplotlib.ticker import NullFormatter

    for ax in axes[0]:
        ax.set_xticks(lengths, [f"{n:,}" for n in lengths])
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.suptitle(
        f"Aaren vs causal Transformer backbones (random inputs, no task): "
        f"d_model {cfg['d_model']}, {cfg['n_layers']} layers, "
        f"{cfg['n_heads']} head(s), batch {cfg['batch']}, {cfg['dtype']} on {cfg['device_name']}"
    )
    fig.tight_layout()
    try:
        save_figure_atomic(fig, path)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- the command
def _config(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU ({platform.processor() or platform.machine()})"
    return {
        "d_model": args.d_model,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "batch": args.batch,
        "lengths": args.lengths,
        "positions": args.positions,
        "windows": args.windows,
        "repeats": args.repeats,
        "step_repeats": args.step_repeats,
        "dtype": args.dtype,
        "seed": args.seed,
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "memory_method": MEMORY_METHOD_CUDA if device.type == "cuda" else MEMORY_METHOD_CPU,
        "command": "aaren-rl bench " + " ".join(sys.argv[2:]),
    }


_COMPARED = ("d_model", "n_layers", "n_heads", "batch", "dtype", "seed", "device", "windows")


def _load_previous(path: Path, args: argparse.Namespace, config: dict[str, Any]) -> list[dict]:
    plot_path = path.with_name("bench.png")
    if args.overwrite or not (path.exists() or plot_path.exists()):
        return []
    if not args.resume:
        raise SystemExit(
            f"{path if path.exists() else plot_path} already exists: pass --resume to continue "
            "it, --overwrite to replace it, or choose another --out"
        )
    if not path.exists():
        raise SystemExit(f"{path} is missing, so there is nothing to --resume: pass --overwrite")
    try:
        previous = json.loads(path.read_text())
        old = previous["config"]
        records = list(previous["records"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(
            f"{path}: cannot resume from it ({e}); pass --overwrite to replace it"
        ) from None
    differ = [k for k in _COMPARED if old.get(k) != config[k]]
    if differ:
        raise SystemExit(
            f"{path} was measured with different settings ({', '.join(differ)}): "
            "use the same settings to --resume, or --overwrite"
        )
    config["command"] = old.get("command", config["command"])
    config["resumed_with"] = "aaren-rl bench " + " ".join(sys.argv[2:])
    return records


def run(args: argparse.Namespace) -> int:
    """Measure, print the tables, write bench.json and bench.png under ``args.out``
    (``aaren-rl bench agent``: :mod:`aaren_rl.bench.agent`)."""
    if args.quick:
        args.lengths = args.lengths or list(QUICK_LENGTHS)
        args.positions = args.positions or list(QUICK_POSITIONS)
        args.windows = [20]
        args.repeats = min(args.repeats, 2)
        args.step_repeats = min(args.step_repeats, 5)
    args.lengths = args.lengths or list(TRAIN_LENGTHS)
    args.positions = args.positions or list(STEP_POSITIONS)
    for name in ("d_model", "n_layers", "n_heads", "batch", "repeats", "step_repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    if args.d_model % args.n_heads:
        raise SystemExit(f"--d-model {args.d_model} must be a multiple of --n-heads {args.n_heads}")
    apply_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: CUDA is not available here; use cpu")
    dtype = getattr(torch, args.dtype)
    config = _config(args, device)
    json_path = args.out / "bench.json"
    records = _load_previous(json_path, args, config)
    done = {_key(r) for r in records}

    def save() -> None:
        blob = json.dumps({"config": config, "records": records}, indent=1)
        write_atomic(json_path, blob.encode())

    torch.manual_seed(args.seed)
    nets = build_backbones(args.d_model, args.n_layers, args.n_heads, args.windows)
    for net in nets.values():
        net.to(device=device, dtype=dtype)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    n_tokens = max(max(args.lengths), max(args.positions))
    tokens = torch.randn(args.batch, n_tokens, args.d_model, generator=gen).to(device, dtype)

    from tqdm.auto import tqdm

    train_jobs = [(n, length) for n in TRAIN_VARIANTS for length in args.lengths]
    step_jobs = [(n, t) for n in nets for t in args.positions]
    bar = tqdm(
        total=len(train_jobs) + len(step_jobs), desc="bench", disable=args.no_progress, leave=False
    )
    too_slow: set[str] = set()
    for name, length in train_jobs:
        bar.update()
        bar.set_postfix_str(f"{name} T={length}")
        key = ("train", name, length, None)
        if key in done:
            continue
        record: dict[str, Any] = {"kind": "train", "backbone": name, "T": length}
        if name in too_slow:
            record["skipped"] = f"a shorter pass took over --max-seconds {args.max_seconds}"
        else:
            backbone, padded = TRAIN_VARIANTS[name]
            net = nets[backbone].train()
            mask = None
            if padded:
                mask = torch.ones(args.batch, length, dtype=torch.bool, device=device)
                mask[:, -1] = False
            fn = train_pass(net, tokens[:, :length], mask)
            warm = time_calls(fn, 1, device)[0]
            if warm > args.max_seconds:
                too_slow.add(name)
                seconds = [warm]
            else:
                seconds = time_calls(fn, args.repeats, device)
            record["seconds"] = seconds
            record["seconds_median"] = statistics.median(seconds)
            net.zero_grad(set_to_none=True)  # so the pass frees nothing held from before
            record["peak_bytes"] = peak_memory_bytes(fn, device)
            net.zero_grad(set_to_none=True)
        records.append(record)
        save()
    with torch.no_grad():
        for name, t in step_jobs:
            bar.update()
            bar.set_postfix_str(f"{name} t={t}")
            if ("step", name, None, t) in done:
                continue
            net = nets[name].eval()
            state = prefill(net, tokens, t)
            x_t = tokens[:, t - 1]
            y, after = net.step(x_t, state)  # warm-up; `after` is the state at t
            one_step = functools.partial(net.step, x_t, state)
            seconds = time_calls(one_step, args.step_repeats, device)
            if not torch.isfinite(y).all():
                raise RuntimeError(f"{name}: non-finite step output at t={t}")
            records.append(
                {
                    "kind": "step",
                    "backbone": name,
                    "t": t,
                    "seconds": seconds,
                    "seconds_median": statistics.median(seconds),
                    "state_bytes": state_nbytes(after),
                }
            )
            save()
    bar.close()
    results = {"config": config, "records": records}
    print(
        f"aaren-rl bench: d_model {args.d_model}, {args.n_layers} layers, {args.n_heads} head(s), "
        f"batch {args.batch}, {args.dtype}, {config['device_name']}, "
        f"{config['threads']} thread(s)"
    )
    print(f"peak memory: {config['memory_method']}")
    print(tables(results))
    plot(results, args.out / "bench.png")
    print(f"\nwrote {json_path} and {args.out / 'bench.png'}")
    return 0
