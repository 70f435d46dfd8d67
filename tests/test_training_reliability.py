"""Training never stops silently or half-way: non-finite losses, SIGINT/SIGTERM (also under
torchrun) and SIGKILL at random points, checked against an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer import _trainer, _write_presets

from aaren_rl.agents.checkpoint import load_checkpoint
from aaren_rl.cli import main
from aaren_rl.training import NonFiniteLossError

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _episode_rows(dataset, episode: int) -> slice:
    start = int(dataset.episode_starts[episode])
    return slice(start, start + int(dataset.episode_lengths[episode]))


# ------------------------------------------------------------------ non-finite loss


def test_non_finite_loss_stops_before_the_update_and_keeps_the_last_checkpoint(tmp_path):
    kw = {"steps": 40, "sampler": "prefix", "max_len": 40, "checkpoint_every": 2}
    trainer = _trainer(tmp_path / "bad", **kw)
    bad_episode = 3
    trainer.sampler.dataset.actions[_episode_rows(trainer.sampler.dataset, bad_episode)] = np.nan
    with pytest.raises(NonFiniteLossError) as err:
        trainer.train()
    exc = err.value
    message = str(exc)
    assert "\n" not in message and f"step {exc.step}:" in message
    assert "episodes [" in message and bad_episode in eval(
        message.split("episodes ")[1][:40].split("]")[0] + "]"
    )
    assert trainer.step == exc.step - 1  # the bad update was never applied
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    # the last good checkpoint is the periodic one before the bad step, untouched
    expected_ckpt = (exc.step - 1) // 2 * 2
    ckpt = load_checkpoint(tmp_path / "bad" / "checkpoint.pt")
    assert exc.checkpoint_step == ckpt["step"] == expected_ckpt > 0
    assert f"(step {expected_ckpt}) is kept" in message
    # ... and equals a clean run stopped at that step (same seeds, same batches so far)
    clean = _trainer(tmp_path / "clean", **kw).train(stop_at=expected_ckpt)
    for name, value in clean.model.state_dict().items():
        assert torch.equal(ckpt["model_state"][name], value), name


def test_loss_overflow_stops_the_cli_with_one_line(tmp_path, capsys, monkeypatch):
    import h5py

    import aaren_rl.agents.trainer as trainer_module

    agent, task = _write_presets(tmp_path, steps=30, checkpoint_every=5)
    with h5py.File(tmp_path / "toy.hdf5", "r+") as f:  # finite, loadable, but squares overflow
        actions = f["actions"][()]
        actions[40:60] = 3e30
        f["actions"][...] = actions
    out = tmp_path / "run"
    argv = ["train", "--agent", str(agent), "--task", str(task), "--out", str(out)]
    # such actions lie outside Hopper's action Box: the data is refused before training
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "toy.hdf5: key 'actions': holds 3e+30 at row 40" in err
    # a loss that overflows anyway (here forced) stops the run with one line
    real = trainer_module.decision_loss
    monkeypatch.setattr(
        trainer_module, "decision_loss", lambda m, b: real(m, b) * torch.tensor(3e30) ** 2
    )
    with h5py.File(tmp_path / "toy.hdf5", "r+") as f:
        f["actions"][...] = np.clip(actions, -1.0, 1.0)
    assert main([*argv, "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("aaren-rl train: stopped: step ") and "loss is inf" in err
    assert "episodes [" in err and ("is kept" in err or "no checkpoint had been written" in err)


TORCHRUN_NAN_SCRIPT = """
import os, sys
import numpy as np
from aaren_rl.agents.train_cli import run_training
from aaren_rl.data.tasks import load_task
from aaren_rl.training import NonFiniteLossError

def say(line):  # one write() per line: the ranks share stdout, a pipe
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()
agent, task, out = sys.argv[1:4]
spec = load_task(task)
data = spec.load_dataset()
start, length = int(data.episode_starts[3]), int(data.episode_lengths[3])
data.actions[start : start + length] = np.nan  # only episode 3 is bad
try:
    run_training(agent, spec, out_dir=out, device="cpu", progress=False, dataset=data)
except NonFiniteLossError as exc:
    say(f"RANK {os.environ['RANK']} STOPPED {exc.step} {exc.checkpoint_step}")
    sys.exit(1)
