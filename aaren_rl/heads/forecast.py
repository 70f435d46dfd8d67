"""Time-series forecasting over any backbone: patch tokens, streaming-exact normalisation.

Model (:class:`ForecastModel`), for an input window ``x [B, L, C]`` and horizon ``H``:

- **Channels.** ``channel_independent=True`` (PatchTST's choice) runs each channel as its own
  series through shared weights (``B * C`` rows of one channel); ``False`` mixes channels
  (each token holds one patch of every channel).
- **Tokens.** Non-overlapping patches of ``patch_len`` observations (``L`` must be a multiple),
  linearly embedded, plus a learned position embedding (positions past the trained window
  reuse the last one).
- **Normalisation (RevIN-style, per series).** ``revin``: every patch is shifted by the mean
  of the series' first patch and the forecast is the head's output added to the last
  observation. Both references are known when they are used, so the streamed model equals
  the parallel one exactly, and the forecast is equivariant to a shift of the series.
  ``none``: raw (standardised) values.
- **Head.** LayerNorm and a linear map from the backbone's output at the last patch to ``H``
  values per channel.

Streaming (:class:`ForecastStream`): observations go in one at a time; every ``patch_len``-th
completes a patch, which takes one backbone ``step``. The memory is the backbone state plus at
most ``patch_len`` pending values per channel, whatever the stream's length (for Aaren; a
Transformer's KV cache grows). ``forecast()`` at any point equals the parallel forecast of the
observations up to the last completed patch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aaren_rl.nn.backbone import Backbone

NORMS = ("revin", "none")


@dataclass
class ForecastConfig:
    """The forecaster's shape around its backbone (stored in checkpoints)."""

    n_channels: int
    input_len: int = 96
    horizon: int = 96
    patch_len: int = 16
    channel_independent: bool = True
    norm: str = "revin"
    dropout: float = 0.1

    def __post_init__(self) -> None:
        problems = []
        if self.input_len < 1 or self.horizon < 1 or self.patch_len < 1 or self.n_channels < 1:
            problems.append("input_len, horizon, patch_len and n_channels must be >= 1")
        elif self.input_len % self.patch_len:
            problems.append(
                f"input_len={self.input_len} is not a multiple of patch_len={self.patch_len}"
            )
        if self.norm not in NORMS:
            problems.append(f"norm={self.norm!r} (expected one of {NORMS})")
        if problems:
            raise ValueError("invalid forecast config: " + "; ".join(problems))

    @property
    def n_patches(self) -> int:
        return self.input_len // self.patch_len

    @property
    def token_dim(self) -> int:
        return self.patch_len * (1 if self.channel_independent else self.n_channels)

    @property
    def out_dim(self) -> int:
        return self.horizon * (1 if self.channel_independent else self.n_channels)


