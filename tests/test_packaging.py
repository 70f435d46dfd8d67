"""The wheel carries the named presets (agents/, envs/) and the shipped assets, and an installed
copy finds them without the source checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_presets_and_assets(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("aaren_rl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("agents", "envs"):
        for preset in (ROOT / kind).glob("*.yaml"):
            assert f"aaren_rl/_presets/{kind}/{preset.name}" in names
    assert "aaren_rl/assets/datasets/hopper-medium-small-v5.hdf5" in names
    # behaviour policies: the actors a rollout reads, not SAC's critics and optimiser state
    policies = {n for n in names if n.startswith("aaren_rl/assets/policies/")}
    assert "aaren_rl/assets/policies/hopper-medium-actor.pt" in policies
    assert all(n.endswith(("-actor.pt", "policies.json")) for n in policies), policies
    assert "aaren_rl/_presets/hyperparams/aaren_ppo.yml" in names  # rl-zoo3's, for the launcher

    # an unpacked wheel, away from the checkout, resolves named presets and builtin data
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "from aaren_rl import presets; from aaren_rl.data.tasks import load_task; "
        "print(presets.preset_dir('agents')); "
        "print(load_task('hopper-medium-small').load_dataset().num_episodes)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert out[0] == str(site / "aaren_rl" / "_presets" / "agents")
    assert int(out[1]) == 100
