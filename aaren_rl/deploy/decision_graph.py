"""Decision Aaren's rollout step as a pure function of its inputs, for ONNX export.

:class:`DecisionStepGraph` computes what :class:`~aaren_rl.agents.fast_step.FastDecisionStep`
computes for one environment step (``act`` then ``observe_action`` with the executed action),
from the same fused weights (:func:`~aaren_rl.agents.fast_step.fuse_weights`), but with the
state as explicit inputs and outputs and no data-dependent Python control flow, so that
``torch.onnx.export`` traces one graph for every batch size and every step of an episode.

One call per environment step::

    (observation [B, obs_dim], return_to_go [B], timestep [B],
     m [B, L, H], u [B, L, H], w [B, L, H, Dv], prev_action [B, A], prev_timestep [B],
     has_prev [B])
    -> (action, m', u', w', prev_action', prev_timestep', has_prev')

The chunk of tokens is always (a_{t-1}, R_t, s_t) (separate return token) or (a_{t-1},
(R_t s_t)) (merged); where ``has_prev`` is False the action token's score is
``MASKED_SCORE`` (its softmax weight is exactly 0), which is what the fast step does for rows
without a pending action. The action is clipped to the action bounds inside the graph (as the
rollout clips before ``observe_action``), and that clipped action is the one the state
records. A discrete model gives the env's action index (the argmax plus the space's
``start``) and records the one-hot vector.

State per env (float32 unless said): ``m``, ``u`` ``[L, H]``, ``w`` ``[L, H, Dv]``,
``prev_action [A]``, ``prev_timestep`` (int64), ``has_prev`` (bool): the fields of
:class:`~aaren_rl.agents.fast_step.FastState`, batch first, so the bytes per env are the
fast step's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aaren_rl.agents.decision_model import DecisionModel
from aaren_rl.agents.fast_step import _EPS, EMPTY_MAX, MASKED_SCORE, fuse_weights

STATE_NAMES = ("m", "u", "w", "prev_action", "prev_timestep", "has_prev")
INPUT_NAMES = ("observation", "return_to_go", "timestep", *STATE_NAMES)
OUTPUT_NAMES = ("action", *(f"{name}_next" for name in STATE_NAMES))

__all__ = ["DecisionStepGraph", "INPUT_NAMES", "OUTPUT_NAMES", "STATE_NAMES"]


class DecisionStepGraph(nn.Module):
    """The fused, state-in/state-out rollout step of a Decision Aaren model (module docstring).

    Args:
        model: a :class:`DecisionModel` with the Aaren backbone (pre-norm); read, not modified.
        action_low, action_high: ``[act_dim]`` bounds the action is clipped to (Box actions;
            None: no clipping).
        action_start: a Discrete space's ``start`` (added to the argmax).
    """

    def __init__(
        self,
        model: DecisionModel,
        action_low: Sequence[float] | None = None,
        action_high: Sequence[float] | None = None,
        action_start: int = 0,
    ) -> None:
        super().__init__()
        fused = fuse_weights(model)
        for name, tensor in fused._asdict().items():
            self.register_buffer(name, tensor.detach().to("cpu", torch.float32).clone())
        attn = model.backbone.layers[0].attn
        config = model.config
        self.obs_dim, self.act_dim = model.obs_dim, model.act_dim
        self.n_layers = len(model.backbone.layers)
        self.n_heads = attn.n_heads
        self.value_dim = attn.d_model if attn.n_heads == 1 else attn.head_dim
        self.d_model = attn.d_model
        self.merged = config.return_token == "merged"
        self.discrete = model.discrete
        self.tanh = bool(config.action_tanh) and not model.discrete
        self.gelu = isinstance(model.backbone.layers[0].ff[1], nn.GELU)
        self.max_timestep = int(config.max_timestep)
        self.reward_scale = float(model.reward_scale)
        self.return_clip = float(model.return_max) if config.clip_return else math.inf
        self.action_start = int(action_start)
        self.clip_action = action_low is not None or action_high is not None
        if self.clip_action and self.discrete:
            raise ValueError("action bounds are for Box actions; this model is discrete")
        low = torch.full((self.act_dim,), -math.inf) if action_low is None else action_low
        high = torch.full((self.act_dim,), math.inf) if action_high is None else action_high
        self.register_buffer("action_low", torch.as_tensor(low, dtype=torch.float32).reshape(-1))
        self.register_buffer("action_high", torch.as_tensor(high, dtype=torch.float32).reshape(-1))
        for name in ("action_low", "action_high"):
            if getattr(self, name).shape != (self.act_dim,):
                raise ValueError(
                    f"{name} has {getattr(self, name).numel()} values; the model's act_dim is "
                    f"{self.act_dim}"
                )
        n = 2 if self.merged else 3
        allowed = torch.ones(n, n, dtype=torch.bool).tril()
        causal = torch.zeros(n, n).masked_fill_(~allowed, MASKED_SCORE)  # [j, i]
        self.register_buffer("causal", causal[None, :, :, None])  # [1, n(j), n(i), 1]

    # ------------------------------------------------------------------ state
    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """The per-env shape of every state field (the batch dimension left out)."""
        layers, heads = self.n_layers, self.n_heads
        return {
            "m": (layers, heads),
            "u": (layers, heads),
            "w": (layers, heads, self.value_dim),
            "prev_action": (self.act_dim,),
            "prev_timestep": (),
            "has_prev": (),
        }

    def initial_state(self, batch_size: int) -> tuple[Tensor, ...]:
        """The empty memory of ``batch_size`` envs, in :data:`STATE_NAMES` order."""
        shapes = self.state_shapes()
        b = batch_size
        return (
            torch.full((b, *shapes["m"]), EMPTY_MAX),
            torch.zeros(b, *shapes["u"]),
            torch.zeros(b, *shapes["w"]),
            torch.zeros(b, self.act_dim),
            torch.zeros(b, dtype=torch.long),
            torch.zeros(b, dtype=torch.bool),
        )

    # ------------------------------------------------------------------ step
    def _tokens(
        self, obs: Tensor, rtg: Tensor, t: Tensor, prev_action: Tensor, prev_t: Tensor
    ) -> Tensor:
        """The chunk after the embedding LayerNorm ``[B, n, D]`` (slot 0: a_{t-1})."""
        if math.isfinite(self.return_clip):
            rtg = torch.clamp(rtg, max=self.return_clip)
        rtg = rtg * self.reward_scale
        t_emb = F.embedding(t, self.time_table)
        s_tok = obs @ self.state_w.t() + self.state_b + t_emb
        ret = self.ret_b + rtg[:, None] * self.ret_w
        a_tok = (
            prev_action @ self.action_w.t() + self.action_b + F.embedding(prev_t, self.time_table)
        )
        tokens = [a_tok, s_tok + ret] if self.merged else [a_tok, ret + t_emb, s_tok]
        x = torch.stack(tokens, dim=1)
        return F.layer_norm(x, (self.d_model,), self.emb_gamma, self.emb_beta, _EPS)

    def forward(
        self,
        observation: Tensor,
        return_to_go: Tensor,
        timestep: Tensor,
        m: Tensor,
        u: Tensor,
        w: Tensor,
        prev_action: Tensor,
        prev_timestep: Tensor,
        has_prev: Tensor,
    ) -> tuple[Tensor, ...]:
        """One environment step of every row (shapes in the module docstring)."""
        last_t = self.max_timestep - 1
        t = timestep.clamp(0, last_t)
        x = self._tokens(
            observation, return_to_go, t, prev_action, prev_timestep.clamp(0, last_t)
        )  # [B, n, D]
        n, d = x.shape[1], self.d_model
        h, dv = self.n_heads, self.value_dim
        hv = h * dv
        # the action token's score offset: 0, or MASKED_SCORE where there is no a_{t-1}
        bias0 = torch.where(has_prev, torch.tensor(0.0), torch.tensor(MASKED_SCORE))
        bias0 = bias0[:, None, None]  # [B, 1, 1]
        tiny = torch.finfo(torch.float32).tiny
        act_fn = F.gelu if self.gelu else F.relu
        # per layer, the layer axis kept ([B, 1, H], [B, 1, H, Dv]): one Split and one Concat
        # per state tensor instead of a gather and a stack per layer (fewer graph nodes)
        layers = self.n_layers
        m_in, u_in, w_in = (z.split(1, dim=1) for z in (m, u, w))
        ms, us, ws = [], [], []
        for layer in range(layers):
            last = layer == layers - 1
            sv = F.layer_norm(x, (d,), eps=_EPS) @ self.sv_w[layer].t()  # [B, n, hv + h]
            v = sv[..., :hv].reshape(-1, n, h, dv)
            s0, s_rest = sv[:, :1, hv:], sv[:, 1:, hv:]
            s = torch.cat([s0 + bias0, s_rest], dim=1)  # [B, n, H]
            m_l, u_l, w_l = m_in[layer], u_in[layer], w_in[layer]
            if not last:  # every token's output is read by the next layer
                running, bigs = m_l, []
                for s_j in s.split(1, dim=1):  # the running max after each token (n: 2 or 3)
                    running = torch.maximum(running, s_j)
                    bigs.append(running)
                big = torch.cat(bigs, dim=1)  # [B, n, H]
                p = torch.exp(s.unsqueeze(1) - big.unsqueeze(2) + self.causal)  # [B, j, i, H]
                e = torch.exp(m_l - big)
                den = p.sum(2) + u_l * e  # [B, n, H]
                num = (p.unsqueeze(-1) * v.unsqueeze(1)).sum(2) + w_l * e.unsqueeze(-1)
                ms.append(big[:, -1:])
                us.append(den[:, -1:])
                ws.append(num[:, -1:])
                o = (num / den.clamp(min=tiny).unsqueeze(-1)).reshape(-1, n, hv)
                xs = x
            else:  # the memory takes every token; only s_t's output is read
                big = torch.maximum(s.amax(dim=1, keepdim=True), m_l)  # [B, 1, H]
                p = torch.exp(s - big)
                e = torch.exp(m_l - big)
                den = p.sum(1, keepdim=True) + u_l * e
                num = (p.unsqueeze(-1) * v).sum(1, keepdim=True) + w_l * e.unsqueeze(-1)
                ms.append(big)
                us.append(den)
                ws.append(num)
                o = (num / den.unsqueeze(-1)).reshape(-1, hv)
                xs = x[:, -1]
            if h > 1:
                o = o @ self.out_w[layer].t()
            xs = xs + o + self.out_b[layer]
            hidden = act_fn(
                F.layer_norm(xs, (d,), eps=_EPS) @ self.ff1_w[layer].t() + self.ff1_b[layer]
            )
            x = hidden @ self.ff2_w[layer].t() + self.ff2_b[layer] + xs
        y = F.layer_norm(x, (d,), eps=_EPS) @ self.head_w.t() + self.head_b  # [B, A]
        if self.discrete:
            index = y.argmax(dim=-1)
            classes = torch.arange(self.act_dim, dtype=index.dtype)
            recorded = (index[:, None] == classes).to(torch.float32)  # one-hot
            action = index + self.action_start
        else:
            action = torch.tanh(y) if self.tanh else y
            if self.clip_action:
                action = torch.minimum(torch.maximum(action, self.action_low), self.action_high)
            recorded = action
        return (
            action,
            torch.cat(ms, dim=1),
            torch.cat(us, dim=1),
            torch.cat(ws, dim=1),
            recorded,
            t,
            has_prev.logical_or(torch.tensor(True)),
        )
