"""One suite for the three forms of Aaren: reference (oracle), scan (training), step (inference).

Tolerances (issue 2): float64 within 1e-10 absolute, float32 within 1e-5 relative to the
output scale; outputs are softmax-weighted means of values, so they are O(1) here.
"""

from __future__ import annotations

import pytest
import torch

from aaren_rl.nn.aaren import AarenBackbone, AarenBlock
from aaren_rl.nn.aaren_attention import (
    AarenState,
    aaren_reference,
    aaren_scan,
    aaren_step,
    initial_aaren_state,
)
from aaren_rl.nn.backbone import Backbone, state_nbytes

F64_TOL = 1e-10
F32_REL = 1e-5


def random_inputs(batch, time, heads, head_dim, *, scale=3.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randn(batch, time, heads, generator=g, dtype=torch.float64) * scale).to(dtype)
    values = torch.randn(batch, time, heads, head_dim, generator=g, dtype=torch.float64).to(dtype)
    return scores, values, g


def run_steps(scores, values, state=None, resets=None, mask=None):
    """The recurrent form over a whole sequence: one aaren_step per token.

    A padded token is fed as score -inf (weight 0), which is how a step skips it.
    """
    batch, time, heads, head_dim = values.shape
    if state is None:
        state = initial_aaren_state(batch, heads, head_dim, dtype=scores.dtype)
    outs = []
    for t in range(time):
        s, v = scores[:, t], values[:, t]
        if mask is not None:
            s = torch.where(mask[:, t, None], s, torch.full_like(s, float("-inf")))
        reset = resets[:, t] if resets is not None else None
        out, state = aaren_step(s, v, state, reset)
        outs.append(out)
    return torch.stack(outs, dim=1), state


def assert_close64(a, b, tol=F64_TOL):
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    err = (a - b).abs().max().item()
    assert err <= tol, f"max abs error {err:.3e} > {tol:.0e}"


def assert_close32(a, b):
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    err = ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()
    assert err <= F32_REL, f"max relative error {err:.3e} > {F32_REL:.0e}"


def assert_state_close(a: AarenState, b: AarenState, tol=F64_TOL):
    """States are compared by what they represent: (u exp(m), w exp(m)) up to a shared scale,
    i.e. the read-out w/u and log(u) + m, since (m, u, w) ~ (m + c, u e^-c, w e^-c)."""
    empty = a.u == 0
    assert torch.equal(empty, b.u == 0)
    la = torch.where(empty, 0.0, a.m + torch.log(a.u.clamp_min(1e-300)))
    lb = torch.where(empty, 0.0, b.m + torch.log(b.u.clamp_min(1e-300)))
    assert_close64(la, lb, tol)
    ra = a.w / a.u.clamp_min(1e-300)[..., None]
    rb = b.w / b.u.clamp_min(1e-300)[..., None]
    assert_close64(ra, rb, tol)


# ---- the three forms agree -------------------------------------------------------------


@pytest.mark.parametrize(
    "batch,time,heads,head_dim,seed",
    [(1, 1, 1, 1, 0), (2, 1, 3, 4, 1), (3, 17, 2, 5, 2), (2, 64, 4, 8, 3), (1, 129, 1, 16, 4)],
)
def test_reference_scan_step_agree_float64(batch, time, heads, head_dim, seed):
    scores, values, _ = random_inputs(batch, time, heads, head_dim, seed=seed)
    ref, ref_state = aaren_reference(scores, values)
    scan, scan_state = aaren_scan(scores, values, chunk_size=16)
    step, step_state = run_steps(scores, values)
    assert_close64(scan, ref)
    assert_close64(step, ref)
    assert_state_close(scan_state, ref_state)
    assert_state_close(step_state, ref_state)


def test_reference_scan_step_agree_t4096():
    scores, values, _ = random_inputs(1, 4096, 2, 4, seed=5)
    ref, _ = aaren_reference(scores, values)
    scan, _ = aaren_scan(scores, values)
    step, _ = run_steps(scores, values)
    assert_close64(scan, ref)
    assert_close64(step, ref)


@pytest.mark.parametrize("time", [1, 33, 4096])
def test_float32_agrees_with_reference(time):
    scores, values, _ = random_inputs(2, time, 2, 8, dtype=torch.float32, seed=6)
    ref, _ = aaren_reference(scores.double(), values.double())
    scan, _ = aaren_scan(scores, values)
    assert scan.dtype == torch.float32
    assert_close32(scan, ref)
    if time <= 33:
        step, _ = run_steps(scores, values)
        assert_close32(step, ref)


