"""Forecasting head: streaming == parallel, RevIN-style shift equivariance, the CSV loader's
errors, the standard splits, every window scored, learning, and the CLI end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from aaren_rl.data.errors import DatasetError
from aaren_rl.data.series_csv import ForecastData, load_series_csv, split_borders
from aaren_rl.heads.fit import BackboneConfig, HeadTrainer
from aaren_rl.heads.forecast import ForecastConfig, ForecastModel, forecast_windows, mse_mae
from aaren_rl.heads.registry import get_head
from aaren_rl.nn.build import build_backbone
from aaren_rl.training.config import LoopConfig


def _model(backbone: str, channel_independent: bool, c: int = 3, dtype=torch.float64):
    torch.manual_seed(0)
    cfg = ForecastConfig(
        n_channels=c, input_len=24, horizon=5, patch_len=4, channel_independent=channel_independent
    )
    model = ForecastModel(cfg, build_backbone(backbone, 16, 2, 2, dropout=0.0))
    return model.to(dtype).eval()


def _write_csv(path: Path, n: int = 400, channels: int = 2, seed: int = 0) -> Path:
    """Noisy sines of period 12 with a slow drift, hourly dates (the ETT layout)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    cols = [
        np.sin(2 * np.pi * t / 12 + k) + 0.002 * t + 0.1 * rng.normal(size=n)
        for k in range(channels)
    ]
    lines = ["date," + ",".join(f"ch{k}" for k in range(channels))]
    for i in range(n):
        stamp = f"2020-01-{1 + i // 24:02d} {i % 24:02d}:00:00"
        lines.append(stamp + "," + ",".join(f"{c[i]:.5f}" for c in cols))
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------ streaming


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
@pytest.mark.parametrize("channel_independent", [True, False])
def test_streamed_forecast_equals_parallel_at_every_patch(backbone, channel_independent):
    model = _model(backbone, channel_independent)
    x = torch.randn(2, 24, 3, dtype=torch.float64)
    stream = model.stream(2)
    with torch.no_grad():
        for t in range(24):
            stream.observe(x[:, t])
            done = t + 1
            if done % 4 == 0:
                parallel = model(x[:, :done])
                assert parallel.shape == (2, 5, 3)
                torch.testing.assert_close(stream.forecast(), parallel, rtol=0, atol=1e-10)
            else:  # between patches: the forecast of the completed patches
                if done > 4:
                    ref = model(x[:, : done - done % 4])
                    torch.testing.assert_close(stream.forecast(), ref, rtol=0, atol=1e-10)
    if backbone == "aaren":  # constant memory: the state does not grow with the stream
        from aaren_rl.nn.backbone import state_nbytes

        size = state_nbytes(stream.state)
        with torch.no_grad():
            for t in range(40):
                stream.observe(x[:, t % 24])
        assert state_nbytes(stream.state) == size


