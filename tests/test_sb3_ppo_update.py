"""AarenPPO's update helpers against what SB3's PPO and torch compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from aaren_rl.sb3.ppo import _mean, clip_grad_norm


@pytest.mark.parametrize("max_norm", [0.5, 1e9])
def test_clip_grad_norm_equals_torchs_bit_for_bit(max_norm):
    generator = torch.Generator().manual_seed(0)
    shapes = [(64, 64), (64,), (3, 7), (1,), (256, 64)]
    ours = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    theirs = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for a, b in zip(ours, theirs, strict=True):
        a.grad = torch.randn(a.shape, generator=generator) * 3
        b.grad = a.grad.clone()
    ours.append(torch.nn.Parameter(torch.zeros(2)))  # no gradient: skipped by both
    theirs.append(torch.nn.Parameter(torch.zeros(2)))
    total = clip_grad_norm(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert torch.equal(total, expected)
    for a, b in zip(ours[:-1], theirs[:-1], strict=True):
        assert torch.equal(a.grad, b.grad)
    if max_norm < 1:  # it did clip
        assert float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours[:-1]]))) == pytest.approx(max_norm, rel=1e-5)  # fmt: skip


def test_mean_of_tensor_stats_equals_sb3s_mean_of_items():
    generator = torch.Generator().manual_seed(0)
    stats = [torch.randn((), generator=generator) * 10 ** float(i % 5) for i in range(40)]
    assert _mean(stats) == np.mean([s.item() for s in stats])
    assert type(_mean(stats)) is type(np.mean([s.item() for s in stats]))


def test_evaluate_actions_categorical_equals_sb3s_distribution(monkeypatch):
    """The update's Categorical (no argument checks) gives SB3's log-probs and entropy."""
    import aaren_rl.sb3.policies as policies
    from aaren_rl.sb3.policies import AarenActorCriticPolicy

    policy = AarenActorCriticPolicy(
        spaces.Box(-10.0, 10.0, (4,)), spaces.Discrete(3), lambda _: 1e-3,
        net_arch=[16], d_model=16, n_heads=2, critic="joint", skip_features=True, short_conv=3,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    n, t = 3, 8
    obs = torch.randn(n * t, 4, generator=generator)
    starts = torch.rand(n, t, generator=generator) < 0.3
    mask = torch.ones(n, t, dtype=torch.bool)
    mask[2, 5:] = False
    actions = torch.randint(0, 3, (int(mask.sum()),), generator=generator)
    state = policy.initial_state(n)
    ours = policy.evaluate_actions(obs, actions, state, starts, mask)
    monkeypatch.setattr(policies, "CategoricalDistribution", type("NotSB3s", (), {}))
    theirs = policy.evaluate_actions(obs, actions, state, starts, mask)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
