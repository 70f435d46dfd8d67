"""``aaren-rl fit forecast|classify|events``: fit a head on one or more backbones, side by side.

Every backbone named by ``--backbone`` (``aaren``, ``transformer`` or both, comma-separated)
is fitted with the same data, width, budget and seed into ``OUT/<backbone>/``: TensorBoard
(``tb/``), progress, ``checkpoint.pt`` (``--resume`` continues it), ``eval.jsonl``,
``metrics.json``, ``results.json`` (test metrics, training and streaming cost) and a plot of
predictions against the truth. A forecast also writes ``future.csv``: the ``H`` steps after the
end of the file. With several backbones, ``OUT/comparison.md`` holds one row per backbone.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from aaren_rl.cli import (
    _threads,
    add_threads_argument,
    apply_threads,
    interrupted_exit,
    seed_value,
)
from aaren_rl.files import save_figure_atomic, write_json_atomic, write_text_atomic
from aaren_rl.heads.fit import BackboneConfig, HeadTrainer
from aaren_rl.nn.build import BACKBONES
from aaren_rl.nn.size import check_model_fits
from aaren_rl.training.config import LoopConfig
from aaren_rl.training.distributed import DistContext, setup_distributed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_threads_argument(parser, default=1)  # `aaren-rl fit --threads N HEAD` or after HEAD
    sub = parser.add_subparsers(dest="head", metavar="HEAD", required=True)
    fc = sub.add_parser("forecast", help="forecast the next H steps of a CSV series")
    fc.add_argument("--data", required=True, help="CSV: a date column, then channels")
    fc.add_argument("--input-len", type=int, default=96)
    fc.add_argument("--horizon", type=int, default=96, help="H (96, 192, 336, 720)")
    fc.add_argument("--split", default="auto", help="auto | ett-hour | ett-minute | ratio")
    fc.add_argument("--columns", default=None, help="comma-separated channels (default: all)")
    fc.add_argument("--patch-len", type=int, default=16)
    fc.add_argument("--channel-mixing", action="store_true", help="mix channels in each token")
    fc.add_argument("--norm", default="revin", choices=["revin", "none"])
    cl = sub.add_parser("classify", help="classify variable-length multivariate series")
    src = cl.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a UEA dataset aeon ships (JapaneseVowels, BasicMotions)")
    src.add_argument("--train", help="train file (.ts, .npz or long .csv); needs --test")
    cl.add_argument("--test", help="test file (with --train)")
    cl.add_argument("--pool", default="last", choices=["last", "mean"])
    from aaren_rl.heads.events_cli import add_event_parser

    for p in (fc, cl, add_event_parser(sub)):
        _common(p)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="aaren", help="aaren, transformer, or aaren,transformer")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=None)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--schedule", default="cosine", choices=["constant", "cosine"])
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=0, help="0: only at the end")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--out", required=True, help="output folder (one sub-folder per backbone)")
    p.add_argument("--resume", action="store_true", help="continue OUT/<backbone>/checkpoint.pt")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--threads",
        type=_threads,
        default=argparse.SUPPRESS,  # keeps the value given before HEAD (default 1)
        help="torch CPU threads (0: torch's own choice; default 1)",
    )


def _backbones(text: str) -> list[str]:
    names = [b.strip() for b in text.split(",") if b.strip()]
    bad = [b for b in names if b not in BACKBONES]
    if bad or not names:
        raise ValueError(f"--backbone {text!r}: expected names from {BACKBONES}, comma-separated")
    return names


def run(args: argparse.Namespace) -> int:
    from aaren_rl.data.errors import DatasetError
    from aaren_rl.training.checkpoint import CheckpointError

    apply_threads(args.threads)
    try:
        ctx = setup_distributed(args.device)  # under torchrun: DDP, each rank its share
    except ValueError as exc:
        print(f"aaren-rl fit: error: {exc}", file=sys.stderr)
        return 2
    try:
        names = _backbones(args.backbone)
        data = _load_data(args)
        rows = [fit_one(args, data, name, ctx) for name in names]
    except (DatasetError, ValueError, FileExistsError, CheckpointError) as exc:
        print(f"aaren-rl fit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # SIGINT/SIGTERM: see aaren_rl.cli.interrupted_exit
        return interrupted_exit("fit", exc)
    finally:
        if ctx.initialized_here and dist.is_initialized():
            dist.destroy_process_group()
    out = Path(args.out)
    if len(rows) > 1 and ctx.is_main:
        table = comparison_table(args.head, rows)
        if args.head == "events":
            from aaren_rl.heads.events_cli import reference_lines

            table += reference_lines(rows)
        write_text_atomic(out / "comparison.md", table)
        write_json_atomic(out / "comparison.json", rows)
        print(table)
    return 0


def _load_data(args: argparse.Namespace) -> Any:
    if args.head == "events":
        from aaren_rl.heads.events_cli import load_event_data

        return load_event_data(args)
    if args.head == "forecast":
        from aaren_rl.data.series_csv import ForecastData

        columns = args.columns.split(",") if args.columns else None
        return ForecastData.from_csv(args.data, args.input_len, args.horizon, args.split, columns)
    from aaren_rl.data.labelled_series import ClassifyData

    if args.dataset:
        return ClassifyData.shipped(args.dataset)
    if not args.test:
        raise ValueError("--train needs --test")
    return ClassifyData.from_files(args.train, args.test)


def _head_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.head == "events":
        from aaren_rl.heads.events_cli import event_options

        return event_options(args)
    if args.head == "forecast":
        return {
            "patch_len": args.patch_len,
            "channel_independent": not args.channel_mixing,
            "norm": args.norm,
            "dropout": args.dropout,
        }
    return {"pool": args.pool, "dropout": args.dropout}


def fit_one(
    args: argparse.Namespace, data: Any, backbone_name: str, ctx: DistContext | None = None
) -> dict[str, Any] | None:
    """Fit the head on one backbone into ``OUT/<backbone>/``; returns its results row (None
    on the ranks other than 0 under torchrun, which write nothing)."""
    from aaren_rl.heads.registry import get_head
    from aaren_rl.training.rng import seed_everything

    head = get_head(args.head)
    out = Path(args.out) / backbone_name
    backbone = BackboneConfig(
        backbone_name, args.d_model, args.n_layers, args.n_heads, args.d_ff, args.dropout
    )
    config = LoopConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        schedule=args.schedule,
        grad_clip=args.grad_clip,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        seed=args.seed,
    )
    ctx = ctx or DistContext(device=torch.device(args.device))
    device = ctx.device
    seed_everything(config.seed)  # identical initial weights on every rank
    options = _head_options(args)
    check_model_fits(
        lambda: head.build_model(data, backbone.build(), **options),
        device,
        f"--d-model {args.d_model} --n-layers {args.n_layers} --d-ff {args.d_ff}",
        "lower --d-model (or --n-layers, --d-ff)",
    )
    model = head.build_model(data, backbone.build(), **options).to(device)
    trainer = HeadTrainer(
        head,
        model,
        data,
        config,
        out_dir=out,
        dist_ctx=ctx,
        resume=args.resume,
        progress=not args.no_progress,
        run_info={"model_options": options, "data": _data_name(args)},
        backbone=backbone,
    )
    eval_seconds = [0.0]
    evaluate = trainer.evaluate

    def timed_evaluate() -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        try:
            return evaluate()
        finally:
            eval_seconds[0] += time.perf_counter() - t0

    trainer.evaluate = timed_evaluate  # type: ignore[method-assign]
    result = trainer.train()
    if not ctx.is_main:
        return None
    trained_steps = result.end_step - result.start_step
    model = trainer.model.eval()
    with torch.no_grad():
        final = trainer.evaluate()[0]
        if args.head == "forecast":
            extra = forecast_outputs(model, data, out, device)
        elif args.head == "events":
            from aaren_rl.heads.events_cli import event_outputs

            extra = event_outputs(model, data, out, device)
        else:
            extra = classify_outputs(model, data, out, device)
    row = {
        "head": args.head,
        "backbone": backbone_name,
        "data": _data_name(args),
        "step": result.end_step,
        "metrics": {k: v for k, v in final.items() if k != "step"},
        "train_s_per_step": (result.seconds - eval_seconds[0]) / trained_steps
        if trained_steps
        else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        **extra,
        "backbone_config": backbone.__dict__,
        "head_options": options,
        "train_config": config.to_dict(),
        "machine": machine_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "command": "aaren-rl " + " ".join(sys.argv[1:]) if sys.argv else None,
    }
    write_json_atomic(out / "results.json", row)
    return row


def machine_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one) and the architecture."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.machine() or "unknown machine"


def _data_name(args: argparse.Namespace) -> str:
    if args.head == "events":
        from aaren_rl.heads.events_cli import event_data_name

        return event_data_name(args)
    if args.head == "forecast":
        return f"{Path(args.data).name} L={args.input_len} H={args.horizon}"
    return args.dataset or f"{Path(args.train).name} / {Path(args.test).name}"


# ----------------------------------------------------------------------------- outputs


def _stream_timing(step: Any, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        step(i)
    return (time.perf_counter() - t0) / n * 1e3


def forecast_outputs(model: Any, data: Any, out: Path, device: torch.device) -> dict[str, Any]:
    """Plot, future.csv, and the streaming check and cost on the last test window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aaren_rl.heads.forecast import forecast_windows
    from aaren_rl.nn.backbone import state_nbytes
    from aaren_rl.plots import backbone_label

    windows = data.windows("test")
    pred, target = forecast_windows(model, windows, device)
    last = windows.batch(np.array([len(windows) - 1]))
    x = torch.from_numpy(last["x"]).to(device)
    # streaming: the last test window one observation at a time, a forecast after each patch
    stream = model.stream(1)
    forecasts = []

    def feed(i: int) -> None:
        stream.observe(x[:, i])
        if stream.pending == []:
            forecasts.append(stream.forecast())

    ms = _stream_timing(feed, x.shape[1])
    stream_diff = float((forecasts[-1] - model(x)).abs().max())
    # the future: the file's last input_len rows
    values = data.standardise(data.table.values[-data.input_len :])
    future = model(torch.from_numpy(values[None]).to(device))[0].cpu().numpy()
    future = data.unstandardise(future)
    _write_future_csv(out / "future.csv", data, future)
    # plot: the last test window's last channel (ETT's OT), input, truth and forecast
    channel = len(data.table.columns) - 1
    fig, ax = plt.subplots(figsize=(9, 3.5))
    li, h = data.input_len, data.horizon
    ax.plot(range(li), last["x"][0, :, channel], color="0.4", label="input")
    ax.plot(range(li, li + h), target[-1, :, channel], color="k", label="truth")
    ax.plot(range(li, li + h), pred[-1, :, channel], color="tab:red", label="forecast")
    ax.set_title(
        f"{backbone_label(model)} forecast head on {data.table.path.name}, channel "
        f"{data.table.columns[channel]}: last test window (input {li}, horizon {h})"
    )
    ax.set_xlabel("time step in the window")
    ax.set_ylabel("standardised value")
    ax.legend()
    fig.tight_layout()
    save_figure_atomic(fig, out / "predictions.png")
    plt.close(fig)
    return {
        "stream_ms_per_observation": ms,
        "stream_state_bytes": state_nbytes(stream.state),
        "stream_vs_parallel_max_abs_diff": stream_diff,
        "test_windows": len(windows),
        "split": data.split_record(),
    }


