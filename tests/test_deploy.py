"""The exported Decision Aaren step (ONNX Runtime) equals the model's own step.

- step by step, on the same inputs: ONNX Runtime's actions against ``model.act`` (the
  reference) within 1e-5 (float32), its state against ``FastDecisionStep``'s, over whole
  episodes with rows reset at different steps, several envs, both return-token layouts, one
  and two heads, Box (clipped) and Discrete actions;
- whole rollouts: :func:`aaren_rl.deploy.evaluate_onnx` plays the episodes (returns, lengths,
  actions) of :func:`aaren_rl.agents.rollout.evaluate_agent` on the same seeds, both autoreset
  modes; and it does so in a process where ``import torch`` fails;
- the state: the fast step's bytes per env, the same size from step 1 to 100,000;
- the file: the spec in its metadata, the CLI, clear errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from aaren_rl.agents.checkpoint import save_checkpoint
from aaren_rl.agents.decision_model import DecisionModel, build_decision_model
from aaren_rl.agents.fast_step import FastDecisionStep
from aaren_rl.agents.rollout import evaluate_agent
from aaren_rl.deploy import OnnxStep, evaluate_onnx
from aaren_rl.deploy.export import export_decision_step, export_onnx
from aaren_rl.nn.backbone import state_nbytes

pytest.importorskip("onnxruntime")

OBS_DIM, ACT_DIM = 5, 2


def make_model(seed=0, obs_dim=OBS_DIM, act_dim=ACT_DIM, **overrides) -> DecisionModel:
    """A small model with every weight moved off its initial value (LayerNorm scales and
    shifts included, so that folding them is exercised)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = {"d_model": 16, "n_layers": 2, "n_heads": 2, "dropout": 0.1, "max_timestep": 40}
    model = build_decision_model(
        {**config, **overrides},
        obs_dim,
        act_dim,
        state_mean=rng.normal(size=obs_dim),
        state_std=rng.uniform(0.5, 2.0, size=obs_dim),
        reward_scale=1e-2,
        return_max=300.0,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


CASES = [
    pytest.param(rt, heads, space, id=f"{rt}-h{heads}-{space}")
    for rt in ("separate", "merged")
    for heads in (1, 2)
    for space in ("box", "discrete")
]


@pytest.mark.parametrize("return_token,n_heads,space", CASES)
def test_onnx_step_equals_model_step_over_episodes(tmp_path, return_token, n_heads, space):
    model = make_model(
        return_token=return_token, n_heads=n_heads, action_space=space, clip_return=n_heads == 2
    )
    low, high = np.array([-0.4, -1.0]), np.array([0.3, 1.0])
    kw = dict(action_low=low, action_high=high) if space == "box" else dict(action_start=-1)
    path = export_decision_step(model, tmp_path / "step.onnx", **kw)
    ort_step = OnnxStep(path)
    fast = FastDecisionStep(model, backend="torch") if space == "box" else None
    n_envs, n_steps = 4, 70
    g = torch.Generator().manual_seed(1)
    state = ort_step.initial_state(n_envs)
    with torch.inference_mode():
        ref_state = model.initial_state(n_envs)
        fast_state = fast.initial_state(n_envs) if fast else None
        t = torch.zeros(n_envs, dtype=torch.long)
        resets = 0
        for _ in range(n_steps):
            obs = torch.randn(n_envs, OBS_DIM, generator=g) * 2
            rtg = torch.randn(n_envs, generator=g) * 400  # some above return_max
            out, state = ort_step.step(
                state, observation=obs.numpy(), return_to_go=rtg.numpy(), timestep=t.numpy()
            )
            a_ref, ref_state = model.act(obs, rtg, t, ref_state)
            if space == "box":
                a_ref = torch.clamp(
                    a_ref, torch.as_tensor(low).float(), torch.as_tensor(high).float()
                )
                np.testing.assert_allclose(out["action"], a_ref.numpy(), atol=1e-5, rtol=0)
                a_fast, fast_state = fast.act(obs, rtg, t, fast_state)
                a_fast = torch.clamp(
                    a_fast, torch.as_tensor(low).float(), torch.as_tensor(high).float()
                )
                fast_state = fast.observe_action(a_fast, t, fast_state)
                for ours, theirs in (("m", fast_state.m), ("u", fast_state.u), ("w", fast_state.w)):
                    np.testing.assert_allclose(
                        state[ours], theirs.transpose(0, 1).numpy(), rtol=2e-5, atol=2e-5
                    )
            else:
                assert out["action"].dtype == np.int64
                np.testing.assert_array_equal(out["action"], a_ref.argmax(1).numpy() - 1)
                np.testing.assert_array_equal(state["prev_action"], a_ref.numpy())
            ref_state = model.observe_action(torch.as_tensor(state["prev_action"]), t, ref_state)
            t += 1
            done = torch.rand(n_envs, generator=g) < 0.08
            resets += int(done.sum())
            ref_state = model.reset_state(ref_state, done)
            if fast:
                fast_state = fast.reset_state(fast_state, done)
            ort_step.reset(state, done.numpy())
            t[done] = 0
    assert resets >= 5 and int(t.max()) > 15  # episodes ended at different steps; long ones too


def _pendulum_model(**overrides):
    model = make_model(obs_dim=3, act_dim=1, max_timestep=60, **overrides)
    with torch.no_grad():  # larger outputs: actions reach Pendulum's bounds (+-2) sometimes
        model.action_head.weight.mul_(3.0)
    return model


ROLLOUT_ENVS = {
    "box": ("Pendulum-v1", 3, 1, -150.0),
    "discrete": ("CartPole-v1", 4, 2, 60.0),
}


@pytest.mark.parametrize("mode", ["NextStep", "SameStep"])
@pytest.mark.parametrize("space", ["box", "discrete"])
def test_evaluate_onnx_plays_evaluate_agents_episodes(tmp_path, space, mode):
    env_id, obs_dim, act_dim, target = ROLLOUT_ENVS[space]
    model = make_model(
        seed=3, obs_dim=obs_dim, act_dim=act_dim, max_timestep=60, action_space=space,
        action_tanh=False,
    )  # fmt: skip
    with torch.no_grad():  # untanh'd actions beyond Pendulum's bounds (+-2): the clip works
        model.action_head.weight.mul_(4.0)
    path = export_onnx(model, tmp_path / "p.onnx", task={"env_id": env_id})
    kw = dict(n_episodes=7, n_envs=3, seed=11, max_episode_steps=40, autoreset_mode=mode)
    ref = evaluate_agent(model, env_id, target, fast_step=False, record=True, **kw)
    got = evaluate_onnx(path, env_id, target, record=True, **kw)
    np.testing.assert_array_equal(got.episode_env, ref.episode_env)
    np.testing.assert_array_equal(got.lengths, ref.lengths)
    np.testing.assert_allclose(got.returns, ref.returns, rtol=1e-5, atol=1e-4)
    assert len(set(ref.lengths.tolist())) > 1 or space == "box"  # CartPole: varied episodes
    for ours, ep in zip(got.actions, ref.episodes, strict=True):
        if space == "box":  # the env's bounds, clipped in the graph
            np.testing.assert_allclose(ours, ep.actions, atol=1e-5)
            assert np.abs(ours).max() <= 2.0
        else:
            np.testing.assert_array_equal(ours, ep.actions.argmax(1))
    if space == "box":
        assert any(np.abs(a).max() == 2.0 for a in got.actions)  # the clip was exercised


@pytest.mark.slow
def test_state_size_is_the_fast_steps_and_constant_to_100k_steps(tmp_path):
    model = make_model(n_heads=2, max_timestep=40)
    path = export_decision_step(model, tmp_path / "s.onnx")
    step = OnnxStep(path)
    n_envs = 2
    state = step.initial_state(n_envs)
    fast = FastDecisionStep(model, backend="torch")
    fast_bytes = state_nbytes(fast.initial_state(n_envs)) // n_envs
    assert step.spec["state_bytes_per_env"] == fast_bytes
    assert step.state_nbytes(state) // n_envs == fast_bytes
    shapes = {k: (v.shape, v.dtype) for k, v in state.items()}
    rng = np.random.default_rng(0)
    feed = {
        "observation": rng.normal(size=(n_envs, OBS_DIM)).astype(np.float32),
        "return_to_go": np.full(n_envs, 100.0, dtype=np.float32),
    }
    names = [o.name for o in step.session.get_outputs()]
    run = step.session.run  # the graph itself, without the wrapper's per-call checks
    for t in range(1, 100_001):
        feed["timestep"] = np.full(n_envs, t - 1, dtype=np.int64)
        out = dict(zip(names, run(names, {**feed, **state}), strict=True))
        state = {name: out[f"{name}_next"] for name in step.state_names}
        if t in (1, 10, 1000, 100_000) or t % 25_000 == 0:
            assert {k: (v.shape, v.dtype) for k, v in state.items()} == shapes
            assert step.state_nbytes(state) // n_envs == fast_bytes
            assert np.isfinite(out["action"]).all() and np.isfinite(state["w"]).all()
    # the memory kept every token: its denominator is a sum of exponentials, never emptied
    assert (state["u"] > 0).all() and state["has_prev"].all()


BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this process ({name})")
            return None

    sys.meta_path.insert(0, NoTorch())
    try:
        import torch  # noqa: F401
        raise SystemExit("torch imported")
    except ImportError:
        pass
    import aaren_rl.deploy as deploy
    r = deploy.evaluate_onnx(sys.argv[1], "Pendulum-v1", -150.0, n_episodes=3, n_envs=2,
                             seed=4, max_episode_steps=25)
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
    print(json.dumps({"returns": r.returns.tolist()}))
    """
)


def test_runner_works_where_torch_cannot_be_imported(tmp_path):
    model = _pendulum_model()
    path = export_onnx(model, tmp_path / "p.onnx", task={"env_id": "Pendulum-v1"})
    script = tmp_path / "no_torch.py"
    script.write_text(BLOCK_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(script), str(path)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])["returns"]
    ref = evaluate_agent(model, "Pendulum-v1", -150.0, 3, 2, seed=4, max_episode_steps=25)
    np.testing.assert_allclose(got, ref.returns, rtol=1e-5, atol=1e-4)


def test_spec_names_shapes_and_task(tmp_path):
    model = _pendulum_model(return_token="merged")
    path = export_onnx(
        model,
        tmp_path / "p.onnx",
        task={"env_id": "Pendulum-v1", "target_returns": [-200.0], "max_episode_steps": 30},
    )
    step = OnnxStep(path)
    spec = step.spec
    assert [i["name"] for i in spec["inputs"]] == [
        "observation", "return_to_go", "timestep", "m", "u", "w", "prev_action",
        "prev_timestep", "has_prev",
    ]  # fmt: skip
    assert [o["name"] for o in spec["outputs"]][0] == "action"
    session_inputs = [(i.name, i.shape[0]) for i in step.session.get_inputs()]
    assert session_inputs == [(i["name"], "batch") for i in spec["inputs"]]
    assert spec["action"] == {
        "kind": "box", "dim": 1, "low": [-2.0], "high": [2.0], "clipped_in_graph": True,
        "tanh": True,
    }  # fmt: skip
    assert spec["return_to_go"]["scale"] == pytest.approx(1e-2)
    assert spec["return_to_go"]["clip"] is None  # clip_return off
    assert spec["observation"]["mean"] == pytest.approx(model.state_mean.tolist())
    assert spec["task"]["target_returns"] == [-200.0]
    assert spec["model"]["return_token"] == "merged"
    assert spec["state"][0] == {"name": "m", "next": "m_next", "shape": [2, 2], "dtype": "float32",
                                "fill": -1e30}  # fmt: skip
    # the task's target and episode limit are the runner's defaults
    r = evaluate_onnx(step, n_episodes=1)
    assert r.target_return == -200.0 and r.lengths.tolist() == [30]


def _checkpoint(model, path, task):
    save_checkpoint(
        path,
        model=model,
        optimizer=None,
        scheduler=None,
        step=7,
        agent_config={"model": model.config.to_dict()},
        train_config={},
        task=task,
        rng_state={},
    )
    return path


def test_cli_exports_a_checkpoint_and_refuses_to_overwrite(tmp_path, capsys):
    from aaren_rl.cli import main

    model = _pendulum_model()
    ckpt = _checkpoint(
        model, tmp_path / "checkpoint.pt", {"name": "pend", "env_id": "Pendulum-v1",
                                            "target_returns": [-150.0]}
    )  # fmt: skip
    out = tmp_path / "policy.onnx"
    assert main(["export", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    step = OnnxStep(out)
    assert step.spec["source"]["step"] == 7
    assert step.spec["task"]["env_id"] == "Pendulum-v1"
    before = out.read_bytes()
    assert main(["export", str(tmp_path), "--format", "onnx", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    ref = evaluate_agent(model, "Pendulum-v1", -150.0, 2, 2, seed=0, max_episode_steps=20)
    got = evaluate_onnx(out, n_episodes=2, n_envs=2, seed=0, max_episode_steps=20)
    np.testing.assert_allclose(got.returns, ref.returns, rtol=1e-5, atol=1e-4)


def test_clear_errors(tmp_path):
    model = make_model()
    path = export_decision_step(model, tmp_path / "s.onnx")
    step = OnnxStep(path)
    state = step.initial_state(2)
    good = dict(
        observation=np.zeros((2, OBS_DIM), np.float32),
        return_to_go=np.zeros(2, np.float32),
        timestep=np.zeros(2, np.int64),
    )
    with pytest.raises(ValueError, match="observation.*shape"):
        step.step(state, **{**good, "observation": np.zeros((2, OBS_DIM + 1))})
    with pytest.raises(ValueError, match="NaN or inf.*row 1"):
        step.step(state, **{**good, "observation": np.array([[0] * OBS_DIM, [np.nan] * OBS_DIM])})
    with pytest.raises(TypeError, match="integers"):
        step.step(state, **{**good, "timestep": np.zeros(2)})
    with pytest.raises(FileNotFoundError, match="no such file"):
        OnnxStep(tmp_path / "missing.onnx")
    import onnx

    bare = onnx.load(path)
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    with pytest.raises(ValueError, match="aaren-rl export"):
        OnnxStep(tmp_path / "bare.onnx")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx(model, path)
    with pytest.raises(ValueError, match="Box actions"):
        export_decision_step(make_model(action_space="discrete"), tmp_path / "d.onnx",
                             action_low=[0, 0], action_high=[1, 1])  # fmt: skip


def test_int8_variant_quantises_the_weight_matmuls_and_keeps_the_contract(tmp_path):
    import onnx

    from aaren_rl.deploy.quantize import quantize_int8

    model = make_model(d_model=64, n_heads=1)
    f32 = export_decision_step(model, tmp_path / "s.onnx", action_low=[-1, -1], action_high=[1, 1])
    int8 = quantize_int8(f32, tmp_path / "s.int8.onnx")
    ops = {n.op_type for n in onnx.load(int8).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops
    assert int8.stat().st_size < 0.6 * f32.stat().st_size
    a, b = OnnxStep(f32), OnnxStep(int8)
    assert b.spec["source"]["precision"] == "int8-dynamic"
    assert {k: v for k, v in b.spec.items() if k != "source"} == {
        k: v for k, v in a.spec.items() if k != "source"
    }
    sa, sb = a.initial_state(8), b.initial_state(8)
    rng = np.random.default_rng(0)
    errors = []
    for t in range(40):
        feed = dict(
            observation=rng.normal(size=(8, OBS_DIM)).astype(np.float32),
            return_to_go=np.full(8, 100.0, np.float32),
            timestep=np.full(8, t),
        )
        oa, sa = a.step(sa, **feed)
        ob, sb = b.step(sb, **feed)
        assert {k: v.shape for k, v in sb.items()} == {k: v.shape for k, v in sa.items()}
        errors.append(np.abs(oa["action"] - ob["action"]))
    errors = np.stack(errors)
    # int8 weights move most actions a little (a random, perturbed model amplifies some: what
    # int8 costs a trained policy is measured by its returns, docs/deploy.md)
    assert 0 < np.median(errors) < 0.02 and errors.mean() < 0.1, (np.median(errors), errors.mean())
    with pytest.raises(FileExistsError):
        quantize_int8(f32, int8)
