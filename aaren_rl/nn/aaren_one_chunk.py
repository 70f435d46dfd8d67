"""The one-chunk Aaren scan with a hand-written backward: short sequences in few ops.

PPO's update runs Aaren over many short sequences (``[envs, 32]``). There the chunked scan of
:func:`aaren_rl.nn.aaren_attention.aaren_scan` is a single chunk, and its cost is the number of
small ops (the poison bookkeeping, the carry merge, and autograd's backward of each), not
arithmetic. :class:`OneChunkScan` computes the same thing as one ``[T, T]`` masked softmax in
which the carried-in state is a second source of weight, with a backward written out by hand:
about 20 ops forward and 15 backward, instead of a few hundred.

Math, per batch row and head (``A`` the allowed pairs: causal, same segment, key not padding;
``c_t`` whether token t still sees the carried state, i.e. no reset at or before t)::

    M_t = max(max_{i in A(t)} s_i, m0 if c_t)          (the memory's running max)
    P_ti = exp(s_i - M_t) on A, e_t = exp(m0 - M_t) if c_t else 0
    D_t = sum_i P_ti + e_t u0,  N_t = sum_i P_ti v_i + e_t w0,  o_t = N_t / D_t (0 if D_t = 0)

The final state is ``(M, D, N)`` of the last token. Backward (``M`` cancels in ``o``)::

    a_ti = P_ti / D_t, ac_t = e_t / D_t, delta_t = do_t . o_t
    ds_i = sum_t a_ti (do_t . v_i - delta_t),   dv_i = sum_t a_ti do_t
    dw0 = sum_t ac_t do_t,  du0 = -sum_t ac_t delta_t,  dm0 = dw0 . w0 + u0 du0

plus, for gradients reaching the final state, the same with ``M`` held fixed and then ``M``'s
own move (``d(m, u, w)/dM = (1, -u, -w)``) routed to the argmax (ties share it evenly).

Only for finite inputs: the caller (``aaren_scan``) routes anything non-finite (NaN scores,
``+inf`` scores, non-finite values, a poisoned carried state) to the general path, which
implements the poison rule. ``-inf`` scores are fine (weight 0). No Python loop over time.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["FactoredOneChunkScan", "OneChunkScan", "one_chunk_masks", "one_chunk_scan"]


def one_chunk_masks(resets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``resets``, ``mask [B, T]`` bool -> ``(allowed [B, 1, T, T], sees_carry [B, 1, T])``:
    token t may attend to token i (``i <= t``, same segment, i not padding), and token t is in
    the first segment (it still sees the carried-in state)."""
    t_len = resets.shape[1]
    segment = torch.cumsum(resets.long(), dim=1)  # [B, T]
    idx = torch.arange(t_len, device=resets.device)
    allowed = (
        (idx[:, None] >= idx[None, :])
        & (segment[:, :, None] == segment[:, None, :])
        & mask[:, None, :]
    )
    return allowed[:, None], (segment == 0)[:, None]


