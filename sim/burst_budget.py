"""Burst-budget sizing (issue 14, part 4): the fewest replicas whose predicted misses over the recent bursts fit one
SLO budget shared by all tasks.

Burst-aware sizing (``sim.burst_aware``) sizes every task for a high quantile of its short-term rates, so a task
whose SLO absorbs its bursts (chat-S: 1 s TTFT) is sized as generously as one whose SLO does not (code: 0.15 s).
This policy asks instead how many requests each replica count would have failed on what the trace has shown so far,
and spends one budget of misses where it saves the most GPUs:

* **predicted misses** of a task at DP n: the past bins (``PlanContext.rate_history``: per-bin arrival counts of the
  last ``lookback`` windows, bins ``bin_ttft_multiple`` x the TTFT SLO clamped to [1, 10] s; past arrivals only, no
  look-ahead) are replayed through a fluid queue served at n x the config's saturation QPS: an arrival misses while
  the backlog is more than that rate clears within the TTFT SLO (the share of each bin during which it is, the
  backlog moving linearly across the bin); of the other arrivals, the share the profile's latency curve gives at
  the bin's rate per replica (capped where the curve's P90s cross the SLO) misses, read off its P50 / P90 / P99 TTFT and TPOT
  (``miss_share``). So a burst that a loose SLO absorbs (chat-S: 1 s of queue) costs little, and one a tight SLO
  cannot (code: 0.15 s) costs its requests. Arrivals clustered within a bin are not seen (optimistic); the curves
  are coarse around their knee (pessimistic there).
* **one budget**: starting from the replicas that keep each task's own predicted misses within ``1 - task_floor``
  of its requests (so no task is given up for the others), a replica (TP GPUs) is added, one at a time, to the
  task where it removes the most predicted misses per GPU, until all tasks' predicted misses are at most
  ``1 - target`` of their requests (``max_extra`` replicas per task above what the recent mean needs, at most).
  The GPUs go where they buy SLO attainment; a task far from its SLO gets no burst margin.
* **a climbing load**: when the mean rose in each of the last two windows, the past bins are scaled by the smaller
  rise (at most ``max_growth``) before the misses are predicted, so a load that keeps climbing is not always met
  one window late.
* config per task: the one that meets ``target`` on the task's own bins with the fewest GPUs, then the least energy
  per token at the recent mean; the one in force is kept while it needs no more GPUs and is within ``switch_gain``
  of that energy (no flips between near-equals).
* hysteresis: a pool changes at once when it needs more GPUs than it holds, or when the plan in force is predicted
  to miss more than the new one and more than the task's share of the budget (a config at the same GPUs with more
  capacity); anything else (fewer replicas, another config that is merely cheaper) waits for ``down_after`` windows
  in a row that all wanted it, then takes the most replicas they wanted.

The first plan, before any arrival was seen, sizes for ``ctx.load_qps`` x ``first_peak_to_mean`` (the only time
``ctx.load_qps`` is read).
"""

from __future__ import annotations

import math

import numpy as np

from sim.burst_aware import ttft_scaled_bin_s
from profiles.profile_set import saturation_from_curve
from sim.deployment import Deployment, PlanContext, PoolPlan, TaskSpec
from sim.planning import energy_optimal
from sim.policies import slo_quality_candidates
from sim.policy_api import Policy

_GRID = 400  # points of a config's miss-share table over per-replica rate
_MIN_GAIN = 0.5  # predicted requests saved per GPU below which no replica is worth adding


def miss_share(slo_s: float, q50: np.ndarray, q90: np.ndarray, q99: np.ndarray) -> np.ndarray:
    """Share of requests over ``slo_s`` given the latency's P50 / P90 / P99: the CDF through (0, 0), (P50, 0.5),
    (P90, 0.9), (P99, 0.99), linear between them, and past P99 a tail falling tenfold per (P99 - P90)."""
    q50, q90, q99 = (np.asarray(q, dtype=float) for q in (q50, q90, q99))
    span = np.maximum(q99 - q90, 1e-9)
    tail = 0.01 * np.power(10.0, -np.maximum(slo_s - q99, 0.0) / span)
    f_90_99 = 0.9 + 0.09 * (slo_s - q90) / np.maximum(q99 - q90, 1e-12)
    f_50_90 = 0.5 + 0.4 * (slo_s - q50) / np.maximum(q90 - q50, 1e-12)
    f_0_50 = 0.5 * slo_s / np.maximum(q50, 1e-12)
    cdf = np.where(slo_s >= q90, f_90_99, np.where(slo_s >= q50, f_50_90, f_0_50))
    return np.where(slo_s >= q99, tail, 1.0 - np.clip(cdf, 0.0, 0.99))


