"""The residual block both backbones share, so that they differ only in their attention.

Attention then a feed-forward, each with LayerNorm, dropout and a residual: the layout of
``torch.nn.TransformerEncoderLayer``. Pre-norm is ``x + f(norm(x))``, post-norm
``norm(x + f(x))``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


class ResidualBlock(nn.Module):
    """LayerNorms, dropouts and the feed-forward around an attention that a subclass adds.

    Subclasses set ``self.attn`` and call :meth:`residual` with a function that runs it.
    """

    def __init__(
        self, d_model: int, d_ff: int, dropout: float, norm_first: bool, activation: str = "relu"
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, d_ff),
            ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            nn.Linear(d_ff, d_model),
        )
        self.drop1 = nn.Dropout(dropout)  # on the attention branch
        self.drop2 = nn.Dropout(dropout)  # on the feed-forward branch
        self.norm_first = norm_first

    def residual(self, x: Tensor, attend: Callable[[Tensor], tuple[Any, ...]]) -> tuple[Any, ...]:
        """``x [..., d_model]`` through attention and feed-forward.

        ``attend(h)`` returns ``(a, *extras)`` with ``a`` shaped like ``h``; the result is
        ``(y, *extras)`` (the extras are the attention's memory: a state or keys and values).
        """
        if self.norm_first:
            a, *extras = attend(self.norm1(x))
            x = x + self.drop1(a)
            x = x + self.drop2(self.ff(self.norm2(x)))
        else:
            a, *extras = attend(x)
            x = self.norm1(x + self.drop1(a))
            x = self.norm2(x + self.drop2(self.ff(x)))
        return (x, *extras)