@pytest.mark.parametrize("scale", [1e2, 1e4])
def test_large_scores_stay_finite_and_exact(scale):
    # exp(1e4) overflows any float: only the max trick keeps these finite
    scores, values, _ = random_inputs(2, 300, 2, 4, scale=scale, seed=7)
    ref, _ = aaren_reference(scores, values)
    scan, _ = aaren_scan(scores, values, chunk_size=32)
    step, _ = run_steps(scores, values)
    assert_close64(scan, ref)
    assert_close64(step, ref)
    scan32, _ = aaren_scan(scores.float(), values.float(), chunk_size=32)
    assert torch.isfinite(scan32).all()
    # with scores this large one token dominates: the output is (nearly) the value of the
    # running argmax of the scores
    best = scores.cummax(dim=1).indices  # [B,T,H]
    expected = torch.gather(values, 1, best[..., None].expand_as(values))
    if scale >= 1e4:
        assert_close32(scan32, expected)


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 64, 1000])
def test_scan_does_not_depend_on_chunk_size(chunk_size):
    scores, values, g = random_inputs(2, 100, 3, 4, seed=8)
    resets = torch.rand(2, 100, generator=g) < 0.05
    mask = torch.rand(2, 100, generator=g) < 0.9
    ref, _ = aaren_reference(scores, values, resets=resets, mask=mask)
    scan, _ = aaren_scan(scores, values, resets=resets, mask=mask, chunk_size=chunk_size)
    assert_close64(scan, ref)


def test_not_the_cummax_shortcut():
    """docs/design.md warns: cummax(s) then cumsum(exp(s - cummax) v) is not attention. Make sure
    the scan is not that, on data where the two differ."""
    scores, values, _ = random_inputs(1, 50, 1, 3, seed=9)
    run_max = scores.cummax(dim=1).values
    e = torch.exp(scores - run_max)
    wrong = torch.cumsum(e[..., None] * values, 1) / torch.cumsum(e, 1)[..., None]
    scan, _ = aaren_scan(scores, values)
    ref, _ = aaren_reference(scores, values)
    assert_close64(scan, ref)
    assert (wrong - ref).abs().max() > 1e-3


# ---- state, chunks, resets, padding ---------------------------------------------------


@pytest.mark.parametrize("split", [1, 37, 64, 99])
def test_chunk_invariance_with_carried_state(split):
    scores, values, _ = random_inputs(2, 100, 2, 4, seed=10)
    whole, whole_state = aaren_scan(scores, values, chunk_size=16)
    first, state = aaren_scan(scores[:, :split], values[:, :split], chunk_size=16)
    second, state = aaren_scan(scores[:, split:], values[:, split:], state, chunk_size=16)
    assert_close64(torch.cat([first, second], 1), whole)
    assert_state_close(state, whole_state)
    # the reference takes a carried state the same way
    ref_second, _ = aaren_reference(
        scores[:, split:], values[:, split:], aaren_scan(scores[:, :split], values[:, :split])[1]
    )
    assert_close64(ref_second, whole[:, split:])
    # and so do T calls of step
    steps, _ = run_steps(scores, values)
    assert_close64(steps, whole)


def test_resets_equal_separate_sequences():
    scores, values, _ = random_inputs(1, 60, 2, 3, seed=11)
    cuts = [0, 13, 14, 40]  # includes a one-token episode
    resets = torch.zeros(1, 60, dtype=torch.bool)
    resets[0, cuts[1:]] = True
    # a carried-in state must be dropped by a reset at position 0 too
    carried = aaren_scan(*random_inputs(1, 5, 2, 3, seed=12)[:2])[1]
    resets0 = resets.clone()
    resets0[0, 0] = True
    for fn in (aaren_scan, aaren_reference):
        together, _ = fn(scores, values, carried, resets0)
        bounds = cuts + [60]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            alone, _ = aaren_reference(scores[:, a:b], values[:, a:b])
            assert_close64(together[:, a:b], alone)
    steps, _ = run_steps(scores, values, carried, resets0)
    assert_close64(steps, aaren_reference(scores, values, carried, resets0)[0])


def test_padding_does_not_change_unpadded_outputs():
    scores, values, g = random_inputs(2, 80, 2, 4, seed=13)
    mask = torch.rand(2, 80, generator=g) < 0.7
    mask[:, -5:] = False  # trailing padding as a batch of ragged episodes has
    out, state = aaren_scan(scores, values, mask=mask)
    # garbage (even huge) scores and values at padded positions change nothing
    junk_scores = torch.where(mask[..., None], scores, torch.full_like(scores, 1e6))
    junk_values = torch.where(mask[..., None, None], values, torch.full_like(values, 1e6))
    junk_out, junk_state = aaren_scan(junk_scores, junk_values, mask=mask)
    assert_close64(junk_out[mask], out[mask])
    assert_state_close(junk_state, state)
    # and the real tokens alone, packed, give the same outputs
    for b in range(2):
        packed, _ = aaren_reference(scores[b : b + 1, mask[b]], values[b : b + 1, mask[b]])
        assert_close64(out[b, mask[b]], packed[0])


