"""Actor-critic policies with an Aaren memory, for :class:`~aaren_rl.sb3.ppo.AarenPPO`.

SB3's ``ActorCriticPolicy`` with a memory between the features extractor and the MLP heads::

    obs -> features extractor (SB3's: Flatten, NatureCNN for images, Combined for Dict)
        -> Linear (or a short causal convolution) -> AarenBackbone -> LayerNorm
        -> mlp_extractor (net_arch) -> action_net / value_net

The defaults are the memory benchmark's preset (``scripts/bench_sb3.py``, docs/sb3.md): one
layer of width 64 with 4 heads, learned recency decays, a step embedding, a short
convolution over the last 4 steps read by the heads beside the memory, the current features
read by the heads too, one memory for actor and critic (``n_heads=4, decay=True,
timestep_embedding=512, skip_features=True, critic="joint", short_conv=4, skip_conv=True``).
A plain Aaren memory, as in the paper, is ``decay=False, timestep_embedding=0,
skip_features=False, short_conv=0, skip_conv=False``.

Critic options, like RecurrentPPO's: ``critic="separate"`` (the critic has its own Aaren
memory), ``"shared"`` (the critic reads the actor's memory, detached, so only the actor's loss
trains it, as RecurrentPPO's ``shared_lstm``), ``"joint"`` (one memory that both losses
train, as PPO's shared features: half the memory's work; the default) or ``"none"`` (the
critic is a plain MLP on the features).

Two ways to run the memory, one truth (``tests/test_sb3_ppo.py`` holds them together):

- collection: ``forward`` / ``predict_values`` / ``predict`` take one observation per env and
  the memory's ``step``; an env whose ``episode_start`` is set is reset first by a select
  (``backbone.reset_state``: the empty memory is m=-inf, which a multiply would turn to NaN).
  AarenPPO's rollouts run the same step through
  :class:`~aaren_rl.sb3.fast_collect.FastCollectionStep` (weights fused once per rollout, no
  module calls; ``tests/test_sb3_fast_collect.py`` holds it to ``forward``);
- update: ``evaluate_actions`` takes padded sequences ``[n_seq, seq_len]`` and runs the
  backbone's parallel scan ``forward(x, state, resets, mask)`` once: the stored state carried
  in, resets at episode starts inside a sequence, padding masked. No Python loop over time.

States: :class:`AarenPPOState` ``(pi, vf, t, pi_conv, vf_conv)``: two backbone states (one
``(m, u, w)`` per layer, batch first; ``vf`` is ``()`` without a separate critic), each env's
step count in its episode and, with a short convolution, each memory's last ``K - 1``
features. ``pack_state`` flattens a backbone state to ``[batch, state_dim]`` for the rollout
buffer and ``unpack_state`` reverses it.

``timestep_embedding=N`` (0: off) adds a learned embedding of the step in the episode (clamped
at ``N - 1``) to every token, as Decision Aaren does: Aaren's query is a learned constant, so
without it a memory cannot tell the episode's first observation from a later one. In the scan
the step of each token comes from the carried count and the resets without a loop (the index
minus the index of the last reset, a ``cummax``).

``skip_features=True`` hands the MLP heads the current step's features beside the memory's
output (``[.., d_model + F]``), so the memory need not carry the present observation too.
``norm_first`` picks the block's pre-norm (default) or post-norm layout. The step embedding
starts at zero: ``nn.Embedding``'s N(0, 1) rows would drown the embedded observation.

``decay=True`` gives every head a learned recency rate (``AarenBackbone(decay=True)``): a past
token's score falls by the rate per step, so a head can average the last few observations (a
velocity from positions) as well as the whole episode.

``short_conv=K`` (0: off) puts a depthwise causal convolution over the last ``K`` steps in
place of the memory's input ``Linear`` (:class:`~aaren_rl.sb3.short_conv.ShortConv`, as
Mamba's ``conv1d``): a softmax average has positive weights and cannot form ``x_t - x_{t-1}``,
a learned filter can. Its history (the last ``K - 1`` raw features per env) lives in the state,
is emptied by a select at episode starts and is carried into the update's sequences like the
memory; the update applies it to whole sequences with ``K`` shifted views (no loop over time).
The convolution's output already reaches the heads through the block's residual stream;
``skip_conv=True`` also hands it to them directly, beside the memory's output
(``[.., 2 * d_model]``, before the step embedding is added).

``log_mass=True`` (off by default) hands each head's log mass to its output projection beside
the average (:func:`~aaren_rl.nn.aaren_attention.log_mass`): a softmax average divides away how
many tokens a head attended to, so it cannot tell a card seen 3 times from one seen 30 times;
the log of the normaliser, ``c + log(count)`` where the scores single out those tokens, can.
It costs nothing in the state (it is ``m + log u``) and keeps the scan and the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution, Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    MlpExtractor,
    NatureCNN,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import Tensor, nn
from torch.distributions import Categorical

from aaren_rl.nn.aaren import AarenBackbone, AarenBackboneState
from aaren_rl.nn.aaren_attention import AarenState
from aaren_rl.sb3.checks import check_episode_start, check_predict_observation, check_predict_state
from aaren_rl.sb3.names import check_no_lstm_keywords
from aaren_rl.sb3.short_conv import ShortConv

CRITICS = ("separate", "shared", "joint", "none")

# allowed actions, True = allowed: [batch, mask_dims] (numpy or torch), or None for all
MaybeMasks = Tensor | np.ndarray | None


def masked_distribution_for(action_space: spaces.Space) -> Distribution:
    """sb3-contrib's maskable distribution for ``action_space`` (Discrete, MultiDiscrete or
    MultiBinary); ``ValueError`` for any other space."""
    if not isinstance(action_space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        raise ValueError(
            "action masks need a Discrete, MultiDiscrete or MultiBinary action space, got "
            f"{action_space}; train without masks (use_masking=False)"
        )
    try:
        from sb3_contrib.common.maskable.distributions import make_masked_proba_distribution
    except ImportError as err:  # the sb3 extra
        raise ImportError(
            "action masking uses sb3-contrib's masked distributions: pip install 'aaren-rl[sb3]'"
        ) from err
    return make_masked_proba_distribution(action_space)


# a memory's one-step function, as AarenMemory.step: (features [B, F], state, episode_starts
# [B], t [B], history [B, K-1, F] | None) -> (latent [B, d], state, history)
MemoryStep = Callable[
    [Tensor, AarenBackboneState, Tensor, Tensor, Tensor | None],
    tuple[Tensor, AarenBackboneState, Tensor | None],
]


class AarenPPOState(NamedTuple):
    """The live memory of every env: ``pi`` (actor), ``vf`` (critic, ``()`` if none),
    ``t [n_envs]`` (long), the steps each env has taken in its episode, and with
    ``short_conv=K`` each memory's last ``K - 1`` features ``[n_envs, K - 1, F]`` (``pi_conv``,
    ``vf_conv``; None without)."""

    pi: AarenBackboneState
    vf: AarenBackboneState
    t: Tensor
    pi_conv: Tensor | None = None
    vf_conv: Tensor | None = None


def step_index(t0: Tensor, resets: Tensor) -> Tensor:
    """The step in the episode of every token of a sequence: ``t0 [N]`` steps taken before
    it, ``resets [N, T]`` bool -> ``[N, T]`` long (0 at a reset, counting up from there)."""
    idx = torch.arange(resets.shape[1], device=resets.device).expand_as(resets)
    last = torch.where(resets, idx, torch.full_like(idx, -1)).cummax(dim=1).values
    return torch.where(last >= 0, idx - last, t0.long()[:, None] + idx)


class AarenMemory(nn.Module):
    """``features [.., F]`` -> Linear (or :class:`ShortConv` with ``short_conv=K``) ->
    :class:`AarenBackbone` -> LayerNorm -> ``[.., d_model]`` (with ``skip_conv``, the
    convolution's output beside it: ``[.., 2 * d_model]``, ``out_dim``)."""

    def __init__(self, features_dim: int, d_model: int, n_layers: int, n_heads: int, d_ff: int | None,
                 chunk_size: int, timestep_embedding: int = 0, decay: bool = False,
                 norm_first: bool = True, short_conv: int = 0,
                 skip_conv: bool = False, dropout: float = 0.0,
                 log_mass: bool = False) -> None:  # fmt: skip
        super().__init__()
        if skip_conv and not short_conv:
            raise ValueError("skip_conv=True needs a short convolution (short_conv=K >= 1)")
        self.short_conv, self.skip_conv = short_conv, skip_conv
        self.out_dim = d_model * (2 if skip_conv else 1)
        self.embed = (
            ShortConv(features_dim, d_model, short_conv)
            if short_conv
            else nn.Linear(features_dim, d_model)
        )
        self.max_t = timestep_embedding
        self.time = nn.Embedding(timestep_embedding, d_model) if timestep_embedding else None
        if self.time is not None:  # zero at first: N(0, 1) rows would drown the observation
            nn.init.zeros_(self.time.weight)
        self.backbone = AarenBackbone(
            d_model,
            n_layers,
            n_heads,
            d_ff,
            dropout=dropout,
            norm_first=norm_first,
            chunk_size=chunk_size,
            decay=decay,
            log_mass=log_mass,
        )
        self.norm = nn.LayerNorm(d_model)

    def initial_history(self, batch_size: int) -> Tensor | None:
        """The short convolution's empty history ``[batch, K - 1, F]`` (None without one)."""
        return self.embed.initial_history(batch_size) if self.short_conv else None

    def _add_time(self, x: Tensor, t: Tensor) -> Tensor:
        if self.time is not None:
            x = x + self.time(t.clamp(0, self.max_t - 1))
        return x

    def step(
        self,
        features: Tensor,
        state: AarenBackboneState,
        episode_starts: Tensor,
        t: Tensor,
        history: Tensor | None = None,
    ) -> tuple[Tensor, AarenBackboneState, Tensor | None]:
        """``features [B, F]``, ``episode_starts [B]`` bool, ``t [B]`` the step in the episode
        (after the reset), ``history [B, K-1, F]`` with a short convolution ->
        ``(latent [B, d_model], state, history)``."""
        if bool(episode_starts.any()):
            state = self.backbone.reset_state(state, episode_starts)
        if self.short_conv:
            x, history = self.embed.step(features, history, episode_starts)
        else:
            x = self.embed(features)
        y, state = self.backbone.step(self._add_time(x, t), state)
        return self._out(y, x), state, history

    def _out(self, y: Tensor, x: Tensor) -> Tensor:
        """The memory's output ``y`` normalised, with ``skip_conv`` the tokens ``x`` beside it."""
        y = self.norm(y)
        return torch.cat([y, x], dim=-1) if self.skip_conv else y

    def sequence(
        self,
        features: Tensor,
        state: AarenBackboneState,
        resets: Tensor,
        mask: Tensor,
        t: Tensor,
        history: Tensor | None = None,
    ) -> Tensor:
        """``features [N, T, F]``, ``state`` (and ``history [N, K-1, F]``) carried into each row,
        ``resets``/``mask``/``t`` ``[N, T]`` -> ``latent [N, T, d_model]`` (one parallel scan)."""
        x = self.embed(features, history, resets) if self.short_conv else self.embed(features)
        y, _ = self.backbone(self._add_time(x, t), state, resets=resets, mask=mask)
        return self._out(y, x)


def pack_state(state: AarenBackboneState) -> Tensor:
    """A backbone state -> ``[batch, state_dim]`` (every layer's ``m``, ``u``, ``w``)."""
    if not state:
        return torch.zeros(0, 0)
    return torch.cat([torch.cat([s.m, s.u, s.w.flatten(1)], dim=1) for s in state], dim=1)


def unpack_state(flat: Tensor, n_layers: int, n_heads: int, head_dim: int) -> AarenBackboneState:
    """``[batch, state_dim]`` -> the backbone state :func:`pack_state` flattened."""
    per_layer = n_heads * (head_dim + 2)
    out = []
    for i in range(n_layers):
        chunk = flat[:, i * per_layer : (i + 1) * per_layer]
        m, u, w = chunk.split([n_heads, n_heads, n_heads * head_dim], dim=1)
        out.append(AarenState(m, u, w.unflatten(1, (n_heads, head_dim))))
    return tuple(out)


class AarenActorCriticPolicy(ActorCriticPolicy):
    """SB3's actor-critic policy with an Aaren memory (see the module docstring).

    Beyond ``ActorCriticPolicy``'s arguments: ``d_model``, ``n_layers``, ``n_heads``, ``d_ff``
    (default ``4 * d_model``) and ``chunk_size`` size the memory; ``critic`` is one of
    ``"separate"``, ``"shared"``, ``"joint"``, ``"none"``; ``timestep_embedding``, ``decay``,
    ``skip_features``, ``norm_first``, ``short_conv``, ``skip_conv`` and ``log_mass`` as in
    the module docstring. With the default Adam the
    optimiser is fused (``eps=1e-5`` as SB3's, one kernel for every parameter).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        d_model: int = 64,
        n_layers: int = 1,
        n_heads: int = 4,
        d_ff: int | None = None,
        chunk_size: int = 32,
        critic: str = "joint",
        timestep_embedding: int = 512,
        decay: bool = True,
        skip_features: bool = True,
        norm_first: bool = True,
        short_conv: int = 4,
        skip_conv: bool = True,
        dropout: float = 0.0,
        log_mass: bool = False,
        **unknown: Any,
    ) -> None:
        check_no_lstm_keywords(unknown)  # RecurrentPPO's keywords get their equivalents
        if critic not in CRITICS:
            raise ValueError(f"critic must be one of {CRITICS}, got {critic!r}")
        if critic == "shared" and not share_features_extractor:
            # as RecurrentPPO refuses shared_lstm without a shared features extractor: the
            # shared critic reads the actor's memory, which only the actor's features feed
            raise ValueError(
                'critic="shared" reads the actor\'s memory and needs '
                "share_features_extractor=True; for a critic with its own features use "
                'critic="separate" or critic="none"'
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        self._masked_dist: Distribution | None = None  # built on the first masked call
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
        if int(short_conv) < 0:
            raise ValueError(
                f"short_conv must be 0 (off) or the kernel size K >= 1, got {short_conv}"
            )
        self.short_conv = int(short_conv)
        self.skip_conv = bool(skip_conv)
        if self.skip_conv and not self.short_conv:
            raise ValueError("skip_conv=True needs a short convolution (short_conv=K >= 1)")
        self.memory_dim = d_model * (2 if self.skip_conv else 1)
        self.d_model, self.n_layers, self.n_heads = d_model, n_layers, n_heads
        self.head_dim = d_model // n_heads
        self.d_ff, self.chunk_size, self.critic = d_ff, chunk_size, critic
        self.timestep_embedding = int(timestep_embedding)
        self.decay = bool(decay)
        self.log_mass = bool(log_mass)
        self.skip_features = bool(skip_features)
        self.norm_first = bool(norm_first)
        if optimizer_kwargs is None and optimizer_class is torch.optim.Adam:
            # SB3's Adam (eps 1e-5), fused: one kernel for all parameters instead of a dozen
            # small ops per tensor (about a fifth of an update step on one CPU thread)
            optimizer_kwargs = dict(eps=1e-5, fused=True)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            ortho_init,
            use_sde,
            log_std_init,
            full_std,
            use_expln,
            squash_output,
            features_extractor_class,
            features_extractor_kwargs,
            share_features_extractor,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
        )

    # ------------------------------------------------------------------ building
    def _new_memory(self) -> AarenMemory:
        return AarenMemory(self.features_dim, self.d_model, self.n_layers, self.n_heads, self.d_ff,
                           self.chunk_size, self.timestep_embedding, self.decay,
                           self.norm_first, self.short_conv, self.skip_conv,
                           self.dropout, self.log_mass)  # fmt: skip

    def _build(self, lr_schedule: Schedule) -> None:
        # The memories exist before SB3 builds the heads and the optimiser over all parameters.
        self.actor_memory = self._new_memory()
        self.critic_memory = self._new_memory() if self.critic == "separate" else None
        self.critic_input = (
            nn.Sequential(
                nn.Linear(self.features_dim, self.memory_dim), nn.LayerNorm(self.memory_dim)
            )
            if self.critic == "none"
            else None
        )
        super()._build(lr_schedule)

    def _build_mlp_extractor(self) -> None:
        latent_dim = self.memory_dim + (self.features_dim if self.skip_features else 0)
        self.mlp_extractor = MlpExtractor(
            latent_dim, self.net_arch, self.activation_fn, device=self.device
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            share_features_extractor=self.share_features_extractor,
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_ff=self.d_ff,
            chunk_size=self.chunk_size,
            critic=self.critic,
            timestep_embedding=self.timestep_embedding,
            decay=self.decay,
            skip_features=self.skip_features,
            norm_first=self.norm_first,
            short_conv=self.short_conv,
            skip_conv=self.skip_conv,
            dropout=self.dropout,
            log_mass=self.log_mass,
        )
        return data

    # ------------------------------------------------------------------ states
    def initial_state(self, n_envs: int) -> AarenPPOState:
        """The empty memory of ``n_envs`` envs."""
        pi = self.actor_memory.backbone.initial_state(n_envs)
        vf = self.critic_memory.backbone.initial_state(n_envs) if self.critic_memory else ()
        t = torch.zeros(n_envs, dtype=torch.long, device=self.device)
        pi_conv = self.actor_memory.initial_history(n_envs)
        vf_conv = self.critic_memory.initial_history(n_envs) if self.critic_memory else None
        return AarenPPOState(pi, vf, t, pi_conv, vf_conv)

    @property
    def _memory_dim(self) -> int:
        return self.n_layers * self.n_heads * (self.head_dim + 2)

    @property
    def _history_dim(self) -> int:
        return max(self.short_conv - 1, 0) * self.features_dim

    @property
    def state_dim(self) -> int:
        """Numbers per env in the packed state (actor, critic, the short convolutions'
        histories, step count)."""
        memories = 2 if self.critic_memory is not None else 1
        return (self._memory_dim + self._history_dim) * memories + 1

    def pack(self, state: AarenPPOState) -> Tensor:
        """``state`` -> ``[n_envs, state_dim]`` (the step count as a float: exact below 2^24)."""
        parts = [pack_state(state.pi)] + ([pack_state(state.vf)] if state.vf else [])
        parts += [h.flatten(1) for h in (state.pi_conv, state.vf_conv) if h is not None]
        return torch.cat([*parts, state.t.to(parts[0].dtype)[:, None]], dim=1)

    def unpack(self, flat: Tensor) -> AarenPPOState:
        """``[n, state_dim]`` -> the state :meth:`pack` flattened."""
        size = self._memory_dim
        pi = unpack_state(flat[:, :size], self.n_layers, self.n_heads, self.head_dim)
        vf: AarenBackboneState = ()
        at = size
        if self.critic_memory is not None:
            vf = unpack_state(flat[:, at : at + size], self.n_layers, self.n_heads, self.head_dim)
            at += size
        histories: list[Tensor | None] = [None, None]
        if self.short_conv:
            shape = (self.short_conv - 1, self.features_dim)
            for i in range(2 if self.critic_memory is not None else 1):
                histories[i] = flat[:, at : at + self._history_dim].unflatten(1, shape)
                at += self._history_dim
        return AarenPPOState(pi, vf, flat[:, -1].round().long(), *histories)

    @staticmethod
    def select_rows(state: AarenPPOState, rows: slice | Tensor) -> AarenPPOState:
        """The state of some envs only (``rows`` indexes the batch dimension)."""

        def take(s: AarenBackboneState) -> AarenBackboneState:
            return tuple(AarenState(x.m[rows], x.u[rows], x.w[rows]) for x in s)

        def rows_of(h: Tensor | None) -> Tensor | None:
            return None if h is None else h[rows]

        return AarenPPOState(
            take(state.pi), take(state.vf), state.t[rows], rows_of(state.pi_conv),
            rows_of(state.vf_conv),
        )  # fmt: skip

    # ------------------------------------------------------------------ one step per env
    def _features(self, obs: PyTorchObs) -> tuple[Tensor, Tensor]:
        features = self.extract_features(obs)
        if self.share_features_extractor:
            return features, features
        return features

    def _latents_step(
        self,
        obs: PyTorchObs,
        state: AarenPPOState,
        episode_starts: Tensor,
        memory_steps: tuple[MemoryStep, MemoryStep | None] | None = None,
    ) -> tuple[Tensor, Tensor, AarenPPOState]:
        """One step of every env up to the MLP heads' inputs. ``memory_steps``: the actor's
        and the critic's memory step (None: the memories' own ``step``; the fast collection
        step passes its fused ones)."""
        actor_step, critic_step = memory_steps or (
            self.actor_memory.step,
            None if self.critic_memory is None else self.critic_memory.step,
        )
        pi_features, vf_features = self._features(obs)
        starts = episode_starts.to(torch.bool).reshape(-1)
        t = torch.where(starts, torch.zeros_like(state.t), state.t)
        latent_pi, pi_state, pi_conv = actor_step(pi_features, state.pi, starts, t, state.pi_conv)
        vf_state: AarenBackboneState = ()
        vf_conv, latent_vf = None, None
        if critic_step is not None:
            latent_vf, vf_state, vf_conv = critic_step(
                vf_features, state.vf, starts, t, state.vf_conv
            )
        latent_pi, latent_vf = self._head_inputs(latent_pi, latent_vf, pi_features, vf_features)
        return latent_pi, latent_vf, AarenPPOState(pi_state, vf_state, t + 1, pi_conv, vf_conv)

    def _skip(self, latent: Tensor, features: Tensor) -> Tensor:
        """``latent [.., memory_dim]`` -> the heads' input: with ``skip_features``, the current
        step's features ``[.., F]`` beside the memory's output."""
        return torch.cat([latent, features], dim=-1) if self.skip_features else latent

    def _head_inputs(
        self, latent_pi: Tensor, latent_vf: Tensor | None, pi_features: Tensor, vf_features: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The memories' latents ``[.., memory_dim]`` -> the actor's and the critic's MLP inputs.

        ``latent_vf`` is None when the critic has no memory of its own: it reads the actor's
        (``"joint"``), the actor's detached (``"shared"``) or the features alone (``"none"``).
        With the joint critic and one features tensor the two inputs are the same tensor."""
        pi_input = self._skip(latent_pi, pi_features)
        if latent_vf is None:
            if self.critic == "joint" and vf_features is pi_features:
                return pi_input, pi_input
            if self.critic == "joint":
                latent_vf = latent_pi
            elif self.critic == "shared":
                latent_vf = latent_pi.detach()
            else:
                latent_vf = self.critic_input(vf_features)
        return pi_input, self._skip(latent_vf, vf_features)

    def forward(  # type: ignore[override]
        self,
        obs: PyTorchObs,
        state: AarenPPOState,
        episode_starts: Tensor,
        deterministic: bool = False,
        action_masks: MaybeMasks = None,
    ) -> tuple[Tensor, Tensor, Tensor, AarenPPOState]:
        """One step of every env: ``obs [n_envs, ...]``, ``episode_starts [n_envs]``,
        ``action_masks [n_envs, mask_dims]`` (optional, True = allowed) ->
        ``(actions, values [n_envs, 1], log_prob [n_envs], new state)``."""
        latent_pi, latent_vf, state = self._latents_step(obs, state, episode_starts)
        distribution = self.action_distribution(
            self.mlp_extractor.forward_actor(latent_pi), action_masks
        )
        actions = distribution.get_actions(deterministic=deterministic)
        values = self.value_net(self.mlp_extractor.forward_critic(latent_vf))
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))
        return actions, values, log_prob, state

    def predict_values(  # type: ignore[override]
        self, obs: PyTorchObs, state: AarenPPOState, episode_starts: Tensor
    ) -> Tensor:
        """``values [n_envs, 1]`` of one step (the memory is stepped, the new state dropped)."""
        _, latent_vf, _ = self._latents_step(obs, state, episode_starts)
        return self.value_net(self.mlp_extractor.forward_critic(latent_vf))

    def get_distribution(  # type: ignore[override]
        self,
        obs: PyTorchObs,
        state: AarenPPOState,
        episode_starts: Tensor,
        action_masks: MaybeMasks = None,
    ) -> tuple[Distribution, AarenPPOState]:
        """The action distribution of one step (masked with ``action_masks``) and the new
        state."""
        latent_pi, _, state = self._latents_step(obs, state, episode_starts)
        latent = self.mlp_extractor.forward_actor(latent_pi)
        return self.action_distribution(latent, action_masks), state

    def action_distribution(
        self, latent_actor: Tensor, action_masks: MaybeMasks = None
    ) -> Distribution:
        """SB3's action distribution of ``latent_actor [B, latent]``; with ``action_masks [B,
        mask_dims]`` (True = allowed) sb3-contrib's masked one (``MaskableCategorical``: the
        disallowed logits set to -1e8, their entropy terms zeroed), for Discrete,
        MultiDiscrete and MultiBinary action spaces."""
        if action_masks is None:
            return self._get_action_dist_from_latent(latent_actor)
        if self._masked_dist is None:
            self._masked_dist = masked_distribution_for(self.action_space)
        distribution = self._masked_dist.proba_distribution(self.action_net(latent_actor))
        distribution.apply_masking(action_masks)
        return distribution

    # ------------------------------------------------------------------ whole sequences
    def evaluate_actions(  # type: ignore[override]
        self,
        obs: PyTorchObs,
        actions: Tensor,
        state: AarenPPOState,
        episode_starts: Tensor,
        mask: Tensor,
        action_masks: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Values, log-probabilities and entropies of padded sequences, in one scan.

        Args:
            obs: ``[N * T, ...]`` observations (or a dict of them), sequence-major.
            actions: ``[M, ...]`` the actions taken at the valid steps (``M = mask.sum()``).
            state: the state carried into each of the ``N`` sequences.
            episode_starts: ``[N, T]`` bool, a new episode at that step (the memory restarts).
            mask: ``[N, T]`` bool, False on padding.
            action_masks: ``[M, mask_dims]`` the allowed actions at the valid steps (None:
                every action allowed).

        Returns:
            ``(values [M], log_prob [M], entropy [M] or None)`` at the valid steps, in order.
        """
        n, t = mask.shape
        pi_features, vf_features = self._features(obs)
        resets, valid = episode_starts.to(torch.bool), mask.to(torch.bool)
        flat_valid = valid.reshape(-1)
        steps = step_index(state.t, resets)
        latent_pi = self.actor_memory.sequence(
            pi_features.reshape(n, t, -1), state.pi, resets, valid, steps, state.pi_conv
        )
        latent_pi = latent_pi.reshape(n * t, -1)[flat_valid]
        latent_vf = None
        if self.critic_memory is not None:
            latent_vf = self.critic_memory.sequence(
                vf_features.reshape(n, t, -1), state.vf, resets, valid, steps, state.vf_conv
            ).reshape(n * t, -1)[flat_valid]
        pi_valid = pi_features[flat_valid]  # the valid steps' features, gathered once
        vf_valid = pi_valid if vf_features is pi_features else vf_features[flat_valid]
        latent_pi, latent_vf = self._head_inputs(latent_pi, latent_vf, pi_valid, vf_valid)
        latent_actor = self.mlp_extractor.forward_actor(latent_pi)
        values = self.value_net(self.mlp_extractor.forward_critic(latent_vf)).flatten()
        if action_masks is not None:
            distribution = self.action_distribution(latent_actor, action_masks)
            return values, distribution.log_prob(actions), distribution.entropy()
        if isinstance(self.action_dist, CategoricalDistribution):
            # SB3's Categorical(logits=...) without torch's argument checks (about 60 us per
            # minibatch): the same normalised logits, log-probabilities and entropy
            dist = Categorical(logits=self.action_net(latent_actor), validate_args=False)
            return values, dist.log_prob(actions), dist.entropy()
        distribution = self._get_action_dist_from_latent(latent_actor)
        return values, distribution.log_prob(actions), distribution.entropy()

    # ------------------------------------------------------------------ SB3 predict
    def predict(  # type: ignore[override]
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: MaybeMasks = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """SB3's recurrent ``predict``: ``state`` is the actor memory as a tuple of numpy
        arrays (``m [n_envs, heads]``, ``u [n_envs, heads]``, ``w [n_envs, heads, head_dim]``
        per layer, then with ``short_conv=K`` the last ``K - 1`` features ``[n_envs, K - 1,
        F]``, then the step count ``t [n_envs]``); ``state=None`` starts every env afresh;
        ``episode_start [n_envs]`` restarts those envs before their observation is used;
        ``action_masks [n_envs, mask_dims]`` (True = allowed) masks the actions as
        sb3-contrib's MaskablePPO does."""
        self.set_training_mode(False)
        obs_tensor, vectorized = self.obs_to_tensor(observation)
        check_predict_observation(obs_tensor)
        n = _batch_size(obs_tensor)
        if state is None:
            memory = self.actor_memory.backbone.initial_state(n)
            history = self.actor_memory.initial_history(n)
            t = torch.zeros(n, dtype=torch.long, device=self.device)
            episode_start = np.ones(n, dtype=bool)
        else:
            check_predict_state(state, self._predict_state_shapes(n), n)
            arrays = [torch.as_tensor(np.asarray(a), device=self.device) for a in state]
            memory = tuple(AarenState(*arrays[3 * i : 3 * i + 3]) for i in range(self.n_layers))
            history = arrays[-2] if self.short_conv else None
            t = arrays[-1].long()
        starts = (
            np.zeros(n, bool) if episode_start is None else check_episode_start(episode_start, n)
        )
        with torch.no_grad():
            features = self._features(obs_tensor)[0]
            starts_t = torch.as_tensor(starts.reshape(-1), device=self.device)
            t = torch.where(starts_t, torch.zeros_like(t), t)
            latent, memory, history = self.actor_memory.step(features, memory, starts_t, t, history)
            latent = self._skip(latent, features)
            distribution = self.action_distribution(
                self.mlp_extractor.forward_actor(latent), action_masks
            )
            actions = distribution.get_actions(deterministic=deterministic).cpu().numpy()
        actions = actions.reshape((-1, *self.action_space.shape))
        if isinstance(self.action_space, spaces.Box):
            if self.squash_output:
                actions = self.unscale_action(actions)
            else:
                actions = np.clip(actions, self.action_space.low, self.action_space.high)
        if not vectorized:
            actions = actions.squeeze(axis=0)
        arrays_out = [x.cpu().numpy() for s in memory for x in s]
        if history is not None:
            arrays_out.append(history.cpu().numpy())
        new_state = (*arrays_out, (t + 1).cpu().numpy())
        return actions, new_state

    def _predict_state_shapes(self, n_envs: int) -> list[tuple[int, ...]]:
        """The shapes of the arrays in :meth:`predict`'s state for ``n_envs`` envs."""
        memory = self.actor_memory.backbone.initial_state(n_envs)
        shapes = [tuple(x.shape) for s in memory for x in s]
        history = self.actor_memory.initial_history(n_envs)
        if history is not None:
            shapes.append(tuple(history.shape))
        return [*shapes, (n_envs,)]


def _batch_size(obs: PyTorchObs) -> int:
    if isinstance(obs, dict):
        return next(iter(obs.values())).shape[0]
    return obs.shape[0]


class MlpAarenPolicy(AarenActorCriticPolicy):
    """Box/Discrete observations, flattened (SB3's ``FlattenExtractor``)."""


class CnnAarenPolicy(AarenActorCriticPolicy):
    """Image observations through SB3's ``NatureCNN`` (``normalize_images`` divides uint8
    pixels by 255; channel-last images are transposed by SB3's ``VecTransposeImage``, which
    the algorithm adds, and by ``predict``), as sb3-contrib's ``CnnLstmPolicy``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("features_extractor_class", NatureCNN)
        super().__init__(*args, **kwargs)


class MultiInputAarenPolicy(AarenActorCriticPolicy):
    """Dict observations through SB3's ``CombinedExtractor``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("features_extractor_class", CombinedExtractor)
        super().__init__(*args, **kwargs)
