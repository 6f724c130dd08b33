"""The saturation search finds known saturation points; the sweep measures what it is asked."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calibrate.search import ProbeResult, SearchSettings, find_saturation, sweep, sweep_points
from calibrate.sim_probe import SimulatedProbe
from conftest import make_step
from profiles.profile_set import LatencySlo


def synthetic_probe(capacity_qps: float, base_ttft_s: float, calls: list[float]):
    """P90 TTFT = base / (1 - q / capacity): an M/M/1-like blow-up with a known SLO crossing."""

    def probe(qps: float) -> ProbeResult:
        calls.append(qps)
        ttft = base_ttft_s / (1 - qps / capacity_qps) if qps < capacity_qps else math.inf
        return ProbeResult(qps, 100, 10.0, ttft, ttft, ttft, 0.01, 0.01, 0.01, qps, qps * 100, math.nan, math.nan)

    return probe


@pytest.mark.parametrize("start", [0.5, 1.0, 50.0, 400.0])
def test_search_recovers_known_saturation(start):
    calls: list[float] = []
    slo = LatencySlo(ttft_s=1.0, tpot_s=0.2)
    result = find_saturation(synthetic_probe(10.0, 0.1, calls), slo, SearchSettings(start_qps=start, rel_tol=0.01))
    true_saturation = 10.0 * (1 - 0.1 / 1.0)  # 9.0
    assert true_saturation * 0.99 <= result.saturation_qps <= true_saturation
    assert result.bounded
    assert [p.qps for p in result.probes] == calls  # every probe is recorded, in order
    assert result.passing.meets(slo)


def test_search_reports_zero_when_slo_is_impossible():
    calls: list[float] = []
    result = find_saturation(synthetic_probe(10.0, 2.0, calls), LatencySlo(1.0, 0.2), SearchSettings(start_qps=1.0))
    assert result.saturation_qps == 0.0 and result.passing is None


def test_search_stops_at_max_qps():
    calls: list[float] = []
    result = find_saturation(synthetic_probe(1e6, 0.1, calls), LatencySlo(1.0, 0.2),
                             SearchSettings(start_qps=1.0, max_qps=64.0))
    assert result.saturation_qps == 64.0 and not result.bounded


def test_search_settings_are_validated():
    with pytest.raises(ValueError, match="min_qps <= start_qps"):
        SearchSettings(start_qps=0.001, min_qps=0.01)
    with pytest.raises(ValueError, match="growth"):
        SearchSettings(growth=1.0)


def test_search_on_simulated_instance_is_consistent():
    # Deterministic server (max_batch 1, one output token): saturation must sit below capacity, pass
    # at the found rate and fail just above it.
    step = make_step(max_batch=1)
    n = 3000
    probe = SimulatedProbe(step, np.full(n, 200), np.ones(n, dtype=int), seed=1, max_requests=n)
    service_s = step.iteration_s(1, 200, 0, 200, 200**2)
    slo = LatencySlo(ttft_s=10 * service_s, tpot_s=1.0)
    result = find_saturation(probe, slo, SearchSettings(start_qps=1.0, rel_tol=0.01))
    assert 0.5 / service_s < result.saturation_qps < 1.0 / service_s
    assert probe(result.saturation_qps).p90_ttft_s <= slo.ttft_s
    assert probe(result.saturation_qps * 1.03).p90_ttft_s > slo.ttft_s


def test_sweep_runs_points_in_order_and_rejects_empty():
    calls: list[float] = []
    results = sweep(synthetic_probe(10.0, 0.1, calls), [5.0, 1.0, 2.0])
    assert [r.qps for r in results] == [1.0, 2.0, 5.0] == calls
    assert sweep_points(10.0, (0.5, 1.0)) == [5.0, 10.0]
    with pytest.raises(ValueError):
        sweep(synthetic_probe(10.0, 0.1, calls), [0.0, -1.0])
