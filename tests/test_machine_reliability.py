"""The machine: a full disk inside a checkpoint write, a read-only output folder, a seed past
2**32, a model too big for memory, an unknown device. Each is one line naming the problem and
the fix, and the previous checkpoint stays whole (loaded back and compared)."""

from __future__ import annotations

import errno
import shutil

import pytest
import torch
from test_trainer import _trainer, _write_presets

import aaren_rl.training.checkpoint as ckpt_module
from aaren_rl.agents.checkpoint import load_checkpoint
from aaren_rl.cli import main
from aaren_rl.training.checkpoint import CheckpointError

KW = {"sampler": "prefix", "max_len": 40}


def _fail_second_write(monkeypatch, exc: BaseException) -> None:
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(obj["step"])
        if len(calls) == 2:
            f.write(b"half a checkpoint")
            raise exc
        real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt_module.torch, "save", save)


@pytest.mark.parametrize("how", ["ENOSPC", "torch's unexpected pos"])
def test_disk_full_inside_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, how):
    out = tmp_path / "run"
    if how == "ENOSPC":
        _fail_second_write(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    else:  # torch's own report of a full disk; the folder then shows no free space
        _fail_second_write(monkeypatch, RuntimeError("[enforce fail] unexpected pos 64 vs 0"))
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(ckpt_module.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    trainer = _trainer(out, **KW, steps=8, checkpoint_every=2)
    with pytest.raises(CheckpointError) as err:
        trainer.train()
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{out / 'checkpoint.pt'}: no space left")
    assert "the previous checkpoint is intact" in message and "--resume" in message
    monkeypatch.undo()
    assert not list(out.glob(".*.tmp"))  # the half-written temp file is gone
    kept = load_checkpoint(out / "checkpoint.pt")
    clean = _trainer(tmp_path / "clean", **KW, steps=8, checkpoint_every=2).train(stop_at=2)
    assert kept["step"] == 2
    for name, value in clean.model.state_dict().items():
        assert torch.equal(kept["model_state"][name], value), name


def test_disk_full_through_the_cli_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    agent, task = _write_presets(tmp_path, steps=6, checkpoint_every=2)
    _fail_second_write(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    out = tmp_path / "run"
    argv = ["train", "--agent", str(agent), "--task", str(task), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on the device" in err[0]
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2


def test_read_only_output_folder_is_refused_before_training(tmp_path, monkeypatch, capsys):
    agent, task = _write_presets(tmp_path)
    out = tmp_path / "ro"
    real = ckpt_module.tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):  # what a read-only mount answers (root ignores chmod)
        if str(dir) == str(out):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(ckpt_module.tempfile, "mkstemp", mkstemp)
    argv = ["train", "--agent", str(agent), "--task", str(task), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"aaren-rl train: error: {out}: the output folder cannot be written (Read-only file "
        "system). Fix: choose a writable --out (or fix the folder's permissions)"
    ]
    assert not (out / "config.yaml").exists()


@pytest.mark.parametrize("seed", ["1e23", "100000000000000000000000", "-1", "1.5"])
def test_a_seed_outside_the_generators_range_is_refused(tmp_path, capsys, seed):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--task", "hopper-medium-small", "--seed", seed])
    assert exit_.value.code == 2
    assert "argument --seed:" in capsys.readouterr().err.strip().splitlines()[-1]
    from aaren_rl.training.config import LoopConfig

    with pytest.raises(ValueError, match=r"seed=100000000000000000000000 \(expected an integer"):
        LoopConfig(seed=10**23)


def test_a_model_too_big_for_memory_is_refused_before_allocating(tmp_path, capsys):
    agent, task = _write_presets(tmp_path)
    argv = ["train", "--agent", str(agent), "--task", str(task), "--out", str(tmp_path / "r")]
    assert main([*argv, "--no-progress", "--set", "model.d_model=100000000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.d_model=100000000" in err[0]
    assert "GB free" in err[0] and "lower model.d_model" in err[0]


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
def test_parameters_counted_on_meta_equal_the_real_model(backbone):
    from aaren_rl.agents.decision_model import build_decision_model
    from aaren_rl.nn.size import count_parameters_without_allocating

    cfg = {"backbone": backbone, "d_model": 32, "n_layers": 2, "n_heads": 2}
    real = sum(p.numel() for p in build_decision_model(cfg, 11, 3).parameters())
    assert count_parameters_without_allocating(lambda: build_decision_model(cfg, 11, 3)) == real


@pytest.mark.parametrize("device", ["tpu:7", "cuda:7", "gpu"])
def test_an_unknown_device_lists_the_valid_ones(tmp_path, capsys, device):
    from aaren_rl.training.distributed import resolve_device

    with pytest.raises(ValueError, match="this machine has: auto, cpu"):
        resolve_device(device)
    agent, task = _write_presets(tmp_path)
    argv = ["train", "--agent", str(agent), "--task", str(task), "--device", device]
    assert main([*argv, "--no-progress", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"aaren-rl train: error: --device {device!r}")


def test_fit_with_a_width_too_big_is_refused_before_allocating(tmp_path, capsys):
    from test_heads_forecast import _write_csv

    csv = _write_csv(tmp_path / "s.csv", n=300)
    base = ["fit", "forecast", "--data", str(csv), "--input-len", "24", "--horizon", "6"]
    base += ["--steps", "1", "--no-progress"]
    argv = [*base, "--patch-len", "4", "--out", str(tmp_path / "r")]
    assert main([*argv, "--d-model", "16", "--n-heads", "2", "--d-ff", "100000000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aaren-rl fit: error: --d-model 16 ")
    assert "--d-ff 100000000: the model would hold 6.6e+09 parameters" in err[0]
    # bad settings and a huge width: the settings' error, before anything is allocated
    assert main([*base, "--out", str(tmp_path / "r2"), "--d-model", "100000000"]) == 2
    assert "not a multiple of patch_len" in capsys.readouterr().err
