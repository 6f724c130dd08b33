"""Turn one burst's per-request timings into a ProbeResult; shared by simulated and real probes."""

from __future__ import annotations

import math

import numpy as np

from calibrate.search import ProbeResult


def tpot_s(first_token_s: np.ndarray, finish_s: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
    """Time per output token after the first; NaN for single-token outputs."""
    out = np.asarray(output_tokens, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(out > 1, (np.asarray(finish_s) - np.asarray(first_token_s)) / (out - 1), np.nan)


def _pct(values: np.ndarray, q: float) -> float:
    values = values[np.isfinite(values)]
    return float(np.percentile(values, q)) if values.size else math.nan


def probe_result(
    qps: float,
    arrival_s: np.ndarray,
    first_token_s: np.ndarray,
    finish_s: np.ndarray,
    output_tokens: np.ndarray,
    energy_j: float | None,
    failed_requests: int = 0,
) -> ProbeResult:
    """Latency percentiles over the finished requests; energy only when a counter measured it."""
    arrival_s = np.asarray(arrival_s, dtype=float)
    first_token_s = np.asarray(first_token_s, dtype=float)
    finish_s = np.asarray(finish_s, dtype=float)
    done = np.isfinite(finish_s)
    ttft = first_token_s[done] - arrival_s[done]
    tpot = tpot_s(first_token_s[done], finish_s[done], np.asarray(output_tokens)[done])
    start = float(arrival_s.min()) if arrival_s.size else 0.0
    end = float(finish_s[done].max()) if done.any() else start
    duration = max(end - start, 1e-12)
    tokens = float(np.asarray(output_tokens)[done].sum())
    if energy_j is None or not math.isfinite(energy_j):
        power, per_token = math.nan, math.nan
    else:
        power = energy_j / duration
        per_token = energy_j / tokens if tokens > 0 else math.nan
    return ProbeResult(
        qps=float(qps),
        n_requests=int(done.sum()),
        duration_s=duration,
        p50_ttft_s=_pct(ttft, 50),
        p90_ttft_s=_pct(ttft, 90),
        p99_ttft_s=_pct(ttft, 99),
        p50_tpot_s=_pct(tpot, 50),
        p90_tpot_s=_pct(tpot, 90),
        p99_tpot_s=_pct(tpot, 99),
        throughput_qps=float(done.sum()) / duration,
        output_tokens_per_s=tokens / duration,
        mean_power_w=power,
        energy_per_output_token_j=per_token,
        failed_requests=int(failed_requests + (~done).sum()),
    )
