"""Export a trained policy to ONNX: the constant-memory step, state in and state out.

:func:`export_onnx` writes one ``.onnx`` file per policy. For a Decision Aaren checkpoint (or
model) the graph is :class:`~aaren_rl.deploy.decision_graph.DecisionStepGraph`: one call per
environment step, with the weights fused as :class:`~aaren_rl.agents.fast_step.FastDecisionStep`
fuses them, a dynamic batch dimension (``batch``: any number of envs per call) and the spec of
:mod:`aaren_rl.deploy.spec` in the file's metadata. Run it with :mod:`aaren_rl.deploy.runtime`
(numpy and ONNX Runtime only).

Exporter: ``torch.onnx.export(..., dynamo=False)``, the TorchScript tracer. The graph has
no data-dependent control flow (every branch depends on the model's config, fixed at export),
which is what tracing needs, and the tracer needs nothing beyond torch; the dynamo exporter
needs the ``onnxscript`` package besides and gives the same operators here. Opset
:data:`OPSET`. The file is written atomically.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aaren_rl.agents.decision_model import DecisionModel
from aaren_rl.agents.fast_step import EMPTY_MAX
from aaren_rl.files import write_bytes_atomic

from .decision_graph import INPUT_NAMES, OUTPUT_NAMES, STATE_NAMES, DecisionStepGraph
from .spec import SPEC_KEY, dumps_spec

OPSET = 17
FORMATS = ("onnx",)

__all__ = [
    "FORMATS",
    "OPSET",
    "decision_spec",
    "export_decision_step",
    "export_onnx",
    "export_ppo_policy",
    "export_stream",
]


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError(
            "exporting to ONNX needs the 'onnx' package: pip install 'aaren-rl[deploy]'"
        ) from None
    return onnx


def _dtype_name(t: torch.Tensor) -> str:
    return {torch.float32: "float32", torch.int64: "int64", torch.bool: "bool"}[t.dtype]


def decision_spec(
    graph: DecisionStepGraph,
    model: DecisionModel,
    task: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The runner's contract for ``graph`` (see :mod:`aaren_rl.deploy.spec`)."""
    shapes = graph.state_shapes()
    state0 = graph.initial_state(1)
    fills = {"m": EMPTY_MAX, "u": 0.0, "w": 0.0, "prev_action": 0.0, "prev_timestep": 0}
    fills["has_prev"] = False
    state = [
        {
            "name": name,
            "next": f"{name}_next",
            "shape": list(shapes[name]),
            "dtype": _dtype_name(t),
            "fill": fills[name],
        }
        for name, t in zip(STATE_NAMES, state0, strict=True)
    ]
    state_bytes = sum(t.numel() * t.element_size() for t in state0)
    act_shape = [] if graph.discrete else [graph.act_dim]
    inputs = [
        {"name": "observation", "shape": [graph.obs_dim], "dtype": "float32"},
        {"name": "return_to_go", "shape": [], "dtype": "float32"},
        {"name": "timestep", "shape": [], "dtype": "int64"},
    ] + [{k: s[k] for k in ("name", "shape", "dtype")} for s in state]
    outputs = [
        {"name": "action", "shape": act_shape, "dtype": "int64" if graph.discrete else "float32"}
    ] + [{"name": s["next"], "shape": s["shape"], "dtype": s["dtype"]} for s in state]
    action: dict[str, Any] = {"kind": "discrete" if graph.discrete else "box"}
    action["dim"] = graph.act_dim
    if graph.discrete:
        action["start"] = graph.action_start
    else:
        action["low"] = graph.action_low.tolist()
        action["high"] = graph.action_high.tolist()
        action["clipped_in_graph"] = graph.clip_action
        action["tanh"] = graph.tanh
    return {
        "kind": "decision_step",
        "inputs": inputs,
        "outputs": outputs,
        "state": state,
        "state_bytes_per_env": int(state_bytes),
        "action": action,
        "return_to_go": {
            "scale": graph.reward_scale,
            "clip": graph.return_clip if math.isfinite(graph.return_clip) else None,
            "unscaled_input": True,
        },
        "max_timestep": graph.max_timestep,
        "observation": {
            "dim": graph.obs_dim,
            "normalisation": "folded into the graph: feed raw observations",
            "mean": model.state_mean.tolist(),
            "std": model.state_std.tolist(),
        },
        "model": model.config.to_dict(),
        "task": dict(task or {}),
        "source": dict(source or {}),
    }


