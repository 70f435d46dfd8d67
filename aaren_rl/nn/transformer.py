"""A causal Transformer behind the Backbone interface: the baseline Aaren is measured against.

The blocks are ordinary Transformer encoder layers (multi-head causal self-attention, LayerNorm,
residual, ReLU or GELU feed-forward; pre-norm or post-norm), laid out like
``torch.nn.TransformerEncoderLayer`` and like :class:`aaren_rl.nn.aaren.AarenBlock`, so the two
backbones differ only in the attention (Aaren adds one learned query of ``d_model`` numbers per
layer). No positional encoding inside (the agent adds timestep embeddings) and no final
LayerNorm (the agent applies its own, as it does after Aaren). Attention is causal, optionally
limited to a sliding window of ``window`` positions (a token attends to itself and the
``window - 1`` positions before it; positions are counted in the sequence as given, padding
slots included).

Two ways to run it one token at a time (``step``):

- ``step_mode="kv_cache"``: every layer keeps the keys and values it has seen. A step appends
  one key/value per layer and attends over the cache (only its last ``window`` entries when a
  window is set, and then the cache is bounded). Stepping T tokens equals ``forward`` over them.
- ``step_mode="recompute"``: Decision Transformer's evaluation. The state is the last
  ``window - 1`` *input* tokens; a step reruns the whole stack over them plus the new token and
  returns the last output. The cost per step grows with the window; the memory is bounded by it.

States carry a per-row validity mask, so ``reset_state`` restarts single rows of a batch (vector
environments end episodes at different times) and padding or reset tokens are never attended to.

Without autograd (a rollout), the cache is preallocated: a state's keys, values and validity
mask are views into buffers with room after them, and a step writes its new entries in place
(:func:`append_along`), so a token costs O(1) copying instead of the O(L) of ``torch.cat``. A
full buffer is copied once into one twice the live length (amortised O(1)); a window slides
by narrowing the view. Stepping twice from one state (branching) is safe: a buffer remembers
where its last write ended, and a second writer gets a copy. With autograd the cache grows by
``torch.cat``, so that nothing saved for backward is ever written over.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from aaren_rl.nn.residual import ResidualBlock

StepMode = Literal["kv_cache", "recompute"]
_STEP_MODES = ("kv_cache", "recompute")
# kv_cache: {"k": tuple of [B, H, L, d_head] per layer, "v": same, "valid": [B, L] bool}
# recompute: {"x": [B, L, d_model], "valid": [B, L] bool}
TransformerState = dict[str, Any]


_MIN_CAPACITY = 16


def _view_of_buffer(buffer: torch.Tensor, dim: int, start: int, length: int) -> torch.Tensor:
    """``buffer.narrow(dim, start, length)``, remembering its buffer (inference-mode views keep
    no ``_base``, so the view carries it)."""
    view = buffer.narrow(dim, start, length)
    view._kv_buffer = buffer
    return view


def _buffer_start(t: torch.Tensor, dim: int) -> tuple[torch.Tensor, int] | None:
    """``(buffer, start)`` when ``t`` is a slice along ``dim`` of the buffer it carries, else
    None (then appending must copy)."""
    buffer = getattr(t, "_kv_buffer", None)
    if buffer is None or buffer.dim() != t.dim() or buffer.stride() != t.stride():
        return None
    if buffer.untyped_storage().data_ptr() != t.untyped_storage().data_ptr():
        return None
    if any(buffer.shape[i] != t.shape[i] for i in range(t.dim()) if i != dim):
        return None
    offset = t.storage_offset() - buffer.storage_offset()
    step = buffer.stride(dim)
    if offset < 0 or step == 0 or offset % step:
        return None
    return buffer, offset // step


def append_along(t: torch.Tensor, new: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.cat([t, new], dim)``, written in place after ``t`` where that is safe.

    In place when autograd is not recording either tensor, ``t`` is a slice of a buffer with
    room after it, and nothing was appended to that buffer since ``t`` was made (the buffer's
    ``_append_end`` is ``t``'s end). Otherwise the result is a slice of a new buffer of twice
    the result's length (``_MIN_CAPACITY`` at least), so later appends are in place.
    """
    if torch.is_grad_enabled() and (t.requires_grad or new.requires_grad):
        return torch.cat([t, new], dim=dim)
    length, extra = t.shape[dim], new.shape[dim]
    found = _buffer_start(t, dim)
    if found is not None:
        buffer, start = found
        end = start + length
        if getattr(buffer, "_append_end", None) == end and end + extra <= buffer.shape[dim]:
            buffer.narrow(dim, end, extra).copy_(new)
            buffer._append_end = end + extra
            return _view_of_buffer(buffer, dim, start, length + extra)
    shape = list(t.shape)
    shape[dim] = max(_MIN_CAPACITY, 2 * (length + extra))
    buffer = torch.empty(shape, dtype=t.dtype, device=t.device)
    buffer.narrow(dim, 0, length).copy_(t)
    buffer.narrow(dim, length, extra).copy_(new)
    buffer._append_end = length + extra
    return _view_of_buffer(buffer, dim, 0, length + extra)


