"""Aaren attention in three forms that must agree: reference, scan and step.

Aaren is softmax attention whose query is learned (fixed per head), so token i has a scalar
score ``s_i`` per head and the output at t is the softmax-weighted mean of the values so far::

    o_t = sum_{i<=t} exp(s_i) v_i / sum_{i<=t} exp(s_i)

Everything here works on scores and values already projected and split into heads:

- ``scores``: ``[batch, time, heads]``
- ``values``: ``[batch, time, heads, head_dim]``
- ``resets``: ``[batch, time]`` bool, True restarts the memory at that token (a new episode);
  the token itself is the first one of the new segment.
- ``mask``: ``[batch, time]`` bool, False marks padding: a padded token contributes nothing and
  its own output is whatever the memory holds (zeros if it is empty). Padding is selected away
  (``torch.where``), never multiplied by 0, so even a NaN there changes nothing.

Non-finite inputs follow one rule in all three forms. A token whose score is ``-inf`` has weight
0. A real token whose score is NaN or ``+inf``, or whose value holds a NaN or inf (whatever its
score), *poisons* the memory: the output of that head is NaN at that token and at every later
token of the same segment, until a reset empties the memory. Tokens before it and other
segments are untouched. A poisoned memory is marked by ``u = NaN`` (sticky under the combine).
Nothing non-finite is ever turned into 0: an empty memory (``u == 0``) reads out as zeros, a
poisoned one as NaN. (A value vector counts as non-finite when its sum is: finite entries near
float's limit whose sum overflows poison too.)

The memory is :class:`AarenState` ``(m, u, w)``: a running max ``m [B,H]``, a denominator
``u [B,H]`` and a numerator ``w [B,H,Dh]``, both relative to ``m``. Its size does not depend on
the sequence length. Tokens combine with the associative operator of docs/design.md section 1; the
identity is ``(-inf, 0, 0)``.

The three forms:

- :func:`aaren_reference`: materialises the ``[T, T]`` causal softmax: the oracle.
- :func:`aaren_scan`: the training path. Chunks of ``C`` tokens are solved exactly with a
  ``[C, C]`` masked softmax (matmul-shaped); chunk summaries are combined by a segmented
  Hillis-Steele scan (``log2(T / C)`` rounds, no loop over time); each token then merges the
  carry of earlier chunks. ``O(T C)`` work and memory, differentiable. One finite chunk goes
  to :mod:`aaren_rl.nn.aaren_one_chunk` (a hand-written backward).
- :func:`aaren_step`: the inference path, one token per call.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from aaren_rl.nn.aaren_one_chunk import one_chunk_scan

# Tokens per chunk of the training scan. Measured by `aaren-rl bench agent` (fwd+bwd, width 128,
# 3 layers, batch 8, one CPU thread; docs/performance.md): 32 was fastest at T = 300 and 3,000
# (3.44 s against 3.65 s for 64 and 4.57 s for 128 at T = 3,000), 64 at T = 60 within noise.
DEFAULT_CHUNK = 32
# What a layer reads for an empty memory's log mass (-inf: padding, or nothing seen yet);
# a real token's mass is finite (it holds at least the token itself).
LOG_MASS_FLOOR = -30.0

__all__ = [
    "DEFAULT_CHUNK",
    "LOG_MASS_FLOOR",
    "AarenState",
    "aaren_reference",
    "aaren_scan",
    "aaren_step",
    "combine",
    "initial_aaren_state",
    "log_mass",
    "read_out",
    "reset_aaren_state",
]


class AarenState(NamedTuple):
    """The whole memory of one Aaren layer.

    - ``m``: ``[batch, heads]`` running max of the scores (``-inf`` when empty)
    - ``u``: ``[batch, heads]`` sum of ``exp(s_i - m)``
    - ``w``: ``[batch, heads, head_dim]`` sum of ``exp(s_i - m) v_i``
    """

    m: Tensor
    u: Tensor
    w: Tensor


def initial_aaren_state(
    batch_size: int,
    heads: int,
    head_dim: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> AarenState:
    """The empty memory (the identity of the combine): ``m=-inf, u=0, w=0``."""
    dtype = dtype or torch.get_default_dtype()
    m = torch.full((batch_size, heads), float("-inf"), device=device, dtype=dtype)
    u = torch.zeros(batch_size, heads, device=device, dtype=dtype)
    w = torch.zeros(batch_size, heads, head_dim, device=device, dtype=dtype)
    return AarenState(m, u, w)


def _finite_or_zero(m: Tensor) -> Tensor:
    """``m`` with ``-inf`` replaced by 0: a safe reference for ``exp(x - m)`` (gives 0 for x=-inf)."""
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _sanitize(scores: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split tokens into safe arithmetic and a poison flag (the module docstring's rule).

    ``scores [..., H]``, ``values [..., H, Dh]`` -> ``(poison [..., H] bool, safe_scores,
    safe_values)``: a poisoning token's score becomes ``-inf`` (weight 0: its effect is carried
    by the flag alone) and every non-finite value entry becomes 0, so no ``0 * inf`` can reach
    another token through a sum or a matmul. A value vector is non-finite when its sum is (one
    reduction instead of an elementwise test); the elementwise clean-up runs only when some
    value needs it (always under ``torch.compile``, which cannot branch on data).
    """
    bad_score = torch.isnan(scores) | (scores == float("inf"))
    bad_value = ~torch.isfinite(values.detach().sum(-1))
    if torch.compiler.is_compiling() or bool(bad_value.any()):
        values = torch.where(torch.isfinite(values), values, torch.zeros_like(values))
    safe_scores = torch.where(bad_score, torch.full_like(scores, float("-inf")), scores)
    return bad_score | bad_value, safe_scores, values