def test_revin_forecast_shifts_with_the_series_and_float32_stream_matches():
    model = _model("aaren", True)
    x = torch.randn(4, 24, 3, dtype=torch.float64)
    shift = torch.tensor([5.0, -3.0, 0.5], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x + shift), model(x) + shift, rtol=0, atol=1e-10)
    model32 = model.float()
    x32 = x.float()
    stream = model32.stream(4)
    with torch.no_grad():
        for t in range(24):
            stream.observe(x32[:, t])
        torch.testing.assert_close(stream.forecast(), model32(x32), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ data


def test_csv_loader_reads_the_layout_and_the_splits_follow_the_protocol(tmp_path):
    path = _write_csv(tmp_path / "series.csv", n=400)
    table = load_series_csv(path)
    assert table.columns == ["ch0", "ch1"] and table.values.shape == (400, 2)
    assert table.dates[0] == "2020-01-01 00:00:00"
    assert load_series_csv(path, ["ch1"]).values[:, 0].tolist() == table.values[:, 1].tolist()
    # Time-Series-Library's borders: ETT 12/4/4 months, 70/10/20 otherwise, each later split
    # starting input_len rows early
    assert split_borders(17420, 96, "ett-hour") == {
        "train": (0, 8640),
        "val": (8544, 11520),
        "test": (11424, 14400),
    }
    assert split_borders(1000, 96, "ratio") == {
        "train": (0, 700),
        "val": (604, 800),
        "test": (704, 1000),
    }
    data = ForecastData.from_csv(path, input_len=24, horizon=6)
    assert data.kind == "ratio"
    train = table.values[:280].astype(np.float64)
    np.testing.assert_allclose(data.mean, train.mean(0), rtol=1e-6)
    np.testing.assert_allclose(data.std, train.std(0), rtol=1e-5)
    np.testing.assert_allclose(data.splits["train"].mean(0), 0.0, atol=1e-5)
    test = data.windows("test")
    assert len(test) == (400 - (280 + 40 - 24)) - 24 - 6 + 1  # every window, none dropped
    batch = test.batch(np.array([len(test) - 1]))
    np.testing.assert_allclose(batch["y"][0, -1], data.standardise(table.values[-1]), atol=1e-6)


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda L: ["date,ch0"] + [",".join(r.split(",")[:2]) for r in L[1:]], None),
        (lambda L: L[:5] + [L[5] + ",1.0"] + L[6:], r"line 6: 4 fields, but the header has 3"),
        (lambda L: L[:7] + [L[7].rsplit(",", 1)[0] + ",abc"] + L[8:], r"key 'ch1': line 8: 'abc'"),
        (lambda L: L[:9] + [L[9].rsplit(",", 1)[0] + ",nan"] + L[10:], r"line 10: 'nan'"),
        (lambda L: L[:4] + [L[4].rsplit(",", 1)[0] + ","] + L[5:], r"line 5: empty field"),
        (lambda L: ["1.0,2.0,3.0"] + L[1:], r"line 1: header"),
    ],
)
def test_malformed_csv_names_the_file_and_the_line(tmp_path, edit, pattern):
    path = _write_csv(tmp_path / "bad.csv", n=60)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")
    if pattern is None:  # a channel the user asks for is missing from the header
        with pytest.raises(DatasetError, match=r"line 1: column\(s\) \['ch1'\] not in the header"):
            load_series_csv(path, ["ch1"])
        return
    with pytest.raises(DatasetError, match=pattern) as err:
        load_series_csv(path)
    assert str(path) in str(err.value)


def test_a_file_too_short_for_input_plus_horizon_is_a_clear_error(tmp_path):
    path = _write_csv(tmp_path / "short.csv", n=120)
    with pytest.raises(DatasetError, match=r"short\.csv: line \d+: the val split .* too short"):
        ForecastData.from_csv(path, input_len=24, horizon=24)


# ------------------------------------------------------------------ scoring and learning


def test_every_test_window_is_scored_whatever_the_batch_size(tmp_path):
    data = ForecastData.from_csv(_write_csv(tmp_path / "s.csv"), 24, 6)
    torch.manual_seed(0)
    model = get_head("forecast").build_model(data, build_backbone("aaren", 16, 1, 2), patch_len=4)
    model.eval()
    windows = data.windows("test")
    p1, t1 = forecast_windows(model, windows, torch.device("cpu"), batch_size=7)
    p2, t2 = forecast_windows(model, windows, torch.device("cpu"), batch_size=1000)
    assert len(p1) == len(windows) == len(t1)
    np.testing.assert_allclose(p1, p2, atol=1e-5)
    ref = mse_mae(p1, t1)
    err = p1.astype(np.float64) - t1
    assert ref["mse"] == pytest.approx(float((err**2).mean()))
    assert ref["mae"] == pytest.approx(float(np.abs(err).mean()))


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
def test_forecaster_learns_to_beat_repeat_last(tmp_path, backbone):
    data = ForecastData.from_csv(_write_csv(tmp_path / "s.csv", n=600), 24, 6)
    head = get_head("forecast")
    bb = BackboneConfig(backbone, 32, 1, 2, dropout=0.0)
    torch.manual_seed(0)
    model = head.build_model(data, bb.build(), patch_len=4, dropout=0.0)
    cfg = LoopConfig(steps=150, batch_size=16, lr=3e-3, warmup_steps=10, eval_every=0)
    result = HeadTrainer(head, model, data, cfg, progress=False, backbone=bb).train()
    final = result.evaluations[-1]
    windows = data.windows("test")
    batch = windows.batch(np.arange(len(windows)))
    repeat_last = mse_mae(np.repeat(batch["x"][:, -1:], 6, axis=1), batch["y"])["mse"]
    assert final["test_mse"] < 0.5 * repeat_last, (final, repeat_last)


