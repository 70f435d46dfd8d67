"""int8 variants of an exported graph: ONNX Runtime's dynamic quantisation.

:func:`quantize_int8` runs ``onnxruntime.quantization.quantize_dynamic`` on an exported file:
every ``MatMul`` whose second input is a weight (the fused projections, feed-forward layers and
head) gets int8 weights (per output channel, signed) and quantises its activations to uint8 on
the fly; the Aaren memory, LayerNorms and embeddings stay float32. The spec is carried over with
``source.precision = "int8-dynamic"``. torch-free (onnx and onnxruntime only).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from .spec import SPEC_KEY, dumps_spec, loads_spec

__all__ = ["quantize_int8"]


def quantize_int8(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write the int8 (dynamic) variant of the exported file ``src`` to ``dst``, atomically."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from aaren_rl.files import write_bytes_atomic

    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass overwrite=True (--overwrite) to replace it")
    proto = onnx.load(src)
    spec = loads_spec({p.key: p.value for p in proto.metadata_props}, str(src))
    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        root.setLevel(logging.ERROR)  # its advice to pre-process (shape inference) for static
        try:
            quantize_dynamic(
                src,
                out,
                weight_type=QuantType.QInt8,
                per_channel=True,
                extra_options={"MatMulConstBOnly": True},
            )
        finally:
            root.setLevel(level)
        quantized = onnx.load(out)
    spec["source"] = {**spec.get("source", {}), "precision": "int8-dynamic"}
    spec.pop("version", None)
    del quantized.metadata_props[:]
    entry = quantized.metadata_props.add()
    entry.key, entry.value = SPEC_KEY, dumps_spec(spec)
    return write_bytes_atomic(dst, quantized.SerializeToString())