say(f"RANK {os.environ['RANK']} FINISHED")
"""


@pytest.mark.slow
def test_non_finite_loss_under_torchrun_stops_every_rank_without_a_hang(tmp_path):
    agent, task = _write_presets(tmp_path, steps=60, checkpoint_every=2)
    script = tmp_path / "ddp_nan.py"
    script.write_text(textwrap.dedent(TORCHRUN_NAN_SCRIPT))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(script), str(agent), str(task), str(out)],
        capture_output=True,
        text=True,
        timeout=240,  # a rank left waiting in a collective would hang until here
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    said = proc.stdout + proc.stderr
    stops = [  # "RANK r STOPPED step kept" -> (r, step, kept)
        tuple(line.split()[i] for i in (1, 3, 4))
        for line in proc.stdout.splitlines()
        if "STOPPED" in line
    ]
    assert sorted(rank for rank, *_ in stops) == ["0", "1"], said[-3000:]
    (_, step, kept), (_, step1, kept1) = stops
    assert step == step1 and kept == kept1  # both ranks refused the same update
    assert load_checkpoint(out / "checkpoint.pt")["step"] == int(kept) == (int(step) - 1) // 2 * 2


# ------------------------------------------------------------------ signals

STEP_SCRIPT = """
import os, sys, time
sys.path.insert(0, {tests!r})
import torch
from test_trainer import _trainer
from aaren_rl.training import TrainingLoop, TrainingInterrupted

torch.set_num_threads(1)
out, steps, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
resume = os.path.exists(os.path.join(out, "checkpoint.pt"))
original_step = TrainingLoop.train_step
losses = open(os.path.join(out + ".losses"), "a")

def logged_step(self):
    loss, norm = original_step(self)
    losses.write(f"{{self.step}} {{loss!r}}\\n")
    losses.flush()
    print(f"STEP {{self.step}}", flush=True)
    time.sleep(float(os.environ.get("STEP_SLEEP", "0")))
    return loss, norm

TrainingLoop.train_step = logged_step
if os.environ.get("SLOW_WRITE"):  # hold each checkpoint in its temp file for a while
    import aaren_rl.training.checkpoint as ckpt
    real_save = torch.save
    def slow_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        print(f"IN_WRITE {{obj.get('step')}}", flush=True)
        time.sleep(2.0)
    ckpt.torch.save = slow_save
kw = dict(steps=steps, sampler="prefix", max_len=40, checkpoint_every=every)
trainer = _trainer(__import__("pathlib").Path(out), resume=resume, **kw)
try:
    trainer.train()
except TrainingInterrupted as exc:
    print(f"INTERRUPTED {{exc.step}}", flush=True)
    sys.exit(128 + exc.signum)
print("DONE", flush=True)
"""


def _start(script: Path, out: Path, steps: int, every: int, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(script), str(out), str(steps), str(every)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **env),
    )


def _wait_for(proc: subprocess.Popen, prefix: str, timeout: float = 120.0) -> list[str]:
    """Read the child's lines until one starts with ``prefix``; return all lines so far."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"no {prefix!r} line; the child said: {lines[-20:]}")


def _script(tmp_path: Path) -> Path:
    script = tmp_path / "train_steps.py"
    script.write_text(textwrap.dedent(STEP_SCRIPT.format(tests=str(TESTS))))
    return script


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_a_final_checkpoint_that_resumes_exactly(tmp_path, signum):
    out = tmp_path / "run"
    proc = _start(_script(tmp_path), out, 10_000, 10_000, STEP_SLEEP="0.05")
    _wait_for(proc, "STEP 3")
    proc.send_signal(signum)
    rest = proc.communicate(timeout=120)[0].splitlines()
    assert proc.returncode == 128 + signum, rest[-10:]
    stopped = int(next(line for line in rest if line.startswith("INTERRUPTED")).split()[1])
    ckpt = load_checkpoint(out / "checkpoint.pt")  # no periodic one: this is the final one
    assert ckpt["step"] == stopped >= 3
    # resume two more steps == an uninterrupted run of stopped + 2 steps
    kw = {"sampler": "prefix", "max_len": 40, "checkpoint_every": 10_000}
    resumed = _trainer(out, resume=True, steps=stopped + 2, **kw).train()
    straight = _trainer(tmp_path / "straight", steps=stopped + 2, **kw).train()
    assert resumed.losses == straight.losses[-2:]
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