def _trace_to_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> Any:
    """``module`` traced at ``args`` into an in-memory ``onnx.ModelProto`` (batch dynamic)."""
    onnx = _require_onnx()
    buffer = io.BytesIO()
    dynamic = {name: {0: "batch"} for name in (*input_names, *output_names)}
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python scalars (config values)
        torch.onnx.export(
            module,
            args,
            buffer,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def save_onnx(proto: Any, spec: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``proto`` with ``spec`` in its metadata to ``path`` atomically; return the path."""
    onnx = _require_onnx()
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = SPEC_KEY, dumps_spec(spec)
    proto.producer_name = "aaren-rl"
    onnx.checker.check_model(proto)
    return write_bytes_atomic(path, proto.SerializeToString())


def _source(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    import aaren_rl

    out = {
        "aaren_rl_version": aaren_rl.__version__,
        "torch_version": torch.__version__,
        "exporter": "torch.onnx.export(dynamo=False)",
        "opset": OPSET,
        "precision": "float32",
    }
    out.update(extra or {})
    return out


def export_decision_step(
    model: DecisionModel,
    path: str | os.PathLike[str],
    *,
    action_low: Sequence[float] | np.ndarray | None = None,
    action_high: Sequence[float] | np.ndarray | None = None,
    action_start: int = 0,
    task: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Export ``model``'s rollout step (:class:`DecisionStepGraph`) to ``path``.

    Args:
        model: a Decision Aaren model (pre-norm Aaren backbone; Box or Discrete actions).
        path: the ``.onnx`` file to write (atomically).
        action_low, action_high: ``[act_dim]`` Box bounds, clipped in the graph (None: none).
        action_start: a Discrete space's ``start``.
        task: what the runner may use: ``env_id``, ``target_returns``, ``max_episode_steps``...
        source: provenance recorded in the spec (checkpoint path, training step).
    """
    graph = DecisionStepGraph(model, action_low, action_high, action_start)
    b = 2  # traced at two rows; the batch dimension is dynamic
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(b, graph.obs_dim, generator=g)
    args = (
        obs,
        torch.zeros(b),
        torch.zeros(b, dtype=torch.long),
        *graph.initial_state(b),
    )
    proto = _trace_to_onnx(graph, args, INPUT_NAMES, OUTPUT_NAMES)
    spec = decision_spec(graph, model, task, _source(source))
    return save_onnx(proto, spec, path)


def _task_bounds(task: Mapping[str, Any]) -> dict[str, Any]:
    """The action bounds (or Discrete start) of the task's environment (made once, closed)."""
    import gymnasium as gym

    env_id = task.get("env_id")
    if not env_id:
        return {}
    env = gym.make(env_id, **dict(task.get("env_kwargs") or {}))
    try:
        space = env.action_space
    finally:
        env.close()
    if isinstance(space, gym.spaces.Discrete):
        return {"action_start": int(space.start)}
    if isinstance(space, gym.spaces.Box):
        return {"action_low": space.low.reshape(-1), "action_high": space.high.reshape(-1)}
    return {}


def export_onnx(
    source: Any,
    path: str | os.PathLike[str],
    *,
    task: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a trained policy to an ONNX file at ``path``.

    Args:
        source: a Decision Aaren checkpoint written by ``aaren-rl train`` (its file or
            folder) or a :class:`DecisionModel`: the rollout step
            (:func:`export_decision_step`); or an AarenPPO model, or the ``.zip`` that its
            ``save`` wrote: the deterministic policy step (:func:`export_ppo_policy`).
        path: the ``.onnx`` file to write.
        task: for a model, its task (``env_id`` gives the action bounds; ``target_returns``,
            ``max_episode_steps`` go to the spec); a checkpoint carries its own.
        overwrite: replace an existing file at ``path`` (otherwise an error).

    Returns:
        The path written. A decision step's action bounds come from the task's environment
        (made once).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if isinstance(source, (str, os.PathLike)) and str(source).endswith(".zip"):
        from aaren_rl.sb3 import AarenPPO

        if not Path(source).is_file():
            raise FileNotFoundError(f"{source}: no such file (an AarenPPO.save .zip)")
        ppo = AarenPPO.load(source, device="cpu")
        return export_ppo_policy(ppo, path, task=task, source={"checkpoint": str(source)})
    if hasattr(source, "policy") and hasattr(source.policy, "actor_memory"):
        return export_ppo_policy(source, path, task=task)
    info: dict[str, Any] = {}
    if isinstance(source, DecisionModel):
        model = source
    elif isinstance(source, torch.nn.Module):
        raise TypeError(
            f"export_onnx takes a DecisionModel, an AarenPPO or a checkpoint path, got "
            f"{type(source).__name__}"
        )
    else:
        from aaren_rl.agents.checkpoint import load_agent

        ckpt = Path(source)
        if ckpt.is_dir():
            ckpt = ckpt / "checkpoint.pt"
        model, loaded = load_agent(ckpt)
        task = task if task is not None else loaded.get("task") or {}
        info = {"checkpoint": str(ckpt), "step": loaded.get("step")}
    task = dict(task or {})
    keep = ("name", "env_id", "env_kwargs", "target_returns", "max_episode_steps", "reward_scale")
    task_spec = {k: task[k] for k in keep if k in task}
    was_training = model.training
    model.eval()
    try:
        return export_decision_step(
            model, path, task=task_spec, source=info, **_task_bounds(task_spec)
        )
    finally:
        model.train(was_training)


def _fill_value(t: torch.Tensor) -> Any:
    """The value every element of ``t`` holds (JSON-able: -inf as the string ``"-inf"``)."""
    v = t.reshape(-1)[0].item()
    if isinstance(v, float) and math.isinf(v):
        return "-inf" if v < 0 else "inf"
    return v


def export_ppo_policy(
    model: Any,
    path: str | os.PathLike[str],
    *,
    task: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Export an :class:`~aaren_rl.sb3.ppo.AarenPPO` policy's deterministic step to ``path``.

    The graph is :class:`~aaren_rl.deploy.ppo_graph.PPOPolicyGraph`: ``observation``,
    ``episode_start`` and the actor memory in, the action (``predict(...,
    deterministic=True)``'s) and the memory out. ``model``: an AarenPPO or its policy.
    """
    from .ppo_graph import PPOPolicyGraph

    policy = getattr(model, "policy", model)
    graph = PPOPolicyGraph(policy)
    was_training = policy.training
    policy.set_training_mode(False)
    b = 2
    g = torch.Generator().manual_seed(0)
    state0 = graph.initial_state(b)
    args = (
        torch.randn(b, *graph.obs_shape, generator=g),
        torch.tensor([True, False]),
        *state0,
    )
    names = graph.state_names
    inputs = ("observation", "episode_start", *names)
    outputs = ("action", *(f"{n}_next" for n in names))
    try:
        proto = _trace_to_onnx(graph, args, inputs, outputs)
    finally:
        policy.set_training_mode(was_training)
    shapes = graph.state_shapes()
    state = [
        {
            "name": n,
            "next": f"{n}_next",
            "shape": list(shapes[n]),
            "dtype": _dtype_name(t),
            "fill": _fill_value(t),
        }
        for n, t in zip(names, graph.initial_state(1), strict=True)
    ]
    space = policy.action_space
    if graph.discrete:
        action = {"kind": "discrete", "dim": int(space.n), "start": graph.action_start}
        act_io = {"name": "action", "shape": [], "dtype": "int64"}
    else:
        action = {
            "kind": "box",
            "shape": list(space.shape),
            "low": graph.low.reshape(-1).tolist(),
            "high": graph.high.reshape(-1).tolist(),
            "clipped_in_graph": True,
        }
        act_io = {"name": "action", "shape": list(space.shape), "dtype": "float32"}
    spec = {
        "kind": "ppo_policy",
        "inputs": [
            {"name": "observation", "shape": list(graph.obs_shape), "dtype": "float32"},
            {"name": "episode_start", "shape": [], "dtype": "bool"},
        ]
        + [{k: s[k] for k in ("name", "shape", "dtype")} for s in state],
        "outputs": [act_io]
        + [{"name": s["next"], "shape": s["shape"], "dtype": s["dtype"]} for s in state],
        "state": state,
        "state_bytes_per_env": int(
            sum(t.numel() * t.element_size() for t in graph.initial_state(1))
        ),
        "action": action,
        "deterministic": True,
        "policy": {
            k: getattr(policy, k)
            for k in (
                "d_model",
                "n_layers",
                "n_heads",
                "critic",
                "timestep_embedding",
                "decay",
                "skip_features",
                "norm_first",
                "short_conv",
                "skip_conv",
                "log_mass",
            )
        },  # fmt: skip
        "task": dict(task or {}),
        "source": _source(source),
    }
    return save_onnx(proto, spec, path)


def _state_entries(names: Sequence[str], shapes: Mapping[str, tuple], state0) -> list[dict]:
    return [
        {
            "name": n,
            "next": f"{n}_next",
            "shape": list(shapes[n]),
            "dtype": _dtype_name(t),
            "fill": _fill_value(t),
        }
        for n, t in zip(names, state0, strict=True)
    ]


def export_stream(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Export a sequence head's stream (one observation in, the O(1) state carried) to ``path``.

    ``model``: a :class:`~aaren_rl.heads.classify.ClassifyModel`
    (:class:`~aaren_rl.deploy.stream_graph.ClassifyStreamGraph`: ``x``, ``reset`` and the
    state in; the class probabilities and the state out) or a
    :class:`~aaren_rl.heads.forecast.ForecastModel`
    (:class:`~aaren_rl.deploy.stream_graph.ForecastStreamGraph`: ``x``, ``reset`` and the
    state in; the forecast, ``ready`` and the state out), on the Aaren backbone.
    """
    from aaren_rl.heads.classify import ClassifyModel
    from aaren_rl.heads.events import EventModel
    from aaren_rl.heads.forecast import ForecastModel

    from .stream_graph import ClassifyStreamGraph, EventStreamGraph, ForecastStreamGraph

    cfg = model.config
    if isinstance(model, ClassifyModel):
        graph: Any = ClassifyStreamGraph(model.float())
        kind, outs = "classify_stream", [("probabilities", [cfg.n_classes], "float32")]
        head = {"n_channels": cfg.n_channels, "n_classes": cfg.n_classes, "pool": cfg.pool}
        head["max_len"] = cfg.max_len
    elif isinstance(model, ForecastModel):
        graph = ForecastStreamGraph(model.float())
        kind = "forecast_stream"
        outs = [("forecast", [cfg.horizon, cfg.n_channels], "float32"), ("ready", [], "bool")]
        head = {
            "n_channels": cfg.n_channels,
            "horizon": cfg.horizon,
            "patch_len": cfg.patch_len,
            "input_len": cfg.input_len,
            "channel_independent": cfg.channel_independent,
            "norm": cfg.norm,
        }
    elif isinstance(model, EventModel):
        graph = EventStreamGraph(model.float())
        kind, k, d = "event_stream", cfg.n_components, graph.d_model
        outs = [
            ("log_weights", [k], "float32"),
            ("loc", [k], "float32"),
            ("log_scale", [k], "float32"),
            ("mean_gap", [], "float32"),
            ("hidden", [d], "float32"),
        ]
        head = {
            "n_marks": cfg.n_marks,
            "n_components": k,
            "log_gap_mean": cfg.log_gap_mean,
            "log_gap_std": cfg.log_gap_std,
            "min_gap": cfg.min_gap,
            "distribution": "mixture of normals over z = (log(gap) - log_gap_mean) / log_gap_std",
        }
    else:
        raise ValueError(
            "export_stream takes a ClassifyModel, a ForecastModel or an EventModel, not "
            f"{type(model).__name__}"
        )
    was_training = model.training
    model.eval()
    b = 2
    g = torch.Generator().manual_seed(0)
    if kind == "event_stream":
        data_inputs = [
            {"name": "time", "shape": [], "dtype": "float32"},
            {"name": "mark", "shape": [], "dtype": "int64"},
            {"name": "reset", "shape": [], "dtype": "bool"},
        ]
        first = (torch.rand(b, generator=g) + 1.0, torch.zeros(b, dtype=torch.long))
    else:
        data_inputs = [
            {"name": "x", "shape": [cfg.n_channels], "dtype": "float32"},
            {"name": "reset", "shape": [], "dtype": "bool"},
        ]
        first = (torch.randn(b, cfg.n_channels, generator=g),)
    args = (*first, torch.tensor([True, False]), *graph.initial_state(b))
    names = graph.state_names
    inputs = (*(i["name"] for i in data_inputs), *names)
    outputs = (*(o[0] for o in outs), *(f"{n}_next" for n in names))
    try:
        proto = _trace_to_onnx(graph, args, inputs, outputs)
    finally:
        model.train(was_training)
    state = _state_entries(names, graph.state_shapes(), graph.initial_state(1))
    spec = {
        "kind": kind,
        "inputs": data_inputs + [{k: s[k] for k in ("name", "shape", "dtype")} for s in state],
        "outputs": [{"name": n, "shape": sh, "dtype": dt} for n, sh, dt in outs]
        + [{"name": s["next"], "shape": s["shape"], "dtype": s["dtype"]} for s in state],
        "state": state,
        "state_bytes_per_env": int(
            sum(t.numel() * t.element_size() for t in graph.initial_state(1))
        ),
        "head": head,
        "source": _source(source),
    }
    return save_onnx(proto, spec, path)
