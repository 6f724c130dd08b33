"""Capacity arithmetic shared by policies: DP for a load, and energy-optimal choices from profiles.

DP for a target load x and a replica saturation x_s is ceil(x / x_s) with the load spread evenly
(paper §8.2); a replica's energy per token at load x/DP is read off its profile curve, which already
includes the replica's idle time, so comparing it across configs compares the pool's whole energy.

Engine settings: saturation QPS and energy per token come from the profile set's curves, which were produced
under the profile set's own engine settings (its manifest's ``engine_settings``). A task run under other settings
(``TaskSpec.engine``: another batch limit, token budget, KV fraction or chunked context) is still planned from
those curves: the plan is what the profile predicts, and the simulation shows how the pool fares under the
settings it actually runs. The curves are not recomputed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from profiles.profile_set import ProfileSet
from profiles.schema import ConfigKey
from sim.deployment import PoolPlan, TaskSpec


class NoFeasibleConfig(RuntimeError):
    """No profiled config can serve a task under the constraints asked for."""


@dataclass(frozen=True, slots=True)
class Candidate:
    key: ConfigKey
    dp: int
    saturation_qps: float
    energy_per_token_j: float
    quality: float

    @property
    def gpus(self) -> int:
        return self.dp * self.key.tp

    def plan(self, task: str, load_qps: float) -> PoolPlan:
        return PoolPlan(task, self.key, self.dp, load_qps, self.saturation_qps, self.energy_per_token_j, self.quality)


def replicas_for(load_qps: float, saturation_qps: float, headroom: float = 1.0) -> int:
    """ceil(x / (x_s * headroom)), at least one replica."""
    if saturation_qps <= 0:
        raise ValueError("saturation_qps must be > 0")
    return max(1, math.ceil(load_qps / (saturation_qps * headroom) - 1e-9))


def task_configs(profiles: ProfileSet, task: TaskSpec, gpu_types: Iterable[str], quants: Iterable[str] | None = None) -> list[ConfigKey]:
    gpus = set(gpu_types)
    allowed = set(quants) if quants is not None else None
    return [
        key
        for key in profiles.configs()
        if key.model == task.model and key.gpu in gpus and (allowed is None or key.quant in allowed)
        and profiles.has_curve(key, task.workload)
    ]


def candidate(profiles: ProfileSet, task: TaskSpec, key: ConfigKey, load_qps: float, headroom: float = 1.0) -> Candidate | None:
    """DP and predicted energy of serving ``load_qps`` with ``key``; None when it cannot meet the SLO."""
    sat = profiles.saturation_qps(key, task.workload, task.slo)
    if sat <= 0:
        return None
    dp = replicas_for(load_qps, sat, headroom)
    per_replica = load_qps / dp if load_qps > 0 else 0.0
    energy = profiles.energy_per_token_j(key, task.workload, per_replica)
    quality = profiles.quality_score(key.model, key.quant, task.name)
    return Candidate(key, dp, sat, energy, quality)


def energy_optimal(cands: Iterable[Candidate | None]) -> Candidate:
    """Least energy per token; fewer GPUs, then the config label, break ties."""
    pool = [c for c in cands if c is not None]
    if not pool:
        raise NoFeasibleConfig("no candidate config meets the latency SLO")
    # A config whose profile has no energy figure ranks after every one that has.
    return min(pool, key=lambda c: (round(c.energy_per_token_j, 12) if math.isfinite(c.energy_per_token_j) else math.inf,
                                    c.gpus, c.key.label))


def no_config_error(policy: str, task: TaskSpec, gpu_types: Iterable[str], what: str = "config") -> NoFeasibleConfig:
    """No profiled config of the task's model and workload on these GPUs (of the quant asked for)."""
    return NoFeasibleConfig(f"policy {policy}: task '{task.name}': no {what} of {task.model} with curves for workload "
                            f"'{task.workload}' is profiled on cluster.gpu_types {list(gpu_types)}")


