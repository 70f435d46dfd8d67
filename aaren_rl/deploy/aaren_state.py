"""An Aaren backbone's state as three stacked tensors, for graphs with explicit state.

Exported graphs carry the memory of every layer as ``m [B, L, H]``, ``u [B, L, H]`` and
``w [B, L, H, Dh]`` (batch first, layers stacked); these helpers turn them into the backbone's
per-layer :class:`~aaren_rl.nn.aaren_attention.AarenState` tuple and back, and empty the rows
that start afresh by a select (the empty memory is ``m = -inf``, ``u = w = 0``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from aaren_rl.nn.aaren import AarenBackbone
from aaren_rl.nn.aaren_attention import AarenState

__all__ = ["empty_rows", "initial_stacked", "split_layers", "stack_layers", "stacked_shapes"]


def stacked_shapes(backbone: AarenBackbone) -> dict[str, tuple[int, ...]]:
    """Per-row shapes of ``m``, ``u``, ``w`` for ``backbone``."""
    attn = backbone.layers[0].attn
    layers, heads = len(backbone.layers), attn.n_heads
    return {"m": (layers, heads), "u": (layers, heads), "w": (layers, heads, attn.head_dim)}


def initial_stacked(backbone: AarenBackbone, batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """The empty ``(m, u, w)`` of ``batch`` rows (float32)."""
    s = stacked_shapes(backbone)
    return (
        torch.full((batch, *s["m"]), float("-inf")),
        torch.zeros(batch, *s["u"]),
        torch.zeros(batch, *s["w"]),
    )


def empty_rows(m: Tensor, u: Tensor, w: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(m, u, w)`` with the rows where ``rows [B]`` (bool) is True emptied."""
    r = rows[:, None, None]
    return (
        torch.where(r, torch.tensor(float("-inf")), m),
        torch.where(r, torch.tensor(0.0), u),
        torch.where(r[..., None], torch.tensor(0.0), w),
    )


def split_layers(m: Tensor, u: Tensor, w: Tensor) -> tuple[AarenState, ...]:
    """Stacked tensors -> the backbone's state (one :class:`AarenState` per layer)."""
    return tuple(AarenState(m[:, i], u[:, i], w[:, i]) for i in range(m.shape[1]))


def stack_layers(state: tuple[AarenState, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """The backbone's state -> stacked ``(m, u, w)``."""
    return tuple(torch.stack([getattr(s, k) for s in state], dim=1) for k in ("m", "u", "w"))