# ------------------------------------------------------------------ CLI


def test_cli_fits_both_backbones_writes_results_and_resumes(tmp_path, capsys):
    from aaren_rl.cli import main

    csv = _write_csv(tmp_path / "series.csv", n=300)
    out = tmp_path / "run"
    args = ["fit", "forecast", "--data", str(csv), "--input-len", "24", "--horizon", "6"]
    args += ["--patch-len", "4", "--d-model", "16", "--n-layers", "1", "--batch-size", "8"]
    args += ["--out", str(out), "--no-progress", "--warmup-steps", "2", "--log-every", "2"]
    assert main([*args, "--steps", "4", "--backbone", "aaren,transformer"]) == 0
    for name in ("aaren", "transformer"):
        res = json.loads((out / name / "results.json").read_text())
        assert res["step"] == 4 and res["backbone"] == name
        assert math.isfinite(res["metrics"]["test_mse"]) and res["train_s_per_step"] > 0
        assert res["stream_vs_parallel_max_abs_diff"] < 1e-5
        assert (out / name / "predictions.png").stat().st_size > 0
        assert (out / name / "tb").is_dir() and (out / name / "checkpoint.pt").is_file()
        future = (out / name / "future.csv").read_text().splitlines()
        assert future[0] == "date,ch0,ch1" and len(future) == 7
        assert future[1].startswith("2020-01-13 12:00:00,")  # one hour after the last row
    assert "| aaren |" in (out / "comparison.md").read_text()
    assert main([*args, "--steps", "4"]) == 2  # the checkpoint is never overwritten unasked
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--steps", "6", "--resume"]) == 0
    assert json.loads((out / "aaren" / "results.json").read_text())["step"] == 6


def test_fit_resume_is_exact_for_a_head(tmp_path):
    """The loop's exact resume holds for heads too: 6 steps == 3 + resume + 3 (bitwise)."""
    data = ForecastData.from_csv(_write_csv(tmp_path / "s.csv"), 24, 6)
    head = get_head("forecast")
    bb = BackboneConfig("aaren", 16, 1, 2, dropout=0.1)

    def trainer(out: Path, resume: bool = False) -> HeadTrainer:
        torch.manual_seed(0)
        model = head.build_model(data, bb.build(), patch_len=4)
        cfg = LoopConfig(steps=6, batch_size=4, lr=1e-3, warmup_steps=2, checkpoint_every=100)
        return HeadTrainer(head, model, data, cfg, out_dir=out, resume=resume, progress=False)

    straight = trainer(tmp_path / "a").train()
    first = trainer(tmp_path / "b").train(stop_at=3)
    torch.manual_seed(999)
    second = trainer(tmp_path / "b", resume=True).train()
    assert first.losses + second.losses == straight.losses
    for a, b in zip(
        straight.model.state_dict().values(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_fit_under_torchrun_two_processes(tmp_path):
    """The loop's DDP path serves heads too: 2 processes, one checkpoint with both ranks'
    random streams, results written once."""
    import os
    import subprocess
    import sys

    from aaren_rl.training.checkpoint import load_checkpoint

    csv = _write_csv(tmp_path / "series.csv", n=300)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "aaren_rl.cli", "fit", "forecast", "--data", str(csv), "--input-len", "24"]
    cmd += ["--horizon", "6", "--patch-len", "4", "--d-model", "16", "--n-layers", "1"]
    cmd += ["--batch-size", "8", "--steps", "3", "--out", str(out), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "aaren" / "checkpoint.pt")
    assert ckpt["step"] == 3 and ckpt["rng_state"]["world_size"] == 2
    assert json.loads((out / "aaren" / "results.json").read_text())["step"] == 3
    assert len(list((out / "aaren" / "tb").iterdir())) == 1  # only rank 0 logs
