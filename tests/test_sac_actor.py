"""A SAC zip stripped to its actor (aaren_rl.data.sac_actor) acts as the full SB3 model does:
the same actions on the same observations (deterministic and sampled from the same torch RNG
state), and, loaded as a behaviour policy, the same sampled actions as ``SAC.load`` leaves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC

from aaren_rl.data.make_dataset import SHIPPED_POLICIES
from aaren_rl.data.sac_actor import find_policy, load_behaviour_policy, save_sac_actor


@pytest.fixture(scope="module")
def sac_zip(tmp_path_factory) -> Path:
    """A briefly trained Hopper SAC, saved as SB3 saves it (critics and optimisers included)."""
    path = tmp_path_factory.mktemp("sac") / "hopper-medium-sac.zip"
    model = SAC("MlpPolicy", "Hopper-v5", learning_starts=50, batch_size=16, seed=3, device="cpu")
    model.learn(80)  # a few updates: the actor's weights are no longer the initial ones
    model.save(path)
    return path


def test_stripped_actor_acts_as_the_full_model(sac_zip, tmp_path):
    actor_path = save_sac_actor(sac_zip, tmp_path / "hopper-medium-actor.pt")
    assert actor_path.stat().st_size < sac_zip.stat().st_size / 5
    full = SAC.load(sac_zip, device="cpu")
    actor, sac_step = load_behaviour_policy(actor_path)
    assert sac_step == full.num_timesteps == 80
    obs = np.random.default_rng(0).normal(scale=3.0, size=(512, 11)).astype(np.float32)
    np.testing.assert_array_equal(
        actor.predict(obs, deterministic=True)[0], full.predict(obs, deterministic=True)[0]
    )
    torch.manual_seed(11)
    sampled_full = full.predict(obs, deterministic=False)[0]
    torch.manual_seed(11)
    np.testing.assert_array_equal(actor.predict(obs, deterministic=False)[0], sampled_full)
    # one observation at a time, as predict is also called
    np.testing.assert_array_equal(
        actor.predict(obs[0], deterministic=True)[0], full.predict(obs[0], deterministic=True)[0]
    )


def test_loading_either_file_leaves_the_same_rng_state(sac_zip, tmp_path):
    """SAC.load reseeds and initialises networks; the actor file restores that RNG state, so
    a rollout that loads one or the other samples the same actions."""
    actor_path = save_sac_actor(sac_zip, tmp_path / "hopper-medium-actor.pt")
    obs = np.random.default_rng(1).normal(size=(8, 11)).astype(np.float32)
    torch.manual_seed(123)  # whatever state came before
    full, _ = load_behaviour_policy(sac_zip)
    draws_full = [full.predict(obs)[0] for _ in range(20)]
    torch.manual_seed(456)
    actor, _ = load_behaviour_policy(actor_path)
    draws_actor = [actor.predict(obs)[0] for _ in range(20)]
    for a, b in zip(draws_full, draws_actor, strict=True):
        np.testing.assert_array_equal(a, b)


def test_shipped_policies_are_actors_listed_with_their_sources():
    listed = json.loads((SHIPPED_POLICIES / "policies.json").read_text())
    files = sorted(p.name for p in SHIPPED_POLICIES.iterdir() if p.name != "policies.json")
    assert files == sorted(k for k in listed if not k.startswith("_"))
    for name in files:
        assert name.endswith("-actor.pt")
        task, level = name.removesuffix("-actor.pt").split("-")
        assert find_policy(SHIPPED_POLICIES, task, level) == SHIPPED_POLICIES / name
        actor, sac_step = load_behaviour_policy(SHIPPED_POLICIES / name)
        assert sac_step == listed[name]["sac_steps"]
        assert listed[name]["source_file"] == f"{task}-{level}-sac.zip"


def test_unreadable_actor_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "hopper-medium-actor.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"hopper-medium-actor\.pt: not a readable SAC actor"):
        load_behaviour_policy(bad)
    torch.save({"format": "something else"}, bad)
    with pytest.raises(ValueError, match="key 'format'"):
        load_behaviour_policy(bad)
