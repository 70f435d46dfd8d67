"""The one-chunk fast path of ``aaren_scan`` (PPO's short sequences) against the reference.

Both of its forms (``factored``: one exponential per token and a mask matmul; ``dense``: the
``[T, T]`` softmax, taken when scores spread too far for the first) must equal the quadratic
reference and the general chunked path, forward and backward (its backward is written by
hand), with and without decay, with resets inside a sequence, a carried or empty state, a
reset at the first token and padding. float64: 1e-10.
"""

from __future__ import annotations

import pytest
import torch

import aaren_rl.nn.aaren_one_chunk as one_chunk
from aaren_rl.nn.aaren import AarenAttention
from aaren_rl.nn.aaren_attention import AarenState, aaren_reference, aaren_scan

TOL = 1e-10
B, T, H, DH = 3, 12, 2, 3


@pytest.fixture(params=["factored", "dense"])
def form(request, monkeypatch):
    """Force one form: the dense one takes every input whose scores spread at all."""
    if request.param == "dense":
        monkeypatch.setattr(one_chunk, "_spread_limit", lambda dtype: -1.0)
    return request.param


def _inputs(seed: int, carried: str):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, T, H, generator=g, dtype=torch.float64) * 3
    values = torch.randn(B, T, H, DH, generator=g, dtype=torch.float64)
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[0, 4] = resets[0, 9] = True  # two resets inside row 0
    resets[2, 0] = carried == "reset at 0"  # row 2 never sees the carried state
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 8:] = False  # trailing padding in row 1
    state = None
    if carried != "none":
        prefix = torch.randn(B, 5, H, generator=g, dtype=torch.float64) * 3
        state = aaren_scan(prefix, torch.randn(B, 5, H, DH, generator=g, dtype=torch.float64),
                           chunk_size=2)[1]  # fmt: skip
    return scores, values, state, resets, mask


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert (a - b).abs().max().item() <= TOL


@pytest.mark.parametrize("carried", ["none", "carried", "reset at 0"])
def test_one_chunk_forms_equal_reference_and_general_path(form, carried):
    scores, values, state, resets, mask = _inputs(1, carried)
    fast, fast_state = aaren_scan(scores, values, state, resets, mask, chunk_size=T)
    general, general_state = aaren_scan(scores, values, state, resets, mask, chunk_size=4)
    ref, _ = aaren_reference(scores, values, state, resets, mask)
    _close(fast, ref)
    _close(fast, general)
    for a, b in zip(fast_state, general_state, strict=True):  # the same (m, u, w), not a rescale
        assert torch.equal(torch.isinf(a), torch.isinf(b))
        _close(a[torch.isfinite(a)], b[torch.isfinite(b)])


@pytest.mark.parametrize("carried", ["none", "carried", "reset at 0"])
def test_one_chunk_gradcheck_float64(form, carried):
    scores, values, state, resets, mask = _inputs(2, carried)
    state = state or AarenState(torch.randn(B, H, dtype=torch.float64),
                                torch.rand(B, H, dtype=torch.float64) + 1,
                                torch.randn(B, H, DH, dtype=torch.float64))  # fmt: skip

    def f(s, v, m, u, w):
        out, st = aaren_scan(s, v, AarenState(m, u, w), resets, mask, chunk_size=T)
        # the raw final state and what it represents (u e^m, w e^m)
        return out, st.m, st.u, st.w, st.u * torch.exp(st.m), st.w * torch.exp(st.m)[..., None]

    inputs = [x.clone().requires_grad_() for x in (scores, values, *state)]
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("carried", ["none", "carried", "reset at 0"])
def test_one_chunk_gradients_equal_autograd_through_reference(form, carried):
    scores, values, state, resets, mask = _inputs(3, carried)
    state = state or AarenState(torch.full((B, H), -torch.inf, dtype=torch.float64),
                                torch.zeros(B, H, dtype=torch.float64),
                                torch.zeros(B, H, DH, dtype=torch.float64))  # fmt: skip
    g = torch.Generator().manual_seed(4)
    w_out = torch.randn(B, T, H, DH, generator=g, dtype=torch.float64)
    w_u, w_w = torch.randn(B, H, generator=g, dtype=torch.float64), torch.randn(B, H, DH)
    grads = []
    for fn in (
        lambda *a: aaren_scan(*a, chunk_size=T),
        lambda *a: aaren_scan(*a, chunk_size=4),  # the general path, autograd throughout
        aaren_reference,
    ):
        xs = [x.clone().requires_grad_() for x in (scores, values, *state)]
        out, st = fn(xs[0], xs[1], AarenState(*xs[2:]), resets, mask)
        scale = torch.exp(torch.where(st.u > 0, st.m, 0.0))
        loss = (out * w_out).sum() + (st.u * scale * w_u).sum()
        loss = loss + (st.w * scale[..., None] * w_w.double()).sum()
        loss.backward()
        grads.append([x.grad for x in xs])
    names = ("scores", "values", "m", "u", "w")
    for i, (name, fast, general, ref) in enumerate(zip(names, *grads, strict=True)):
        assert torch.isfinite(fast).all(), name
        assert (fast - general).abs().max().item() <= 1e-9, name  # scores of scale 3
        if i < 2 or carried != "none":  # the reference's log(u) has no gradient at u = 0
            assert (fast - ref).abs().max().item() <= 1e-9, name


