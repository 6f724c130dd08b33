"""The step-model fit on exact synthetic runs (no server): what is identified, what is fixed, and power."""

from __future__ import annotations

import heapq
import math
from collections import deque

import numpy as np
import pytest

from calibrate.fit import FitRun, capacity_from, fit_step_model, observations
from calibrate.loadgen import RequestRecord
from calibrate.validate import compare
from profiles.step_model import StepModel

TRUE = StepModel(overhead_s=0.003, per_seq_s=0.0, per_token_s=5e-5, weights_s=0.009, flop_token_s=6e-5,
                 per_kv_token_s=5e-7, per_prefill_token_s=3e-5, prefill_attn_s=1e-8, idle_w=90.0, active_w=200.0,
                 flop_token_j=0.01, per_kv_token_j=1e-5, weights_j=2.0, max_power_w=700.0, kv_capacity_tokens=16000,
                 max_batch=16, max_num_tokens=2048)


def closed_loop(step: StepModel, kind: str, clients: int, L: int, O: int, n: int, overhead_s: float = 0.0) -> FitRun:
    """Per-iteration replay of a closed loop of ``clients`` (each sends its next request when the previous
    one finished); requests reach the engine ``overhead_s`` after they are sent. Token times are exact."""
    sends: list[tuple[float, int]] = [(0.0, i) for i in range(min(clients, n))]
    heapq.heapify(sends)
    sent = len(sends)
    waiting: deque[tuple[int, float]] = deque()
    running: list[list] = []  # [rid, generated]
    times: dict[int, list[float]] = {}
    send_at: dict[int, float] = {}
    now, busy_j, busy_s, reserved = 0.0, 0.0, 0.0, 0
    while sends or waiting or running:
        while sends and sends[0][0] + overhead_s <= now:
            t, rid = heapq.heappop(sends)
            send_at[rid] = t
            waiting.append((rid, t + overhead_s))
        if not waiting and not running:
            now = sends[0][0] + overhead_s
            continue
        new = []
        budget = step.max_num_tokens
        while waiting and len(running) + len(new) < step.max_batch and reserved + L + O <= step.kv_capacity_tokens \
                and L <= budget:
            new.append(waiting.popleft()[0])
            reserved += L + O
            budget -= L
        kv = sum(L + g for _, g in running)
        b = len(running)
        d = step.iteration_s(b + len(new), b + L * len(new), kv, L * len(new), float(L * L * len(new)))
        busy_j += step.iteration_j(d, b + L * len(new), kv)
        busy_s += d
        now += d
        still = []
        for rec in running + [[rid, 0] for rid in new]:
            rec[1] += 1
            times.setdefault(rec[0], []).append(now)
            if rec[1] == O:
                reserved -= L + O
                if sent < n:
                    heapq.heappush(sends, (now, sent))
                    sent += 1
            else:
                still.append(rec)
        running = still
    records = tuple(RequestRecord(rid, send_at[rid], times[rid][0], times[rid][-1], tuple(times[rid]), L, O, L, O)
                    for rid in sorted(times))
    window = now
    energy = busy_j + step.idle_w * (window - busy_s)
    return FitRun(kind, clients, L, O, records, energy, window)


def design(step: StepModel, overhead_s: float = 0.0) -> list[FitRun]:
    runs = [closed_loop(step, "prefill", 1, L, 4, 3, overhead_s)
            for L in (16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2040)]
    runs += [closed_loop(step, "decode", B, L, 32, 2 * B, overhead_s) for L in (64, 512) for B in (1, 2, 4, 8, 16)]
    return runs


IDENTIFIED = ("overhead_s", "weights_s", "flop_token_s", "per_token_s", "per_kv_token_s", "per_prefill_token_s",
              "prefill_attn_s")


def test_exact_runs_give_back_every_identified_parameter():
    runs = design(TRUE)
    fit = fit_step_model(runs, {"kv_capacity_tokens": 16000, "max_batch": 16, "max_num_tokens": 2048},
                         idle_w=90.0, power_limit_w=700.0)
    for name in IDENTIFIED:
        assert getattr(fit.step, name) == pytest.approx(getattr(TRUE, name), rel=0.02), name
    assert fit.step.per_seq_s == 0.0
    assert fit.kink_tokens == pytest.approx(150.0, rel=0.02)
    assert fit.request_overhead_s == pytest.approx(0.0, abs=1e-5)
    assert max(fit.mape_pct.values()) < 0.5
    for name in ("active_w", "flop_token_j", "per_kv_token_j", "weights_j"):
        assert getattr(fit.step, name) == pytest.approx(getattr(TRUE, name), rel=0.02), name
    assert fit.step.idle_w == 90.0 and fit.step.max_power_w == 700.0 and fit.power_mape_pct < 0.5
    assert (fit.step.kv_capacity_tokens, fit.step.max_batch, fit.step.max_num_tokens) == (16000, 16, 2048)


