"""AarenPPO's deterministic policy step as a pure function of its inputs, for ONNX export.

:class:`PPOPolicyGraph` computes what
:meth:`~aaren_rl.sb3.policies.AarenActorCriticPolicy.predict` computes with
``deterministic=True`` (the actor's path only: the critic is not needed to act), with the
state as explicit inputs and outputs::

    (observation [B, *obs_shape], episode_start [B] bool,
     m [B, L, H], u [B, L, H], w [B, L, H, Dh], (history [B, K-1, F]), t [B] int64)
    -> (action, m', u', w', (history'), t')

Rows whose ``episode_start`` is set are emptied first (``m = -inf``, ``u = w = 0``, an empty
short-convolution history, ``t = 0``) by a select, as ``predict`` does. The action is the
distribution's mode: a Box policy's mean clipped to the action space (``predict``'s
``np.clip``), a Discrete policy's argmax (plus the space's ``start``). The state is the actor
memory of ``predict``'s state tuple, layers stacked; ``t`` is the step count after this step.
"""

from __future__ import annotations

import torch
from gymnasium import spaces
from torch import Tensor, nn

from .aaren_state import empty_rows, split_layers, stack_layers

__all__ = ["PPOPolicyGraph"]


class PPOPolicyGraph(nn.Module):
    """The state-in/state-out deterministic actor of an ``AarenActorCriticPolicy``.

    Args:
        policy: the trained policy (``AarenPPO(...).policy``); read, not modified.
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        if not isinstance(policy.observation_space, spaces.Box):
            raise ValueError(
                f"ONNX export takes Box observations; this policy observes "
                f"{policy.observation_space} (flatten or wrap the observation first)"
            )
        space = policy.action_space
        if not isinstance(space, (spaces.Box, spaces.Discrete)):
            raise ValueError(f"ONNX export takes Box or Discrete actions, not {space}")
        if getattr(policy, "squash_output", False) or getattr(policy, "use_sde", False):
            raise ValueError("ONNX export does not cover gSDE / squashed outputs (use_sde=False)")
        self.policy = policy
        self.memory = policy.actor_memory
        self.discrete = isinstance(space, spaces.Discrete)
        self.n_layers, self.n_heads, self.head_dim = (
            policy.n_layers,
            policy.n_heads,
            policy.head_dim,
        )
        self.short_conv = policy.short_conv
        self.obs_shape = tuple(policy.observation_space.shape)
        self.action_start = int(space.start) if self.discrete else 0
        if not self.discrete:
            self.register_buffer("low", torch.as_tensor(space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(space.high, dtype=torch.float32))

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("m", "u", "w", *(("history",) if self.short_conv else ()), "t")

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-env shape of every state field (the batch dimension left out)."""
        out = {
            "m": (self.n_layers, self.n_heads),
            "u": (self.n_layers, self.n_heads),
            "w": (self.n_layers, self.n_heads, self.head_dim),
        }
        if self.short_conv:
            out["history"] = (self.short_conv - 1, self.policy.features_dim)
        out["t"] = ()
        return out

    def initial_state(self, batch_size: int) -> tuple[Tensor, ...]:
        """The empty state of ``batch_size`` envs, in :attr:`state_names` order."""
        shapes = self.state_shapes()
        b = batch_size
        out = [
            torch.full((b, *shapes["m"]), float("-inf")),
            torch.zeros(b, *shapes["u"]),
            torch.zeros(b, *shapes["w"]),
        ]
        if self.short_conv:
            out.append(torch.zeros(b, *shapes["history"]))
        out.append(torch.zeros(b, dtype=torch.long))
        return tuple(out)

    def forward(
        self, observation: Tensor, episode_start: Tensor, m: Tensor, u: Tensor, w: Tensor, *rest
    ) -> tuple[Tensor, ...]:
        """One step of every env (shapes in the module docstring)."""
        history = rest[0] if self.short_conv else None
        t = rest[-1]
        starts = episode_start.to(torch.bool)
        m, u, w = empty_rows(m, u, w, starts)
        t = torch.where(starts, torch.zeros_like(t), t)
        features = self.policy._features(observation)[0]
        memory = self.memory
        if self.short_conv:
            x, history = memory.embed.step(features, history, starts)
        else:
            x = memory.embed(features)
        state = split_layers(m, u, w)
        y, state = memory.backbone.step(memory._add_time(x, t), state)
        latent = self.policy._skip(memory._out(y, x), features)
        out = self.policy.action_net(self.policy.mlp_extractor.forward_actor(latent))
        if self.discrete:
            action = out.argmax(dim=-1) + self.action_start
        else:
            action = torch.minimum(torch.maximum(out, self.low), self.high)
            action = action.reshape(-1, *self.policy.action_space.shape)
        new = list(stack_layers(state))
        if self.short_conv:
            new.append(history)
        return (action, *new, t + 1)
