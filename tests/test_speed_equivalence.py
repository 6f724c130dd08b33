"""The fast path changes no result: cluster runs (lazily advanced replicas, reconfigurations, both
routers) against a straightforward reference, and streamed runs against in-memory ones.

The reference replays, for every replica, the requests the run routed to it through the per-iteration
oracle ``sim.reference.replay_instance`` (one loop turn per iteration, no closed forms); a replica's
engine depends only on what it received, so first-token and finish times must agree to 1e-9 s. The
routing itself is checked too: least-outstanding must have picked, at every arrival, a serving replica
with the fewest requests queued or running, recomputed from the reference's own finish times.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from profiles.profile_set import ProfileSet, default_profile_path
from sim.cluster import ClusterSettings, simulate
from sim.metrics import requests_frame, summarize
from sim.policies import Fp16Only, SloEnergyOptimal
from sim.reference import replay_instance
from sim.stream import RequestSink, simulate_stream, stream_summary
from test_cluster import TASKS, small_trace
from traces.stream import ChunkedTrace


@pytest.fixture(scope="module")
def profiles() -> ProfileSet:
    return ProfileSet.load(default_profile_path())


def _replay_per_replica(result, frame):
    served = frame[frame.instance >= 0]
    first = np.full(len(frame), np.nan)
    finish = np.full(len(frame), np.nan)
    cached = np.zeros(len(frame), dtype=np.int64)
    busy_j = {}
    evictions = {}
    block = result.prefix_cache.block_tokens if result.prefix_cache is not None else None
    for inst in result.instances:
        rows = served[served.instance == inst.instance_id]
        if rows.empty:
            continue
        ref = replay_instance(inst.step, rows.arrival_s.to_numpy(), rows.input_tokens.to_numpy(),
                              rows.output_tokens.to_numpy(), rows.prefix_id.to_numpy(), rows.prefix_tokens.to_numpy(),
                              block)
        first[rows.request_id.to_numpy()] = ref.first_token_s
        finish[rows.request_id.to_numpy()] = ref.finish_s
        cached[rows.request_id.to_numpy()] = ref.cached_tokens
        busy_j[inst.instance_id] = ref.busy_j
        evictions[inst.instance_id] = ref.evictions
    return first, finish, busy_j, cached, evictions


CASES = {
    "static-least-outstanding": dict(policy=Fp16Only(), rate=60.0, arrival="poisson",
                                     settings=ClusterSettings(replan_interval_s=None)),
    "static-round-robin": dict(policy=Fp16Only(), rate=60.0, arrival="gamma",
                               settings=ClusterSettings(replan_interval_s=None, router="round_robin")),
    "replanning-least-outstanding": dict(policy=SloEnergyOptimal(0.9), rate=60.0, arrival="diurnal",
                                         settings=ClusterSettings(replan_interval_s=60.0, engine_start_s=30.0)),
    "replanning-round-robin": dict(policy=SloEnergyOptimal(0.9), rate=45.0, arrival="diurnal",
                                   settings=ClusterSettings(replan_interval_s=45.0, engine_start_s=10.0,
                                                            router="round_robin")),
}


def _assert_matches_reference(result) -> None:
    """Every request finished, with the first-token and finish times and replica energy of the per-iteration
    reference replay of its replica's requests."""
    frame = requests_frame(result)
    assert (frame.status == "finished").all()
    first, finish, busy_j, cached, evictions = _replay_per_replica(result, frame)
    assert np.max(np.abs(frame.first_token_s.to_numpy() - first)) < 1e-9
    assert np.max(np.abs(frame.finish_s.to_numpy() - finish)) < 1e-9
    assert np.array_equal(frame.cached_tokens.to_numpy(), cached)
    for inst in result.instances:
        if inst.instance_id in busy_j:
            assert inst.busy_j == pytest.approx(busy_j[inst.instance_id], rel=1e-9)
            if inst.prefix_cache is not None:
                assert inst.prefix_cache.evictions == evictions[inst.instance_id]


@pytest.mark.parametrize("case", list(CASES))
def test_cluster_fast_path_matches_per_iteration_reference(profiles, case):
    spec = CASES[case]
    trace = small_trace(seed=7, rate=spec["rate"], duration=600.0, arrival=spec["arrival"])
    result = simulate(trace, TASKS, spec["policy"], profiles, spec["settings"])
    _assert_matches_reference(result)
    if "replanning" in case:
        assert sum(result.reconfigurations.values()) > 0 and len(result.instances) > len(TASKS)


