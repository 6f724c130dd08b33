"""One simulation run: a trace replayed over per-task pools under a policy.

Two planes. The control plane is SimPy: a process re-plans every window, and the pools schedule
model-load completions and GPU releases as events (``sim.pool``). The data plane is a plain loop
over the trace's arrays: each arrival goes, in order, to its task's pool, whose router hands it to a
replica; replicas are advanced lazily up to the arrival (``sim.instance``), so no event, process or
object is created per request or per iteration. Control events due at or before an arrival are
processed before it. At the end every request is finished or rejected with a reason, and the totals
are checked.

``simulate`` holds the whole trace and its outcomes in memory; ``sim.stream.simulate_stream`` runs the
same planes over a trace read in chunks, keeping only the requests in flight.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
import simpy

from profiles.catalog import GPUS, MODELS, QUANTS, weight_bytes
from profiles.profile_set import ProfileSet
from profiles.schema import ConfigKey
from sim.deployment import Deployment, FleetView, PlanContext, PoolState, TaskSpec, WindowRates
from sim.instance import MAX_REQUEST_ID, Instance
from sim.planning import CachedProfiles
from sim.policy_api import Policy, check_deployment
from sim.pool import Pool
from sim.prefix_cache import PrefixCacheSettings
from sim.requests import PENDING, RequestTable
from sim.router import RouterSpec, make_router
from traces.trace import Trace


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """How the cluster behaves around the policy (all times in simulated seconds)."""

    gpu_types: tuple[str, ...] = ("a100-40gb", "h100-80gb")
    router: RouterSpec = "least_outstanding"  # a shipped router's name, or a factory of one router per pool
    replan_interval_s: float | None = 300.0  # None: plan once at the start
    load_estimate: str = "oracle"  # "oracle": the window's true rate; "trailing": the last window's
    engine_start_s: float = 20.0  # assumption: process start, engine build/deserialise, warm-up
    load_gbps_per_gpu: float = 2.0  # assumption: checkpoint read from local NVMe per GPU
    max_queue: int | None = None
    drain_limit_s: float = 3600.0
    prefix_cache: PrefixCacheSettings | None = None  # None: no replica caches prefixes (sim.prefix_cache)
    fleet: tuple[tuple[str, int], ...] | None = None  # cluster.fleet: (GPU type, whole GPUs) the plans must fit in

    def __post_init__(self) -> None:
        if self.fleet is not None:
            for gpu, count in self.fleet:
                if gpu not in self.gpu_types:
                    raise ValueError(f"cluster.fleet.{gpu}: not one of cluster.gpu_types {list(self.gpu_types)}")
                if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                    raise ValueError(f"cluster.fleet.{gpu} must be a whole number of GPUs >= 0, got {count!r}")
        if self.load_estimate not in ("oracle", "trailing"):
            raise ValueError(f"cluster.load_estimate='{self.load_estimate}' is not one of ['oracle', 'trailing']")
        if self.replan_interval_s is not None and not (0 < self.replan_interval_s < math.inf):
            raise ValueError(f"cluster.replan_interval_s must be finite and > 0, or null, got {self.replan_interval_s}")
        if not self.gpu_types:
            raise ValueError("cluster.gpu_types must name at least one GPU type")
        for value, name in ((self.engine_start_s, "engine_start_s"), (self.load_gbps_per_gpu, "load_gbps_per_gpu"),
                            (self.drain_limit_s, "drain_limit_s")):
            if not (0 <= value < math.inf) or (name == "load_gbps_per_gpu" and value == 0):
                raise ValueError(f"cluster.{name} must be finite and {'> 0' if name == 'load_gbps_per_gpu' else '>= 0'}"
                                 f", got {value}")
        if self.max_queue is not None and (isinstance(self.max_queue, bool) or int(self.max_queue) != self.max_queue
                                           or self.max_queue < 1):
            raise ValueError(f"cluster.max_queue must be a whole number >= 1 or null, got {self.max_queue}")

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
    prefix_cache: PrefixCacheSettings | None = None


@dataclass
class StreamRunResult:
    """A streamed run: everything ``RunResult`` has but the trace and the per-request table, which
    went to the sink batch by batch (``sim.stream``)."""

    source: str
    tasks: tuple[TaskSpec, ...]
    requests: int
    instances: list[Instance]
    instance_task: dict[int, str]
    gpu_events: list[tuple[float, str, int]]
    deployments: list[tuple[float, Deployment]]
    end_s: float
    instance_quality: dict[int, float]
    reconfigurations: dict[str, int] = field(default_factory=dict)
    peak_in_flight: int = 0  # most requests held in memory at once
    prefix_cache: PrefixCacheSettings | None = None


class ArrivalCounter(Protocol):
    def count(self, task_id: int, lo_s: float, hi_s: float) -> int:
        """Arrivals of one task in ``[lo_s, hi_s)``."""


class TraceCounter:
    """Per-task arrival counts of an in-memory trace."""

    def __init__(self, trace: Trace):
        self._by_task = [trace.arrival_s[trace.task == task_id] for task_id in range(len(trace.task_names))]

    def count(self, task_id: int, lo_s: float, hi_s: float) -> int:
        arrivals = self._by_task[task_id]
        return int(np.searchsorted(arrivals, hi_s, "left") - np.searchsorted(arrivals, lo_s, "left"))

    def bin_counts(self, task_id: int, edges: np.ndarray) -> np.ndarray:
        """Arrivals of one task in each ``[edges[i], edges[i + 1])``."""
        return np.diff(np.searchsorted(self._by_task[task_id], edges, "left"))


def bin_counts(counter: ArrivalCounter, task_id: int, edges: np.ndarray) -> np.ndarray:
    """Per-bin arrival counts: the counter's vectorised ``bin_counts`` when it has one, else one ``count`` per bin."""
    fast = getattr(counter, "bin_counts", None)
    if fast is not None:
        return np.asarray(fast(task_id, edges))
    return np.array([counter.count(task_id, edges[i], edges[i + 1]) for i in range(len(edges) - 1)])


