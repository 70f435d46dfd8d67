"""The native back end of :class:`~aaren_rl.agents.fast_step.FastDecisionStep`: numba kernels.

Why numba: it is a well-kept LLVM JIT (and already installed with aeon), it needs no C
compiler, and it compiles at run time for the CPU it runs on (the cache is keyed by CPU), so no
instruction set is assumed. Where numba is missing, :data:`AVAILABLE` is False and the fast
step runs on PyTorch.

Two ways to use the same pieces (:func:`embed`, :func:`attend`, :func:`feed_forward_tail`,
:func:`head`, all working on every row at once):

- few rows: :func:`step` runs the whole environment step in one call, matrix-vector products
  included (per call a few microseconds of dispatch instead of hundreds of PyTorch ops);
- many rows: PyTorch's matrix products (MKL/oneDNN) do the ``[rows, D] x [D, F]`` work and the
  kernels do everything between them (LayerNorms, the Aaren update, residuals), in place.

The math is the reference step's (``aaren_rl.nn.aaren_attention.aaren_step``), token by token:
``m' = max(m, s)``, ``u' = u e^(m - m') + e^(s - m')``, ``w' = w e^(m - m') + v e^(s - m')``;
an empty memory has ``m = EMPTY_MAX`` (finite), so no infinity is ever computed. Fast-math
flags allow reassociation (vectorised sums) but never assume finite values away.

Buffers (float32, C order): weights are one flat array with offsets (:func:`pack`); the chunk
is ``x [B, slots, D]`` with slot 0 the pending action, then R_t and s_t (separate) or (R_t s_t)
(merged).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

try:  # pragma: no branch
    import numba

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised where numba is not installed
    numba = None
    AVAILABLE = False


class FastStateLike(Protocol):
    """What the kernels read of :class:`aaren_rl.agents.fast_step.FastState` (a NamedTuple of
    these six tensors, in this order; this module does not import ``fast_step``, which imports
    it)."""

    m: Tensor
    u: Tensor
    w: Tensor
    pending_action: Tensor
    pending_t: Tensor
    has_pending: Tensor

    def __iter__(self) -> Any: ...


class FastStepLike(Protocol):
    """What :func:`pack` and :class:`NumbaStep` read of
    :class:`aaren_rl.agents.fast_step.FastDecisionStep`: its fused weights and sizes."""

    weights: Any  # fast_step.FusedWeights
    config: Any  # the decision model's DecisionModelConfig
    n_heads: int
    value_dim: int
    n_layers: int
    obs_dim: int
    act_dim: int
    activation: str
    clip: float
    reward_scale: float


# order of the packed weights (FusedWeights fields)
ORDER = (
    "ret_w",
    "ret_b",
    "state_w",
    "state_b",
    "action_w",
    "action_b",
    "time_table",
    "emb_gamma",
    "emb_beta",
    "sv_w",
    "out_w",
    "out_b",
    "ff1_w",
    "ff1_b",
    "ff2_w",
    "ff2_b",
    "head_w",
    "head_b",
)
# then layer 0's scores and values from the raw inputs (first_layer_tables), from index 18
FIRST = (
    "l0_state_wt",
    "l0_action_wt",
    "l0_ret_w",
    "l0_state_b",
    "l0_action_b",
    "l0_ret_b",
    "l0_time",
    "l0_bias",
)
# ints: the model's sizes and switches
D, H, DV, L, FF, OBS, ACT, MAXT, MERGED, GELU, TANH, SLOTS = range(12)
EPS = 1e-5


def _jit(fn):
    return numba.njit(cache=True, nogil=True, fastmath={"nsz", "arcp", "contract", "reassoc"})(fn)


if AVAILABLE:

    @_jit
    def _w(flat, offs, i):
        return flat[offs[i] : offs[i + 1]]

    @_jit
    def _mean_rstd(x):
        """``(mean(x), 1 / sqrt(var(x) + eps))`` of one row ``[D]``, in two passes."""
        d = x.shape[0]
        mean = np.float32(0.0)
        for k in range(d):
            mean += x[k]
        mean /= d
        var = np.float32(0.0)
        for k in range(d):
            c = x[k] - mean
            var += c * c
        return mean, np.float32(1.0) / np.sqrt(var / d + np.float32(EPS))

    @_jit
    def _rstd(x):
        """``1 / sqrt(var(x) + eps)`` of one row ``[D]`` (as :func:`_standardize`)."""
        return _mean_rstd(x)[1]

    @_jit
    def _standardize(x, out):
        """``out = (x - mean(x)) / sqrt(var(x) + eps)`` over one row ``[D]``."""
        mean, r = _mean_rstd(x)
        for k in range(x.shape[0]):
            out[k] = (x[k] - mean) * r

    @_jit
    def input_status(obs, rtg, t):
        """0 when every timestep is >= 0 and every observation and return-to-go finite; 2 for a
        negative timestep (checked first), 1 for a NaN or inf (the caller names it)."""
        for b in range(t.shape[0]):
            if t[b] < 0:
                return 2
        for b in range(obs.shape[0]):
            if not np.isfinite(rtg[b]):
                return 1
            for k in range(obs.shape[1]):
                if not np.isfinite(obs[b, k]):
                    return 1
        return 0

    @_jit
    def record_action(a, t, pa, pt, hp):
        """``observe_action``: a_t ``[B, act]`` and its timestep into the pending slot of every
        row; nothing is written (status 1 or 2, as :func:`input_status`) if an action is NaN or
        inf or a timestep negative."""
        for b in range(t.shape[0]):
            if t[b] < 0:
                return 2
        for b in range(a.shape[0]):
            for k in range(a.shape[1]):
                if not np.isfinite(a[b, k]):
                    return 1
        for b in range(a.shape[0]):
            for k in range(a.shape[1]):
                pa[b, k] = a[b, k]
            pt[b] = t[b]
            hp[b] = True
        return 0

    @_jit
    def _first_slot(hp, b):
        return 0 if hp[b] else 1

    @_jit
    def embed(ints, floats, flat, offs, obs, rtg, t, pa, pt, hp, x, rstd):
        """The chunk's tokens of every row after the embedding LayerNorm, into ``x``; each
        token's ``rstd`` before the LayerNorm into ``rstd [B, slots]``."""
        d, maxt, merged, slots = ints[D], ints[MAXT], ints[MERGED], ints[SLOTS]
        n_obs, n_act = ints[OBS], ints[ACT]
        scale, clip = floats[0], floats[1]
        ret_w, ret_b = _w(flat, offs, 0), _w(flat, offs, 1)
        state_w = _w(flat, offs, 2).reshape((d, n_obs))
        state_b = _w(flat, offs, 3)
        action_w = _w(flat, offs, 4).reshape((d, n_act))
        action_b = _w(flat, offs, 5)
        table = _w(flat, offs, 6).reshape((maxt, d))
        gamma, beta = _w(flat, offs, 7), _w(flat, offs, 8)
        tmp = np.empty(d, dtype=np.float32)
        for b in range(obs.shape[0]):
            tt = min(t[b], maxt - 1)
            r = rtg[b]
            if r > clip:
                r = clip
            r = r * scale
            s_slot = slots - 1
            for j in range(d):
                acc = state_b[j] + table[tt, j]
                for k in range(n_obs):
                    acc += state_w[j, k] * obs[b, k]
                if merged:
                    acc += r * ret_w[j] + ret_b[j]
                else:
                    x[b, 1, j] = r * ret_w[j] + ret_b[j] + table[tt, j]
                x[b, s_slot, j] = acc
            if hp[b]:
                tp = min(pt[b], maxt - 1)
                for j in range(d):
                    acc = action_b[j] + table[tp, j]
                    for k in range(n_act):
                        acc += action_w[j, k] * pa[b, k]
                    x[b, 0, j] = acc
            for slot in range(_first_slot(hp, b), slots):
                rstd[b, slot] = _rstd(x[b, slot])
                _standardize(x[b, slot], tmp)
                for j in range(d):
                    x[b, slot, j] = tmp[j] * gamma[j] + beta[j]

    @_jit
    def first_scores(
        ints, floats, flat, offs, obs, rtg, t, pa, pt, x, rstd, tok_row, tok_slot, n, sv
    ):
        """Layer 0's ``sv`` for tokens ``i < n`` from the raw inputs (see
        :func:`first_layer_tables`): ``rstd(x) (rstd(e) C e + A beta)``."""
        rows = ints[H] * ints[DV] + ints[H]
        maxt, slots, merged = ints[MAXT], ints[SLOTS], ints[MERGED]
        n_obs, n_act = ints[OBS], ints[ACT]
        scale, clip = floats[0], floats[1]
        base = len(offs) - 1 - 8  # FIRST follows ORDER
        state_wt = _w(flat, offs, base).reshape((n_obs, rows))
        action_wt = _w(flat, offs, base + 1).reshape((n_act, rows))
        ret_w, state_b = _w(flat, offs, base + 2), _w(flat, offs, base + 3)
        action_b, ret_b = _w(flat, offs, base + 4), _w(flat, offs, base + 5)
        table = _w(flat, offs, base + 6).reshape((maxt, rows))
        bias = _w(flat, offs, base + 7)
        for i in range(n):
            b, slot = tok_row[i], tok_slot[i]
            out = sv[i]
            r = rtg[b]
            if r > clip:
                r = clip
            r = r * scale
            if slot == 0:  # the pending action a_{t-1}
                tp = min(pt[b], maxt - 1)
                for j in range(rows):
                    out[j] = action_b[j] + table[tp, j]
                for k in range(n_act):
                    ak = pa[b, k]
                    for j in range(rows):
                        out[j] += ak * action_wt[k, j]
            else:
                tt = min(t[b], maxt - 1)
                for j in range(rows):
                    out[j] = table[tt, j]
                if slot == slots - 1:  # s_t (with R_t when merged)
                    for j in range(rows):
                        out[j] += state_b[j]
                    for k in range(n_obs):
                        ok = obs[b, k]
                        for j in range(rows):
                            out[j] += ok * state_wt[k, j]
                if slot != slots - 1 or merged:  # R_t
                    for j in range(rows):
                        out[j] += r * ret_w[j] + ret_b[j]
            re, rx = rstd[b, slot], _rstd(x[b, slot])
            for j in range(rows):
                out[j] = (out[j] * re + bias[j]) * rx

    @_jit
    def gemm(w, xs, out, n):
        """``out[i] = w @ xs[i]`` for tokens ``i < n`` (``w [R, K]``, ``xs [N, K]``,
        ``out [N, R]``, ``N >= n`` rounded up to 3): 4 rows x 3 tokens per inner loop, so
        each weight load feeds three multiply-adds and no sum waits on another."""
        rows, k_len = w.shape
        full = rows - rows % 4
        for r in range(0, full, 4):
            for g in range(0, n, 3):
                a0 = a1 = a2 = b0 = b1 = b2 = np.float32(0.0)
                c0 = c1 = c2 = d0 = d1 = d2 = np.float32(0.0)
                for k in range(k_len):
                    x0, x1, x2 = xs[g, k], xs[g + 1, k], xs[g + 2, k]
                    v = w[r, k]
                    a0 += v * x0
                    a1 += v * x1
                    a2 += v * x2
                    v = w[r + 1, k]
                    b0 += v * x0
                    b1 += v * x1
                    b2 += v * x2
                    v = w[r + 2, k]
                    c0 += v * x0
                    c1 += v * x1
                    c2 += v * x2
                    v = w[r + 3, k]
                    d0 += v * x0
                    d1 += v * x1
                    d2 += v * x2
                out[g, r], out[g + 1, r], out[g + 2, r] = a0, a1, a2
                out[g, r + 1], out[g + 1, r + 1], out[g + 2, r + 1] = b0, b1, b2
                out[g, r + 2], out[g + 1, r + 2], out[g + 2, r + 2] = c0, c1, c2
                out[g, r + 3], out[g + 1, r + 3], out[g + 2, r + 3] = d0, d1, d2
        for r in range(full, rows):
            for g in range(0, n, 3):
                a0 = a1 = a2 = np.float32(0.0)
                for k in range(k_len):
                    v = w[r, k]
                    a0 += v * xs[g, k]
                    a1 += v * xs[g + 1, k]
                    a2 += v * xs[g + 2, k]
                out[g, r], out[g + 1, r], out[g + 2, r] = a0, a1, a2

    @_jit
    def attend(ints, sv, m, u, w, o, tok_row, n, last):
        """Feed the tokens' scores and values ``sv [N, H*Dv + H]`` (tokens ``i < n``, each row's
        in order) to one layer's memory (``m, u [B, H]``, ``w [B, H, Dv]``, in place), token by
        token. Outputs ``w / u`` go to ``o [N, H*Dv]`` at the token's index, or (``last``) only
        each row's final one, to ``o[row]``."""
        h_n, dv = ints[H], ints[DV]
        hv = h_n * dv
        for i in range(n):
            b = tok_row[i]
            final = i == n - 1 or tok_row[i + 1] != b
            dst = b if last else i
            for h in range(h_n):
                mm = m[b, h]
                s = sv[i, hv + h]
                big = max(mm, s)
                a = np.exp(mm - big)
                e = np.exp(s - big)
                uu = u[b, h] * a + e
                for k in range(dv):
                    w[b, h, k] = w[b, h, k] * a + e * sv[i, h * dv + k]
                m[b, h], u[b, h] = big, uu
                if not last or final:
                    inv = np.float32(1.0) / uu
                    for k in range(dv):
                        o[dst, h * dv + k] = w[b, h, k] * inv

    @_jit
    def residual(x, tok_row, tok_slot, n, y, bias):
        """``x[row_i, slot_i] += y[i] + bias`` for tokens ``i < n``."""
        for i in range(n):
            xi = x[tok_row[i], tok_slot[i]]
            for j in range(xi.shape[0]):
                xi[j] += y[i, j] + bias[j]

    @_jit
    def standardize_tokens(x, tok_row, tok_slot, n, xs):
        """``xs[i] = standardize(x[row_i, slot_i])`` for tokens ``i < n``."""
        for i in range(n):
            _standardize(x[tok_row[i], tok_slot[i]], xs[i])

    @_jit
    def bias_activation(hid, bias, n, gelu):
        """``hid[i] = act(hid[i] + bias)`` (ReLU, or exact GELU) for tokens ``i < n``."""
        for i in range(n):
            for j in range(hid.shape[1]):
                z = hid[i, j] + bias[j]
                if gelu:
                    z = np.float32(0.5) * z * (np.float32(1.0) + math.erf(z / math.sqrt(2.0)))
                elif z < 0:
                    z = np.float32(0.0)
                hid[i, j] = z

    @_jit
    def head(ints, flat, offs, x, tmp, action):
        """The action map at the last slot: standardise, ``head_w @ . + head_b``, tanh."""
        d, n_act, slots = ints[D], ints[ACT], ints[SLOTS]
        head_w = _w(flat, offs, 16).reshape((n_act, d))
        head_b = _w(flat, offs, 17)
        for b in range(x.shape[0]):
            _standardize(x[b, slots - 1], tmp)
            for i in range(n_act):
                acc = head_b[i]
                for k in range(d):
                    acc += head_w[i, k] * tmp[k]
                action[b, i] = np.tanh(acc) if ints[TANH] else acc

    @_jit
    def token_index(hp, slots, idx):
        """``idx [4, N]``: token -> (row, slot) for every token of the chunk, then each row's
        s_t; returns the token count."""
        n_all = 0
        for b in range(hp.shape[0]):
            for slot in range(_first_slot(hp, b), slots):
                idx[0, n_all], idx[1, n_all] = b, slot
                n_all += 1
            idx[2, b], idx[3, b] = b, slots - 1
        return n_all

    @_jit
    def step(
        ints, floats, flat, offs, obs, rtg, t, m, u, w, pa, pt, hp, x, xs, sv, o, hid, y, idx, rstd
    ):
        """One whole environment step for every row: embed, the layers, the head.

        Scratch: ``x [B, slots, D]`` the residual stream; compact token matrices (``N = 3 *
        ceil(B * slots / 3)`` rows, C order, so every loop runs over contiguous memory):
        ``xs [N, D]`` standardised inputs, ``sv [N, H*Dv + H]`` values and scores, ``o [N,
        H*Dv]`` attention outputs, ``hid [N, F]``, ``y [N, D]`` branch outputs; ``idx [4, N]``
        int64 (token -> row and slot, all tokens then each row's last); ``rstd [B, slots]``
        each token's embedding ``rstd`` (layer 0 reads the raw inputs: :func:`first_scores`).
        Writes the action into
        ``y[:B, :act_dim]`` and clears the pending flags. Returns :func:`input_status` (0: done;
        otherwise nothing was computed and the state is untouched).
        """
        status = input_status(obs, rtg, t)
        if status != 0:
            return status
        d, h_n, dv, n_layers, f = ints[D], ints[H], ints[DV], ints[L], ints[FF]
        slots = ints[SLOTS]
        rows = h_n * dv + h_n
        hv = h_n * dv
        embed(ints, floats, flat, offs, obs, rtg, t, pa, pt, hp, x, rstd)
        n_all = token_index(hp, slots, idx)
        sv_w = _w(flat, offs, 9).reshape((n_layers, rows, d))
        out_w = _w(flat, offs, 10).reshape((n_layers, d, hv))
        out_b = _w(flat, offs, 11).reshape((n_layers, d))
        ff1_w = _w(flat, offs, 12).reshape((n_layers, f, d))
        ff1_b = _w(flat, offs, 13).reshape((n_layers, f))
        ff2_w = _w(flat, offs, 14).reshape((n_layers, d, f))
        ff2_b = _w(flat, offs, 15).reshape((n_layers, d))
        for layer in range(n_layers):
            last = layer == n_layers - 1
            if layer == 0:
                first_scores(
                    ints,
                    floats,
                    flat,
                    offs,
                    obs,
                    rtg,
                    t,
                    pa,
                    pt,
                    x,
                    rstd,
                    idx[0],
                    idx[1],
                    n_all,
                    sv,
                )
            else:
                standardize_tokens(x, idx[0], idx[1], n_all, xs)
                gemm(sv_w[layer], xs, sv, n_all)
            attend(ints, sv, m[layer], u[layer], w[layer], o, idx[0], n_all, last)
            # the tokens whose output is read on: all of them, or each row's s_t (last layer)
            rr, ss = (idx[2], idx[3]) if last else (idx[0], idx[1])
            n = obs.shape[0] if last else n_all
            if h_n > 1:
                gemm(out_w[layer], o, y, n)
                residual(x, rr, ss, n, y, out_b[layer])
            else:
                residual(x, rr, ss, n, o, out_b[layer])
            standardize_tokens(x, rr, ss, n, xs)
            gemm(ff1_w[layer], xs, hid, n)
            bias_activation(hid, ff1_b[layer], n, ints[GELU])
            gemm(ff2_w[layer], hid, y, n)
            residual(x, rr, ss, n, y, ff2_b[layer])
        head(ints, flat, offs, x, xs[0], y)
        for b in range(hp.shape[0]):
            hp[b] = False
        return 0