def _canonical(state: AarenState) -> AarenState:
    """``state`` with any non-finite memory (``m`` NaN or ``+inf``, ``u`` or ``w`` not finite)
    marked poisoned (``u = NaN``) and its arithmetic made safe (``m = 0``, ``w = 0`` there)."""
    bad = (
        torch.isnan(state.m)
        | (state.m == float("inf"))
        | ~torch.isfinite(state.u + state.w.detach().sum(-1))
    )
    return AarenState(
        torch.where(bad, torch.zeros_like(state.m), state.m),
        torch.where(bad, torch.full_like(state.u, float("nan")), state.u),
        torch.where(bad[..., None], torch.zeros_like(state.w), state.w),
    )


def _poison_state(state: AarenState, poison: Tensor) -> AarenState:
    """Mark the memories where ``poison`` (shaped like ``u``) is True as poisoned (``u = NaN``)."""
    return AarenState(state.m, torch.where(poison, float("nan"), state.u), state.w)


def combine(a: AarenState, b: AarenState) -> AarenState:
    """The associative combine ``a + b`` (``a`` earlier, ``b`` later), elementwise over the batch.

    ``m = max(ma, mb)``, ``u = ua exp(ma - m) + ub exp(mb - m)``, same for ``w``. Any leading
    shape works as long as ``u`` and ``m`` match and ``w`` has one more trailing dim.
    """
    m = torch.maximum(a.m, b.m)
    ref = _finite_or_zero(m)
    ea = torch.exp(a.m - ref)
    eb = torch.exp(b.m - ref)
    return AarenState(m, a.u * ea + b.u * eb, a.w * ea.unsqueeze(-1) + b.w * eb.unsqueeze(-1))


def _where_state(cond: Tensor, a: AarenState, b: AarenState) -> AarenState:
    """``a`` where ``cond`` (shaped like ``m``, broadcastable) is True, else ``b``."""
    return AarenState(
        torch.where(cond, a.m, b.m),
        torch.where(cond, a.u, b.u),
        torch.where(cond[..., None], a.w, b.w),
    )


def log_mass(state: AarenState) -> Tensor:
    """The log of the memory's softmax normaliser, ``m + log u = log sum_i exp(s_i)``
    (``[..., heads]``, shaped like ``m``): how much the head has attended in total. ``-inf``
    where the memory is empty, NaN where it is poisoned. Where the scores single out some
    tokens (score ``c`` on them, far lower elsewhere) it is ``c + log(count)``: the count that
    the normalised output ``w / u`` divides away."""
    return _log_mass(state.m, state.u)


