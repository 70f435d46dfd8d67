"""The causal Transformer baseline: its attention against a naive quadratic reference and
torch's own encoder layer, and its step (KV cache, window recompute) against its forward."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from aaren_rl.nn.backbone import Backbone, state_nbytes
from aaren_rl.nn.transformer import (
    CausalSelfAttention,
    TransformerBackbone,
    attention_bias,
    attention_mask,
)

F64 = dict(atol=1e-10, rtol=0.0)
F32 = dict(atol=1e-5, rtol=1e-5)


def make(seed: int = 0, dtype: torch.dtype = torch.float64, **kw) -> TransformerBackbone:
    torch.manual_seed(seed)
    args = dict(d_model=16, n_layers=2, n_heads=4)
    args.update(kw)
    net = TransformerBackbone(**args).to(dtype).eval()
    with torch.no_grad():  # LayerNorms start as identities: make each one different
        for module in net.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return net


def randn(*shape: int, seed: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def naive_attention(
    attn: CausalSelfAttention,
    x: torch.Tensor,
    resets: torch.Tensor,
    mask: torch.Tensor,
    window: int | None,
) -> torch.Tensor:
    """Loops over batch, head and query: softmax over the keys a query may see, by hand."""
    b, t, d = x.shape
    h, dh = attn.n_heads, attn.d_head
    w, bias = attn.qkv.weight, attn.qkv.bias
    q = x @ w[:d].T + bias[:d]
    k = x @ w[d : 2 * d].T + bias[d : 2 * d]
    v = x @ w[2 * d :].T + bias[2 * d :]
    out = torch.zeros(b, t, d, dtype=x.dtype)
    for bi in range(b):
        for i in range(t):
            # the segment start: the last reset at or before i
            start = max([j for j in range(i + 1) if resets[bi, j]], default=0)
            lo = start if window is None else max(start, i - window + 1)
            keys = [j for j in range(lo, i + 1) if mask[bi, j]]
            if not keys:
                continue  # nothing to attend to: zero output
            for hi in range(h):
                sl = slice(hi * dh, (hi + 1) * dh)
                scores = torch.stack([q[bi, i, sl] @ k[bi, j, sl] for j in keys]) / math.sqrt(dh)
                p = torch.exp(scores - scores.max())
                p = p / p.sum()
                out[bi, i, sl] = sum(p[n] * v[bi, j, sl] for n, j in enumerate(keys))
    return out @ attn.out.weight.T + attn.out.bias


@pytest.mark.parametrize("window", [None, 1, 3])
def test_attention_layer_matches_naive_quadratic(window: int | None) -> None:
    torch.manual_seed(0)
    attn = CausalSelfAttention(d_model=8, n_heads=2).double()
    b, t = 3, 9
    x = randn(b, t, 8)
    resets = torch.zeros(b, t, dtype=torch.bool)
    resets[0, 4] = True
    resets[2, 1] = resets[2, 6] = True
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 2] = mask[1, 7] = False
    mask[2, 6] = False  # the first token of a segment is padding: its row is fully masked

    seg = resets.long().cumsum(1)
    allowed = attention_mask(mask, seg, seg, window)
    empty = x.new_zeros(b, 2, 0, 4)
    y, k, v = attn(x, empty, empty, attention_bias(allowed, x.dtype))
    ref = naive_attention(attn, x, resets, mask, window)
    torch.testing.assert_close(y, ref, **F64)
    assert k.shape == v.shape == (b, 2, t, 4)


@pytest.mark.parametrize(("norm_first", "activation"), [(True, "relu"), (False, "gelu")])
def test_block_matches_torch_transformer_encoder_layer(norm_first: bool, activation: str) -> None:
    """One block equals torch.nn.TransformerEncoderLayer with a causal mask, weights copied
    across; the parameter counts are equal."""
    d, h, ff = 16, 4, 24
    net = make(
        d_model=d, n_layers=1, n_heads=h, d_ff=ff, norm_first=norm_first, activation=activation
    )
    block = net.blocks[0]
    ref = nn.TransformerEncoderLayer(
        d, h, ff, dropout=0.0, activation=activation, batch_first=True, norm_first=norm_first
    ).double()
    ref.eval()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(block.attn.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(block.attn.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(block.attn.out.weight)
        ref.self_attn.out_proj.bias.copy_(block.attn.out.bias)
        ref.linear1.load_state_dict(block.ff[0].state_dict())
        ref.linear2.load_state_dict(block.ff[3].state_dict())
        ref.norm1.load_state_dict(block.norm1.state_dict())
        ref.norm2.load_state_dict(block.norm2.state_dict())
    x = randn(2, 11, d)
    causal = nn.Transformer.generate_square_subsequent_mask(11, dtype=torch.float64)
    expected = ref(x, src_mask=causal, is_causal=True)
    y, _ = net(x)
    torch.testing.assert_close(y, expected, **F64)
    n_block = sum(p.numel() for p in block.parameters())
    assert n_block == sum(p.numel() for p in ref.parameters())


def test_is_a_backbone_with_aarens_parameters_but_the_query() -> None:
    """Same width, layers, heads: Aaren has exactly one learned query (d_model) more per layer."""
    assert isinstance(make(), Backbone)
    from aaren_rl.nn.aaren import AarenBackbone

    kw = dict(d_model=32, n_layers=3, n_heads=4, d_ff=48)
    n_tf = sum(p.numel() for p in TransformerBackbone(**kw).parameters())
    n_aaren = sum(p.numel() for p in AarenBackbone(**kw).parameters())
    assert n_aaren - n_tf == 3 * 32


def step_all(net: TransformerBackbone, x: torch.Tensor, state=None) -> tuple[torch.Tensor, dict]:
    state = net.initial_state(x.shape[0]) if state is None else state
    ys = []
    for t in range(x.shape[1]):
        y, state = net.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("window", [None, 1, 4])
def test_kv_cache_step_equals_forward(window: int | None, norm_first: bool) -> None:
    net = make(window=window, norm_first=norm_first, n_layers=3)
    x = randn(3, 13, 16)
    expected, _ = net(x)
    got, state = step_all(net, x)
    torch.testing.assert_close(got, expected, **F64)
    cache_len = state["valid"].shape[1]
    assert cache_len == (13 if window is None else window - 1)


def test_kv_cache_step_equals_forward_float32() -> None:
    net = make(window=None, dtype=torch.float32)
    x = randn(2, 40, 16, dtype=torch.float32)
    expected, _ = net(x)
    got, _ = step_all(net, x)
    torch.testing.assert_close(got, expected, **F32)


@pytest.mark.parametrize("window", [1, 3, 5])
def test_recompute_step_is_decision_transformer_window(window: int) -> None:
    """Step at t equals forward over x[t-window+1 : t+1], last output (full forward for t < window)."""
    net = make(window=window, step_mode="recompute", n_layers=3)
    x = randn(2, 12, 16)
    got, state = step_all(net, x)
    full, _ = net(x)
    for t in range(12):
        ctx = x[:, max(0, t - window + 1) : t + 1]
        ref, _ = net(ctx)
        torch.testing.assert_close(got[:, t], ref[:, -1], **F64)
        if t < window:
            torch.testing.assert_close(got[:, t], full[:, t], **F64)
    assert state["x"].shape == (2, window - 1, 16)
    # with several layers the windowed forward sees further back than DT's recompute: they differ
    if 1 < window < 12:
        assert not torch.allclose(got[:, -1], full[:, -1])


def test_recompute_needs_a_window() -> None:
    with pytest.raises(ValueError, match="window"):
        TransformerBackbone(16, 1, 2, step_mode="recompute")


@pytest.mark.parametrize(
    ("step_mode", "window"), [("kv_cache", None), ("kv_cache", 3), ("recompute", 3)]
)
def test_resets_equal_separate_sequences(window: int | None, step_mode: str) -> None:
    net = make(window=window, step_mode=step_mode)
    x = randn(2, 10, 16)
    resets = torch.zeros(2, 10, dtype=torch.bool)
    resets[0, 0] = resets[0, 4] = resets[0, 7] = True  # three episodes in row 0
    resets[1, 5] = True
    y, _ = net(x, resets=resets)
    for row, bounds in ((0, [0, 4, 7, 10]), (1, [0, 5, 10])):
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            alone, _ = net(x[row : row + 1, lo:hi])
            torch.testing.assert_close(y[row, lo:hi], alone[0], **F64)


@pytest.mark.parametrize("window", [None, 4])
def test_padding_changes_no_other_output(window: int | None) -> None:
    net = make(window=window)
    b, t = 3, 9
    x = randn(b, t, 16)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, 6:] = False  # right padding
    mask[1, :3] = False  # left padding (Decision Transformer's way)
    mask[2, 4] = False  # a hole
    y, _ = net(x, mask=mask)
    assert torch.isfinite(y).all()
    x2 = x.clone()
    x2[~mask] = 1e6 * randn(int((~mask).sum()), 16, seed=7)
    y2, _ = net(x2, mask=mask)
    torch.testing.assert_close(y2[mask], y[mask], **F64)
    # right and left padding leave exactly the outputs of the unpadded sequences
    torch.testing.assert_close(y[0, :6], net(x[:1, :6])[0][0], **F64)
    torch.testing.assert_close(y[1, 3:], net(x[1:2, 3:])[0][0], **F64)
    # a fully padded row gives finite outputs and finite gradients
    xg = x.clone().requires_grad_(True)
    yg, _ = net(xg, mask=torch.zeros(b, t, dtype=torch.bool))
    yg.sum().backward()
    assert torch.isfinite(yg).all() and torch.isfinite(xg.grad).all()


@pytest.mark.parametrize(
    ("step_mode", "window"), [("kv_cache", None), ("kv_cache", 3), ("recompute", 3)]
)
def test_reset_state_restarts_one_row_only(step_mode: str, window: int | None) -> None:
    net = make(window=window, step_mode=step_mode)
    x = randn(3, 12, 16)
    _, state = step_all(net, x[:, :7])
    done = torch.tensor([False, True, False])
    state = net.reset_state(state, done)
    after, _ = step_all(net, x[:, 7:], state)
    # rows 0 and 2 continue as if nothing happened; row 1 behaves like a fresh start
    if step_mode == "kv_cache":
        uninterrupted, _ = net(x)
        torch.testing.assert_close(after[[0, 2]], uninterrupted[[0, 2], 7:], **F64)
    else:
        uninterrupted, _ = step_all(net, x)
        torch.testing.assert_close(after[[0, 2]], uninterrupted[[0, 2], 7:], **F64)
    fresh, _ = step_all(net, x[1:2, 7:])
    torch.testing.assert_close(after[1], fresh[0], **F64)


@pytest.mark.parametrize("window", [None, 1, 4])
def test_chunked_forward_equals_one_forward(window: int | None) -> None:
    net = make(window=window, n_layers=3)
    x = randn(2, 17, 16)
    resets = torch.zeros(2, 17, dtype=torch.bool)
    resets[0, 9] = True  # a reset inside the second chunk
    resets[1, 5] = True  # a reset exactly at a chunk boundary
    mask = torch.ones(2, 17, dtype=torch.bool)
    mask[1, 11] = False
    whole, _ = net(x, resets=resets, mask=mask)
    state, parts = None, []
    for lo, hi in ((0, 5), (5, 6), (6, 12), (12, 17)):
        y, state = net(x[:, lo:hi], state, resets=resets[:, lo:hi], mask=mask[:, lo:hi])
        parts.append(y)
    chunked = torch.cat(parts, dim=1)
    torch.testing.assert_close(chunked[mask], whole[mask], **F64)


def test_fused_causal_path_equals_masked_path() -> None:
    """Without padding or resets SDPA runs unmasked (is_causal / bottom-right causal mask); a
    reset at t=0 changes nothing but forces the explicit mask: both give the same outputs."""
    net = make(window=None, n_layers=2)
    x = randn(2, 12, 16)
    fused, _ = net(x)
    start = torch.zeros(2, 12, dtype=torch.bool)
    start[:, 0] = True
    masked, _ = net(x, resets=start)
    torch.testing.assert_close(fused, masked, **F64)
    y1, state = net(x[:, :5])
    y2, _ = net(x[:, 5:], state)  # a cache and several queries: the bottom-right causal mask
    torch.testing.assert_close(torch.cat([y1, y2], 1), fused, **F64)
    y2m, _ = net(
        x[:, 5:],
        state,
        mask=torch.ones(2, 7, dtype=torch.bool).index_fill(1, torch.tensor([6]), False),
    )
    torch.testing.assert_close(y2m[:, :6], fused[:, 5:11], **F64)


def test_chunked_gradients_equal_one_forward() -> None:
    net = make(window=None)
    x = randn(2, 10, 16).requires_grad_(True)
    w = randn(2, 10, 16, seed=3)
    (net(x)[0] * w).sum().backward()
    g_whole = x.grad.clone()
    x.grad = None
    y1, state = net(x[:, :4])
    y2, _ = net(x[:, 4:], state)
    (torch.cat([y1, y2], 1) * w).sum().backward()
    torch.testing.assert_close(x.grad, g_whole, **F64)


def test_state_size_bounded_by_window_and_growing_without() -> None:
    x = randn(1, 30, 16)
    sizes: dict[str, list[int]] = {}
    for name, kw in {
        "full": dict(window=None),
        "window": dict(window=5),
        "recompute": dict(window=5, step_mode="recompute"),
    }.items():
        net = make(**kw)
        state = net.initial_state(1)
        sizes[name] = []
        for t in range(30):
            _, state = net.step(x[:, t], state)
            sizes[name].append(state_nbytes(state))
    # full cache: 2 layers x (k + v) x 16 numbers x 8 bytes + 1 validity byte per position
    per_token = 2 * 2 * 16 * 8 + 1
    assert sizes["full"] == [per_token * (t + 1) for t in range(30)]
    assert sizes["window"][4:] == [per_token * 4] * 26
    assert sizes["recompute"][4:] == [(16 * 8 + 1) * 4] * 26


def test_bad_inputs_say_what_is_wrong() -> None:
    net = make()
    x = randn(2, 5, 16)
    with pytest.raises(TypeError, match="resets must be a bool"):
        net(x, resets=torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"mask must have shape \[2, 5\]"):
        net(x, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch, time, 16"):
        net(randn(2, 5, 8))
    with pytest.raises(ValueError, match="initial_state"):
        net(x, net.initial_state(3))
    with pytest.raises(ValueError, match="divisible"):
        TransformerBackbone(10, 1, 3)


# ----------------------------------------------------------------- the benchmark's instruments
def test_bench_peak_memory_sees_exactly_the_tensors_allocated() -> None:
    """The CPU peak (profiler allocation events) of a known sequence of allocations."""
    from aaren_rl.bench.common import peak_memory_bytes

    def allocate() -> None:
        a = torch.empty(1_000_000, dtype=torch.float32)  # 4,000,000 bytes
        b = torch.empty(125_000, dtype=torch.float64)  # + 1,000,000: the peak, 5,000,000
        del a
        c = torch.empty(500_000, dtype=torch.float32)  # 3,000,000 held
        del b, c

    peak = peak_memory_bytes(allocate, torch.device("cpu"))
    assert 5_000_000 <= peak <= 5_000_000 + 4096


def test_bench_growth_exponent_and_table() -> None:
    from aaren_rl.bench.common import format_table, growth_exponent

    xs = [256.0, 512.0, 1024.0, 4096.0]
    assert growth_exponent(xs, [3.0 * x**2 for x in xs]) == pytest.approx(2.0)
    assert growth_exponent(xs, [7.0 * x for x in xs]) == pytest.approx(1.0)
    assert growth_exponent(xs, [5.0] * 4) == pytest.approx(0.0)
    assert format_table(["T", "ms"], [["256", "1.5"], ["8192", "120.0"]]).splitlines() == [
        "T        ms",
        "----  -----",
        "256     1.5",
        "8192  120.0",
    ]


def test_reset_of_every_row_frees_the_cache() -> None:
    net = make(window=None)
    _, state = step_all(net, randn(2, 6, 16))
    state = net.reset_state(state, torch.tensor([True, False]))
    assert state["valid"].shape[1] == 6  # row 1 still sees all six positions
    state = net.reset_state(state, torch.tensor([False, True]))
    assert state_nbytes(state) == 0 and state["valid"].shape == (2, 0)


def naive_backbone(
    net: TransformerBackbone, x: torch.Tensor, resets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The stack again, attention by the naive loops above, LayerNorm and feed-forward reused."""
    h = x
    for block in net.blocks:
        if block.norm_first:
            h = h + naive_attention(block.attn, block.norm1(h), resets, mask, net.window)
            h = h + block.ff(block.norm2(h))
        else:
            h = block.norm1(h + naive_attention(block.attn, h, resets, mask, net.window))
            h = block.norm2(h + block.ff(h))
    return h


