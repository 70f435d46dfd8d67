"""Aaren modules: multi-head attention with learned queries, a residual block, and a backbone.

The backbone implements the interface of :mod:`aaren_rl.nn.backbone`: ``forward`` trains in
parallel (prefix scan), ``step`` runs as an RNN with a state whose size never depends on how
many tokens came before.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from aaren_rl.nn.aaren_attention import (
    DEFAULT_CHUNK,
    LOG_MASS_FLOOR,
    AarenState,
    aaren_reference,
    aaren_scan,
    aaren_step,
    initial_aaren_state,
    log_mass,
    reset_aaren_state,
)
from aaren_rl.nn.residual import ResidualBlock

Method = Literal["scan", "reference"]
AarenBackboneState = tuple[AarenState, ...]

__all__ = ["AarenAttention", "AarenBlock", "AarenBackbone", "AarenBackboneState"]


class AarenAttention(nn.Module):
    """Multi-head Aaren: ``H`` learned queries attend over the tokens seen so far.

    Parameters follow the paper's count: a learned query token (``d_model`` numbers) projected
    by ``q_proj``, plus the key, value and output projections of ordinary multi-head attention.
    Because the query is fixed, a head's score is ``x . (W_k,h^T q_h) / sqrt(d_head)`` plus a
    constant (the collapsed key path of docs/design.md section 1): one dot product per head.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        chunk_size: int = DEFAULT_CHUNK,
        decay: bool = False,
        log_mass: bool = False,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.chunk_size = chunk_size
        self.log_mass = bool(log_mass)
        self.query = nn.Parameter(torch.empty(d_model))
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        # with log_mass the output projection also reads each head's log mass
        self.out_proj = nn.Linear(d_model + (n_heads if log_mass else 0), d_model)
        nn.init.normal_(self.query, std=1.0)
        # Optional recency (ALiBi-style): token i's score gains rate_h * i, so at step t a past
        # token weighs exp(s_i - rate_h (t - i)). Off by default (the paper's Aaren).
        self.decay_logit = nn.Parameter(_initial_decay_logits(n_heads)) if decay else None
        # Optional log mass (log_mass=True): a softmax average divides away how much a head
        # attended, so it cannot tell 3 matching tokens from 30. Each head also reports
        # log sum_i exp(s_i) (decayed like the weights), which is c + log(count) where the
        # scores single out some tokens with score c: a count, read by out_proj.

    def score_weights(self) -> tuple[Tensor, Tensor]:
        """The collapsed key path: ``(kappa [heads, d_model], const [heads])`` with
        ``score(x) = x @ kappa.T + const``.

        Computed from the parameters on every call (a ``[D] x [D, D]`` product: cheap beside
        the step). It is not cached: a cache keyed on the tensors' version counters misses
        in-place writes through ``.data`` (``p.data.copy_``, ``p.data.add_``) and fused
        optimisers (``AdamW(fused=True)``), which do not bump them, and would then score with
        stale keys. A rollout that wants the work done once builds
        :class:`~aaren_rl.agents.fast_step.FastDecisionStep`, which derives its weights at the
        start of every rollout.
        """
        return self._collapse_keys()

    def _collapse_keys(self) -> tuple[Tensor, Tensor]:
        # the key weights and bias side by side, so both collapse in one product and sum
        q = self.q_proj(self.query).view(self.n_heads, self.head_dim, 1)  # [H, Dh, 1]
        w_k = torch.cat([self.k_proj.weight, self.k_proj.bias[:, None]], dim=1)  # [D, D+1]
        collapsed = (q * w_k.view(self.n_heads, self.head_dim, self.d_model + 1)).sum(1)
        collapsed = collapsed * (1.0 / math.sqrt(self.head_dim))  # [H, D+1]
        return collapsed[:, : self.d_model], collapsed[:, self.d_model]

    def scores_and_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [..., d_model]`` -> ``(scores [..., heads], values [..., heads, head_dim])``."""
        kappa, const = self.score_weights()
        scores = torch.nn.functional.linear(x, kappa, const)
        values = self.v_proj(x).unflatten(-1, (self.n_heads, self.head_dim))
        return scores, values

    def forward(
        self,
        x: Tensor,
        state: AarenState | None = None,
        resets: Tensor | None = None,
        mask: Tensor | None = None,
        method: Method = "scan",
    ) -> tuple[Tensor, AarenState]:
        """``x [batch, time, d_model]`` -> ``(y [batch, time, d_model], state)``.

        With ``decay``, padding must be trailing (the final state is taken at each row's last
        valid token)."""
        scores, values = self.scores_and_values(x)
        rate = self.decay_rate()
        if rate is not None:  # token i gains rate * (i + 1) over the carried state
            pos = torch.arange(1, scores.shape[1] + 1, device=x.device, dtype=scores.dtype)
            scores = scores + pos[None, :, None] * rate
        if method == "scan":
            result = aaren_scan(scores, values, state, resets, mask, self.chunk_size, self.log_mass)
        elif method == "reference":
            result = aaren_reference(scores, values, state, resets, mask, self.log_mass)
        else:
            raise ValueError(f"method must be 'scan' or 'reference', got {method!r}")
        out, state = result[0], result[1]
        if rate is not None:  # back to the step's reference: the last valid token unshifted
            n = scores.shape[1] if mask is None else mask.sum(1).to(scores.dtype)
            shift = (torch.as_tensor(n, dtype=scores.dtype, device=x.device).reshape(-1, 1)) * rate
            state = AarenState(state.m - shift, state.u, state.w)
        mass = result[2] if self.log_mass else None
        if mass is not None and rate is not None:  # token i's mass at its own time
            mass = mass - pos[None, :, None] * rate  # (undo the shift of its scores)
        return self._project(out, mass), state

    def _project(self, out: Tensor, mass: Tensor | None) -> Tensor:
        """``out [..., heads, head_dim]`` (and ``mass [..., heads]``) -> ``[..., d_model]``."""
        if mass is None:
            return self.out_proj(out.flatten(-2))
        # an empty memory's -inf (padding) becomes a finite floor; a poisoned NaN stays NaN
        return self.out_proj(torch.cat([out.flatten(-2), mass.clamp_min(LOG_MASS_FLOOR)], dim=-1))

    def decay_rate(self) -> Tensor | None:
        """``[heads]`` the recency rates (softplus of ``decay_logit``), or None without decay."""
        return None if self.decay_logit is None else nn.functional.softplus(self.decay_logit)

    def step(self, x: Tensor, state: AarenState) -> tuple[Tensor, AarenState]:
        """``x [batch, d_model]`` -> ``(y [batch, d_model], state)``: one token per row."""
        scores, values = self.scores_and_values(x)
        rate = self.decay_rate()
        if rate is not None:  # every stored token ages one step (m=-inf stays -inf)
            state = AarenState(state.m - rate, state.u, state.w)
        out, state = aaren_step(scores, values, state)
        return self._project(out, log_mass(state) if self.log_mass else None), state

    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> AarenState:
        return initial_aaren_state(batch_size, self.n_heads, self.head_dim, device, dtype)


def _initial_decay_logits(n_heads: int) -> Tensor:
    """Rates from 1 (a few steps) down to 1/64 (a whole episode), geometric over the heads."""
    rates = torch.logspace(0, -6, n_heads, base=2.0) if n_heads > 1 else torch.tensor([0.1])
    return torch.log(torch.expm1(rates))  # softplus^-1


class AarenBlock(ResidualBlock):
    """Aaren then a feed-forward, each with LayerNorm, dropout and a residual.

    The layout of ``torch.nn.TransformerEncoderLayer`` (shared with the Transformer baseline
    through :class:`~aaren_rl.nn.residual.ResidualBlock`) with the self-attention swapped for
    Aaren, so the two have the same parameters but for Aaren's learned query (``d_model``).
    ``norm_first=True`` is pre-norm, ``False`` post-norm.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int | None = None,
        dropout: float = 0.0,
        norm_first: bool = True,
        activation: str = "relu",
        chunk_size: int = DEFAULT_CHUNK,
        decay: bool = False,
        log_mass: bool = False,
    ) -> None:
        super().__init__(d_model, d_ff or 4 * d_model, dropout, norm_first, activation)
        self.attn = AarenAttention(d_model, n_heads, chunk_size, decay, log_mass)

    def forward(
        self,
        x: Tensor,
        state: AarenState | None = None,
        resets: Tensor | None = None,
        mask: Tensor | None = None,
        method: Method = "scan",
    ) -> tuple[Tensor, AarenState]:
        """``x [batch, time, d_model]`` -> ``(y [batch, time, d_model], state)``."""
        return self.residual(x, lambda h: self.attn(h, state, resets, mask, method))

    def step(self, x: Tensor, state: AarenState) -> tuple[Tensor, AarenState]:
        """``x [batch, d_model]`` -> ``(y [batch, d_model], state)``."""
        return self.residual(x, lambda h: self.attn.step(h, state))


