"""This core's float32 multiply-add peak, measured: the ceiling under every CPU latency figure.

A benchmark that misses a speed target should say how far the target sits from what the
arithmetic allows. BLAS at a benchmark's own shapes gives one rate; the core's peak, with every
multiply-add independent and in registers, is the hard ceiling above it.

The probe is a small C program built with the system's C compiler (``cc``, ``gcc`` or
``clang``) at ``-O3 -march=native``: it runs on the machine it is built on, so it uses that
machine's widest vectors without the source naming any instruction set (GCC's vector
extension, 16 floats a vector, 12 independent chains, enough to cover the multiply-add's
latency on every current x86 and ARM core). It is a measurement for ``aaren-rl bench agent``,
not a code path: without a compiler the bench reports the peak as unknown.

The program prints what each chain's recurrence reached, so a caller can check that it ran the
arithmetic it claims against :func:`recurrence_closed_form` (over a few thousand iterations;
over millions every chain sits at the recurrence's fixed point, 0.5).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHAINS = 12
LANES = 16
MULTIPLIER = 0.999
ADDEND = 5e-4

SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
typedef float v16 __attribute__((vector_size(64)));
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
int main(int argc, char **argv) {
    long iters = atol(argv[1]);
    v16 a[CHAINS];
    for (int k = 0; k < CHAINS; k++)
        for (int l = 0; l < 16; l++) a[k][l] = 1.0f + k * 1e-2f;
    v16 m, c;
    for (int l = 0; l < 16; l++) { m[l] = MULT; c[l] = ADD; }
    double t0 = now();
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < CHAINS; k++) a[k] = a[k] * m + c;
    double dt = now() - t0;
    printf("%.17g", dt);
    for (int k = 0; k < CHAINS; k++) printf(" %.9g", (double)a[k][0]);
    printf("\n");
    return 0;
}
"""


@dataclass(frozen=True)
class PeakMeasurement:
    """One run of the probe: ``macs_per_second`` (float32 multiply-adds per second on one
    thread), the ``seconds`` it took for ``iterations`` rounds of ``CHAINS x LANES``
    multiply-adds, the compiler used, and ``finals[k]``: chain ``k``'s first lane at the end."""

    macs_per_second: float
    seconds: float
    iterations: int
    compiler: str
    finals: tuple[float, ...]


def find_compiler() -> str | None:
    """The first C compiler on ``PATH`` (``cc``, ``gcc``, ``clang``), or None."""
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


def recurrence_closed_form(start: float, iterations: int) -> float:
    """What ``a <- a * MULTIPLIER + ADDEND`` reaches after ``iterations`` steps from ``start``
    (exact arithmetic; the probe runs it in float32)."""
    mn = MULTIPLIER**iterations
    return mn * start + ADDEND * (1.0 - mn) / (1.0 - MULTIPLIER)


def measure_fma_peak(iterations: int = 50_000_000, repeats: int = 3) -> PeakMeasurement | None:
    """Build and run the probe; the best of ``repeats`` runs (the least disturbed). None when
    no C compiler is found or the build fails (the bench then reports the peak as unknown)."""
    compiler = find_compiler()
    if compiler is None:
        return None
    with tempfile.TemporaryDirectory(prefix="aaren-fma-peak-") as tmp:
        src, exe = Path(tmp) / "peak.c", Path(tmp) / "peak"
        src.write_text(SOURCE)
        defines = [f"-DCHAINS={CHAINS}", f"-DMULT={MULTIPLIER}f", f"-DADD={ADDEND}f"]
        build = subprocess.run(
            [compiler, "-O3", "-march=native", *defines, str(src), "-o", str(exe)],
            capture_output=True,
            text=True,
        )
        if build.returncode != 0:
            return None
        best: PeakMeasurement | None = None
        for _ in range(repeats):
            out = subprocess.run(
                [str(exe), str(iterations)], capture_output=True, text=True, check=True
            )
            fields = out.stdout.split()
            seconds = float(fields[0])
            rate = iterations * CHAINS * LANES / seconds
            run = PeakMeasurement(
                rate, seconds, iterations, compiler, tuple(float(x) for x in fields[1:])
            )
            if best is None or run.macs_per_second > best.macs_per_second:
                best = run
        return best


__all__ = [
    "CHAINS",
    "LANES",
    "PeakMeasurement",
    "find_compiler",
    "measure_fma_peak",
    "recurrence_closed_form",
]
