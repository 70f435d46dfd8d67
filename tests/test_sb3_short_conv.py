"""ShortConv: the step form and the sequence form against a direct per-step reference."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from aaren_rl.sb3.short_conv import ShortConv


def _conv(in_dim: int = 3, out_dim: int = 5, kernel: int = 4, seed: int = 0) -> ShortConv:
    torch.manual_seed(seed)
    conv = ShortConv(in_dim, out_dim, kernel).double()
    torch.nn.init.normal_(conv.taps)  # every lag matters (the identity start hides them)
    return conv


def _reference(conv: ShortConv, x, history, resets):
    """y_t = b + sum_k c_k W x_{t-k}, the inputs before the latest episode start left out,
    written out step by step: ``x [N, T, F]``, ``history [N, K-1, F]``, ``resets [N, T]``."""
    n, t, _ = x.shape
    w, b, c, k = conv.proj.weight, conv.proj.bias, conv.taps, conv.kernel
    out = torch.zeros(n, t, w.shape[0], dtype=x.dtype)
    for row in range(n):
        past = [history[row, i] for i in range(k - 1)]  # oldest first
        for s in range(t):
            if resets[row, s]:
                past = []
            seen = (past + [x[row, s]])[-k:]
            y = b.clone()
            for lag, inp in enumerate(reversed(seen)):
                y = y + c[lag] * (w @ inp)
            out[row, s] = y
            past = seen
    return out


@pytest.mark.parametrize("kernel", [1, 2, 4])
def test_sequence_and_step_forms_equal_the_per_step_reference(kernel):
    conv = _conv(kernel=kernel)
    n, t = 4, 11
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, t, 3, generator=g, dtype=torch.float64)
    history = torch.randn(n, kernel - 1, 3, generator=g, dtype=torch.float64)
    resets = torch.zeros(n, t, dtype=torch.bool)
    resets[0, 0] = True  # a reset at the first step drops the carried history
    resets[1, 3] = resets[1, 4] = True  # back-to-back episode starts
    resets[2, 9] = True  # row 3: none, the carried history is read
    expected = _reference(conv, x, history, resets)
    with torch.no_grad():
        torch.testing.assert_close(conv(x, history, resets), expected, rtol=1e-12, atol=1e-12)
        h, steps = history, []
        for s in range(t):
            y, h = conv.step(x[:, s], h, resets[:, s])
            assert h.shape == (n, kernel - 1, 3)  # constant memory
            steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), expected, rtol=1e-12, atol=1e-12)


def test_without_resets_it_is_torch_depthwise_conv1d_on_the_projection():
    conv = _conv(kernel=3)
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    z = x @ conv.proj.weight.t()  # [N, T, D]
    # conv1d is a cross-correlation: the last kernel column multiplies the current step
    weight = conv.taps.flip(0).t()[:, None, :]  # [D, 1, K]
    padded = F.pad(z.transpose(1, 2), (2, 0))
    expected = F.conv1d(padded, weight, groups=z.shape[-1]).transpose(1, 2) + conv.proj.bias
    with torch.no_grad():
        out = conv(x, conv.initial_history(2).double(), None)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_padding_after_a_sequence_changes_nothing_before_it_and_identity_start():
    conv = _conv(kernel=4)
    x = torch.randn(3, 8, 3, dtype=torch.float64)
    history = torch.randn(3, 3, 3, dtype=torch.float64)
    resets = torch.zeros(3, 8, dtype=torch.bool)
    resets[1, 2] = True
    junk = torch.cat([x[:, :5], 1e6 * torch.ones(3, 3, 3, dtype=torch.float64)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(
            conv(junk, history, resets)[:, :5], conv(x, history, resets)[:, :5]
        )
    fresh = ShortConv(3, 5, 4).double()  # at initialisation: the plain Linear
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, history, resets), fresh.proj(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="kernel must be >= 1"):
        ShortConv(3, 5, 0)


def test_gradients_through_the_sequence_form_pass_gradcheck():
    conv = _conv(kernel=3)
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    history = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    resets = torch.zeros(2, 6, dtype=torch.bool)
    resets[0, 3] = True
    assert torch.autograd.gradcheck(lambda a, h: conv(a, h, resets), (x, history))
