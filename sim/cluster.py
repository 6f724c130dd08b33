"""One simulation run: a trace replayed over per-task pools under a policy.

SimPy processes: one feeds arrivals in trace order to their task's pool; one re-plans every window;
each replica runs its own engine loop (``sim.instance``). At the end every request is finished or
rejected with a reason, and the totals are checked.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import simpy

from profiles.catalog import GPUS, MODELS, QUANTS, weight_bytes
from profiles.profile_set import ProfileSet
from profiles.schema import ConfigKey
from sim.deployment import Deployment, PlanContext, TaskSpec
from sim.instance import Instance
from sim.policies import Policy
from sim.pool import Pool
from sim.requests import PENDING, RequestTable
from sim.router import make_router
from traces.trace import Trace


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """How the cluster behaves around the policy (all times in simulated seconds)."""

    gpu_types: tuple[str, ...] = ("a100-40gb", "h100-80gb")
    router: str = "least_outstanding"
    replan_interval_s: float | None = 300.0  # None: plan once at the start
    load_estimate: str = "oracle"  # "oracle": the window's true rate; "trailing": the last window's
    engine_start_s: float = 20.0  # assumption: process start, engine build/deserialise, warm-up
    load_gbps_per_gpu: float = 2.0  # assumption: checkpoint read from local NVMe per GPU
    max_queue: int | None = None
    drain_limit_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.load_estimate not in ("oracle", "trailing"):
            raise ValueError(f"cluster.load_estimate='{self.load_estimate}' is not one of ['oracle', 'trailing']")
        if self.replan_interval_s is not None and self.replan_interval_s <= 0:
            raise ValueError(f"cluster.replan_interval_s must be > 0 or null, got {self.replan_interval_s}")
        if not self.gpu_types:
            raise ValueError("cluster.gpu_types must name at least one GPU type")
        for value, name in ((self.engine_start_s, "engine_start_s"), (self.load_gbps_per_gpu, "load_gbps_per_gpu")):
            if value < 0 or (name == "load_gbps_per_gpu" and value == 0):
                raise ValueError(f"cluster.{name} must be positive, got {value}")

    def model_load_s(self, key: ConfigKey) -> float:
        """Reconfiguration cost: engine start plus reading the weight shard of one GPU."""
        if key.model in MODELS and key.quant in QUANTS:
            shard_gb = weight_bytes(MODELS[key.model], QUANTS[key.quant]) / key.tp / 1e9
        else:
            shard_gb = 0.0
        return self.engine_start_s + shard_gb / self.load_gbps_per_gpu


@dataclass
class RunResult:
    trace: Trace
    tasks: tuple[TaskSpec, ...]
    requests: RequestTable
    instances: list[Instance]
    instance_task: dict[int, str]
    gpu_events: list[tuple[float, str, int]]  # (time, task, +/- GPUs)
    deployments: list[tuple[float, Deployment]]
    end_s: float
    instance_quality: dict[int, float]  # quality score of the config an instance serves, for its task
    reconfigurations: dict[str, int] = field(default_factory=dict)


class LoadEstimator:
    """Per-task request rate for a planning window, from the trace (oracle) or the last window."""

    def __init__(self, trace: Trace, window_s: float, mode: str):
        self.trace = trace
        self.window_s = window_s
        self.mode = mode

    def rate_qps(self, task_id: int, start_s: float) -> float:
        if self.mode == "trailing" and start_s >= self.window_s:
            lo, hi = start_s - self.window_s, start_s
        else:
            lo, hi = start_s, start_s + self.window_s
        arrivals = self.trace.arrival_s[self.trace.task == task_id]
        count = np.searchsorted(arrivals, hi, "left") - np.searchsorted(arrivals, lo, "left")
        return float(count) / self.window_s


def simulate(
    trace: Trace,
    tasks: Sequence[TaskSpec],
    policy: Policy,
    profiles: ProfileSet,
    settings: ClusterSettings = ClusterSettings(),
    progress: Callable[[float], None] | None = None,
) -> RunResult:
    """Replay ``trace`` and return everything measured; raises if any request is unaccounted for."""
    tasks = tuple(tasks)
    by_name = {t.name: t for t in tasks}
    missing = [name for name in trace.task_names if name not in by_name]
    if missing:
        raise ValueError(f"trace {trace.source!r} has task(s) {missing} with no pool; configured tasks: {sorted(by_name)}")
    for gpu in settings.gpu_types:
        if gpu not in GPUS and not any(k.gpu == gpu for k in profiles.configs()):
            raise ValueError(f"cluster.gpu_types: unknown GPU '{gpu}'")

    env = simpy.Environment()
    requests = RequestTable(trace)
    gpu_events: list[tuple[float, str, int]] = []
    ids = itertools.count()
    pools = {
        t.name: Pool(
            env, t, make_router(settings.router), profiles, requests, lambda: next(ids), settings.model_load_s,
            lambda task, now, delta: gpu_events.append((now, task, delta)), settings.max_queue,
        )
        for t in tasks
    }
    task_pool = [pools[name] for name in trace.task_names]
    window = settings.replan_interval_s or max(trace.duration_s, 1.0)
    estimator = LoadEstimator(trace, window, settings.load_estimate)
    deployments: list[tuple[float, Deployment]] = []

    def plan_now(initial: bool) -> None:
        load = {t.name: 0.0 for t in tasks}
        for task_id, name in enumerate(trace.task_names):
            load[name] = estimator.rate_qps(task_id, env.now)
        deployment = policy.plan(PlanContext(tasks, load, profiles, settings.gpu_types, env.now))
        deployments.append((env.now, deployment))
        for plan in deployment.plans:
            pools[plan.task].apply(plan, initial=initial)

    def arrivals():
        arrival_s = requests.arrival_s
        task = requests.task
        for rid in range(requests.n):
            delay = arrival_s[rid] - env.now
            if delay > 0:
                yield env.timeout(delay)
            task_pool[task[rid]].route(rid)

    last_arrival = float(trace.arrival_s[-1]) if len(trace) else 0.0

    def replanner():
        while True:
            yield env.timeout(window)
            if env.now >= last_arrival:
                return
            plan_now(initial=False)

    def reporter():
        step = max(last_arrival / 100.0, 1.0)
        while env.now < last_arrival:
            yield env.timeout(step)
            progress(min(env.now, last_arrival))

    plan_now(initial=True)
    env.process(arrivals())
    if settings.replan_interval_s is not None:
        env.process(replanner())
    if progress is not None:
        env.process(reporter())
    env.run(until=last_arrival + settings.drain_limit_s)

    finished_end = max((f for f in requests.finish_s if f == f), default=0.0)
    end_s = max(last_arrival, finished_end)
    for rid in range(requests.n):
        if requests.status[rid] == PENDING:
            requests.reject(rid, "unfinished_at_end", env.now)
            end_s = env.now
    counts = requests.counts()
    if counts["finished"] + counts["rejected"] != requests.n or counts["pending"]:
        raise AssertionError(f"request conservation broken: {counts} for {requests.n} requests")

    instances = [inst for pool in pools.values() for inst in pool.all_instances]
    instance_task = {inst.instance_id: name for name, pool in pools.items() for inst in pool.all_instances}
    instance_quality = {}
    for name, pool in pools.items():
        for inst in pool.all_instances:
            key = pool.key_of[inst.instance_id]
            instance_quality[inst.instance_id] = profiles.quality_score(key.model, key.quant, name)
    return RunResult(
        trace, tasks, requests, instances, instance_task, gpu_events, deployments, end_s, instance_quality,
        {name: pool.reconfigurations for name, pool in pools.items()},
    )


def gpus_over_time(result: RunResult, task: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Step function (times, GPUs allocated from that time on) for one task or the whole cluster."""
    events = sorted((t, d) for t, name, d in result.gpu_events if task is None or name == task)
    if not events:
        return np.array([0.0, result.end_s]), np.array([0, 0])
    times = np.array([t for t, _ in events] + [result.end_s])
    counts = np.cumsum([d for _, d in events] + [0])
    return times, counts


def time_average(times: np.ndarray, values: np.ndarray, end_s: float) -> float:
    if end_s <= 0:
        return float(values[-1]) if len(values) else 0.0
    t = np.clip(times, 0.0, end_s)
    widths = np.diff(np.append(t, end_s))
    return float(np.sum(widths * values) / end_s) if len(t) else 0.0

