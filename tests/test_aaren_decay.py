"""Aaren with a recency decay: scan, step and a hand-computed oracle agree (float64)."""

from __future__ import annotations

import torch

from aaren_rl.nn.aaren import AarenAttention, AarenBackbone
from aaren_rl.nn.aaren_attention import AarenState, reset_aaren_state


def _oracle(attn: AarenAttention, x: torch.Tensor, resets: torch.Tensor) -> torch.Tensor:
    """o_t = sum_j exp(s_j - rate (t - j)) v_j / sum_j exp(s_j - rate (t - j)) over the tokens
    j <= t of t's segment, written out token by token (x [B, T, D], resets [B, T])."""
    scores, values = attn.scores_and_values(x)  # [B, T, H], [B, T, H, Dh]
    rate = attn.decay_rate()
    b, t_len, h = scores.shape
    out = torch.zeros_like(values)
    for bi in range(b):
        start = 0
        for t in range(t_len):
            if resets[bi, t]:
                start = t
            j = torch.arange(start, t + 1)
            logits = scores[bi, j] - rate * (t - j)[:, None]  # [n, H]
            weights = torch.softmax(logits, dim=0)
            out[bi, t] = (weights[..., None] * values[bi, j]).sum(0)
    return attn.out_proj(out.flatten(-2))


def test_decay_scan_step_and_oracle_agree_with_carried_state_resets_and_padding():
    torch.manual_seed(0)
    attn = AarenAttention(8, 2, chunk_size=4, decay=True).double()
    x = torch.randn(3, 13, 8, dtype=torch.float64)
    resets = torch.zeros(3, 13, dtype=torch.bool)
    resets[:, 0] = True
    resets[0, 5] = resets[1, 9] = resets[2, 3] = True
    expected = _oracle(attn, x, resets)

    state = attn.initial_state(3, dtype=torch.float64)  # step by step
    stepped = []
    for t in range(13):
        state = reset_aaren_state(state, resets[:, t])
        y, state = attn.step(x[:, t], state)
        stepped.append(y)
    torch.testing.assert_close(torch.stack(stepped, 1), expected, rtol=1e-10, atol=1e-10)

    # scan in two pieces: the state of the first (trailing padding in row 2) carried in
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[2, 6] = False  # row 2's 7th token is padding: it is fed again in the second piece
    y1, s1 = attn(x[:, :7], None, resets[:, :7], mask)
    torch.testing.assert_close(y1[mask], expected[:, :7][mask], rtol=1e-10, atol=1e-10)
    y2, _ = attn(x[:, 7:], s1, resets[:, 7:])
    torch.testing.assert_close(y2[:2], expected[:2, 7:], rtol=1e-10, atol=1e-10)
    # row 2 stopped before its padded token: it resumes from token 6
    row2 = AarenState(s1.m[2:], s1.u[2:], s1.w[2:])
    y3, _ = attn(x[2:, 6:], row2, resets[2:, 6:])
    torch.testing.assert_close(y3[0], expected[2, 6:], rtol=1e-10, atol=1e-10)


def test_decay_backbone_gradcheck_and_default_is_unchanged():
    torch.manual_seed(1)
    plain = AarenBackbone(8, 1, 2)
    assert not any("decay" in k for k in plain.state_dict())
    bb = AarenBackbone(8, 2, 2, chunk_size=3, decay=True).double()
    x = torch.randn(2, 7, 8, dtype=torch.float64, requires_grad=True)
    resets = torch.zeros(2, 7, dtype=torch.bool)
    resets[1, 4] = True

    def f(inp):
        return bb(inp, None, resets)[0]

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6)
    y_scan, state = bb(x.detach(), None, resets)
    s = bb.initial_state(2, dtype=torch.float64)
    outs = []
    for t in range(7):
        s = bb.reset_state(s, resets[:, t])
        y, s = bb.step(x.detach()[:, t], s)
        outs.append(y)
    torch.testing.assert_close(torch.stack(outs, 1), y_scan, rtol=1e-10, atol=1e-10)
    for a, b in zip(state, s, strict=True):
        torch.testing.assert_close(a.m, b.m, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a.w / a.u[..., None], b.w / b.u[..., None], rtol=1e-9, atol=1e-9)
