"""Classification head: streaming probabilities == parallel ones, padding changes nothing,
the .ts / npz / long-CSV loaders (aeon's shipped copies included) and their errors, learning
on variable-length series, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aaren_rl.data.errors import DatasetError
from aaren_rl.data.labelled_series import (
    ClassifyData,
    check_ts_file,
    load_long_csv,
    load_npz,
    load_ts,
    shipped_uea_file,
)
from aaren_rl.heads.classify import ClassifyConfig, ClassifyModel
from aaren_rl.heads.fit import BackboneConfig, HeadTrainer
from aaren_rl.heads.registry import get_head
from aaren_rl.nn.build import build_backbone
from aaren_rl.training.config import LoopConfig


def _model(backbone: str, pool: str, dtype=torch.float64) -> ClassifyModel:
    torch.manual_seed(0)
    cfg = ClassifyConfig(n_channels=3, n_classes=4, max_len=16, pool=pool, dropout=0.0)
    mean, std = np.array([0.1, -0.2, 0.3], np.float32), np.array([1.0, 2.0, 0.5], np.float32)
    model = ClassifyModel(cfg, build_backbone(backbone, 16, 2, 2, dropout=0.0), mean, std)
    return model.to(dtype).eval()


def _toy_series(n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """Lengths 5..20; the class is the sign pattern of two channels' means (4 classes)."""
    rng = np.random.default_rng(seed)
    series, labels = [], []
    for _ in range(n):
        k = int(rng.integers(0, 4))
        length = int(rng.integers(5, 21))
        s = rng.normal(size=(length, 3)).astype(np.float32) * 0.7
        s[:, 0] += 1.0 if k & 1 else -1.0
        s[:, 1] += 1.0 if k & 2 else -1.0
        series.append(s)
        labels.append(f"c{k}")
    return series, labels


def _write_ts(path: Path, series: list[np.ndarray], labels: list[str]) -> Path:
    classes = " ".join(sorted(set(labels)))
    lines = [
        "# a toy file",
        "@problemName toy",
        "@timeStamps false",
        "@missing false",
        "@univariate false",
        f"@dimensions {series[0].shape[1]}",
        "@equalLength false",
        f"@classLabel true {classes}",
        "@data",
    ]
    for s, label in zip(series, labels, strict=True):
        chans = [",".join(f"{v:.6f}" for v in s[:, j]) for j in range(s.shape[1])]
        lines.append(":".join(chans) + ":" + label)
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------ streaming and masks


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
@pytest.mark.parametrize("pool", ["last", "mean"])
def test_streamed_probabilities_equal_parallel_after_every_observation(backbone, pool):
    model = _model(backbone, pool)
    x = torch.randn(3, 12, 3, dtype=torch.float64)
    stream = model.stream(3)
    with torch.no_grad():
        streamed = torch.stack([stream.observe(x[:, t]) for t in range(12)], dim=1)
        parallel = model.step_probabilities(x)
    torch.testing.assert_close(streamed, parallel, rtol=0, atol=1e-10)
    torch.testing.assert_close(streamed.sum(-1), torch.ones(3, 12, dtype=torch.float64))
    model32 = model.float()
    stream = model32.stream(3)
    with torch.no_grad():
        s32 = torch.stack([stream.observe(x[:, t].float()) for t in range(12)], dim=1)
        torch.testing.assert_close(s32, model32.step_probabilities(x.float()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
@pytest.mark.parametrize("pool", ["last", "mean"])
def test_padding_never_changes_a_prediction(backbone, pool):
    model = _model(backbone, pool)
    lengths = [4, 9, 12]
    x = torch.randn(3, 12, 3, dtype=torch.float64)
    mask = torch.arange(12)[None] < torch.tensor(lengths)[:, None]
    garbage = torch.where(mask[..., None], x, torch.full_like(x, 1e3))
    with torch.no_grad():
        padded = model(garbage, mask)
        torch.testing.assert_close(model(x, mask), padded, rtol=0, atol=1e-10)
        for i, n in enumerate(lengths):  # equals the series alone, unpadded
            alone = model(x[i : i + 1, :n])
            torch.testing.assert_close(padded[i : i + 1], alone, rtol=0, atol=1e-10)


# ------------------------------------------------------------------ loaders


def test_shipped_japanese_vowels_loads_offline_through_aeon():
    data = ClassifyData.shipped("JapaneseVowels")
    assert len(data.train.series) == 270 and len(data.test.series) == 370
    assert data.train.n_channels == 12 and data.classes == [str(k) for k in range(1, 10)]
    lengths = np.concatenate([data.train.lengths, data.test.lengths])
    assert lengths.min() == 7 and lengths.max() == 29
    motions = ClassifyData.shipped("BasicMotions")
    assert len(motions.train.series) == len(motions.test.series) == 40
    assert motions.train.series[0].shape == (100, 6)
    # our line check agrees with aeon's parse on the case count
    header = check_ts_file(shipped_uea_file("JapaneseVowels", "test"))
    assert header["cases"] == 370 and header["dimensions"] == 12


def test_ts_npz_and_csv_layouts_hold_the_same_series(tmp_path):
    series, labels = _toy_series(6, seed=1)
    ts = load_ts(_write_ts(tmp_path / "toy.ts", series, labels))
    t_max = max(len(s) for s in series)
    x = np.zeros((6, t_max, 3), np.float32)
    for i, s in enumerate(series):
        x[i, : len(s)] = s
    np.savez(tmp_path / "toy.npz", X=x, y=np.array(labels), lengths=[len(s) for s in series])
    npz = load_npz(tmp_path / "toy.npz")
    rows = ["series,label,a,b,c"]
    for i, (s, label) in enumerate(zip(series, labels, strict=True)):
        rows += [f"s{i},{label}," + ",".join(f"{v:.6f}" for v in step) for step in s]
    (tmp_path / "toy.csv").write_text("\n".join(rows) + "\n")
    long = load_long_csv(tmp_path / "toy.csv")
    for loaded in (ts, npz, long):
        assert list(loaded.labels) == labels
        for a, b in zip(loaded.series, series, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda d: d.replace(":", ",", 1), r"line 10: 2 channel\(s\), expected 3"),
        (lambda d: d.replace(",", ",abc,", 1), r"line 10: channel 0: 'abc' is not a number"),
        (lambda d: d.replace(",", ",NaN,", 1), r"line 10: channel 0 has a missing value"),
        (lambda d: d.replace(",", ",?,", 1), r"line 10: channel 0 has a missing value"),
        (lambda d: d.replace(":", ",1.0:", 1), r"line 10: ragged row"),
        (lambda d: d.rsplit(":", 1)[0] + ":zz", r"line 10: label 'zz' is not in"),
    ],
)
def test_malformed_ts_names_the_file_and_the_line(tmp_path, edit, pattern):
    series, labels = _toy_series(3, seed=2)
    path = _write_ts(tmp_path / "bad.ts", series, labels)
    lines = path.read_text().splitlines()
    lines[9] = edit(lines[9])  # line 10: the first case
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=pattern) as err:
        load_ts(path)
    assert str(path) in str(err.value)