TORCHRUN_SIGNAL_SCRIPT = """
import os, sys
import torch
from aaren_rl.agents.train_cli import run_training
from aaren_rl.training import TrainingLoop

original_step = TrainingLoop.train_step
def logged_step(self):
    result = original_step(self)
    if self.ctx.rank == 0:
        print(f"STEP {self.step}", flush=True)
    return result
TrainingLoop.train_step = logged_step
def say(line):  # one write() per line: the ranks share stdout, a pipe
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()
agent, task, out = sys.argv[1:4]
try:
    run_training(agent, task, out_dir=out, device="cpu", progress=False)
except KeyboardInterrupt as exc:
    say(f"RANK {os.environ['RANK']} INTERRUPTED {getattr(exc, 'step', None)}")
    sys.exit(130)
"""


@pytest.mark.slow
def test_ctrl_c_under_torchrun_writes_a_final_checkpoint(tmp_path):
    agent, task = _write_presets(tmp_path, steps=100_000, checkpoint_every=100_000)
    script = tmp_path / "ddp_signal.py"
    script.write_text(textwrap.dedent(TORCHRUN_SIGNAL_SCRIPT))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.Popen(
        [*cmd, str(script), str(agent), str(task), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        _wait_for(proc, "STEP 3", timeout=180)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        rest = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] >= 3 and ckpt["rng_state"]["world_size"] == 2, rest[-2000:]
    assert "RANK 0 INTERRUPTED" in rest and "RANK 1 INTERRUPTED" in rest, rest[-2000:]
    stops = {line.split()[-1] for line in rest.splitlines() if "INTERRUPTED" in line}
    assert stops == {str(ckpt["step"])}  # both ranks stopped at the checkpoint's step


# ------------------------------------------------------------------ SIGKILL


def _losses(path: Path) -> dict[int, list[str]]:
    """step -> every loss logged for it (a resumed run recomputes steps after its checkpoint)."""
    seen: dict[int, list[str]] = {}
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines(keepends=True):
        if line.endswith("\n"):  # a line cut by the kill is ignored
            step, loss = line.split()
            seen.setdefault(int(step), []).append(loss)
    return seen


@pytest.mark.slow
def test_sigkill_at_random_points_resumes_to_the_uninterrupted_losses(tmp_path):
    steps, every = 30, 3
    out = tmp_path / "run"
    script = _script(tmp_path)
    rng = np.random.default_rng(13)
    kills = []
    # kill points: random moments, then inside a checkpoint write, then random again
    for attempt in range(4):
        slow = attempt == 1
        env = {"STEP_SLEEP": "0.03", **({"SLOW_WRITE": "1"} if slow else {})}
        proc = _start(script, out, steps, every, **env)
        try:
            if slow:
                lines = _wait_for(proc, "IN_WRITE")
                point = f"inside the write of the step-{lines[-1].split()[1]} checkpoint"
            else:
                _wait_for(proc, "STEP")
                delay = float(rng.uniform(0.05, 0.6))
                time.sleep(delay)
                point = f"{delay:.2f} s after the first step"
        finally:
            proc.kill()
            proc.wait()
        on_disk = (
            load_checkpoint(out / "checkpoint.pt")["step"]
            if (out / "checkpoint.pt").exists()
            else None
        )
        kills.append((point, on_disk))
        assert on_disk is None or on_disk % every == 0  # a whole checkpoint, never a torn one
        if slow:  # the killed write left its temp file, and the real file is the previous one
            assert list(out.glob(".checkpoint.pt.*.tmp"))
            assert on_disk is None or on_disk < int(lines[-1].split()[1])
    print("kill points (point, checkpoint step on disk):", kills)
    assert any(p.startswith("inside the write") for p, _ in kills)
    proc = _start(script, out, steps, every)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0 and "DONE" in output, output[-2000:]
    assert not list(out.glob(".*.tmp"))  # the stale temp file was cleaned on resume
    assert load_checkpoint(out / "checkpoint.pt")["step"] == steps

    straight = _trainer(
        tmp_path / "straight", steps=steps, sampler="prefix", max_len=40, checkpoint_every=every
    ).train()
    logged = _losses(Path(str(out) + ".losses"))
    assert sorted(logged) == list(range(1, steps + 1))
    for step, values in logged.items():
        assert set(values) == {repr(straight.losses[step - 1])}, (step, values, kills)
