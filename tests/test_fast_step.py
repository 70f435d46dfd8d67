"""The fast rollout step equals the decision model's own act / observe_action.

One suite holds the fast path and its reference together: every back end (PyTorch, numba),
both return-token layouts, one and two heads, several environments with episodes that end at
different steps, clipped returns and timesteps past the embedding table; then the weights'
freshness after in-place edits and fused AdamW, and the state's constant size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aaren_rl.agents import fast_step_numba
from aaren_rl.agents.decision_model import DecisionModel, build_decision_model
from aaren_rl.agents.fast_step import FastDecisionStep, FastState
from aaren_rl.nn.backbone import state_nbytes

OBS_DIM, ACT_DIM = 11, 3
BACKENDS = ["torch", "numba"]


def make_model(seed: int = 0, **overrides) -> DecisionModel:
    """A small model with every weight moved off its initial value (LayerNorm scales and
    shifts included, so that folding them is exercised)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = {"d_model": 32, "n_layers": 2, "n_heads": 2, "dropout": 0.1, "max_timestep": 40}
    model = build_decision_model(
        {**config, **overrides},
        OBS_DIM,
        ACT_DIM,
        state_mean=rng.normal(size=OBS_DIM),
        state_std=rng.uniform(0.5, 2.0, size=OBS_DIM),
        reward_scale=1e-3,
        return_max=500.0,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def rollout_both(model, fast, n_envs=4, n_steps=60, seed=1):
    """Step the reference and the fast step side by side on the same random inputs, with
    episodes ending at random steps (rows reset independently); the actions of both."""
    g = torch.Generator().manual_seed(seed)
    ref_actions, fast_actions = [], []
    with torch.inference_mode():
        ref_state = model.initial_state(n_envs)
        fast_state = fast.initial_state(n_envs)
        t = torch.zeros(n_envs, dtype=torch.long)
        for _ in range(n_steps):
            obs = torch.randn(n_envs, OBS_DIM, generator=g) * 2
            rtg = torch.randn(n_envs, generator=g) * 800  # some above return_max
            a_ref, ref_state = model.act(obs, rtg, t, ref_state)
            a_fast, fast_state = fast.act(obs, rtg, t, fast_state)
            ref_actions.append(a_ref.clone())
            fast_actions.append(a_fast.clone())
            executed = torch.randn(n_envs, ACT_DIM, generator=g)  # not the predicted one
            ref_state = model.observe_action(executed, t, ref_state)
            fast_state = fast.observe_action(executed, t, fast_state)
            t += 1
            done = torch.rand(n_envs, generator=g) < 0.1
            ref_state = model.reset_state(ref_state, done)
            fast_state = fast.reset_state(fast_state, done)
            t[done] = 0
    return torch.stack(ref_actions), torch.stack(fast_actions)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("return_token", ["separate", "merged"])
@pytest.mark.parametrize("n_heads", [1, 2])
def test_fast_step_equals_reference_with_resets_and_several_envs(backend, return_token, n_heads):
    model = make_model(return_token=return_token, n_heads=n_heads, clip_return=n_heads == 2)
    fast = FastDecisionStep(model, backend=backend)
    assert fast.active_backend == backend
    ref, got = rollout_both(model, fast)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_step_deep_gelu_untanhed_one_env_past_the_timestep_table(backend):
    model = make_model(n_layers=3, n_heads=1, action_tanh=False)
    for layer in model.backbone.layers:
        layer.ff[1] = torch.nn.GELU()
    fast = FastDecisionStep(model, backend=backend)
    # 60 steps with max_timestep=40: the last 20 share the last embedding, as in the model
    ref, got = rollout_both(model, fast, n_envs=1, n_steps=60)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_numpy_inputs_and_a_fresh_state_from_none():
    model = make_model()
    fast = FastDecisionStep(model)
    obs = np.random.default_rng(0).normal(size=(3, OBS_DIM))
    with torch.inference_mode():
        a_ref, _ = model.act(
            torch.as_tensor(obs, dtype=torch.float32),
            torch.zeros(3),
            torch.zeros(3, dtype=torch.long),
            None,
        )
        a_fast, state = fast.act(obs, np.zeros(3), np.zeros(3, dtype=np.int64), None)
    assert isinstance(state, FastState)
    torch.testing.assert_close(a_fast, a_ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_weights_follow_fused_adamw_and_in_place_edits(backend):
    """Training between rollouts (fused AdamW, ``.data`` writes: no version bump) is seen by
    the next rollout, whose ``initial_state`` re-derives the fused weights."""
    model = make_model()
    fast = FastDecisionStep(model, backend=backend)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    obs, act = torch.randn(2, 6, OBS_DIM), torch.randn(2, 6, ACT_DIM)
    rtg, ts = torch.rand(2, 6) * 100, torch.arange(6).repeat(2, 1)
    before, _ = rollout_both(model, fast, n_steps=5)
    model.train()
    pred, _ = model(obs, act, rtg, ts)
    (pred - act).pow(2).mean().backward()
    opt.step()
    model.eval()
    model.backbone.layers[0].attn.query.data.add_(0.3)
    model.embed_norm.weight.data.copy_(torch.rand_like(model.embed_norm.weight) + 0.5)
    ref, got = rollout_both(model, fast, n_steps=5)
    assert (ref - before).abs().max() > 1e-3  # the edits changed the policy
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_refresh_rederives_mid_rollout():
    model = make_model()
    fast = FastDecisionStep(model, backend="torch")
    with torch.inference_mode():
        state = fast.initial_state(1)
        model.action_head.bias.data.add_(1.0)
        obs, rtg, t = torch.randn(1, OBS_DIM), torch.zeros(1), torch.zeros(1, dtype=torch.long)
        stale, _ = fast.act(obs, rtg, t, fast.reset_state(state, torch.ones(1, dtype=torch.bool)))
        fast.refresh()
        fresh, _ = fast.act(obs, rtg, t, fast.reset_state(state, torch.ones(1, dtype=torch.bool)))
        want, _ = model.act(obs, rtg, t, None)
    torch.testing.assert_close(fresh, want, rtol=0, atol=1e-5)
    assert (stale - want).abs().max() > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_bytes_exactly_constant(backend):
    model = make_model(d_model=16, n_heads=2, n_layers=3)
    fast = FastDecisionStep(model, backend=backend)
    sizes = []
    with torch.inference_mode():
        state = fast.initial_state(2)
        for t in range(300):
            ts = torch.full((2,), t)
            action, state = fast.act(torch.randn(2, OBS_DIM), torch.zeros(2), ts, state)
            state = fast.observe_action(action, ts, state)
            sizes.append(state_nbytes(state))
    # per row: 3 layers x 2 heads x (d_head 8 + m + u) float32, the pending action (float32),
    # its timestep (int64) and the pending flag (bool)
    per_row = 3 * 2 * (8 + 2) * 4 + ACT_DIM * 4 + 8 + 1
    assert set(sizes) == {2 * per_row}


def test_without_numba_auto_falls_back_to_torch(monkeypatch):
    monkeypatch.setattr(fast_step_numba, "AVAILABLE", False)
    model = make_model()
    fast = FastDecisionStep(model)
    assert fast.active_backend == "torch"
    ref, got = rollout_both(model, fast, n_steps=10)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="numba missing"):
        FastDecisionStep(model, backend="numba")


def test_float64_model_runs_on_torch_and_numba_says_why_not():
    model = make_model().double()
    assert FastDecisionStep(model).active_backend == "torch"
    with pytest.raises(ValueError, match="CPU float32"):
        FastDecisionStep(model, backend="numba")


def test_unsupported_models_and_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="Aaren backbone"):
        FastDecisionStep(make_model(backbone="transformer", step_mode="kv_cache"))
    with pytest.raises(ValueError, match="post-norm"):
        FastDecisionStep(make_model(norm_first=False))
    fast = FastDecisionStep(make_model())
    state = fast.initial_state(2)
    with pytest.raises(ValueError, match=r"obs_dim=11"):
        fast.act(torch.zeros(2, 5), torch.zeros(2), torch.zeros(2, dtype=torch.long), state)
    with pytest.raises(ValueError, match="timestep must be >= 0"):
        fast.act(torch.zeros(2, OBS_DIM), torch.zeros(2), -torch.ones(2, dtype=torch.long), state)
    with pytest.raises(ValueError, match=r"act_dim=3"):
        fast.observe_action(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), state)
    with pytest.raises(TypeError, match="FastState"):
        fast.act(torch.zeros(2, OBS_DIM), torch.zeros(2), torch.zeros(2, dtype=torch.long), ())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "bad",
    ["observation", "return_to_go", "action"],
)
def test_non_finite_inputs_name_the_env_and_step_like_the_reference(backend, bad):
    """The fast step calls the same boundary check as ``DecisionModel.act`` (issue 13): the
    error names the input, the env index and its step, for both back ends."""
    from aaren_rl.agents.step_checks import NonFiniteInputError

    model = make_model()
    fast = FastDecisionStep(model, backend=backend)
    obs = torch.randn(3, OBS_DIM)
    rtg = torch.full((3,), 100.0)
    t = torch.tensor([4, 7, 2])
    action = torch.zeros(3, ACT_DIM)
    if bad == "observation":
        obs[1, 2] = float("nan")
    elif bad == "return_to_go":
        rtg[1] = float("inf")
    else:
        action[1, 0] = float("-inf")
    messages = []
    for policy in (model, fast):
        with torch.inference_mode(), pytest.raises(NonFiniteInputError) as info:
            state = policy.initial_state(3)
            _, state = policy.act(obs, rtg, t, state)
            policy.observe_action(action, t, state)
        assert (info.value.name, info.value.env_index, info.value.step) == (bad, 1, 7)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_refused_inputs_leave_the_state_as_it_was(backend):
    """A NaN observation or action, or a negative timestep, is refused before the memory or
    the pending action changes: the rollout can go on from the same state."""
    model = make_model()
    fast = FastDecisionStep(model, backend=backend)
    obs, rtg, t = torch.randn(2, OBS_DIM), torch.full((2,), 100.0), torch.tensor([3, 5])
    with torch.inference_mode():
        state = fast.initial_state(2)
        action, state = fast.act(obs, rtg, t, state)
        state = fast.observe_action(action, t, state)
        before = [x.clone() for x in state]
        bad_obs = obs.clone()
        bad_obs[1, 4] = float("nan")
        bad_action = action.clone()
        bad_action[0, 1] = float("inf")
        for call in (
            lambda: fast.act(bad_obs, rtg, t + 1, state),
            lambda: fast.act(obs, rtg, torch.tensor([4, -1]), state),
            lambda: fast.observe_action(bad_action, t, state),
            lambda: fast.observe_action(action, torch.tensor([-2, 6]), state),
        ):
            with pytest.raises(ValueError):
                call()
            for x, y in zip(state, before, strict=True):
                torch.testing.assert_close(x, y, rtol=0, atol=0)
