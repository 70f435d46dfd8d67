"""``aaren-rl export CHECKPOINT --format onnx --out FILE``: the constant-memory step as ONNX.

A thin command over :func:`aaren_rl.deploy.export.export_onnx`: it writes the Decision Aaren
checkpoint's rollout step (state in, state out, weights fused) with the runner's spec in the
file's metadata, prints the file's inputs and state size, and with ``--int8`` also writes the
int8 variant (:func:`aaren_rl.deploy.quantize.quantize_int8`) beside it. Run the file with
``aaren_rl.deploy.evaluate_onnx`` (numpy and onnxruntime only); docs/deploy.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aaren_rl.cli import add_threads_argument, apply_threads
from aaren_rl.deploy.export import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", help="checkpoint.pt written by `aaren-rl train` (or its folder)"
    )
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="file format (onnx)")
    parser.add_argument("--out", required=True, help="the file to write, e.g. policy.onnx")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write OUT with .int8.onnx: weights quantised to int8 (ONNX Runtime's "
        "dynamic quantisation)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUT (and its int8 file) if they exist"
    )
    add_threads_argument(parser, default=1)


def run(args: argparse.Namespace) -> int:
    from aaren_rl.agents.checkpoint import CheckpointError
    from aaren_rl.deploy.export import export_onnx

    apply_threads(args.threads)
    out = Path(args.out)
    int8_path = out.with_suffix(".int8.onnx")
    for path in (out, int8_path) if args.int8 else (out,):
        if path.exists() and not args.overwrite:
            print(f"error: {path} exists; pass --overwrite to replace it", file=sys.stderr)
            return 2
    try:
        written = export_onnx(args.checkpoint, out, overwrite=args.overwrite)
    except (CheckpointError, ValueError, ImportError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import onnx

    from aaren_rl.deploy.spec import SPEC_KEY, loads_spec

    spec = loads_spec({p.key: p.value for p in onnx.load(written).metadata_props}, str(written))
    names = ", ".join(i["name"] for i in spec["inputs"])
    print(
        f"wrote {written} ({written.stat().st_size / 1024:.1f} KiB; spec in metadata '{SPEC_KEY}')"
    )
    print(f"  inputs: {names}; dynamic batch")
    print(f"  state: {spec['state_bytes_per_env']} bytes per env, the same at every step")
    if args.int8:
        from aaren_rl.deploy.quantize import quantize_int8

        q = quantize_int8(written, int8_path, overwrite=args.overwrite)
        print(f"wrote {q} ({q.stat().st_size / 1024:.1f} KiB, int8 weights)")
    return 0
