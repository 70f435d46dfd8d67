"""Heads by name: the built-in ones, and third-party ones from the entry-point group
``aaren_rl.heads``.

A head is an object with the methods of :class:`Head`. It pairs with any backbone of the
interface (:mod:`aaren_rl.nn.backbone`): ``build_model`` receives the backbone already built.
A package adds its own head by declaring, in its ``pyproject.toml``::

    [project.entry-points."aaren_rl.heads"]
    my-head = "my_package.heads:MyHead"

after which ``get_head("my-head")`` finds it (a class is instantiated with no arguments).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from aaren_rl.nn.backbone import Backbone

ENTRY_POINT_GROUP = "aaren_rl.heads"
BUILTIN_HEADS = {
    "forecast": "aaren_rl.heads.forecast:ForecastHead",
    "classify": "aaren_rl.heads.classify:ClassifyHead",
    "events": "aaren_rl.heads.events:EventHead",
}

_REGISTERED: dict[str, Any] = {}


@runtime_checkable
class Head(Protocol):
    """What a head provides to :func:`aaren_rl.heads.fit.fit_head` and the training loop.

    - ``build_model(data, backbone, **options) -> nn.Module``: the model over ``backbone``.
    - ``make_sampler(data, seed) -> sampler``: training batches (``sample(n)``,
      ``state_dict()``, ``load_state_dict()``).
    - ``loss(model, batch) -> scalar tensor``: ``model`` may be wrapped in DDP: call it,
      do not reach around it.
    - ``evaluate(model, data, device) -> {metric: float}``: called in eval mode, no gradients.
    """

    name: str

    def build_model(self, data: Any, backbone: Backbone, **options: Any) -> nn.Module: ...

    def make_sampler(self, data: Any, seed: int) -> Any: ...

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, data: Any, device: torch.device) -> dict[str, float]: ...


def register_head(name: str, head: Any = None) -> Any:
    """Register ``head`` (a class or an instance) under ``name``; usable as a decorator."""

    def add(obj: Any) -> Any:
        _REGISTERED[name] = obj
        return obj

    return add if head is None else add(head)


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_heads() -> list[str]:
    """Every head name: built-in, registered in this process, and installed entry points."""
    return sorted(set(BUILTIN_HEADS) | set(_REGISTERED) | set(_entry_points()))


def _instance(obj: Any) -> Any:
    return obj() if isinstance(obj, type) else obj


def get_head(name: str) -> Any:
    """The head called ``name`` (an instance); an unknown name is an error listing the known."""
    if name in _REGISTERED:
        return _instance(_REGISTERED[name])
    if name in BUILTIN_HEADS:
        module, attr = BUILTIN_HEADS[name].split(":")
        return _instance(getattr(importlib.import_module(module), attr))
    found = _entry_points()
    if name in found:
        try:
            obj = found[name].load()
        except Exception as exc:  # a broken third-party package: say which entry point
            raise ValueError(
                f"head {name!r}: entry point {found[name].value!r} (group {ENTRY_POINT_GROUP!r}) "
                f"failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        return _instance(obj)
    raise ValueError(
        f"no head named {name!r}; known heads: {available_heads()} (third-party heads register "
        f"through the entry-point group {ENTRY_POINT_GROUP!r})"
    )
