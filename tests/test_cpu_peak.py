"""The core-peak probe runs the multiply-adds it claims, and degrades to None without a compiler."""

from __future__ import annotations

import math

import pytest

from aaren_rl import cpu_peak


def test_probe_runs_the_recurrence_it_times() -> None:
    run = cpu_peak.measure_fma_peak(iterations=2_000, repeats=1)
    assert run is not None, "gcc is on these machines: the probe must build"
    assert len(run.finals) == cpu_peak.CHAINS
    for k, final in enumerate(run.finals):
        expected = cpu_peak.recurrence_closed_form(1.0 + k * 1e-2, 2_000)
        # after 2,000 steps a chain has is within 1e-4 of its start only by accident: it has moved most of the way to 0.5
        assert final == pytest.approx(expected, rel=1e-4)
    start = 1.0 + (cpu_peak.CHAINS - 1) * 1e-2
    assert abs(cpu_peak.recurrence_closed_form(start, 2_000) - start) > 1e-3
    assert run.macs_per_second == pytest.approx(
        2_000 * cpu_peak.CHAINS * cpu_peak.LANES / run.seconds
    )
    assert math.isfinite(run.macs_per_second) and run.macs_per_second > 0


def test_closed_form_against_iteration() -> None:
    a = 1.3
    for _ in range(50):
        a = a * cpu_peak.MULTIPLIER + cpu_peak.ADDEND
    assert cpu_peak.recurrence_closed_form(1.3, 50) == pytest.approx(a, rel=1e-12)


def test_no_compiler_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_peak.shutil, "which", lambda name: None)
    assert cpu_peak.find_compiler() is None
    assert cpu_peak.measure_fma_peak(iterations=10, repeats=1) is None


def test_failed_build_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_peak, "find_compiler", lambda: "false")
    assert cpu_peak.measure_fma_peak(iterations=10, repeats=1) is None
