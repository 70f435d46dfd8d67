"""The one-line start-up message of `aaren-rl evaluate` and `aaren-rl demo` names the step the
rollout really runs (numba fast step, torch fast step, or the model's own step) and the switch
to the other: checked against what ``rollout_policy`` builds for the same model."""

from __future__ import annotations

import pytest

from aaren_rl.agents import fast_step_numba
from aaren_rl.agents.decision_model import build_decision_model
from aaren_rl.agents.fast_step import FastDecisionStep
from aaren_rl.agents.rollout import describe_rollout_step, rollout_policy


def _model(**overrides):
    config = {"d_model": 16, "n_layers": 1, "n_heads": 1, "max_timestep": 20, **overrides}
    return build_decision_model(config, 5, 2).eval()


def test_numba_fast_step_is_named_with_the_switch_to_the_model_step():
    model = _model()
    assert rollout_policy(model, True).active_backend == "numba"
    line = describe_rollout_step(model, True, "--reference-step")
    assert line.startswith("rollout step: FastDecisionStep compiled by numba")
    assert "--reference-step runs the model's own step" in line and "\n" not in line


def test_torch_fast_step_says_why_and_how_to_get_numba(monkeypatch):
    monkeypatch.setattr(fast_step_numba, "AVAILABLE", False)
    model = _model()
    policy = rollout_policy(model, True)
    assert isinstance(policy, FastDecisionStep) and policy.active_backend == "torch"
    line = describe_rollout_step(model, True)
    assert line.startswith("rollout step: FastDecisionStep in PyTorch")
    assert "pip install numba" in line
    double = _model().double()
    assert rollout_policy(double, True).active_backend == "torch"
    monkeypatch.setattr(fast_step_numba, "AVAILABLE", True)
    assert "torch.float64 on cpu" in describe_rollout_step(double, True)


@pytest.mark.parametrize("fast", [True, False])
def test_model_step_is_named_for_a_transformer_and_when_asked(fast):
    transformer = _model(backbone="transformer", context=4)
    assert rollout_policy(transformer, fast) is transformer
    line = describe_rollout_step(transformer, fast, "--reference-step")
    assert line.startswith("rollout step: the model's own act/observe_action")
    aaren = _model()
    assert rollout_policy(aaren, False) is aaren
    assert describe_rollout_step(aaren, False, "--reference-step").startswith(
        "rollout step: the model's own act/observe_action (--reference-step)"
    )