class ForecastModel(nn.Module):
    """Forecaster over a backbone: ``forward(x [B, T, C]) -> forecast [B, H, C]`` (``T`` a
    multiple of ``patch_len``; see the module docstring)."""

    def __init__(self, config: ForecastConfig, backbone: Backbone) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        d = backbone.d_model
        self.embed = nn.Linear(config.token_dim, d)
        self.position = nn.Parameter(torch.zeros(config.n_patches, d))
        nn.init.normal_(self.position, std=0.02)
        self.drop = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.out_dim)

    # ---------------------------------------------------------------- shared pieces

    def _rows(self, x: Tensor) -> Tensor:
        """``[B, T, C]`` -> ``[R, T, c]`` rows of the backbone (``R = B*C, c = 1`` when channel
        independent, else ``R = B, c = C``)."""
        if not self.config.channel_independent:
            return x
        b, t, c = x.shape
        return x.permute(0, 2, 1).reshape(b * c, t, 1)

    def _unrows(self, y: Tensor, batch: int) -> Tensor:
        """Head output ``[R, out_dim]`` -> forecast ``[B, H, C]``."""
        h, c = self.config.horizon, self.config.n_channels
        if self.config.channel_independent:
            return y.reshape(batch, c, h).permute(0, 2, 1)
        return y.reshape(batch, h, c)

    def _tokens(self, patches: Tensor, anchor: Tensor, first: int) -> Tensor:
        """``patches [R, N, P, c]`` -> tokens ``[R, N, d]`` at positions ``first ..``."""
        if self.config.norm == "revin":
            patches = patches - anchor[:, None, None, :]
        n = patches.shape[1]
        pos = torch.arange(first, first + n, device=patches.device).clamp_max(
            self.config.n_patches - 1
        )
        tokens = self.embed(patches.flatten(2)) + self.position[pos]
        return self.drop(tokens)

    def _output(self, y_last: Tensor, last_obs: Tensor, batch: int) -> Tensor:
        """Backbone output at the last patch ``[R, d]`` -> forecast ``[B, H, C]``."""
        out = self.head(self.norm(y_last))
        if self.config.norm == "revin":
            if self.config.channel_independent:
                out = out + last_obs  # [R, 1] broadcast over the horizon
            else:
                out = (out.reshape(batch, self.config.horizon, -1) + last_obs[:, None]).flatten(1)
        return self._unrows(out, batch)

    def check_input(self, x: Tensor) -> None:
        cfg = self.config
        if x.dim() != 3 or x.shape[-1] != cfg.n_channels:
            raise ValueError(f"x must be [batch, time, {cfg.n_channels}], got {list(x.shape)}")
        if x.shape[1] < cfg.patch_len or x.shape[1] % cfg.patch_len:
            raise ValueError(
                f"x has {x.shape[1]} time steps: a forecast needs a positive multiple of "
                f"patch_len={cfg.patch_len}"
            )

    # ---------------------------------------------------------------- parallel form

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, T, C]`` (standardised) -> forecast ``[B, H, C]`` of the next ``H`` steps."""
        self.check_input(x)
        batch = x.shape[0]
        rows = self._rows(x)
        r, t, c = rows.shape
        patches = rows.reshape(r, t // self.config.patch_len, self.config.patch_len, c)
        anchor = patches[:, 0].mean(dim=1)  # [R, c]
        y, _ = self.backbone(self._tokens(patches, anchor, 0))
        return self._output(y[:, -1], rows[:, -1], batch)

    # ---------------------------------------------------------------- streaming form

    def stream(self, batch_size: int = 1) -> ForecastStream:
        """A fresh stream for ``batch_size`` series (see :class:`ForecastStream`)."""
        return ForecastStream(self, batch_size)


class ForecastStream:
    """Feed ``observe(x_t [B, C])`` one step at a time; ``forecast() -> [B, H, C]`` any time
    after the first ``patch_len`` observations.

    Holds the backbone state, the pending part of the current patch (< ``patch_len`` steps)
    and, with ``revin``, the first patch's mean: constant memory for an Aaren backbone. A
    stream is inference: ``observe`` and ``forecast`` run without autograd whatever the
    caller's grad mode, so the state and the forecast hold no graph.
    """

    def __init__(self, model: ForecastModel, batch_size: int) -> None:
        self.model = model
        self.batch = int(batch_size)
        cfg = model.config
        rows = self.batch * (cfg.n_channels if cfg.channel_independent else 1)
        p = next(model.parameters())
        self.state = model.backbone.initial_state(rows, p.device, p.dtype)
        self.pending: list[Tensor] = []
        self.anchor: Tensor | None = None
        self.y_last: Tensor | None = None
        self.last_obs: Tensor | None = None
        self.n_patches = 0
        self.n_observed = 0

    @torch.no_grad()
    def observe(self, x_t: Tensor) -> None:
        """One observation per series, ``x_t [B, C]``; a completed patch runs one step."""
        cfg = self.model.config
        if x_t.shape != (self.batch, cfg.n_channels):
            raise ValueError(f"x_t must be [{self.batch}, {cfg.n_channels}], got {list(x_t.shape)}")
        self.pending.append(x_t)
        self.n_observed += 1
        if len(self.pending) < cfg.patch_len:
            return
        patch = self.model._rows(torch.stack(self.pending, dim=1))  # [R, P, c]
        self.pending = []
        if self.anchor is None:
            self.anchor = patch.mean(dim=1)
        token = self.model._tokens(patch[:, None], self.anchor, self.n_patches)[:, 0]
        self.y_last, self.state = self.model.backbone.step(token, self.state)
        self.last_obs = patch[:, -1]
        self.n_patches += 1

    @torch.no_grad()
    def forecast(self) -> Tensor:
        """The forecast ``[B, H, C]`` from every completed patch so far."""
        if self.y_last is None:
            raise ValueError(
                f"forecast() needs at least patch_len={self.model.config.patch_len} observations"
            )
        return self.model._output(self.y_last, self.last_obs, self.batch)


# -------------------------------------------------------------------------- metrics


@torch.no_grad()
def forecast_windows(
    model: nn.Module, windows: Any, device: torch.device, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and targets ``[N, H, C]`` for EVERY window of ``windows`` (none dropped)."""
    preds, targets = [], []
    for start in range(0, len(windows), batch_size):
        batch = windows.batch(np.arange(start, min(len(windows), start + batch_size)))
        x = torch.from_numpy(batch["x"]).to(device)
        preds.append(model(x).float().cpu().numpy())
        targets.append(batch["y"])
    return np.concatenate(preds), np.concatenate(targets)


def mse_mae(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MSE and MAE over every element (float64 sums) of ``pred``/``target [N, H, C]``."""
    if pred.shape != target.shape:
        raise ValueError(f"predictions {pred.shape} vs targets {target.shape}")
    err = pred.astype(np.float64) - target.astype(np.float64)
    return {"mse": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err)))}


# -------------------------------------------------------------------------- the head


class ForecastHead:
    """The ``forecast`` head: data is an :class:`aaren_rl.data.series_csv.ForecastData`."""

    name = "forecast"
    option_names = tuple(
        f.name
        for f in dataclasses.fields(ForecastConfig)
        if f.name not in ("n_channels", "input_len", "horizon")
    )

    def build_model(self, data: Any, backbone: Backbone, **options: Any) -> ForecastModel:
        config = ForecastConfig(
            n_channels=data.splits["train"].shape[1],
            input_len=data.input_len,
            horizon=data.horizon,
            **options,
        )
        return ForecastModel(config, backbone)

    def make_sampler(self, data: Any, seed: int) -> Any:
        from aaren_rl.data.series_csv import ForecastSampler

        return ForecastSampler(data.windows("train"), seed)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return (model(batch["x"]) - batch["y"]).pow(2).mean()

    def evaluate(self, model: nn.Module, data: Any, device: torch.device) -> dict[str, float]:
        out: dict[str, float] = {}
        for split in ("val", "test"):
            pred, target = forecast_windows(model, data.windows(split), device)
            for key, value in mse_mae(pred, target).items():
                out[f"{split}_{key}"] = value
        return out