def profile_phases(
    nat: NumbaStep, obs: np.ndarray, rtg: np.ndarray, t: np.ndarray, state: FastStateLike, reps: int
) -> dict[str, float]:
    """Seconds per step spent in each phase of :func:`step` (the same calls in the same order,
    one Python call per phase, so the sum is a little above the kernel's), median of ``reps``.
    Each step starts with a pending action in every row, as in a rollout."""
    import time

    ints, floats, flat, offs = nat.ints, nat.floats, nat.flat, nat.offs
    d, h_n, dv, n_layers, f = (int(ints[i]) for i in (D, H, DV, L, FF))
    rows, hv, b = h_n * dv + h_n, h_n * dv, obs.shape[0]
    x, xs, sv, o, hid, y, idx, rstd = nat.scratch(b)
    m, u, w, pa, pt, hp = nat.views(state)
    part = lambda i, shape: flat[offs[i] : offs[i + 1]].reshape(shape)  # noqa: E731
    sv_w, out_w = part(9, (n_layers, rows, d)), part(10, (n_layers, d, hv))
    out_b, ff1_w = part(11, (n_layers, d)), part(12, (n_layers, f, d))
    ff1_b, ff2_w, ff2_b = (
        part(13, (n_layers, f)),
        part(14, (n_layers, d, f)),
        part(15, (n_layers, d)),
    )
    samples: dict[str, list[float]] = {}
    clock = time.perf_counter

    spent: dict[str, float] = {}

    def timed(name, fn, *args):
        t0 = clock()
        out = fn(*args)
        spent[name] = spent.get(name, 0.0) + clock() - t0
        return out

    for _ in range(reps):
        hp[:] = True
        spent.clear()

        timed("input checks", input_status, obs, rtg, t)
        timed("embeddings", embed, ints, floats, flat, offs, obs, rtg, t, pa, pt, hp, x, rstd)
        n_all = timed("embeddings", token_index, hp, nat.slots, idx)
        for layer in range(n_layers):
            last = layer == n_layers - 1
            if layer == 0:
                timed(
                    "layer-0 scores and values (folded)",
                    first_scores,
                    *(ints, floats, flat, offs, obs, rtg, t, pa, pt, x, rstd),
                    *(idx[0], idx[1], n_all, sv),
                )
            else:
                timed("LayerNorms", standardize_tokens, x, idx[0], idx[1], n_all, xs)
                timed("score/value matmul", gemm, sv_w[layer], xs, sv, n_all)
            timed(
                "Aaren update",
                attend,
                ints,
                sv,
                m[layer],
                u[layer],
                w[layer],
                o,
                idx[0],
                n_all,
                last,
            )
            rr, ss = (idx[2], idx[3]) if last else (idx[0], idx[1])
            n = b if last else n_all
            if h_n > 1:
                timed("output projection", gemm, out_w[layer], o, y, n)
                timed("residuals", residual, x, rr, ss, n, y, out_b[layer])
            else:
                timed("residuals", residual, x, rr, ss, n, o, out_b[layer])
            timed("LayerNorms", standardize_tokens, x, rr, ss, n, xs)
            timed("feed-forward matmuls", gemm, ff1_w[layer], xs, hid, n)
            timed("bias + activation", bias_activation, hid, ff1_b[layer], n, ints[GELU])
            timed("feed-forward matmuls", gemm, ff2_w[layer], hid, y, n)
            timed("residuals", residual, x, rr, ss, n, y, ff2_b[layer])
        timed("action head", head, ints, flat, offs, x, xs[0], y)
        for name, sec in spent.items():
            samples.setdefault(name, []).append(sec)
    hp[:] = False
    return {name: float(np.median(v)) for name, v in samples.items()}


