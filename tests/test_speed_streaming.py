"""The pieces that let a week stream through memory: the request ring, the log histogram's stated
precision, and the week-long Azure trace generated chunk by chunk."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.metrics import LogHistogram
from sim.requests import FINISHED, PENDING, REJECTED, RequestRing
from traces.case_study import CASE_STUDY_TASKS
from traces.stream import AzureWeekSpec, AzureWeekTrace, ChunkedTrace
from conftest import poisson_trace


def _load(ring: RequestRing, n: int, t0: float = 0.0):
    arrival = t0 + np.arange(n, dtype=float)
    ones = np.ones(n, dtype=np.int64)
    return ring.load(arrival, ones * 10, ones * 5, np.zeros(n, dtype=np.int64))


def test_ring_emits_only_the_decided_prefix_and_reuses_slots():
    ring = RequestRing(("t",), capacity=8)
    first, arrival, task = _load(ring, 6)
    assert first == 0 and arrival == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and task == [0] * 6
    for rid in (0, 1, 3):
        ring.status[rid & ring.mask] = FINISHED
        ring.finish_s[rid & ring.mask] = 10.0 + rid
    assert ring.done_prefix() == 2  # request 2 is still pending
    batch = ring.emit(ring.done_prefix())
    assert list(batch.request_id) == [0, 1] and list(batch.finish_s) == [10.0, 11.0]
    assert ring.emitted == 2 and ring.in_flight == 4
    # Slots of emitted requests are reset for reuse; the next block wraps around the ring.
    first, _, _ = _load(ring, 4, t0=6.0)
    assert first == 6 and ring.capacity == 8
    assert ring.status[6 & ring.mask] == PENDING and math.isnan(ring.first_token_s[8 & ring.mask])
    assert ring.input_tokens[9 & ring.mask] == 10


def test_ring_grows_and_keeps_requests_in_flight():
    ring = RequestRing(("t",), capacity=4)
    _load(ring, 3)
    ring.reject(1, "queue_full", 1.5)
    _load(ring, 10, t0=3.0)  # 13 requests in flight: 4 -> 8 -> 16 slots
    assert ring.capacity == 16 and ring.in_flight == 13
    assert ring.status[1 & ring.mask] == REJECTED and ring.finish_s[1 & ring.mask] == 1.5
    assert [ring.arrival_s[rid & ring.mask] for rid in range(13)] == [float(i) for i in range(13)]
    assert ring.reject_pending("unfinished_at_end", 99.0) == 12
    batch = ring.emit(ring.done_prefix())
    assert len(batch) == 13 and ring.rejected == 13 and (batch.status == REJECTED).all()


def test_emitting_a_pending_request_is_refused():
    ring = RequestRing(("t",), capacity=4)
    _load(ring, 2)
    with pytest.raises(AssertionError, match="request 0 emitted while still pending"):
        ring.emit(2)


@pytest.mark.parametrize("q", [0, 1, 10, 50, 90, 99, 99.9, 100])
def test_log_histogram_percentiles_within_stated_relative_error(q):
    rng = np.random.default_rng(5)
    values = rng.lognormal(-3.0, 1.5, 200_000)
    hist = LogHistogram(relative_error=5e-4)
    for part in np.array_split(values, 7):
        hist.add(part)
    exact = float(np.percentile(values, q))
    assert hist.count == values.size
    assert abs(hist.percentile(q) - exact) <= 5e-4 * exact


def test_log_histogram_ignores_nan_and_handles_empty():
    hist = LogHistogram()
    assert math.isnan(hist.percentile(50))
    hist.add(np.array([np.nan, 0.25, np.nan]))
    assert hist.count == 1 and hist.percentile(90) == pytest.approx(0.25, rel=5e-4)


def test_chunked_trace_covers_the_trace_once_in_order():
    trace = poisson_trace(50.0, 5000, seed=3)
    stream = ChunkedTrace(trace, chunk_s=7.0)
    chunks = list(stream.chunks())
    assert len(chunks) > 5
    assert np.array_equal(np.concatenate([c.arrival_s for c in chunks]), trace.arrival_s)
    assert stream.count(0, 10.0, 20.0) == int(((trace.arrival_s >= 10) & (trace.arrival_s < 20)).sum())


@pytest.fixture(scope="module")
def week() -> AzureWeekTrace:
    # Two days at a fifth of the default peak and 6 h chunks keep the test quick; the generator is the
    # same for any duration and rate.
    return AzureWeekTrace(AzureWeekSpec(duration_s=2 * 86_400.0, peak_rate_qps=20.0, chunk_s=6 * 3600.0))


def test_week_trace_follows_the_diurnal_rate(week):
    spec = week.spec
    assert week.rate.peak_qps == pytest.approx(spec.peak_rate_qps)
    assert week.rate.trough_qps == pytest.approx(spec.peak_rate_qps / spec.peak_to_trough)
    hours = np.arange(0, 48) * 3600.0
    counts = np.array([sum(week.count(k, h, h + 3600.0) for k in range(4)) for h in hours])
    rate = week.rate(hours + 1800.0)
    # Hourly counts follow the rate (the tiled traces are bursty: allow 15 % per hour).
    assert np.all(np.abs(counts / 3600.0 - rate) < 0.15 * rate)
    assert counts.argmax() % 24 in (11, 12)  # peak at midday, trough at midnight
    assert counts.argmin() % 24 in (23, 0)
    total = sum(len(c) for c in week.chunks())
    assert total == pytest.approx(spec.expected_requests, rel=0.01)
    assert spec.expected_requests == pytest.approx(15.0 * 2 * 86_400.0)  # mean = peak * 2 / (1 + peak/trough)


def test_week_trace_chunks_are_sorted_deterministic_and_mapped_onto_the_case_study(week):
    chunks = list(week.chunks())
    arrival = np.concatenate([c.arrival_s for c in chunks])
    assert np.all(np.diff(arrival) >= 0) and arrival[0] >= 0 and arrival[-1] < week.spec.duration_s
    again = AzureWeekTrace(week.spec).chunk(5)  # a chunk is the same whether or not others were made
    assert np.array_equal(again.arrival_s, chunks[5].arrival_s) and np.array_equal(again.task, chunks[5].task)
    task = np.concatenate([c.task for c in chunks])
    shares = np.bincount(task, minlength=4) / len(task)
    assert week.task_names == CASE_STUDY_TASKS
    assert shares == pytest.approx([0.56, 0.14, 0.20, 0.10], abs=0.01)
    inputs = np.concatenate([c.input_tokens for c in chunks])
    outputs = np.concatenate([c.output_tokens for c in chunks])
    assert inputs.min() >= 1 and outputs.min() >= 1 and (inputs + outputs).max() <= week.spec.max_total_tokens
    code = task == CASE_STUDY_TASKS.index("code")
    assert inputs[code].mean() == pytest.approx(193, rel=0.05)  # HumanEval-aligned lengths
    chat = task == CASE_STUDY_TASKS.index("chat-s")
    assert outputs[chat].mean() == pytest.approx(231, rel=0.05)  # ShareGPT-aligned lengths
    for k in range(4):
        assert week.count(k, 0.0, week.spec.duration_s) == int((task == k).sum())


def test_week_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="peak_to_trough"):
        AzureWeekSpec(peak_to_trough=0.5)
    with pytest.raises(ValueError, match="mix"):
        AzureWeekSpec(mix=(("chat-s", 0.5), ("poems", 0.5)))


def test_qfleet_sim_streams_the_week_trace(tmp_path):
    import pandas as pd
    from hydra import compose, initialize_config_module

    import sim.main

    overrides = ["trace=azure_week", "trace.duration_s=1800", "trace.peak_rate_qps=20", "trace.chunk_s=600",
                 "policy=slo_energy_optimal", "cluster.replan_interval_s=300", "progress=false"]
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    summary = sim.main.run(cfg, tmp_path)
    frame = pd.read_parquet(tmp_path / "requests.parquet")
    assert len(frame) == summary["requests"] == summary["finished"] + summary["rejected"] > 10_000
    assert frame.request_id.is_monotonic_increasing and frame.arrival_s.is_monotonic_increasing
    assert summary["percentiles"].startswith("log-histogram")
    assert 0 < summary["peak_requests_in_flight"] < summary["requests"]
    assert summary["tasks"][0]["p90_ttft_s"] == pytest.approx(
        float(np.percentile(frame.ttft_s[(frame.task == "chat-s") & frame.ttft_s.notna()], 90)), rel=5e-4)
    for name in ("summary.json", "deployments.csv", "gpus_over_time.png", "latency_cdf.png"):
        assert (tmp_path / name).stat().st_size > 0
