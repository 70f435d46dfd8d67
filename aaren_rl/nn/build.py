"""Build a backbone by name: the one switch between Aaren and the Transformer baseline."""

from __future__ import annotations

from aaren_rl.nn.backbone import Backbone

BACKBONES = ("aaren", "transformer")


def build_backbone(
    name: str,
    d_model: int,
    n_layers: int,
    n_heads: int,
    d_ff: int | None = None,
    dropout: float = 0.0,
    norm_first: bool = True,
) -> Backbone:
    """``"aaren"`` (constant-memory state) or ``"transformer"`` (full causal attention, KV
    cache when stepped), at the same width, depth, heads and feed-forward size."""
    common = dict(
        d_model=int(d_model),
        n_layers=int(n_layers),
        n_heads=int(n_heads),
        d_ff=d_ff,
        dropout=float(dropout),
        norm_first=norm_first,
    )
    if name == "aaren":
        from aaren_rl.nn.aaren import AarenBackbone

        return AarenBackbone(**common)
    if name == "transformer":
        from aaren_rl.nn.transformer import TransformerBackbone

        return TransformerBackbone(**common)
    raise ValueError(f"backbone={name!r}: expected one of {BACKBONES}")