def test_malformed_long_csv_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("series,label,a,b\ns0,x,1.0,2.0\ns0,x,1.0\n")
    with pytest.raises(DatasetError, match=r"bad\.csv: line 3: 3 fields, but the header has 4"):
        load_long_csv(path)
    path.write_text("series,label,a,b\ns0,x,1.0,2.0\ns0,x,1.0,oops\n")
    with pytest.raises(DatasetError, match=r"line 3: channel 1: 'oops' is not a number"):
        load_long_csv(path)
    path.write_text("series,label,a,b\ns0,x,1.0,nan\n")
    with pytest.raises(DatasetError, match=r"line 2: channel 1 has a missing value"):
        load_long_csv(path)
    path.write_text("id,label,a\n")
    with pytest.raises(DatasetError, match=r"line 1: header"):
        load_long_csv(path)


# ------------------------------------------------------------------ learning and CLI


def _toy_data(tmp_path: Path) -> ClassifyData:
    tr, te = tmp_path / "toy_TRAIN.ts", tmp_path / "toy_TEST.ts"
    _write_ts(tr, *_toy_series(120, seed=3))
    _write_ts(te, *_toy_series(80, seed=4))
    return ClassifyData.from_files(tr, te)


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
def test_classifier_learns_variable_length_series(tmp_path, backbone):
    data = _toy_data(tmp_path)
    head = get_head("classify")
    bb = BackboneConfig(backbone, 32, 1, 2, dropout=0.0)
    torch.manual_seed(0)
    model = head.build_model(data, bb.build(), pool="mean", dropout=0.0)
    cfg = LoopConfig(steps=120, batch_size=16, lr=3e-3, warmup_steps=10, eval_every=0)
    result = HeadTrainer(head, model, data, cfg, progress=False, backbone=bb).train()
    assert result.evaluations[-1]["test_accuracy"] >= 0.9  # chance is 0.25


def test_cli_classifies_and_writes_results(tmp_path):
    from aaren_rl.cli import main

    _toy_data(tmp_path)
    out = tmp_path / "run"
    args = ["fit", "classify", "--train", str(tmp_path / "toy_TRAIN.ts")]
    args += ["--test", str(tmp_path / "toy_TEST.ts"), "--steps", "3", "--d-model", "16"]
    args += ["--n-layers", "1", "--out", str(out), "--no-progress", "--warmup-steps", "1"]
    assert main([*args, "--backbone", "aaren,transformer"]) == 0
    for name in ("aaren", "transformer"):
        res = json.loads((out / name / "results.json").read_text())
        assert 0.0 <= res["metrics"]["test_accuracy"] <= 1.0 and res["test_series"] == 80
        assert np.sum(res["confusion"]) == 80
        assert res["stream_vs_parallel_max_abs_diff"] < 1e-5
        assert (out / name / "predictions.png").stat().st_size > 0
    assert "test_accuracy" in (out / "comparison.md").read_text()
    bad = tmp_path / "nope.ts"
    assert main(["fit", "classify", "--train", str(bad), "--test", str(bad), "--out", "x"]) == 2
