"""Values passed between policies and the cluster: what each task needs and what a plan decides."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from profiles.engine_settings import EngineOverrides, EngineSettings
from profiles.profile_set import LatencySlo, ProfileSet
from profiles.schema import ConfigKey


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A request type with its own pool: the model it is served by and the SLOs it must meet."""

    name: str
    model: str
    workload: str  # the profile workload whose curves describe this task's lengths
    slo: LatencySlo
    quality_min: float
    # The engine settings the pool's replicas run under (profiles.engine_settings): None runs the step models as
    # the profile set states them. Policies still plan from the profile's curves (sim.planning).
    engine: EngineSettings | EngineOverrides | None = None


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """One task's deployment: ``dp`` replicas of one config, and what the profile predicts for it.

    Only ``task``, ``key`` and ``dp`` decide what runs; the predictions are reported in ``deployments.csv``
    (NaN: the policy did not say)."""

    task: str
    key: ConfigKey
    dp: int
    load_qps: float = math.nan
    saturation_qps: float = math.nan
    predicted_energy_per_output_token_j: float = math.nan
    quality: float = math.nan
    # Further (config, replicas) groups of the same model in the same pool: a pool mixing GPU types (or configs).
    # Empty for a one-config pool. Route such a pool with router=weighted_least_outstanding (capacity-weighted).
    mix: tuple[tuple[ConfigKey, int], ...] = ()

    @property
    def groups(self) -> tuple[tuple[ConfigKey, int], ...]:
        """Every (config, replicas) group of the pool: (key, dp) first, then ``mix``."""
        return ((self.key, self.dp),) + tuple(self.mix)

    @property
    def label(self) -> str:
        return "+".join(f"{n}x{k.label}" for k, n in self.groups) if self.mix else self.key.label

    @property
    def gpus(self) -> int:
        return self.dp * self.key.tp + sum(n * k.tp for k, n in self.mix)


@dataclass(frozen=True, slots=True)
class Deployment:
    plans: tuple[PoolPlan, ...]

    def for_task(self, task: str) -> PoolPlan:
        for plan in self.plans:
            if plan.task == task:
                return plan
        raise KeyError(f"deployment has no plan for task '{task}'")

    @property
    def gpus(self) -> int:
        return sum(p.gpus for p in self.plans)


@dataclass(frozen=True, slots=True)
class PoolState:
    """One task's pool as it stands when a policy is asked to plan (replicas counted at ``PlanContext.now_s``)."""

    task: str
    key: ConfigKey | None  # the config of the current plan (None before the first plan)
    dp: int  # replicas the current plan asks for (0 before the first plan)
    serving: int  # replicas taking requests now
    loading: int  # replicas still loading their model (of the current plan's config)
    draining: int  # replicas no longer taking requests, finishing what they hold
    gpus: int  # GPUs held by every replica not yet released (serving, loading and draining)


@dataclass(frozen=True, slots=True)
class FleetView:
    """The fleet a policy plans for: the GPU types it may use and every pool's state."""

    gpu_types: tuple[str, ...]
    pools: Mapping[str, PoolState]

    @property
    def gpus(self) -> int:
        """GPUs held now, all pools together."""
        return sum(p.gpus for p in self.pools.values())


@dataclass(frozen=True, slots=True)
class WindowRates:
    """One task's arrivals over one past window, counted in ``bin_s``-long bins (req/s per bin): the mean and the
    bins' P50 / P90 / P99 / max, and the bins' arrival counts themselves (``counts``, oldest bin first, read-only), for
    policies that weigh each bin by the requests in it. Only arrivals before the plan's time are counted (no
    look-ahead)."""

    mean_qps: float
    p50_qps: float
    p90_qps: float
    p99_qps: float
    max_qps: float
    bin_s: float
    counts: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class PlanContext:
    """What a policy may look at when it plans a window (the interface is documented in ``sim.policy_api``)."""

    tasks: tuple[TaskSpec, ...]
    load_qps: Mapping[str, float]
    profiles: ProfileSet
    gpu_types: tuple[str, ...]
    now_s: float
    # Earlier windows' load estimates, oldest first: (time the window was planned, {task: req/s}); the current
    # window's estimate is ``load_qps`` and is not in it.
    load_history: tuple[tuple[float, Mapping[str, float]], ...] = ()
    current: Deployment | None = None  # the plan in force (None at the first plan)
    fleet: FleetView | None = None  # pools as they stand now (None when planning outside a run)
    window_s: float | None = None  # seconds until the next re-plan (None: this plan holds to the end)
    # Per past window, short-term peak rates from the arrivals seen so far, oldest first: (window end = time it was
    # planned at, {task: WindowRates of [end - window_s, end)}). Filled only for a policy declaring ``rate_bin_s``
    # (seconds per bin); empty otherwise, so policies that do not ask pay nothing.
    rate_history: tuple[tuple[float, Mapping[str, WindowRates]], ...] = ()
    # Whole GPUs per type the run may hold (cluster.fleet); None: unbounded.
    fleet_gpus: Mapping[str, int] | None = None
