"""Small atomic file writers shared by every command that writes results (the implementation
lives in :mod:`aaren_rl.files`, importable from every layer)."""

from __future__ import annotations

from aaren_rl.files import save_figure_atomic, write_json_atomic, write_text_atomic

__all__ = ["save_figure_atomic", "write_json_atomic", "write_text_atomic"]
