"""``aaren-rl bench agent --quick``: the files it writes and the constant-memory claim.

Timings are not asserted (they depend on the machine); the structure of the JSON, markdown and
plots is, and the fast step's state bytes are checked against their formula at every step t.
"""

from __future__ import annotations

import json

import pytest

from aaren_rl.cli import main

AGENTS = {
    "aaren-reference",
    "aaren-fast-numba",
    "aaren-fast-torch",
    "dt-recompute-k20",
    "transformer-kv-full",
}


@pytest.mark.slow
def test_quick_bench_writes_stamped_json_markdown_and_plots(tmp_path, capsys):
    out = tmp_path / "docs"
    assert main(["bench", "agent", "--quick", "--out", str(out), "--eval-steps", "120"]) == 0
    results = json.loads((out / "bench-agent.json").read_text())

    st = results["stamp"]
    assert st["torch_threads"] == 1 and st["quick"] is True
    assert st["machine"] and st["versions"]["torch"] and st["versions"]["numba"]

    lat = results["latency"]
    assert {(r["agent"], r["n_envs"]) for r in lat} == {(a, n) for a in AGENTS for n in (1, 4)}
    assert all(r["us_per_env"] > 0 and r["steps_timed"] >= 3 for r in lat)

    mem = results["memory"]
    # per env: 3 layers x 1 head x (d_head 128 + m + u) float32 + pending action (3 float32),
    # its timestep (int64) and flag (bool): the same number after every step
    assert mem["fast_state_bytes_constant"] is True
    assert {r["state_bytes_per_env"] for r in mem["fast_step"]} == {3 * 130 * 4 + 12 + 8 + 1}
    assert [r["t"] for r in mem["fast_step"]] == [1, 10, 100, 300]
    assert mem["reference_state_bytes"] == [3 * 130 * 4]
    kv = {r["t"]: r["kv_cache_bytes"] for r in mem["transformer"]}
    assert kv[10] == 10 * kv[1]  # the KV cache grows with t

    training = results["training"]
    variants = {r["variant"] for r in training}
    assert variants == {"aaren-c16", "aaren-c64", "transformer", "transformer-masked"}
    assert {r["T"] for r in training} == {60, 120}
    assert all(r["peak_bytes"] > 0 for r in training)

    ev = {(r["run"], r["vectorization"], r["n_envs"]) for r in results["evaluation"]}
    assert ev == {
        ("simulator-alone", "plain", 1),  # one gym.make env, no vector wrapper
        ("aaren-fast", "plain", 1),
        ("simulator-alone-replay", "plain", 1),  # the policy's actions, replayed
        ("simulator-alone", "single", 1),
        ("aaren-fast", "sync", 1),
        ("aaren-fast", "sync", 2),
        ("simulator-alone", "overlap", 2),  # on the overlap's worker processes
        ("aaren-fast", "overlap", 2),
    }
    assert all(r["env_steps"] == 120 for r in results["evaluation"])
    assert {r["workers"] for r in results["evaluation"] if r["vectorization"] == "overlap"} == {1}
    assert "eval_overlap_x2_over_simulator_on_same_workers" in results["claims"]
    episodes = {(r["run"], r["vectorization"]): r["episodes"] for r in results["evaluation"]}
    # the replay is the policy's trajectory without the policy: the same resets
    assert episodes[("simulator-alone-replay", "plain")] == episodes[("aaren-fast", "plain")]

    claims = results["claims"]
    assert claims["state_bytes_constant"] is True and claims["fast_agent"] == "aaren-fast-numba"

    prof = results["profile"]
    # the arithmetic floor: the step's multiply-adds at this core's measured peak (gcc is here)
    assert prof["arithmetic_floor_us_per_env"] == pytest.approx(
        prof["macs_per_env_step"] / prof["fma_peak_macs_per_second"] * 1e6
    )

    md = (out / "bench-agent.md").read_text()
    assert "multiply-add peak" in md
    for heading in ("## Policy step", "## Memory", "## Training", "## Evaluation", "## Profile"):
        assert heading in md
    assert st["machine"] in md
    for name in ("latency", "memory", "training"):
        assert (out / f"bench-agent-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(SystemExit, match="--overwrite"):
        main(["bench", "agent", "--quick", "--out", str(out)])