def first_layer_tables(fast: FastStepLike) -> dict[str, np.ndarray]:
    """Layer 0's scores and values as linear maps of the raw token inputs (:data:`FIRST`).

    A token enters as ``e`` (embeddings summed: ``S obs + b_s + table[t]``, ``r w_r + b_r +
    table[t]`` or ``A a + b_a + table[t]``), then ``x = g * z(e) + beta`` (the embedding
    LayerNorm, ``z(e) = P e * rstd(e)``, ``P`` the centring matrix) and layer 0 reads
    ``sv_0 @ z(x)``. Since ``z(x) = P x * rstd(x)``, ``sv_0 @ z(x) = rstd(x) (rstd(e) C e + A
    beta)`` with ``A = sv_0 P`` and ``C = A diag(g) P``, and ``C e`` is ``C S obs + C b_s +
    (C table)[t]`` and so on: a few dozen multiply-adds per row of ``sv`` instead of ``D``
    (the kernel still computes ``x``, for the residual stream, and both ``rstd``). Folded in
    float64, stored in float32; transposed (``[inputs, rows]``) so the kernel's loops run over
    contiguous rows.
    """
    fw = fast.weights
    f64 = lambda t: t.detach().double()  # noqa: E731
    sv0 = f64(fw.sv_w[0])  # [R0, D]
    d = sv0.shape[1]
    centre = torch.eye(d, dtype=torch.float64) - 1.0 / d
    a = sv0 @ centre
    c = (a * f64(fw.emb_gamma)) @ centre
    out = {
        "l0_state_wt": (c @ f64(fw.state_w)).t(),
        "l0_action_wt": (c @ f64(fw.action_w)).t(),
        "l0_ret_w": c @ f64(fw.ret_w),
        "l0_state_b": c @ f64(fw.state_b),
        "l0_action_b": c @ f64(fw.action_b),
        "l0_ret_b": c @ f64(fw.ret_b),
        "l0_time": f64(fw.time_table) @ c.t(),
        "l0_bias": a @ f64(fw.emb_beta),
    }
    return {k: np.ascontiguousarray(v.numpy(), dtype=np.float32) for k, v in out.items()}