class LoadEstimator:
    """Per-task request rate for a planning window, from the trace (oracle) or the last window."""

    def __init__(self, counter: ArrivalCounter | Trace, window_s: float, mode: str):
        self.counter = TraceCounter(counter) if isinstance(counter, Trace) else counter
        self.window_s = window_s
        self.mode = mode

    def rate_qps(self, task_id: int, start_s: float) -> float:
        if self.mode == "trailing" and start_s >= self.window_s:
            lo, hi = start_s - self.window_s, start_s
        else:
            lo, hi = start_s, start_s + self.window_s
        return float(self.counter.count(task_id, lo, hi)) / self.window_s


def policy_label(policy: object) -> str:
    """How a policy is named in messages: its ``name``, else its class, with the class path."""
    cls = type(policy)
    path = f"{cls.__module__}.{cls.__qualname__}"
    name = getattr(policy, "name", "") or ""
    return f"'{name}' ({path})" if name else path


FEED_BLOCK = 1 << 16  # arrivals routed between two progress reports / ring flushes


class _Run:
    """One run's control plane (SimPy: re-planning, model loads, releases) and data plane (arrivals
    routed in trace order to lazily advanced replicas), shared by the in-memory and streamed paths."""

    def __init__(self, task_names: tuple[str, ...], tasks: tuple[TaskSpec, ...], policy: Policy,
                 profiles: ProfileSet, settings: ClusterSettings, requests, counter: ArrivalCounter,
                 last_arrival_s: float, duration_s: float, source: str):
        by_name = {t.name: t for t in tasks}
        missing = [name for name in task_names if name not in by_name]
        if missing:
            raise ValueError(f"trace {source!r} has task(s) {missing} with no pool; configured tasks: {sorted(by_name)}")
        for gpu in settings.gpu_types:
            if gpu not in GPUS and not any(k.gpu == gpu for k in profiles.configs()):
                raise ValueError(f"cluster.gpu_types: unknown GPU '{gpu}'")
        self.tasks = tasks
        self.task_names = task_names
        self.policy = policy
        self.profiles = profiles if isinstance(profiles, CachedProfiles) else CachedProfiles(profiles)
        self.settings = settings
        self.requests = requests
        self.env = env = simpy.Environment()
        self.last_arrival_s = last_arrival_s
        self.horizon_s = last_arrival_s + settings.drain_limit_s
        self.gpu_events: list[tuple[float, str, int]] = []
        ids = itertools.count()
        self.pools = {
            t.name: Pool(
                env, t, make_router(settings.router), self.profiles, requests, lambda: next(ids),
                settings.model_load_s, lambda task, now, delta: self.gpu_events.append((now, task, delta)),
                settings.max_queue, self.horizon_s, settings.prefix_cache,
            )
            for t in tasks
        }
        self.task_pool = [self.pools[name] for name in task_names]
        self.window_s = settings.replan_interval_s or max(duration_s, 1.0)
        self.estimator = LoadEstimator(counter, self.window_s, settings.load_estimate)
        self.deployments: list[tuple[float, Deployment]] = []
        self.load_history: list[tuple[float, dict[str, float]]] = []
        self.rate_history: list[tuple[float, dict[str, WindowRates]]] = []
        bin_s = getattr(policy, "rate_bin_s", None)  # a number, or a callable TaskSpec -> seconds
        self.rate_bin_s = None
        if bin_s:
            self.rate_bin_s = {t.name: float(bin_s(t) if callable(bin_s) else bin_s) for t in tasks}
        self.counter = self.estimator.counter
        self.fleet_gpus = dict(settings.fleet) if settings.fleet is not None else None
        self._configs = frozenset(self.profiles.configs())
        self._policy_label = policy_label(policy)
        self.now_s = 0.0  # the arrival clock, advanced as SimPy would: now + (arrival - now)
        self.routed = 0

    def start(self) -> None:
        self._plan_now(initial=True)
        if self.settings.replan_interval_s is not None:
            self.env.process(self._replanner())

    def _plan_now(self, initial: bool) -> None:
        env = self.env
        load = {t.name: 0.0 for t in self.tasks}
        for task_id, name in enumerate(self.task_names):
            load[name] = self.estimator.rate_qps(task_id, env.now)
        current = self.deployments[-1][1] if self.deployments else None
        if self.rate_bin_s is not None and env.now > 0:
            self.rate_history.append((env.now, self._past_rates(env.now)))
        ctx = PlanContext(self.tasks, load, self.profiles, self.settings.gpu_types, env.now,
                          load_history=tuple(self.load_history), current=current, fleet=self._fleet(),
                          window_s=self.window_s if self.settings.replan_interval_s is not None else None,
                          rate_history=tuple(self.rate_history), fleet_gpus=self.fleet_gpus)
        deployment = check_deployment(self.policy.plan(ctx), ctx, self._policy_label, self._configs)
        self.load_history.append((env.now, load))
        self.deployments.append((env.now, deployment))
        for plan in deployment.plans:
            self.pools[plan.task].apply(plan, initial=initial)

    def _past_rates(self, end_s: float) -> dict[str, WindowRates]:
        """Each task's arrivals in the window before ``end_s``, in ``rate_bin_s`` bins (only past arrivals)."""
        lo = max(0.0, end_s - self.window_s)
        rates = {t.name: WindowRates(0.0, 0.0, 0.0, 0.0, 0.0, self.rate_bin_s[t.name]) for t in self.tasks}
        for task_id, name in enumerate(self.task_names):
            bin_s = self.rate_bin_s[name]
            n = max(1, int(round((end_s - lo) / bin_s)))
            edges = np.linspace(lo, end_s, n + 1)
            width = (end_s - lo) / n
            counts = bin_counts(self.counter, task_id, edges).astype(float)
            counts.flags.writeable = False
            r = counts / width
            p50, p90, p99 = np.percentile(r, (50, 90, 99))
            rates[name] = WindowRates(float(r.mean()), float(p50), float(p90), float(p99), float(r.max()), bin_s, counts)
        return rates

    def _fleet(self) -> FleetView:
        """Every pool as it stands now (replicas counted, not advanced)."""
        pools = {}
        for name, pool in self.pools.items():
            plan = pool.plan
            serving = loading = draining = gpus = 0
            for replica in pool.replicas:
                gpus += replica.gpus
                if replica.serving:
                    serving += 1
                elif replica.accepting and not replica.ready:
                    loading += 1
                else:
                    draining += 1
            pools[name] = PoolState(name, plan.key if plan else None, plan.dp if plan else 0, serving, loading,
                                    draining, gpus)
        return FleetView(self.settings.gpu_types, pools)

    def _replanner(self):
        env = self.env
        while True:
            yield env.timeout(self.window_s)
            if env.now >= self.last_arrival_s:
                return
            self._plan_now(initial=False)

    def feed(self, first_rid: int, arrival_s: list[float], task: list[int]) -> None:
        """Route requests ``first_rid, first_rid + 1, ...`` in arrival order; control events due
        at or before an arrival happen first."""
        if first_rid + len(arrival_s) - 1 > MAX_REQUEST_ID:
            raise ValueError(f"more than {MAX_REQUEST_ID + 1} requests in one run")
        env = self.env
        pools = self.task_pool
        now = self.now_s
        control_s = env.peek()
        rid = first_rid
        for a, k in zip(arrival_s, task):
            delay = a - now
            if delay > 0:
                now = now + delay
            if now >= control_s:
                while env.peek() <= now:
                    env.step()
                control_s = env.peek()
            pools[k].route(rid, now)
            rid += 1
        self.now_s = now
        self.routed = rid

    def finish(self) -> None:
        """Run the control plane to the horizon and every replica up to it."""
        if self.horizon_s > self.env.now:  # with drain_limit_s=0 the control plane may already stand at the horizon
            self.env.run(until=self.horizon_s)
        for pool in self.pools.values():
            for inst in pool.all_instances:
                inst.advance(self.horizon_s)

    def outcome(self) -> dict:
        instances = [inst for pool in self.pools.values() for inst in pool.all_instances]
        instance_task = {inst.instance_id: name for name, pool in self.pools.items() for inst in pool.all_instances}
        instance_quality = {}
        for name, pool in self.pools.items():
            for inst in pool.all_instances:
                key = pool.key_of[inst.instance_id]
                instance_quality[inst.instance_id] = self.profiles.quality_score(key.model, key.quant, name)
        return dict(instances=instances, instance_task=instance_task, gpu_events=self.gpu_events,
                    deployments=self.deployments, instance_quality=instance_quality,
                    reconfigurations={name: pool.reconfigurations for name, pool in self.pools.items()},
                    prefix_cache=self.settings.prefix_cache)


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
    requests = RequestTable(trace)
    last_arrival = float(trace.arrival_s[-1]) if len(trace) else 0.0
    run = _Run(trace.task_names, tasks, policy, profiles, settings, requests, TraceCounter(trace),
               last_arrival, trace.duration_s, trace.source)
    run.start()
    for lo in range(0, requests.n, FEED_BLOCK):
        hi = min(lo + FEED_BLOCK, requests.n)
        run.feed(lo, requests.arrival_s[lo:hi], requests.task[lo:hi])
        if progress is not None:
            progress(min(run.now_s, last_arrival))
    run.finish()

    finished_end = max((f for f in requests.finish_s if f == f), default=0.0)
    end_s = max(last_arrival, finished_end)
    for rid in range(requests.n):
        if requests.status[rid] == PENDING:
            requests.reject(rid, "unfinished_at_end", run.env.now)
            end_s = run.env.now
    counts = requests.counts()
    if counts["finished"] + counts["rejected"] != requests.n or counts["pending"]:
        raise AssertionError(f"request conservation broken: {counts} for {requests.n} requests")
    return RunResult(trace=trace, tasks=tasks, requests=requests, end_s=end_s, **run.outcome())


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

