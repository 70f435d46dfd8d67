"""An inference-only rollout step for Decision Aaren, behind the decision model's step API.

:class:`FastDecisionStep` offers the ``initial_state`` / ``act`` / ``observe_action`` /
``reset_state`` methods of :class:`~aaren_rl.agents.decision_model.DecisionModel` and gives the
same actions (float32: within 1e-5; ``tests/test_fast_step.py`` holds the two together). It
is built from a model's trained weights, which it fuses once (:func:`fuse_weights`):

- the key path collapses to one vector per head (docs/design.md section 1), and the per-head
  constant that cancels in the softmax is dropped;
- each pre-norm LayerNorm's scale and shift fold into the matrix that reads it (score, value,
  first feed-forward layer, action head), so a step only standardises;
- with one head the value and output projections merge into one matrix (the output of a
  softmax average of values is the average of the projected values), and the memory then holds
  ``W_o W_v x`` instead of ``W_v x``, the same size;
- the observation normalisation folds into the state embedding.

Per environment step the work is one chunk: the action a_{t-1} that ``observe_action``
recorded, then R_t and s_t (``return_token: separate``; merged: a_{t-1} then (R_t s_t)), run
through the stack together. Work whose output nobody reads is skipped: the last layer runs only
the score and value of the earlier tokens of the chunk (they update the memory), the output
projection and feed-forward only at s_t.

Two back ends compute the same step:

- ``"torch"``: plain PyTorch on the model's device and dtype (CPU or CUDA): batched matmuls
  over the chunk and all rows, no loop over heads.
- ``"numba"``: one compiled call per step (CPU, float32). numba is a well-kept LLVM JIT that
  compiles at run time for the CPU it runs on, so nothing assumes an instruction set and no C
  compiler is needed; where numba is missing the step falls back to ``"torch"``. Measured at
  1, 16 and 64 rows it beats the PyTorch path everywhere (docs/performance.md): at one row
  PyTorch's per-operation overhead dominates, at many its blocked loops match MKL's matmuls.
  ``"auto"`` picks it whenever it can run (CPU, float32).

Staleness. Fused weights are a snapshot of the parameters. They are re-derived by
:meth:`FastDecisionStep.refresh` and at every :meth:`~FastDecisionStep.initial_state` (the start
of a rollout, about a millisecond), so a model trained between two rollouts is never read
stale, whatever changed its parameters (``optimizer.step()``, fused AdamW, ``p.data.copy_``,
``load_state_dict``). Parameter version counters cannot be trusted for this: in-place writes
through ``.data`` and fused optimisers do not bump them. Within one rollout the model is
frozen; code that edits weights mid-rollout calls ``refresh()``.

State: :class:`FastState`, fixed size per row (the Aaren memory of every layer plus the pending
action); ``act`` and ``observe_action`` update it in place and return it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from aaren_rl.agents.decision_model import DecisionModel
from aaren_rl.nn.aaren import AarenBackbone

from .step_checks import check_step_inputs

BACKENDS = ("auto", "torch", "numba")
EMPTY_MAX = -1.0e30  # the running max of an empty memory (finite: no inf arithmetic)
MASKED_SCORE = -2.0e30  # the score of an absent token: exp(MASKED_SCORE - m) == 0 for any m
_EPS = 1e-5  # nn.LayerNorm's default, used by every norm of the model (checked)

__all__ = ["BACKENDS", "FastDecisionStep", "FastState", "FusedWeights", "fuse_weights"]


class FastState(NamedTuple):
    """The rollout memory of :class:`FastDecisionStep`, batch ``B`` rows.

    - ``m``, ``u``: ``[layers, B, heads]`` running max (``EMPTY_MAX`` when empty) and
      denominator of every layer's Aaren memory;
    - ``w``: ``[layers, B, heads, value_dim]`` numerator (``value_dim`` is ``d_model`` with one
      head, the values already through the output projection; ``d_head`` otherwise);
    - ``pending_action``: ``[B, act_dim]`` the action ``observe_action`` recorded, fed with the
      next ``act``; ``pending_t``: ``[B]`` its timestep; ``has_pending``: ``[B]`` bool.
    """

    m: Tensor
    u: Tensor
    w: Tensor
    pending_action: Tensor
    pending_t: Tensor
    has_pending: Tensor


class FusedWeights(NamedTuple):
    """The model's weights rearranged for the step (see the module docstring), dtype of the model.

    Embeddings: ``ret_w, ret_b [D]``; ``state_w [D, obs]``, ``state_b [D]`` (normalisation
    folded in); ``action_w [D, act]``, ``action_b [D]``; ``time_table [max_t, D]``;
    ``emb_gamma, emb_beta [D]``. Per layer (stacked, ``L`` first): ``sv_w [L, H*Dv + H, D]``
    (values then scores, LayerNorm folded; a value bias is the same for every token, so the
    softmax average passes it through: it lives in ``out_b``), ``out_w [L, D, H*Dv]`` (unused
    with one head: merged into ``sv_w``), ``out_b [L, D]`` (every constant of the attention),
    ``ff1_w [L, F, D]``, ``ff1_b [L, F]``, ``ff2_w [L, D, F]``, ``ff2_b [L, D]``. Head:
    ``head_w [act, D]``, ``head_b [act]`` (output LayerNorm folded).
    """

    ret_w: Tensor
    ret_b: Tensor
    state_w: Tensor
    state_b: Tensor
    action_w: Tensor
    action_b: Tensor
    time_table: Tensor
    emb_gamma: Tensor
    emb_beta: Tensor
    sv_w: Tensor
    out_w: Tensor
    out_b: Tensor
    ff1_w: Tensor
    ff1_b: Tensor
    ff2_w: Tensor
    ff2_b: Tensor
    head_w: Tensor
    head_b: Tensor


def check_supported(model: DecisionModel, discrete_ok: bool = False) -> None:
    """Raise ``ValueError`` (one line, with the fix) when the fast step cannot run ``model``.

    ``discrete_ok``: accept a categorical head (the weights fuse the same way; the exported
    step of :mod:`aaren_rl.deploy` picks the action from the fused head's logits)."""
    if getattr(model, "discrete", False) and not discrete_ok:
        raise ValueError(
            "FastDecisionStep runs continuous (Box) action heads; a discrete model steps with "
            "its own act/observe_action (its CategoricalActionHead.select picks the action)"
        )
    backbone = model.backbone
    if not isinstance(backbone, AarenBackbone):
        raise ValueError(
            f"FastDecisionStep runs the Aaren backbone, not {type(backbone).__name__}; "
            "use the model's own act/observe_action"
        )
    for layer in backbone.layers:
        if not layer.norm_first:
            raise ValueError(
                "FastDecisionStep folds pre-norm LayerNorms; this model is post-norm "
                "(norm_first: false): use the model's own act/observe_action"
            )
        if not isinstance(layer.ff[1], (torch.nn.ReLU, torch.nn.GELU)) or (
            isinstance(layer.ff[1], torch.nn.GELU) and layer.ff[1].approximate != "none"
        ):
            raise ValueError(f"FastDecisionStep: unsupported activation {layer.ff[1]!r}")
    norms = [model.embed_norm, model.output_norm]
    norms += [n for layer in backbone.layers for n in (layer.norm1, layer.norm2)]
    if any(n.eps != _EPS or n.weight is None for n in norms):
        raise ValueError("FastDecisionStep needs affine LayerNorms with eps=1e-5 (the defaults)")


def _activation(model: DecisionModel) -> str:
    return "gelu" if isinstance(model.backbone.layers[0].ff[1], torch.nn.GELU) else "relu"


@torch.no_grad()
def fuse_weights(model: DecisionModel) -> FusedWeights:
    """Fold and merge ``model``'s weights for the step (see the module docstring).

    A discrete model's head fuses like a continuous one (``head_w``/``head_b`` give the
    logits)."""
    check_supported(model, discrete_ok=True)
    std, mean = model.state_std, model.state_mean
    state_w = model.embed_state.weight / std  # [D, obs]
    state_b = model.embed_state.bias - state_w @ mean
    sv_w, out_w, out_b, ff1_w, ff1_b, ff2_w, ff2_b = ([] for _ in range(7))
    for layer in model.backbone.layers:
        attn = layer.attn
        g1, b1 = layer.norm1.weight, layer.norm1.bias
        kappa, _ = attn._collapse_keys()  # [H, D]; the constant cancels in the softmax
        w_v = attn.v_proj.weight * g1  # [H*Dh, D], LayerNorm scale folded
        # the value bias (with the folded LayerNorm shift) is the same for every token, so a
        # softmax average passes it through unchanged: it joins the output bias
        c_v = attn.v_proj.weight @ b1 + attn.v_proj.bias  # [H*Dh]
        if attn.n_heads == 1:  # value and output projections merged
            w_v = attn.out_proj.weight @ w_v  # [D, D]
        sv_w.append(torch.cat([w_v, kappa * g1], dim=0))
        out_b.append(attn.out_proj.weight @ c_v + attn.out_proj.bias)
        out_w.append(attn.out_proj.weight)
        g2, b2 = layer.norm2.weight, layer.norm2.bias
        lin1, lin2 = layer.ff[0], layer.ff[3]
        ff1_w.append(lin1.weight * g2)
        ff1_b.append(lin1.weight @ b2 + lin1.bias)
        ff2_w.append(lin2.weight)
        ff2_b.append(lin2.bias)
    go, bo = model.output_norm.weight, model.output_norm.bias
    head = model.action_head
    contiguous = lambda ts: torch.stack(ts).contiguous()  # noqa: E731
    return FusedWeights(
        ret_w=model.embed_return.weight[:, 0].contiguous(),
        ret_b=model.embed_return.bias.clone(),
        state_w=state_w.contiguous(),
        state_b=state_b.contiguous(),
        action_w=model.embed_action.weight.clone(),
        action_b=model.embed_action.bias.clone(),
        time_table=model.embed_timestep.weight.clone(),
        emb_gamma=model.embed_norm.weight.clone(),
        emb_beta=model.embed_norm.bias.clone(),
        sv_w=contiguous(sv_w),
        out_w=contiguous(out_w),
        out_b=contiguous(out_b),
        ff1_w=contiguous(ff1_w),
        ff1_b=contiguous(ff1_b),
        ff2_w=contiguous(ff2_w),
        ff2_b=contiguous(ff2_b),
        head_w=(head.weight * go).contiguous(),
        head_b=head.weight @ bo + head.bias,
    )


def _cpu_array(x: Any, dtype: Any) -> np.ndarray:
    """``x`` (tensor, array or list) as a C-contiguous numpy array of ``dtype`` (None: its own),
    sharing memory where it can (a contiguous CPU tensor or array of that dtype: no copy)."""
    if type(x) is torch.Tensor and x.is_cpu and not x.requires_grad:
        a = x.numpy()  # the common case first: well under a microsecond
    elif isinstance(x, torch.Tensor):
        a = x.detach().cpu().numpy()
    else:
        a = np.asarray(x)
    if dtype is not None and a.dtype != dtype:
        a = a.astype(dtype)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _causal_bias(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[n, n, 1]``: 0 where token i <= token j (causal), ``MASKED_SCORE`` elsewhere (added
    before the exponential: a later token's weight is exp(-2e30) = 0, never inf * 0)."""
    allowed = torch.ones(n, n, device=device, dtype=torch.bool).tril()
    return torch.zeros(n, n, device=device, dtype=dtype).masked_fill_(~allowed, MASKED_SCORE)[
        ..., None
    ]


class FastDecisionStep:
    """Decision Aaren's rollout step from fused weights (see the module docstring).

    Args:
        model: a :class:`DecisionModel` with the Aaren backbone (pre-norm, the default); it is
            read, never modified, and its outputs are those of ``model.eval()``.
        backend: ``"auto"`` (numba on CPU float32 where it is installed, PyTorch otherwise),
            ``"torch"`` or ``"numba"`` (an error where numba cannot run).
    """

    def __init__(self, model: DecisionModel, backend: str = "auto") -> None:
        check_supported(model)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.model = model
        self.config = model.config
        self.obs_dim, self.act_dim = model.obs_dim, model.act_dim
        self.backend = backend
        self.activation = _activation(model)
        self.refresh()

    # ------------------------------------------------------------------ weights
    def refresh(self) -> None:
        """Re-derive the fused weights from the model's parameters as they are now."""
        p = self.model.action_head.weight
        self.device, self.dtype = p.device, p.dtype
        self.weights = fuse_weights(self.model)
        attn = self.model.backbone.layers[0].attn
        self.n_layers = len(self.model.backbone.layers)
        self.n_heads = attn.n_heads
        self.value_dim = attn.d_model if attn.n_heads == 1 else attn.head_dim
        self.reward_scale = float(self.model.reward_scale)
        self.clip = float(self.model.return_max) if self.config.clip_return else math.inf
        self._native = None
        want_native = self.backend in ("auto", "numba")
        native_ok = self.device.type == "cpu" and self.dtype == torch.float32
        if want_native and native_ok:
            from aaren_rl.agents import fast_step_numba

            self._native = fast_step_numba.build(self)
        if self.backend == "numba" and self._native is None:
            from aaren_rl.agents import fast_step_numba

            raise ValueError(
                "FastDecisionStep(backend='numba') needs a CPU float32 model and numba "
                f"(found device {self.device}, dtype {self.dtype}, "
                f"numba {'present' if fast_step_numba.AVAILABLE else 'missing'}); "
                "use backend='auto' to fall back to PyTorch"
            )

    @property
    def active_backend(self) -> str:
        """The back end the steps run on: ``"numba"`` or ``"torch"``."""
        return "torch" if self._native is None else "numba"

    # ------------------------------------------------------------------ state
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> FastState:
        """The empty memory for ``batch_size`` rows; re-derives the fused weights first."""
        self.refresh()
        wanted = None if device is None else torch.device(device)
        if wanted is not None and (
            wanted.type != self.device.type or wanted.index not in (None, self.device.index)
        ):
            raise ValueError(
                f"the model is on {self.device}; its fast step cannot keep a state on {device}"
            )
        b, h, dv, n = batch_size, self.n_heads, self.value_dim, self.n_layers
        kw = dict(device=self.device, dtype=self.dtype)
        return FastState(
            m=torch.full((n, b, h), EMPTY_MAX, **kw),
            u=torch.zeros(n, b, h, **kw),
            w=torch.zeros(n, b, h, dv, **kw),
            pending_action=torch.zeros(b, self.act_dim, **kw),
            pending_t=torch.zeros(b, dtype=torch.long, device=self.device),
            has_pending=torch.zeros(b, dtype=torch.bool, device=self.device),
        )

    def reset_state(self, state: FastState, done: Tensor) -> FastState:
        """Empty the memory (and drop the pending action) of rows where ``done [batch]``."""
        done = torch.as_tensor(done, device=self.device).to(torch.bool)
        if done.shape != state.has_pending.shape:
            raise ValueError(
                f"done has shape {tuple(done.shape)}; expected {tuple(state.has_pending.shape)}"
            )
        rows = done[None, :, None]
        state.m.masked_fill_(rows, EMPTY_MAX)
        state.u.masked_fill_(rows, 0.0)
        state.w.masked_fill_(rows[..., None], 0.0)
        state.has_pending.masked_fill_(done, False)
        return state

    # ------------------------------------------------------------------ step
    def _timestep(self, timestep: Any, batch: int) -> Tensor:
        t = torch.as_tensor(timestep, device=self.device)
        if t.shape != (batch,):
            raise ValueError(f"timestep has shape {tuple(t.shape)}; expected ({batch},)")
        if t.is_floating_point():
            raise TypeError("timestep must be an integer tensor (torch.long)")
        if bool((t < 0).any()):
            raise ValueError("timestep must be >= 0")
        return t.long().clamp_max(self.config.max_timestep - 1)

    def _check_action(self, shape: tuple[int, ...], state: FastState) -> int:
        """Refuse an action whose shape is not ``[B, act_dim]`` for ``state``'s B envs (or a
        state that does not fit); returns B."""
        b = state.has_pending.shape[0]
        if tuple(shape) != (b, self.act_dim):
            raise ValueError(
                f"action has shape {tuple(shape)} but the model expects ({b}, {self.act_dim}) "
                f"(act_dim={self.act_dim})"
            )
        self._check_state(state, b)
        return b

    def _check_state(self, state: FastState, batch: int) -> None:
        if not isinstance(state, FastState):
            raise TypeError(
                f"state must be a FastState from FastDecisionStep.initial_state, got "
                f"{type(state).__name__}"
            )
        if state.has_pending.shape[0] != batch:
            raise ValueError(
                f"state holds {state.has_pending.shape[0]} rows but the input has {batch}"
            )

    def _check_obs_rtg(self, obs_shape: tuple, rtg_shape: tuple) -> int:
        if len(obs_shape) != 2 or obs_shape[1] != self.obs_dim:
            raise ValueError(
                f"observation has shape {tuple(obs_shape)} but the model expects "
                f"(batch, {self.obs_dim}) (obs_dim={self.obs_dim})"
            )
        b = obs_shape[0]
        if tuple(rtg_shape) != (b,):
            raise ValueError(f"return_to_go has shape {tuple(rtg_shape)}; expected ({b},)")
        return b

    def _timestep_array(self, timestep: Any, batch: int) -> np.ndarray:
        """``timestep`` as int64 numpy ``[batch]``; the kernel refuses negative values (status
        2) and clamps at ``max_timestep - 1``."""
        t = _cpu_array(timestep, None)
        if t.shape != (batch,):
            raise ValueError(f"timestep has shape {tuple(t.shape)}; expected ({batch},)")
        if t.dtype != np.int64:
            if t.dtype.kind not in "iu":
                raise TypeError("timestep must be an integer tensor (torch.long)")
            t = t.astype(np.int64)
        return t

    @staticmethod
    def _refuse(status: int, timestep: np.ndarray, **inputs: np.ndarray) -> None:
        """Raise the error for a kernel's refusal (status 2: a negative timestep; 1: a NaN or
        inf, named by the shared boundary check)."""
        if status == 2:
            raise ValueError("timestep must be >= 0")
        check_step_inputs(timestep, **inputs)
        raise AssertionError(f"the fast step refused finite inputs (status {status})")

    def act(
        self,
        observation: Tensor,
        return_to_go: Tensor,
        timestep: Tensor,
        state: FastState | None,
    ) -> tuple[Tensor, FastState]:
        """``DecisionModel.act``: ``observation [B, obs_dim]``, ``return_to_go [B]`` (unscaled),
        ``timestep [B]`` -> ``(action [B, act_dim], state)``; the state is updated in place."""
        if self._native is not None:  # CPU: shapes here, one kernel call checks and steps
            obs_np = _cpu_array(observation, np.float32)
            rtg_np = _cpu_array(return_to_go, np.float32)
            b = self._check_obs_rtg(obs_np.shape, rtg_np.shape)
            t_np = self._timestep_array(timestep, b)
            if state is None:
                state = self.initial_state(b)
            self._check_state(state, b)
            # the kernel tests every input (NaN/inf, t < 0) before it touches the state
            action, status = self._native.act(obs_np, rtg_np, t_np, state)
            if status:
                self._refuse(status, t_np, observation=obs_np, return_to_go=rtg_np)
            return action, state
        obs = torch.as_tensor(observation, device=self.device, dtype=self.dtype)
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(
                f"observation has shape {tuple(obs.shape)} but the model expects "
                f"(batch, {self.obs_dim}) (obs_dim={self.obs_dim})"
            )
        b = obs.shape[0]
        rtg = torch.as_tensor(return_to_go, device=self.device, dtype=self.dtype)
        if rtg.shape != (b,):
            raise ValueError(f"return_to_go has shape {tuple(rtg.shape)}; expected ({b},)")
        t = self._timestep(timestep, b)
        check_step_inputs(t, observation=obs, return_to_go=rtg)
        if state is None:
            state = self.initial_state(b)
        self._check_state(state, b)
        return self._act_torch(obs, rtg, t, state), state

    def observe_action(self, action: Tensor, timestep: Tensor, state: FastState) -> FastState:
        """``DecisionModel.observe_action``: record a_t ``[B, act_dim]`` (fed with the next act)."""
        if self._native is not None:
            a_np = _cpu_array(action, np.float32)
            b = self._check_action(a_np.shape, state)
            t_np = self._timestep_array(timestep, b)
            status = self._native.observe(a_np, t_np, state)  # checked, then written
            if status:
                self._refuse(status, t_np, action=a_np)
            return state
        a = torch.as_tensor(action, device=self.device, dtype=self.dtype).detach()
        b = self._check_action(a.shape, state)
        t = self._timestep(timestep, b)  # every check before the state changes
        check_step_inputs(timestep, action=a)
        state.pending_action.copy_(a)
        state.pending_t.copy_(t)
        state.has_pending.fill_(True)
        return state

    # ------------------------------------------------------------------ torch back end
    def _embed(self, obs: Tensor, rtg: Tensor, t: Tensor, state: FastState, pending: bool):
        """The chunk's tokens after the embedding LayerNorm: ``[B, n, D]``."""
        fw = self.weights
        rtg = torch.clamp_max(rtg, self.clip) * self.reward_scale
        t_emb = fw.time_table.index_select(0, t)
        s_tok = torch.addmm(fw.state_b, obs, fw.state_w.t()).add_(t_emb)
        ret = torch.addcmul(fw.ret_b, rtg[:, None], fw.ret_w)
        tokens = []
        if pending:
            a_tok = torch.addmm(fw.action_b, state.pending_action, fw.action_w.t())
            tokens.append(a_tok.add_(fw.time_table.index_select(0, state.pending_t)))
        if self.config.return_token == "merged":
            tokens.append(s_tok.add_(ret))
        else:
            tokens += [ret.add_(t_emb), s_tok]
        x = torch.stack(tokens, dim=1)
        d = x.shape[-1]
        return F.layer_norm(x, (d,), fw.emb_gamma, fw.emb_beta, _EPS)

    @torch.no_grad()  # the rollout step: never an autograd graph, whatever the caller's mode
    def _act_torch(self, obs: Tensor, rtg: Tensor, t: Tensor, state: FastState) -> Tensor:
        fw = self.weights
        pending = bool(state.has_pending.any())
        x = self._embed(obs, rtg, t, state, pending)  # [B, n, D]
        b, n, d = x.shape
        h, dv = self.n_heads, self.value_dim
        hv = h * dv
        bias0 = None
        if pending:  # rows with no pending action: that token gets an empty weight
            bias0 = torch.where(state.has_pending, 0.0, MASKED_SCORE).to(self.dtype)[:, None]
        causal = _causal_bias(n, self.device, self.dtype)
        tiny = torch.finfo(self.dtype).tiny
        act_fn = F.relu if self.activation == "relu" else F.gelu
        for layer in range(self.n_layers):
            last = layer == self.n_layers - 1
            sv = torch.matmul(F.layer_norm(x, (d,), eps=_EPS), fw.sv_w[layer].t())
            v = sv[..., :hv].view(b, n, h, dv)
            s = sv[..., hv:]  # [B, n, H]
            if bias0 is not None:
                s[:, 0].add_(bias0)
            m, u, w = state.m[layer], state.u[layer], state.w[layer]
            if not last:  # every token's output is read by the next layer
                big = torch.maximum(torch.cummax(s, dim=1).values, m[:, None])  # [B, n, H]
                p = torch.exp((s[:, None] - big[:, :, None]).add_(causal))  # [B, n(j), n(i), H]
                e = torch.exp(m[:, None] - big)
                den = torch.addcmul(p.sum(2), u[:, None], e)  # [B, n, H]
                num = torch.einsum("bjih,bihd->bjhd", p, v).addcmul_(w[:, None], e[..., None])
                m.copy_(big[:, -1])
                u.copy_(den[:, -1])
                w.copy_(num[:, -1])
                o = num.div_(den.clamp_min_(tiny)[..., None]).reshape(b, n, hv)
                xs = x
            else:  # the memory takes every token; only s_t's output is read
                big = torch.maximum(s.amax(dim=1), m)  # [B, H]
                p = torch.exp(s - big[:, None])  # [B, n, H]
                e = torch.exp(m - big)
                den = torch.addcmul(p.sum(1), u, e)
                num = torch.einsum("bih,bihd->bhd", p, v).addcmul_(w, e[..., None])
                m.copy_(big)
                u.copy_(den)
                w.copy_(num)
                o = (num / den[..., None]).reshape(b, hv)
                xs = x[:, -1]
            if h > 1:
                o = torch.matmul(o, fw.out_w[layer].t())
            xs = xs + o + fw.out_b[layer]
            hidden = torch.matmul(F.layer_norm(xs, (d,), eps=_EPS), fw.ff1_w[layer].t())
            hidden = act_fn(hidden.add_(fw.ff1_b[layer]))
            x = torch.matmul(hidden, fw.ff2_w[layer].t()).add_(fw.ff2_b[layer]).add_(xs)
        state.has_pending.fill_(False)
        return self.action_map(x)

    def action_map(self, y: Tensor) -> Tensor:
        """The head: backbone output at s_t ``[B, D]`` -> action ``[B, act_dim]``.

        The one piece a different action space replaces (output LayerNorm folded in).
        """
        fw = self.weights
        a = torch.addmm(fw.head_b, F.layer_norm(y, (y.shape[-1],), eps=_EPS), fw.head_w.t())
        return torch.tanh(a) if self.config.action_tanh else a
