"""The one interface every sequence backbone offers (docs/design.md section 2).

Heads and agents talk only to this interface, so swapping Aaren for the Transformer baseline
is one config line and every comparison (score, speed, memory) runs the same code.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

State = Any  # a backbone's own structure of tensors, batch dimension first


@runtime_checkable
class Backbone(Protocol):
    """A causal sequence model usable in parallel (training) and step by step (rollout).

    - ``forward(x [B,T,D], state=None, resets=None [B,T] bool, mask=None [B,T] bool)
      -> (y [B,T,D], state)``: ``resets[b, t]`` restarts row b's memory at t (a new episode);
      ``mask[b, t] = False`` marks padding, which changes no other output.
    - ``step(x [B,D], state) -> (y [B,D], state)``: one token for every row.
    - ``initial_state(batch_size, device, dtype) -> state``: the empty memory.
    - ``reset_state(state, done [B] bool) -> state``: rows where ``done`` start afresh.
    """

    d_model: int

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        resets: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]: ...

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]: ...

    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> State: ...

    def reset_state(self, state: State, done: torch.Tensor) -> State: ...


def state_nbytes(state: State) -> int:
    """Bytes held by a state: the sum over every tensor inside (nested tuples, lists, dicts)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_nbytes(v) for v in state.values())
    if isinstance(state, (tuple, list)):
        return sum(state_nbytes(v) for v in state)
    return 0
