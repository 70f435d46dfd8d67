"""A short causal convolution in front of a memory: each token sees the last ``K`` steps.

Mamba's ``conv1d`` and flash-linear-attention's ``ShortConvolution`` (RWKV's token shift is
``K = 2``): a depthwise filter over the last ``K`` projected inputs of the same episode,

    y_t = b + sum_{k < K} c_k * (W x_{t-k})        (steps before the episode's start count 0)

``W``, ``b`` are a ``Linear`` from the input features to the model width, ``c [K, D]`` one
filter tap per lag and channel. Aaren's softmax average has positive weights, so it cannot
form ``x_t - x_{t-1}``; this filter can (a velocity from positions). The taps start at the
identity (``c_0 = 1``, the rest 0), so at initialisation the layer is the plain ``Linear``.

Constant memory: the state is the last ``K - 1`` *raw* inputs ``[batch, K - 1, F]`` (the
projection is re-applied with the current weights, so a stored state never goes stale in the
update). At an episode start the history is emptied by a select (``torch.where``).

Two forms, one truth (``tests/test_sb3_short_conv.py``): :meth:`ShortConv.step` (one step per
row, the history carried) and :meth:`ShortConv.forward` (whole sequences ``[N, T]`` with the
history carried in and resets inside: ``K`` shifted views, no loop over time).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ShortConv(nn.Module):
    """``Linear(in_dim, out_dim)`` then a depthwise causal filter of ``kernel`` taps."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int) -> None:
        super().__init__()
        if kernel < 1:
            raise ValueError(f"short_conv kernel must be >= 1, got {kernel}")
        self.in_dim, self.kernel = in_dim, kernel
        self.proj = nn.Linear(in_dim, out_dim)
        taps = torch.zeros(kernel, out_dim)
        taps[0] = 1.0  # identity at first: the plain Linear
        self.taps = nn.Parameter(taps)  # taps[k]: the weight of the input k steps back

    def initial_history(
        self, batch_size: int, device: torch.device | str | None = None, dtype=None
    ) -> Tensor:
        """The empty history ``[batch, kernel - 1, in_dim]`` (zeros: nothing seen yet)."""
        p = self.proj.weight
        return torch.zeros(
            batch_size,
            self.kernel - 1,
            self.in_dim,
            device=device or p.device,
            dtype=dtype or p.dtype,
        )

    def step(
        self, x: Tensor, history: Tensor, reset: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``x [B, F]``, ``history [B, K-1, F]`` (oldest first), ``reset [B]`` bool (the history
        is emptied first) -> ``(y [B, D], history [B, K-1, F])``."""
        if reset is not None:
            history = torch.where(reset[:, None, None], torch.zeros_like(history), history)
        window = torch.cat([history, x[:, None]], dim=1)  # [B, K, F], lag K-1 .. 0
        z = window @ self.proj.weight.t()  # [B, K, D]
        y = (z * self.taps.flip(0)).sum(1) + self.proj.bias
        return y, window[:, 1:]

    def forward(self, x: Tensor, history: Tensor, resets: Tensor | None = None) -> Tensor:
        """``x [N, T, F]``, ``history [N, K-1, F]`` carried into each row, ``resets [N, T]``
        bool (an episode starts there: earlier steps are not seen) -> ``y [N, T, D]``.

        Trailing padding needs no mask: the filter is causal, so padded steps change nothing
        before them. The final history is not returned (the update does not need it)."""
        n, t, _ = x.shape
        k = self.kernel
        z = torch.cat([history, x], dim=1) @ self.proj.weight.t()  # [N, K-1+T, D]
        idx = torch.arange(t, device=x.device)
        if resets is None:
            last = torch.full((n, t), -k, dtype=torch.long, device=x.device)
        else:  # the latest reset at or before each step (-K: none in this row yet)
            marked = torch.where(resets, idx.expand(n, t), torch.full_like(idx, -k).expand(n, t))
            last = marked.cummax(dim=1).values
        y = self.proj.bias.expand(n, t, -1)
        # window index j = lag K-1-j, summed oldest first as in step
        for j in range(k):
            lag = k - 1 - j
            seen = (idx - lag >= last)[..., None]  # [N, T, 1]: step t-lag is in t's episode
            term = z[:, j : j + t] * self.taps[lag]
            y = y + torch.where(seen, term, torch.zeros_like(term))
        return y
