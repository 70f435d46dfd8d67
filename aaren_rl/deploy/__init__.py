"""Run exported aaren-rl policies without PyTorch (numpy and ONNX Runtime only).

``aaren-rl export CHECKPOINT --format onnx --out FILE`` (or
:func:`aaren_rl.deploy.export.export_onnx`, which needs torch) writes the constant-memory step;
this package runs it: :class:`OnnxStep` (one graph, its state as numpy arrays) and
:func:`evaluate_onnx` (a Gymnasium rollout with ``evaluate_agent``'s bookkeeping). Importing
it never imports torch. docs/deploy.md has the file format and the measurements.
"""

from .runtime import OnnxRollout, OnnxStep, evaluate_onnx, load_step
from .spec import SPEC_KEY, initial_state, loads_spec

__all__ = [
    "SPEC_KEY",
    "OnnxRollout",
    "OnnxStep",
    "evaluate_onnx",
    "initial_state",
    "load_step",
    "loads_spec",
]
