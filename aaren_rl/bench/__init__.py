"""Benchmarks, one module each, behind ``aaren-rl bench``.

- :mod:`aaren_rl.bench.backbone`: the Aaren scan and step against a causal Transformer of the
  same size (``aaren-rl bench``);
- :mod:`aaren_rl.bench.agent`: the decision agents' rollout step, memory, training and
  evaluation (``aaren-rl bench agent``);
- :mod:`aaren_rl.bench.export`: the exported ONNX step against the numba fast step
  (``aaren-rl bench export``);
- :mod:`aaren_rl.bench.common`: what they share (timing, peak memory, tables, the stamp);
- :mod:`aaren_rl.bench.cli`: the command line, which dispatches to the three.

The package imports nothing on import: each benchmark loads only when it runs.
"""
