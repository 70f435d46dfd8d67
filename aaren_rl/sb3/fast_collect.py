"""The rollout's policy step without autograd's and ``nn.Module``'s overhead, for AarenPPO.

:class:`FastCollectionStep` computes what
:meth:`~aaren_rl.sb3.policies.AarenActorCriticPolicy.forward` computes for one step of every
env (``(actions, values, log_prob, new state)``), with the same operations in the same order,
so that its results equal the reference's up to float32 rounding and the same random draws
give the same actions (``tests/test_sb3_fast_collect.py`` holds the two together; the update's
scan is held against what collection stored by ``tests/test_sb3_ppo.py``). What it saves,
per step (``scripts/profile_aaren_ppo.py``; docs/sb3_speed.md):

- work that depends only on the weights is done once per rollout, when the step is built: the
  collapsed key path (``AarenAttention.score_weights``), the recency rates (a softplus), the
  short convolution's flipped taps;
- about 25 ``nn.Module`` calls become the functional ops they wrap (``F.linear``,
  ``F.layer_norm``, ...);
- with a Discrete action space the categorical is torch's ``Categorical`` built without its
  argument validation (as ``evaluate_actions`` builds it), sampled and scored as SB3's
  distribution does. Other action spaces go through SB3's distribution.

The weights are read when the step is built: AarenPPO builds one at the start of every
rollout, while the weights are fixed (``collect_rollouts`` runs under ``torch.no_grad``, the
policy in eval mode). A step built before an optimiser step would read stale collapsed keys;
build a new one. Every tensor stays on the policy's device (no CPU-only op).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import Tensor, nn
from torch.distributions import Categorical

from aaren_rl.nn.aaren import AarenBackboneState, AarenBlock
from aaren_rl.nn.aaren_attention import LOG_MASS_FLOOR, AarenState, aaren_step, log_mass
from aaren_rl.sb3.policies import AarenActorCriticPolicy, AarenMemory, AarenPPOState, MaybeMasks

__all__ = ["FastCollectionStep"]


def _layer_norm(norm: nn.LayerNorm) -> Callable[[Tensor], Tensor]:
    shape, weight, bias, eps = norm.normalized_shape, norm.weight, norm.bias, norm.eps
    return lambda x: F.layer_norm(x, shape, weight, bias, eps)


def _sequential(seq: nn.Module) -> Callable[[Tensor], Tensor]:
    """An ``nn.Sequential`` of Linears, activations and Dropouts (eval mode) as one function;
    any other module is called as it is."""
    ops: list[Callable[[Tensor], Tensor]] = []
    for module in seq.children() if isinstance(seq, nn.Sequential) else [seq]:
        if isinstance(module, nn.Linear):
            ops.append(lambda x, w=module.weight, b=module.bias: F.linear(x, w, b))
        elif isinstance(module, nn.Tanh):
            ops.append(torch.tanh)
        elif isinstance(module, nn.ReLU):
            ops.append(torch.relu)
        elif isinstance(module, (nn.Dropout, nn.Identity)):  # eval mode: the identity
            continue
        else:
            ops.append(module)

    def run(x: Tensor) -> Tensor:
        for op in ops:
            x = op(x)
        return x

    return run


class _BlockStep:
    """One :class:`AarenBlock`'s ``step`` with the weight-only work done at construction."""

    def __init__(self, block: AarenBlock) -> None:
        attn = block.attn
        self.kappa, self.const = attn.score_weights()  # [H, D], [H]
        self.rate = attn.decay_rate()  # [H] or None
        self.v_w, self.v_b = attn.v_proj.weight, attn.v_proj.bias
        self.o_w, self.o_b = attn.out_proj.weight, attn.out_proj.bias
        self.heads, self.head_dim = attn.n_heads, attn.head_dim
        self.log_mass = attn.log_mass
        self.norm1, self.norm2 = _layer_norm(block.norm1), _layer_norm(block.norm2)
        self.ff = _sequential(block.ff)
        self.norm_first = block.norm_first

    def attend(self, h: Tensor, state: AarenState) -> tuple[Tensor, AarenState]:
        scores = F.linear(h, self.kappa, self.const)
        values = F.linear(h, self.v_w, self.v_b).unflatten(-1, (self.heads, self.head_dim))
        if self.rate is not None:
            state = AarenState(state.m - self.rate, state.u, state.w)
        out, state = aaren_step(scores, values, state)
        read = out.flatten(-2)
        if self.log_mass:  # as AarenAttention._project
            read = torch.cat([read, log_mass(state).clamp_min(LOG_MASS_FLOOR)], dim=-1)
        return F.linear(read, self.o_w, self.o_b), state

    def __call__(self, x: Tensor, state: AarenState) -> tuple[Tensor, AarenState]:
        if self.norm_first:
            a, state = self.attend(self.norm1(x), state)
            x = x + a
            return x + self.ff(self.norm2(x)), state
        a, state = self.attend(x, state)
        x = self.norm1(x + a)
        return self.norm2(x + self.ff(x)), state