def test_state_size_does_not_depend_on_length():
    sizes = set()
    for time in (1, 10, 1000):
        scores, values, _ = random_inputs(2, time, 4, 8, seed=14)
        _, state = aaren_scan(scores, values)
        sizes.add(state_nbytes(state))
        assert state.w.shape == (2, 4, 8) and state.m.shape == state.u.shape == (2, 4)
    assert len(sizes) == 1
    backbone = AarenBackbone(d_model=16, n_layers=2, n_heads=2).double().eval()
    state = backbone.initial_state(3)
    n0 = state_nbytes(state)
    x = torch.randn(3, 16, dtype=torch.float64)
    for _ in range(500):
        _, state = backbone.step(x, state)
    assert state_nbytes(state) == n0 == 2 * 3 * 2 * (8 + 2) * 8  # layers*batch*heads*(Dh+2)*bytes


@pytest.mark.parametrize("poisoned", [False, True])
def test_single_chunk_path_with_carried_state_resets_and_padding(poisoned):
    """A sequence no longer than one chunk (PPO's [envs, 32] update) skips the scan across
    chunks: it must equal the reference and the multi-chunk path, state included."""
    scores, values, g = random_inputs(3, 20, 2, 4, seed=21)
    carried = aaren_scan(*random_inputs(3, 5, 2, 4, seed=22)[:2])[1]
    if poisoned:  # row 1 carries a poisoned memory in
        carried = AarenState(carried.m, carried.u.index_fill(0, torch.tensor([1]), torch.nan),
                             carried.w)  # fmt: skip
    resets = torch.rand(3, 20, generator=g) < 0.1
    resets[0, 0] = resets[2, 9] = True
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[2, 14:] = False
    one, one_state = aaren_scan(scores, values, carried, resets, mask, chunk_size=32)
    many, many_state = aaren_scan(scores, values, carried, resets, mask, chunk_size=4)
    ref, _ = aaren_reference(scores, values, carried, resets, mask)
    fine = ~torch.isnan(ref)
    assert torch.equal(torch.isnan(one), ~fine) and torch.equal(torch.isnan(many), ~fine)
    assert_close64(one[fine], ref[fine])
    assert_close64(one[fine], many[fine])
    assert torch.equal(torch.isnan(one_state.u), torch.isnan(many_state.u))
    ok = ~torch.isnan(many_state.u)
    assert_close64(one_state.m[ok], many_state.m[ok])
    assert_close64(one_state.u[ok], many_state.u[ok])
    assert_close64(one_state.w[ok], many_state.w[ok])


# ---- gradients ------------------------------------------------------------------------


def test_scan_gradcheck_float64():
    scores, values, g = random_inputs(2, 11, 2, 3, seed=15)
    resets = torch.zeros(2, 11, dtype=torch.bool)
    resets[0, 4] = True
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 7:] = False
    carried = aaren_scan(*random_inputs(2, 3, 2, 3, seed=16)[:2])[1]
    m0 = carried.m.clone().requires_grad_()
    u0 = carried.u.clone().requires_grad_()
    w0 = carried.w.clone().requires_grad_()
    scores.requires_grad_()
    values.requires_grad_()

    def f(s, v, m, u, w):
        out, st = aaren_scan(s, v, AarenState(m, u, w), resets, mask, chunk_size=4)
        return out, st.u * torch.exp(st.m), st.w * torch.exp(st.m)[..., None]

    assert torch.autograd.gradcheck(f, (scores, values, m0, u0, w0))


def test_scan_gradients_match_reference():
    scores, values, _ = random_inputs(2, 40, 2, 3, seed=17)
    weights = torch.randn(2, 40, 2, 3, dtype=torch.float64)
    grads = []
    for fn in (aaren_reference, aaren_scan):
        s, v = scores.clone().requires_grad_(), values.clone().requires_grad_()
        (fn(s, v)[0] * weights).sum().backward()
        grads.append((s.grad, v.grad))
    assert_close64(grads[0][0], grads[1][0])
    assert_close64(grads[0][1], grads[1][1])


# ---- modules --------------------------------------------------------------------------


def test_block_parameter_count_against_transformer_layer():
    """The paper: 3,152,384 parameters for its Transformer layer, 3,152,896 for Aaren at width
    512; the difference is Aaren's learned query (d_model numbers)."""
    aaren = sum(p.numel() for p in AarenBlock(512, 8, 2048).parameters())
    transformer = sum(
        p.numel() for p in torch.nn.TransformerEncoderLayer(512, 8, 2048).parameters()
    )
    assert transformer == 3_152_384
    assert aaren == 3_152_896
    assert aaren - transformer == 512


