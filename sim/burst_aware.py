"""Burst-aware sizing (issue 14, part 4): replicas for the traffic's short-term peaks, with hysteresis.

Per task, the load a window is sized for is the highest ``quantile`` (``p90``, ``p99`` or ``max``) of the per-bin
arrival rates (``rate_bin_s`` bins, 10 s) over the last ``lookback`` windows, times ``margin``
(``PlanContext.rate_history``: counted from arrivals before the plan's time only: no look-ahead). The first plan,
before any arrival was seen, uses the cluster's load estimate times ``first_peak_to_mean`` (the only time
``ctx.load_qps`` is read). Among configs meeting the quality floor, the energy-optimal one with
DP = ceil(peak / (x_s · headroom)) is chosen (as SLO-Energy-Optimal, but for the peak, not the mean).

Hysteresis, so noise does not reconfigure:

* up at once: when the current pool's capacity (DP · x_s · headroom) is below the peak, the task re-plans now;
* down late: a smaller pool is adopted only after ``down_after`` windows in a row that all wanted less, and then
  sized for the highest peak of those windows;
* no flip between near-equals: the current config is kept (only its DP follows the load) while its predicted
  energy per token is within ``switch_gain`` (relative) of the best config's, so two configs of equal merit do not
  alternate and pay a model load each time.
"""

from __future__ import annotations

import math

from sim.deployment import PlanContext, PoolPlan, TaskSpec
from sim.planning import candidate, energy_optimal
from sim.policies import slo_quality_candidates
from sim.policy_api import PerTaskPolicy

QUANTILES = ("p50", "p90", "p99", "max")


def ttft_scaled_bin_s(task: TaskSpec, bin_s: float | None, bin_ttft_multiple: float) -> float:
    """Bin width of a task's rate history: ``bin_s``, else ``bin_ttft_multiple`` x its TTFT SLO, clamped to [1, 10] s:
    bursts matter on the time scale of the latency target."""
    if bin_s is not None:
        return float(bin_s)
    return min(10.0, max(1.0, bin_ttft_multiple * task.slo.ttft_s))


class BurstAware(PerTaskPolicy):
    name = "burst_aware"
    # rate_bin_s (method below) asks the cluster for PlanContext.rate_history, in per-task bins
    param_ranges = {
        "headroom": (0, False, 1, False, False),
        "margin": (0, False, None, False, False),
        "lookback": (1, True, None, True, False),
        "down_after": (0, True, None, True, False),
        "switch_gain": (0, True, None, False, False),
        "first_peak_to_mean": (1, True, None, False, False),
        "bin_s": (0, False, None, False, True),
        "bin_ttft_multiple": (0, False, None, False, False),
    }

    def __init__(self, quantile: str = "p99", lookback: int = 3, margin: float = 1.0, headroom: float = 1.0,
                 down_after: int = 3, switch_gain: float = 0.05, first_peak_to_mean: float = 1.5,
                 bin_s: float | None = None, bin_ttft_multiple: float = 5.0):
        if bin_s is not None and not (0 < bin_s < math.inf):
            raise ValueError(f"policy.bin_s must be finite and > 0 or null, got {bin_s}")
        self.bin_s = bin_s
        self.bin_ttft_multiple = float(bin_ttft_multiple)
        if quantile not in QUANTILES:
            raise ValueError(f"policy.quantile must be one of {list(QUANTILES)}, got {quantile!r}")
        if not (0 < headroom <= 1):
            raise ValueError(f"policy.headroom must be in (0, 1], got {headroom}")
        self.quantile = quantile
        self.lookback = int(lookback)
        self.margin = float(margin)
        self.headroom = float(headroom)
        self.down_after = int(down_after)
        self.switch_gain = float(switch_gain)
        self.first_peak_to_mean = float(first_peak_to_mean)
        self._below: dict[str, list[float]] = {}  # per task: peaks of the windows in a row that wanted less

    def rate_bin_s(self, task: TaskSpec) -> float:
        return ttft_scaled_bin_s(task, self.bin_s, self.bin_ttft_multiple)

    def peak_qps(self, ctx: PlanContext, task: TaskSpec) -> float:
        """The load to size for: the recent windows' short-term peak (past arrivals only)."""
        recent = ctx.rate_history[-self.lookback:]
        if not recent:
            return ctx.load_qps[task.name] * self.first_peak_to_mean
        attr = f"{self.quantile}_qps"
        return self.margin * max(getattr(rates[task.name], attr) for _, rates in recent if task.name in rates)

    def plan_task(self, ctx: PlanContext, task: TaskSpec) -> PoolPlan:
        peak = self.peak_qps(ctx, task)
        cands = slo_quality_candidates(self.name, ctx, task, peak, self.headroom)
        best = energy_optimal(cands)
        current = ctx.current.for_task(task.name) if ctx.current is not None else None
        if current is None or current.dp == 0:
            self._below[task.name] = []
            return best.plan(task.name, peak)
        # no flip: keep the current config while it is within switch_gain of the best
        same = next((c for c in cands if c.key == current.key), None)
        if same is not None and not (best.energy_per_token_j < same.energy_per_token_j * (1 - self.switch_gain)):
            best = same
        sat = current.saturation_qps
        capacity = current.dp * sat * self.headroom if sat == sat else 0.0
        if peak > capacity:
            self._below[task.name] = []  # up at once
            return best.plan(task.name, peak)
        if best.key == current.key and best.dp == current.dp:
            self._below[task.name] = []
            return current
        below = self._below.setdefault(task.name, [])
        below.append(peak)
        if len(below) <= self.down_after:
            return current  # hold: not yet down_after windows below
        self._below[task.name] = []
        top = max(below)
        cand = candidate(ctx.profiles, task, best.key, top, self.headroom)
        return (cand or best).plan(task.name, top)


__all__ = ["BurstAware", "ttft_scaled_bin_s"]