def test_request_overhead_is_fitted_apart_from_the_engine():
    runs = design(TRUE, overhead_s=0.002)
    fit = fit_step_model(runs, {"kv_capacity_tokens": 16000, "max_batch": 16, "max_num_tokens": 2048})
    assert fit.request_overhead_s == pytest.approx(0.002, rel=0.05)
    for name in IDENTIFIED:
        assert getattr(fit.step, name) == pytest.approx(getattr(TRUE, name), rel=0.03), name
    # Without energy every power field is zero, and the notes say so.
    assert all(getattr(fit.step, f) == 0.0 for f in ("idle_w", "active_w", "weights_j", "max_power_w"))
    assert any("no GPU energy measured" in n for n in fit.notes)
    _, mape = compare(fit.step, [(r.label, 0.0, r.records) for r in runs], fit.request_overhead_s)
    assert max(mape.values()) < 1.0


def test_without_a_compute_bound_prefill_the_kink_is_fixed_not_invented():
    runs = [r for r in design(TRUE) if r.kind == "decode" or r.input_tokens <= 128]
    fit = fit_step_model(runs, {"kv_capacity_tokens": 16000, "max_batch": 16, "max_num_tokens": 2048})
    assert fit.kink_tokens is None and fit.step.flop_token_s == 0.0 and fit.step.overhead_s == 0.0
    assert fit.step.weights_s == pytest.approx(TRUE.overhead_s + TRUE.weights_s, rel=0.02)
    assert any("no compute-bound prefill identified up to 128" in n for n in fit.notes)
    for L in (16, 64, 128):  # the measured range is predicted as well as before
        assert fit.step.iteration_s(1, L, 0, L, L * L) == pytest.approx(TRUE.iteration_s(1, L, 0, L, L * L), rel=0.02)


def test_decode_observations_read_the_right_kv_positions():
    run = closed_loop(TRUE, "decode", 4, 100, 33, 4)
    obs = observations([run])
    assert [o.n_seq for o in obs] == [4] * len(obs)
    for o in obs:
        per_seq = o.kv_tokens / 4 - 100
        assert o.seconds == pytest.approx(TRUE.iteration_s(4, 4, o.kv_tokens), rel=1e-3), per_seq


def test_capacity_without_engine_report_is_a_labelled_lower_bound():
    runs = [closed_loop(TRUE, "decode", 8, 64, 16, 8), closed_loop(TRUE, "prefill", 1, 512, 4, 1)]
    cap, source = capacity_from(runs, {})
    assert cap == {"kv_capacity_tokens": 8 * 80, "max_batch": 8, "max_num_tokens": 512}
    assert source.count("a lower bound") == 3
    cap, source = capacity_from(runs, {"kv_capacity_tokens": 9000})
    assert cap["kv_capacity_tokens"] == 9000 and "kv_capacity_tokens reported by the engine" in source


def test_fit_refuses_runs_that_cannot_identify_it():
    with pytest.raises(ValueError, match="prefill runs at 3 or more prompt lengths"):
        fit_step_model([closed_loop(TRUE, "prefill", 1, 64, 4, 2), closed_loop(TRUE, "decode", 2, 64, 16, 2)])


def test_export_fit_domain_is_that_of_the_runs_that_were_fitted():
    from calibrate.export import fit_domain

    runs = design(TRUE)
    domain = fit_domain(runs)
    # prefill runs up to 2,040 prompt tokens (+4 output), decode runs at 64/512 tokens +32, up to 16 clients
    assert (domain.max_prompt_tokens, domain.max_context_tokens, domain.max_batch) == (2040, 2044, 16)
    # a run with no usable request gave no observation: it is not part of the domain
    broken = FitRun("decode", 64, 3000, 32, ())
    assert fit_domain(runs + [broken]) == domain
    assert not fit_domain([broken]).known