class _MemoryStep:
    """One :class:`~aaren_rl.sb3.policies.AarenMemory`'s ``step`` (same arguments, same
    results) with the weight-only work done at construction."""

    def __init__(self, memory: AarenMemory) -> None:
        self.backbone = memory.backbone
        self.short_conv, self.skip_conv = memory.short_conv, memory.skip_conv
        embed = memory.embed
        if self.short_conv:
            self.taps = embed.taps.flip(0)  # [K, D], oldest lag first, as the window
            self.proj_w, self.proj_b = embed.proj.weight, embed.proj.bias
        else:
            self.proj_w, self.proj_b = embed.weight, embed.bias
        self.time = None if memory.time is None else memory.time.weight
        self.max_t = memory.max_t
        self.blocks = [_BlockStep(layer) for layer in memory.backbone.layers]
        self.norm = _layer_norm(memory.norm)

    def __call__(
        self,
        features: Tensor,
        state: AarenBackboneState,
        starts: Tensor,
        t: Tensor,
        history: Tensor | None,
    ) -> tuple[Tensor, AarenBackboneState, Tensor | None]:
        if bool(starts.any()):
            state = self.backbone.reset_state(state, starts)
        if self.short_conv:  # ShortConv.step
            history = torch.where(starts[:, None, None], torch.zeros_like(history), history)
            window = torch.cat([history, features[:, None]], dim=1)  # [B, K, F]
            z = window @ self.proj_w.t()
            x = (z * self.taps).sum(1) + self.proj_b
            history = window[:, 1:]
        else:
            x = F.linear(features, self.proj_w, self.proj_b)
        y = x if self.time is None else x + F.embedding(t.clamp(0, self.max_t - 1), self.time)
        new_state = []
        for block, layer_state in zip(self.blocks, state, strict=True):
            y, s = block(y, layer_state)
            new_state.append(s)
        y = self.norm(y)
        if self.skip_conv:
            y = torch.cat([y, x], dim=-1)
        return y, tuple(new_state), history


class FastCollectionStep:
    """``policy.forward`` for collection, built from the policy's current weights.

    ``step = FastCollectionStep(policy)`` then ``step(obs, state, episode_starts)`` ->
    ``(actions, values [n_envs, 1], log_prob [n_envs], new state)`` as
    :meth:`~aaren_rl.sb3.policies.AarenActorCriticPolicy.forward` returns them (call it under
    ``torch.no_grad``; build a new one after the weights change).
    """

    def __init__(self, policy: AarenActorCriticPolicy) -> None:
        self.policy = policy
        self.actor = _MemoryStep(policy.actor_memory)
        self.critic = None if policy.critic_memory is None else _MemoryStep(policy.critic_memory)
        self.forward_actor = _sequential(policy.mlp_extractor.policy_net)
        self.forward_critic = _sequential(policy.mlp_extractor.value_net)
        self.action_net = _sequential(policy.action_net)
        self.value_net = _sequential(policy.value_net)
        self.categorical = isinstance(policy.action_space, spaces.Discrete)

    def __call__(
        self,
        obs: PyTorchObs,
        state: AarenPPOState,
        episode_starts: Tensor,
        deterministic: bool = False,
        action_masks: MaybeMasks = None,
    ) -> tuple[Tensor, Tensor, Tensor, AarenPPOState]:
        """One step of every env: ``obs [n_envs, ...]``, ``episode_starts [n_envs]``,
        ``action_masks [n_envs, mask_dims]`` (optional: the policy's masked distribution)."""
        policy = self.policy
        latent_pi, latent_vf, new_state = policy._latents_step(
            obs, state, episode_starts, (self.actor, self.critic)
        )
        latent_actor = self.forward_actor(latent_pi)
        values = self.value_net(self.forward_critic(latent_vf))
        if action_masks is not None:
            distribution = policy.action_distribution(latent_actor, action_masks)
            actions = distribution.get_actions(deterministic=deterministic)
            log_prob = distribution.log_prob(actions)
        elif self.categorical:
            # SB3's CategoricalDistribution without torch's argument checks, as in the update
            dist = Categorical(logits=self.action_net(latent_actor), validate_args=False)
            actions = torch.argmax(dist.probs, dim=1) if deterministic else dist.sample()
            log_prob = dist.log_prob(actions)
        else:
            distribution = policy._get_action_dist_from_latent(latent_actor)
            actions = distribution.get_actions(deterministic=deterministic)
            log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *policy.action_space.shape))
        return actions, values, log_prob, new_state
