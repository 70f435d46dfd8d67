"""The exported classification stream (ONNX Runtime) equals ``ClassifyStream.observe``.

Several series side by side, each restarted at its own step (``reset``), both poolings, one and
two layers: the probabilities within 1e-5 of a fresh :class:`ClassifyStream` per series
segment, and the state the same size at every step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aaren_rl.deploy import OnnxStep
from aaren_rl.deploy.export import export_stream
from aaren_rl.heads.classify import ClassifyConfig, ClassifyModel
from aaren_rl.heads.events import EventConfig, EventModel
from aaren_rl.heads.forecast import ForecastConfig, ForecastModel
from aaren_rl.nn.build import build_backbone

pytest.importorskip("onnxruntime")


def _model(pool: str, layers: int) -> ClassifyModel:
    torch.manual_seed(0)
    cfg = ClassifyConfig(n_channels=3, n_classes=4, max_len=12, pool=pool, dropout=0.0)
    mean, std = np.array([0.1, -0.2, 0.3], np.float32), np.array([1.0, 2.0, 0.5], np.float32)
    model = ClassifyModel(cfg, build_backbone("aaren", 16, layers, 2, dropout=0.0), mean, std)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("pool", ["last", "mean"])
@pytest.mark.parametrize("layers", [1, 2])
def test_exported_classify_stream_equals_classify_stream(tmp_path, pool, layers):
    model = _model(pool, layers)
    step = OnnxStep(export_stream(model, tmp_path / "c.onnx"))
    n, steps = 3, 30  # past max_len: positions clamp at the last one
    rng = np.random.default_rng(0)
    starts = {0: [0], 1: [0, 7, 19], 2: [0, 13]}  # each series restarts at its own steps
    state = step.initial_state(n)
    nbytes = step.state_nbytes(state)
    refs = [None] * n
    for t in range(steps):
        x = rng.normal(size=(n, 3)).astype(np.float32)
        reset = np.array([t in starts[i] for i in range(n)])
        out, state = step.step(state, x=x, reset=reset)
        for i in range(n):
            if reset[i]:
                refs[i] = model.stream(1)
            with torch.no_grad():
                want = refs[i].observe(torch.as_tensor(x[i : i + 1]))[0].numpy()
            np.testing.assert_allclose(out["probabilities"][i], want, rtol=1e-5, atol=1e-5)
        assert step.state_nbytes(state) == nbytes
    assert step.spec["kind"] == "classify_stream"


def test_stream_export_refuses_a_transformer(tmp_path):
    cfg = ClassifyConfig(n_channels=3, n_classes=2, max_len=8)
    model = ClassifyModel(cfg, build_backbone("transformer", 16, 1, 2))
    with pytest.raises(ValueError, match="Aaren backbone"):
        export_stream(model, tmp_path / "t.onnx")


def _forecaster(channel_independent: bool, norm: str) -> ForecastModel:
    torch.manual_seed(0)
    cfg = ForecastConfig(n_channels=3, input_len=12, horizon=5, patch_len=4,
                         channel_independent=channel_independent, norm=norm, dropout=0.0)  # fmt: skip
    model = ForecastModel(cfg, build_backbone("aaren", 16, 2, 2, dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("norm", ["revin", "none"])
@pytest.mark.parametrize("channel_independent", [True, False])
def test_exported_forecast_stream_equals_forecast_stream(tmp_path, channel_independent, norm):
    model = _forecaster(channel_independent, norm)
    step = OnnxStep(export_stream(model, tmp_path / "f.onnx"))
    n, steps = 3, 30  # past input_len: positions clamp at the last patch's
    rng = np.random.default_rng(1)
    starts = {0: [0], 1: [0, 6, 17], 2: [0, 9]}  # restarts mid-patch too
    state = step.initial_state(n)
    nbytes = step.state_nbytes(state)
    refs = [None] * n
    checked = 0
    for t in range(steps):
        x = (rng.normal(size=(n, 3)) + 2.0).astype(np.float32)
        reset = np.array([t in starts[i] for i in range(n)])
        out, state = step.step(state, x=x, reset=reset)
        for i in range(n):
            if reset[i]:
                refs[i] = model.stream(1)
            with torch.no_grad():
                refs[i].observe(torch.as_tensor(x[i : i + 1]))
            assert bool(out["ready"][i]) == (refs[i].y_last is not None)
            if refs[i].y_last is not None:
                with torch.no_grad():
                    want = refs[i].forecast()[0].numpy()
                np.testing.assert_allclose(out["forecast"][i], want, rtol=1e-5, atol=1e-5)
                checked += 1
        assert step.state_nbytes(state) == nbytes
    assert checked > 40 and step.spec["kind"] == "forecast_stream"


@pytest.mark.parametrize("layers", [1, 2])
def test_exported_event_stream_equals_event_stream(tmp_path, layers):
    torch.manual_seed(0)
    cfg = EventConfig(n_marks=3, log_gap_mean=-0.5, log_gap_std=1.2, mean_gap=0.8,
                      mean_window=20.0, n_components=4, n_time_features=3, dropout=0.0)  # fmt: skip
    model = EventModel(cfg, build_backbone("aaren", 16, layers, 2, dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.eval()
    step = OnnxStep(export_stream(model, tmp_path / "e.onnx"))
    n, steps = 3, 25
    rng = np.random.default_rng(2)
    starts = {0: [0], 1: [0, 8], 2: [0, 5, 18]}
    state = step.initial_state(n)
    state["start"][:] = [0.0, 1.5, 3.0]  # each sequence's window start
    nbytes = step.state_nbytes(state)
    refs, clock = [None] * n, np.array([0.0, 1.5, 3.0])
    for t in range(steps):
        reset = np.array([t in starts[i] for i in range(n)])
        clock = np.where(reset, state["start"], clock) + rng.exponential(0.8, size=n)
        marks = rng.integers(0, 3, size=n)
        out, state = step.step(state, time=clock.astype(np.float32), mark=marks, reset=reset)
        for i in range(n):
            if reset[i]:
                refs[i] = model.stream(1, start=float(state["start"][i]))
            with torch.no_grad():
                dist = refs[i].observe(
                    torch.tensor([np.float32(clock[i])]), torch.tensor([marks[i]])
                )
                want = {
                    "log_weights": dist.log_weights, "loc": dist.loc,
                    "log_scale": dist.log_scale, "mean_gap": dist.mean(), "hidden": dist.hidden,
                }  # fmt: skip
            for name, value in want.items():
                np.testing.assert_allclose(out[name][i], value[0].numpy(), rtol=1e-5, atol=1e-5)
        assert step.state_nbytes(state) == nbytes
    assert step.spec["kind"] == "event_stream"