@pytest.mark.parametrize("norm_first", [True, False])
def test_backbone_forward_reference_and_step_agree(norm_first):
    torch.manual_seed(0)
    backbone = AarenBackbone(16, n_layers=3, n_heads=2, norm_first=norm_first, chunk_size=8)
    backbone = backbone.double().eval()
    assert isinstance(backbone, Backbone)
    x = torch.randn(2, 30, 16, dtype=torch.float64)
    resets = torch.zeros(2, 30, dtype=torch.bool)
    resets[1, 12] = True
    scan, scan_state = backbone(x, resets=resets)
    ref, _ = backbone(x, resets=resets, method="reference")
    assert_close64(scan, ref)
    state = backbone.initial_state(2)
    outs = []
    for t in range(30):
        state = backbone.reset_state(state, resets[:, t])
        y, state = backbone.step(x[:, t], state)
        outs.append(y)
    assert_close64(torch.stack(outs, 1), scan)
    for a, b in zip(state, scan_state, strict=True):
        assert_state_close(a, b)
    # chunked forward with the state carried equals one forward
    first, st = backbone(x[:, :11], resets=resets[:, :11])
    second, _ = backbone(x[:, 11:], st, resets=resets[:, 11:])
    assert_close64(torch.cat([first, second], 1), scan)


def test_backbone_padding_and_row_reset():
    torch.manual_seed(1)
    backbone = AarenBackbone(8, n_layers=2, n_heads=1).double().eval()
    x = torch.randn(2, 20, 8, dtype=torch.float64)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[0, 15:] = False
    y, _ = backbone(x, mask=mask)
    y_short, _ = backbone(x[:1, :15])
    assert_close64(y[0, :15], y_short[0])
    # reset_state touches only the rows asked for
    _, state = backbone(x)
    reset = backbone.reset_state(state, torch.tensor([True, False]))
    fresh = backbone.initial_state(2)
    for r, s, f in zip(reset, state, fresh, strict=True):
        assert torch.equal(r.u[0], f.u[0]) and torch.equal(r.w[1], s.w[1])


def test_float32_backbone_scan_matches_step():
    torch.manual_seed(2)
    backbone = AarenBackbone(32, n_layers=2, n_heads=4).eval()
    x = torch.randn(3, 200, 32)
    y, _ = backbone(x)
    state = backbone.initial_state(3)
    outs = []
    with torch.no_grad():
        for t in range(200):
            out, state = backbone.step(x[:, t], state)
            outs.append(out)
    assert_close32(torch.stack(outs, 1), y.detach())


def test_bad_shapes_give_clear_errors():
    scores, values, _ = random_inputs(2, 5, 2, 3)
    with pytest.raises(ValueError, match=r"scores \[batch, time, heads\]"):
        aaren_scan(scores[..., :1], values)
    with pytest.raises(ValueError, match=r"resets must be \[batch, time\]"):
        aaren_scan(scores, values, resets=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="carried-in state"):
        aaren_scan(scores, values, initial_aaren_state(3, 2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="divisible"):
        AarenBackbone(10, 1, 3)


def _scores_by_hand(attn, x):
    """Score of every token from the definition: q = q_proj(query), k = k_proj(x), q.k/sqrt(dh)."""
    q = attn.q_proj(attn.query).view(attn.n_heads, attn.head_dim)
    k = attn.k_proj(x).view(*x.shape[:-1], attn.n_heads, attn.head_dim)
    return (k * q).sum(-1) / attn.head_dim**0.5


def test_scores_follow_in_place_edits_and_fused_adamw():
    """Writes that bump no version counter (``.data`` edits, fused AdamW) are never missed."""
    torch.manual_seed(3)
    attn = AarenBlock(8, 2).attn
    x = torch.randn(4, 8)
    opt = torch.optim.AdamW(attn.parameters(), lr=0.1, fused=True)

    def check():
        with torch.no_grad():
            got = attn.scores_and_values(x)[0]
            want = _scores_by_hand(attn, x)
        # the per-head constant of the collapsed key path cancels in the softmax, not here
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        return got

    before = check()
    attn.k_proj.weight.data.add_(0.5)
    after_add = check()
    attn.query.data.copy_(torch.randn(8))
    after_copy = check()
    attn(torch.randn(2, 5, 8))[0].pow(2).sum().backward()
    opt.step()
    after_step = check()
    for a, b in ((before, after_add), (after_add, after_copy), (after_copy, after_step)):
        assert (a - b).abs().max() > 1e-3


def test_module_built_under_inference_mode_still_steps():
    with torch.inference_mode():
        backbone = AarenBackbone(8, 1, 2)
        y, _ = backbone.step(torch.randn(2, 8), backbone.initial_state(2))
    assert torch.isfinite(y).all()
