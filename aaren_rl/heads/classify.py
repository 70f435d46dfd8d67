"""Time-series classification over any backbone, with padding masks and streaming.

Model (:class:`ClassifyModel`), for right-padded series ``x [B, T, C]`` with ``mask [B, T]``:
each step is one token (channels standardised by the training set's mean and std, linearly
embedded, plus a learned position embedding); the backbone runs causally; the class logits
at step ``t`` come from a LayerNorm and a linear map of ``pool_t``, where ``pool = "last"``
takes the backbone's output at ``t`` and ``pool = "mean"`` the mean of its outputs over the
real steps up to ``t``. A series is classified at its last real step, so padding never
changes a prediction.

Streaming (:class:`ClassifyStream`): ``observe(x_t)`` returns the class probabilities after
each new observation, from one backbone ``step`` (constant memory for Aaren); they equal
:meth:`ClassifyModel.step_probabilities` of the parallel form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aaren_rl.nn.backbone import Backbone

POOLS = ("last", "mean")


@dataclass
class ClassifyConfig:
    """The classifier's shape around its backbone (stored in checkpoints)."""

    n_channels: int
    n_classes: int
    max_len: int = 512
    pool: str = "last"
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"pool={self.pool!r} (expected one of {POOLS})")
        if min(self.n_channels, self.n_classes, self.max_len) < 1:
            raise ValueError("n_channels, n_classes and max_len must be >= 1")


class ClassifyModel(nn.Module):
    """``forward(x [B, T, C], mask [B, T]) -> logits [B, K]`` at each series' last real step."""

    def __init__(
        self,
        config: ClassifyConfig,
        backbone: Backbone,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        c, d = config.n_channels, backbone.d_model
        self.register_buffer("input_mean", torch.zeros(c) if mean is None else torch.tensor(mean))
        self.register_buffer("input_std", torch.ones(c) if std is None else torch.tensor(std))
        self.embed = nn.Linear(c, d)
        self.position = nn.Parameter(torch.zeros(config.max_len, d))
        nn.init.normal_(self.position, std=0.02)
        self.drop = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.n_classes)

    def _tokens(self, x: Tensor, positions: Tensor) -> Tensor:
        z = (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)
        pos = positions.clamp_max(self.config.max_len - 1)
        return self.drop(self.embed(z) + self.position[pos])

    def step_logits(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Logits after every step ``[B, T, K]`` (rows' padded steps hold meaningless values)."""
        b, t, c = x.shape
        if c != self.config.n_channels:
            raise ValueError(f"x must be [batch, time, {self.config.n_channels}], got {[b, t, c]}")
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
        tokens = self._tokens(x, torch.arange(t, device=x.device))
        y, _ = self.backbone(tokens, mask=mask)
        if self.config.pool == "mean":
            weight = mask.to(y.dtype).unsqueeze(-1)
            y = (y * weight).cumsum(dim=1) / weight.cumsum(dim=1).clamp_min(1.0)
        return self.head(self.norm(y))

    def step_probabilities(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Class probabilities after every step ``[B, T, K]``."""
        return self.step_logits(x, mask).softmax(dim=-1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x [B, T, C]``, ``mask [B, T]`` bool (True = real step) -> logits ``[B, K]``."""
        logits = self.step_logits(x, mask)
        if mask is None:
            return logits[:, -1]
        last = (mask.long().sum(dim=1) - 1).clamp_min(0)
        return logits[torch.arange(len(x), device=x.device), last]

    def stream(self, batch_size: int = 1) -> ClassifyStream:
        return ClassifyStream(self, batch_size)


class ClassifyStream:
    """``observe(x_t [B, C]) -> probabilities [B, K]`` after each new observation.

    Inference: each step runs without autograd whatever the caller's grad mode, so the state
    and the probabilities hold no graph (constant memory for an Aaren backbone).
    """

    def __init__(self, model: ClassifyModel, batch_size: int) -> None:
        self.model = model
        p = next(model.parameters())
        self.state = model.backbone.initial_state(batch_size, p.device, p.dtype)
        self.t = 0
        self.pool_sum: Tensor | None = None

    @torch.no_grad()
    def observe(self, x_t: Tensor) -> Tensor:
        m = self.model
        token = m._tokens(x_t, torch.tensor(self.t, device=x_t.device))
        y, self.state = m.backbone.step(token, self.state)
        self.t += 1
        if m.config.pool == "mean":
            self.pool_sum = y if self.pool_sum is None else self.pool_sum + y
            y = self.pool_sum / self.t
        return m.head(m.norm(y)).softmax(dim=-1)


class ClassifyHead:
    """The ``classify`` head: data is an :class:`aaren_rl.data.labelled_series.ClassifyData`."""

    name = "classify"

    def build_model(self, data: Any, backbone: Backbone, **options: Any) -> ClassifyModel:
        stacked = np.concatenate(data.train.series).astype(np.float64)
        std = stacked.std(axis=0)
        config = ClassifyConfig(
            n_channels=data.train.n_channels,
            n_classes=len(data.classes),
            **{"max_len": int(max(data.train.lengths.max(), data.test.lengths.max())), **options},
        )
        return ClassifyModel(
            config,
            backbone,
            stacked.mean(axis=0).astype(np.float32),
            np.where(std > 0, std, 1.0).astype(np.float32),
        )

    def make_sampler(self, data: Any, seed: int) -> Any:
        from aaren_rl.data.labelled_series import ClassifySampler

        return ClassifySampler(data, seed)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(model(batch["x"], batch["mask"]), batch["y"])

    def evaluate(self, model: nn.Module, data: Any, device: torch.device) -> dict[str, float]:
        out = {}
        for which in ("train", "test"):
            pred = predict_classes(model, data, which, device)
            out[f"{which}_accuracy"] = float(np.mean(pred == data.targets(which)))
        return out


@torch.no_grad()
def predict_classes(
    model: nn.Module, data: Any, which: str, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """Predicted class indices ``[N]`` for every series of ``which`` ("train" or "test")."""
    n = len(getattr(data, which).series)
    out = []
    for start in range(0, n, batch_size):
        batch = data.batch(which, np.arange(start, min(n, start + batch_size)))
        x = torch.from_numpy(batch["x"]).to(device)
        mask = torch.from_numpy(batch["mask"]).to(device)
        out.append(model(x, mask).argmax(dim=-1).cpu().numpy())
    return np.concatenate(out)
