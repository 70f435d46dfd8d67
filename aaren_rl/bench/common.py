"""What the benchmarks share: timing, peak tensor memory, atomic writes, tables and the stamp.

Used by :mod:`aaren_rl.bench.backbone`, :mod:`aaren_rl.bench.agent` and
:mod:`aaren_rl.bench.export`; it imports none of them, so the three stand side by side.

Peak memory (:func:`peak_memory_bytes`). On CUDA: ``torch.cuda.max_memory_allocated`` above
what was allocated before the pass. On CPU there is no allocator peak counter, so the pass runs
once under ``torch.profiler.profile(profile_memory=True)``: the CPU allocator reports every
allocation and free of tensor memory to the profiler (``[memory]`` events with a signed byte
count); sorted by time, their running sum is the memory held above the start, and its maximum is
the peak.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (CUDA), so that wall time covers the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes of tensor memory allocated while ``fn()`` runs, above what was held before.

    CUDA: the caching allocator's peak counter. CPU: the running sum of the profiler's
    allocation events (see the module docstring).
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return int(peak)


def time_calls(fn: Callable[[], Any], repeats: int, device: torch.device) -> list[float]:
    """Wall time of ``repeats`` calls of ``fn`` (after the caller's warm-up), in seconds."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def train_pass(
    net: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None
) -> Callable[[], None]:
    """One forward + backward over ``x [batch, T, d_model]`` (loss: mean square output)."""

    def run() -> None:
        net.zero_grad(set_to_none=True)
        y, _ = net(x, mask=mask)
        y.float().square().mean().backward()

    return run


def _usual_permissions(path: str) -> None:
    """mkstemp makes files private (0600); give them what ``open`` would (0666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _usual_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def format_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns aligned: the first left, the rest right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def growth_exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(x): 1 linear, 2 quadratic, 0 flat."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    num = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True))
    den = sum((a - mx) ** 2 for a in lx)
    return num / den if den else 0.0


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The short commit of the checkout this package runs from, or None outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