def test_one_chunk_with_decay_equals_reference_forward_and_backward(form):
    """Decay shifts scores by position and the final ``m`` back; the fast path sits in between."""
    torch.manual_seed(5)
    attn = AarenAttention(2 * DH, H, chunk_size=T, decay=True).double()
    x = torch.randn(B, T, 2 * DH, dtype=torch.float64)
    _, _, state, resets, mask = _inputs(5, "carried")
    results = []
    for method in ("scan", "reference"):
        attn.zero_grad()
        y, st = attn(x, state, resets, mask, method=method)
        (y.square().sum() + (st.u * torch.exp(st.m)).sum()).backward()
        results.append((y.detach(), st, [p.grad.clone() for p in attn.parameters()]))
    (y_fast, st_fast, g_fast), (y_ref, st_ref, g_ref) = results
    _close(y_fast, y_ref)
    _close(st_fast.u * torch.exp(st_fast.m), st_ref.u * torch.exp(st_ref.m))
    for a, b in zip(g_fast, g_ref, strict=True):
        assert (a - b).abs().max().item() <= 1e-9


def test_minus_inf_scores_weigh_nothing_and_padding_may_hold_junk(form):
    scores, values, state, resets, mask = _inputs(6, "carried")
    scores[0, 2, 1] = -torch.inf  # a real token of weight 0
    junk_s = torch.where(mask[..., None], scores, torch.nan)
    junk_v = torch.where(mask[..., None, None], values, torch.inf)
    fast, fast_state = aaren_scan(junk_s, junk_v, state, resets, mask, chunk_size=T)
    ref, ref_state = aaren_reference(scores, values, state, resets, mask)
    _close(fast, ref)
    s, v = junk_s.clone().requires_grad_(), junk_v.clone().requires_grad_()
    out, _ = aaren_scan(s, v, state, resets, mask, chunk_size=T)
    out.sum().backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(v.grad).all()
    assert (s.grad[~mask] == 0).all() and (v.grad[~mask] == 0).all()
    assert s.grad[0, 2, 1] == 0


def test_wide_score_spread_takes_the_dense_form_in_float32():
    """Scores 200 apart would underflow exp(s - max) in float32 (e^-200): the dense form's
    row-wise max keeps the early tokens exact."""
    scores, values, state, resets, mask = _inputs(7, "none")
    scores = scores.float()
    scores[:, T // 2 :] += 200.0  # the late tokens dominate, the early rows only see early ones
    values = values.float()
    fast, _ = aaren_scan(scores, values, None, resets, mask, chunk_size=T)
    ref, _ = aaren_reference(scores.double(), values.double(), None, resets, mask)
    assert torch.isfinite(fast).all()
    assert ((fast.double() - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def _count_forms(monkeypatch) -> dict[str, int]:
    calls = {"factored": 0, "dense": 0}
    for name, cls in (
        ("factored", one_chunk.FactoredOneChunkScan),
        ("dense", one_chunk.OneChunkScan),
    ):
        apply = cls.apply

        def counted(*args, _apply=apply, _name=name):
            calls[_name] += 1
            return _apply(*args)

        monkeypatch.setattr(cls, "apply", counted)
    return calls


def test_route_follows_each_rows_running_max(monkeypatch):
    """Tokens far below the reference are fine when their row's max is not (the first token
    dominates every later row): the factored form, exact within float32. Rows whose own max
    is far below (early rows before a late jump) take the dense form."""
    calls = _count_forms(monkeypatch)
    scores, values, _, resets, mask = _inputs(8, "none")
    resets[:] = False
    low_after_high = scores.float().clone()
    low_after_high[:, 0] += 100.0  # token 0 leads every row; the others are 100 below it
    jump = scores.float().clone()
    jump[:, T // 2 :] += 200.0  # rows before the jump have their max 200 below R
    for case, expected in ((low_after_high, "factored"), (jump, "dense")):
        before = dict(calls)
        fast, _ = aaren_scan(case, values.float(), None, resets, mask, chunk_size=T)
        ref, _ = aaren_reference(case.double(), values, None, resets, mask)
        assert calls[expected] == before[expected] + 1, expected
        assert ((fast.double() - ref).abs().max() / ref.abs().max()).item() <= 1e-5
