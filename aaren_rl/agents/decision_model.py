"""The decision model: Decision Transformer's token layout over any backbone of the interface.

Each timestep t gives three tokens, return-to-go R_t, state s_t and action a_t, each linearly
embedded, plus a learned embedding of the timestep t, then LayerNorm (docs/design.md section 3). The
backbone runs over the interleaved sequence ``R_0, s_0, a_0, R_1, s_1, a_1, ...``
(``[batch, 3 * time, d_model]``) and the action a_t is predicted from the output at s_t.

``return_token: merged`` folds R_t into the state token instead (its embedding is added to the
state's before the LayerNorm): two tokens per step, ``(R_0 s_0), a_0, (R_1 s_1), a_1, ...``. A
Transformer's query at s_t can look R_t up one token back; Aaren's query is a learned constant,
so a separate R_t token only reaches s_t inside a softmax average over the whole episode. Merged,
the target return sits in the residual stream of the very token the action is read from.

The model owns its input conventions so that training and rollout cannot disagree: raw
observations are normalised by the ``state_mean``/``state_std`` buffers and unscaled
returns-to-go are multiplied by the ``reward_scale`` buffer (docs/design.md: reward scale 1/1000)
inside the model, and the checkpoint carries the buffers.

Two ways to run it, one truth:

- ``forward`` (training): the whole ``[batch, time]`` sequence in parallel, with a padding mask
  and an optional carried-in backbone state.
- ``act`` then ``observe_action`` (rollout): per environment step, ``act`` feeds R_t and s_t
  through ``backbone.step`` and returns the predicted action; ``observe_action`` feeds the action
  that was executed. For the Aaren backbone the state is a fixed-size memory, so each step costs
  the same and memory stays constant over an episode.

Timesteps: the embedding table has ``max_timestep`` rows (timesteps ``0 .. max_timestep - 1``).
``forward`` rejects timesteps outside that range with a clear error (training data that does not
fit the config is a bug to fix, not to hide). ``act`` and ``observe_action`` clamp timesteps at
``max_timestep - 1``, so an environment whose episodes run longer than the training data still
rolls out (every step past the last one shares the last embedding); negative timesteps are an
error in both. :func:`stretch_timesteps` resizes a trained table by interpolation, for
fine-tuning on longer episodes (a length curriculum).

Actions: ``action_space: box`` (continuous, ``act_dim`` features, tanh, MSE loss) or
``action_space: discrete`` (Decision Transformer's Atari setting: ``act_dim`` is the number of
actions, actions are one-hot vectors ``[..., act_dim]`` both in the data and as the a_t token,
the head gives logits and the loss is cross-entropy; at rollout the action is the argmax, or a
draw from the softmax with ``sample=True``). The config records the kind, so a checkpoint
rolled out in an environment of the other kind fails with a clear error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from aaren_rl.nn.backbone import Backbone, State

from .step_checks import check_step_inputs

BACKBONES = ("aaren", "transformer")
STEP_MODES = ("recompute", "kv_cache")
RETURN_TOKENS = ("separate", "merged")
ACTION_SPACES = ("box", "discrete")
_MIN_STD = 1e-6


@dataclass
class DecisionModelConfig:
    """Architecture of a decision model (the ``model`` part of an agent preset).

    ``context`` is Decision Transformer's K: the number of timesteps a Transformer sees. The
    Transformer backbone attends over a sliding window of ``3 * context - 1`` tokens, which is
    exactly what Decision Transformer's action prediction at s_t sees (R, s, a for the K - 1
    previous steps, then R_t and s_t). Aaren ignores ``context`` in the model (its memory runs
    from the episode start); the trainer uses it for the training sequence length.
    ``step_mode`` picks how the Transformer rolls out: ``"recompute"`` (Decision Transformer's
    way: the window is recomputed every step) or ``"kv_cache"``. ``full_attention: true`` drops
    the Transformer's window (kv_cache only): it then sees the whole episode like Aaren, and its
    cache grows by one key and value per token and layer.
    ``clip_return: true`` clips every return-to-go the model is given at the largest one in its
    training data (the ``return_max`` buffer): a target beyond the data conditions the model on
    the best return it has seen instead of a value it never met. Training is unchanged (no
    training return-to-go exceeds the maximum); only rollouts with such targets differ.
    ``action_space`` is ``"box"`` (continuous) or ``"discrete"`` (one-hot actions, a
    categorical head; ``action_tanh`` is then unused). ``aaren-rl train`` sets it from the
    task's environment.
    """

    backbone: str = "aaren"
    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 1
    d_ff: int | None = None
    dropout: float = 0.1
    norm_first: bool = True
    context: int = 20
    step_mode: str = "recompute"
    max_timestep: int = 1000
    action_tanh: bool = True
    full_attention: bool = False
    return_token: str = "separate"
    clip_return: bool = False
    action_space: str = "box"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, source: str = "DecisionModelConfig") -> None:
        """Raise ``ValueError`` naming ``source`` and the key when a value is out of range."""

        def bad(key: str, expected: str) -> ValueError:
            value = repr(getattr(self, key))
            value = value if len(value) <= 60 else value[:57] + "..."
            return ValueError(
                f"{source}: '{key}' is {value}; expected {expected}. "
                "Fix that key in the agent preset."
            )

        if self.backbone not in BACKBONES:
            raise bad("backbone", f"one of {BACKBONES}")
        if self.step_mode not in STEP_MODES:
            raise bad("step_mode", f"one of {STEP_MODES}")
        if self.return_token not in RETURN_TOKENS:
            raise bad("return_token", f"one of {RETURN_TOKENS}")
        if self.action_space not in ACTION_SPACES:
            raise bad("action_space", f"one of {ACTION_SPACES}")
        for key in ("d_model", "n_layers", "n_heads", "context", "max_timestep"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(key, "a positive integer")
        if self.d_ff is not None and (
            isinstance(self.d_ff, bool) or not isinstance(self.d_ff, int) or self.d_ff < 1
        ):
            raise bad("d_ff", "a positive integer or null (4 * d_model)")
        if self.d_model % self.n_heads != 0:
            raise bad("d_model", f"a multiple of n_heads={self.n_heads}")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not 0.0 <= self.dropout < 1.0  # no float(): a huge int would overflow
        ):
            raise bad("dropout", "a number in [0, 1)")
        for key in ("norm_first", "action_tanh", "full_attention", "clip_return"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, "true or false")
        if self.backbone == "transformer" and self.full_attention and self.step_mode == "recompute":
            raise bad(
                "step_mode", "'kv_cache' when full_attention is true (recompute needs a window)"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "model config") -> DecisionModelConfig:
        """Build from a mapping (a preset's ``model`` section); unknown keys are an error.

        ``source`` names where the mapping came from (a preset path) in error messages.
        """
        if isinstance(d, DecisionModelConfig):
            return d
        if not isinstance(d, Mapping):
            raise ValueError(
                f"{source}: 'model' must be a mapping of model settings, got {type(d).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(d) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown model key(s) {unknown}; the known keys are {sorted(known)}. "
                "Remove or rename them."
            )
        config = cls.__new__(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            setattr(config, f.name, d.get(f.name, default))
        config.validate(source)
        return config

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/JSON/checkpoint friendly) that ``from_dict`` reads back."""
        return dataclasses.asdict(self)

    @property
    def tokens_per_step(self) -> int:
        """3 (R_t, s_t, a_t) with a separate return token, 2 ((R_t s_t), a_t) merged."""
        return 3 if self.return_token == "separate" else 2

    @property
    def transformer_window(self) -> int | None:
        """Tokens a Transformer attends over: ``tokens_per_step * context - 1`` (DT's K steps up
        to s_t), or None (full_attention)."""
        return None if self.full_attention else self.tokens_per_step * self.context - 1


def build_backbone(config: DecisionModelConfig) -> Backbone:
    """The sequence backbone named by ``config.backbone``, at the config's size."""
    common = dict(
        d_model=config.d_model,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        d_ff=config.d_ff,
        dropout=float(config.dropout),
        norm_first=config.norm_first,
    )
    if config.backbone == "aaren":
        from aaren_rl.nn.aaren import AarenBackbone

        return AarenBackbone(**common)
    from aaren_rl.nn.transformer import TransformerBackbone

    return TransformerBackbone(
        **common, window=config.transformer_window, step_mode=config.step_mode
    )


def action_space_kind(space: Any) -> str:
    """``"box"`` for a Gymnasium ``Box`` action space, ``"discrete"`` for ``Discrete``."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Discrete):
        return "discrete"
    if isinstance(space, gym.spaces.Box):
        return "box"
    raise ValueError(
        f"action space {space} is neither Box nor Discrete; the decision model supports only "
        "those two (wrap the environment to flatten or discretise its actions)"
    )


def action_dim(space: Any) -> int:
    """Features of an action vector: a Box's size, or a Discrete's number of actions."""
    if action_space_kind(space) == "discrete":
        return int(space.n)
    return int(np.prod(space.shape))


class CategoricalActionHead(nn.Linear):
    """Logits over ``n_actions`` discrete actions, and the one-hot action chosen from them.

    A plain ``nn.Linear(d_model, n_actions)`` (same parameter names as the continuous head)
    with the two steps a rollout needs, so a fused inference step can call them on its own
    hidden state: ``forward(h [..., d_model]) -> logits [..., n_actions]`` and
    ``select(logits) -> one-hot [..., n_actions]``.
    """

    def select(
        self,
        logits: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One-hot actions ``[..., n_actions]`` in the logits' dtype: the argmax (greedy), or
        with ``sample=True`` a draw from ``softmax(logits)`` (using ``generator`` if given)."""
        if sample:
            probs = torch.softmax(logits.float(), dim=-1).reshape(-1, logits.shape[-1])
            index = torch.multinomial(probs, 1, generator=generator).reshape(logits.shape[:-1])
        else:
            index = logits.argmax(dim=-1)
        return nn.functional.one_hot(index, logits.shape[-1]).to(logits.dtype)


def _as_vector(value: Any, size: int, name: str, fill: float) -> torch.Tensor:
    # on the CPU even under a default device (the meta device counts parameters unallocated)
    if value is None:
        return torch.full((size,), fill, dtype=torch.float32, device="cpu")
    t = torch.as_tensor(np.asarray(value, dtype=np.float32), device="cpu")
    if t.shape != (size,):
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected ({size},) (obs_dim)")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf; recompute the dataset statistics")
    return t