def test_random_resets_padding_windows_against_naive_stack() -> None:
    rng = torch.Generator().manual_seed(11)
    for case in range(8):
        b = int(torch.randint(1, 4, (1,), generator=rng))
        t = int(torch.randint(1, 4, (1,), generator=rng)) if case < 2 else 6 + case
        window = [None, 1, 2, 5][case % 4]
        net = make(seed=case, window=window, norm_first=case % 3 != 0, n_heads=2, d_model=8)
        x = randn(b, t, 8, seed=case)
        resets = torch.rand(b, t, generator=rng) < 0.2
        mask = torch.rand(b, t, generator=rng) < 0.8
        y, _ = net(x, resets=resets, mask=mask)
        ref = naive_backbone(net, x, resets, mask)
        torch.testing.assert_close(y[mask], ref[mask], **F64)
        # and chunk by chunk with the state carried, split at a random point
        cut = int(torch.randint(0, t + 1, (1,), generator=rng))
        y1, state = net(x[:, :cut], resets=resets[:, :cut], mask=mask[:, :cut])
        y2, _ = net(x[:, cut:], state, resets=resets[:, cut:], mask=mask[:, cut:])
        torch.testing.assert_close(torch.cat([y1, y2], 1)[mask], ref[mask], **F64)


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("step_mode", "window"), [("kv_cache", None), ("kv_cache", 4), ("recompute", 4)]
)
def test_every_device_gives_the_cpu_results(
    device: str, step_mode: str, window: int | None
) -> None:
    """The same model on each available device (CUDA when present): forward with resets and
    padding, and stepping with a reset of one row, equal the float64 CPU results."""
    net = make(window=window, step_mode=step_mode)
    x = randn(2, 9, 16)
    resets = torch.zeros(2, 9, dtype=torch.bool)
    resets[1, 4] = True
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 7:] = False

    def run(model: TransformerBackbone, dev: str) -> tuple[torch.Tensor, torch.Tensor]:
        y, _ = model(x.to(dev), resets=resets.to(dev), mask=mask.to(dev))
        state = model.initial_state(2, device=dev)
        steps = []
        for t in range(9):
            if t == 5:
                state = model.reset_state(state, torch.tensor([True, False], device=dev))
            out, state = model.step(x[:, t].to(dev), state)
            steps.append(out)
        return y.cpu(), torch.stack(steps, 1).cpu()

    y_cpu, steps_cpu = run(net, "cpu")
    y_dev, steps_dev = run(net.to(device), device)
    torch.testing.assert_close(y_dev[mask], y_cpu[mask], atol=1e-9, rtol=0.0)
    torch.testing.assert_close(steps_dev, steps_cpu, atol=1e-9, rtol=0.0)
    # float32 too, where CUDA picks its own fused kernels
    net32 = make(window=window, step_mode=step_mode, dtype=torch.float32).to(device)
    y32, _ = net32(x.float().to(device), resets=resets.to(device), mask=mask.to(device))
    ref32, _ = make(window=window, step_mode=step_mode, dtype=torch.float32)(
        x.float(), resets=resets, mask=mask
    )
    torch.testing.assert_close(y32.cpu()[mask], ref32[mask], **F32)


