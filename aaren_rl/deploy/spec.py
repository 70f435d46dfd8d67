"""What an exported file carries beside its graph: the runner's contract, torch-free.

An aaren-rl ONNX file holds one JSON document in its ``metadata_props`` under the key
:data:`SPEC_KEY`. It names the kind of graph (:data:`KINDS`), its inputs and outputs in call
order with their per-env shapes and dtypes, which outputs feed which state inputs at the next
call, the initial value of every state input (``fill``), and what a runner needs besides:
for a decision step the action space (kind, bounds, ``start``), the return-to-go scale and
clip, the timestep table's length, the observation normalisation (folded into the graph;
recorded for reference) and the task (env id, target returns, episode limit).

This module imports numpy only: :mod:`aaren_rl.deploy.runtime` reads the spec without torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

SPEC_KEY = "aaren_rl.spec"
SPEC_VERSION = 1
KINDS = ("decision_step", "ppo_policy", "forecast_stream", "classify_stream", "event_stream")

__all__ = [
    "KINDS",
    "SPEC_KEY",
    "SPEC_VERSION",
    "dumps_spec",
    "fill_value",
    "initial_state",
    "loads_spec",
]


def dumps_spec(spec: Mapping[str, Any]) -> str:
    """The spec as the JSON string stored in the file (finite floats only: inf becomes null)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not np.isfinite(value):
            return None
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, np.generic):
            return clean(value.item())
        return value

    return json.dumps(clean({"version": SPEC_VERSION, **spec}), sort_keys=True)


def loads_spec(metadata: Mapping[str, str], source: str = "model") -> dict[str, Any]:
    """The spec from an ONNX file's metadata map; a clear error when it is missing or newer."""
    text = metadata.get(SPEC_KEY)
    if text is None:
        raise ValueError(
            f"{source}: no '{SPEC_KEY}' metadata; it was not written by `aaren-rl export` "
            "(export the checkpoint again with `aaren-rl export CHECKPOINT --format onnx`)"
        )
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: the '{SPEC_KEY}' metadata is not JSON ({exc})") from None
    version = spec.get("version")
    if version != SPEC_VERSION:
        raise ValueError(
            f"{source}: spec version {version!r}, this runtime reads version {SPEC_VERSION}; "
            "install the aaren-rl version that exported it, or export again"
        )
    if spec.get("kind") not in KINDS:
        raise ValueError(f"{source}: unknown graph kind {spec.get('kind')!r}; expected {KINDS}")
    return spec


def initial_state(spec: Mapping[str, Any], batch_size: int) -> dict[str, np.ndarray]:
    """The empty state of ``batch_size`` envs (or streams): one array per state input, batch
    first, filled with the spec's ``fill`` value."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = {}
    for item in spec["state"]:
        shape = (int(batch_size), *item["shape"])
        out[item["name"]] = np.full(shape, fill_value(item), dtype=np.dtype(item["dtype"]))
    return out


def fill_value(item: Mapping[str, Any]) -> Any:
    """A state field's initial value (``"-inf"``/``"inf"`` strings as floats)."""
    fill = item["fill"]
    return float(fill) if isinstance(fill, str) else fill
