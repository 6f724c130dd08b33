"""UAQF utility policy: per task, the config that maximises U = λs·S̃ − λq·QL̃ − λp·SP̃ (utility-aware paper §3.1).

Candidates: every profiled config (GPU, quant, TP) of the task's model on the cluster's GPU types whose saturation
QPS under the task's latency SLO is > 0 and whose quality meets the task's floor (``slo.tasks.<task>.quality_min``;
FP16 included). DP = ceil(x / (x_s · headroom)) with x the task's load and x_s the config's saturation QPS (the
paper's §8.2 rule with replicas kept at ``headroom`` of saturation, as SLO-Energy-Optimal does; 0.9 by default).

The three terms, per candidate, from the profiles (the utility paper measured them on one GPU at batch 1; here
they come from the serving profiles):

* **S, speedup over FP16** - saturation QPS *per GPU* under the task's SLO and workload, divided by that of the
  same model's FP16 on the same GPU at the same TP. Where FP16 at that TP is not profiled or cannot meet the SLO
  (a 70B FP16 needs TP >= 2 on 80 GB parts), the divisor is the FP16 TP with the highest per-GPU saturation on
  that GPU; with no FP16 meeting the SLO on that GPU, the best FP16 over the cluster's GPUs. So S is the paper's
  throughput ratio T_q / T_fp16, measured at the SLO (capacity) rather than at batch 1, and per GPU so that a TP1
  quantized config is credited for the GPUs it saves. ``baseline`` names the divisor.
* **QL, quality loss** - score of FP16 minus score of the config for this task, in quality.csv points (the
  paper uses the perplexity increase; our quality table holds task scores). Negative when a method scores above
  FP16.
* **SP, stability penalty - derived**: the profiles hold no repeated runs, so the paper's cross-run standard
  deviation over the mean (S_L / L) cannot be computed. Instead SP is the request-to-request spread at the
  operating point in the simulated QPS sweep (curves.parquet): at the per-replica load x / DP, interpolated on
  the config's curve, SP = ½·((P90 − P50) / P50 of TTFT + (P90 − P50) / P50 of TPOT), the paper's Step-4 form
  α·S_L + β·S_T with α = β = ½ and a percentile spread in place of the standard deviation. It measures queueing
  and batching jitter in the simulator, not run-to-run noise of a real engine. Never measured; labelled derived.

Each term is min-max normalised over the task's candidates in this window (a term equal for every candidate
normalises to 0). Ties in U go to the least energy per token, then fewer GPUs, then the config label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from profiles.schema import ConfigKey
from sim.deployment import PlanContext, PoolPlan, TaskSpec
from sim.planning import (
    latency_infeasible,
    no_config_error,
    quality_infeasible,
    replicas_for,
    task_configs,
)
from sim.policy_api import PerTaskPolicy

STABILITY_METHOD = ("derived: request-to-request spread at the per-replica load in the simulated QPS sweep "
                    "(curves.parquet), 1/2 ((P90-P50)/P50 TTFT + (P90-P50)/P50 TPOT); no repeated runs in the profiles")
SPEEDUP_METHOD = ("saturation QPS per GPU under the task's SLO and workload / that of the same model's FP16 on the "
                  "same GPU and TP (else the best FP16 TP on that GPU; else the best FP16 on the cluster's GPUs)")


@dataclass(frozen=True, slots=True)
class UtilityTerms:
    """One candidate's raw terms (before normalisation)."""

    key: ConfigKey
    dp: int
    saturation_qps: float
    speedup: float
    baseline: str  # the FP16 config the speedup divides by
    quality: float
    quality_loss: float
    stability_penalty: float
    energy_per_token_j: float
    meets_quality_floor: bool

    @property
    def gpus(self) -> int:
        return self.dp * self.key.tp


@dataclass(frozen=True, slots=True)
class Scored:
    terms: UtilityTerms
    speedup_n: float
    quality_loss_n: float
    stability_n: float
    utility: float


def _spread_at(profiles, key: ConfigKey, workload: str, qps: float) -> float:
    curve = profiles.curve(key, workload)
    x = curve["qps"].to_numpy()
    parts = []
    for metric in ("ttft", "tpot"):
        p50 = float(np.interp(qps, x, curve[f"p50_{metric}_s"].to_numpy()))
        p90 = float(np.interp(qps, x, curve[f"p90_{metric}_s"].to_numpy()))
        parts.append((p90 - p50) / p50 if p50 > 0 else 0.0)
    return 0.5 * (parts[0] + parts[1])


def _per_gpu(profiles, task: TaskSpec, key: ConfigKey) -> float:
    return profiles.saturation_qps(key, task.workload, task.slo) / key.tp


def _baselines(profiles, task: TaskSpec, gpu_types: Sequence[str]):
    """Per (gpu, tp) and per gpu, the FP16 per-GPU saturation to divide by, with the FP16 config's label."""
    fp16 = [k for k in task_configs(profiles, task, gpu_types, quants=("fp16",))
            if profiles.saturation_qps(k, task.workload, task.slo) > 0]
    same = {(k.gpu, k.tp): (_per_gpu(profiles, task, k), k.label) for k in fp16}
    best_gpu: dict[str, tuple[float, str]] = {}
    for k in fp16:
        value = (_per_gpu(profiles, task, k), k.label)
        if k.gpu not in best_gpu or value[0] > best_gpu[k.gpu][0]:
            best_gpu[k.gpu] = value
    fleet = max(best_gpu.values(), default=None)
    return same, best_gpu, fleet