STEP_KINDS = {
    "kv-full": dict(window=None),
    "kv-window": dict(window=4),
    "recompute": dict(window=4, step_mode="recompute"),
}


def _step_with_resets(net, x, resets_at, grad: bool):
    """Step x [B, T, D] token by token; rows listed in ``resets_at[t]`` restart before t.
    ``grad``: autograd on with parameters that require it (the concatenating cache);
    otherwise no autograd (the preallocated, in-place cache)."""
    ys = []
    with torch.set_grad_enabled(grad):
        state = net.initial_state(x.shape[0])
        for t in range(x.shape[1]):
            if t in resets_at:
                done = torch.zeros(x.shape[0], dtype=torch.bool)
                done[resets_at[t]] = True
                state = net.reset_state(state, done)
            y, state = net.step(x[:, t], state)
            ys.append(y.detach())
    return torch.stack(ys, dim=1), state


def _buffer_length(t: torch.Tensor, dim: int) -> int:  # the buffer a cache view lives in
    return getattr(t, "_kv_buffer", t).shape[dim]


@pytest.mark.parametrize("kind", list(STEP_KINDS))
def test_preallocated_cache_equals_the_concatenating_one(kind: str) -> None:
    """The in-place cache (no autograd) gives the outputs and visible state of torch.cat's."""
    net = make(n_layers=2, **STEP_KINDS[kind])
    x = randn(3, 40, 16)
    resets_at = {7: [1], 19: [0, 2], 20: [1]}
    got, state = _step_with_resets(net, x, resets_at, grad=False)
    want, want_state = _step_with_resets(net, x, resets_at, grad=True)
    torch.testing.assert_close(got, want, **F64)
    for key in want_state:
        for a, b in zip(
            state[key] if isinstance(state[key], tuple) else (state[key],),
            want_state[key] if isinstance(want_state[key], tuple) else (want_state[key],),
            strict=True,
        ):
            torch.testing.assert_close(a, b.detach(), **F64)
    first = state["x"] if "x" in state else state["k"][0]
    # the cache lives in a buffer with room after it, at most twice the live length (or 16)
    live = first.shape[2 if "k" in state else 1]
    assert live < _buffer_length(first, 2 if "k" in state else 1) <= max(16, 2 * (live + 1))