def latency_infeasible(policy: str, profiles: ProfileSet, task: TaskSpec, keys: Iterable[ConfigKey],
                       what: str = "config") -> NoFeasibleConfig:
    """No config among ``keys`` meets the task's latency SLO: the error names the SLO and what the closest config
    reaches at its lowest profiled load."""
    best = None
    for key in keys:
        row = profiles.curve(key, task.workload).iloc[0]
        ttft, tpot = float(row["p90_ttft_s"]), float(row["p90_tpot_s"])
        score = max(ttft / task.slo.ttft_s, tpot / task.slo.tpot_s)
        if best is None or score < best[0]:
            best = (score, key, ttft, tpot, float(row["qps"]))
    slo = (f"SLO P90 TTFT {task.slo.ttft_s:g} s / P90 TPOT {task.slo.tpot_s:g} s (slo.tasks.{task.name})")
    if best is None:
        return NoFeasibleConfig(f"policy {policy}: task '{task.name}' ({task.model}, workload {task.workload}): "
                                f"no {what} to meet the {slo}")
    _, key, ttft, tpot, qps = best
    return NoFeasibleConfig(f"policy {policy}: task '{task.name}' ({task.model}, workload {task.workload}): no {what} "
                            f"meets the {slo}; the closest, {key.label}, reaches P90 TTFT {ttft:.3g} s / P90 TPOT "
                            f"{tpot:.3g} s at its lowest profiled load ({qps:.3g} req/s)")


def quality_infeasible(policy: str, profiles: ProfileSet, task: TaskSpec, keys: Iterable[ConfigKey]) -> NoFeasibleConfig:
    """No config among ``keys`` reaches the task's quality floor: the error names the best score."""
    scored = sorted(((profiles.quality_score(k.model, k.quant, task.name), k.quant) for k in keys), reverse=True)
    best = f"; the best, {task.model} {scored[0][1]}, scores {scored[0][0]:g}" if scored else ""
    return NoFeasibleConfig(f"policy {policy}: task '{task.name}' ({task.model}): no config reaches the quality floor "
                            f"{task.quality_min:g} (slo.tasks.{task.name}.quality_min){best}")


def energy_at_saturation(profiles: ProfileSet, task: TaskSpec, key: ConfigKey) -> float:
    sat = profiles.saturation_qps(key, task.workload, task.slo)
    return profiles.energy_per_token_j(key, task.workload, sat) if sat > 0 else math.inf


_ENERGY_MEMO_ENTRIES = 1 << 16


class CachedProfiles:
    """A profile set's planning look-ups, memoised: every answer comes from the wrapped ``ProfileSet``
    once, then from a dict. Policies re-plan every window over every config, so a run asks the same
    questions (a pandas filter each) thousands of times; everything else is delegated."""

    def __init__(self, profiles: ProfileSet):
        self.base = profiles
        self._configs = tuple(profiles.configs())
        self._quality: dict[tuple[str, str, str], float] = {}
        self._saturation: dict[tuple, float] = {}
        self._energy: dict[tuple[ConfigKey, str, float], float] = {}

    def __getattr__(self, name: str):
        return getattr(self.base, name)

    def configs(self) -> list[ConfigKey]:
        return list(self._configs)

    def quality_score(self, model: str, quant: str, task: str) -> float:
        key = (model, quant, task)
        score = self._quality.get(key)
        if score is None:
            score = self._quality[key] = self.base.quality_score(model, quant, task)
        return score

    def saturation_qps(self, key: ConfigKey, workload: str, slo) -> float:
        memo = (key, workload, slo.ttft_s, slo.tpot_s)
        value = self._saturation.get(memo)
        if value is None:
            value = self._saturation[memo] = self.base.saturation_qps(key, workload, slo)
        return value

    def energy_per_token_j(self, key: ConfigKey, workload: str, qps: float) -> float:
        memo = (key, workload, qps)
        value = self._energy.get(memo)
        if value is None:
            if len(self._energy) >= _ENERGY_MEMO_ENTRIES:  # loads vary per window: keep the memo bounded
                self._energy.clear()
            value = self._energy[memo] = self.base.energy_per_token_j(key, workload, qps)
        return value
