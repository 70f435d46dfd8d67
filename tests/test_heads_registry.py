"""The head registry: built-in heads by name, and a third-party head installed in the test
(a tiny local package with an ``aaren_rl.heads`` entry point) found by name and fitted."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from aaren_rl.data.series_csv import ForecastData
from aaren_rl.heads.fit import BackboneConfig, fit_head
from aaren_rl.heads.registry import ENTRY_POINT_GROUP, available_heads, get_head, register_head
from aaren_rl.training.config import LoopConfig

TOY_PACKAGE = '''
"""A third-party head: predicts each channel's mean over the next H steps."""
import numpy as np
import torch
from torch import nn


class WindowMeanModel(nn.Module):
    def __init__(self, n_channels, backbone):
        super().__init__()
        self.backbone = backbone
        self.embed = nn.Linear(2 * n_channels, backbone.d_model)
        self.out = nn.Linear(backbone.d_model, n_channels)

    def forward(self, x):
        diff = torch.cat([torch.zeros_like(x[:, :1]), x.diff(dim=1)], dim=1)
        y, _ = self.backbone(self.embed(torch.cat([x, diff], dim=-1)))
        return self.out(y[:, -1])


class WindowMeanHead:
    name = "toy-mean"

    def build_model(self, data, backbone, **options):
        return WindowMeanModel(data.splits["train"].shape[1], backbone)

    def make_sampler(self, data, seed):
        from aaren_rl.data.series_csv import ForecastSampler
        return ForecastSampler(data.windows("train"), seed)

    def loss(self, model, batch):
        return (model(batch["x"]) - batch["y"].mean(dim=1)).pow(2).mean()

    def evaluate(self, model, data, device):
        windows = data.windows("test")
        batch = windows.batch(np.arange(len(windows)))
        pred = model(torch.from_numpy(batch["x"]).to(device)).cpu().numpy()
        return {"test_mse": float(((pred - batch["y"].mean(axis=1)) ** 2).mean())}
'''


def _install_toy_package(root):
    """A package plus its .dist-info (METADATA, entry_points.txt) in ``root``: what
    ``pip install --target root`` would leave, without touching the shared environment."""
    (root / "toy_aaren_head").mkdir(parents=True)
    (root / "toy_aaren_head" / "__init__.py").write_text(textwrap.dedent(TOY_PACKAGE))
    info = root / "toy_aaren_head-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-aaren-head\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\ntoy-mean = toy_aaren_head:WindowMeanHead\n"
    )
    (info / "RECORD").write_text("")


def _series_data(tmp_path) -> ForecastData:
    rng = np.random.default_rng(0)
    t = np.arange(500)
    values = np.stack([np.sin(2 * np.pi * t / 16), np.cos(2 * np.pi * t / 10)], axis=1)
    values = values + 0.05 * rng.normal(size=values.shape)
    lines = ["date,a,b"] + [f"{i},{v[0]:.5f},{v[1]:.5f}" for i, v in enumerate(values)]
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    return ForecastData.from_csv(tmp_path / "s.csv", input_len=32, horizon=4)


def test_builtin_heads_by_name_and_unknown_names_list_the_known():
    assert {"forecast", "classify"} <= set(available_heads())
    assert get_head("forecast").name == "forecast" and get_head("classify").name == "classify"
    with pytest.raises(ValueError, match=r"no head named 'nope'; known heads: \[.*'forecast'"):
        get_head("nope")


def test_a_head_registered_in_process_is_found():
    class Mine:
        name = "mine"

    register_head("mine", Mine)
    assert isinstance(get_head("mine"), Mine) and "mine" in available_heads()


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
def test_third_party_head_from_an_entry_point_is_found_and_fits(tmp_path, monkeypatch, backbone):
    site = tmp_path / "site"
    _install_toy_package(site)
    assert "toy-mean" not in available_heads()
    monkeypatch.syspath_prepend(str(site))
    assert "toy-mean" in available_heads()
    head = get_head("toy-mean")
    assert type(head).__module__ == "toy_aaren_head"
    data = _series_data(tmp_path)
    model, result = fit_head(
        "toy-mean",
        data,
        BackboneConfig(backbone, 16, 1, 2, dropout=0.0),
        LoopConfig(steps=120, batch_size=16, lr=3e-3, warmup_steps=5, eval_every=0),
    )
    windows = data.windows("test")
    target = windows.batch(np.arange(len(windows)))["y"].mean(axis=1)
    constant = float(((target - target.mean(axis=0)) ** 2).mean())  # best constant guess
    fitted = result.evaluations[-1]["test_mse"]
    assert fitted < 0.3 * constant, (fitted, constant)
    assert result.losses[-1] < result.losses[0]
    assert isinstance(model, torch.nn.Module)
