"""What data a run trained on, so that ``--resume`` refuses to continue on other data.

:func:`data_fingerprint` hashes the content of a dataset object (every numpy array in it, with
its dtype and shape, and its strings and numbers) into a short hex digest. A checkpoint stores
it beside a label saying where the data came from (:func:`data_identity`); a resume computes it
again and compares. The file's path is only named, never compared: the same data moved to
another folder resumes, other data under the same name does not.

Hashing runs at BLAKE2 speed (about 1 GB/s), once per run start.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

# attributes that say where data came from, not what it is
_SKIPPED_NAMES = frozenset({"path", "source", "process"})
_MAX_DEPTH = 4


def _feed(h: Any, value: Any, depth: int, seen: set[int]) -> None:
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        h.update(f"A{array.dtype.str}{array.shape}".encode())
        if array.dtype.hasobject:
            for item in array.reshape(-1).tolist():
                _feed(h, item, depth + 1, seen)
        else:
            h.update(memoryview(array).cast("B"))
        return
    if isinstance(value, (bool, int, float, str, bytes, np.generic)) or value is None:
        h.update(f"S{type(value).__name__}:{value!r};".encode())
        return
    if isinstance(value, Path) or depth >= _MAX_DEPTH or id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for key in sorted(value, key=str):
            if str(key) not in _SKIPPED_NAMES:
                h.update(f"K{key!r}".encode())
                _feed(h, value[key], depth + 1, seen)
        return
    if isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}".encode())
        for item in value:
            _feed(h, item, depth + 1, seen)
        return
    if dataclasses.is_dataclass(value):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    elif hasattr(value, "__dict__"):
        fields = {k: v for k, v in vars(value).items() if not k.startswith("_")}
    else:
        return
    h.update(f"O{type(value).__name__}".encode())
    _feed(h, fields, depth, seen)


def data_fingerprint(data: Any) -> str:
    """A 32-hex-digit digest of ``data``'s content: numpy arrays (dtype, shape, bytes), lists,
    dicts, dataclasses and plain objects (public attributes, 4 levels deep). Paths, ``source``
    and ``path`` attributes are left out: they say where the data is, not what it is."""
    h = hashlib.blake2b(digest_size=16)
    _feed(h, data, 0, set())
    return h.hexdigest()


def data_identity(data: Any, label: str, **extra: Any) -> dict[str, Any]:
    """``{"label": where the data came from, "hash": its fingerprint, **extra}`` (extra: what
    else must match on resume, e.g. the task name)."""
    return {"label": str(label), "hash": data_fingerprint(data), **extra}


def identity_mismatch(stored: dict[str, Any] | None, current: dict[str, Any] | None) -> list[str]:
    """The keys in which two identities differ (``label`` is compared only when nothing else is
    stored: an old checkpoint). Empty when either is missing (a checkpoint written before
    fingerprints were stored resumes as before)."""
    if not isinstance(stored, dict) or not isinstance(current, dict):
        return []
    keys = sorted((set(stored) | set(current)) - {"label"})
    return [k for k in keys if stored.get(k) != current.get(k)]


def describe_identity(identity: dict[str, Any]) -> str:
    """``label (task X, content hash 1a2b3c4d)`` for a message."""
    extra = ", ".join(f"{k} {v}" for k, v in identity.items() if k not in ("label", "hash"))
    digest = str(identity.get("hash", "?"))[:8]
    return f"{identity.get('label')} ({extra + ', ' if extra else ''}content hash {digest})"
