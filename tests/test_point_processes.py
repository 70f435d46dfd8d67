"""Synthetic point processes against theory: Hawkes stationary rates (1-D mu / (1 - n), and
(I - A)^-1 mu per mark), the exact log-likelihoods against a numerical integral of the
intensity (scipy.integrate.quad), and the sinusoidal Poisson process's expected count."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from aaren_rl.data.point_processes import HawkesProcess, SinusoidalPoisson
from aaren_rl.heads.events_cli import synthetic_process


def _rates(process, end: float, n_seq: int, seed: int) -> np.ndarray:
    """Per-sequence events per unit time of each mark, ``[n_seq, M]``; the first 10% of each
    window is dropped (burn-in from the empty history)."""
    rng = np.random.default_rng(seed)
    burn = 0.1 * end
    out = np.zeros((n_seq, process.n_marks))
    for i in range(n_seq):
        t, k = process.simulate(end, rng)
        keep = t > burn
        out[i] = np.bincount(k[keep], minlength=process.n_marks) / (end - burn)
    return out


def test_hawkes_1d_rate_is_mu_over_one_minus_branching():
    process = HawkesProcess([0.7], [[0.5]], 3.0)
    rates = _rates(process, end=400.0, n_seq=60, seed=1)[:, 0]
    target = 0.7 / (1 - 0.5)
    se = rates.std(ddof=1) / math.sqrt(len(rates))
    assert se < 0.03 * target  # the test can tell a wrong rate apart
    assert abs(rates.mean() - target) < 3 * se, (rates.mean(), target, se)


def test_hawkes_multivariate_rates_are_stationary_solution():
    process = synthetic_process("hawkes5")
    target = process.stationary_rates()
    np.testing.assert_allclose(target, np.linalg.inv(np.eye(5) - process.branching) @ process.mu)
    rates = _rates(process, end=300.0, n_seq=40, seed=2)
    se = rates.std(axis=0, ddof=1) / math.sqrt(len(rates))
    assert np.all(se < 0.06 * target)
    assert np.all(np.abs(rates.mean(axis=0) - target) < 3.5 * se), (rates.mean(0), target, se)


def _numerical_log_likelihood(process, times, marks, start, end, given_first=False):
    """sum_k log lambda_{m_k}(t_k-) - integral of the total intensity by adaptive quadrature
    between consecutive events (the intensity jumps there)."""
    total = lambda s: float(process.intensity_at(np.array([s]), times, marks).sum())  # noqa: E731
    lam = [
        float(process.intensity_at(np.array([t - 1e-12]), times, marks)[0, k])
        for t, k in zip(times, marks, strict=True)
    ]
    first = times[0] if given_first else start
    knots = [first, *[t for t in times if t > first], end]
    integral = sum(
        integrate.quad(total, a, b, epsabs=1e-11, epsrel=1e-11)[0]
        for a, b in zip(knots[:-1], knots[1:], strict=True)
    )
    logs = np.log(lam[1:] if given_first else lam)
    return float(np.sum(logs)) - integral


@pytest.mark.parametrize("name", ["hawkes1", "hawkes5", "sinusoid"])
@pytest.mark.parametrize("given_first", [False, True])
def test_exact_log_likelihood_equals_numerical_integral(name, given_first):
    process = synthetic_process(name)
    rng = np.random.default_rng(3)
    start, end = 0.0, 25.0
    times, marks = process.simulate(end, rng, start)
    assert len(times) > 10
    exact = process.log_likelihood(times, marks, end, start, given_first=given_first)
    numeric = _numerical_log_likelihood(process, times, marks, start, end, given_first)
    assert exact == pytest.approx(numeric, rel=1e-8, abs=1e-7)


def test_hawkes_intensity_before_events_matches_grid_form():
    process = synthetic_process("hawkes5")
    times, marks = process.simulate(30.0, np.random.default_rng(4))
    before = process.intensities_before(times, marks)
    grid = process.intensity_at(times - 1e-12, times, marks)
    np.testing.assert_allclose(before, grid, rtol=1e-8)


def test_sinusoidal_poisson_count_matches_compensator():
    process = SinusoidalPoisson(1.0, 0.8, 10.0, np.array([0.5, 0.3, 0.2]))
    rng = np.random.default_rng(5)
    end = 37.0  # not a whole number of periods, so the sine term matters
    counts = np.array([len(process.simulate(end, rng)[0]) for _ in range(400)])
    expected = process.compensator(0.0, end)
    assert expected == pytest.approx(integrate.quad(process.total_intensity, 0, end)[0])
    se = math.sqrt(expected / len(counts))  # Poisson: variance = mean
    assert abs(counts.mean() - expected) < 3 * se


def test_unstable_branching_is_rejected():
    with pytest.raises(ValueError, match="spectral radius"):
        HawkesProcess([0.5, 0.5], [[0.6, 0.5], [0.5, 0.6]], 1.0)


def test_hawkes_next_gap_means_equal_integral_of_survival():
    process = synthetic_process("hawkes5")
    times, marks = process.simulate(20.0, np.random.default_rng(6))
    means = process.next_gap_means(times, marks)
    for k in (0, len(times) // 2, len(times) - 1):
        history_t, history_k = times[: k + 1], marks[: k + 1]

        def survival(s, t0=times[k], ht=history_t, hk=history_k):
            total = lambda u: float(process.intensity_at(np.array([u]), ht, hk).sum())  # noqa: E731
            return math.exp(-integrate.quad(total, t0, t0 + s)[0])

        expected = integrate.quad(survival, 0, np.inf, limit=200)[0]
        assert means[k] == pytest.approx(expected, rel=1e-4)
