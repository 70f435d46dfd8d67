"""Backbone states (nested tuples, NamedTuples and dicts of tensors) to and from flat leaf lists.

SB3's recurrent contract passes the state as a tuple of numpy arrays. A backbone's state is a
structure of tensors (Aaren: one ``(m, u, w)`` per layer; the Transformer: a dict holding a KV
cache or a window). :func:`flatten_state` lists its tensors in a fixed order and gives a
function that rebuilds the same structure from such a list, so a state can cross the numpy
boundary and come back unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

Rebuild = Callable[[Sequence[Any]], Any]


def flatten_state(tree: Any) -> tuple[list[torch.Tensor], Rebuild]:
    """``tree`` -> (its tensors in order, ``rebuild(leaves) -> tree of the same structure``).

    Tuples, NamedTuples and dicts (keys sorted) nest; anything else must be a tensor.
    """
    if isinstance(tree, torch.Tensor):
        return [tree], lambda leaves: leaves[0]
    if isinstance(tree, dict):
        keys = sorted(tree)
        parts = [flatten_state(tree[k]) for k in keys]
        sizes = [len(p[0]) for p in parts]

        def rebuild_dict(leaves: Sequence[Any]) -> dict[str, Any]:
            out, i = {}, 0
            for k, (_, rb), n in zip(keys, parts, sizes, strict=True):
                out[k] = rb(leaves[i : i + n])
                i += n
            return out

        return [t for p in parts for t in p[0]], rebuild_dict
    if isinstance(tree, (tuple, list)):
        parts = [flatten_state(v) for v in tree]
        sizes = [len(p[0]) for p in parts]
        kind = type(tree)
        named = hasattr(tree, "_fields")

        def rebuild_seq(leaves: Sequence[Any]) -> Any:
            items, i = [], 0
            for (_, rb), n in zip(parts, sizes, strict=True):
                items.append(rb(leaves[i : i + n]))
                i += n
            return kind(*items) if named else kind(items)

        return [t for p in parts for t in p[0]], rebuild_seq
    raise TypeError(
        f"a backbone state holds tensors, tuples and dicts; found {type(tree).__name__}"
    )
