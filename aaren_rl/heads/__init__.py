"""Heads that attach to any backbone: forecasting, classification, and third-party heads.

- :mod:`aaren_rl.heads.registry`: heads by name (entry-point group ``aaren_rl.heads``).
- :mod:`aaren_rl.heads.forecast`: time-series forecasting (patches, RevIN-style, streaming).
- :mod:`aaren_rl.heads.classify`: time-series classification (masks, streaming probabilities).
- :mod:`aaren_rl.heads.fit`: fit any head on any backbone with the one training loop.
- :mod:`aaren_rl.heads.cli`: ``aaren-rl fit forecast|classify``.
"""