def pack(fast: FastStepLike) -> tuple[np.ndarray, np.ndarray]:
    """The fused weights (:data:`ORDER`, then :func:`first_layer_tables` in :data:`FIRST`
    order) as one flat float32 array and the ``len(ORDER) + len(FIRST) + 1`` offsets."""
    parts = [getattr(fast.weights, name).detach().reshape(-1).numpy() for name in ORDER]
    first = first_layer_tables(fast)
    parts += [first[name].reshape(-1) for name in FIRST]
    offs = np.zeros(len(parts) + 1, dtype=np.int64)
    offs[1:] = np.cumsum([p.size for p in parts])
    return np.concatenate(parts).astype(np.float32), offs


class NumbaStep:
    """Scratch buffers and packed weights for one :class:`FastDecisionStep` (CPU float32)."""

    def __init__(self, fast: FastStepLike) -> None:
        cfg = fast.config
        self.slots = 2 if cfg.return_token == "merged" else 3
        self.flat, self.offs = pack(fast)
        self.ints = np.array(
            [
                cfg.d_model,
                fast.n_heads,
                fast.value_dim,
                fast.n_layers,
                fast.weights.ff1_w.shape[1],
                fast.obs_dim,
                fast.act_dim,
                cfg.max_timestep,
                int(cfg.return_token == "merged"),
                int(fast.activation == "gelu"),
                int(cfg.action_tanh),
                self.slots,
            ],
            dtype=np.int64,
        )
        clip = fast.clip if math.isfinite(fast.clip) else np.finfo(np.float32).max
        self.floats = np.array([fast.reward_scale, clip], dtype=np.float32)
        self.act_dim = fast.act_dim
        self._scratch: dict[int, tuple[np.ndarray, ...]] = {}
        self._views: dict[int, tuple[FastStateLike, tuple[np.ndarray, ...]]] = {}

    def views(self, state: FastStateLike) -> tuple[np.ndarray, ...]:
        """numpy views of ``state``'s six tensors, kept for the last few states (a rollout
        steps one state per group of envs, and making six views costs more than the kernel's
        smallest loops); the entry holds the state, so its id is not reused while kept."""
        hit = self._views.get(id(state))
        if hit is None or hit[0] is not state:
            if len(self._views) >= 8:
                self._views.pop(next(iter(self._views)))
            hit = self._views[id(state)] = (state, tuple(t.numpy() for t in state))
        return hit[1]

    def observe(self, action: np.ndarray, t: np.ndarray, state: FastStateLike) -> int:
        """Record a_t (``[B, act]`` float32, ``t [B]`` int64); :func:`record_action`'s status."""
        _, _, _, pa, pt, hp = self.views(state)
        return record_action(action, t, pa, pt, hp)

    def scratch(self, batch: int) -> tuple[np.ndarray, ...]:
        """The buffers :func:`step` works in (see there), made once per batch size."""
        if batch not in self._scratch:
            d, h, dv, f = (int(self.ints[i]) for i in (D, H, DV, FF))
            n = 3 * math.ceil(batch * self.slots / 3)
            z = lambda *shape: np.zeros(shape, dtype=np.float32)  # noqa: E731
            self._scratch[batch] = (
                z(batch, self.slots, d),
                z(n, d),
                z(n, h * dv + h),
                z(n, h * dv),
                z(n, f),
                z(n, max(d, int(self.ints[ACT]))),
                np.zeros((4, n), dtype=np.int64),
                z(batch, self.slots),
            )
        return self._scratch[batch]

    def act(self, obs: np.ndarray, rtg: np.ndarray, t: np.ndarray, state: FastStateLike):
        """One step for every row (``obs [B, obs_dim]``, ``rtg [B]`` float32, ``t [B]`` int64,
        C order; see :func:`step`): ``(action, 0)`` with the action as a new tensor, or
        ``(None, status)`` when an input was refused (see :func:`input_status`)."""
        b = obs.shape[0]
        x, xs, sv, o, hid, y, idx, rstd = self.scratch(b)
        m, u, w, pa, pt, hp = self.views(state)
        status = step(
            self.ints,
            self.floats,
            self.flat,
            self.offs,
            obs,
            rtg,
            t,
            m,
            u,
            w,
            pa,
            pt,
            hp,
            x,
            xs,
            sv,
            o,
            hid,
            y,
            idx,
            rstd,
        )
        if status:
            return None, status
        return torch.from_numpy(y[:b, : self.act_dim].copy()), 0


def build(fast: FastStepLike) -> NumbaStep | None:
    """The numba back end for ``fast``, or None where numba is not installed."""
    return NumbaStep(fast) if AVAILABLE else None
