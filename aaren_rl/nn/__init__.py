"""Sequence backbones behind one interface: Aaren (constant-memory) and a causal Transformer."""
