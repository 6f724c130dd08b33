"""Synthetic arrival processes. Every function takes an explicit ``numpy.random.Generator``.

Arrival times are float64 seconds, sorted, in ``[0, duration_s)``. The length samplers live in
``traces.lengths`` and are re-exported here so that "synthetic" offers both halves of a workload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from traces.lengths import AlignedLengths, EmpiricalLengths, FixedLengths, LengthSampler

__all__ = [
    "AlignedLengths",
    "DiurnalRate",
    "EmpiricalLengths",
    "FixedLengths",
    "LengthSampler",
    "RateFn",
    "diurnal_rate",
    "gamma_arrivals",
    "poisson_arrivals",
    "time_varying_arrivals",
]

RateFn = Callable[[np.ndarray], np.ndarray]
"""Vectorised rate function: arrival times (s) -> instantaneous rate (req/s)."""

# Rate functions may overshoot the declared peak by float rounding only.
_PEAK_TOLERANCE = 1e-9


def poisson_arrivals(rate_qps: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Homogeneous Poisson process: a Poisson count, then sorted uniform times (exact, vectorised)."""
    _check_positive("rate_qps", rate_qps, allow_zero=True)
    _check_positive("duration_s", duration_s)
    n = int(rng.poisson(rate_qps * duration_s))
    return np.sort(rng.uniform(0.0, duration_s, size=n))


def gamma_arrivals(rate_qps: float, cv: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Renewal process with Gamma inter-arrivals: mean ``1/rate_qps``, coefficient of variation ``cv``.

    ``cv = 1`` is Poisson; ``cv > 1`` gives bursty traffic (shape ``1/cv**2``). The first arrival
    comes one inter-arrival gap after 0.
    """
    _check_positive("rate_qps", rate_qps)
    _check_positive("cv", cv)
    _check_positive("duration_s", duration_s)
    shape = 1.0 / cv**2
    scale_s = 1.0 / (rate_qps * shape)
    expected = rate_qps * duration_s
    chunk = max(16, int(expected + 6.0 * cv * math.sqrt(expected) + 16))
    parts: list[np.ndarray] = []
    t0_s = 0.0
    while True:
        times = t0_s + np.cumsum(rng.gamma(shape, scale_s, size=chunk))
        parts.append(times)
        if times[-1] >= duration_s:
            break
        t0_s = float(times[-1])
    arrivals = np.concatenate(parts)
    return arrivals[arrivals < duration_s]


def time_varying_arrivals(
    rate_fn: RateFn, peak_rate_qps: float, duration_s: float, rng: np.random.Generator
) -> np.ndarray:
    """Non-homogeneous Poisson process by thinning (Lewis-Shedler).

    Candidates come from a Poisson process at ``peak_rate_qps``; each is kept with probability
    ``rate_fn(t) / peak_rate_qps``. ``rate_fn`` must stay within ``[0, peak_rate_qps]``.
    """
    _check_positive("peak_rate_qps", peak_rate_qps)
    candidates = poisson_arrivals(peak_rate_qps, duration_s, rng)
    rate = np.asarray(rate_fn(candidates), dtype=np.float64)
    if rate.shape != candidates.shape:
        raise ValueError(f"rate_fn must be vectorised: got shape {rate.shape} for {candidates.shape} times")
    if len(rate) and (not np.all(np.isfinite(rate)) or rate.min() < 0):
        raise ValueError("rate_fn returned a negative or non-finite rate")
    if len(rate) and rate.max() > peak_rate_qps * (1 + _PEAK_TOLERANCE):
        raise ValueError(f"rate_fn reaches {rate.max():.6g} req/s, above peak_rate_qps={peak_rate_qps:.6g}")
    keep = rng.uniform(0.0, peak_rate_qps, size=len(candidates)) < rate
    return candidates[keep]


@dataclass(frozen=True, slots=True)
class DiurnalRate:
    """Sinusoidal daily load: ``mean_qps * (1 + amplitude * cos(2π (t - peak_at_s) / period_s))``.

    A value object (not a closure) so it prints, compares and pickles; call it with an array of times.
    """

    mean_qps: float
    amplitude: float
    period_s: float
    peak_at_s: float

    @property
    def peak_qps(self) -> float:
        return self.mean_qps * (1.0 + self.amplitude)

    @property
    def trough_qps(self) -> float:
        return self.mean_qps * (1.0 - self.amplitude)

    def __call__(self, t_s: np.ndarray) -> np.ndarray:
        phase = 2.0 * np.pi * (np.asarray(t_s, dtype=np.float64) - self.peak_at_s) / self.period_s
        return self.mean_qps * (1.0 + self.amplitude * np.cos(phase))


def diurnal_rate(
    mean_qps: float, peak_to_trough: float, period_s: float = 86_400.0, peak_at_s: float | None = None
) -> DiurnalRate:
    """Rate function with the given mean and peak/trough ratio; its mean over a whole period is ``mean_qps``.

    ``peak_at_s`` defaults to half a period, so a trace starting at 0 starts in the trough
    (midnight-like) and peaks in its middle.
    """
    _check_positive("mean_qps", mean_qps)
    _check_positive("period_s", period_s)
    if not peak_to_trough >= 1.0:
        raise ValueError(f"peak_to_trough must be >= 1, got {peak_to_trough}")
    amplitude = 1.0 if math.isinf(peak_to_trough) else (peak_to_trough - 1.0) / (peak_to_trough + 1.0)
    return DiurnalRate(
        mean_qps=float(mean_qps),
        amplitude=amplitude,
        period_s=float(period_s),
        peak_at_s=float(period_s / 2.0 if peak_at_s is None else peak_at_s),
    )


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