def _write_future_csv(path: Path, data: Any, future: np.ndarray) -> None:
    from datetime import datetime

    dates = data.table.dates
    try:
        last, before = datetime.fromisoformat(dates[-1]), datetime.fromisoformat(dates[-2])
        step = last - before
        stamps = [str(last + step * (i + 1)) for i in range(len(future))]
    except ValueError:
        stamps = [f"+{i + 1}" for i in range(len(future))]
    lines = ["date," + ",".join(data.table.columns)]
    lines += [
        f"{d}," + ",".join(f"{v:.6g}" for v in row) for d, row in zip(stamps, future, strict=True)
    ]
    write_text_atomic(path, "\n".join(lines) + "\n")


def classify_outputs(model: Any, data: Any, out: Path, device: torch.device) -> dict[str, Any]:
    """Confusion-matrix plot, and the streaming check and cost on the longest test series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aaren_rl.heads.classify import predict_classes
    from aaren_rl.nn.backbone import state_nbytes
    from aaren_rl.plots import backbone_label

    pred = predict_classes(model, data, "test", device)
    truth = data.targets("test")
    k = len(data.classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth, pred), 1)
    longest = int(np.argmax(data.test.lengths))
    series = torch.from_numpy(data.test.series[longest][None]).to(device)
    stream = model.stream(1)
    probs = []
    ms = _stream_timing(lambda i: probs.append(stream.observe(series[:, i])), series.shape[1])
    parallel = model.step_probabilities(series)
    diff = float((torch.stack(probs, dim=1) - parallel).abs().max())
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(confusion, cmap="Blues")
    for i in range(k):
        for j in range(k):
            if confusion[i, j]:
                ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(k), data.classes, rotation=90, fontsize=7)
    ax.set_yticks(range(k), data.classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    test_file = getattr(data.test, "path", None)
    name = Path(test_file).name if test_file else "test set"
    ax.set_title(
        f"{backbone_label(model)} classifier, {name}\ntest accuracy {np.mean(pred == truth):.3f}",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure_atomic(fig, out / "predictions.png")
    plt.close(fig)
    return {
        "stream_ms_per_observation": ms,
        "stream_state_bytes": state_nbytes(stream.state),
        "stream_vs_parallel_max_abs_diff": diff,
        "test_series": len(truth),
        "confusion": confusion.tolist(),
    }


def comparison_table(head: str, rows: list[dict[str, Any]]) -> str:
    """One markdown row per backbone: metrics, parameters, training and streaming cost."""
    metric_keys = [k for k in rows[0]["metrics"] if k.startswith("test")]
    head_row = ["backbone", *metric_keys, "params", "train s/step", "stream ms/obs", "state bytes"]
    lines = [
        f"{head} on {rows[0]['data']} ({rows[0]['step']} steps, {rows[0]['threads']} thread(s), "
        f"torch {rows[0]['torch']}, {rows[0]['machine']})",
        "",
        "| " + " | ".join(head_row) + " |",
        "|" + "---|" * len(head_row),
    ]
    for r in rows:
        cells = [r["backbone"], *(f"{r['metrics'][k]:.4f}" for k in metric_keys)]
        cells += [
            f"{r['parameters']:,}",
            f"{r['train_s_per_step']:.4f}" if r["train_s_per_step"] else "n/a",
            f"{r['stream_ms_per_observation']:.3f}",
            f"{r['stream_state_bytes']:,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
