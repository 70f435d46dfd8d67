"""`aaren-rl make-dataset` killed (SIGKILL) at chosen and random points resumes to the end, and
never leaves a truncated HDF5 file under a dataset's final name.

A resumed build reads its last checkpoint: SAC's ``sac.zip`` and the filled rows of its replay
buffer (``replay_buffer.npz``), written to a temporary folder that replaces the old one only when
whole. The build runs in a subprocess through a small wrapper that can hold the process at a kill
point (inside a SAC checkpoint write, inside an HDF5 write) or kill itself right after a dataset file
has landed under its final name but before the build recorded it as done.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from aaren_rl.data.d4rl_reader import read_d4rl_hdf5

ROOT = Path(__file__).resolve().parents[1]
LEVELS = "random,medium,medium-replay"
STEPS = 200

WRAPPER = """
import os, signal, sys, time
point = os.environ.get("KILL_POINT", "")
if point == "in_checkpoint":  # hold the replay-buffer write of a SAC checkpoint
    import aaren_rl.data.make_dataset as make_dataset
    real = make_dataset.save_replay_rows
    def held(buffer, path):
        real(buffer, path)
        print("AT in_checkpoint", flush=True)
        time.sleep(30)
    make_dataset.save_replay_rows = held
if point == "in_hdf5":  # hold an HDF5 file half-written (datasets in, metadata not yet)
    import aaren_rl.data.d4rl_writer as writer
    real_meta = writer._write_metadata
    def held_meta(group, metadata):
        print("AT in_hdf5", flush=True)
        time.sleep(30)
        real_meta(group, metadata)
    writer._write_metadata = held_meta
if point == "after_file":  # the file landed under its final name; kill before it is recorded
    from aaren_rl.data.make_dataset import Progress
    def die(self, path, info):
        print("AT after_file", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    Progress.mark_output = die
if point == "random":
    print("AT random", flush=True)
from aaren_rl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _args(out: Path, work: Path) -> list[str]:
    return [
        "make-dataset", "hopper", "--levels", LEVELS, "--out", str(out), "--work-dir", str(work),
        "--total-steps", str(STEPS), "--learning-starts", "60", "--batch-size", "32",
        "--eval-freq", "100", "--eval-episodes", "2", "--checkpoint-freq", "50",
        "--transitions", "200", "--rollout-envs", "2", "--expert-return", "30",
        "--max-episode-steps", "60", "--device", "cpu", "--quiet", "--threads", "1", "--train-sac",
    ]  # fmt: skip


def _final_files_are_whole(out: Path) -> list[str]:
    """Every ``*.hdf5`` under its final name reads in full; returns their names."""
    names = []
    for path in sorted(out.glob("*.hdf5")):
        read_d4rl_hdf5(path)  # raises on a truncated or corrupt file
        names.append(path.name)
    return names


@pytest.mark.slow
def test_killed_build_resumes_and_never_leaves_a_truncated_file(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(textwrap.dedent(WRAPPER))
    rng = np.random.default_rng(5)
    log = []
    for point in ("in_checkpoint", "after_file", "in_hdf5", "random"):
        proc = subprocess.Popen(
            [sys.executable, str(wrapper), *_args(out, work)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, KILL_POINT=point, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)),
        )
        try:
            line, said = "", []
            while not line.startswith("AT "):
                line = proc.stdout.readline()
                said.append(line)
                assert line, f"{point}: the build ended before its kill point: {said[-15:]}"
            if point == "random":
                time.sleep(float(rng.uniform(0.5, 3.0)))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        progress = json.loads((work / "progress.json").read_text())
        log.append((point, proc.returncode, progress["num_timesteps"], _final_files_are_whole(out)))
        # a random kill may come after the end; every chosen point is reached
        assert proc.returncode == -signal.SIGKILL or (point == "random" and proc.returncode == 0)
    print("kill points (point, return code, SAC step in progress.json, whole files):", log)
    assert any(files for *_, files in log), "no kill came after a dataset landed"
    done = subprocess.run(
        [sys.executable, "-m", "aaren_rl.cli", *_args(out, work)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    names = _final_files_are_whole(out)
    assert names == sorted(f"hopper-{lv}-v5.hdf5" for lv in LEVELS.split(","))
    progress = json.loads((work / "progress.json").read_text())
    assert not progress.get("pending")
    for level in ("random", "medium"):
        data = read_d4rl_hdf5(out / f"hopper-{level}-v5.hdf5")
        assert len(data["rewards"]) == 200
    replay = read_d4rl_hdf5(out / "hopper-medium-replay-v5.hdf5")
    assert len(replay["rewards"]) == progress["medium"]["buffer_transitions"]
