"""The ``aaren-rl`` command line: one sub-command per module, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command -> (module, one-line help). Each module defines
# ``add_arguments(parser: argparse.ArgumentParser) -> None`` and ``run(args) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": (
        "aaren_rl.bench.cli",
        "speed and memory of the Aaren scan/step against a Transformer",
    ),
    "make-dataset": ("aaren_rl.data.make_dataset", "build D4RL-recipe datasets with SB3 SAC"),
    "make-memory-dataset": (
        "aaren_rl.envs.memory_datasets",
        "build offline data for the memory tasks (T-maze, POPGym) from scripted policies",
    ),
    "train": ("aaren_rl.agents.train_cli", "train a decision agent on an offline dataset"),
    "evaluate": ("aaren_rl.agents.evaluate_cli", "roll out a checkpoint in vector environments"),
    "demo": ("aaren_rl.agents.demo", "train and evaluate Decision Aaren on the shipped dataset"),
    "export": (
        "aaren_rl.deploy.cli",
        "export a checkpoint's constant-memory step to ONNX (runs without PyTorch)",
    ),
    "fit": (
        "aaren_rl.heads.cli",
        "fit a forecasting, classification or event head on Aaren or a Transformer",
    ),
}


def _threads(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"--threads must be >= 0 (0: torch's own choice), got {n}")
    return n


MAX_SEED = 2**32 - 1


def seed_value(text: str) -> int:
    """``--seed``: an integer in ``0 .. 2**32 - 1`` (``1e3`` style integral numbers too)."""
    try:
        value = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")) or value != int(value):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    if not 0 <= int(value) <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text} is outside 0 .. {MAX_SEED} (2**32 - 1)")
    return int(value)


def add_threads_argument(parser: argparse.ArgumentParser, default: int = 0) -> None:
    """``--threads N``: torch's intra-op CPU threads for a sub-command (0: torch's own choice).

    On a machine shared with other jobs 1 is often fastest for these small models: extra
    threads wait on busy cores and small operations slow down by orders of magnitude.
    """
    parser.add_argument(
        "--threads",
        type=_threads,
        default=default,
        help=f"torch CPU threads (0: torch's own choice; 1 is often fastest on a shared CPU; "
        f"default {default})",
    )


def apply_threads(threads: int) -> None:
    """Set torch's intra-op thread count; 0 keeps torch's own choice."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def interrupted_exit(command: str, exc: BaseException) -> int:
    """The one line a sub-command prints when SIGINT/SIGTERM stopped it, and the exit code
    (128 + the signal, as a shell reports a process killed by it). Further signals are ignored
    from here on: the process is exiting, and a second Ctrl-C must not turn that into a
    traceback.

    ``TrainingInterrupted`` (a checkpoint of the finished step was written) says to resume;
    ``TrainingAborted`` (a second signal during a step) says which checkpoint was kept; any
    other KeyboardInterrupt came outside a training step and saved nothing new.
    """
    import signal

    from aaren_rl.training.loop import TrainingAborted, TrainingInterrupted

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    signum = int(getattr(exc, "signum", signal.SIGINT))
    name = signal.Signals(signum).name
    if isinstance(exc, TrainingAborted):
        detail = f"{exc}"
    elif isinstance(exc, TrainingInterrupted):
        detail = (
            f"{name} at step {exc.step}: checkpoint written; run the same command with "
            "--resume to continue"
        )
    else:
        detail = (
            f"{name} outside a training step: nothing new was saved; run the command again "
            "(with --resume if its output folder holds a checkpoint)"
        )
    print(f"aaren-rl {command}: interrupted: {detail}", file=sys.stderr)
    return 128 + signum


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aaren-rl", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # import only the module that will run
            importlib.import_module(module_name).add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt as exc:  # one that came while a sub-command was handling another
        return interrupted_exit(args.command, exc)
    except OSError as exc:  # the machine: a full disk, a read-only folder, a vanished file
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"aaren-rl {args.command}: error: {where}{exc.strerror or exc} "
            f"({type(exc).__name__}). Fix: check the path, its permissions and the free disk "
            "space",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
