"""The sequence heads' streams as pure functions of their inputs, for ONNX export.

:class:`ClassifyStreamGraph` is :class:`~aaren_rl.heads.classify.ClassifyStream`'s
``observe`` with its state explicit, one observation per series per call::

    (x [B, C], reset [B] bool, m [B, L, H], u [B, L, H], w [B, L, H, Dh], t [B] int64,
     (pool_sum [B, D] with pool = "mean"))
    -> (probabilities [B, K], m', u', w', t', (pool_sum'))

Rows whose ``reset`` is set start a new series first (the empty memory, ``t = 0``, an empty
mean). Each row keeps its own step count, so series of different lengths share one batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aaren_rl.heads.classify import ClassifyModel
from aaren_rl.nn.aaren import AarenBackbone

from .aaren_state import empty_rows, initial_stacked, split_layers, stack_layers, stacked_shapes

__all__ = ["ClassifyStreamGraph"]


class ClassifyStreamGraph(nn.Module):
    """The state-in/state-out streaming classifier (see the module docstring)."""

    def __init__(self, model: ClassifyModel) -> None:
        super().__init__()
        if not isinstance(model.backbone, AarenBackbone):
            raise ValueError(
                f"stream export runs the Aaren backbone (constant memory), not "
                f"{type(model.backbone).__name__}"
            )
        self.model = model
        self.mean_pool = model.config.pool == "mean"
        self.n_channels = model.config.n_channels
        self.d_model = model.backbone.d_model

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("m", "u", "w", "t", *(("pool_sum",) if self.mean_pool else ()))

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        out = {**stacked_shapes(self.model.backbone), "t": ()}
        if self.mean_pool:
            out["pool_sum"] = (self.d_model,)
        return out

    def initial_state(self, batch: int) -> tuple[Tensor, ...]:
        out = [*initial_stacked(self.model.backbone, batch), torch.zeros(batch, dtype=torch.long)]
        if self.mean_pool:
            out.append(torch.zeros(batch, self.d_model))
        return tuple(out)

    def forward(
        self, x: Tensor, reset: Tensor, m: Tensor, u: Tensor, w: Tensor, t: Tensor, *rest
    ) -> tuple[Tensor, ...]:
        model = self.model
        m, u, w = empty_rows(m, u, w, reset)
        t = torch.where(reset, torch.tensor(0, dtype=t.dtype), t)
        token = model._tokens(x, t)
        y, state = model.backbone.step(token, split_layers(m, u, w))
        t = t + 1
        pooled = []
        if self.mean_pool:
            total = torch.where(reset[:, None], torch.tensor(0.0), rest[0]) + y
            y = total / t.to(y.dtype)[:, None]
            pooled.append(total)
        probs = model.head(model.norm(y)).softmax(dim=-1)
        return (probs, *stack_layers(state), t, *pooled)
