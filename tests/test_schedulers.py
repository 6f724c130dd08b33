"""The on-demand KV schedulers (StepModel.scheduler: max_utilization, vllm; sim.instance PagedInstance): the fast path
against the per-iteration reference (sim.reference.replay_paged), a hand-computed preemption, admission beyond
guaranteed-no-evict's reservation, accounting, and selection by name (engine setting ``scheduler``)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from conftest import make_step, make_trace, poisson_trace
from profiles.engine_settings import EngineOverrides, EngineSettingsError, apply_engine_settings
from profiles.step_model import SCHEDULERS, StepModelError
from sim.config import ConfigError, build_run
from sim.instance import Instance, MaxUtilizationInstance, PagedInstance, VllmInstance, replay_single_instance
from sim.reference import replay_paged
from sim.requests import FINISHED, REJECT_REASONS, REJECTED, RequestTable

MAX_UTIL = SCHEDULERS.index("max_utilization")
VLLM = SCHEDULERS.index("vllm")


def run(step, trace):
    table = RequestTable(trace)
    return table, replay_single_instance(step, table)


def _assert_matches_reference(step, trace):
    table, instance = run(step, trace)
    status = np.asarray(table.status)
    assert np.all(status == FINISHED)
    ref = replay_paged(step, trace.arrival_s, trace.input_tokens, trace.output_tokens)
    assert np.array_equal(np.asarray(table.first_token_s), ref.first_token_s)
    assert np.array_equal(np.asarray(table.finish_s), ref.finish_s)
    assert instance.busy_s == ref.busy_s and instance.busy_j == ref.busy_j
    assert np.allclose(np.asarray(table.energy_j), ref.energy_j, rtol=1e-12, atol=0)
    assert instance.preemptions == ref.preemptions
    assert sum(table.energy_j) == pytest.approx(instance.busy_j, rel=1e-12)
    assert instance.tokens_out == int(trace.output_tokens.sum())
    return table, instance, ref


@pytest.mark.parametrize("scheduler", [MAX_UTIL, VLLM])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_path_matches_the_reference_on_random_traces_with_tight_kv(scheduler, seed):
    step = make_step(scheduler=scheduler, kv_capacity_tokens=3000, max_batch=16, max_num_tokens=1024)
    trace = poisson_trace(20.0 + 10 * seed, 150, seed=seed, in_range=(1, 600), out_range=(1, 300))
    _, instance, ref = _assert_matches_reference(step, trace)
    assert ref.preemptions > 0  # the KV is tight enough to evict
    assert isinstance(instance, (MaxUtilizationInstance, VllmInstance)[scheduler - 1])


@pytest.mark.parametrize("scheduler", [MAX_UTIL, VLLM])
def test_the_second_request_is_preempted_when_both_need_a_third_block_and_recomputes_after_the_first(scheduler):
    # KV 256 tokens: 4 blocks of 64 (max_utilization) or 16 of 16 (vllm, watermark int(0.16) = 0). Two requests of
    # 64 prompt + 100 output tokens (164 each: they never fit together under guaranteed-no-evict). Both prefill in
    # iteration 0 and decode together while their KV (64 + g tokens each after the step writing token g) fits half
    # the cache: g = 1..64. At g = 65 the first needs more and nothing is free: the second (newest) is evicted. The
    # first decodes alone for g = 65..99 and finishes; then the second recomputes 64 + 65 = 129 tokens (its 66th
    # token) and decodes g = 66..99 alone.
    step = make_step(scheduler=scheduler, kv_capacity_tokens=256)
    trace = make_trace([0.0, 0.0], [64, 64], [100, 100])
    table, instance = run(step, trace)
    t = 0.0 + step.iteration_s(2, 128, 0, 128, 2 * 64**2)
    first = t
    for g in range(1, 65):
        t = t + step.iteration_s(2, 2, 2 * (64 + g))
    for g in range(65, 100):
        t = t + step.iteration_s(1, 1, 64 + g)
    finish_a = t
    t = t + step.iteration_s(1, 129, 0, 129, 129**2)
    for g in range(66, 100):
        t = t + step.iteration_s(1, 1, 64 + g)
    assert list(table.first_token_s) == [first, first]
    assert list(table.finish_s) == [finish_a, t]
    assert instance.preemptions == 1
    assert sum(table.energy_j) == pytest.approx(instance.busy_j, rel=1e-12)
    _assert_matches_reference(step, trace)
    # guaranteed-no-evict serves them one after the other instead, with no eviction
    plain, _ = run(make_step(kv_capacity_tokens=256), trace)
    assert plain.first_token_s[1] == plain.finish_s[0] + make_step().iteration_s(1, 64, 0, 64, 64**2)


def test_max_utilization_admits_more_than_guaranteed_no_evict_and_serves_a_kv_bound_workload_faster():
    # 120 requests of 100 + 300 tokens at once: guaranteed-no-evict reserves 400 each (KV / 400 at a time);
    # max_utilization admits by current need (and pays recomputations when the batch outgrows the cache). On this
    # KV-bound workload it still finishes sooner; more KV never makes any scheduler slower. (Where the batch limit,
    # not KV, binds, eviction's recomputation can make max_utilization slower: not this case.)
    trace = make_trace([0.0] * 120, [100] * 120, [300] * 120)
    last = {}
    for kv in (2048, 4096, 8192):
        makespan = {}
        for scheduler in (0, MAX_UTIL, VLLM):
            step = make_step(scheduler=scheduler, kv_capacity_tokens=kv, max_batch=64, max_num_tokens=8192)
            table, _ = run(step, trace)
            assert all(s == FINISHED for s in table.status)
            makespan[scheduler] = max(table.finish_s)
            if scheduler:
                ref = replay_paged(step, trace.arrival_s, trace.input_tokens, trace.output_tokens)
                assert ref.max_running > min(kv // 400, 64)  # more concurrent than the reservation allows
        assert makespan[MAX_UTIL] < makespan[0]
        for scheduler, span in makespan.items():
            assert span <= last.get(scheduler, np.inf)
        last = makespan


@pytest.mark.parametrize("scheduler", [MAX_UTIL, VLLM])
def test_every_request_is_finished_or_rejected(scheduler):
    step = make_step(scheduler=scheduler, kv_capacity_tokens=2048, max_num_tokens=1024)
    trace = poisson_trace(30.0, 200, seed=4, in_range=(1, 1500), out_range=(1, 1200))
    table, instance = run(step, trace)
    status = np.asarray(table.status)
    assert np.all((status == FINISHED) | (status == REJECTED)) and (status == REJECTED).any()
    reasons = {REJECT_REASONS[r] for r, s in zip(table.reason, status) if s == REJECTED}
    assert reasons <= {"exceeds_kv_capacity", "exceeds_max_num_tokens"}
    assert instance.outstanding == 0 and instance.kv_used_tokens == 0
    assert sum(table.energy_j) == pytest.approx(instance.busy_j, rel=1e-12)


def test_the_default_scheduler_is_the_plain_engine():
    step = make_step()
    assert step.scheduler == 0 and type(Instance(0, "x", 1, step, RequestTable(make_trace([0.0], [1], [1])),
                                                 0.0, 0.0)) is Instance
    assert issubclass(MaxUtilizationInstance, PagedInstance) and issubclass(VllmInstance, PagedInstance)


def test_selection_by_name_and_bad_names():
    step = make_step()
    assert apply_engine_settings(step, EngineOverrides(scheduler="vllm")).scheduler == VLLM
    assert apply_engine_settings(step, EngineOverrides(scheduler="max_utilization")).scheduler == MAX_UTIL
    with pytest.raises(EngineSettingsError, match="scheduler must be one of guaranteed_no_evict, max_utilization, "
                                                  "vllm, got 'fifo'"):
        EngineOverrides(scheduler="fifo")
    with pytest.raises(StepModelError, match="chunked_context runs only with the guaranteed_no_evict scheduler"):
        make_step(scheduler=VLLM, chunked_context=1)


SMALL = ["trace.duration_s=60", "trace.total_rate_qps=20", "progress=false"]


def composed(overrides):
    from hydra import compose, initialize_config_module

    import sim.main  # noqa: F401  (registers the schema)
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("override,key", [("engine.scheduler=fifo", "engine.scheduler"),
                                          ("cluster.pools.code.engine.scheduler=nope",
                                           "cluster.pools.code.engine.scheduler")])
def test_a_bad_scheduler_name_fails_in_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'") as info:
        build_run(composed(SMALL + [override]))
    assert "\n" not in str(info.value) and "guaranteed_no_evict, max_utilization, vllm" in str(info.value)


def test_combinations_the_schedulers_do_not_model_fail_at_config_time():
    with pytest.raises(ConfigError, match="config key 'cluster.prefix_cache.enabled': prefix caching runs only"):
        build_run(composed(SMALL + ["engine.scheduler=vllm", "cluster.prefix_cache.enabled=true"]))
    with pytest.raises(ConfigError, match="config key 'engine'.*chunked_context runs only with the guaranteed"):
        build_run(composed(SMALL + ["engine.scheduler=max_utilization", "engine.chunked_context=true"]))


def test_per_pool_scheduler_runs_and_counts_preemptions_in_the_summary(tmp_path):
    from sim.main import run as run_main

    cfg = composed(SMALL + ["outputs.figures=false", "cluster.replan_interval_s=null",
                            "engine.scheduler=max_utilization", "cluster.pools.code.engine.scheduler=vllm",
                            "cluster.pools.code.engine.kv_cache_free_fraction=0.02"])
    spec = build_run(cfg)
    assert {t.name: t.engine.scheduler for t in spec.tasks}["code"] == "vllm"
    run_main(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    engine = summary["engine"]
    for task, entry in engine.items():
        assert isinstance(entry["preemptions"], int)
        for limits in entry["configs"].values():
            assert limits["scheduler"] == ("vllm" if task == "code" else "max_utilization")


@pytest.mark.parametrize("scheduler", ["max_utilization", "vllm"])
def test_in_a_cluster_with_replanning_each_replica_matches_the_reference(scheduler):
    from profiles.profile_set import ProfileSet, default_profile_path
    from sim.cluster import ClusterSettings, simulate
    from sim.metrics import requests_frame, summarize
    from sim.policies import SloEnergyOptimal
    from test_cluster import TASKS, small_trace

    profiles = ProfileSet.load(default_profile_path())
    engine = EngineOverrides(scheduler=scheduler, kv_cache_free_fraction=0.03)
    tasks = tuple(dataclasses.replace(t, engine=engine) for t in TASKS)
    trace = small_trace(seed=3, rate=60.0, duration=300.0, arrival="diurnal")
    result = simulate(trace, tasks, SloEnergyOptimal(0.9), profiles,
                      ClusterSettings(replan_interval_s=60.0, engine_start_s=30.0))
    frame = requests_frame(result)
    assert frame.status.isin(["finished", "rejected"]).all()
    served = frame[frame.instance >= 0]
    preemptions = 0
    for inst in result.instances:
        assert isinstance(inst, PagedInstance)
        rows = served[served.instance == inst.instance_id]
        if rows.empty:
            continue
        ref = replay_paged(inst.step, rows.arrival_s.to_numpy(), rows.input_tokens.to_numpy(),
                           rows.output_tokens.to_numpy())
        assert np.max(np.abs(rows.first_token_s.to_numpy() - ref.first_token_s)) < 1e-9
        assert np.max(np.abs(rows.finish_s.to_numpy() - ref.finish_s)) < 1e-9
        assert inst.busy_j == pytest.approx(ref.busy_j, rel=1e-9) and inst.preemptions == ref.preemptions
        preemptions += ref.preemptions
    assert preemptions > 0
    assert frame.energy_j.sum() == pytest.approx(summarize(result, frame)["busy_energy_j"], rel=1e-9)
