"""Packed prefixes: one row with memory resets computes what the padded rows compute.

The reference is the padded batch the same sampler draws with ``pack=False`` (same seed, so
the same episodes and lengths): its loss and every gradient must equal the packed batch's, on
both backbones (Aaren's segmented scan and the Transformer's segment mask).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aaren_rl.agents.decision_model import build_decision_model
from aaren_rl.agents.trainer import TrainConfig, decision_loss, make_sampler
from aaren_rl.data.samplers import PrefixSampler, pack_sequences
from aaren_rl.data.trajectories import TrajectoryDataset


def _dataset(seed: int = 0) -> TrajectoryDataset:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 40, size=12)
    n = int(lengths.sum())
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    actions = np.tanh(obs[:, :2]).astype(np.float32)
    rewards = rng.normal(size=n).astype(np.float32)
    terminals = np.zeros(n, dtype=bool)
    terminals[np.cumsum(lengths) - 1] = True
    return TrajectoryDataset.from_arrays(obs, actions, rewards, terminals, None)


def test_pack_keeps_every_real_step_in_order_with_resets_at_sequence_starts():
    ds = _dataset()
    padded = PrefixSampler(ds, max_len=30, seed=3).sample(5)
    packed = pack_sequences(padded)
    lengths = padded.lengths
    assert packed.observations.shape == (1, lengths.sum(), 3)
    assert packed.mask.all()
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    np.testing.assert_array_equal(np.flatnonzero(packed.resets[0]), starts[1:])
    # every step starts at timestep 0 after a reset, and counts up inside its sequence
    for row, (start, n) in enumerate(zip(starts, lengths, strict=True)):
        np.testing.assert_array_equal(packed.timesteps[0, start : start + n], np.arange(n))
        np.testing.assert_array_equal(
            packed.observations[0, start : start + n], padded.observations[row, :n]
        )
        np.testing.assert_array_equal(packed.actions[0, start : start + n], padded.actions[row, :n])
        np.testing.assert_array_equal(
            packed.returns_to_go[0, start : start + n], padded.returns_to_go[row, :n]
        )
    np.testing.assert_array_equal(packed.episodes, padded.episodes)
    with pytest.raises(ValueError, match="packed already"):
        pack_sequences(packed)


def test_packed_sampler_draws_the_same_sequences_as_the_padded_one():
    ds = _dataset()
    for mode in ("prefix", "full"):
        a = PrefixSampler(ds, max_len=40, mode=mode, seed=7)
        b = PrefixSampler(ds, max_len=40, mode=mode, seed=7, pack=True)
        for _ in range(3):
            padded, packed = a.sample(4), b.sample(4)
            np.testing.assert_array_equal(packed.observations, pack_sequences(padded).observations)
    with pytest.raises(ValueError, match="pad_to_max_len"):
        PrefixSampler(ds, max_len=40, pack=True, pad_to_max_len=True)


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
@pytest.mark.parametrize("return_token", ["separate", "merged"])
def test_packed_loss_and_gradients_equal_the_padded_ones(backbone, return_token):
    ds = _dataset()
    torch.manual_seed(0)
    model = build_decision_model(
        {
            "backbone": backbone,
            "d_model": 16,
            "n_layers": 2,
            "n_heads": 2,
            "dropout": 0.0,
            "context": 40,
            "max_timestep": 64,
            "return_token": return_token,
        },
        ds.obs_dim,
        ds.act_dim,
        ds.state_mean,
        ds.state_std,
    ).double()
    padded = PrefixSampler(ds, max_len=40, seed=1).sample(6)
    packed = pack_sequences(padded)

    def loss_and_grads(batch):
        tensors = batch.to_torch()
        tensors = {k: v.double() if v.is_floating_point() else v for k, v in tensors.items()}
        model.zero_grad()
        loss = decision_loss(model, tensors)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss_padded, grads_padded = loss_and_grads(padded)
    loss_packed, grads_packed = loss_and_grads(packed)
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-10, atol=1e-12)
    for g_packed, g_padded in zip(grads_packed, grads_padded, strict=True):
        torch.testing.assert_close(g_packed, g_padded, rtol=1e-8, atol=1e-10)


def test_pack_config_is_checked_and_reaches_the_sampler():
    ds = _dataset()
    cfg = TrainConfig.from_dict({"sampler": "prefix", "max_len": 30, "pack": True})
    sampler = make_sampler(ds, cfg, context=20, seed=0)
    assert sampler.pack and sampler.sample(3).resets is not None
    with pytest.raises(ValueError, match="sampler=window"):
        TrainConfig.from_dict({"sampler": "window", "pack": True})
    with pytest.raises(ValueError, match="pack='yes'"):
        TrainConfig.from_dict({"sampler": "prefix", "pack": "yes"})


def test_model_rejects_resets_of_the_wrong_shape():
    ds = _dataset()
    model = build_decision_model(
        {"d_model": 8, "n_layers": 1, "n_heads": 1, "max_timestep": 64}, ds.obs_dim, ds.act_dim
    )
    batch = PrefixSampler(ds, max_len=10, seed=0, pack=True).sample(2).to_torch()
    with pytest.raises(ValueError, match="resets must be a bool tensor"):
        model(
            batch["observations"],
            batch["actions"],
            batch["returns_to_go"],
            batch["timesteps"],
            batch["mask"],
            resets=batch["resets"][:, :-1],
        )


def test_fast_dropout_setting_is_checked():
    with pytest.raises(ValueError, match="fast_dropout=1"):
        TrainConfig.from_dict({"fast_dropout": 1})
