"""How well the fitted step model reproduces what was measured: replay measured runs through the simulator.

Each measured point (a sweep burst or a fit run) is replayed through ``sim.instance`` with the fitted
step model, using the requests' measured send times and usage lengths; the simulated P50/P90 TTFT and
TPOT are compared with the measured ones. Sweep points were not used by the fit, so their errors are a
held-out validation; fit runs show the in-sample error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from calibrate.loadgen import RequestRecord
from calibrate.probe_stats import probe_result
from calibrate.search import ProbeResult
from profiles.step_model import StepModel
from sim.instance import replay_single_instance
from sim.requests import RequestTable
from traces.trace import Trace

METRICS = ("p50_ttft_s", "p90_ttft_s", "p50_tpot_s", "p90_tpot_s")


def measured_result(qps: float, records: Sequence[RequestRecord], energy_j: float | None = None) -> ProbeResult:
    """A ProbeResult from the client's records (send time = arrival; usage lengths)."""
    return probe_result(
        qps,
        np.array([r.send_s for r in records]),
        np.array([r.first_token_s for r in records]),
        np.array([r.finish_s for r in records]),
        np.array([r.completion_tokens for r in records]),
        energy_j,
        0,
    )


def simulated_result(step: StepModel, qps: float, records: Sequence[RequestRecord],
                     request_overhead_s: float = 0.0) -> ProbeResult | None:
    recs = sorted((r for r in records if r.ok), key=lambda r: r.send_s)
    if not recs:
        return None
    t0 = recs[0].send_s
    arrival = np.array([r.send_s - t0 for r in recs]) + request_overhead_s
    inp = np.array([r.prompt_tokens for r in recs], dtype=np.int64)
    out = np.array([r.completion_tokens for r in recs], dtype=np.int64)
    table = RequestTable(Trace(arrival, inp, out, np.zeros(len(recs), dtype=np.int64), ("replay",), "replay"))
    replay_single_instance(step, table)
    return probe_result(qps, arrival - request_overhead_s, np.array(table.first_token_s), np.array(table.finish_s),
                        out, None, sum(1 for s in table.status if s != 1))


@dataclass(frozen=True)
class PointError:
    label: str
    measured: dict
    simulated: dict
    ape_pct: dict  # per metric: |sim - measured| / measured * 100


def compare(step: StepModel, points: Sequence[tuple[str, float, Sequence[RequestRecord]]],
            request_overhead_s: float = 0.0) -> tuple[list[PointError], dict[str, float]]:
    """Per-point errors and the MAPE per metric over all points."""
    errors: list[PointError] = []
    for label, qps, records in points:
        ok = [r for r in records if r.ok]
        if len(ok) < 2:
            continue
        meas = measured_result(qps, ok)
        sim = simulated_result(step, qps, ok, request_overhead_s)
        if sim is None:
            continue
        ape = {}
        for m in METRICS:
            a, b = getattr(meas, m), getattr(sim, m)
            if math.isfinite(a) and math.isfinite(b) and a > 0:
                ape[m] = 100.0 * abs(b - a) / a
        errors.append(PointError(label, {m: getattr(meas, m) for m in METRICS},
                                 {m: getattr(sim, m) for m in METRICS}, ape))
    mape = {}
    for m in METRICS:
        vals = [e.ape_pct[m] for e in errors if m in e.ape_pct]
        if vals:
            mape[m] = float(np.mean(vals))
    return errors, mape
