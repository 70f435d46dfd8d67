"""Event forecasting: a temporal point process head over any backbone, exact likelihood.

Model (:class:`EventModel`), for a sequence of events ``(t_i, k_i)`` with gaps
``tau_i = t_i - t_{i-1}`` (``t_0`` the window start):

- token ``i`` = mark embedding of ``k_i`` + a linear map of time features: the standardised
  log gap ``z_i = (log tau_i - a) / b`` (``a, b``: mean and std of the training log gaps) and
  sinusoids of the time since the window start at geometric periods (from the mean gap to
  four windows), plus that time over the mean window;
- the backbone runs causally; from its output after event ``i`` (LayerNorm'd, ``h_i``):
- the next gap ``tau`` has a mixture of log-normals (intensity-free, Shchur et al. 2020):
  ``z = (log tau - a) / b ~ sum_c w_c N(m_c, s_c^2)``, so ``log p(tau) = logsumexp_c(log w_c
  + log N(z; m_c, s_c)) - log b - log tau``, the survival is ``S(tau) = sum_c w_c
  Phi(-(z - m_c) / s_c)`` and the mean ``E[tau] = sum_c w_c exp(a + b m_c + (b s_c)^2 / 2)``,
  all in closed form;
- the next mark given its time is categorical: ``p(k | h_i, tau) = softmax(MLP([h_i,
  g(tau)]))`` with ``g`` = ``z`` and ``exp(-tau / s)`` at geometric scales ``s``. The joint
  ``p(tau) p(k | tau)`` is an exact density, and its intensity of mark ``k`` is
  ``p(tau) / S(tau) * p(k | tau)``.

Log-likelihood of a sequence (EasyTPP's convention, first event given): ``sum_{i>=2} [log
p(tau_i | h_{i-1}) + log p(k_i | h_{i-1}, tau_i)] + log S(end - t_n | h_n)``.

Streaming (:class:`EventStream`): ``observe(t, k)`` runs one backbone step and returns the
next-event distribution (:class:`NextEvent`), equal to the parallel form's; ``sample`` draws
the next event and ``generate`` samples forward several events without changing the stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aaren_rl.nn.backbone import Backbone

LOG_SCALE_RANGE = (-5.0, 1.0)  # per-component std of z, clamped so the mean stays finite


@dataclass
class EventConfig:
    """The event head's shape and the training set's time statistics (stored in checkpoints)."""

    n_marks: int
    log_gap_mean: float = 0.0
    log_gap_std: float = 1.0
    mean_gap: float = 1.0
    mean_window: float = 100.0
    n_components: int = 16
    n_time_features: int = 8
    min_gap: float = 1e-6
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if min(self.n_marks, self.n_components, self.n_time_features) < 1:
            raise ValueError("n_marks, n_components and n_time_features must be >= 1")
        if min(self.log_gap_std, self.mean_gap, self.mean_window, self.min_gap) <= 0:
            raise ValueError("log_gap_std, mean_gap, mean_window and min_gap must be > 0")


class NextEvent:
    """The next-event distribution at any leading shape ``[...]`` (e.g. ``[B]`` or ``[B, L]``).

    ``logits, loc, log_scale [..., C]`` (mixture over ``z``), ``hidden [..., d]`` (for the
    mark head). ``grad=False`` (a stream's distributions): the mark head, the one part that
    reads the model's weights, runs without autograd, so nothing it returns has a graph.
    """

    def __init__(
        self,
        model: EventModel,
        logits: Tensor,
        loc: Tensor,
        log_scale: Tensor,
        hidden: Tensor,
        grad: bool = True,
    ) -> None:
        self.model = model
        self.logits = logits
        self.loc = loc
        self.log_scale = log_scale
        self.hidden = hidden
        self.grad = grad

    @property
    def log_weights(self) -> Tensor:
        return self.logits.log_softmax(dim=-1)

    def index(self, item: Any) -> NextEvent:
        """The distribution at ``[item]`` of the leading dimensions."""
        return NextEvent(
            self.model,
            self.logits[item],
            self.loc[item],
            self.log_scale[item],
            self.hidden[item],
            self.grad,
        )

    def _z(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.model.config
        log_tau = tau.clamp_min(cfg.min_gap).log()
        return (log_tau - cfg.log_gap_mean) / cfg.log_gap_std, log_tau

    def log_prob_time(self, tau: Tensor) -> Tensor:
        """``log p(tau)`` (a density over the gap) ``[...]`` for ``tau [...]``."""
        z, log_tau = self._z(tau)
        scale = self.log_scale.exp()
        normal = -0.5 * ((z[..., None] - self.loc) / scale) ** 2 - self.log_scale
        normal = normal - 0.5 * math.log(2 * math.pi)
        log_pz = torch.logsumexp(self.log_weights + normal, dim=-1)
        return log_pz - math.log(self.model.config.log_gap_std) - log_tau

    def log_survival(self, tau: Tensor) -> Tensor:
        """``log P(next gap > tau)`` ``[...]``."""
        z, _ = self._z(tau)
        upper = torch.special.log_ndtr(-(z[..., None] - self.loc) / self.log_scale.exp())
        return torch.logsumexp(self.log_weights + upper, dim=-1)

    def mean(self) -> Tensor:
        """``E[tau]`` ``[...]`` in closed form."""
        cfg = self.model.config
        b = cfg.log_gap_std
        scale = self.log_scale.exp()
        log_means = cfg.log_gap_mean + b * self.loc + 0.5 * (b * scale) ** 2
        return torch.logsumexp(self.log_weights + log_means, dim=-1).exp()

    def mark_logits(self, tau: Tensor) -> Tensor:
        """``log p(k | tau)`` up to a constant, ``[..., K]``."""
        with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()):
            return self.model.mark_logits(self.hidden, tau)

    def mark_log_probs(self, tau: Tensor) -> Tensor:
        return self.mark_logits(tau).log_softmax(dim=-1)

    def intensity(self, tau: Tensor) -> Tensor:
        """Intensities of every mark at gap ``tau`` after the last event: ``[..., K]``."""
        total = (self.log_prob_time(tau) - self.log_survival(tau)).exp()
        return total[..., None] * self.mark_log_probs(tau).exp()

    def sample(self, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One next event per distribution: ``(tau [...], mark [...])``."""
        cfg = self.model.config
        shape = self.loc.shape[:-1]
        comp = torch.multinomial(
            self.log_weights.exp().reshape(-1, self.loc.shape[-1]), 1, generator=generator
        ).reshape(*shape, 1)
        loc = self.loc.gather(-1, comp)[..., 0]
        scale = self.log_scale.gather(-1, comp)[..., 0].exp()
        noise = torch.randn(shape, generator=generator, device=loc.device, dtype=loc.dtype)
        tau = (cfg.log_gap_mean + cfg.log_gap_std * (loc + scale * noise)).exp()
        probs = self.mark_log_probs(tau).exp().reshape(-1, cfg.n_marks)
        mark = torch.multinomial(probs, 1, generator=generator).reshape(shape)
        return tau, mark


class EventModel(nn.Module):
    """TPP over a backbone: ``forward(batch) -> per-sequence log-likelihood terms`` (see the
    module docstring); ``distributions(...)`` gives the next-event distribution after every
    event."""

    def __init__(self, config: EventConfig, backbone: Backbone) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        d, j, c = backbone.d_model, config.n_time_features, config.n_components
        ratio = 4 * config.mean_window / config.mean_gap
        periods = config.mean_gap * ratio ** (torch.arange(j) / max(1, j - 1))
        self.register_buffer("frequencies", 2 * math.pi / periods, persistent=False)
        scales = config.mean_gap * 100.0 ** (torch.arange(j) / max(1, j - 1) - 0.5)
        self.register_buffer("mark_scales", scales, persistent=False)
        self.mark_embed = nn.Embedding(config.n_marks, d)
        self.time_in = nn.Linear(2 + 2 * j, d)
        self.drop = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(d)
        self.mixture = nn.Linear(d, 3 * c)
        self.mark_hidden = nn.Linear(d + 1 + j, d)
        self.mark_out = nn.Linear(d, config.n_marks)

    # ---------------------------------------------------------------- pieces

    def _log_gap_z(self, tau: Tensor) -> Tensor:
        cfg = self.config
        return (tau.clamp_min(cfg.min_gap).log() - cfg.log_gap_mean) / cfg.log_gap_std

    def tokens(self, gaps: Tensor, times: Tensor, marks: Tensor) -> Tensor:
        """``gaps, times`` (since the window start), ``marks`` ``[...]`` -> tokens ``[..., d]``."""
        angle = times[..., None] * self.frequencies.to(times.dtype)
        features = torch.cat(
            [
                self._log_gap_z(gaps)[..., None],
                (times / self.config.mean_window)[..., None],
                angle.sin(),
                angle.cos(),
            ],
            dim=-1,
        )
        return self.drop(self.mark_embed(marks) + self.time_in(features))

    def distribution(self, y: Tensor, grad: bool = True) -> NextEvent:
        """Backbone outputs ``[..., d]`` -> :class:`NextEvent` ``[...]`` (``grad``: see
        :class:`NextEvent`)."""
        h = self.norm(y)
        logits, loc, raw_scale = self.mixture(h).chunk(3, dim=-1)
        return NextEvent(self, logits, loc, raw_scale.clamp(*LOG_SCALE_RANGE), h, grad)

    def mark_logits(self, hidden: Tensor, tau: Tensor) -> Tensor:
        """``hidden [..., d]``, ``tau [...]`` -> mark logits ``[..., K]``."""
        shape = torch.broadcast_shapes(hidden.shape[:-1], tau.shape)
        tau = tau.expand(shape)
        g = torch.exp(-tau[..., None] / self.mark_scales.to(tau.dtype))
        hidden = hidden.expand(*shape, hidden.shape[-1])
        x = torch.cat([hidden, self._log_gap_z(tau)[..., None], g], dim=-1)
        return self.mark_out(F.gelu(self.mark_hidden(x)))

    # ---------------------------------------------------------------- parallel form

    def distributions(
        self, gaps: Tensor, times: Tensor, marks: Tensor, mask: Tensor | None = None
    ) -> NextEvent:
        """Next-event distributions after every event, ``[B, L]`` (``times`` since the window
        start, right padding ``mask [B, L]`` False)."""
        y, _ = self.backbone(self.tokens(gaps, times, marks), mask=mask)
        return self.distribution(y)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-sequence terms ``[B]``: ``time_ll``, ``mark_ll``, ``survival_ll`` and the number
        of scored events ``n_events``; plus per-event ``mean_gap, target_gap [B, L-1]``,
        ``mark_correct [B, L-1]`` and ``scored [B, L-1]`` (see the module docstring)."""
        gaps, marks, mask = batch["gaps"], batch["marks"], batch["mask"]
        times = batch["times"] - batch["start"][:, None]
        lengths = batch["lengths"]
        dist = self.distributions(gaps, times, marks, mask)
        scored = mask[:, 1:]
        before = dist.index((slice(None), slice(0, -1)))
        target_gap = gaps[:, 1:]
        weight = scored.to(gaps.dtype)
        time_ll = before.log_prob_time(target_gap) * weight
        mark_lp = before.mark_log_probs(target_gap)
        target_mark = marks[:, 1:]
        mark_ll = mark_lp.gather(-1, target_mark[..., None])[..., 0] * weight
        rows = torch.arange(len(gaps), device=gaps.device)
        last = (lengths - 1).clamp_min(0)
        after_last = dist.index((rows, last))
        tail = (batch["end"] - batch["times"][rows, last]).clamp_min(0)
        return {
            "time_ll": time_ll.sum(dim=1),
            "mark_ll": mark_ll.sum(dim=1),
            "survival_ll": after_last.log_survival(tail),
            "n_events": weight.sum(dim=1),
            "mean_gap": before.mean(),
            "target_gap": target_gap,
            "mark_correct": mark_lp.argmax(dim=-1) == target_mark,
            "scored": scored,
        }

    # ---------------------------------------------------------------- streaming form

    def stream(self, batch_size: int = 1, start: float = 0.0) -> EventStream:
        return EventStream(self, batch_size, start)


class EventStream:
    """Events in, next-event distribution out, one backbone step per event.

    ``observe(t [B], mark [B]) -> NextEvent [B]``; the state is the backbone's (constant for
    Aaren) plus the last event time. A stream is inference: every step runs without autograd
    (whatever the caller's grad mode), so its state and outputs hold no graph and its memory
    stays constant however long it runs.
    """

    def __init__(self, model: EventModel, batch_size: int = 1, start: float = 0.0) -> None:
        self.model = model
        p = next(model.parameters())
        self.batch = int(batch_size)
        self.start = float(start)
        self.state = model.backbone.initial_state(self.batch, p.device, p.dtype)
        self.last_time = torch.full((self.batch,), self.start, device=p.device, dtype=p.dtype)
        self.current: NextEvent | None = None
        self.n_events = 0

    @torch.no_grad()
    def observe(self, t: Tensor, mark: Tensor) -> NextEvent:
        """The next event's time ``t [B]`` (absolute) and ``mark [B]``; returns the
        distribution of the event after it."""
        t = torch.as_tensor(t, dtype=self.last_time.dtype, device=self.last_time.device)
        mark = torch.as_tensor(mark, dtype=torch.long, device=self.last_time.device)
        t = t.expand(self.batch) if t.dim() == 0 else t
        mark = mark.expand(self.batch) if mark.dim() == 0 else mark
        if torch.any(t < self.last_time):
            raise ValueError(f"event times must not decrease: got {t} after {self.last_time}")
        token = self.model.tokens(t - self.last_time, t - self.start, mark)
        y, self.state = self.model.backbone.step(token, self.state)
        self.last_time = t
        self.n_events += 1
        self.current = self.model.distribution(y, grad=False)
        return self.current

    def next_event(self) -> NextEvent:
        if self.current is None:
            raise ValueError("observe at least one event first (the first event is given)")
        return self.current

    @torch.no_grad()
    def sample(self, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw the next event: ``(absolute time [B], mark [B])``."""
        tau, mark = self.next_event().sample(generator)
        return self.last_time + tau, mark

    @torch.no_grad()
    def generate(
        self, n_events: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Sample ``n_events`` forward (each fed back in): ``(times [B, n], marks [B, n])``.
        The stream itself is left as it was."""
        saved = (self.state, self.last_time, self.current, self.n_events)
        times, marks = [], []
        try:
            for _ in range(n_events):
                t, k = self.sample(generator)
                self.observe(t, k)
                times.append(t)
                marks.append(k)
        finally:
            self.state, self.last_time, self.current, self.n_events = saved
        return torch.stack(times, dim=1), torch.stack(marks, dim=1)


# -------------------------------------------------------------------------- metrics


@torch.no_grad()
def event_metrics(
    model: nn.Module, seqs: Any, device: torch.device, batch_size: int = 64
) -> dict[str, float]:
    """EasyTPP-style metrics over every sequence of ``seqs`` (an EventSequences):

    - ``nll_per_event``: ``-(sum of sequence log-likelihoods) / (scored events)``, survival
      to the window end included; ``time_nll``/``mark_nll`` split it (survival in time);
    - ``rmse``: of the next gap, predicting the mean of the next-gap distribution;
    - ``mark_accuracy``: argmax of ``p(k | history, true next time)``.
    """
    totals = {"time": 0.0, "mark": 0.0, "survival": 0.0, "n": 0.0, "se": 0.0, "hits": 0.0}
    dtype = next(model.parameters()).dtype
    for first in range(0, len(seqs), batch_size):
        rows = np.arange(first, min(len(seqs), first + batch_size))
        arrays = seqs.batch(rows, np.float64 if dtype == torch.float64 else np.float32)
        batch = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
        out = model(batch)
        scored = out["scored"]
        totals["time"] += float(out["time_ll"].double().sum())
        totals["mark"] += float(out["mark_ll"].double().sum())
        totals["survival"] += float(out["survival_ll"].double().sum())
        totals["n"] += float(out["n_events"].double().sum())
        err = (out["mean_gap"] - out["target_gap"]).double() ** 2
        totals["se"] += float(err[scored].sum())
        totals["hits"] += float(out["mark_correct"][scored].sum())
    n = max(totals["n"], 1.0)
    return {
        "nll_per_event": -(totals["time"] + totals["mark"] + totals["survival"]) / n,
        "time_nll": -(totals["time"] + totals["survival"]) / n,
        "mark_nll": -totals["mark"] / n,
        "rmse": math.sqrt(totals["se"] / n),
        "mark_accuracy": totals["hits"] / n,
    }


def sequence_loss(out: dict[str, Tensor]) -> Tensor:
    """Mean negative log-likelihood per scored event of a batch (survival included)."""
    total = out["time_ll"] + out["mark_ll"] + out["survival_ll"]
    return -total.sum() / out["n_events"].sum().clamp_min(1.0)


# -------------------------------------------------------------------------- the head


def time_statistics(seqs: Any) -> dict[str, float]:
    """The time scales a model is built with, from the training sequences."""
    gaps = np.concatenate([np.diff(t) for t in seqs.times if len(t) > 1])
    positive = gaps[gaps > 0]
    mean_gap = float(positive.mean()) if len(positive) else 1.0
    min_gap = 1e-4 * mean_gap  # zero gaps (ties in real data) count as this
    log_gaps = np.log(np.maximum(gaps, min_gap))
    return {
        "log_gap_mean": float(log_gaps.mean()),
        "log_gap_std": float(max(log_gaps.std(), 1e-3)),
        "mean_gap": mean_gap,
        "mean_window": float(np.mean(seqs.end - seqs.start)),
        "min_gap": min_gap,
    }


class EventHead:
    """The ``events`` head: data is an :class:`aaren_rl.data.events.EventData`."""

    name = "events"

    def build_model(self, data: Any, backbone: Backbone, **options: Any) -> EventModel:
        stats = time_statistics(data.splits["train"])
        config = EventConfig(n_marks=data.n_marks, **{**stats, **options})
        return EventModel(config, backbone)

    def make_sampler(self, data: Any, seed: int) -> Any:
        from aaren_rl.data.events import EventSampler

        return EventSampler(data, seed)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return sequence_loss(model(batch))

    def evaluate(self, model: nn.Module, data: Any, device: torch.device) -> dict[str, float]:
        out: dict[str, float] = {}
        for split in ("val", "test"):
            for key, value in event_metrics(model, data.splits[split], device).items():
                out[f"{split}_{key}"] = value
        return out
