"""Deployment policies: the paper's three (§8.3) and ours.

A policy plans each task's pool from the profiles and the load it is told to plan for; the cluster
calls it at the start and then every re-plan window, and pays the reconfiguration cost when the plan
changes.

* FP16-Only: FP16 models; TP and DP to meet the SLOs; the energy-optimal (GPU, DP, TP).
* Quality-First: the quantization method with the highest quality for the task (FP16 is not a
  quantization method, so it is not a candidate); then TP and DP to meet the SLOs; energy-optimal
  (GPU, DP, TP).
* Energy-First: the (quant, GPU, TP) with the lowest energy per token at its saturation point;
  then DP = ceil(x / x_s). Quality is not looked at.
* SLO-Energy-Optimal (ours): among every (quant, GPU, TP) whose quality meets the task's floor, the
  energy-optimal (GPU, DP, TP) with DP sized to keep replicas at ``headroom`` of saturation, so
  Poisson bursts do not push the P90 over the SLO. Re-planned every window, it follows the load.
"""

from __future__ import annotations

from sim.deployment import PlanContext, PoolPlan, TaskSpec
from sim.policy_api import PerTaskPolicy, Policy
from sim.planning import (
    NoFeasibleConfig,
    candidate,
    energy_at_saturation,
    energy_optimal,
    latency_infeasible,
    no_config_error,
    quality_infeasible,
    replicas_for,
    task_configs,
)


class Fp16Only(PerTaskPolicy):
    name = "fp16_only"

    def plan_task(self, ctx: PlanContext, task: TaskSpec) -> PoolPlan:
        load = ctx.load_qps[task.name]
        keys = task_configs(ctx.profiles, task, ctx.gpu_types, quants=("fp16",))
        if not keys:
            raise no_config_error(self.name, task, ctx.gpu_types, "FP16 config")
        cands = [c for c in (candidate(ctx.profiles, task, k, load) for k in keys) if c is not None]
        if not cands:
            raise latency_infeasible(self.name, ctx.profiles, task, keys, "FP16 config")
        return energy_optimal(cands).plan(task.name, load)


class QualityFirst(PerTaskPolicy):
    name = "quality_first"

    def plan_task(self, ctx: PlanContext, task: TaskSpec) -> PoolPlan:
        load = ctx.load_qps[task.name]
        keys = [k for k in task_configs(ctx.profiles, task, ctx.gpu_types) if k.quant != "fp16"]
        if not keys:
            raise no_config_error(self.name, task, ctx.gpu_types, "quantized config")
        cands = [c for c in (candidate(ctx.profiles, task, k, load) for k in keys) if c is not None]
        if not cands:
            raise latency_infeasible(self.name, ctx.profiles, task, keys, "quantized config")
        best_quality = max(c.quality for c in cands)
        top = [c for c in cands if c.quality == best_quality]
        return energy_optimal(top).plan(task.name, load)


class EnergyFirst(PerTaskPolicy):
    name = "energy_first"

    def plan_task(self, ctx: PlanContext, task: TaskSpec) -> PoolPlan:
        load = ctx.load_qps[task.name]
        keys = task_configs(ctx.profiles, task, ctx.gpu_types)
        if not keys:
            raise no_config_error(self.name, task, ctx.gpu_types)
        scored = [(energy_at_saturation(ctx.profiles, task, k), k.tp, k.label, k) for k in keys]
        scored = [s for s in scored if s[0] != float("inf")]
        if not scored:
            raise latency_infeasible(self.name, ctx.profiles, task, keys)
        best = min(scored)[3]
        cand = candidate(ctx.profiles, task, best, load)
        assert cand is not None
        return cand.plan(task.name, load)


class SloEnergyOptimal(PerTaskPolicy):
    name = "slo_energy_optimal"
    param_ranges = {"headroom": (0, False, 1, False, True)}  # checked when the config is read

    def __init__(self, headroom: float | None = 0.9):
        headroom = 0.9 if headroom is None else headroom
        if not (0 < headroom <= 1):
            raise ValueError(f"policy.headroom must be in (0, 1], got {headroom}")
        self.headroom = headroom

    def plan_task(self, ctx: PlanContext, task: TaskSpec) -> PoolPlan:
        load = ctx.load_qps[task.name]
        return energy_optimal(slo_quality_candidates(self.name, ctx, task, load, self.headroom)).plan(task.name, load)


def slo_quality_candidates(policy: str, ctx: PlanContext, task: TaskSpec, load_qps: float, headroom: float) -> list:
    """Every config that meets the task's quality floor and latency SLO at ``load_qps``, sized with ``headroom``;
    a task with none stops the run with the reason (no config, quality, or latency)."""
    every = task_configs(ctx.profiles, task, ctx.gpu_types)
    if not every:
        raise no_config_error(policy, task, ctx.gpu_types)
    keys = [k for k in every if ctx.profiles.quality_score(k.model, k.quant, task.name) >= task.quality_min]
    if not keys:
        raise quality_infeasible(policy, ctx.profiles, task, every)
    cands = [c for c in (candidate(ctx.profiles, task, k, load_qps, headroom) for k in keys) if c is not None]
    if not cands:
        raise latency_infeasible(policy, ctx.profiles, task, keys, "config meeting the quality floor")
    return cands


POLICIES = {cls.name: cls for cls in (Fp16Only, QualityFirst, EnergyFirst, SloEnergyOptimal)}


def make_policy(name: str, headroom: float | None = None) -> Policy:
    """The named policy; ``headroom`` (None: the policy's default) only for slo_energy_optimal, an error elsewhere."""
    if name not in POLICIES:
        raise ValueError(f"policy.name='{name}' is not one of {sorted(POLICIES)}")
    if name == SloEnergyOptimal.name:
        return SloEnergyOptimal(headroom)
    if headroom is not None:
        raise ValueError(f"policy.headroom: policy '{name}' does not use it (only {SloEnergyOptimal.name} does), "
                         f"got {headroom!r}")
    return POLICIES[name]()


__all__ = ["Policy", "PerTaskPolicy", "POLICIES", "make_policy", "replicas_for"]