class BurstBudget(Policy):
    name = "burst_budget"
    param_ranges = {
        "target": (0, False, 1, False, False),
        "task_floor": (0, True, 1, False, False),
        "lookback": (1, True, None, True, False),
        "down_after": (0, True, None, True, False),
        "switch_gain": (0, True, None, False, False),
        "first_peak_to_mean": (1, True, None, False, False),
        "bin_s": (0, False, None, False, True),
        "bin_ttft_multiple": (0, False, None, False, False),
        "max_extra": (0, True, None, True, False),
        "max_growth": (1, True, None, False, False),
    }

    def __init__(self, target: float = 0.98, task_floor: float = 0.9, lookback: int = 3, down_after: int = 3,
                 switch_gain: float = 0.05,
                 first_peak_to_mean: float = 1.5, bin_s: float | None = None, bin_ttft_multiple: float = 5.0,
                 max_extra: int = 8, max_growth: float = 1.5):
        if not (0 < target < 1):
            raise ValueError(f"policy.target must be in (0, 1), got {target}")
        if bin_s is not None and not (0 < bin_s < math.inf):
            raise ValueError(f"policy.bin_s must be finite and > 0 or null, got {bin_s}")
        if not (0 <= task_floor < 1):
            raise ValueError(f"policy.task_floor must be in [0, 1), got {task_floor}")
        self.target = float(target)
        self.task_floor = float(task_floor)
        self.lookback = int(lookback)
        self.down_after = int(down_after)
        self.switch_gain = float(switch_gain)
        self.first_peak_to_mean = float(first_peak_to_mean)
        self.bin_s = bin_s
        self.bin_ttft_multiple = float(bin_ttft_multiple)
        self.max_extra = int(max_extra)
        self.max_growth = float(max_growth)
        self._below: dict[str, list] = {}  # per task: (config, replicas) wanted by the windows in a row that wanted less
        self._miss_tables: dict = {}  # (config, workload, slo) -> (per-replica rates, miss share)

    def rate_bin_s(self, task: TaskSpec) -> float:
        return ttft_scaled_bin_s(task, self.bin_s, self.bin_ttft_multiple)

    # --- predicted misses ---------------------------------------------------------------------------

    def miss_table(self, profiles, task: TaskSpec, key) -> tuple[np.ndarray, np.ndarray, float]:
        """Per-replica rate grid, the share of requests missing the task's SLO there, and the rate where the curve's
        P90s cross the SLO (memoised)."""
        memo = (key, task.workload, task.slo)
        table = self._miss_tables.get(memo)
        if table is None:
            curve = profiles.curve(key, task.workload)
            qps = curve["qps"].to_numpy(float)
            grid = np.linspace(0.0, float(qps[-1]), _GRID)
            shares = []
            for metric, slo_s in (("ttft", task.slo.ttft_s), ("tpot", task.slo.tpot_s)):
                q = [np.interp(grid, qps, curve[f"p{p}_{metric}_s"].to_numpy(float)) for p in (50, 90, 99)]
                shares.append(miss_share(slo_s, *q))
            # where the curve itself crosses the SLO: the searched saturation may sit past it (the sweep is coarse at
            # its knee), and the share read there would count a burst at saturation as a steady overload
            table = self._miss_tables[memo] = (grid, np.maximum(*shares), saturation_from_curve(curve, task.slo))
        return table

    def predicted_misses(self, ctx: PlanContext, task: TaskSpec, key, counts: np.ndarray, bin_s: float,
                         dp: int) -> float:
        return self.predicted_misses_for(ctx.profiles, task, key, counts, bin_s, dp)

    def predicted_misses_for(self, profiles, task: TaskSpec, key, counts: np.ndarray, bin_s: float,
                             dp: int) -> float:
        """Requests of the past bins that ``dp`` replicas of ``key`` would have failed: the queue's share (a fluid
        backlog served at dp x the saturation QPS; an arrival misses while it exceeds what that rate clears within
        the TTFT SLO), and of the rest the curve's share at the bin's rate per replica, capped where the curve's P90s
        cross the SLO."""
        grid, share, curve_sat = self.miss_table(profiles, task, key)
        sat = profiles.saturation_qps(key, task.workload, task.slo)
        rate = counts / (bin_s * dp)
        curve_share = np.interp(np.minimum(rate, min(sat, curve_sat)), grid, share)
        if sat <= 0:
            return float(counts.sum())
        served = dp * sat * bin_s  # requests the pool clears per bin
        backlog = _lindley(counts - served)
        before = np.concatenate(([0.0], backlog[:-1]))
        over = _share_above(before, backlog, dp * sat * task.slo.ttft_s)
        return float(np.dot(counts, over + (1.0 - over) * curve_share))

    # --- the plan -----------------------------------------------------------------------------------

    def plan(self, ctx: PlanContext) -> Deployment:
        recent = ctx.rate_history[-self.lookback:]
        if not recent:
            return Deployment(tuple(self._first_plan(ctx, task) for task in ctx.tasks))
        chosen = {}  # task -> (candidate at the recent mean, past bin counts, bin seconds)
        means = {}
        for task in ctx.tasks:
            windows = [rates[task.name] for _, rates in recent if task.name in rates]
            counts = np.concatenate([w.counts for w in windows]) if windows else np.zeros(1)
            bin_s = windows[-1].bin_s if windows else 1.0
            counts = counts * self.growth(windows)
            mean_qps = float(counts.sum()) / (len(counts) * bin_s)
            best = self._config(ctx, task, mean_qps, counts, bin_s)
            chosen[task.name] = (best, counts, bin_s)
            means[task.name] = mean_qps
        dp, misses = {}, {}
        for name, (c, counts, bin_s) in chosen.items():  # start: each task within its own floor
            task, allowed = _task(ctx, name), (1.0 - self.task_floor) * float(counts.sum())
            dp[name] = c.dp
            misses[name] = self.predicted_misses(ctx, task, c.key, counts, bin_s, c.dp)
            while misses[name] > allowed and dp[name] - c.dp < self.max_extra:
                dp[name] += 1
                misses[name] = self.predicted_misses(ctx, task, c.key, counts, bin_s, dp[name])
        total = sum(float(counts.sum()) for _, counts, _ in chosen.values())
        budget = (1.0 - self.target) * total
        while sum(misses.values()) > budget:
            gains = []
            for name, (c, counts, bin_s) in chosen.items():
                if dp[name] - c.dp >= self.max_extra or misses[name] <= 0:
                    continue
                after = self.predicted_misses(ctx, _task(ctx, name), c.key, counts, bin_s, dp[name] + 1)
                gains.append(((misses[name] - after) / c.key.tp, name, after))
            if not gains:
                break
            gain, name, after = max(gains)
            if gain < _MIN_GAIN:
                break
            dp[name] += 1
            misses[name] = after
        return Deployment(tuple(self._hold(ctx, task, *chosen[task.name], dp[task.name], misses[task.name],
                                           means[task.name]) for task in ctx.tasks))

    def growth(self, windows: list) -> float:
        """How much the next window may bring over the past ones: when the mean rose in each of the last two windows,
        the smaller of the two rises (at most ``max_growth``), else 1. Plans are made on the past only, so a load
        that keeps climbing would always be met one window late; a single rise is not a trend (bursty traffic
        rises and falls from window to window)."""
        means = [w.mean_qps for w in windows[-3:]]
        if len(means) < 3 or min(means) <= 0:
            return 1.0
        rise = min(means[2] / means[1], means[1] / means[0])
        return min(self.max_growth, max(1.0, rise))

    def _first_plan(self, ctx: PlanContext, task: TaskSpec) -> PoolPlan:
        load = ctx.load_qps[task.name] * self.first_peak_to_mean
        self._below[task.name] = []
        return energy_optimal(slo_quality_candidates(self.name, ctx, task, load, 1.0)).plan(task.name, load)

    def _config(self, ctx: PlanContext, task: TaskSpec, mean_qps: float, counts: np.ndarray, bin_s: float):
        """The config that meets ``target`` on this task's own bins with the fewest GPUs (then the least energy at
        the recent mean), or the one in force while it needs no more GPUs and is within ``switch_gain`` of its
        energy. Returned as a candidate whose ``dp`` is what the recent mean needs (the budget's starting point)."""
        cands = slo_quality_candidates(self.name, ctx, task, mean_qps, 1.0)
        allowed = (1.0 - self.target) * float(counts.sum())
        ranked = []
        for c in cands:
            need = None
            for dp in range(c.dp, c.dp + self.max_extra + 1):
                if self.predicted_misses(ctx, task, c.key, counts, bin_s, dp) <= allowed:
                    need = dp
                    break
            gpus = need * c.key.tp if need is not None else math.inf
            energy = c.energy_per_token_j if math.isfinite(c.energy_per_token_j) else math.inf
            ranked.append((gpus, energy, c.key.label, c))
        ranked.sort(key=lambda r: r[:3])
        best = ranked[0]
        current = ctx.current.for_task(task.name) if ctx.current is not None else None
        if current is not None and current.dp > 0:
            same = next((r for r in ranked if r[3].key == current.key), None)
            if same is not None and same[0] <= best[0] and not (best[1] < same[1] * (1 - self.switch_gain)):
                return same[3]
        return best[3]

    def _hold(self, ctx: PlanContext, task: TaskSpec, best, counts: np.ndarray, bin_s: float, want: int,
              want_misses: float, mean_qps: float) -> PoolPlan:
        """Now when the pool needs more GPUs than it holds, or when the plan in force is predicted to miss more than
        the new one and more than the task's share of the budget; anything else (fewer replicas, another config at
        no more GPUs) only after ``down_after`` windows in a row that all wanted it, then with the most replicas
        they wanted."""
        current = ctx.current.for_task(task.name) if ctx.current is not None else None
        if current is None or current.dp == 0 or want * best.key.tp > current.gpus:
            self._below[task.name] = []
            return _sized(ctx, task, best, want, mean_qps)
        if best.key == current.key and want == current.dp:
            self._below[task.name] = []
            return current
        if best.key != current.key:
            in_force = self.predicted_misses(ctx, task, current.key, counts, bin_s, current.dp)
            if in_force > max(want_misses, (1.0 - self.target) * float(counts.sum())):
                self._below[task.name] = []
                return _sized(ctx, task, best, want, mean_qps)
        below = self._below.setdefault(task.name, [])
        below.append((best.key, want))
        if len(below) <= self.down_after:
            return current
        self._below[task.name] = []
        return _sized(ctx, task, best, max(n for key, n in below if key == best.key), mean_qps)


