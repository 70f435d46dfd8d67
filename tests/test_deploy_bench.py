"""``aaren-rl bench export --quick``: the report's claims hold in a smoke run.

The numbers of docs/deploy.md come from the full run; here the command runs at small sizes and
its results are checked for what must hold on any machine: every variant timed at every batch
size, the int8 file smaller, the torch-free process without torch and below the one that
imports it, and the exported state equal to the fast step's and constant.
"""

from __future__ import annotations

import json

import pytest

from aaren_rl.cli import main

pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_bench_export_quick(tmp_path):
    assert main(["bench", "export", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "bench-export.json").read_text())
    variants = {(r["variant"], r["n_envs"]) for r in results["latency"]}
    for name in ("onnx-float32", "onnx-int8", "fast-numba"):
        assert {(name, 1), (name, 4)} <= variants
    assert all(r["us_per_env"] > 0 and r["steps_timed"] > 0 for r in results["latency"])
    assert all(0 < r["us_per_env_p10"] <= r["us_per_env"] for r in results["latency"])
    sizes = results["file_bytes"]
    assert sizes["onnx-int8"] < sizes["onnx-float32"]
    rss = results["peak_rss"]
    assert rss["no-torch"]["torch_imported"] is False
    assert rss["with-torch"]["torch_imported"] is True
    assert rss["no-torch"]["peak_rss_bytes"] < rss["with-torch"]["peak_rss_bytes"]
    state = results["state"]
    assert state["equal_and_constant"] is True
    assert set(state["exported_bytes_by_step"]) == {"1", "200"}
    assert results["stamp"]["versions"]["onnxruntime"]
    assert (tmp_path / "bench-export.md").read_text().count("|") > 20
    assert (tmp_path / "bench-export.png").stat().st_size > 0
    assert main(["bench", "export", "--quick", "--out", str(tmp_path)]) == 2  # no overwrite
