"""Counting the requests a run serves outside its step models' fit domain (issue 10, item 6).

A one-config profile set with a small known domain (prompts up to 500 tokens, contexts up to 800, batches
up to 4) and traces whose prompts, outputs and arrival instants are chosen so the counts can be read off
by hand; the same counts from a streamed run; an unknown domain reported as unknown.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import make_step, make_trace, poisson_trace
from profiles.fit_domain import FitDomain
from profiles.profile_set import LatencySlo, ProfileSet, write_profile_set
from profiles.schema import CURVE_METRICS, ConfigKey
from sim.cluster import ClusterSettings, simulate
from sim.deployment import TaskSpec
from sim.metrics import extrapolation_lines, requests_frame, summarize
from sim.policies import Fp16Only
from sim.stream import RequestSink, simulate_stream, stream_summary
from traces.stream import ChunkedTrace

KEY = ConfigKey("g1", "m", "fp16", 1)
TASKS = (TaskSpec("t", "m", "w", LatencySlo(1.0, 0.2), 0.0),)
SETTINGS = ClusterSettings(gpu_types=("g1",), replan_interval_s=None)
DOMAIN = FitDomain(max_prompt_tokens=500, max_context_tokens=800, max_batch=4)


def one_config_profiles(root: Path, domain: FitDomain | None) -> ProfileSet:
    """One config that saturates at 1,000 req/s (so one replica serves every trace here)."""
    base = {"gpu": KEY.gpu, "model": KEY.model, "quant": KEY.quant, "tp": KEY.tp}
    step = {**base, **make_step().as_dict(), "provenance": "assumption", "source": "test fixture"}
    if domain is not None:
        step.update(domain.as_columns())
    curves = [{**base, "workload": "w", "qps": float(q), **{m: 0.0 for m in CURVE_METRICS}, "p90_ttft_s": 0.1,
               "p90_tpot_s": 0.05, "energy_per_output_token_j": 0.1, "mean_power_w": 200.0,
               "output_tokens_per_s": 200.0 * q, "n_requests": 100,
               "provenance": "assumption", "source": "test fixture"} for q in (1.0, 1000.0)]
    tables = {
        "step_models": pd.DataFrame([step]), "curves": pd.DataFrame(curves),
        "saturation": pd.DataFrame([{**base, "workload": "w", "slo_ttft_s": 1.0, "slo_tpot_s": 0.2,
                                     "saturation_qps": 1000.0, "energy_per_output_token_j": 0.1, "probes": 1,
                                     "provenance": "assumption", "source": "test fixture"}]),
        "quality": pd.DataFrame([{"model": "m", "quant": "fp16", "task": "t", "score": 60.0,
                                  "provenance": "assumption", "source": "test fixture"}]),
        "workloads": pd.DataFrame([{"workload": "w", "mean_input_tokens": 300.0, "mean_output_tokens": 200.0,
                                    "provenance": "assumption", "source": "test fixture"}]),
    }
    return ProfileSet.load(write_profile_set(root / "one", {"name": "one"}, tables))


def hand_trace():
    """Groups far apart (each finishes long before the next), requests of a group arriving together:
    t=0    6 short requests together -> one batch of 6 > 4: batch only (6)
    t=100  A prompt 600 out 10 (prompt only), B prompt 400 out 500 (context only; batch of 2)
    t=200  C prompt 700 out 200 (prompt and context)
    t=300  D prompt 100 out 100 (inside the domain)
    t=400  E prompt 600 out 10 with 4 short ones: batch of 5 > 4 (5), E also over by prompt
    """
    groups = [(0.0, [(10, 50)] * 6), (100.0, [(600, 10), (400, 500)]), (200.0, [(700, 200)]),
              (300.0, [(100, 100)]), (400.0, [(600, 10)] + [(10, 10)] * 4)]
    rows = [(t, p, o) for t, reqs in groups for p, o in reqs]
    return make_trace([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], names=("t",))


def test_known_domain_gives_the_hand_counted_requests(tmp_path, capsys):
    profiles = one_config_profiles(tmp_path, DOMAIN)
    result = simulate(hand_trace(), TASKS, Fp16Only(), profiles, SETTINGS)
    summary = summarize(result)
    assert summary["finished"] == 15 and len(result.instances) == 1
    e = summary["extrapolation"][KEY.label]
    assert e["domain"] == {"max_prompt_tokens": 500, "max_context_tokens": 800, "max_batch": 4}
    assert (e["requests"], e["prompt"], e["context"], e["batch"]) == (15, 3, 2, 11)
    # each request once: A, B, C, E by prompt or context, and the 6 + 4 short ones by batch; D is inside
    assert e["any"] == 14 and e["share"] == pytest.approx(14 / 15)
    lines = extrapolation_lines(summary["extrapolation"])
    assert lines == [f"extrapolating: {KEY.label}: 14 of 15 requests (93.3 %) outside its step model's fit domain "
                     f"(prompt 3 > 500 tokens, context 2 > 800 tokens, batch 11 > 4 sequences)"]


def test_batch_is_counted_at_admission_of_the_batch_joined(tmp_path):
    """Requests that join a running batch: the batch they join is the running ones plus those admitted
    with them; the ones already running are not counted again when it grows."""
    profiles = one_config_profiles(tmp_path, DOMAIN)
    # 3 long requests at t=0, then 2 arrive while they run: they join a batch of 5 > 4; later 1 more joins
    # the same 5 (6 > 4) -- 3 counted; the first 3 joined a batch of 3 -- not counted.
    trace = make_trace([0.0, 0.0, 0.0, 0.5, 0.5, 0.8], [10] * 6, [300] * 6, names=("t",))
    result = simulate(trace, TASKS, Fp16Only(), profiles, SETTINGS)
    e = summarize(result)["extrapolation"][KEY.label]
    assert (e["requests"], e["prompt"], e["context"], e["batch"], e["any"]) == (6, 0, 0, 3, 3)


def test_unknown_domain_is_reported_unknown(tmp_path, capsys):
    profiles = one_config_profiles(tmp_path, None)
    assert not profiles.fit_domain(KEY).known
    summary = summarize(simulate(hand_trace(), TASKS, Fp16Only(), profiles, SETTINGS))
    e = summary["extrapolation"][KEY.label]
    assert e == {"requests": 15, "prompt": None, "context": None, "batch": None, "any": None, "share": None,
                 "domain": "unknown"}
    assert extrapolation_lines(summary["extrapolation"]) == [
        "extrapolation: no config served a request outside its step model's fit domain",
        f"extrapolation: fit domain unknown (not counted) for 1 config(s): {KEY.label}"]


def test_partly_known_domain_counts_only_what_it_knows(tmp_path):
    profiles = one_config_profiles(tmp_path, FitDomain(max_batch=4))
    e = summarize(simulate(hand_trace(), TASKS, Fp16Only(), profiles, SETTINGS))["extrapolation"][KEY.label]
    assert (e["prompt"], e["context"], e["batch"], e["any"]) == (None, None, 11, 11)
    assert e["domain"] == {"max_prompt_tokens": None, "max_context_tokens": None, "max_batch": 4}


def test_streamed_run_reports_the_same_counts(tmp_path):
    profiles = one_config_profiles(tmp_path, DOMAIN)
    trace = poisson_trace(20.0, 4000, seed=5, in_range=(1, 800), out_range=(1, 300))
    memory = summarize(simulate(trace, TASKS, Fp16Only(), profiles, SETTINGS))
    sink = RequestSink(trace.task_names, None)
    streamed = stream_summary(simulate_stream(ChunkedTrace(trace, 30.0), TASKS, Fp16Only(), profiles, SETTINGS,
                                              sink, block=333, ring_capacity=64), sink)
    e = memory["extrapolation"][KEY.label]
    assert streamed["extrapolation"] == memory["extrapolation"]
    assert e["prompt"] > 0 and e["context"] > 0 and e["batch"] > 0 and e["requests"] == 4000
    # the per-request counts agree with the request table
    frame = requests_frame(simulate(trace, TASKS, Fp16Only(), profiles, SETTINGS))
    assert e["prompt"] == int((frame.input_tokens > 500).sum())
    assert e["context"] == int((frame.input_tokens + frame.output_tokens > 800).sum())
    assert max(e["prompt"], e["context"], e["batch"]) <= e["any"] <= e["prompt"] + e["context"] + e["batch"]
    assert math.isclose(e["share"], e["any"] / 4000)


def test_instance_without_a_batch_limit_counts_nothing():
    from sim.instance import replay_single_instance
    from sim.requests import RequestTable

    trace = make_trace(np.zeros(8), [10] * 8, [20] * 8)
    instance = replay_single_instance(make_step(), RequestTable(trace))
    assert instance.batch_extrapolated == 0 and not instance.fit_domain.known