def test_stepping_twice_from_one_state_is_safe() -> None:
    """Branching: the second writer of a buffer gets a copy, the first branch is untouched."""
    net = make(window=None)
    x = randn(2, 12, 16)
    with torch.no_grad():
        _, state = step_all(net, x[:, :8])
        y_a, branch_a = net.step(x[:, 8], state)
        y_b, branch_b = net.step(x[:, 9], state)  # from the same state again
        y_a2, _ = net.step(x[:, 10], branch_a)
    with torch.enable_grad():
        _, ref = step_all(net, x[:, :8])
        ref_a, ref_state_a = net.step(x[:, 8], ref)
        ref_b, _ = net.step(x[:, 9], ref)
        ref_a2, _ = net.step(x[:, 10], ref_state_a)
    torch.testing.assert_close(y_a, ref_a.detach(), **F64)
    torch.testing.assert_close(y_b, ref_b.detach(), **F64)
    torch.testing.assert_close(y_a2, ref_a2.detach(), **F64)
    torch.testing.assert_close(branch_b["k"][0][:, :, :8], state["k"][0], **F64)


def test_preallocated_cache_equals_one_forward_over_1000_tokens() -> None:
    net = make(window=None, dtype=torch.float32, n_layers=1)
    x = randn(1, 1000, 16, dtype=torch.float32)
    with torch.no_grad():
        expected, _ = net(x)
        got, state = step_all(net, x)
    torch.testing.assert_close(got, expected, **F32)
    assert state_nbytes(state) == 1000 * (2 * 16 * 4 + 1)  # the live entries, exactly