class OneChunkScan(torch.autograd.Function):
    """``(s [B,H,T], v [B,H,T,Dh], m0, u0 [B,H], w0 [B,H,Dh], allowed, sees_carry)`` ->
    ``(out [B,H,T,Dh], m [B,H], u [B,H], w [B,H,Dh])`` (see the module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        s: Tensor,
        v: Tensor,
        m0: Tensor,
        u0: Tensor,
        w0: Tensor,
        allowed: Tensor,
        sees_carry: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        neg_inf = torch.tensor(float("-inf"), dtype=s.dtype, device=s.device)
        logits = torch.where(allowed, s[:, :, None, :], neg_inf)  # [B,H,T(t),T(i)]
        m_carry = torch.where(sees_carry, m0[..., None], neg_inf)  # [B,H,T]
        top = torch.maximum(logits.amax(dim=-1), m_carry)  # the memory's max, -inf if empty
        ref = top.clamp(min=torch.finfo(s.dtype).min)  # exp(-inf - ref) = 0, never NaN
        p = torch.exp(logits - ref[..., None])  # [B,H,T,T]
        e = torch.exp(m_carry - ref)  # [B,H,T], 0 where the carry is unseen or empty
        denom = torch.addcmul(p.sum(-1), e, u0[..., None])  # [B,H,T]
        numer = torch.addcmul(p @ v, e[..., None], w0[:, :, None, :])  # [B,H,T,Dh]
        safe = torch.where(denom > 0, denom, torch.ones_like(denom))
        out = numer / safe[..., None]  # numer is 0 wherever denom is
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(s, v, m0, u0, w0, allowed, p, e, safe, out, top, m_carry)
        return out, top[..., -1], denom[..., -1], numer[..., -1, :]

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        g_out: Tensor | None,
        g_m: Tensor | None,
        g_u: Tensor | None,
        g_w: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        s, v, m0, u0, w0, allowed, p, e, safe, out, top, m_carry = ctx.saved_tensors
        inv = safe.reciprocal()
        ds = torch.zeros_like(s)
        dv = torch.zeros_like(v)
        dm0, du0, dw0 = torch.zeros_like(m0), torch.zeros_like(u0), torch.zeros_like(w0)
        if g_out is not None:  # the outputs: an ordinary softmax-attention backward
            a = p * inv[..., None]  # [B,H,T,T]
            ac = e * inv  # [B,H,T]
            delta = (g_out * out).sum(-1)  # [B,H,T]
            ds = (a * (g_out @ v.transpose(-1, -2) - delta[..., None])).sum(-2)
            dv = a.transpose(-1, -2) @ g_out
            dw0 = (ac[:, :, None, :] @ g_out)[:, :, 0]
            du0 = -(ac * delta).sum(-1)
            dm0 = (dw0 * w0).sum(-1) + u0 * du0
        if g_m is not None or g_u is not None or g_w is not None:  # the final state
            gm = torch.zeros_like(m0) if g_m is None else g_m
            gu = torch.zeros_like(u0) if g_u is None else g_u
            gw = torch.zeros_like(w0) if g_w is None else g_w
            p_last, e_last = p[:, :, -1], e[..., -1]  # [B,H,T], [B,H]
            u_f = p_last.sum(-1) + e_last * u0
            w_f = (p_last[:, :, None] @ v)[:, :, 0] + e_last[..., None] * w0
            # with the max held fixed
            ds = ds + p_last * (gu[..., None] + (v @ gw[..., None])[..., 0])
            dv = dv + p_last[..., None] * gw[:, :, None, :]
            du0 = du0 + e_last * gu
            dw0 = dw0 + e_last[..., None] * gw
            dm0 = dm0 + e_last * (gu * u0 + (gw * w0).sum(-1))
            # the max's own move, d(m, u, w)/dM = (1, -u, -w), to whichever input is the max
            top_last = top[..., -1]
            g_top = gm - gu * u_f - (gw * w_f).sum(-1)
            hit_s = allowed[:, :, -1] & (s == top_last[..., None])  # [B,H,T]
            hit_c = m_carry[..., -1] == top_last  # [B,H]
            count = (hit_s.sum(-1) + hit_c).clamp(min=1)
            share = torch.where(torch.isfinite(top_last), g_top / count, torch.zeros_like(g_top))
            ds = ds + hit_s * share[..., None]
            dm0 = dm0 + hit_c * share
        return ds, dv, dm0, du0, dw0, None, None


class FactoredOneChunkScan(torch.autograd.Function):
    """The one-chunk scan with the exponentials taken once per token, not once per pair.

    ``P_ti = exp(s_i - M_t)`` factors as ``exp(s_i - R) exp(R - M_t)`` for one reference
    ``R`` per sequence and head (the largest score; :func:`one_chunk_scan` computes it), and
    the second factor cancels in ``o_t``. So ``E_i = exp(s_i - R)`` once per token, and the
    sums over the allowed pairs are one ``[T, T] @ [T, H (Dh + 1)]`` matmul of the 0/1 mask
    with ``[E v, E]``: exact, without a subtraction, as long as no row's own max underflows,
    which the caller checks (every running max within ``_spread_limit`` of ``R``). The final
    state is brought back to the last token's own max ``M``, as :class:`OneChunkScan` returns.

    ``(s [B,T,H], v [B,T,H,Dh], m0, u0 [B,H], w0 [B,H,Dh], ref [B,H] (R, finite), allowed
    [B,T,T] bool, sees_carry [B,T] bool, mask [B,T] bool)`` -> ``(out [B,T,H,Dh], m, u
    [B,H], w [B,H,Dh])``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        s: Tensor,
        v: Tensor,
        m0: Tensor,
        u0: Tensor,
        w0: Tensor,
        ref: Tensor,
        allowed: Tensor,
        sees_carry: Tensor,
        mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        batch, t_len, heads, head_dim = v.shape
        neg_inf = torch.tensor(float("-inf"), dtype=s.dtype, device=s.device)
        e = torch.where(mask[..., None], torch.exp(s - ref[:, None]), 0.0)  # [B,T,H]
        x = torch.cat([e[..., None] * v, e[..., None]], dim=-1)  # [B,T,H,Dh+1]
        a = allowed.to(s.dtype)
        y = (a @ x.view(batch, t_len, -1)).view(batch, t_len, heads, head_dim + 1)
        ec = torch.where(sees_carry[:, :1], torch.exp(m0 - ref), 0.0)  # [B,H]: 0 if unseen
        carry = torch.cat([w0, u0[..., None]], dim=-1) * ec[..., None]  # [B,H,Dh+1]
        c = sees_carry.to(s.dtype)
        y = torch.addcmul(y, c[:, :, None, None], carry[:, None])
        denom = y[..., head_dim]  # [B,T,H]
        safe = torch.where(denom > 0, denom, torch.ones_like(denom))
        out = y[..., :head_dim] / safe[..., None]  # the numerator is 0 wherever denom is
        # the final state, relative to the last token's own max (as the running max holds it)
        hit_s = allowed[:, -1, :, None] & mask[..., None]  # [B,T,H]
        top_s = torch.where(hit_s, s, neg_inf).amax(dim=1)  # [B,H]
        m_carry = torch.where(sees_carry[:, -1, None], m0, neg_inf)
        top = torch.maximum(top_s, m_carry)  # -inf if the memory is empty
        scale = torch.where(denom[:, -1] > 0, torch.exp(ref - top), 0.0)  # [B,H]
        u_f = denom[:, -1] * scale
        w_f = y[:, -1, :, :head_dim] * scale[..., None]
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(s, v, m0, u0, w0, a, c, e, ec, safe, out, top, m_carry, hit_s,
                              scale, u_f, w_f)  # fmt: skip
        return out, top, u_f, w_f

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        g_out: Tensor | None,
        g_m: Tensor | None,
        g_u: Tensor | None,
        g_w: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        s, v, m0, u0, w0, a, c, e, ec, safe, out, top, m_carry, hit_s, scale, u_f, w_f = (
            ctx.saved_tensors
        )
        batch, t_len, heads, head_dim = v.shape
        dy = torch.zeros(batch, t_len, heads, head_dim + 1, dtype=v.dtype, device=v.device)
        if g_out is not None:  # through out = N / D
            inv = safe.reciprocal()  # [B,T,H]
            dy[..., :head_dim] = g_out * inv[..., None]
            dy[..., head_dim] = -(g_out * out).sum(-1) * inv
        state_grads = g_m is not None or g_u is not None or g_w is not None
        if state_grads:  # the final state with its max held fixed: (u, w) = scale (D, N)
            gm = torch.zeros_like(m0) if g_m is None else g_m
            gu = torch.zeros_like(u0) if g_u is None else g_u
            gw = torch.zeros_like(w0) if g_w is None else g_w
            dy[:, -1, :, :head_dim] += gw * scale[..., None]
            dy[:, -1, :, head_dim] += gu * scale
        # through y = A @ [E v, E] + c ec [w0, u0]
        dx = (a.transpose(-1, -2) @ dy.view(batch, t_len, -1)).view_as(dy)
        dcarry = (c[:, :, None, None] * dy).sum(1) * ec[..., None]  # [B,H,Dh+1]
        dw0, du0 = dcarry[..., :head_dim], dcarry[..., head_dim]
        dm0 = (dw0 * w0).sum(-1) + du0 * u0  # ec = exp(m0 - R)
        dv = e[..., None] * dx[..., :head_dim]
        ds = e * ((dx[..., :head_dim] * v).sum(-1) + dx[..., head_dim])
        if state_grads:  # the max's own move, d(m, u, w)/dM = (1, -u, -w), to the argmax
            g_top = gm - gu * u_f - (gw * w_f).sum(-1)  # [B,H]
            hit_top = hit_s & (s == top[:, None])  # [B,T,H]
            hit_c = m_carry == top
            count = (hit_top.sum(1) + hit_c).clamp(min=1)
            share = torch.where(torch.isfinite(top), g_top / count, torch.zeros_like(g_top))
            ds = ds + hit_top * share[:, None]
            dm0 = dm0 + hit_c * share
        return ds, dv, dm0, du0, dw0, None, None, None, None