class AarenBackbone(nn.Module):
    """A stack of :class:`AarenBlock`: the constant-memory backbone.

    State: a tuple with one :class:`AarenState` per layer, ``(d_head + 2) * heads`` numbers per
    layer and batch row, whatever the sequence length.
    """

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        n_heads: int,
        d_ff: int | None = None,
        dropout: float = 0.0,
        norm_first: bool = True,
        activation: str = "relu",
        chunk_size: int = DEFAULT_CHUNK,
        decay: bool = False,
        log_mass: bool = False,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(
            AarenBlock(
                d_model, n_heads, d_ff, dropout, norm_first, activation, chunk_size, decay, log_mass
            )
            for _ in range(n_layers)
        )

    def forward(
        self,
        x: Tensor,
        state: AarenBackboneState | None = None,
        resets: Tensor | None = None,
        mask: Tensor | None = None,
        method: Method = "scan",
    ) -> tuple[Tensor, AarenBackboneState]:
        """``x [batch, time, d_model]``, ``resets``/``mask [batch, time]`` bool ->
        ``(y [batch, time, d_model], state)``."""
        states = state if state is not None else (None,) * len(self.layers)
        new_states = []
        for layer, layer_state in zip(self.layers, states, strict=True):
            x, s = layer(x, layer_state, resets, mask, method)
            new_states.append(s)
        return x, tuple(new_states)

    def step(self, x: Tensor, state: AarenBackboneState) -> tuple[Tensor, AarenBackboneState]:
        """``x [batch, d_model]`` -> ``(y [batch, d_model], state)``: constant time and memory."""
        new_states = []
        for layer, layer_state in zip(self.layers, state, strict=True):
            x, s = layer.step(x, layer_state)
            new_states.append(s)
        return x, tuple(new_states)

    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> AarenBackboneState:
        """The empty memory for ``batch_size`` rows (on the parameters' device and dtype by default)."""
        p = next(self.parameters())
        return tuple(
            layer.attn.initial_state(batch_size, device or p.device, dtype or p.dtype)
            for layer in self.layers
        )

    def reset_state(self, state: AarenBackboneState, done: Tensor) -> AarenBackboneState:
        """Empty the memory of rows where ``done [batch]`` is True, in every layer."""
        return tuple(reset_aaren_state(s, done) for s in state)
