"""The instance model against things known exactly: a lone request, an M/D/1 queue, the
per-iteration reference replay, energy conservation and the KV/batch limits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import make_step, make_trace, poisson_trace
from sim.instance import replay_single_instance
from sim.reference import replay_instance
from sim.requests import FINISHED, REJECTED, REJECT_REASONS, RequestTable


def run(step, trace):
    table = RequestTable(trace)
    instance = replay_single_instance(step, table)
    return table, instance


def test_lone_request_latency_equals_step_model(step):
    inp, out = 433, 109
    table, instance = run(step, make_trace([5.0], [inp], [out]))
    prefill_s = step.iteration_s(1, inp, 0, inp, inp * inp)
    assert table.first_token_s[0] - 5.0 == pytest.approx(prefill_s, rel=1e-12)
    # Each decode step i (1..out-1) reads the prompt plus the i tokens generated so far.
    decode_s = [step.iteration_s(1, 1, inp + i) for i in range(1, out)]
    tpot = (table.finish_s[0] - table.first_token_s[0]) / (out - 1)
    assert tpot == pytest.approx(sum(decode_s) / (out - 1), rel=1e-12)
    assert table.status == [FINISHED]
    # Energy: every joule the instance spent busy is attributed to the only request.
    assert table.energy_j[0] == pytest.approx(instance.busy_j, rel=1e-12)
    assert instance.busy_s == pytest.approx(prefill_s + sum(decode_s), rel=1e-12)


def test_single_token_output_finishes_at_prefill(step):
    table, _ = run(step, make_trace([0.0], [100], [1]))
    assert table.finish_s[0] == table.first_token_s[0] == pytest.approx(step.iteration_s(1, 100, 0, 100, 100**2))


def test_md1_queue_mean_wait_matches_pollaczek_khinchine():
    # One request at a time (max_batch=1) with one output token: each request is one prefill
    # iteration of fixed length, i.e. a deterministic server: M/D/1.
    step = make_step(max_batch=1)
    service_s = step.iteration_s(1, 200, 0, 200, 200**2)
    rho = 0.6
    rng = np.random.default_rng(7)
    n = 60_000
    arrival = np.cumsum(rng.exponential(service_s / rho, n))
    table, _ = run(step, make_trace(arrival, np.full(n, 200), np.ones(n, dtype=int)))
    ttft = np.asarray(table.first_token_s) - arrival
    expected = service_s + rho * service_s / (2 * (1 - rho))
    assert ttft.mean() == pytest.approx(expected, rel=0.03)


def test_low_load_latency_is_the_unloaded_latency(step):
    # At 0.05 req/s requests almost never overlap: P50 TTFT is the prefill time of a median prompt.
    trace = make_trace(np.arange(200) * 20.0, np.full(200, 300), np.full(200, 50))
    table, _ = run(step, trace)
    ttft = np.asarray(table.first_token_s) - trace.arrival_s
    assert np.allclose(ttft, step.iteration_s(1, 300, 0, 300, 300**2), rtol=1e-9)


def _assert_matches_reference(step, trace) -> None:
    """The fast path's first-token and finish times and energy equal the per-iteration reference's."""
    table, instance = run(step, trace)
    ref = replay_instance(step, trace.arrival_s, trace.input_tokens, trace.output_tokens)
    assert np.max(np.abs(np.asarray(table.first_token_s) - ref.first_token_s)) < 1e-9
    assert np.max(np.abs(np.asarray(table.finish_s) - ref.finish_s)) < 1e-9
    assert instance.busy_j == pytest.approx(ref.busy_j, rel=1e-9)
    assert sum(table.energy_j) == pytest.approx(instance.busy_j, rel=1e-9)


@pytest.mark.parametrize("rate", [2.0, 10.0, 25.0, 60.0])
def test_fast_path_matches_per_iteration_reference(step, rate):
    _assert_matches_reference(step, poisson_trace(rate, 500, seed=int(rate)))


def test_power_cap_binds_and_matches_reference():
    # A low cap: every iteration's energy is cap x duration.
    step = make_step(max_power_w=250.0, active_w=240.0, flop_token_j=0.5)
    trace = poisson_trace(20.0, 300, seed=3)
    table, instance = run(step, trace)
    ref = replay_instance(step, trace.arrival_s, trace.input_tokens, trace.output_tokens)
    assert instance.busy_j == pytest.approx(ref.busy_j, rel=1e-9)
    assert instance.busy_j == pytest.approx(250.0 * instance.busy_s, rel=1e-9)


def test_kv_capacity_and_batch_limits_hold(step):
    step = make_step(kv_capacity_tokens=3000, max_batch=4)
    trace = poisson_trace(50.0, 400, seed=11, in_range=(100, 600), out_range=(50, 300))
    table, _ = run(step, trace)
    first = np.asarray(table.first_token_s)
    finish = np.asarray(table.finish_s)
    need = trace.input_tokens + trace.output_tokens
    # Sweep over time: requests between first token and finish hold their reservation.
    events = sorted([(f, 1, i) for i, f in enumerate(first)] + [(e, 0, i) for i, e in enumerate(finish)])
    held, running = 0, 0
    for _, kind, i in events:
        if kind == 1:
            held += need[i]
            running += 1
        else:
            held -= need[i]
            running -= 1
        assert held <= 3000 and running <= 4


def test_requests_that_never_fit_are_rejected_with_reason(step):
    step = make_step(kv_capacity_tokens=1000, max_num_tokens=512)
    trace = make_trace([0.0, 0.1, 0.2], [400, 900, 600], [100, 200, 10])
    table, _ = run(step, trace)
    assert table.status == [FINISHED, REJECTED, REJECTED]
    assert [REJECT_REASONS[r] for r in table.reason] == ["", "exceeds_kv_capacity", "exceeds_max_num_tokens"]
    assert table.counts() == {"pending": 0, "finished": 1, "rejected": 2}


def test_fifo_order_of_first_tokens_under_saturation(step):
    trace = poisson_trace(80.0, 300, seed=5)
    table, _ = run(step, trace)
    first = np.asarray(table.first_token_s)
    assert np.all(np.diff(first) >= -1e-12)  # nobody overtakes the head of the queue
    assert all(math.isfinite(f) for f in table.finish_s)


MODES = {
    "kv padding": dict(kv_pad_tokens=1024, per_padded_kv_token_s=2e-6),
    "admission lead": dict(admission_lead_per_seq_s=3e-4),
    "both": dict(kv_pad_tokens=4096, per_padded_kv_token_s=5e-6, admission_lead_per_seq_s=1e-3),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("rate", [2.0, 20.0, 80.0])
def test_engine_modes_match_per_iteration_reference(mode, rate):
    step = make_step(**MODES[mode])
    for seed in (3, 4):
        _assert_matches_reference(step, poisson_trace(rate, 400, seed))


def test_admission_lead_makes_a_late_arrival_wait_one_iteration():
    # A decode of 4 sequences runs; a request arriving 0.1 ms before a boundary makes that boundary
    # without a lead, and the next one with a lead of 1 ms per sequence (4 ms).
    lead = make_step(admission_lead_per_seq_s=1e-3)
    plain = make_step()
    first_ends = []
    for step in (plain, lead):
        # 4 long requests at t=0, then one more just before the end of their 3rd decode iteration
        warm = run(step, make_trace([0.0] * 4, [100] * 4, [50] * 4))[0]
        prefill_end = warm.first_token_s[0]
        boundary = prefill_end + step.decode_stretch_s(4, 4 * 101, 3)
        table, _ = run(step, make_trace([0.0] * 4 + [boundary - 1e-4], [100] * 5, [50] * 4 + [5]))
        first_ends.append((table.first_token_s[4], boundary))
    (plain_first, plain_boundary), (lead_first, lead_boundary) = first_ends
    assert plain_first == pytest.approx(plain_boundary + plain.iteration_s(5, 104, 4 * 104, 100, 100**2))
    assert lead_first > lead_boundary + lead.iteration_s(5, 104, 4 * 104, 100, 100**2) + 1e-3


def test_admission_lead_never_delays_an_idle_engine():
    step = make_step(admission_lead_per_seq_s=1.0)  # a huge lead
    table, _ = run(step, make_trace([0.0, 10.0], [100, 100], [3, 3]))
    for i, arrival in enumerate((0.0, 10.0)):
        assert table.first_token_s[i] == pytest.approx(arrival + step.iteration_s(1, 100, 0, 100, 100**2))


def test_graph_capture_is_paid_once_per_padded_shape_and_matches_the_reference():
    """Two requests of the same padded shape: the first pays the capture, the second does not; a third of another
    shape pays again. The per-iteration reference agrees; handing in captured graphs skips the capture."""
    step = make_step(graph_q_pad_tokens=64, graph_capture_s=0.08)
    arrival = np.array([0.0, 5.0, 10.0])
    inp = np.array([100, 110, 300])
    out = np.array([2, 2, 2])
    table = RequestTable(make_trace(arrival, inp, out))
    replay_single_instance(step, table)
    ttft = np.array(table.first_token_s) - arrival
    plain = [step.iteration_s(1, n, 0.0, n, float(n * n)) for n in inp]
    assert ttft == pytest.approx([plain[0] + 0.08, plain[1], plain[2] + 0.08], abs=1e-12)
    ref = replay_instance(step, arrival, inp, out)
    assert np.array(ref.first_token_s) == pytest.approx(np.array(table.first_token_s), abs=1e-9)
    warm_table = RequestTable(make_trace(arrival, inp, out))
    graphs = {step.graph_shape(100, 0.0), step.graph_shape(300, 0.0)}
    replay_single_instance(step, warm_table, graphs=graphs)
    assert np.array(warm_table.first_token_s) - arrival == pytest.approx(plain, abs=1e-12)
