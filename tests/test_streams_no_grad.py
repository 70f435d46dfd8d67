"""Every inference path a user calls keeps no autograd history, however it is called.

The streams (forecast, classify, events), the decision model's own rollout step
(``act`` / ``observe_action`` / ``reset_state``), ``FastDecisionStep``,
``DecisionAarenPolicy`` and ``AarenPPO.predict`` are all called here with autograd ON (no
``torch.no_grad()`` from the caller) on models whose weights require grad. For each:

- what they return and the state they keep hold no graph (``requires_grad`` False,
  ``grad_fn`` None);
- their outputs still equal the parallel forward's (the reference);
- resident memory stays flat over a long stream: the growth over the second half of the run
  is compared with the first half's (a recorded graph grows it by tens of KB per step).
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aaren_rl.agents.decision_model import DecisionModel, build_decision_model
from aaren_rl.agents.fast_step import FastDecisionStep
from aaren_rl.data.events import EventData
from aaren_rl.data.point_processes import HawkesProcess
from aaren_rl.heads.classify import ClassifyConfig, ClassifyModel
from aaren_rl.heads.events import EventModel
from aaren_rl.heads.forecast import ForecastConfig, ForecastModel
from aaren_rl.heads.registry import get_head
from aaren_rl.nn.build import build_backbone

OBS_DIM, ACT_DIM = 5, 2


@pytest.fixture(autouse=True)
def _grad_on():
    """The caller's mode is autograd ON, as in a plain script."""
    with torch.enable_grad():
        yield