def _keep_tail(t: torch.Tensor, dim: int, start: int) -> torch.Tensor:
    """``t`` from position ``start`` along ``dim`` on: a view while its buffer is at most four
    times as long (or the minimum capacity: a sliding window), else a compact copy (so a long
    dead buffer is freed)."""
    length = t.shape[dim] - start
    found = _buffer_start(t, dim)
    if found is not None and length > 0:
        buffer, offset = found
        if buffer.shape[dim] <= max(_MIN_CAPACITY, 4 * length):
            return _view_of_buffer(buffer, dim, offset + start, length)
    return t.narrow(dim, start, length).clone()


def _check_bool(name: str, t: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
    if t is None:
        return None
    if t.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor of shape {list(shape)}, got dtype {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)} (batch, time), got {list(t.shape)}")
    return t


def attention_mask(
    key_valid: torch.Tensor,
    key_segment: torch.Tensor,
    query_segment: torch.Tensor,
    window: int | None,
) -> torch.Tensor:
    """Which keys each query may attend to.

    The keys are the last ``L + T`` positions of the sequence and the queries its last ``T``.

    Args:
        key_valid: ``[batch, L+T]`` bool, False for padding and for entries cleared by a reset.
        key_segment: ``[batch, L+T]`` int, the segment (episode) number of every key.
        query_segment: ``[batch, T]`` int, the segment number of every query.
        window: attend to at most this many positions (the query's own included), or None.

    Returns:
        ``[batch, T, L+T]`` bool, True where attention is allowed: the key is valid, in the
        query's segment, not in its future and (with a window) fewer than ``window`` positions
        back.
    """
    n_keys = key_valid.shape[1]
    n_queries = query_segment.shape[1]
    past = n_keys - n_queries
    # query i sits at position past + i: it sees keys j <= past + i, and j > past + i - window
    ones = torch.ones(n_queries, n_keys, dtype=torch.bool, device=key_valid.device)
    allowed = ones.tril(past)
    if window is not None:
        allowed &= ~ones.tril(past - window)
    allowed = allowed[None] & (query_segment[:, :, None] == key_segment[:, None, :])
    allowed &= key_valid[:, None, :]
    return allowed


class AttentionBias(NamedTuple):
    """A mask in the form SDPA adds to the scores, built once and shared by every layer.

    - ``bias``: ``[batch, 1, T, K]`` float, 0 where attention is allowed, ``-inf`` elsewhere;
      a query with no allowed key gets 0 everywhere (no NaN), and
    - ``has_key``: ``[batch, 1, T, 1]`` float, 0 for such a query, whose output is zeroed.
    """

    bias: torch.Tensor
    has_key: torch.Tensor


