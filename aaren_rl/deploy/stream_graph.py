"""The sequence heads' streams as pure functions of their inputs, for ONNX export.

:class:`ClassifyStreamGraph` is :class:`~aaren_rl.heads.classify.ClassifyStream`'s
``observe`` with its state explicit, one observation per series per call::

    (x [B, C], reset [B] bool, m [B, L, H], u [B, L, H], w [B, L, H, Dh], t [B] int64,
     (pool_sum [B, D] with pool = "mean"))
    -> (probabilities [B, K], m', u', w', t', (pool_sum'))

Rows whose ``reset`` is set start a new series first (the empty memory, ``t = 0``, an empty
mean). Each row keeps its own step count, so series of different lengths share one batch.

:class:`ForecastStreamGraph` is :class:`~aaren_rl.heads.forecast.ForecastStream`'s ``observe``
then ``forecast``, one observation per series per call::

    (x [B, C], reset [B] bool, pending [B, P, C], count [B] int64, m [B, R, L, H],
     u [B, R, L, H], w [B, R, L, H, Dh], anchor [B, R, c], n_patches [B] int64,
     y_last [B, R, D], last_obs [B, R, c])
    -> (forecast [B, H, C], ready [B] bool, the state')

``R`` is the backbone's rows per series (``C`` channel independent, else 1) and ``c`` the
channels per row. The observation fills slot ``count`` of the pending patch; when the patch is
complete the backbone takes one step (the graph computes that step at every call and keeps its
result only where the patch completed: a select, no branch). ``forecast`` is the forecast
from every completed patch so far, valid where ``ready`` (at least one patch).

:class:`EventStreamGraph` is :class:`~aaren_rl.heads.events.EventStream`'s ``observe``, one
event per sequence per call::

    (time [B] (absolute), mark [B] int64, reset [B] bool, m, u, w, last_time [B], start [B])
    -> (log_weights [B, K], loc [B, K], log_scale [B, K], mean_gap [B], hidden [B, D],
        the state')

The outputs are the next event's distribution (:class:`~aaren_rl.heads.events.NextEvent`: the
mixture over the standardised log gap and its closed-form mean gap) and the hidden vector its
mark head reads. ``start`` is the window's start (set it in the initial state; a ``reset`` row
restarts with ``last_time = start``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aaren_rl.heads.classify import ClassifyModel
from aaren_rl.heads.events import EventModel
from aaren_rl.heads.forecast import ForecastModel
from aaren_rl.nn.aaren import AarenBackbone

from .aaren_state import empty_rows, initial_stacked, split_layers, stack_layers, stacked_shapes

__all__ = ["ClassifyStreamGraph", "EventStreamGraph", "ForecastStreamGraph"]


def _require_aaren(backbone: nn.Module) -> None:
    """Stream export steps the Aaren backbone (constant memory); any other is a ValueError."""
    if not isinstance(backbone, AarenBackbone):
        raise ValueError(
            f"stream export runs the Aaren backbone (constant memory), not "
            f"{type(backbone).__name__}"
        )


class ClassifyStreamGraph(nn.Module):
    """The state-in/state-out streaming classifier (see the module docstring)."""

    def __init__(self, model: ClassifyModel) -> None:
        super().__init__()
        _require_aaren(model.backbone)
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


class ForecastStreamGraph(nn.Module):
    """The state-in/state-out streaming forecaster (see the module docstring)."""

    def __init__(self, model: ForecastModel) -> None:
        super().__init__()
        _require_aaren(model.backbone)
        cfg = model.config
        self.model = model
        self.patch, self.n_channels = cfg.patch_len, cfg.n_channels
        self.rows = cfg.n_channels if cfg.channel_independent else 1
        self.row_channels = 1 if cfg.channel_independent else cfg.n_channels
        self.d_model = model.backbone.d_model

    state_names = (
        "pending", "count", "m", "u", "w", "anchor", "n_patches", "y_last", "last_obs"
    )  # fmt: skip

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        r, c = self.rows, self.row_channels
        stacked = stacked_shapes(self.model.backbone)
        return {
            "pending": (self.patch, self.n_channels),
            "count": (),
            **{k: (r, *v) for k, v in stacked.items()},
            "anchor": (r, c),
            "n_patches": (),
            "y_last": (r, self.d_model),
            "last_obs": (r, c),
        }

    def initial_state(self, batch: int) -> tuple[Tensor, ...]:
        shapes = self.state_shapes()
        out = []
        for name in self.state_names:
            shape = (batch, *shapes[name])
            if name in ("count", "n_patches"):
                out.append(torch.zeros(shape, dtype=torch.long))
            elif name == "m":
                out.append(torch.full(shape, float("-inf")))
            else:
                out.append(torch.zeros(shape))
        return tuple(out)

    def forward(self, x: Tensor, reset: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        pending, count, m, u, w, anchor, n_patches, y_last, last_obs = state
        model, p, r = self.model, self.patch, self.rows
        zero_i = torch.tensor(0, dtype=torch.long)
        # a reset row starts afresh (its memory flattened to backbone rows for the select)
        m, u, w = (z.flatten(0, 1) for z in (m, u, w))
        m, u, w = empty_rows(m, u, w, reset.repeat_interleave(r))
        count = torch.where(reset, zero_i, count)
        n_patches = torch.where(reset, zero_i, n_patches)
        # the observation fills slot `count` of the pending patch
        slot = (count[:, None] == torch.arange(p)).to(x.dtype)[..., None]  # [B, P, 1]
        pending = pending * (1 - slot) + x[:, None, :] * slot
        complete = count + 1 == p
        rows = model._rows(pending)  # [B*R, P, c]
        first = (n_patches == 0).repeat_interleave(r)[:, None]
        anchor_rows = torch.where(first, rows.mean(dim=1), anchor.flatten(0, 1))
        tokens = rows - anchor_rows[:, None, :] if model.config.norm == "revin" else rows
        pos = n_patches.clamp(max=model.config.n_patches - 1).repeat_interleave(r)
        token = model.embed(tokens.flatten(1)) + model.position[pos]
        y, new = model.backbone.step(token, split_layers(m, u, w))
        new_m, new_u, new_w = stack_layers(new)
        keep = complete.repeat_interleave(r)
        sel = lambda a, b: torch.where(keep.reshape(-1, *([1] * (a.dim() - 1))), a, b)  # noqa: E731
        m, u, w = sel(new_m, m), sel(new_u, u), sel(new_w, w)
        y_rows = sel(y, y_last.flatten(0, 1))
        last_rows = sel(rows[:, -1], last_obs.flatten(0, 1))
        anchor_rows = sel(anchor_rows, anchor.flatten(0, 1))
        n_patches = n_patches + complete.to(n_patches.dtype)
        count = torch.where(complete, zero_i, count + 1)
        batch = x.shape[0]
        forecast = model._output(y_rows, last_rows, batch)  # [B, H, C]
        unflat = lambda z: z.reshape(-1, r, *z.shape[1:])  # noqa: E731
        return (
            forecast,
            n_patches > 0,
            pending,
            count,
            unflat(m),
            unflat(u),
            unflat(w),
            unflat(anchor_rows),
            n_patches,
            unflat(y_rows),
            unflat(last_rows),
        )


class EventStreamGraph(nn.Module):
    """The state-in/state-out event stream (see the module docstring)."""

    state_names = ("m", "u", "w", "last_time", "start")

    def __init__(self, model: EventModel) -> None:
        super().__init__()
        _require_aaren(model.backbone)
        self.model = model
        self.d_model = model.backbone.d_model

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {**stacked_shapes(self.model.backbone), "last_time": (), "start": ()}

    def initial_state(self, batch: int) -> tuple[Tensor, ...]:
        return (
            *initial_stacked(self.model.backbone, batch),
            torch.zeros(batch),
            torch.zeros(batch),
        )

    def forward(
        self,
        time: Tensor,
        mark: Tensor,
        reset: Tensor,
        m: Tensor,
        u: Tensor,
        w: Tensor,
        last_time: Tensor,
        start: Tensor,
    ) -> tuple[Tensor, ...]:
        model = self.model
        m, u, w = empty_rows(m, u, w, reset)
        last_time = torch.where(reset, start, last_time)
        token = model.tokens(time - last_time, time - start, mark)
        y, state = model.backbone.step(token, split_layers(m, u, w))
        dist = model.distribution(y)
        return (
            dist.log_weights,
            dist.loc,
            dist.log_scale,
            dist.mean(),
            dist.hidden,
            *stack_layers(state),
            time,
            start,
        )
