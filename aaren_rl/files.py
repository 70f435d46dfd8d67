"""Atomic file writers shared by every layer (a leaf module: it imports nothing of the package).

Each writes to a temp file in the destination's folder and then ``os.replace``-s it, so a reader
(or a run killed mid-write) never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _temp_beside(path: Path, suffix: str = ".tmp") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}{suffix}")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same folder, fsync and ``os.replace``."""
    path = Path(path)
    tmp = _temp_beside(path)
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync and ``os.replace``."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | os.PathLike[str], payload: Any, indent: int = 2) -> Path:
    """Write ``payload`` as JSON (and a final newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(payload, indent=indent) + "\n")


def save_figure_atomic(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Save a matplotlib figure to ``path`` (PNG) atomically."""
    path = Path(path)
    tmp = _temp_beside(path, ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
    return path