def attention_bias(allowed: torch.Tensor, dtype: torch.dtype) -> AttentionBias:
    """``allowed [batch, T, K]`` bool -> :class:`AttentionBias` of ``dtype``.

    SDPA turns a boolean mask into a float one on every call; doing it here once per forward
    keeps one ``[T, K]`` float mask alive for backward instead of one per layer.
    """
    any_key = allowed.any(dim=-1, keepdim=True)  # [B, T, 1]
    blocked = ~(allowed | ~any_key)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    bias.masked_fill_(blocked, float("-inf"))
    return AttentionBias(bias[:, None], any_key[:, None].to(dtype))


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention over a mask, with q, k, v and output projections.

    ``forward(x [batch, T, d_model], past_k, past_v [batch, heads, L, d_head], allowed:
    AttentionBias over L+T keys) -> (y [batch, T, d_model], k, v [batch, heads, L+T, d_head])``.
    A query with no allowed key (a padding slot) outputs zeros, never NaN. ``allowed=None``
    means plain causal attention (every key up to the query's own position), which lets
    ``scaled_dot_product_attention`` use its fused kernels instead of reading a mask.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [batch, T, d_model] -> q, k, v [batch, heads, T, d_head]``."""
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(
        self,
        x: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        allowed: AttentionBias | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        q, k_new, v_new = self.project_kv(x)
        k = append_along(past_k, k_new, dim=2)
        v = append_along(past_v, v_new, dim=2)
        p = self.dropout if self.training else 0.0
        if allowed is None:  # plain causal attention over every key: let SDPA pick its kernel
            if t == 1 and p == 0.0 and x.device.type == "cpu":
                # one query (a rollout step): two matrix-vector products. SDPA's CPU flash
                # kernel is tiled for many queries and is ~30x slower here at 3,000 keys.
                scores = (q @ k.transpose(-1, -2)).mul_(self.d_head**-0.5)
                y = torch.softmax(scores, dim=-1) @ v
            elif t == 1:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
            elif past_k.shape[2] == 0:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            else:  # is_causal aligns top-left; with a cache the diagonal sits bottom-right
                n = k.shape[2]
                causal = torch.ones(t, n, dtype=torch.bool, device=x.device).tril(n - t)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, dropout_p=p)
        else:
            # A fully masked row would give NaN: its bias lets it see every key (see
            # attention_bias), then its output is zeroed.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.bias, dropout_p=p)
            y = y * allowed.has_key
        y = y.transpose(1, 2).reshape(b, t, self.d_model)
        return self.out(y), k, v


class TransformerBlock(ResidualBlock):
    """Self-attention then a feed-forward, each with LayerNorm, dropout and a residual.

    Pre-norm (``x + f(norm(x))``) or post-norm (``norm(x + f(x))``), exactly
    ``torch.nn.TransformerEncoderLayer`` with a causal mask (the residual layout is
    :class:`~aaren_rl.nn.residual.ResidualBlock`, shared with Aaren).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float,
        norm_first: bool,
        activation: str = "relu",
    ) -> None:
        super().__init__(d_model, d_ff, dropout, norm_first, activation)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)

    def forward(
        self,
        x: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        allowed: AttentionBias | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [batch, T, d_model] -> (y [batch, T, d_model], k, v [batch, heads, L+T, d_head])``."""
        return self.residual(x, lambda h: self.attn(h, past_k, past_v, allowed))


class TransformerBackbone(nn.Module):
    """A stack of causal Transformer blocks implementing the Backbone interface.

    Args:
        d_model: width of the tokens.
        n_layers: number of blocks.
        n_heads: attention heads per block (``d_model`` must be divisible by it).
        d_ff: hidden width of the feed-forward (default ``4 * d_model``).
        dropout: dropout on attention weights, residual branches and the feed-forward.
        norm_first: pre-norm (True) or post-norm blocks.
        window: sliding attention window in positions, or None for full causal attention.
        step_mode: ``"kv_cache"`` or ``"recompute"`` (Decision Transformer's evaluation, needs
            ``window``); see the module docstring.
        activation: ``"relu"`` (torch's and AarenBackbone's default) or ``"gelu"`` (GPT-2's).

    States are dicts of tensors, batch first:

    - kv_cache: ``{"k": (one [batch, heads, L, d_head] per layer), "v": same, "valid":
      [batch, L]}``,
      with ``L`` growing by one per step (at most ``window - 1`` with a window).
    - recompute: ``{"x": [batch, L, d_model], "valid": [batch, L]}``, ``L <= window - 1``.
    """

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        n_heads: int,
        d_ff: int | None = None,
        dropout: float = 0.0,
        norm_first: bool = True,
        window: int | None = None,
        step_mode: StepMode = "kv_cache",
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if step_mode not in _STEP_MODES:
            raise ValueError(f"step_mode must be one of {_STEP_MODES}, got {step_mode!r}")
        if window is not None and window < 1:
            raise ValueError(f"window must be a positive number of steps or None, got {window}")
        if step_mode == "recompute" and window is None:
            raise ValueError(
                "step_mode='recompute' reruns the model over the last `window` inputs: "
                "give a window (Decision Transformer uses its context length, e.g. window=20)"
            )
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.window = window
        self.step_mode: StepMode = step_mode
        self.norm_first = norm_first
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, d_ff, dropout, norm_first, activation)
            for _ in range(n_layers)
        )

    # ----------------------------------------------------------------------------- states
    def _memory_len(self) -> int | None:
        """How many past positions a state keeps (None: all of them)."""
        return None if self.window is None else self.window - 1

    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> TransformerState:
        """The empty memory for ``batch_size`` rows (see the class docstring for its layout)."""
        p = next(self.parameters())
        device = p.device if device is None else torch.device(device)
        dtype = p.dtype if dtype is None else dtype
        valid = torch.zeros(batch_size, 0, dtype=torch.bool, device=device)
        if self.step_mode == "recompute":
            x = torch.zeros(batch_size, 0, self.d_model, device=device, dtype=dtype)
            return {"x": x, "valid": valid}
        shape = (batch_size, self.n_heads, 0, self.d_head)
        k = tuple(torch.zeros(shape, device=device, dtype=dtype) for _ in range(self.n_layers))
        v = tuple(torch.zeros(shape, device=device, dtype=dtype) for _ in range(self.n_layers))
        return {"k": k, "v": v, "valid": valid}

    def reset_state(self, state: TransformerState, done: torch.Tensor) -> TransformerState:
        """Forget everything rows with ``done [batch]`` (bool) have seen; other rows keep theirs."""
        valid = state["valid"]
        if done.dtype != torch.bool or tuple(done.shape) != (valid.shape[0],):
            raise ValueError(
                f"done must be a bool tensor of shape [{valid.shape[0]}], got "
                f"{done.dtype} {list(done.shape)}"
            )
        new = dict(state)
        new["valid"] = valid & ~done.to(valid.device)[:, None]
        return self._trim(new)  # frees the positions that no row can see any more

    def _trim(self, state: TransformerState) -> TransformerState:
        """Keep the last ``window - 1`` positions; drop leading positions no row can see."""
        valid = state["valid"]
        length = valid.shape[1]
        start = 0
        keep = self._memory_len()
        if keep is not None:
            start = max(0, length - keep)
        seen = valid[:, start:].any(dim=0)
        if bool(seen.any()):
            start += int(seen.to(torch.int8).argmax())
        else:
            start = length
        if start == 0:
            return state

        def cut(t: torch.Tensor, dim: int) -> torch.Tensor:
            return _keep_tail(t, dim, start)

        new: TransformerState = {"valid": cut(valid, 1)}
        if "x" in state:
            new["x"] = cut(state["x"], 1)
        else:
            new["k"] = tuple(cut(k, 2) for k in state["k"])
            new["v"] = tuple(cut(v, 2) for v in state["v"])
        return new

    # ----------------------------------------------------------------------------- compute
    def _allowed(
        self,
        key_valid: torch.Tensor,
        key_segment: torch.Tensor | None,
        query_segment: torch.Tensor | None,
        n_queries: int,
        dtype: torch.dtype,
    ) -> AttentionBias | None:
        """The attention mask, or None when it would be plain causal attention (no padding,
        no reset, window wider than the keys), so that SDPA may use a fused kernel.
        ``key_segment``/``query_segment`` None: no reset (every position in segment 0)."""
        n_keys = key_valid.shape[1]
        plain = (
            (self.window is None or n_keys <= self.window)
            and bool(key_valid.all())
            and (key_segment is None or bool((key_segment == 0).all()))
        )
        if plain:
            return None
        if key_segment is None or query_segment is None:  # no reset: one segment
            b, device = key_valid.shape[0], key_valid.device
            key_segment = torch.zeros(b, n_keys, dtype=torch.long, device=device)
            query_segment = torch.zeros(b, n_queries, dtype=torch.long, device=device)
        allowed = attention_mask(key_valid, key_segment, query_segment, self.window)
        return attention_bias(allowed, dtype)

    def forward(
        self,
        x: torch.Tensor,
        state: TransformerState | None = None,
        resets: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, TransformerState]:
        """Run the stack over a chunk of tokens.

        Args:
            x: ``[batch, T, d_model]`` tokens.
            state: memory from earlier calls (``initial_state`` / a previous ``forward`` or
                ``step``), or None for a fresh start. In kv_cache mode the chunk attends to the
                cached keys and values, so chunked processing equals one long forward. In
                recompute mode the stored inputs are prepended and rerun (Decision Transformer's
                semantics: for one token this is exactly a ``step``).
            resets: ``[batch, T]`` bool; True at t starts a new segment: positions >= t never
                attend to anything before t (nor to the state).
            mask: ``[batch, T]`` bool; False marks padding, which is never attended to. Its own
                outputs are finite but meaningless.

        Returns:
            ``y [batch, T, d_model]`` and the new state.
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must have shape [batch, time, {self.d_model}], got {list(x.shape)}"
            )
        b, t, _ = x.shape
        resets = _check_bool("resets", resets, (b, t))
        mask = _check_bool("mask", mask, (b, t))
        if state is None:
            state = self.initial_state(b, x.device, x.dtype)
        if state["valid"].shape[0] != b:
            raise ValueError(
                f"state holds {state['valid'].shape[0]} rows but x has batch size {b}: "
                "build it with initial_state(batch_size)"
            )
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
        # None: no reset in the chunk (every position in segment 0; nothing O(L) to build)
        query_segment = None if resets is None else resets.long().cumsum(dim=1)
        if self.step_mode == "recompute":
            return self._forward_recompute(x, state, query_segment, mask)
        return self._forward_cached(x, state, query_segment, mask)

    def _forward_cached(
        self,
        x: torch.Tensor,
        state: TransformerState,
        query_segment: torch.Tensor | None,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, TransformerState]:
        b, t, _ = x.shape
        past_len = state["valid"].shape[1]
        key_segment = None
        if query_segment is not None:
            past_segment = torch.zeros(b, past_len, dtype=torch.long, device=x.device)
            key_segment = torch.cat([past_segment, query_segment], dim=1)
        key_valid = append_along(state["valid"], mask, dim=1)
        allowed = self._allowed(key_valid, key_segment, query_segment, t, x.dtype)
        ks, vs = [], []
        h = x
        for i, block in enumerate(self.blocks):
            h, k, v = block(h, state["k"][i].to(x.dtype), state["v"][i].to(x.dtype), allowed)
            ks.append(k)
            vs.append(v)
        y = h
        # After a reset inside the chunk, only the last segment stays visible to later calls.
        if key_segment is not None and key_segment.shape[1]:
            key_valid = key_valid & (key_segment == key_segment[:, -1:])
        new_state = {"k": tuple(ks), "v": tuple(vs), "valid": key_valid}
        return y, self._trim(new_state)

    def _forward_recompute(
        self,
        x: torch.Tensor,
        state: TransformerState,
        query_segment: torch.Tensor | None,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, TransformerState]:
        b, t, _ = x.shape
        past_len = state["valid"].shape[1]
        segment = None
        if query_segment is not None:
            past_segment = torch.zeros(b, past_len, dtype=torch.long, device=x.device)
            segment = torch.cat([past_segment, query_segment], dim=1)
        valid = append_along(state["valid"], mask, dim=1)
        inputs = append_along(state["x"].to(x.dtype), x, dim=1)
        allowed = self._allowed(valid, segment, segment, past_len + t, x.dtype)
        h = inputs
        empty = inputs.new_zeros(b, self.n_heads, 0, self.d_head)
        for block in self.blocks:
            h, _, _ = block(h, empty, empty, allowed)
        y = h[:, past_len:]
        if segment is not None and segment.shape[1]:
            valid = valid & (segment == segment[:, -1:])
        new_state = {"x": inputs, "valid": valid}
        return y, self._trim(new_state)

    def step(
        self, x: torch.Tensor, state: TransformerState
    ) -> tuple[torch.Tensor, TransformerState]:
        """One token per row: ``x [batch, d_model] -> (y [batch, d_model], state)``."""
        if x.dim() != 2:
            raise ValueError(f"step takes x of shape [batch, {self.d_model}], got {list(x.shape)}")
        y, state = self.forward(x[:, None], state)
        return y[:, 0], state


__all__ = [
    "AttentionBias",
    "CausalSelfAttention",
    "TransformerBackbone",
    "TransformerBlock",
    "attention_bias",
    "attention_mask",
]