# A row whose own running max lies further than this below the reference R sends the input to
# the dense form: 3/4 of the float's exponent range (65 in float32, 531 in float64), so that the
# row's leading factor exp(M_t - R) stays a normal float, and a token that underflows lies at
# least the last quarter (22 in float32) below its row's max: a weight under e^-22 = 3e-10.
def _spread_limit(dtype: torch.dtype) -> float:
    return -0.75 * math.log(torch.finfo(dtype).tiny)


def one_chunk_scan(
    scores: Tensor, values: Tensor, m0: Tensor, u0: Tensor, w0: Tensor, resets: Tensor,
    mask: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:  # fmt: skip
    """Aaren over one chunk with a carried-in state, or None when an input is not finite.

    None (the caller's general path then applies the poison rule) when a score is NaN or
    ``+inf``, a value vector's sum is not finite, or the carried-in state is not clean (``m``
    NaN or ``+inf``, ``u + sum(w)`` not finite); padded tokens may hold anything. Otherwise
    :class:`FactoredOneChunkScan`, or :class:`OneChunkScan` when some row's scores spread too
    far for it. One sync (two on the way to the dense form or to None).

    Args:
        scores: ``[batch, time, heads]``; values: ``[batch, time, heads, head_dim]``;
        m0, u0: ``[batch, heads]``, w0: ``[batch, heads, head_dim]`` the carried-in memory;
        resets, mask: ``[batch, time]`` bool.
    Returns:
        ``(outputs [batch, time, heads, head_dim], m, u [batch, heads], w [batch, heads,
        head_dim])``: the outputs and the memory after the last token; or None.
    """
    batch = scores.shape[0]
    with torch.no_grad():
        s, m = scores.detach(), m0.detach()
        real = mask[..., None]  # [B,T,1]: padding is selected away, whatever it holds
        probe = torch.where(real, values.detach().sum(-1), 0.0).sum()
        probe = probe + (u0.detach() + w0.detach().sum(-1)).sum()
        # the reference R: the largest score of a real token, or the carry if anyone sees it
        seen = ~resets[:, :1]  # [B,1]: the first token (and so some token) sees the carry
        real_s = torch.where(real, s, float("-inf"))  # [B,T,H]
        carry_m = torch.where(seen, m, float("-inf"))[:, None]  # [B,1,H], at position -1
        top = torch.maximum(real_s.amax(dim=1), carry_m[:, 0])  # [B,H]; NaN, +inf propagate
        # every row's own running max M_t must lie within the limit below R (a token further
        # below its row's max than the float range weighs nothing at the float's precision).
        # M_t is a prefix max inside t's segment: one cummax over segment * 4L + (s - R),
        # clamped to [-2L, 0], so that a later segment's keys lie above every earlier one's.
        limit = _spread_limit(s.dtype)
        segment = torch.cumsum(resets.long(), dim=1).to(s.dtype)[..., None]  # [B,T,1]
        rel = (torch.cat([carry_m, real_s], dim=1) - top[:, None]).clamp(min=-2 * limit)
        key = rel + 4 * limit * torch.cat([segment.new_zeros(batch, 1, 1), segment], dim=1)
        row_max = key.cummax(dim=1).values[:, 1:] - 4 * limit * segment  # M_t - R, [B,T,H]
        narrow = (row_max >= -limit).all()  # False for NaN or +inf, and for an empty row
        factored = bool(torch.isfinite(probe) & narrow)
        if not factored:
            probe = probe + torch.where(real, s, 0.0).clamp(min=0).sum()
            probe = probe + torch.where(seen, m, 0.0).clamp(min=0).sum()
            if not bool(torch.isfinite(probe)):
                return None
    values = torch.where(real[..., None], values, 0.0)  # junk in padding never meets a 0
    allowed, sees_carry = one_chunk_masks(resets, mask)
    if factored:
        ref = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        return FactoredOneChunkScan.apply(
            scores, values, m0, u0, w0, ref, allowed[:, 0], sees_carry[:, 0], mask
        )
    out, m_f, u_f, w_f = OneChunkScan.apply(
        scores.transpose(1, 2), values.transpose(1, 2), m0, u0, w0, allowed, sees_carry
    )
    return out.transpose(1, 2), m_f, u_f, w_f
