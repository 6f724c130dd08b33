"""Values passed between policies and the cluster: what each task needs and what a plan decides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

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
    """One task's deployment: ``dp`` replicas of one config, and what the profile predicts for it."""

    task: str
    key: ConfigKey
    dp: int
    load_qps: float
    saturation_qps: float
    predicted_energy_per_output_token_j: float
    quality: float

    @property
    def gpus(self) -> int:
        return self.dp * self.key.tp


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
class PlanContext:
    """What a policy may look at when it plans a window."""

    tasks: tuple[TaskSpec, ...]
    load_qps: Mapping[str, float]
    profiles: ProfileSet
    gpu_types: tuple[str, ...]
    now_s: float