def tensors_in(tree: Any) -> list[torch.Tensor]:
    """Every tensor in a nested tuple / list / NamedTuple / dict / object with ``__dict__``."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in tensors_in(v)]
    if isinstance(tree, (tuple, list)):
        return [t for v in tree for t in tensors_in(v)]
    return []


def assert_no_graph(*trees: Any) -> None:
    found = [t for tree in trees for t in tensors_in(tree)]
    assert found, "nothing to check"
    for t in found:
        assert not t.requires_grad and t.grad_fn is None, f"a {tuple(t.shape)} tensor has a graph"


def rss_bytes() -> int:
    """This process's resident memory now (Linux), else its peak (macOS and others)."""
    statm = Path("/proc/self/statm")
    if statm.is_file():
        return int(statm.read_text().split()[1]) * resource.getpagesize()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def rss_growth_halves(step, n_steps: int) -> tuple[int, int]:
    """Run ``step(i)``, ``i = 0, 1, ...``: a warm-up of 200, then ``n_steps`` in two halves;
    the RSS growth over each half."""
    warm = 200
    for i in range(warm):
        step(i)
    start = rss_bytes()
    for i in range(warm, warm + n_steps // 2):
        step(i)
    middle = rss_bytes()
    for i in range(warm + n_steps // 2, warm + n_steps):
        step(i)
    return middle - start, rss_bytes() - middle


def assert_flat(first: int, second: int, n_steps: int) -> None:
    # a kept graph costs tens of KB per step here (MBs per half); allow allocator noise of
    # 2 MB, far under that
    per_step = second / (n_steps // 2)
    assert second < 2 * 2**20, f"RSS grew {second / 2**20:.1f} MiB ({per_step:.0f} B/step)"


# ---------------------------------------------------------------------------- events


def _event_model(backbone: str) -> tuple[EventModel, EventData]:
    torch.manual_seed(0)
    data = EventData.synthetic(HawkesProcess([0.7], [[0.5]], beta=3.0), 8, end=30.0, seed=0)
    head = get_head("events")
    model = head.build_model(data, build_backbone(backbone, 16, 2, 2, dropout=0.0), dropout=0.0)
    return model.eval(), data


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
def test_event_stream_keeps_no_graph_and_equals_the_parallel_form(backbone):
    model, data = _event_model(backbone)
    assert all(p.requires_grad for p in model.parameters())
    seqs = data.splits["test"]
    times = torch.as_tensor(seqs.times[0], dtype=torch.float32)
    marks = torch.as_tensor(seqs.marks[0])
    stream = model.stream(batch_size=1)
    streamed = []
    for t, k in zip(times, marks, strict=True):
        nxt = stream.observe(t[None], k[None])  # as the README calls it
        streamed.append(nxt.logits)
        tau = torch.tensor([0.5])
        outputs = [
            nxt.mean(),
            nxt.log_survival(tau),
            nxt.log_prob_time(tau),
            nxt.mark_log_probs(tau),
            nxt.intensity(tau),
            *stream.sample(),
        ]
        assert_no_graph(stream.state, nxt.logits, nxt.loc, nxt.log_scale, nxt.hidden, outputs)
    assert_no_graph(stream.generate(5))
    gaps = torch.diff(times, prepend=torch.zeros(1))
    with torch.no_grad():
        parallel = model.distributions(gaps[None], times[None], marks[None]).logits[0]
    torch.testing.assert_close(torch.cat(streamed), parallel, rtol=1e-5, atol=1e-5)


def test_event_stream_memory_is_flat_over_thousands_of_events():
    model, _ = _event_model("aaren")
    stream = model.stream(batch_size=1)
    rng = np.random.default_rng(0)
    gaps = rng.exponential(0.5, size=10_000).cumsum()

    def step(i: int) -> None:
        nxt = stream.observe(torch.tensor([gaps[i]]), torch.tensor([0]))
        nxt.mean()

    n = 1600
    assert_flat(*rss_growth_halves(step, n), n)


# ---------------------------------------------------------------------------- forecast


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
def test_forecast_stream_keeps_no_graph_and_equals_the_parallel_form(backbone):
    torch.manual_seed(0)
    cfg = ForecastConfig(n_channels=3, input_len=24, horizon=5, patch_len=4)
    model = ForecastModel(cfg, build_backbone(backbone, 16, 2, 2, dropout=0.0)).eval()
    x = torch.randn(2, 24, 3)
    stream = model.stream(batch_size=2)
    for t in range(24):
        stream.observe(x[:, t])
        if (t + 1) % 4 == 0:
            forecast = stream.forecast()
            assert_no_graph(stream.state, forecast, stream.anchor, stream.y_last)
    torch.testing.assert_close(forecast, model(x).detach(), rtol=1e-5, atol=1e-5)


def test_forecast_stream_memory_is_flat():
    torch.manual_seed(0)
    cfg = ForecastConfig(n_channels=3, input_len=8, horizon=4, patch_len=1)
    model = ForecastModel(cfg, build_backbone("aaren", 16, 2, 2, dropout=0.0)).eval()
    stream = model.stream(batch_size=1)
    x = torch.randn(1, 3)
    n = 1600
    assert_flat(*rss_growth_halves(lambda i: stream.observe(x), n), n)


# ---------------------------------------------------------------------------- classify


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_classify_stream_keeps_no_graph_and_equals_the_parallel_form(pool):
    torch.manual_seed(0)
    cfg = ClassifyConfig(n_channels=3, n_classes=4, max_len=16, pool=pool, dropout=0.0)
    model = ClassifyModel(cfg, build_backbone("aaren", 16, 2, 2, dropout=0.0)).eval()
    x = torch.randn(2, 12, 3)
    stream = model.stream(batch_size=2)
    probs = []
    for t in range(12):
        probs.append(stream.observe(x[:, t]))
        assert_no_graph(stream.state, probs[-1], stream.pool_sum if pool == "mean" else [])
    with torch.no_grad():
        parallel = model.step_probabilities(x)
    torch.testing.assert_close(torch.stack(probs, dim=1), parallel, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- decision model


def _decision_model(**overrides) -> DecisionModel:
    torch.manual_seed(0)
    config = {"d_model": 16, "n_layers": 2, "n_heads": 2, "dropout": 0.0, "max_timestep": 64}
    return build_decision_model({**config, **overrides}, OBS_DIM, ACT_DIM).eval()


def _episode(n: int = 30, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(1, n, OBS_DIM, generator=g)
    actions = torch.randn(1, n, ACT_DIM, generator=g).clamp(-1, 1)
    rtg = 100.0 - torch.arange(n, dtype=torch.float32)[None]
    return obs, actions, rtg, torch.arange(n)[None]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"backbone": "transformer", "step_mode": "kv_cache"}, {"return_token": "merged"}],
    ids=["aaren", "transformer-kv", "aaren-merged"],
)
def test_model_act_keeps_no_graph_and_equals_the_parallel_forward(overrides):
    model = _decision_model(**overrides)
    obs, actions, rtg, ts = _episode()
    state = model.initial_state(1)
    preds = []
    for t in range(obs.shape[1]):
        action, state = model.act(obs[:, t], rtg[:, t], ts[:, t], state)
        assert_no_graph(action, state)
        state = model.observe_action(actions[:, t], ts[:, t], state)
        assert_no_graph(state)
        preds.append(action)
    state = model.reset_state(state, torch.tensor([True]))
    assert_no_graph(state)
    with torch.no_grad():
        parallel, _ = model(obs, actions, rtg, ts)
    torch.testing.assert_close(torch.stack(preds, dim=1), parallel, rtol=1e-5, atol=1e-5)


def test_model_act_memory_is_flat():
    model = _decision_model()
    state = model.initial_state(1)
    obs, rtg = torch.randn(1, OBS_DIM), torch.tensor([1.0])

    def step(i: int) -> None:
        nonlocal state
        t = torch.tensor([min(i, 63)])
        action, state = model.act(obs, rtg, t, state)
        state = model.observe_action(action, t, state)

    n = 1600
    assert_flat(*rss_growth_halves(step, n), n)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_fast_step_keeps_no_graph_and_equals_the_model(backend):
    model = _decision_model()
    fast = FastDecisionStep(model, backend=backend)
    obs, actions, rtg, ts = _episode()
    actions.requires_grad_(True)  # even an executed action that carries a graph is not kept
    state, ref_state = fast.initial_state(1), model.initial_state(1)
    for t in range(obs.shape[1]):
        action, state = fast.act(obs[:, t], rtg[:, t], ts[:, t], state)
        ref, ref_state = model.act(obs[:, t], rtg[:, t], ts[:, t], ref_state)
        assert_no_graph(action, state)
        torch.testing.assert_close(action, ref, rtol=1e-5, atol=1e-5)
        state = fast.observe_action(actions[:, t], ts[:, t], state)
        ref_state = model.observe_action(actions[:, t], ts[:, t], ref_state)
        assert_no_graph(state, ref_state)
    assert_no_graph(fast.reset_state(state, torch.tensor([True])))


def test_fast_step_torch_memory_is_flat():
    fast = FastDecisionStep(_decision_model(), backend="torch")
    state = fast.initial_state(1)
    obs, rtg = torch.randn(1, OBS_DIM), torch.tensor([1.0])

    def step(i: int) -> None:
        t = torch.tensor([min(i, 63)])
        action, _ = fast.act(obs, rtg, t, state)
        fast.observe_action(action, t, state)

    n = 1600
    assert_flat(*rss_growth_halves(step, n), n)


# ---------------------------------------------------------------------------- SB3


def test_decision_policy_and_aaren_ppo_predict_return_plain_arrays():
    """SB3's contract: numpy in, numpy out; no tensor (and so no graph) leaves predict."""
    from stable_baselines3.common.env_util import make_vec_env

    from aaren_rl.sb3 import AarenPPO, DecisionAarenPolicy

    model = build_decision_model(
        {"d_model": 16, "n_layers": 2, "n_heads": 1, "dropout": 0.0}, 3, 1
    ).eval()
    policy = DecisionAarenPolicy(model, target_return=100.0)
    obs = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    action, state = policy.predict(obs)
    policy.receive_rewards(np.ones(2))
    action, state = policy.predict(obs, state)
    assert isinstance(action, np.ndarray) and all(isinstance(s, np.ndarray) for s in state)

    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    ppo = AarenPPO("MlpAarenPolicy", env, n_steps=8, batch_size=16, sequence_length=8, seed=0)
    action, state = ppo.predict(env.reset())
    action, state = ppo.predict(env.reset(), state, episode_start=np.zeros(2, bool))
    assert isinstance(action, np.ndarray) and all(isinstance(s, np.ndarray) for s in state)
