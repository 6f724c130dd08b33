"""FewestGpus: per task, the config that needs the fewest GPUs, sized for the peak of recent load.

It uses only the documented interface (``sim.policy_api``) and the planning helpers of ``sim.planning``:

* candidates: every profiled config of the task's model on the cluster's GPUs that meets the task's quality
  floor and has a saturation QPS > 0 under its latency SLO;
* the load it plans for: the highest of this window's estimate and the last ``peak_windows - 1`` windows'
  (``ctx.load_history``), so a pool does not shrink for one quiet window and grow back the next;
* DP = ceil(load / (saturation * headroom)); the fewest GPUs (DP x TP) win, then the least energy per token.
"""

from __future__ import annotations

import math

from sim.planning import NoFeasibleConfig, replicas_for, task_configs
from sim.policy_api import PerTaskPolicy, PlanContext, PoolPlan, TaskSpec


class FewestGpus(PerTaskPolicy):
    name = "fewest_gpus"  # the run's label (outputs/run/..._fewest_gpus)
    # checked when the config is read, before __init__ runs: (low, low included, high, whole number, null allowed)
    param_ranges = {"headroom": (0, False, 1, False, False), "peak_windows": (1, True, None, True, False)}

    def __init__(self, headroom: float = 0.9, peak_windows: int = 1):
        self.headroom = float(headroom)
        self.peak_windows = int(peak_windows)

    def planned_load(self, ctx: PlanContext, task: str) -> float:
        if self.peak_windows == 1:
            return ctx.load_qps[task]
        recent = ctx.load_history[-(self.peak_windows - 1):]  # (time_s, {task: req/s}), oldest first
        return max([ctx.load_qps[task], *(load.get(task, 0.0) for _, load in recent)])

    def plan_task(self, ctx: PlanContext, task: TaskSpec) -> PoolPlan:
        load = self.planned_load(ctx, task.name)
        best = None
        for key in task_configs(ctx.profiles, task, ctx.gpu_types):
            quality = ctx.profiles.quality_score(key.model, key.quant, task.name)
            if quality < task.quality_min:
                continue
            sat = ctx.profiles.saturation_qps(key, task.workload, task.slo)
            if sat <= 0:
                continue
            dp = replicas_for(load, sat, self.headroom)
            energy = ctx.profiles.energy_per_token_j(key, task.workload, load / dp)
            rank = (dp * key.tp, energy if math.isfinite(energy) else math.inf, key.label)
            if best is None or rank < best[0]:
                best = (rank, PoolPlan(task.name, key, dp, load, sat, energy, quality))
        if best is None:
            raise NoFeasibleConfig(f"policy {self.name}: task '{task.name}': no config of {task.model} meets its "
                                   f"latency SLO and quality floor {task.quality_min:g}")
        return best[1]
