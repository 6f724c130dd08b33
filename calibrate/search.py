"""Saturation search and QPS sweep, written once for every engine: simulated or real.

A *probe* runs a short burst of requests at one QPS and reports latency percentiles (and energy
where it can be measured). The saturation point is the highest QPS whose P90 TTFT and P90 TPOT
both meet the SLO (qMeter, paper §3.1): grow the rate until the SLO breaks, then bisect between the
last passing and the first failing rate. Every probe is kept, so a caller can store them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from profiles.profile_set import LatencySlo


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One burst at a fixed offered load."""

    qps: float
    n_requests: int
    duration_s: float
    p50_ttft_s: float
    p90_ttft_s: float
    p99_ttft_s: float
    p50_tpot_s: float
    p90_tpot_s: float
    p99_tpot_s: float
    throughput_qps: float
    output_tokens_per_s: float
    mean_power_w: float  # NaN when no energy counter was available
    energy_per_output_token_j: float  # NaN when no energy counter was available
    failed_requests: int = 0

    def meets(self, slo: LatencySlo) -> bool:
        return self.failed_requests == 0 and slo.met_by(self.p90_ttft_s, self.p90_tpot_s)


Probe = Callable[[float], ProbeResult]


SEARCH_STARTS = ("fixed", "predicted")


@dataclass(frozen=True, slots=True)
class SearchSettings:
    start_qps: float = 1.0
    min_qps: float = 0.01  # below this the config is deemed unable to meet the SLO at all
    max_qps: float = 10_000.0
    growth: float = 2.0
    rel_tol: float = 0.02
    max_probes: int = 40
    # Where the search starts: "fixed" (start_qps) or "predicted" (qfleet-calibrate measures the fit runs first
    # and starts at the saturation that the search on the simulated instance finds with the fitted step model,
    # calibrate.predict); from a predicted start the first step is x predicted_growth, and each further step
    # squares the last one, up to x growth.
    start: str = "fixed"
    predicted_growth: float = 1.05

    def __post_init__(self) -> None:
        if self.start not in SEARCH_STARTS:
            raise ValueError(f"search start must be one of {', '.join(SEARCH_STARTS)}, got {self.start!r}")
        if not self.predicted_growth > 1.0:
            raise ValueError(f"search predicted_growth must be > 1, got {self.predicted_growth}")
        if not (0 < self.min_qps <= self.start_qps <= self.max_qps):
            raise ValueError(
                f"search bounds must satisfy 0 < min_qps <= start_qps <= max_qps, got "
                f"min_qps={self.min_qps}, start_qps={self.start_qps}, max_qps={self.max_qps}"
            )
        if self.growth <= 1.0:
            raise ValueError(f"search growth must be > 1, got {self.growth}")
        if not (0 < self.rel_tol < 1):
            raise ValueError(f"search rel_tol must be in (0, 1), got {self.rel_tol}")


@dataclass(frozen=True, slots=True)
class SaturationResult:
    saturation_qps: float  # highest passing QPS found; 0 when even min_qps fails
    passing: ProbeResult | None  # the probe at saturation_qps
    probes: tuple[ProbeResult, ...]
    bounded: bool  # False when max_qps still passed (saturation is at least max_qps)


def find_saturation(probe: Probe, slo: LatencySlo, settings: SearchSettings = SearchSettings(),
                    start_qps: float | None = None) -> SaturationResult:
    """Grow (or shrink) the rate from the start until the SLO verdict flips, then bisect to ``rel_tol``.

    ``start_qps`` (a predicted saturation) replaces ``settings.start_qps``: the rate then moves by
    ``predicted_growth`` first and by the square of the previous factor after each further step (never more
    than ``growth``), so a good prediction is bracketed by two probes close together."""
    probes: list[ProbeResult] = []

    def run(qps: float) -> ProbeResult:
        if len(probes) >= settings.max_probes:
            raise RuntimeError(f"saturation search used its {settings.max_probes} probes without converging")
        result = probe(qps)
        probes.append(result)
        return result

    if start_qps is None or not math.isfinite(start_qps) or start_qps <= 0:
        qps, factor = settings.start_qps, settings.growth
    else:
        qps = min(max(start_qps, settings.min_qps), settings.max_qps)
        factor = min(settings.predicted_growth, settings.growth)

    def widen(f: float) -> float:
        return min(f * f, settings.growth)

    lo_result: ProbeResult | None = None
    hi_qps: float | None = None
    first = run(qps)
    if first.meets(slo):
        lo_result = first
        while True:
            nxt = min(qps * factor, settings.max_qps)
            if nxt <= qps:
                return SaturationResult(qps, lo_result, tuple(probes), bounded=False)
            result = run(nxt)
            if not result.meets(slo):
                hi_qps = nxt
                break
            lo_result, qps = result, nxt
            factor = widen(factor)
    else:
        hi_qps = qps
        while True:
            nxt = qps / factor
            if nxt < settings.min_qps:
                return SaturationResult(0.0, None, tuple(probes), bounded=True)
            result = run(nxt)
            qps = nxt
            if result.meets(slo):
                lo_result = result
                break
            hi_qps = nxt
            factor = widen(factor)
    assert lo_result is not None and hi_qps is not None
    while (hi_qps - lo_result.qps) > settings.rel_tol * hi_qps:
        mid = 0.5 * (lo_result.qps + hi_qps)
        result = run(mid)
        if result.meets(slo):
            lo_result = result
        else:
            hi_qps = mid
    return SaturationResult(lo_result.qps, lo_result, tuple(probes), bounded=True)


DEFAULT_SWEEP_FRACTIONS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0, 1.1, 1.25)


def sweep(probe: Probe, qps_points: Sequence[float]) -> list[ProbeResult]:
    """Measure every point of a QPS range, in increasing order."""
    points = sorted(q for q in qps_points if q > 0 and math.isfinite(q))
    if not points:
        raise ValueError("a sweep needs at least one positive QPS point")
    return [probe(q) for q in points]


def sweep_points(saturation_qps: float, fractions: Sequence[float] = DEFAULT_SWEEP_FRACTIONS) -> list[float]:
    return [saturation_qps * f for f in fractions]
