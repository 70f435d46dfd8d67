"""Non-finite inputs in the three forms of Aaren: one rule, no silent zeros, no leaks.

The rule (aaren_rl/nn/aaren_attention.py): a token with score -inf weighs 0; a real token whose
score is NaN or +inf, or whose value holds a NaN or inf (whatever its score), makes that head's
output NaN from that token to the end of its segment; padding is selected away whatever it
holds. Each test checks the forms against an oracle built here: a plain Python loop for where
the NaNs must be, and the quadratic reference on finite inputs for every other output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aaren_rl.nn.aaren_attention import (
    AarenState,
    aaren_reference,
    aaren_scan,
    aaren_step,
    initial_aaren_state,
    read_out,
    reset_aaren_state,
)

TOL = 1e-10
NAN, INF = float("nan"), float("inf")


def _inputs(batch=2, time=40, heads=2, head_dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, time, heads, generator=g, dtype=torch.float64) * 3
    values = torch.randn(batch, time, heads, head_dim, generator=g, dtype=torch.float64)
    return scores, values


def steps(scores, values, state=None, resets=None, mask=None):
    """The recurrent form token by token; a padded token is skipped by selecting the old memory."""
    batch, time, heads, head_dim = values.shape
    if state is None:
        state = initial_aaren_state(batch, heads, head_dim, dtype=scores.dtype)
    outs = []
    for t in range(time):
        if resets is not None:
            state = reset_aaren_state(state, resets[:, t])
        out, new = aaren_step(scores[:, t], values[:, t], state)
        if mask is not None:
            keep = mask[:, t, None]
            new = AarenState(
                torch.where(keep, new.m, state.m),
                torch.where(keep, new.u, state.u),
                torch.where(keep[..., None], new.w, state.w),
            )
            out = torch.where(keep[..., None], out, read_out(state))
        state = new
        outs.append(out)
    return torch.stack(outs, 1), state


def expected_poison(scores, values, resets=None, mask=None, carried=None):
    """``[B, T, H]`` bool: where the rule puts NaN, by a plain loop over tokens."""
    s, v = scores.numpy(), values.numpy()
    batch, time, heads = s.shape
    out = np.zeros((batch, time, heads), dtype=bool)
    for b in range(batch):
        for h in range(heads):
            poisoned = bool(carried[b, h]) if carried is not None else False
            for t in range(time):
                if resets is not None and resets[b, t]:
                    poisoned = False
                real = mask is None or bool(mask[b, t])
                score = s[b, t, h]
                if real and (
                    np.isnan(score) or score == np.inf or not np.isfinite(v[b, t, h]).all()
                ):
                    poisoned = True
                out[b, t, h] = poisoned
    return torch.from_numpy(out)


def finite_oracle(scores, values, resets=None, mask=None, state=None):
    """The quadratic reference on finite inputs, head by head: a -inf-scored token becomes
    padding of its head, other non-finite entries any finite number (no un-poisoned output can
    see them)."""
    mask = torch.ones(scores.shape[:2], dtype=torch.bool) if mask is None else mask
    clean_s = torch.where(torch.isfinite(scores), scores, torch.zeros_like(scores))
    clean_v = torch.where(torch.isfinite(values), values, torch.zeros_like(values))
    outs = []
    for h in range(scores.shape[-1]):
        head_state = None if state is None else AarenState(*(x[:, h : h + 1] for x in state))
        head_mask = mask & (scores[..., h] != -INF)
        out, _ = aaren_reference(
            clean_s[..., h : h + 1], clean_v[:, :, h : h + 1], head_state, resets, head_mask
        )
        outs.append(out)
    return torch.cat(outs, dim=2)


def check_against_rule(out, scores, values, resets=None, mask=None, carried=None, clean_state=None):
    poison = expected_poison(scores, values, resets, mask, carried)
    nan = torch.isnan(out)
    assert torch.equal(nan, poison[..., None].expand_as(nan)), "NaN where the rule puts none"
    assert torch.isfinite(out[~nan]).all()
    ref = finite_oracle(scores, values, resets, mask, clean_state)
    err = (out[~nan] - ref[~nan]).abs().max().item() if (~nan).any() else 0.0
    assert err <= TOL, f"finite outputs differ from the reference by {err:.3e}"


FORMS = {
    "reference": lambda s, v, **kw: aaren_reference(s, v, **kw),
    "scan-c1": lambda s, v, **kw: aaren_scan(s, v, chunk_size=1, **kw),
    "scan-c4": lambda s, v, **kw: aaren_scan(s, v, chunk_size=4, **kw),
    "scan-c16": lambda s, v, **kw: aaren_scan(s, v, chunk_size=16, **kw),
    "scan-c64": lambda s, v, **kw: aaren_scan(s, v, chunk_size=64, **kw),
    "step": lambda s, v, **kw: steps(s, v, **kw),
}


@pytest.mark.parametrize("form", FORMS)
def test_nan_score_gives_nan_from_there_not_zero(form):
    scores, values = _inputs(heads=1)  # one head: its score drives the whole output
    clean, _ = aaren_reference(scores, values)
    scores[0, 21, 0] = NAN
    out, state = FORMS[form](scores, values)
    assert torch.isnan(out[0, 21:]).all(), "a NaN score must not read out as 0"
    assert (out[0, :21] - clean[0, :21]).abs().max() <= TOL  # earlier tokens untouched
    assert (out[1] - clean[1]).abs().max() <= TOL  # the other row untouched
    assert torch.isnan(state.u[0]).all() and torch.isfinite(state.u[1]).all()
    check_against_rule(out, scores, values)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bad", [INF, -INF, NAN])
def test_non_finite_value_never_reaches_earlier_tokens(form, bad):
    scores, values = _inputs()
    clean, _ = aaren_reference(scores, values)
    values[0, 21, 1, 2] = bad  # mid-chunk for chunks of 4 and 16
    out, _ = FORMS[form](scores, values)
    assert (out[0, :21] - clean[0, :21]).abs().max() <= TOL, "leaked backwards in its chunk"
    assert torch.isnan(out[0, 21:, 1]).all()
    assert (out[0, :, 0] - clean[0, :, 0]).abs().max() <= TOL  # the other head untouched
    check_against_rule(out, scores, values)


@pytest.mark.parametrize("form", FORMS)
def test_plus_inf_score_poisons_and_minus_inf_score_weighs_nothing(form):
    scores, values = _inputs(batch=3, heads=1)
    scores[0, 5, 0] = -INF  # weight 0: as if padded
    scores[1, 30, 0] = INF
    scores[2, 12, 0] = -INF  # weight 0, but a NaN value still poisons (it is a real token)
    values[2, 12, 0, 0] = NAN
    out, _ = FORMS[form](scores, values)
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[0, 5] = False
    skipped, _ = aaren_reference(torch.nan_to_num(scores), values, mask=mask)
    assert (out[0] - skipped[0]).abs().max() <= TOL
    assert torch.isnan(out[1, 30:]).all() and torch.isfinite(out[1, :30]).all()
    assert torch.isnan(out[2, 12:]).all() and torch.isfinite(out[2, :12]).all()
    check_against_rule(out, scores, values)


@pytest.mark.parametrize("form", FORMS)
def test_padding_is_selected_away_whatever_it_holds(form):
    scores, values = _inputs(seed=1)
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(2, 40, generator=g) < 0.7
    mask[:, -3:] = False
    clean, clean_state = FORMS[form](scores, values, mask=mask)
    pad_s = torch.tensor([NAN, INF], dtype=torch.float64)  # per head
    pad_v = torch.tensor([[INF, NAN, -INF], [NAN, NAN, NAN]], dtype=torch.float64)
    junk_s = torch.where(mask[..., None], scores, pad_s)
    junk_v = torch.where(mask[..., None, None], values, pad_v)
    out, state = FORMS[form](junk_s, junk_v, mask=mask)
    assert torch.isfinite(out).all(), "a NaN in a padded token poisoned real ones"
    assert torch.equal(out, clean)
    for a, b in zip(state, clean_state, strict=True):
        assert torch.equal(a, b)


def test_padding_never_reaches_the_gradients():
    scores, values = _inputs(seed=3)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[:, 30:] = False
    grads = []
    for junk in (False, True):
        s, v = scores.clone(), values.clone()
        if junk:
            s[~mask], v[~mask] = NAN, INF
        s.requires_grad_()
        v.requires_grad_()
        out, _ = aaren_scan(s, v, mask=mask, chunk_size=16)
        out[mask].sum().backward()
        grads.append((s.grad[mask], v.grad[mask]))
    assert torch.isfinite(grads[1][0]).all() and torch.isfinite(grads[1][1]).all()
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("form", FORMS)
def test_a_reset_clears_the_poison(form):
    scores, values = _inputs()
    scores[:, 10, :] = NAN
    resets = torch.zeros(2, 40, dtype=torch.bool)
    resets[:, 25] = True
    out, state = FORMS[form](scores, values, resets=resets)
    assert torch.isnan(out[:, 10:25]).all()
    alone, alone_state = aaren_reference(scores[:, 25:], values[:, 25:])
    assert (out[:, 25:] - alone).abs().max() <= TOL
    assert torch.isfinite(state.u).all()


@pytest.mark.parametrize("form", FORMS)
def test_poisoned_carried_state_stays_poisoned_until_reset(form):
    scores, values = _inputs()
    first_s, first_v = scores[:, :7].clone(), values[:, :7].clone()
    first_s[0, 3, 1] = NAN
    _, carried = aaren_scan(first_s, first_v)
    assert torch.isnan(carried.u[0, 1]) and torch.isfinite(carried.u[1]).all()
    # a hand-made state holding an inf numerator is poisoned the same way
    carried = AarenState(carried.m, carried.u, carried.w.clone())
    carried.w[1, 0, 0] = INF
    resets = torch.zeros(2, 40, dtype=torch.bool)
    resets[0, 20] = True
    out, _ = FORMS[form](scores, values, state=carried, resets=resets)
    assert torch.isnan(out[0, :20, 1]).all() and torch.isfinite(out[0, 20:]).all()
    assert torch.isnan(out[1, :, 0]).all() and torch.isfinite(out[0, :, 0]).all()
    assert torch.isfinite(out[1, :, 1]).all()


specials = st.sampled_from([NAN, INF, -INF])


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 24), st.integers(1, 2), st.integers(1, 3)),
    chunk=st.sampled_from([1, 2, 3, 5, 8, 64]),
    seed=st.integers(0, 2**16),
    n_bad_scores=st.integers(0, 3),
    n_bad_values=st.integers(0, 3),
    special=specials,
    with_mask=st.booleans(),
    with_resets=st.booleans(),
    carry_poisoned=st.booleans(),
)
def test_scan_step_and_reference_agree_on_any_non_finite_input(
    shape,
    chunk,
    seed,
    n_bad_scores,
    n_bad_values,
    special,
    with_mask,
    with_resets,
    carry_poisoned,
):
    batch, time, heads, head_dim = shape
    scores, values = _inputs(batch, time, heads, head_dim, seed)
    rng = np.random.default_rng(seed)
    for _ in range(n_bad_scores):
        scores[rng.integers(batch), rng.integers(time), rng.integers(heads)] = special
    for _ in range(n_bad_values):
        idx = (rng.integers(batch), rng.integers(time), rng.integers(heads), rng.integers(head_dim))
        values[idx] = rng.choice([NAN, INF, -INF])
    mask = torch.from_numpy(rng.random((batch, time)) < 0.8) if with_mask else None
    resets = torch.from_numpy(rng.random((batch, time)) < 0.15) if with_resets else None
    pre_s, pre_v = _inputs(batch, 4, heads, head_dim, seed + 1)
    clean_state = aaren_scan(pre_s, pre_v)[1]
    carried_flag = torch.zeros(batch, heads, dtype=torch.bool)
    state = clean_state
    if carry_poisoned:
        carried_flag[0, 0] = True
        u = clean_state.u.clone()
        u[0, 0] = NAN
        state = AarenState(clean_state.m, u, clean_state.w)

    outs = {}
    for name, fn in (
        ("reference", lambda: aaren_reference(scores, values, state, resets, mask)),
        ("scan", lambda: aaren_scan(scores, values, state, resets, mask, chunk)),
        ("step", lambda: steps(scores, values, state, resets, mask)),
    ):
        out, final = fn()
        check_against_rule(out, scores, values, resets, mask, carried_flag, clean_state)
        outs[name] = (out, final)
    for name in ("scan", "step"):
        torch.testing.assert_close(
            outs[name][0], outs["reference"][0], rtol=0, atol=TOL, equal_nan=True
        )
        a, b = outs[name][1], outs["reference"][1]
        assert torch.equal(torch.isnan(a.u), torch.isnan(b.u))  # poisoned memories agree
