"""Synthetic temporal point processes with their exact likelihoods (the oracles).

- :class:`HawkesProcess`: a multivariate Hawkes process with exponential kernels,

  ``lambda_i(t) = mu_i + sum_{t_k < t} A[i, m_k] * beta * exp(-beta * (t - t_k))``,

  so ``A[i, j]`` is the expected number of direct children of mark ``i`` that one event of
  mark ``j`` triggers (the branching matrix; spectral radius < 1 for stationarity). Simulated
  by Ogata's thinning; the stationary rates are ``(I - A)^-1 mu`` (``mu / (1 - n)`` in 1-D).
- :class:`SinusoidalPoisson`: an inhomogeneous Poisson process with
  ``lambda(t) = a + b * sin(2 pi t / period)`` (``0 <= b <= a``), one or several marks drawn
  with fixed probabilities.

Both give the exact log-likelihood of a sequence on its window ``[start, end]``
(``sum_k log lambda_{m_k}(t_k) - integral_start^end sum_i lambda_i(t) dt``), optionally
conditioned on the first event (the convention of :mod:`aaren_rl.data.events`: the first
event of a sequence is given, the rest are scored), and the intensities just before each
event, from which the Bayes mark accuracy follows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class HawkesProcess:
    """Exponential-kernel Hawkes process: ``mu [M]``, branching ``A [M, M]``, decay ``beta``."""

    mu: np.ndarray
    branching: np.ndarray
    beta: float

    def __post_init__(self) -> None:
        self.mu = np.atleast_1d(np.asarray(self.mu, dtype=np.float64))
        self.branching = np.atleast_2d(np.asarray(self.branching, dtype=np.float64))
        m = len(self.mu)
        if self.branching.shape != (m, m):
            raise ValueError(f"branching must be [{m}, {m}], got {self.branching.shape}")
        if np.any(self.mu <= 0) or np.any(self.branching < 0) or self.beta <= 0:
            raise ValueError("need mu > 0, branching >= 0 and beta > 0")
        if self.spectral_radius >= 1:
            raise ValueError(
                f"branching matrix has spectral radius {self.spectral_radius:.3f} >= 1: "
                "the process explodes; scale it down"
            )

    @property
    def n_marks(self) -> int:
        return len(self.mu)

    @property
    def spectral_radius(self) -> float:
        return float(np.max(np.abs(np.linalg.eigvals(self.branching))))

    def stationary_rates(self) -> np.ndarray:
        """``(I - A)^-1 mu [M]``: the long-run events per unit time of each mark."""
        return np.linalg.solve(np.eye(self.n_marks) - self.branching, self.mu)

    # ------------------------------------------------------------------ simulation

    def simulate(
        self, end: float, rng: np.random.Generator, start: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """One sequence on ``[start, end]`` by Ogata's thinning: ``(times [N], marks [N])``.

        Between events the excitation only decays, so the total intensity just after the
        current time bounds it until the next event: propose at that rate, accept with
        probability ``lambda(s) / bound``, draw the mark in proportion to ``lambda_i(s)``.
        """
        mu, kick = self.mu, self.branching * self.beta  # kick[:, j]: jump after a mark-j event
        excitation = np.zeros(self.n_marks)
        t = start
        times: list[float] = []
        marks: list[int] = []
        while True:
            bound = float(mu.sum() + excitation.sum())
            wait = rng.exponential(1.0 / bound)
            t += wait
            if t > end:
                break
            excitation = excitation * math.exp(-self.beta * wait)
            intensity = mu + excitation
            total = float(intensity.sum())
            if rng.random() * bound <= total:
                mark = int(rng.choice(self.n_marks, p=intensity / total))
                times.append(t)
                marks.append(mark)
                excitation = excitation + kick[:, mark]
        return np.asarray(times, dtype=np.float64), np.asarray(marks, dtype=np.int64)

    # ------------------------------------------------------------------ likelihood

    def intensities_before(self, times: np.ndarray, marks: np.ndarray) -> np.ndarray:
        """``lambda_i(t_k-)`` for every event ``k``: ``[N, M]`` (history strictly before t_k)."""
        out = np.empty((len(times), self.n_marks))
        excitation = np.zeros(self.n_marks)
        last = None
        for k, (t, m) in enumerate(zip(times, marks, strict=True)):
            if last is not None:
                excitation = excitation * math.exp(-self.beta * (t - last))
            out[k] = self.mu + excitation
            excitation = excitation + self.beta * self.branching[:, m]
            last = t
        return out

    def intensity_at(self, grid: np.ndarray, times: np.ndarray, marks: np.ndarray) -> np.ndarray:
        """``lambda_i(s)`` on ``grid [G]`` given the events before each ``s``: ``[G, M]``."""
        out = np.tile(self.mu, (len(grid), 1))
        for t, m in zip(times, marks, strict=True):
            after = grid > t
            out[after] += (
                self.beta
                * self.branching[:, m][None]
                * np.exp(-self.beta * (grid[after] - t))[:, None]
            )
        return out

    def next_gap_means(
        self, times: np.ndarray, marks: np.ndarray, grid_points: int = 4000
    ) -> np.ndarray:
        """``E[t_{k+1} - t_k | events up to t_k]`` for every event ``k`` (window unbounded):
        ``integral_0^inf S(s) ds`` with ``S(s) = exp(-(M s + R (1 - e^{-beta s}) / beta))``,
        ``M = sum mu``, ``R`` the total excitation just after ``t_k``; trapezoid on a grid."""
        after = self.intensities_before(times, marks).sum(axis=1) - self.mu.sum()
        after = after + self.beta * self.branching.sum(axis=0)[marks]  # the jump at t_k
        total_mu = float(self.mu.sum())
        s = 40.0 / total_mu * np.linspace(0.0, 1.0, grid_points) ** 2  # dense near 0
        decay = (1.0 - np.exp(-self.beta * s)) / self.beta
        survival = np.exp(-(total_mu * s[None] + after[:, None] * decay[None]))
        return np.sum(0.5 * (survival[:, 1:] + survival[:, :-1]) * np.diff(s)[None], axis=1)

    def compensator(self, times: np.ndarray, marks: np.ndarray, start: float, end: float) -> float:
        """``integral_start^end sum_i lambda_i(t) dt`` in closed form."""
        kernel_mass = self.branching.sum(axis=0)[marks]  # sum_i A[i, m_k]
        inside = times <= end
        decay = 1.0 - np.exp(-self.beta * (end - times[inside]))
        return float(self.mu.sum() * (end - start) + np.sum(kernel_mass[inside] * decay))

    def log_likelihood(
        self,
        times: np.ndarray,
        marks: np.ndarray,
        end: float,
        start: float = 0.0,
        given_first: bool = False,
    ) -> float:
        """Exact log-likelihood of one sequence on ``[start, end]``.

        With ``given_first``, the first event is conditioned on (not scored): its term
        ``log lambda_{m_1}(t_1)`` and the compensator on ``[start, t_1]`` are left out.
        """
        times = np.asarray(times, dtype=np.float64)
        marks = np.asarray(marks, dtype=np.int64)
        lam = self.intensities_before(times, marks)[np.arange(len(times)), marks]
        ll = float(np.sum(np.log(lam))) - self.compensator(times, marks, start, end)
        if given_first and len(times):
            ll -= math.log(lam[0]) - float(self.mu.sum()) * (times[0] - start)
        return ll


@dataclass
class SinusoidalPoisson:
    """Poisson process with ``lambda(t) = a + b sin(2 pi t / period)``; marks i.i.d. ``p``."""

    a: float = 1.0
    b: float = 0.8
    period: float = 10.0
    mark_probs: np.ndarray = field(default_factory=lambda: np.ones(1))

    def __post_init__(self) -> None:
        self.mark_probs = np.asarray(self.mark_probs, dtype=np.float64)
        self.mark_probs = self.mark_probs / self.mark_probs.sum()
        if not 0 <= self.b <= self.a or self.period <= 0:
            raise ValueError("need 0 <= b <= a and period > 0 (the intensity must stay >= 0)")

    @property
    def n_marks(self) -> int:
        return len(self.mark_probs)

    def total_intensity(self, t: np.ndarray) -> np.ndarray:
        return self.a + self.b * np.sin(2 * np.pi * np.asarray(t) / self.period)

    def simulate(
        self, end: float, rng: np.random.Generator, start: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Thinning of a rate ``a + b`` Poisson process: ``(times [N], marks [N])``."""
        bound = self.a + self.b
        n = rng.poisson(bound * (end - start))
        proposals = np.sort(rng.uniform(start, end, size=n))
        keep = rng.random(n) * bound <= self.total_intensity(proposals)
        times = proposals[keep]
        marks = rng.choice(self.n_marks, size=len(times), p=self.mark_probs)
        return times, marks.astype(np.int64)

    def intensities_before(self, times: np.ndarray, marks: np.ndarray) -> np.ndarray:
        """``lambda_i(t_k) [N, M]`` (no history dependence)."""
        return self.total_intensity(times)[:, None] * self.mark_probs[None]

    def intensity_at(self, grid: np.ndarray, times: np.ndarray, marks: np.ndarray) -> np.ndarray:
        return self.total_intensity(grid)[:, None] * self.mark_probs[None]

    def compensator(self, start: float, end: float) -> float:
        w = 2 * np.pi / self.period
        return float(
            self.a * (end - start) + self.b / w * (math.cos(w * start) - math.cos(w * end))
        )

    def log_likelihood(
        self,
        times: np.ndarray,
        marks: np.ndarray,
        end: float,
        start: float = 0.0,
        given_first: bool = False,
    ) -> float:
        """Exact log-likelihood on ``[start, end]`` (``given_first``: from the first event on)."""
        times = np.asarray(times, dtype=np.float64)
        marks = np.asarray(marks, dtype=np.int64)
        lam = self.intensities_before(times, marks)[np.arange(len(times)), marks]
        if given_first and len(times):
            return float(np.sum(np.log(lam[1:]))) - self.compensator(times[0], end)
        return float(np.sum(np.log(lam))) - self.compensator(start, end)
