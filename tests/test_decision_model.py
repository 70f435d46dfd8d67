"""The decision model: its recurrent path (act / observe_action) equals its parallel forward.

The reference trajectory is a real Hopper-v5 episode recorded here with seeded random actions.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from aaren_rl.agents.decision_model import (
    DecisionModel,
    DecisionModelConfig,
    build_decision_model,
)
from aaren_rl.nn.backbone import state_nbytes

OBS_DIM, ACT_DIM = 11, 3
TARGET = 3600.0
SMALL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "context": 5, "dropout": 0.1}

BACKBONES = {
    "aaren": {"backbone": "aaren"},
    "transformer-kv": {"backbone": "transformer", "step_mode": "kv_cache"},
    "transformer-kv-full": {
        "backbone": "transformer",
        "step_mode": "kv_cache",
        "full_attention": True,
    },
    # R_t folded into the s_t token: two tokens per step
    "aaren-merged": {"backbone": "aaren", "return_token": "merged"},
    "transformer-kv-merged": {
        "backbone": "transformer",
        "step_mode": "kv_cache",
        "return_token": "merged",
    },
}


def make_model(seed: int = 0, **overrides) -> DecisionModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_decision_model(
        {**SMALL, **overrides},
        OBS_DIM,
        ACT_DIM,
        state_mean=rng.normal(size=OBS_DIM),
        state_std=rng.uniform(0.5, 2.0, size=OBS_DIM),
        reward_scale=1e-3,
    )
    return model.eval()


@pytest.fixture(scope="module")
def hopper_episode() -> dict[str, np.ndarray]:
    """A real Hopper-v5 episode (seeded random actions at half scale), truncated at 80 steps."""
    env = gym.make("Hopper-v5", max_episode_steps=80)
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    observations, actions, rewards = [], [], []
    while True:
        action = 0.5 * env.action_space.sample()
        observations.append(obs)
        actions.append(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        if terminated or truncated:
            break
    env.close()
    rewards = np.asarray(rewards)
    # return-to-go fed at step t: the target minus the rewards already received.
    rtg = TARGET - np.concatenate([[0.0], np.cumsum(rewards)[:-1]])
    return {
        "observations": np.asarray(observations),
        "actions": np.asarray(actions, dtype=np.float32),
        "returns_to_go": rtg,
        "timesteps": np.arange(len(rewards)),
    }


def as_batch(ep: dict[str, np.ndarray], start: int = 0, stop: int | None = None):
    """One episode slice as a batch of one: (observations, actions, returns_to_go, timesteps)."""
    sl = slice(start, stop)
    return (
        torch.as_tensor(ep["observations"][sl], dtype=torch.float32)[None],
        torch.as_tensor(ep["actions"][sl])[None],
        torch.as_tensor(ep["returns_to_go"][sl], dtype=torch.float32)[None],
        torch.as_tensor(ep["timesteps"][sl])[None],
    )


def step_through(model: DecisionModel, ep: dict[str, np.ndarray]) -> np.ndarray:
    """Feed the recorded episode token by token (teacher forcing); the predicted actions."""
    preds = []
    with torch.inference_mode():
        state = model.initial_state(1)
        for t in range(len(ep["timesteps"])):
            obs = torch.as_tensor(ep["observations"][t], dtype=torch.float32)[None]
            rtg = torch.tensor([ep["returns_to_go"][t]], dtype=torch.float32)
            ts = torch.tensor([t])
            action, state = model.act(obs, rtg, ts, state)
            preds.append(action[0].numpy())
            state = model.observe_action(torch.as_tensor(ep["actions"][t])[None], ts, state)
    return np.stack(preds)


def test_recorded_episode_is_long_enough_to_matter(hopper_episode):
    # The window of the Transformer (3K - 1 tokens, K = 5) must be exceeded many times over.
    assert len(hopper_episode["timesteps"]) == 80 > 3 * SMALL["context"]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_recurrent_actions_equal_parallel_forward(name, hopper_episode):
    model = make_model(**BACKBONES[name])
    with torch.inference_mode():
        parallel, _ = model(*as_batch(hopper_episode))
    recurrent = step_through(model, hopper_episode)
    np.testing.assert_allclose(recurrent, parallel[0].numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("return_token", ["separate", "merged"])
def test_transformer_recompute_equals_forward_over_the_last_k_steps(return_token, hopper_episode):
    """Decision Transformer's evaluation: the action at t is the forward over steps t-K+1..t."""
    k = SMALL["context"]
    model = make_model(backbone="transformer", step_mode="recompute", return_token=return_token)
    assert model.config.transformer_window == model.config.tokens_per_step * k - 1
    recurrent = step_through(model, hopper_episode)
    n = len(hopper_episode["timesteps"])
    with torch.inference_mode():
        full, _ = model(*as_batch(hopper_episode))
        reference = np.stack(
            [model(*as_batch(hopper_episode, max(0, t - k + 1), t + 1))[0][0, -1] for t in range(n)]
        )
    np.testing.assert_allclose(recurrent, reference, rtol=0, atol=1e-5)
    # Within its first window the recompute also equals the forward over the whole episode ...
    np.testing.assert_allclose(recurrent[:k], full[0, :k].numpy(), rtol=0, atol=1e-5)
    # ... and later it does not (a deep stack's receptive field outgrows the window).
    assert np.abs(recurrent[k:] - full[0, k:].numpy()).max() > 1e-4


