"""A plan pinned by hand (``policy=fixed``): each pool runs the config and replica count the configuration names.

What-if studies need it: a capacity planner checks a plan they drew up, and the burst frontier
(``benchmarks/burst_frontier.py``) measures what every replica count of a pool attains on a trace. The plan never
changes, so it pays no reconfiguration. ``pools: {task: {config: 'gpu/model/quant/tpN', dp: N}}``; every task of
the run must be named. The planned load, saturation and energy are filled from the profiles for
``deployments.csv``; nothing is checked against the SLO (the run's attainment is the answer).
"""

from __future__ import annotations

import math
from typing import Mapping

from profiles.schema import ConfigKey
from sim.deployment import PlanContext, PoolPlan, TaskSpec
from sim.policy_api import PerTaskPolicy, PlanError


class FixedPlan(PerTaskPolicy):
    name = "fixed"

    def __init__(self, pools: Mapping[str, Mapping] | None = None):
        if not isinstance(pools, Mapping) or not pools:
            raise ValueError("policy.pools must map each task to {config: 'gpu/model/quant/tpN', dp: N}, "
                             f"got {pools!r}")
        self.pools: dict[str, tuple[ConfigKey, int]] = {}
        for task, entry in pools.items():
            where = f"policy.pools.{task}"
            if not isinstance(entry, Mapping) or set(entry) != {"config", "dp"}:
                raise ValueError(f"{where} must be {{config: 'gpu/model/quant/tpN', dp: N}}, got {entry!r}")
            try:
                key = ConfigKey.parse(str(entry["config"]))
            except ValueError as exc:
                raise ValueError(f"{where}.config: {exc}") from None
            dp = entry["dp"]
            if isinstance(dp, bool) or not isinstance(dp, int) or dp < 0:
                raise ValueError(f"{where}.dp must be a whole number >= 0, got {dp!r}")
            self.pools[str(task)] = (key, dp)

    def plan_task(self, ctx: PlanContext, task: TaskSpec) -> PoolPlan:
        if task.name not in self.pools:
            raise PlanError(f"policy.pools names no plan for task '{task.name}' (named: {sorted(self.pools)})")
        key, dp = self.pools[task.name]
        if key.model != task.model:
            raise PlanError(f"policy.pools.{task.name}.config: {key.label} serves {key.model}, but task "
                            f"'{task.name}' runs {task.model}")
        if key not in ctx.profiles.configs():
            raise PlanError(f"policy.pools.{task.name}.config: {key.label} is not in the profile set "
                            f"{ctx.profiles.path}")
        load = ctx.load_qps[task.name]
        sat = energy = math.nan  # reported in deployments.csv only; unknown past the profile's curve
        if ctx.profiles.has_curve(key, task.workload):
            sat = ctx.profiles.saturation_qps(key, task.workload, task.slo)
            last_qps = float(ctx.profiles.curve(key, task.workload)["qps"].iloc[-1])
            if dp and load / dp <= last_qps:
                energy = ctx.profiles.energy_per_token_j(key, task.workload, load / dp)
        return PoolPlan(task.name, key, dp, load, sat, energy, ctx.profiles.quality_score(key.model, key.quant, task.name))


__all__ = ["FixedPlan"]