def _log_mass(m: Tensor, u: Tensor) -> Tensor:
    # a log of 0 never enters the graph: its infinite slope times a zero gradient would be NaN
    filled = u > 0
    log_u = torch.log(torch.where(filled, u, torch.ones_like(u)))
    empty = torch.where(torch.isnan(u), u, torch.full_like(u, float("-inf")))
    return torch.where(filled, m + log_u, empty)


def read_out(state: AarenState) -> Tensor:
    """The attention output ``w / u`` (``[..., head_dim]``): zeros where the memory is empty
    (``u == 0``), NaN where it is poisoned (``u`` NaN: a NaN is never read out as 0)."""
    u = state.u.unsqueeze(-1)
    empty = u == 0
    return torch.where(
        empty, torch.zeros_like(state.w), state.w / torch.where(empty, torch.ones_like(u), u)
    )


def _check_inputs(
    scores: Tensor, values: Tensor, resets: Tensor | None, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    if scores.dim() != 3 or values.dim() != 4 or scores.shape != values.shape[:3]:
        raise ValueError(
            "expected scores [batch, time, heads] and values [batch, time, heads, head_dim], "
            f"got scores {tuple(scores.shape)} and values {tuple(values.shape)}"
        )
    bt = scores.shape[:2]
    out = []
    for name, flag in (("resets", resets), ("mask", mask)):
        if flag is None:
            flag = torch.zeros(bt, dtype=torch.bool, device=scores.device)
            if name == "mask":
                flag = ~flag
        elif flag.shape != bt:
            raise ValueError(f"{name} must be [batch, time] = {tuple(bt)}, got {tuple(flag.shape)}")
        out.append(flag.to(torch.bool))
    return out[0], out[1]


def _state_or_empty(
    state: AarenState | None, scores: Tensor, values: Tensor, canonical: bool = True
) -> AarenState:
    batch, _, heads, head_dim = values.shape
    if state is None:
        return initial_aaren_state(batch, heads, head_dim, scores.device, scores.dtype)
    if state.w.shape != (batch, heads, head_dim):
        raise ValueError(
            f"carried-in state has w {tuple(state.w.shape)}, expected {(batch, heads, head_dim)}"
        )
    return _canonical(state) if canonical else state


def aaren_reference(
    scores: Tensor,
    values: Tensor,
    state: AarenState | None = None,
    resets: Tensor | None = None,
    mask: Tensor | None = None,
    return_log_mass: bool = False,
) -> tuple[Tensor, AarenState] | tuple[Tensor, AarenState, Tensor]:
    """The oracle: the ``[T, T]`` causal softmax with the learned query, materialised.

    Token t attends to every valid token i <= t of its own segment (no reset in (i, t]); the
    carried-in ``state`` acts as one extra token before position 0 (weight ``u exp(m)``, value
    ``w / u``) for tokens before the first reset.

    Args:
        scores: ``[batch, time, heads]``; values: ``[batch, time, heads, head_dim]``;
        state: memory carried in; resets, mask: ``[batch, time]`` bool;
        return_log_mass: also return each token's :func:`log_mass` ``[batch, time, heads]``,
            the log of its softmax normaliser (the log-sum-exp of the logits it sees).
    Returns:
        ``(outputs [batch, time, heads, head_dim], final state)``, and the log masses.
    """
    resets, mask = _check_inputs(scores, values, resets, mask)
    state = _state_or_empty(state, scores, values)
    poison, scores, values = _sanitize(scores, values)
    poison = poison & mask[..., None]  # [B,T,H]: padding is selected away, whatever it holds
    _, t_len, _, _ = values.shape
    segment = torch.cumsum(resets.long(), dim=1)  # [B,T]
    idx = torch.arange(t_len, device=scores.device)
    allowed = (
        (idx[None, :, None] >= idx[None, None, :])  # causal: i <= t
        & (segment[:, :, None] == segment[:, None, :])  # same segment
        & mask[:, None, :]  # token i is real
    )  # [B, T(t), T(i)]
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    logits = torch.where(
        allowed[:, None], scores.transpose(1, 2)[:, :, None, :], neg_inf
    )  # [B,H,T,T]
    # the carried-in state as a virtual token at position -1, visible to segment 0 only
    carry_poison = torch.isnan(state.u)  # [B,H]
    carry = AarenState(state.m, torch.where(carry_poison, 0.0, state.u), state.w)
    carry_logit = carry.m + torch.log(carry.u)  # [B,H]; -inf when empty
    carry_visible = (segment == 0)[:, None, :, None]  # [B,1,T,1]
    carry_logits = torch.where(carry_visible, carry_logit[:, :, None, None], neg_inf)  # [B,H,T,1]
    all_logits = torch.cat([carry_logits, logits], dim=-1)  # [B,H,T,1+T]
    row_max = _finite_or_zero(all_logits.amax(dim=-1, keepdim=True))
    weights = torch.exp(all_logits - row_max)  # [B,H,T,1+T]
    carry_value = read_out(carry)  # [B,H,Dh]
    all_values = torch.cat([carry_value[:, :, None], values.transpose(1, 2)], dim=2)  # [B,H,1+T,Dh]
    numer = weights @ all_values  # [B,H,T,Dh]
    denom = weights.sum(-1, keepdim=True)
    out = torch.where(denom > 0, numer / torch.where(denom > 0, denom, 1.0), 0.0)
    # row t is poisoned by any poisoning token it may see, and by a poisoned carry
    row_poison = (allowed[:, None] & poison.transpose(1, 2)[:, :, None, :]).any(-1) | (
        carry_visible[..., 0] & carry_poison[:, :, None]
    )  # [B,H,T]
    out = torch.where(row_poison[..., None], torch.full_like(out, float("nan")), out)
    out = out.transpose(1, 2)  # [B,T,H,Dh]
    mass = torch.where(row_poison, float("nan"), _log_mass(row_max[..., 0], denom[..., 0]))
    mass = mass.transpose(1, 2)  # [B,T,H]
    # final state: the memory that a next token would see = row T-1 of the same computation
    if t_len == 0:
        return (out, state, mass) if return_log_mass else (out, state)
    last_max = row_max[:, :, -1, 0]  # [B,H]
    u_last = denom[:, :, -1, 0]
    m_last = torch.where(u_last > 0, last_max, torch.full_like(last_max, float("-inf")))
    final = _poison_state(AarenState(m_last, u_last, numer[:, :, -1]), row_poison[:, :, -1])
    return (out, final, mass) if return_log_mass else (out, final)


def _segmented_inclusive_scan(flags: Tensor, st: AarenState) -> tuple[Tensor, AarenState]:
    """Hillis-Steele inclusive scan along dim 1 of ``(flag, state)`` pairs.

    ``(fa, A) + (fb, B) = (fa | fb, B if fb else A + B)``: a set flag means "the memory was reset
    inside this element", so nothing earlier reaches past it. ``flags [B, N]``; states with
    leading dims ``[B, N, H]``.
    """
    n = flags.shape[1]
    offset = 1
    while offset < n:
        prev_flags = torch.nn.functional.pad(flags, (offset, 0), value=False)[:, :n]
        prev = AarenState(
            torch.nn.functional.pad(st.m, (0, 0, offset, 0), value=float("-inf"))[:, :n],
            torch.nn.functional.pad(st.u, (0, 0, offset, 0))[:, :n],
            torch.nn.functional.pad(st.w, (0, 0, 0, 0, offset, 0))[:, :n],
        )
        st = _where_state(flags[:, :, None], st, combine(prev, st))
        flags = flags | prev_flags
        offset *= 2
    return flags, st


def _chunk_carries(state: AarenState, local: AarenState, r: Tensor) -> AarenState:
    """The memory entering every chunk: ``state`` (carried in, ``[B,H]``), ``local`` (each
    token's memory inside its chunk, ``u [B,H,N,C]``), ``r [B,N,C]`` resets -> ``m, u
    [B,H,N,1]``, ``w [B,H,N,1,Dh]``. A segmented scan over the chunk summaries (the last
    token's local memory, and whether the chunk reset), the carried-in state as chunk -1."""
    batch, n_chunks = r.shape[:2]
    chunk_flags = torch.cat([r.new_zeros(batch, 1), r.any(dim=2)], dim=1)  # [B,N+1]
    summary = AarenState(
        torch.cat([state.m[:, None], local.m[..., -1].permute(0, 2, 1)], dim=1),  # [B,N+1,H]
        torch.cat([state.u[:, None], local.u[..., -1].permute(0, 2, 1)], dim=1),
        torch.cat([state.w[:, None], local.w[..., -1, :].permute(0, 2, 1, 3)], dim=1),
    )
    _, prefix = _segmented_inclusive_scan(chunk_flags, summary)
    # the memory entering chunk j is the inclusive prefix up to chunk j-1 (index j here)
    return AarenState(
        prefix.m[:, :n_chunks].permute(0, 2, 1)[..., None],  # [B,H,N,1]
        prefix.u[:, :n_chunks].permute(0, 2, 1)[..., None],
        prefix.w[:, :n_chunks].permute(0, 2, 1, 3)[..., None, :],  # [B,H,N,1,Dh]
    )


def aaren_scan(
    scores: Tensor,
    values: Tensor,
    state: AarenState | None = None,
    resets: Tensor | None = None,
    mask: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    return_log_mass: bool = False,
) -> tuple[Tensor, AarenState] | tuple[Tensor, AarenState, Tensor]:
    """The parallel form for training: a chunked, segmented prefix scan.

    Same contract as :func:`aaren_reference`, without the ``[T, T]`` matrix: memory is
    ``O(T * chunk_size)``. No Python loop over time steps; ``log2(T / chunk_size)`` rounds
    combine the chunk summaries. A sequence of one chunk whose real tokens and carried state
    are finite (PPO's short sequences) takes :func:`~aaren_rl.nn.aaren_one_chunk.one_chunk_scan`
    instead: the same result in far fewer ops, with a hand-written backward
    (``tests/test_aaren_one_chunk.py`` holds the two together).

    Args:
        scores: ``[batch, time, heads]``; values: ``[batch, time, heads, head_dim]``;
        state: memory carried in; resets, mask: ``[batch, time]`` bool;
        chunk_size: tokens solved exactly per chunk (``C``);
        return_log_mass: also return each token's :func:`log_mass` ``[batch, time, heads]``
            (the general path computes it; the one-chunk path is skipped).
    Returns:
        ``(outputs [batch, time, heads, head_dim], final state)``, and the log masses.
    """
    resets, mask = _check_inputs(scores, values, resets, mask)
    batch, t_len, heads, head_dim = values.shape
    if 0 < t_len <= chunk_size and not return_log_mass and not torch.compiler.is_compiling():
        # one chunk (PPO's short sequences): a hand-written backward, for finite inputs
        fast = one_chunk_scan(
            scores, values, *_state_or_empty(state, scores, values, False), resets, mask
        )
        if fast is not None:
            return fast[0], AarenState(*fast[1:])
    state = _state_or_empty(state, scores, values)
    if t_len == 0:
        empty = values.new_zeros(values.shape)
        return (empty, state, scores.new_zeros(scores.shape)) if return_log_mass else (empty, state)
    poison, scores, values = _sanitize(scores, values)
    poison = poison & mask[..., None]  # [B,T,H]: padding is selected away, whatever it holds
    c = max(1, min(chunk_size, t_len))
    n_chunks = math.ceil(t_len / c)
    pad = n_chunks * c - t_len
    if pad:  # padding tokens: masked out, never reset
        scores = torch.nn.functional.pad(scores, (0, 0, 0, pad))
        values = torch.nn.functional.pad(values, (0, 0, 0, 0, 0, pad))
        resets = torch.nn.functional.pad(resets, (0, pad), value=False)
        mask = torch.nn.functional.pad(mask, (0, pad), value=False)
        poison = torch.nn.functional.pad(poison, (0, 0, 0, pad), value=False)

    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    # [B, N, C, ...] chunked views; heads moved next to batch for the matmuls
    s = scores.view(batch, n_chunks, c, heads).permute(0, 3, 1, 2)  # [B,H,N,C]
    v = values.view(batch, n_chunks, c, heads, head_dim).permute(0, 3, 1, 2, 4)  # [B,H,N,C,Dh]
    r = resets.view(batch, n_chunks, c)
    k = mask.view(batch, n_chunks, c)
    bad = poison.view(batch, n_chunks, c, heads).permute(0, 3, 1, 2).long()  # [B,H,N,C]

    # 1. inside each chunk: exact causal masked softmax over [C, C]
    seg = torch.cumsum(r.long(), dim=2)  # segment id inside the chunk, [B,N,C]
    idx = torch.arange(c, device=scores.device)
    allowed = (
        (idx[:, None] >= idx[None, :]) & (seg[..., :, None] == seg[..., None, :]) & k[..., None, :]
    )  # [B,N,C(t),C(i)]
    logits = torch.where(allowed[:, None], s[..., None, :], neg_inf)  # [B,H,N,C,C]
    local_m = logits.amax(dim=-1)  # [B,H,N,C], -inf where nothing is visible
    p = torch.exp(logits - _finite_or_zero(local_m)[..., None])
    # a poisoning token reaches itself and the later tokens of its segment in the chunk: count
    # them since the last reset at or before each token (O(C), no [C, C] work)
    seen = torch.cumsum(bad, dim=-1)
    at_reset = torch.where(r[:, None], seen - bad, torch.zeros_like(seen)).cummax(dim=-1).values
    local = _poison_state(
        AarenState(local_m, p.sum(-1), p @ v), seen > at_reset
    )  # u [B,H,N,C], w [B,H,N,C,Dh]

    # 2. chunk summaries (the last token's local memory, and whether the chunk reset),
    #    with the carried-in state prepended as chunk -1; segmented scan across chunks
    if n_chunks == 1:  # one chunk (short sequences, as in PPO): the carry is the state itself
        carry = AarenState(
            state.m[:, :, None, None], state.u[:, :, None, None], state.w[:, :, None, None, :]
        )
    else:
        carry = _chunk_carries(state, local, r)

    # 3. each token merges the carry unless a reset inside its chunk came at or before it
    merged = combine(
        AarenState(
            carry.m.expand_as(local.m), carry.u.expand_as(local.u), carry.w.expand_as(local.w)
        ),
        local,
    )
    full = _where_state((seg > 0)[:, None], local, merged)  # cut: [B,1,N,C]
    out = read_out(full)  # [B,H,N,C,Dh]
    out = out.permute(0, 2, 3, 1, 4).reshape(batch, n_chunks * c, heads, head_dim)[:, :t_len]
    final = AarenState(full.m[:, :, -1, -1], full.u[:, :, -1, -1], full.w[:, :, -1, -1])
    if not return_log_mass:
        return out, final
    mass = log_mass(full).permute(0, 2, 3, 1).reshape(batch, n_chunks * c, heads)[:, :t_len]
    return out, final, mass


def aaren_step(
    score: Tensor, value: Tensor, state: AarenState, reset: Tensor | None = None
) -> tuple[Tensor, AarenState]:
    """The recurrent form: one token for every batch row.

    Args:
        score: ``[batch, heads]``; value: ``[batch, heads, head_dim]``;
        state: the memory before this token; reset: ``[batch]`` bool, empty the memory first.
    Returns:
        ``(output [batch, heads, head_dim], new state)``; ``log_mass(new state)`` is the
        token's log mass.
    """
    if reset is not None:
        state = reset_aaren_state(state, reset)
    # The plain combine already carries any NaN or inf into u or w (NaN or inf stays non-finite
    # under it); one reduction finds them and marks the memory poisoned, as the scan does.
    new = combine(state, AarenState(score, torch.ones_like(score), value))
    u = torch.where(torch.isfinite(new.u + new.w.sum(-1)), new.u, float("nan"))
    new = AarenState(new.m, u, new.w)
    return read_out(new), new


def reset_aaren_state(state: AarenState, done: Tensor) -> AarenState:
    """Empty the memory of the rows where ``done [batch]`` is True; other rows are untouched."""
    d = done.to(torch.bool).view(-1, *([1] * (state.m.dim() - 1)))
    empty = AarenState(
        torch.full_like(state.m, float("-inf")),
        torch.zeros_like(state.u),
        torch.zeros_like(state.w),
    )
    return _where_state(d, empty, state)