def test_aaren_forward_in_chunks_with_carried_state(hopper_episode):
    """Training on a later window with the state carried in from the prefix is exact."""
    model = make_model(backbone="aaren")
    cut = 17
    with torch.inference_mode():
        whole, _ = model(*as_batch(hopper_episode))
        first, state = model(*as_batch(hopper_episode, 0, cut))
        second, _ = model(*as_batch(hopper_episode, cut), state=state)
    np.testing.assert_allclose(
        torch.cat([first, second], dim=1).numpy(), whole.numpy(), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("name", ["aaren", "transformer-kv", "aaren-merged"])
def test_padding_does_not_change_unpadded_predictions(name, hopper_episode):
    model = make_model(**BACKBONES[name])
    n = 30
    lengths = [n, 18]
    obs, act, rtg, ts = (x[0, :n] for x in as_batch(hopper_episode))
    g = torch.Generator().manual_seed(1)
    batch_obs = torch.stack([obs, torch.randn(n, OBS_DIM, generator=g) * 50])
    batch_act = torch.stack([act, torch.randn(n, ACT_DIM, generator=g)])
    batch_rtg = torch.stack([rtg, torch.randn(n, generator=g) * 1e4])
    batch_ts = torch.stack([ts, torch.full((n,), 10**6)])  # out of range, but padding
    # row 1 holds the episode's steps 5..22, then garbage padding
    m = lengths[1]
    batch_obs[1, :m], batch_act[1, :m] = obs[5 : 5 + m], act[5 : 5 + m]
    batch_rtg[1, :m], batch_ts[1, :m] = rtg[5 : 5 + m], ts[5 : 5 + m]
    mask = torch.arange(n)[None] < torch.tensor(lengths)[:, None]
    with torch.inference_mode():
        padded, _ = model(batch_obs, batch_act, batch_rtg, batch_ts, mask=mask)
        alone0, _ = model(obs[None], act[None], rtg[None], ts[None])
        alone1, _ = model(*(x[1:2, :m] for x in (batch_obs, batch_act, batch_rtg, batch_ts)))
    assert torch.isfinite(padded).all()
    np.testing.assert_allclose(padded[0].numpy(), alone0[0].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(padded[1, :m].numpy(), alone1[0].numpy(), rtol=0, atol=1e-5)


def _bytes_after_steps(model: DecisionModel, checkpoints: set[int]) -> dict[int, int]:
    """Step one environment with random inputs; state bytes after each step in checkpoints."""
    g = torch.Generator().manual_seed(0)
    out = {}
    with torch.inference_mode():
        state = model.initial_state(1)
        for t in range(max(checkpoints)):
            ts = torch.tensor([t])
            obs = torch.randn(1, OBS_DIM, generator=g)
            action, state = model.act(obs, torch.tensor([TARGET - t]), ts, state)
            state = model.observe_action(action, ts, state)
            if t + 1 in checkpoints:
                out[t + 1] = state_nbytes(state)
    return out


def test_aaren_state_bytes_constant_over_1000_steps():
    model = make_model(backbone="aaren", d_model=16, n_heads=2, n_layers=1)
    nbytes = _bytes_after_steps(model, {1, 1000})
    # per layer and head: running max m, denominator u, numerator w [d_head], float32
    d_head = 16 // 2
    expected = 1 * 2 * (d_head + 2) * 4
    assert nbytes[1] == nbytes[1000] == expected


def test_transformer_kv_cache_state_grows_and_window_bounds_it():
    kw = {"backbone": "transformer", "step_mode": "kv_cache", "n_layers": 1, "d_model": 16}
    full = make_model(**kw, full_attention=True)
    grown = _bytes_after_steps(full, {1, 10, 1000})
    # keys and values per layer, d_model floats each, plus one validity byte, per token (3/step)
    per_token = 1 * 2 * 16 * 4 + 1
    assert grown == {t: 3 * t * per_token for t in (1, 10, 1000)}

    windowed = make_model(**kw)
    bounded = _bytes_after_steps(windowed, {10, 300})
    window = 3 * SMALL["context"] - 1
    assert bounded[10] == bounded[300] == (window - 1) * per_token


def test_observation_shape_mismatch_is_a_clear_error(hopper_episode):
    model = make_model()
    obs, act, rtg, ts = as_batch(hopper_episode, 0, 5)
    with pytest.raises(
        ValueError, match=r"observations has shape \(1, 5, 10\).*expects \(1, 5, 11\)"
    ):
        model(obs[..., :10], act, rtg, ts)
    with pytest.raises(ValueError, match=r"observation has shape \(1, 17\).*obs_dim=11"):
        model.act(torch.zeros(1, 17), torch.zeros(1), torch.zeros(1, dtype=torch.long), None)
    with pytest.raises(ValueError, match=r"actions has shape \(1, 5, 2\).*act_dim=3"):
        model(obs, act[..., :2], rtg, ts)


def test_timesteps_past_the_embedding_error_in_forward_and_clamp_in_act(hopper_episode):
    model = make_model(max_timestep=50)
    obs, act, rtg, ts = as_batch(hopper_episode, 0, 5)
    with pytest.raises(ValueError, match=r"max_timestep"):
        model(obs, act, rtg, ts + 46)  # reaches 50
    with pytest.raises(ValueError, match=r">= 0"):
        model.act(obs[:, 0], rtg[:, 0], torch.tensor([-1]), model.initial_state(1))
    with torch.inference_mode():
        late, _ = model.act(obs[:, 0], rtg[:, 0], torch.tensor([500]), model.initial_state(1))
        last, _ = model.act(obs[:, 0], rtg[:, 0], torch.tensor([49]), model.initial_state(1))
    torch.testing.assert_close(late, last, rtol=0, atol=0)


def test_model_normalises_states_and_scales_returns_itself(hopper_episode):
    """Same weights: raw inputs with the buffers == pre-normalised inputs without them."""
    model = make_model()
    plain = build_decision_model(SMALL, OBS_DIM, ACT_DIM).eval()
    own = {k: v for k, v in model.state_dict().items() if k not in plain_buffers()}
    plain.load_state_dict(own, strict=False)
    obs, act, rtg, ts = as_batch(hopper_episode)
    with torch.inference_mode():
        expected, _ = model(obs, act, rtg, ts)
        normed = (obs - model.state_mean) / model.state_std
        got, _ = plain(normed, act, rtg * 1e-3, ts)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def plain_buffers() -> set[str]:
    return {"state_mean", "state_std", "reward_scale"}


def test_buffers_travel_in_the_state_dict():
    model = make_model()
    fresh = build_decision_model(SMALL, OBS_DIM, ACT_DIM)
    fresh.load_state_dict(model.state_dict())
    for name in plain_buffers():
        torch.testing.assert_close(getattr(fresh, name), getattr(model, name), rtol=0, atol=0)
    assert float(fresh.reward_scale) == pytest.approx(1e-3)


def test_state_std_zero_is_floored_not_divided_by():
    model = build_decision_model(SMALL, OBS_DIM, ACT_DIM, state_std=np.zeros(OBS_DIM))
    assert float(model.state_std.min()) == pytest.approx(1e-6)
    with pytest.raises(ValueError, match=r"state_mean has shape \(3,\); expected \(11,\)"):
        build_decision_model(SMALL, OBS_DIM, ACT_DIM, state_mean=np.zeros(3))


def test_tanh_head_bounds_actions(hopper_episode):
    with torch.inference_mode():
        squashed, _ = make_model(action_tanh=True)(*as_batch(hopper_episode))
        raw, _ = make_model(action_tanh=False)(*as_batch(hopper_episode))
    torch.testing.assert_close(squashed, torch.tanh(raw), rtol=0, atol=1e-6)


def test_dropout_is_active_in_training_only(hopper_episode):
    model = make_model(dropout=0.5)
    batch = as_batch(hopper_episode)
    model.train()
    a, _ = model(*batch)
    b, _ = model(*batch)
    assert not torch.equal(a, b)
    model.eval()
    c, _ = model(*batch)
    d, _ = model(*batch)
    assert torch.equal(c, d)


# --------------------------------------------------------------------------- config
def test_config_round_trip_and_defaults_are_decision_transformers():
    cfg = DecisionModelConfig()
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.context, cfg.dropout) == (
        128,
        3,
        1,
        20,
        0.1,
    )
    assert cfg.transformer_window == 59  # R, s, a of K-1 steps, then R_t and s_t
    assert cfg.return_token == "separate" and cfg.tokens_per_step == 3
    again = DecisionModelConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert DecisionModelConfig.from_dict({"backbone": "transformer"}).step_mode == "recompute"


@pytest.mark.parametrize(
    "bad, pattern",
    [
        ({"d_modle": 64}, r"agents/x.yaml: unknown model key\(s\) \['d_modle'\]"),
        ({"backbone": "lstm"}, r"agents/x.yaml: 'backbone' is 'lstm'; expected one of"),
        ({"d_model": 30, "n_heads": 4}, r"'d_model' is 30; expected a multiple of n_heads=4"),
        ({"dropout": 1.5}, r"'dropout' is 1.5"),
        ({"n_layers": 0}, r"'n_layers' is 0; expected a positive integer"),
        ({"context": "20"}, r"'context' is '20'"),
        ({"return_token": "fused"}, r"'return_token' is 'fused'; expected one of"),
        (
            {"backbone": "transformer", "full_attention": True},
            r"'step_mode' is 'recompute'; expected 'kv_cache' when full_attention",
        ),
    ],
)
def test_config_errors_name_the_source_and_key(bad, pattern):
    with pytest.raises(ValueError, match=pattern):
        DecisionModelConfig.from_dict(bad, source="agents/x.yaml")


def test_build_from_dict_counts_parameters_like_the_layout_says():
    model = build_decision_model({**SMALL, "dropout": 0.0}, OBS_DIM, ACT_DIM)
    d = SMALL["d_model"]
    heads = (1 + 1) * d + (OBS_DIM + 1) * d + (ACT_DIM + 1) * d + 1000 * d  # embeddings
    heads += 2 * (2 * d) + (d + 1) * ACT_DIM  # two LayerNorms, the action head
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert sum(p.numel() for p in model.parameters()) == heads + backbone


def test_clip_return_conditions_on_the_largest_training_return(hopper_episode):
    """With clip_return a target beyond return_max acts exactly like return_max; returns-to-go
    within the data (all of training) are untouched; without it the target is taken as is."""
    return_max = float(hopper_episode["returns_to_go"].max())
    clipped = make_model(clip_return=True)
    plain = make_model()
    clipped.return_max.fill_(return_max)
    plain.return_max.fill_(return_max)
    batch = as_batch(hopper_episode)
    with torch.inference_mode():
        np.testing.assert_array_equal(clipped(*batch)[0].numpy(), plain(*batch)[0].numpy())
        obs, ts = batch[0][:, 0], batch[3][:, 0]

        def act(model, rtg: float) -> torch.Tensor:
            return model.act(obs, torch.tensor([rtg]), ts, model.initial_state(1))[0]

        assert torch.equal(act(clipped, 10 * return_max), act(clipped, return_max))
        assert not torch.equal(act(plain, 10 * return_max), act(plain, return_max))
        assert not torch.equal(act(clipped, 0.5 * return_max), act(clipped, return_max))


def test_state_dict_without_return_max_loads_with_no_clip():
    """Checkpoints written before the return_max buffer existed still load (no clip value)."""
    old = {k: v for k, v in make_model().state_dict().items() if k != "return_max"}
    model = make_model(seed=1)
    model.load_state_dict(old, strict=True)
    assert torch.isinf(model.return_max)
    assert torch.equal(model.state_mean, old["state_mean"])
