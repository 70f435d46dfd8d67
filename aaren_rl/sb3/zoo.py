"""rl-zoo3 with AarenPPO: a thin launcher that registers the algorithm, then runs the zoo.

rl-zoo3 fixes its ``--algo`` choices from ``rl_zoo3.utils.ALGOS`` when it parses the command
line, before ``--gym-packages`` are imported, so ``python -m rl_zoo3.train --algo aaren_ppo``
cannot see an algorithm from another package. This launcher adds ``aaren_ppo`` to ``ALGOS``
and registers this package's envs (CartPoleNoVel-v1, PendulumNoVel-v1, POPGym's, ...), then
hands the rest of the command line to rl-zoo3's own ``train`` or ``enjoy``::

    python -m aaren_rl.sb3.zoo train --algo aaren_ppo --env CartPoleNoVel-v1 -f logs --seed 0
    python -m aaren_rl.sb3.zoo enjoy --algo aaren_ppo --env CartPoleNoVel-v1 -f logs -n 1000

``train`` with ``--algo aaren_ppo`` reads ``hyperparams/aaren_ppo.yml`` (shipped in the
wheel) unless ``--conf-file`` names another. Every other option is rl-zoo3's.
"""

from __future__ import annotations

import sys
from pathlib import Path

COMMANDS = ("train", "enjoy")
ALGO_NAME = "aaren_ppo"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
# the wheel's copy first, then a source checkout's
_HYPERPARAM_DIRS = (_PACKAGE_DIR / "_presets" / "hyperparams", _PACKAGE_DIR.parent / "hyperparams")


def hyperparams_file() -> Path:
    """``aaren_ppo.yml``, AarenPPO's rl-zoo3 hyperparameters."""
    for folder in _HYPERPARAM_DIRS:
        if (folder / f"{ALGO_NAME}.yml").is_file():
            return folder / f"{ALGO_NAME}.yml"
    raise FileNotFoundError(
        f"no {ALGO_NAME}.yml under {[str(d) for d in _HYPERPARAM_DIRS]}; pass --conf-file"
    )


def register() -> None:
    """Add AarenPPO to rl-zoo3's algorithms and register this package's envs (idempotent)."""
    try:
        import rl_zoo3.import_envs  # noqa: F401  # the zoo's envs first: ours skip their ids
        from rl_zoo3 import utils
    except ImportError as err:
        raise ImportError("the zoo launcher needs rl-zoo3: pip install 'aaren-rl[zoo]'") from err
    from aaren_rl.sb3.envs import register_memory_envs
    from aaren_rl.sb3.ppo import AarenPPO

    utils.ALGOS[ALGO_NAME] = AarenPPO
    register_memory_envs()


def _algo(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg == "--algo" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--algo="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    """``argv``: ``[command, *rl-zoo3 options]`` with ``command`` ``train`` or ``enjoy``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m aaren_rl.sb3.zoo {{{','.join(COMMANDS)}}} [rl-zoo3 options]")
        return 2
    command, rest = argv[0], argv[1:]
    register()
    has_conf = any(a in ("-conf", "--conf-file") or a.startswith("--conf-file=") for a in rest)
    if command == "train" and _algo(rest) == ALGO_NAME and not has_conf:
        rest += ["--conf-file", str(hyperparams_file())]
    sys.argv = [f"rl_zoo3.{command}", *rest]
    if command == "train":
        from rl_zoo3.train import train

        train()
    else:
        from rl_zoo3.enjoy import enjoy

        enjoy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