class DecisionModel(nn.Module):
    """Return-conditioned action model over a backbone (see the module docstring).

    Args:
        obs_dim: observation features.
        act_dim: action features (``box``), or the number of actions (``discrete``).
        config: the architecture.
        state_mean, state_std: ``[obs_dim]`` dataset statistics; observations are normalised
            as ``(obs - mean) / std`` (std below 1e-6 is raised to 1e-6). Default 0 and 1.
        reward_scale: returns-to-go are multiplied by this before embedding (DT: 1/1000).
        return_max: the largest (unscaled) return-to-go of the training data, kept as a buffer;
            with ``config.clip_return`` every return-to-go is clipped at it. Default inf.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: DecisionModelConfig,
        state_mean: np.ndarray | torch.Tensor | None = None,
        state_std: np.ndarray | torch.Tensor | None = None,
        reward_scale: float = 1.0,
        return_max: float | None = None,
    ) -> None:
        super().__init__()
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"obs_dim and act_dim must be >= 1, got {obs_dim} and {act_dim}")
        reward_scale = float(reward_scale)
        if not np.isfinite(reward_scale) or reward_scale <= 0:
            raise ValueError(f"reward_scale must be a positive finite number, got {reward_scale}")
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.config = config
        d = config.d_model

        self.register_buffer("state_mean", _as_vector(state_mean, obs_dim, "state_mean", 0.0))
        std = _as_vector(state_std, obs_dim, "state_std", 1.0)
        if (std < 0).any():
            raise ValueError("state_std has negative entries; it must be a standard deviation")
        self.register_buffer("state_std", std.clamp_min(_MIN_STD))
        self.register_buffer("reward_scale", torch.tensor(reward_scale, dtype=torch.float32))
        return_max = float("inf") if return_max is None else float(return_max)
        if np.isnan(return_max):
            raise ValueError("return_max is NaN; recompute it from the dataset's returns-to-go")
        self.register_buffer("return_max", torch.tensor(return_max, dtype=torch.float32))

        self.embed_return = nn.Linear(1, d)
        self.embed_state = nn.Linear(obs_dim, d)
        self.embed_action = nn.Linear(act_dim, d)
        self.embed_timestep = nn.Embedding(config.max_timestep, d)
        self.embed_norm = nn.LayerNorm(d)
        self.embed_dropout = nn.Dropout(float(config.dropout))
        self.backbone = build_backbone(config)
        self.output_norm = nn.LayerNorm(d)
        if config.action_space == "discrete":
            self.action_head: nn.Linear = CategoricalActionHead(d, act_dim)
        else:
            self.action_head = nn.Linear(d, act_dim)

    @property
    def discrete(self) -> bool:
        """True for a categorical head (``action_space: discrete``)."""
        return self.config.action_space == "discrete"

    # ------------------------------------------------------------------ embeddings
    def _dtype(self) -> torch.dtype:
        return self.action_head.weight.dtype

    def _device(self) -> torch.device:
        return self.action_head.weight.device

    def _embed_tokens(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        return self.embed_dropout(self.embed_norm(x + t_emb))

    def _return_token(self, rtg: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        return self._embed_tokens(self.embed_return(self._scaled_return(rtg)), t_emb)

    def _scaled_return(self, rtg: torch.Tensor) -> torch.Tensor:
        rtg = rtg.to(self._dtype())
        if self.config.clip_return:
            rtg = torch.minimum(rtg, self.return_max)
        return (rtg * self.reward_scale).unsqueeze(-1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints written before the return_max buffer existed keep this model's value
        # (the dataset's, when the builder was given it; inf otherwise: no clip value).
        state_dict.setdefault(prefix + "return_max", self.return_max.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _state_token(
        self, obs: torch.Tensor, t_emb: torch.Tensor, rtg: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The s_t token; with ``rtg`` (``return_token: merged``) R_t's embedding is added."""
        normed = (obs.to(self._dtype()) - self.state_mean) / self.state_std
        x = self.embed_state(normed)
        if rtg is not None:
            x = x + self.embed_return(self._scaled_return(rtg))
        return self._embed_tokens(x, t_emb)

    def _action_token(self, action: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        return self._embed_tokens(self.embed_action(action.to(self._dtype())), t_emb)

    def _predict_action(self, h: torch.Tensor) -> torch.Tensor:
        """The head's output at s_t: continuous actions (tanh'd if ``action_tanh``), or logits."""
        a = self.action_head(self.output_norm(h))
        if self.discrete or not self.config.action_tanh:
            return a
        return torch.tanh(a)

    def _check_features(self, x: torch.Tensor, name: str, dim: int, lead: tuple[int, ...]) -> None:
        expected = (*lead, dim)
        if tuple(x.shape) != expected:
            what = "obs_dim" if name.startswith("observation") else "act_dim"
            raise ValueError(
                f"{name} has shape {tuple(x.shape)} but the model expects {expected} "
                f"({what}={dim}); the environment or dataset does not match this model"
            )

    def _step_timestep(self, timestep: torch.Tensor, batch: int) -> torch.Tensor:
        timestep = torch.as_tensor(timestep, device=self._device())
        if timestep.shape != (batch,):
            raise ValueError(f"timestep has shape {tuple(timestep.shape)}; expected ({batch},)")
        if timestep.is_floating_point():
            raise TypeError("timestep must be an integer tensor (torch.long)")
        if (timestep < 0).any():
            raise ValueError("timestep must be >= 0")
        return self.embed_timestep(timestep.long().clamp_max(self.config.max_timestep - 1))

    # ------------------------------------------------------------------ parallel
    def forward(
        self,
        observations: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor | None = None,
        state: State | None = None,
        resets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """Predict every action of a batch of sequences in parallel.

        Args:
            observations: ``[batch, time, obs_dim]`` raw (unnormalised) observations.
            actions: ``[batch, time, act_dim]`` actions taken (a_t is seen only after s_t).
            returns_to_go: ``[batch, time]`` unscaled returns-to-go.
            timesteps: ``[batch, time]`` integer timesteps in ``[0, max_timestep)``.
            mask: ``[batch, time]`` bool, False on (right) padding; padding changes no other
                prediction.
            state: backbone state carried in from earlier steps of the same episodes.
            resets: ``[batch, time]`` bool, True at the first step of an episode that starts
                inside the row (packed sequences, :func:`aaren_rl.data.samplers.pack_sequences`):
                from that step's first token on, the row attends to nothing before it.

        Returns:
            ``(pred_actions [batch, time, act_dim], state)``; pred_actions[:, t] is read from
            the backbone output at s_t. For ``action_space: discrete`` these are the logits
            (``actions`` are then one-hot).
        """
        if observations.dim() != 3:
            raise ValueError(
                f"observations must be [batch, time, obs_dim], got shape {tuple(observations.shape)}"
            )
        b, k = observations.shape[:2]
        self._check_features(observations, "observations", self.obs_dim, (b, k))
        self._check_features(actions, "actions", self.act_dim, (b, k))
        if tuple(returns_to_go.shape) != (b, k):
            raise ValueError(
                f"returns_to_go has shape {tuple(returns_to_go.shape)}; expected ({b}, {k})"
            )
        if tuple(timesteps.shape) != (b, k):
            raise ValueError(f"timesteps has shape {tuple(timesteps.shape)}; expected ({b}, {k})")
        if timesteps.is_floating_point():
            raise TypeError("timesteps must be an integer tensor (torch.long)")
        token_mask = None
        if mask is not None:
            if tuple(mask.shape) != (b, k):
                raise ValueError(f"mask has shape {tuple(mask.shape)}; expected ({b}, {k})")
            mask = mask.to(torch.bool)
            timesteps = torch.where(mask, timesteps, torch.zeros_like(timesteps))
            token_mask = mask.repeat_interleave(self.config.tokens_per_step, dim=1)
        if timesteps.numel() and (
            int(timesteps.min()) < 0 or int(timesteps.max()) >= self.config.max_timestep
        ):
            raise ValueError(
                f"timesteps span [{int(timesteps.min())}, {int(timesteps.max())}] but the model's "
                f"timestep embedding covers [0, {self.config.max_timestep - 1}]; raise "
                "'max_timestep' in the agent config to the longest episode length"
            )

        t_emb = self.embed_timestep(timesteps.long())
        if self.config.return_token == "merged":
            per_step = (
                self._state_token(observations, t_emb, returns_to_go),
                self._action_token(actions, t_emb),
            )
        else:
            per_step = (
                self._return_token(returns_to_go, t_emb),
                self._state_token(observations, t_emb),
                self._action_token(actions, t_emb),
            )
        n, d = len(per_step), self.config.d_model
        tokens = torch.stack(per_step, dim=2).reshape(b, n * k, d)
        token_resets = None
        if resets is not None:
            if tuple(resets.shape) != (b, k) or resets.dtype != torch.bool:
                raise ValueError(
                    f"resets must be a bool tensor of shape ({b}, {k}), got "
                    f"{resets.dtype} {tuple(resets.shape)}"
                )
            # the memory restarts at the step's first token; its other tokens follow it
            token_resets = torch.zeros(b, k, n, dtype=torch.bool, device=resets.device)
            token_resets[:, :, 0] = resets
            token_resets = token_resets.reshape(b, n * k)
        y, state = self.backbone(tokens, state=state, resets=token_resets, mask=token_mask)
        y = y.reshape(b, k, n, d)[:, :, n - 2]  # the output at s_t
        return self._predict_action(y), state

    # ------------------------------------------------------------------ recurrent
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """The empty memory for ``batch_size`` episodes (rows)."""
        device = self._device() if device is None else device
        return self.backbone.initial_state(batch_size, device=device, dtype=self._dtype())

    @torch.no_grad()
    def reset_state(self, state: State, done: torch.Tensor) -> State:
        """Rows where ``done [batch]`` is True start a new episode; the others are untouched."""
        return self.backbone.reset_state(state, done.to(device=self._device(), dtype=torch.bool))

    @torch.no_grad()
    def act(
        self,
        observation: torch.Tensor,
        return_to_go: torch.Tensor,
        timestep: torch.Tensor,
        state: State | None,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, State]:
        """Feed R_t and s_t of one step per row and predict a_t.

        The rollout step: it runs without autograd whatever the caller's grad mode, so the
        action and the state hold no graph and memory stays constant over any episode (train
        with ``forward``).

        Args:
            observation: ``[batch, obs_dim]`` raw observation.
            return_to_go: ``[batch]`` unscaled return-to-go.
            timestep: ``[batch]`` integer timestep (clamped at ``max_timestep - 1``).
            state: the rows' memory (None: a fresh episode for every row).
            sample: discrete actions only: draw from the softmax instead of the argmax.
            generator: the random stream of those draws.

        Returns:
            ``(action [batch, act_dim], state)``: the continuous action, or the one-hot
            discrete action. Call ``observe_action`` with the action that was executed before
            the next ``act``.

        Raises:
            NonFiniteInputError: a NaN or inf observation or return-to-go (the message names the
                env, i.e. the batch row, and its timestep).
        """
        observation = torch.as_tensor(observation, device=self._device())
        if observation.dim() != 2:
            raise ValueError(
                f"observation must be [batch, obs_dim], got shape {tuple(observation.shape)}"
            )
        b = observation.shape[0]
        self._check_features(observation, "observation", self.obs_dim, (b,))
        return_to_go = torch.as_tensor(return_to_go, device=self._device())
        if tuple(return_to_go.shape) != (b,):
            raise ValueError(f"return_to_go has shape {tuple(return_to_go.shape)}; expected ({b},)")
        check_step_inputs(timestep, observation=observation, return_to_go=return_to_go)
        t_emb = self._step_timestep(timestep, b)
        if state is None:
            state = self.initial_state(b)
        if self.config.return_token == "merged":
            token = self._state_token(observation, t_emb, return_to_go)
        else:
            _, state = self.backbone.step(self._return_token(return_to_go, t_emb), state)
            token = self._state_token(observation, t_emb)
        y, state = self.backbone.step(token, state)
        action = self._predict_action(y)
        if self.discrete:
            action = self.action_head.select(action, sample=sample, generator=generator)
        return action, state

    @torch.no_grad()
    def observe_action(self, action: torch.Tensor, timestep: torch.Tensor, state: State) -> State:
        """Feed the executed action a_t ``[batch, act_dim]`` (one-hot if discrete) at timestep t
        ``[batch]`` (without autograd, as ``act``)."""
        action = torch.as_tensor(action, device=self._device())
        b = action.shape[0] if action.dim() == 2 else -1
        self._check_features(action, "action", self.act_dim, (b,))
        check_step_inputs(timestep, action=action)
        t_emb = self._step_timestep(timestep, b)
        _, state = self.backbone.step(self._action_token(action, t_emb), state)
        return state


def stretch_timesteps(model: DecisionModel, max_timestep: int) -> DecisionModel:
    """Resize ``model``'s timestep table to ``max_timestep`` rows by linear interpolation.

    For fine-tuning on longer (or shorter) episodes than the model was trained on: row ``j``
    of the new table is the old table read at position ``j * (T_old - 1) / (T_new - 1)``
    (``torch.nn.functional.interpolate``, ``align_corners=True``), so the first and last rows
    stay as they were, and growing 101 rows to 1001 keeps every old row ``k`` at new row
    ``10 k``. This is how Vision Transformers resize their learned position embeddings
    for a new resolution. Every step keeps its place relative to the episode's length
    (a T-maze turn at t = L maps onto the turn the model learned). The model is changed in
    place (its ``config.max_timestep`` too) and returned; the other weights are untouched.

    Args:
        model: a DecisionModel; its table is ``[T_old, d_model]``.
        max_timestep: ``T_new >= 1``, the new number of rows.
    """
    if isinstance(max_timestep, bool) or not isinstance(max_timestep, int) or max_timestep < 1:
        raise ValueError(f"max_timestep must be a positive integer, got {max_timestep!r}")
    old = model.embed_timestep.weight.detach()
    if old.shape[0] == max_timestep:
        return model
    if old.shape[0] == 1:
        table = old.expand(max_timestep, -1)
    else:
        table = nn.functional.interpolate(
            old.t()[None], size=max_timestep, mode="linear", align_corners=True
        )[0].t()
    model.embed_timestep = nn.Embedding(max_timestep, old.shape[1]).to(old.device, old.dtype)
    with torch.no_grad():
        model.embed_timestep.weight.copy_(table)
    model.config = dataclasses.replace(model.config, max_timestep=max_timestep)
    return model


def build_decision_model(
    config: DecisionModelConfig | Mapping[str, Any],
    obs_dim: int,
    act_dim: int,
    state_mean: np.ndarray | torch.Tensor | None = None,
    state_std: np.ndarray | torch.Tensor | None = None,
    reward_scale: float = 1.0,
    return_max: float | None = None,
) -> DecisionModel:
    """A ``DecisionModel`` from a config or a plain mapping (see ``DecisionModelConfig``)."""
    if not isinstance(config, DecisionModelConfig):
        config = DecisionModelConfig.from_dict(config)
    return DecisionModel(
        obs_dim,
        act_dim,
        config,
        state_mean=state_mean,
        state_std=state_std,
        reward_scale=reward_scale,
        return_max=return_max,
    )
