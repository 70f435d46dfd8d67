"""``aaren-rl bench [agent|export]``: the command line over the three benchmarks.

``aaren-rl bench`` runs :func:`aaren_rl.bench.backbone.run`; ``aaren-rl bench agent`` runs
:func:`aaren_rl.bench.agent.run`; ``aaren-rl bench export`` runs
:func:`aaren_rl.bench.export.run`. Only this module knows all three.
"""

from __future__ import annotations

import argparse

from aaren_rl.bench import agent, backbone, export


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The backbone benchmark's options, and the ``agent`` and ``export`` targets."""
    backbone.add_arguments(parser)
    targets = parser.add_subparsers(dest="bench_target", metavar="TARGET")
    agent.add_arguments(
        targets.add_parser(
            "agent",
            help="the decision agents: rollout latency, memory, training and evaluation time",
            description="aaren-rl bench agent: see aaren_rl/bench/agent.py",
        )
    )
    export.add_arguments(
        targets.add_parser(
            "export",
            help="the exported step (ONNX Runtime float32, int8) against the numba fast step",
            description="aaren-rl bench export: see aaren_rl/bench/export.py",
        )
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark the command line named."""
    target = getattr(args, "bench_target", None)
    if target == "agent":
        return agent.run(args)
    if target == "export":
        return export.run(args)
    return backbone.run(args)