def _lindley(net: np.ndarray) -> np.ndarray:
    """Backlog at each bin's end of a queue that starts empty and gains ``net`` per bin (never below zero)."""
    level = np.cumsum(net)
    return level - np.minimum(np.minimum.accumulate(level), 0.0)


def _share_above(start: np.ndarray, end: np.ndarray, threshold: float) -> np.ndarray:
    """Share of each bin during which a backlog moving linearly from ``start`` to ``end`` is above ``threshold``."""
    hi, lo = np.maximum(start, end), np.minimum(start, end)
    partial = (hi - threshold) / np.maximum(hi - lo, 1e-12)
    return np.where(lo > threshold, 1.0, np.where(hi > threshold, np.clip(partial, 0.0, 1.0), 0.0))


def _task(ctx: PlanContext, name: str) -> TaskSpec:
    return next(t for t in ctx.tasks if t.name == name)


def _sized(ctx: PlanContext, task: TaskSpec, best, dp: int, mean_qps: float) -> PoolPlan:
    """``best``'s config at ``dp`` replicas; load and predicted energy reported at the recent mean rate."""
    per_replica = mean_qps / dp
    energy = ctx.profiles.energy_per_token_j(best.key, task.workload, per_replica)
    return PoolPlan(task.name, best.key, dp, mean_qps, best.saturation_qps, energy, best.quality)


__all__ = ["BurstBudget", "miss_share"]