def mixed_run(step: StepModel, B: int, L: int, Lb: int = 64, Ob: int = 200, probes: int = 12,
              gap_s: float = 0.11) -> FitRun:
    """Per-iteration replay of a mixed run: B background requests at t=0, then one L-token probe (2 output tokens)
    every ``gap_s`` (plus a phase offset); probes join at the next iteration boundary. Token times are exact."""
    arrivals = [(0.0, rid, Lb, Ob) for rid in range(B)]
    arrivals += [(0.3 + k * gap_s + 0.013 * (k % 5), B + k, L, 2) for k in range(probes)]
    pending = deque(sorted(arrivals))
    running: list[list] = []  # [rid, prompt, out, generated]
    times: dict[int, list[float]] = {}
    sent = {rid: t for t, rid, _, _ in arrivals}
    meta = {rid: (p, o) for _, rid, p, o in arrivals}
    now = 0.0
    while pending or running:
        new = []
        while pending and pending[0][0] <= now:
            _, rid, p, o = pending.popleft()
            new.append([rid, p, o, 0])
        if not new and not running:
            now = pending[0][0]
            continue
        kv = sum(p + g for _, p, _, g in running)
        prefill = sum(p for _, p, _, _ in new)
        d = step.iteration_s(len(running) + len(new), len(running) + prefill, kv, prefill,
                             float(sum(p * p for _, p, _, _ in new)))
        now += d
        still = []
        for rec in running + new:
            rec[3] += 1
            times.setdefault(rec[0], []).append(now)
            if rec[3] < rec[2]:
                still.append(rec)
        running = still
    records = tuple(RequestRecord(rid, sent[rid], times[rid][0], times[rid][-1], tuple(times[rid]), meta[rid][0],
                                  meta[rid][1], meta[rid][0], meta[rid][1]) for rid in sorted(times))
    return FitRun("mixed", B, L, Ob, records)


def test_mixed_runs_recover_what_a_mixed_iteration_costs_beyond_its_parts():
    """An engine whose mixed batches cost 6 ms more than prefill + decode: the additive fit cannot see it; with
    mixed runs the fit gives it back and keeps the other parameters."""
    true = StepModel(**{**TRUE.as_dict(), "mixed_overhead_s": 0.006})
    cap = {"kv_capacity_tokens": 16000, "max_batch": 16, "max_num_tokens": 2048}
    without = fit_step_model(design(true), cap)
    assert without.step.mixed_overhead_s == 0.0
    runs = design(true) + [mixed_run(true, B, L) for B in (1, 4, 8) for L in (256, 1024)]
    obs = [o for o in observations(runs) if o.group == "mixed"]
    assert len(obs) >= 30  # 12 probes per run, the first 4 left out; queued probes share an iteration
    fit = fit_step_model(runs, cap)
    assert fit.step.mixed_overhead_s == pytest.approx(0.006, rel=0.02)
    for name in IDENTIFIED:
        assert getattr(fit.step, name) == pytest.approx(getattr(TRUE, name), rel=0.02), name
    assert fit.mape_pct["mixed"] < 0.5
    assert any("mixed_overhead_s = 6.00 ms" in n for n in fit.notes)


def test_graph_capture_is_the_first_request_extra_of_each_prefill_run():
    """Prefill runs whose first request paid an 80 ms capture: the fit gives back 80 ms when the plan states
    padded shapes, and nothing is fitted when it does not."""
    runs = []
    for run in design(TRUE):
        if run.kind == "prefill":
            first, *rest = run.records
            first = RequestRecord(first.index, first.send_s, first.first_token_s + 0.08, first.finish_s + 0.08,
                                  tuple(t + 0.08 for t in first.token_times_s), first.input_tokens,
                                  first.output_tokens, first.prompt_tokens, first.completion_tokens)
            run = FitRun(run.kind, run.concurrency, run.input_tokens, run.output_tokens, (first, *rest))
        runs.append(run)
    cap = {"kv_capacity_tokens": 16000, "max_batch": 16, "max_num_tokens": 2048}
    fit = fit_step_model(runs, cap, stated_capacity={"graph_q_pad_tokens": 64})
    assert fit.step.graph_capture_s == pytest.approx(0.08, abs=1e-6) and fit.step.graph_q_pad_tokens == 64
    assert fit.step.overhead_s == pytest.approx(TRUE.overhead_s, rel=0.02)  # the lower quartile ignores the first
    assert fit_step_model(runs, cap).step.graph_capture_s == 0.0