def test_least_outstanding_picked_the_least_loaded_serving_replica(profiles):
    trace = small_trace(seed=2, rate=80.0, duration=300.0)
    result = simulate(trace, TASKS, Fp16Only(), profiles, ClusterSettings(replan_interval_s=None))
    frame = requests_frame(result)
    checked = 0
    for task, rows in frame.groupby("task"):
        replicas = sorted(rows.instance.unique())
        if len(replicas) < 2:
            continue
        arrival = rows.arrival_s.to_numpy()
        finish = rows.finish_s.to_numpy()
        inst = rows.instance.to_numpy()
        for i in range(len(rows)):
            # Requests routed before i and not finished at its arrival, per replica.
            live = finish[:i] > arrival[i]
            loads = {r: int(np.count_nonzero(live & (inst[:i] == r))) for r in replicas}
            best = min(loads.values())
            assert loads[inst[i]] == best
            assert inst[i] == min(r for r in replicas if loads[r] == best)  # lowest id on ties
            checked += 1
    assert checked > 1000


def test_streamed_run_equals_in_memory_run(profiles, tmp_path):
    trace = small_trace(seed=1, rate=60.0, duration=900.0, arrival="diurnal")
    settings = ClusterSettings(replan_interval_s=60.0, engine_start_s=30.0, router="round_robin", max_queue=2)
    memory = simulate(trace, TASKS, SloEnergyOptimal(0.9), profiles, settings)
    frame = requests_frame(memory)
    summary = summarize(memory, frame)
    sink = RequestSink(trace.task_names, tmp_path / "requests.parquet", row_group_rows=5000)
    # A tiny ring and odd block size: the ring grows and wraps many times.
    streamed = simulate_stream(ChunkedTrace(trace, 60.0), TASKS, SloEnergyOptimal(0.9), profiles, settings,
                               sink, block=777, ring_capacity=256)
    assert streamed.peak_in_flight > 256
    written = pd.read_parquet(tmp_path / "requests.parquet")
    assert list(written.columns) == list(frame.columns)
    pd.testing.assert_frame_equal(written, frame, check_dtype=False)
    stream = stream_summary(streamed, sink)
    assert (frame.status == "rejected").any()  # the queue limit was exercised
    for key, value in summary.items():
        if key not in ("tasks", "percentiles"):
            assert stream[key] == value, key
    rel = sink.stats.relative_error
    for exact, approx in zip(summary["tasks"], stream["tasks"]):
        for key, value in exact.items():
            if key.startswith("p") and key.endswith("_s"):
                assert approx[key] == pytest.approx(value, rel=rel), (exact["task"], key)
            else:
                assert approx[key] == value, (exact["task"], key)


@pytest.fixture(scope="module")
def engine_mode_profiles(profiles, tmp_path_factory) -> ProfileSet:
    """The default profiles with every step model padding its KV read (4,096-token shapes) and admitting
    behind the host's per-sequence work, written and reloaded (the optional columns round-trip)."""
    from profiles.profile_set import write_profile_set

    steps = profiles.step_models.copy()
    steps["kv_pad_tokens"] = 4096
    steps["per_padded_kv_token_s"] = 2e-7
    steps["admission_lead_per_seq_s"] = 2e-4
    tables = {"step_models": steps, "curves": profiles.curves, "saturation": profiles.saturation,
              "quality": profiles.quality, "workloads": profiles.workloads}
    path = write_profile_set(tmp_path_factory.mktemp("modes") / "profiles", profiles.manifest, tables)
    loaded = ProfileSet.load(path)
    assert all(loaded.step(k).kv_pad_tokens == 4096 for k in loaded.configs())
    return loaded


@pytest.mark.parametrize("case", ["static-least-outstanding", "replanning-round-robin"])
def test_engine_modes_match_per_iteration_reference_in_a_cluster(engine_mode_profiles, case):
    spec = CASES[case]
    trace = small_trace(seed=5, rate=spec["rate"], duration=600.0, arrival=spec["arrival"])
    result = simulate(trace, TASKS, spec["policy"], engine_mode_profiles, spec["settings"])
    _assert_matches_reference(result)


def test_prefix_cache_matches_per_iteration_reference_in_a_cluster(engine_mode_profiles):
    """Shared prefixes on every task, a prefix cache on every replica (cold on each new one), re-planning, the
    padded/lead engine modes; at this load running requests squeeze the cache, so entries are evicted."""
    from sim.prefix_cache import PrefixCacheSettings
    from traces.shared_prefix import SharedPrefixSpec, add_shared_prefixes

    spec = CASES["replanning-least-outstanding"]
    trace = add_shared_prefixes(small_trace(seed=4, rate=spec["rate"], duration=600.0, arrival=spec["arrival"]),
                                SharedPrefixSpec(0.6, 6, 300, zipf_s=0.8), seed=3)
    settings = ClusterSettings(replan_interval_s=60.0, engine_start_s=30.0, prefix_cache=PrefixCacheSettings(32))
    result = simulate(trace, TASKS, spec["policy"], engine_mode_profiles, settings)
    _assert_matches_reference(result)
    assert sum(result.reconfigurations.values()) > 0
    assert sum(result.requests.cached_tokens) > 0
    assert sum(inst.prefix_cache.evictions for inst in result.instances) > 0
