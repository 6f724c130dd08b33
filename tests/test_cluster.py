"""Cluster runs on the shipped profiles: conservation, determinism, reconfiguration, routing."""

from __future__ import annotations

import numpy as np
import pytest

from profiles.profile_set import LatencySlo, ProfileSet, default_profile_path
from sim.cluster import ClusterSettings, gpus_over_time, simulate, time_average
from sim.deployment import TaskSpec
from sim.metrics import requests_frame, summarize
from sim.policies import Fp16Only, SloEnergyOptimal
from sim.requests import FINISHED, REJECTED
from traces.case_study import CaseStudyTraceSpec, build_case_study_trace

TASKS = (
    TaskSpec("chat-s", "llama2-13b", "sharegpt", LatencySlo(1.0, 0.2), 55.0),
    TaskSpec("chat-r", "llama2-70b", "sharegpt", LatencySlo(3.0, 0.2), 50.0),
    TaskSpec("code", "codellama-34b", "humaneval", LatencySlo(0.15, 0.2), 35.0),
    TaskSpec("summarization", "llama2-13b", "newsqa", LatencySlo(5.0, 0.2), 16.0),
)


@pytest.fixture(scope="module")
def profiles() -> ProfileSet:
    return ProfileSet.load(default_profile_path())


def small_trace(seed=0, rate=40.0, duration=120.0, arrival="poisson"):
    return build_case_study_trace(CaseStudyTraceSpec(total_rate_qps=rate, duration_s=duration, seed=seed, arrival=arrival))


def test_every_request_is_finished_or_rejected_with_reason(profiles):
    trace = small_trace()
    settings = ClusterSettings(max_queue=3)  # a tiny queue forces some rejections
    result = simulate(trace, TASKS, Fp16Only(), profiles, settings)
    status = np.asarray(result.requests.status)
    assert np.all((status == FINISHED) | (status == REJECTED))
    frame = requests_frame(result)
    rejected = frame[frame.status == "rejected"]
    assert len(rejected) > 0 and (rejected.reject_reason == "queue_full").all()
    summary = summarize(result, frame)
    assert summary["finished"] + summary["rejected"] == summary["requests"] == len(trace)
    # Energy: per-request shares add up to the busy energy of all replicas.
    assert frame.energy_j.sum() == pytest.approx(summary["busy_energy_j"], rel=1e-9)
    assert summary["energy_j"] == pytest.approx(summary["busy_energy_j"] + summary["idle_energy_j"])


def test_same_seed_same_results_different_seed_different(profiles):
    runs = [requests_frame(simulate(small_trace(seed), TASKS, Fp16Only(), profiles)) for seed in (3, 3, 4)]
    assert runs[0].equals(runs[1])
    assert not runs[0]["finish_s"].equals(runs[2]["finish_s"])


def test_replanning_reconfigures_and_pays_the_load_delay(profiles):
    trace = small_trace(rate=60.0, duration=900.0, arrival="diurnal")
    settings = ClusterSettings(replan_interval_s=60.0, engine_start_s=30.0)
    result = simulate(trace, TASKS, SloEnergyOptimal(0.9), profiles, settings)
    assert sum(result.reconfigurations.values()) > 0
    times, gpus = gpus_over_time(result)
    assert len(set(gpus.tolist())) > 1  # the cluster size followed the load
    ready = {inst.instance_id: inst.ready_s for inst in result.instances}
    frame = requests_frame(result)
    served = frame[frame.status == "finished"]
    first = served.first_token_s.to_numpy()
    ready_at = np.array([ready[i] for i in served.instance])
    assert np.all(first >= ready_at)  # nothing is served by a replica still loading its model
    late = [inst for inst in result.instances if inst.alloc_s > 0]
    assert late and all(inst.ready_s - inst.alloc_s >= 30.0 for inst in late)
    summary = summarize(result, frame)
    assert summary["finished"] + summary["rejected"] == len(trace)
    assert summary["avg_gpus"] == pytest.approx(time_average(times, gpus, result.end_s))


@pytest.mark.parametrize("router", ["round_robin", "least_outstanding"])
def test_routers_spread_load_over_replicas(profiles, router):
    trace = small_trace(rate=200.0, duration=60.0)
    result = simulate(trace, TASKS, Fp16Only(), profiles, ClusterSettings(router=router, replan_interval_s=None))
    frame = requests_frame(result)
    plan = max(result.deployments[0][1].plans, key=lambda p: p.dp)
    assert plan.dp >= 2
    counts = frame[frame.task == plan.task].groupby("instance").size()
    assert len(counts) == plan.dp
    assert counts.min() > 0.5 * counts.mean()


def test_unknown_task_in_trace_is_named(profiles):
    with pytest.raises(ValueError, match="summarization"):
        simulate(small_trace(), TASKS[:3], Fp16Only(), profiles)


def test_cluster_settings_are_validated():
    with pytest.raises(ValueError, match="cluster.load_estimate"):
        ClusterSettings(load_estimate="psychic")
    with pytest.raises(ValueError, match="cluster.replan_interval_s"):
        ClusterSettings(replan_interval_s=-5.0)