def utility_terms(profiles, task: TaskSpec, gpu_types: Sequence[str], load_qps: float, headroom: float = 0.9,
                  keys: Iterable[ConfigKey] | None = None) -> list[UtilityTerms]:
    """Raw terms of every config (of ``keys``, default all the task's) that meets the latency SLO at some load;
    ``meets_quality_floor`` says whether it also meets the task's quality floor."""
    keys = list(keys) if keys is not None else task_configs(profiles, task, gpu_types)
    same, best_gpu, fleet = _baselines(profiles, task, gpu_types)
    fp16_quality = profiles.quality_score(task.model, "fp16", task.name)
    out = []
    for key in keys:
        sat = profiles.saturation_qps(key, task.workload, task.slo)
        if sat <= 0:
            continue
        dp = replicas_for(load_qps, sat, headroom)
        per_replica = load_qps / dp if load_qps > 0 else 0.0
        base = same.get((key.gpu, key.tp)) or best_gpu.get(key.gpu) or fleet
        per_gpu = sat / key.tp
        speedup, baseline = (per_gpu / base[0], base[1]) if base is not None else (per_gpu, "none (req/s per GPU)")
        quality = profiles.quality_score(key.model, key.quant, task.name)
        out.append(UtilityTerms(
            key=key, dp=dp, saturation_qps=sat, speedup=speedup, baseline=baseline, quality=quality,
            quality_loss=fp16_quality - quality,
            stability_penalty=_spread_at(profiles, key, task.workload, per_replica),
            energy_per_token_j=profiles.energy_per_token_j(key, task.workload, per_replica),
            meets_quality_floor=quality >= task.quality_min))
    return out


def _normalise(values: list[float]) -> list[float]:
    lo, hi = min(values), max(values)
    if not hi > lo:
        return [0.0] * len(values)
    return [(v - lo) / (hi - lo) for v in values]


def score(terms: Sequence[UtilityTerms], lambda_s: float, lambda_q: float, lambda_p: float) -> list[Scored]:
    """U for each candidate (min-max normalised over ``terms``), best first."""
    if not terms:
        return []
    s = _normalise([t.speedup for t in terms])
    q = _normalise([t.quality_loss for t in terms])
    p = _normalise([t.stability_penalty for t in terms])
    scored = [Scored(t, s[i], q[i], p[i], lambda_s * s[i] - lambda_q * q[i] - lambda_p * p[i])
              for i, t in enumerate(terms)]
    energy = lambda t: t.energy_per_token_j if math.isfinite(t.energy_per_token_j) else math.inf
    scored.sort(key=lambda x: (-round(x.utility, 12), energy(x.terms), x.terms.gpus, x.terms.key.label))
    return scored


class UtilityAware(PerTaskPolicy):
    """UAQF: per task, the candidate with the highest U = λs·S̃ − λq·QL̃ − λp·SP̃ (module docstring)."""

    name = "uaqf"
    param_ranges = {
        "lambda_s": (0, True, 1, False, False),
        "lambda_q": (0, True, 1, False, False),
        "lambda_p": (0, True, 1, False, False),
        "headroom": (0, False, 1, False, False),
    }

    def __init__(self, lambda_s: float, lambda_q: float, lambda_p: float, headroom: float = 0.9):
        weights = (float(lambda_s), float(lambda_q), float(lambda_p))
        if any(not (0 <= w <= 1) for w in weights):
            raise ValueError(f"lambda_s, lambda_q, lambda_p must each be in [0, 1], got {weights}")
        if abs(sum(weights) - 1.0) > 1e-6:
            raise ValueError(f"lambda_s + lambda_q + lambda_p must be 1 (utility paper §3.1), got {sum(weights):g}")
        if not (0 < float(headroom) <= 1):
            raise ValueError(f"headroom must be in (0, 1], got {headroom}")
        self.lambda_s, self.lambda_q, self.lambda_p = weights
        self.headroom = float(headroom)

    def rank(self, ctx: PlanContext, task: TaskSpec) -> list[Scored]:
        """The task's candidates meeting its latency SLO and quality floor, best first."""
        load = ctx.load_qps[task.name]
        every = task_configs(ctx.profiles, task, ctx.gpu_types)
        if not every:
            raise no_config_error(self.name, task, ctx.gpu_types)
        terms = utility_terms(ctx.profiles, task, ctx.gpu_types, load, self.headroom, every)
        if not terms:
            raise latency_infeasible(self.name, ctx.profiles, task, every)
        floor = [t for t in terms if t.meets_quality_floor]
        if not floor:
            raise quality_infeasible(self.name, ctx.profiles, task, every)
        return score(floor, self.lambda_s, self.lambda_q, self.lambda_p)

    def plan_task(self, ctx: PlanContext, task: TaskSpec) -> PoolPlan:
        best = self.rank(ctx, task)[0].terms
        return PoolPlan(task.name, best.key, best.dp, ctx.load_qps[task.name], best.saturation_qps,
                        best.energy_per_token_j, best.quality)
