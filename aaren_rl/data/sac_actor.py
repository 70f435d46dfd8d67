"""SAC behaviour policies kept as their actor alone: what a rollout needs, and nothing else.

An SB3 SAC zip carries the actor, two critics, their target copies and three optimisers' state
(3.1 MB for Hopper); a rollout reads only the actor (0.28 MB). :func:`save_sac_actor` writes
that actor, with the spaces and settings needed to rebuild it, as one ``torch.save`` file of
plain values and tensors (loaded with ``weights_only=True``: no pickled code).
:func:`load_behaviour_policy` rebuilds SB3's own ``stable_baselines3.sac.policies.Actor`` from
it, so ``policy.predict(obs, deterministic)`` runs SB3's code and gives the actions the full
SAC model gives on the same observations, bit for bit (``tests/test_sac_actor.py``).

``SAC.load`` reseeds Python, NumPy and torch with the seed the model was trained with, then
draws torch random numbers to initialise the networks it loads over. An actor converted from a
zip keeps that seed and the torch RNG state ``SAC.load`` left behind, and
:func:`load_behaviour_policy` restores both, so a rollout samples the same actions from either
file (a dataset rolled out from the actor is the zip's, bit for bit).

Convert a zip by hand: ``python -m aaren_rl.data.sac_actor IN-sac.zip OUT-actor.pt``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "aaren-rl sac-actor v1"
ACTOR_SUFFIX = "-actor.pt"
SAC_SUFFIX = "-sac.zip"


def _space_to_dict(space: Any) -> dict[str, Any]:
    import torch
    from gymnasium import spaces

    if not isinstance(space, spaces.Box):
        raise ValueError(f"only Box spaces are supported, got {type(space).__name__}")
    return {
        "dtype": str(space.dtype),
        "low": torch.from_numpy(np.array(space.low, dtype=np.float64)),
        "high": torch.from_numpy(np.array(space.high, dtype=np.float64)),
    }


def _space_from_dict(d: dict[str, Any]) -> Any:
    from gymnasium import spaces

    dtype = np.dtype(d["dtype"])
    return spaces.Box(d["low"].numpy().astype(dtype), d["high"].numpy().astype(dtype), dtype=dtype)


def save_sac_actor(model: Any, path: str | os.PathLike[str], **extra: Any) -> Path:
    """Write the actor of an SB3 ``SAC`` model (or of the SAC zip at ``model``) to ``path``.

    ``extra`` (plain values) is stored beside it, e.g. ``source_sha256``. Returns the path.
    """
    import torch
    from stable_baselines3.common.torch_layers import FlattenExtractor

    if isinstance(model, str | os.PathLike):
        from stable_baselines3 import SAC

        source = Path(model)
        extra.setdefault("source_file", source.name)
        extra.setdefault("source_sha256", hashlib.sha256(source.read_bytes()).hexdigest())
        model = SAC.load(source, device="cpu")
        # what SAC.load leaves in torch's RNG (its seed, then the networks' initialisation)
        extra.setdefault("torch_rng_state", torch.get_rng_state())
    actor = model.policy.actor
    params = actor._get_constructor_parameters()
    if not isinstance(actor.features_extractor, FlattenExtractor):
        raise ValueError(
            f"only SAC actors with a FlattenExtractor are supported, got "
            f"{type(actor.features_extractor).__name__}"
        )
    if params["use_sde"]:
        raise ValueError("SAC actors with gSDE (use_sde=True) are not supported")
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu().clone() for k, v in actor.state_dict().items()},
        "observation_space": _space_to_dict(model.observation_space),
        "action_space": _space_to_dict(model.action_space),
        "net_arch": [int(n) for n in params["net_arch"]],
        "activation_fn": params["activation_fn"].__name__,
        "normalize_images": bool(params["normalize_images"]),
        "clip_mean": float(params["clip_mean"]),
        "seed": model.seed,
        "sac_steps": int(model.num_timesteps),
        **extra,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_sac_actor(path: str | os.PathLike[str], device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """SB3's SAC ``Actor`` saved by :func:`save_sac_actor`, in eval mode, and its other fields.

    ``actor.predict(obs [batch, obs_dim], deterministic)`` -> ``(actions [batch, act_dim], None)``.
    Does not reseed anything (:func:`load_behaviour_policy` does, as ``SAC.load``).
    """
    import torch
    from stable_baselines3.common.torch_layers import FlattenExtractor
    from stable_baselines3.common.utils import get_device
    from stable_baselines3.sac.policies import Actor

    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated, foreign or corrupt file
        raise ValueError(
            f"{path}: not a readable SAC actor file ({type(exc).__name__}: {exc}). Fix: "
            f"rebuild it with `python -m aaren_rl.data.sac_actor SAC.zip {path.name}`"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: key 'format' is not {FORMAT!r}; not a SAC actor file")
    obs_space = _space_from_dict(payload["observation_space"])
    act_space = _space_from_dict(payload["action_space"])
    extractor = FlattenExtractor(obs_space)
    actor = Actor(
        obs_space,
        act_space,
        net_arch=payload["net_arch"],
        features_extractor=extractor,
        features_dim=extractor.features_dim,
        activation_fn=getattr(torch.nn, payload["activation_fn"]),
        normalize_images=payload["normalize_images"],
        clip_mean=payload["clip_mean"],
    )
    actor.load_state_dict(payload["state_dict"])  # strict: every weight, nothing else
    actor.set_training_mode(False)
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    return actor.to(get_device(device)), info


def load_behaviour_policy(path: str | os.PathLike[str], device: str = "cpu") -> tuple[Any, int]:
    """A behaviour policy with SB3's ``predict`` from an actor file or a SAC zip, and its SAC step.

    Either way every RNG is reseeded with the seed the policy was trained with (what
    ``SAC.load`` does), so both files give a rollout the same sampled actions.
    """
    from stable_baselines3.common.utils import set_random_seed

    path = Path(path)
    if path.name.endswith(ACTOR_SUFFIX):
        actor, info = load_sac_actor(path, device=device)
        if info.get("seed") is not None:
            set_random_seed(info["seed"], using_cuda=actor.device.type == "cuda")
        if info.get("torch_rng_state") is not None:
            import torch

            torch.set_rng_state(info["torch_rng_state"])
        return actor, int(info["sac_steps"])
    from stable_baselines3 import SAC

    model = SAC.load(path, device=device)
    return model, int(model.num_timesteps)


def find_policy(folder: str | os.PathLike[str], task: str, level: str) -> Path | None:
    """``TASK-LEVEL-sac.zip`` or ``TASK-LEVEL-actor.pt`` in ``folder`` (the zip first), or None."""
    for suffix in (SAC_SUFFIX, ACTOR_SUFFIX):
        path = Path(folder) / f"{task}-{level}{suffix}"
        if path.is_file():
            return path
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m aaren_rl.data.sac_actor IN-sac.zip OUT-actor.pt``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="an SB3 SAC zip")
    parser.add_argument("out", help="the actor file to write (*-actor.pt)")
    args = parser.parse_args(argv)
    path = save_sac_actor(args.source, args.out)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
