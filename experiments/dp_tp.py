"""Energy-optimal (quant, GPU, TP, DP) per task and load (characterization paper §8.2).

    python -m experiments.dp_tp                                   # shipped defaults, case-study tasks
    python -m experiments.dp_tp --profiles profiles/measured/transformers_h200_distinct/profile
    python -m experiments.dp_tp --gpus a100-40gb h100-80gb --max-instances 6 --out outputs/dp_tp

For each task and each load x from near zero to ``max_instances`` times the largest single-replica saturation
among the task's configs, every config (quant, GPU, TP) of the task's model that meets the task's quality floor
and has a saturation x_s > 0 under the task's SLO gets DP = ceil(x / x_s) replicas (``sim.planning.replicas_for``,
the rule the policies use) with the load spread evenly, x / DP per replica. The energy-optimal config is the one
with the least energy per output token; ties go to fewer GPUs, then the label (``sim.planning.energy_optimal``).

Energy counted (``ENERGY_COUNTED``): the profile curve's energy per output token at the per-replica load
x / DP (``ProfileSet.energy_per_token_j``). A curve point is the whole replica's energy over a Poisson burst
(every TP GPU: the step model's energy per iteration plus ``idle_w`` between iterations) over its output tokens,
so with DP identical replicas at x / DP each, the pool's energy per token is that same number and the idle power
of every provisioned GPU is already in it; nothing is added on top. Below a curve's lowest point the replica's
power falls linearly to ``idle_w`` with the load (``ProfileSet.energy_per_token_j``). Not counted: host CPUs and
memory, network, cooling (PUE), model loading and re-configuration, GPUs not in a pool. ``idle_share`` is the
part of the counted energy that is the provisioned GPUs' idle floor, DP x idle_w / (x x mean output tokens).

Tasks: ``case_study`` reads the §8.3 tasks from the Hydra tree (``experiments/conf/slo/<slo>.yaml`` for SLOs
and quality floors, ``experiments/conf/cluster/<cluster>.yaml`` for each task's model and workload);
``workloads`` makes one task per (model, workload) the profile set has curves for, held to the workload's
tightest searched SLO and no quality floor; ``auto`` (the default) takes the case-study tasks the set can serve,
else the per-workload ones. Writes ``dp_tp.csv`` (every task and load), ``dp_tp_segments.csv`` and
``dp_tp.md`` (where each (config, DP) wins and by how much) and ``dp_tp.png``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from profiles.profile_set import (EnergyCurve, LatencySlo, ProfileError, ProfileSet, default_profile_path,
                                  energy_per_token_at)
from profiles.schema import ConfigKey
from sim.planning import CachedProfiles, replicas_for

FP16 = "fp16"
TASK_MODES = ("auto", "case_study", "workloads")
ENERGY_COUNTED = (
    "energy per output token of the whole pool = the profile curve's energy per output token at the per-replica "
    "load x/DP: every TP GPU of every provisioned replica, busy iterations (step model) plus idle power between "
    "iterations, over the output tokens; below a curve's lowest point power falls linearly to idle. Not counted: "
    "host CPU/memory, network, cooling (PUE), model loading and re-configuration, GPUs outside the pool.")


class DpTpError(ValueError):
    """A setting or profile set the DP/TP search cannot work with; the message names it."""


@dataclass(frozen=True, slots=True)
class DpTpTask:
    """A request type: the model serving it, the workload whose curves describe it, its SLO and quality floor."""

    name: str
    model: str
    workload: str
    slo: LatencySlo
    quality_min: float | None  # None: no quality floor (per-workload tasks)


@dataclass(frozen=True, slots=True)
class Option:
    """One config serving the whole load: DP replicas at x / DP each."""

    key: ConfigKey
    dp: int
    saturation_qps: float
    per_replica_qps: float
    energy_per_token_j: float
    idle_share: float  # the provisioned GPUs' idle floor over the counted energy
    pool_power_w: float  # energy per token x output tokens per second of the whole load

    @property
    def gpus(self) -> int:
        return self.dp * self.key.tp

    @property
    def config(self) -> str:
        return f"{self.key.gpu} {self.key.quant} TP{self.key.tp}"

    @property
    def label(self) -> str:
        return f"{self.config} x DP{self.dp}"


@dataclass(frozen=True, slots=True)
class LoadPoint:
    load_qps: float
    best: Option
    second: Option | None  # the next-best other config (at its own DP)
    fp16: Option | None  # the best FP16 config (at its own DP)


@dataclass(frozen=True, slots=True)
class Switch:
    """Where the energy-optimal (config, DP) changes, found by bisection between grid points."""

    load_qps: float
    before: str
    after: str
    why: str


@dataclass
class TaskResult:
    task: DpTpTask
    candidates: list[tuple[ConfigKey, float]]  # (config, saturation) that meet the SLO and quality floor
    excluded: dict[str, int]  # reason -> number of configs
    points: list[LoadPoint] = field(default_factory=list)
    switches: list[Switch] = field(default_factory=list)
    note: str = ""  # why nothing was computed


# --- tasks ---------------------------------------------------------------------------------------

def _conf_yaml(group: str, name: str):
    path = resources.files("experiments.conf") / group / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.name[:-5] for p in (resources.files("experiments.conf") / group).iterdir()
                         if p.name.endswith(".yaml"))
        raise DpTpError(f"experiments/conf/{group}/{name}.yaml not found (choices: {', '.join(choices)})")
    return OmegaConf.load(str(path))


def case_study_tasks(slo: str = "case_study", cluster: str = "case_study") -> list[DpTpTask]:
    """The §8.3 tasks: models and workloads from the cluster's pools, SLOs and quality floors from the SLO set."""
    slos, pools = _conf_yaml("slo", slo).tasks, _conf_yaml("cluster", cluster).pools
    tasks = []
    for name, pool in pools.items():
        if name not in slos:
            raise DpTpError(f"experiments/conf/slo/{slo}.yaml: no SLO for task '{name}'")
        s = slos[name]
        tasks.append(DpTpTask(str(name), str(pool.model), str(pool.workload),
                              LatencySlo(float(s.ttft_s), float(s.tpot_s)), float(s.quality_min)))
    return tasks


def workload_tasks(profiles: ProfileSet) -> list[DpTpTask]:
    """One task per (model, workload) with curves, held to the workload's tightest searched SLO, no quality floor."""
    s = profiles.saturation
    tasks = []
    for (model, workload), _ in profiles.curves.groupby(["model", "workload"]):
        rows = s[(s["model"] == model) & (s["workload"] == workload)]
        if rows.empty:
            continue
        tight = rows.sort_values(["slo_ttft_s", "slo_tpot_s"]).iloc[0]
        tasks.append(DpTpTask(f"{workload}/{model}", str(model), str(workload),
                              LatencySlo(float(tight.slo_ttft_s), float(tight.slo_tpot_s)), None))
    return tasks


def servable(profiles: ProfileSet, task: DpTpTask) -> bool:
    return any(k.model == task.model and profiles.has_curve(k, task.workload) for k in profiles.configs())


def resolve_tasks(profiles: ProfileSet, mode: str = "auto", slo: str = "case_study",
                  cluster: str = "case_study") -> tuple[list[DpTpTask], str]:
    """The tasks to plan and a sentence saying where they come from."""
    if mode not in TASK_MODES:
        raise DpTpError(f"tasks must be one of {', '.join(TASK_MODES)}, got {mode!r}")
    if mode in ("auto", "case_study"):
        study = case_study_tasks(slo, cluster)
        kept = [t for t in study if servable(profiles, t)]
        dropped = [t.name for t in study if t not in kept]
        if kept or mode == "case_study":
            where = (f"case-study tasks (experiments/conf/slo/{slo}.yaml, experiments/conf/cluster/{cluster}.yaml)"
                     + (f"; not in this profile set: {', '.join(dropped)}" if dropped else ""))
            if not kept:
                raise DpTpError(f"{profiles.path}: no case-study task's model has curves for its workload "
                                f"({', '.join(f'{t.name}: {t.model} on {t.workload}' for t in study)})")
            return kept, where
    tasks = workload_tasks(profiles)
    if not tasks:
        raise DpTpError(f"{profiles.path}: no (model, workload) has both curves and a searched saturation SLO")
    return tasks, ("one task per (model, workload) of the profile set, at the workload's tightest searched SLO, "
                   "no quality floor" + (" (no case-study task is in this profile set)" if mode == "auto" else ""))


# --- the search ----------------------------------------------------------------------------------

class Planner:
    """Options of one task at any load, from a profile set: DP and energy of every candidate config, vectorised
    over loads (``profiles.profile_set.energy_per_token_at``, the same arithmetic as
    ``ProfileSet.energy_per_token_j``)."""

    def __init__(self, profiles: ProfileSet, task: DpTpTask, gpus: list[str] | None = None):
        self.profiles = profiles
        self.task = task
        cached = CachedProfiles(profiles)
        excluded: dict[str, int] = {}
        self.candidates: list[tuple[ConfigKey, float]] = []
        w = profiles.workloads
        rows = w[w["workload"] == task.workload]
        self.mean_output_tokens = float(rows["mean_output_tokens"].iloc[0]) if not rows.empty else float("nan")

        def skip(why: str) -> None:
            excluded[why] = excluded.get(why, 0) + 1

        for key in profiles.configs():
            if key.model != task.model or (gpus is not None and key.gpu not in gpus):
                continue
            if not profiles.has_curve(key, task.workload):
                skip("no curve for the workload")
                continue
            if task.quality_min is not None:
                try:
                    q = cached.quality_score(key.model, key.quant, task.name)
                except ProfileError:
                    skip("no quality row")
                    continue
                if q < task.quality_min:
                    skip("below the quality floor")
                    continue
            sat = cached.saturation_qps(key, task.workload, task.slo)
            if not sat > 0:
                skip("misses the latency SLO at any load")
                continue
            self.candidates.append((key, sat))
        self.excluded = excluded
        self._curves = [EnergyCurve.of(profiles.curve(k, task.workload), profiles.step(k).idle_w)
                        for k, _ in self.candidates]
        self._sat = np.array([s for _, s in self.candidates])
        self._tp = np.array([k.tp for k, _ in self.candidates])
        self._idle_w = np.array([c.idle_w for c in self._curves])
        # tie-break order: fewer GPUs, then the label (as sim.planning.energy_optimal)
        self._label_rank = np.argsort(np.argsort([k.label for k, _ in self.candidates]))

    def matrices(self, loads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """DP and energy per output token of every candidate (rows) at every load (columns)."""
        loads = np.asarray(loads, dtype=float)
        dp = np.array([[replicas_for(x, s) for x in loads] for s in self._sat], dtype=np.int64).reshape(
            len(self._sat), len(loads))
        energy = np.vstack([energy_per_token_at(c, loads / dp[i]) for i, c in enumerate(self._curves)]) \
            if self._curves else np.zeros((0, len(loads)))
        return dp, energy

    def order(self, dp: np.ndarray, energy: np.ndarray) -> np.ndarray:
        """Candidate indices per load, best first (least energy, then fewer GPUs, then label)."""
        e = np.where(np.isfinite(energy), np.round(energy, 12), np.inf)
        gpus = dp * self._tp[:, None]
        label = np.broadcast_to(self._label_rank[:, None], e.shape)
        return np.lexsort((label, gpus, e), axis=0)

    def option(self, i: int, load_qps: float, dp: int, energy: float) -> Option:
        key, sat = self.candidates[i]
        tokens_s = load_qps * self.mean_output_tokens
        idle = self._idle_w[i] * dp
        return Option(key, int(dp), sat, load_qps / dp, float(energy),
                      float(idle / (tokens_s * energy)) if tokens_s > 0 else float("nan"), float(energy * tokens_s))

    def points(self, loads: np.ndarray) -> list[LoadPoint]:
        dp, energy = self.matrices(loads)
        order = self.order(dp, energy)
        out = []
        for j, x in enumerate(loads):
            ranked = order[:, j]
            b = int(ranked[0])
            best = self.option(b, float(x), dp[b, j], energy[b, j])
            s = next((int(i) for i in ranked[1:] if self.candidates[i][0] != best.key), None)
            f = next((int(i) for i in ranked if self.candidates[i][0].quant == FP16), None)
            out.append(LoadPoint(float(x), best,
                                 None if s is None else self.option(s, float(x), dp[s, j], energy[s, j]),
                                 None if f is None else self.option(f, float(x), dp[f, j], energy[f, j])))
        return out

    def best(self, load_qps: float) -> Option:
        return self.points(np.array([load_qps]))[0].best

    def switch(self, lo: float, hi: float, before: Option, after: Option, tol: float) -> Switch:
        """Bisect (lo, hi] for the lowest load at which ``before`` stops being the optimum."""
        while hi - lo > tol:
            mid = 0.5 * (lo + hi)
            b = self.best(mid)
            if (b.key, b.dp) == (before.key, before.dp):
                lo = mid
            else:
                hi, after = mid, b
        dp_hi = replicas_for(hi, before.saturation_qps)
        if dp_hi > before.dp:
            why = f"{before.config} would need DP{dp_hi} (saturation {before.saturation_qps:.3g} req/s per replica)"
        elif after.key == before.key:
            why = f"one more replica of {before.config}"
        else:
            why = "energy curves cross"
        return Switch(hi, before.label, after.label, why)


def plan_task(profiles: ProfileSet, task: DpTpTask, gpus: list[str] | None = None, max_instances: float = 4.0,
              points: int = 200, rel_tol: float = 1e-7) -> TaskResult:
    """The energy-optimal option at every load of the grid, and the switch points between them."""
    planner = Planner(profiles, task, gpus)
    result = TaskResult(task, planner.candidates, planner.excluded)
    if not planner.candidates:
        result.note = ("no config of " + task.model + " on " + task.workload + " meets the SLO and quality floor"
                       + (f" ({', '.join(f'{n} {why}' for why, n in planner.excluded.items())})" if planner.excluded else ""))
        return result
    top = max_instances * float(planner._sat.max())
    result.points = planner.points(np.linspace(top / points, top, points))
    tol = rel_tol * top
    for a, b in zip(result.points, result.points[1:]):
        if (a.best.key, a.best.dp) != (b.best.key, b.best.dp):
            result.switches.append(planner.switch(a.load_qps, b.load_qps, a.best, b.best, tol))
    return result


def plan(profiles: ProfileSet, tasks: list[DpTpTask], gpus: list[str] | None = None, max_instances: float = 4.0,
         points: int = 200) -> list[TaskResult]:
    if not max_instances > 0 or not math.isfinite(max_instances):
        raise DpTpError(f"max_instances must be a finite number > 0, got {max_instances}")
    if int(points) < 2:
        raise DpTpError(f"points must be a whole number >= 2, got {points}")
    if gpus is not None:
        known = sorted({k.gpu for k in profiles.configs()})
        unknown = [g for g in gpus if g not in known]
        if unknown:
            raise DpTpError(f"gpus: {', '.join(unknown)} not in the profile set {profiles.path} (GPUs: {', '.join(known)})")
    return [plan_task(profiles, t, gpus, max_instances, int(points)) for t in tasks]


# --- tables --------------------------------------------------------------------------------------

def _opt_cols(prefix: str, o: Option | None) -> dict:
    if o is None:
        return {f"{prefix}_config": "", f"{prefix}_dp": np.nan, f"{prefix}_gpus": np.nan,
                f"{prefix}_energy_per_token_j": np.nan}
    return {f"{prefix}_config": o.config, f"{prefix}_dp": o.dp, f"{prefix}_gpus": o.gpus,
            f"{prefix}_energy_per_token_j": o.energy_per_token_j}


def grid_frame(results: list[TaskResult]) -> pd.DataFrame:
    rows = []
    for r in results:
        for p in r.points:
            b = p.best
            row = {"task": r.task.name, "model": r.task.model, "workload": r.task.workload, "load_qps": p.load_qps,
                   "gpu": b.key.gpu, "quant": b.key.quant, "tp": b.key.tp, "dp": b.dp, "gpus": b.gpus,
                   "per_replica_qps": b.per_replica_qps, "saturation_qps": b.saturation_qps,
                   "energy_per_token_j": b.energy_per_token_j, "pool_power_w": b.pool_power_w,
                   "idle_share": b.idle_share}
            row.update(_opt_cols("second", p.second))
            row.update(_opt_cols("fp16", p.fp16))
            row["margin_vs_second_pct"] = (100 * (p.second.energy_per_token_j / b.energy_per_token_j - 1)
                                           if p.second else np.nan)
            row["saving_vs_fp16_pct"] = 100 * (1 - b.energy_per_token_j / p.fp16.energy_per_token_j) if p.fp16 else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def segments_frame(results: list[TaskResult]) -> pd.DataFrame:
    """Maximal load ranges over which one (config, DP) is optimal, with its margins. Range ends are the
    bisected switch points (the first range starts at 0, the last ends at the grid's top)."""
    grid = grid_frame(results)
    rows = []
    for r in results:
        g = grid[grid["task"] == r.task.name]
        if g.empty:
            continue
        ident = (g["gpu"] + "/" + g["quant"] + "/" + g["tp"].astype(str) + "/" + g["dp"].astype(str)).to_numpy()
        cuts = [0] + [i for i in range(1, len(g)) if ident[i] != ident[i - 1]] + [len(g)]
        assert len(cuts) - 2 == len(r.switches), (r.task.name, len(cuts), len(r.switches))
        for n, (a, b) in enumerate(zip(cuts, cuts[1:])):
            seg = g.iloc[a:b]
            first, last = seg.iloc[0], seg.iloc[-1]
            rows.append({
                "task": r.task.name,
                "from_qps": r.switches[n - 1].load_qps if n else 0.0,
                "to_qps": r.switches[n].load_qps if n < len(r.switches) else float(last["load_qps"]),
                "gpu": first["gpu"], "quant": first["quant"], "tp": int(first["tp"]), "dp": int(first["dp"]),
                "gpus": int(first["gpus"]),
                "energy_min_j": float(seg["energy_per_token_j"].min()),
                "energy_max_j": float(seg["energy_per_token_j"].max()),
                "idle_share_max": float(seg["idle_share"].max()),
                "margin_vs_second_min_pct": float(seg["margin_vs_second_pct"].min()),
                "margin_vs_second_max_pct": float(seg["margin_vs_second_pct"].max()),
                "second_at_end": (f"{last['second_config']} x DP{int(last['second_dp'])}" if last["second_config"] else ""),
                "saving_vs_fp16_min_pct": float(seg["saving_vs_fp16_pct"].min()),
                "saving_vs_fp16_max_pct": float(seg["saving_vs_fp16_pct"].max()),
                "fp16_at_end": (f"{last['fp16_config']} x DP{int(last['fp16_dp'])}" if last["fp16_config"] else ""),
            })
    return pd.DataFrame(rows)


def _range(lo: float, hi: float, fmt: str = ".3f", unit: str = "") -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "-"
    return f"{lo:{fmt}}{unit}" if abs(hi - lo) < 10 ** -6 else f"{lo:{fmt}}-{hi:{fmt}}{unit}"


def markdown(results: list[TaskResult], profiles: ProfileSet, tasks_from: str, gpus: list[str] | None,
             max_instances: float, provenance: str = "") -> str:
    seg = segments_frame(results)
    lines = [f"# Energy-optimal (quant, GPU, TP, DP) per task and load (§8.2) on `{profiles.path.name}`", "",
             f"Profile set: `{profiles.path}`. Tasks: {tasks_from}. GPUs: "
             f"{', '.join(gpus) if gpus else 'every GPU of the set'}. Loads: near zero to {max_instances:g} x the "
             "largest single-replica saturation of the task's configs. DP = ceil(x / x_s), load spread evenly.", "",
             f"Energy counted: {ENERGY_COUNTED}", ""]
    if provenance:
        lines += [f"Rows used: {provenance}.", ""]
    for r in results:
        t = r.task
        floor = f", quality >= {t.quality_min:g}" if t.quality_min is not None else ""
        lines += [f"## {t.name}: {t.model} on {t.workload}, SLO P90 TTFT {t.slo.ttft_s:g} s / P90 TPOT "
                  f"{t.slo.tpot_s:g} s{floor}", ""]
        excl = "; ".join(f"{n} {why}" for why, n in r.excluded.items())
        lines.append(f"{len(r.candidates)} config{'s' if len(r.candidates) != 1 else ''} qualify" + (f" (excluded: {excl})" if excl else "") + ".")
        if r.note:
            lines += ["", f"Nothing to plan: {r.note}.", ""]
            continue
        lines += ["", "| load (req/s) | optimal config | DP | GPUs | J / output token | idle share | "
                  "margin vs 2nd best | 2nd best at the range's end | saving vs best FP16 | best FP16 at the end |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in seg[seg["task"] == t.name].itertuples(index=False):
            lines.append(
                f"| {row.from_qps:.3g}-{row.to_qps:.3g} | {row.gpu} {row.quant} TP{row.tp} | {row.dp} | {row.gpus} | "
                f"{_range(row.energy_min_j, row.energy_max_j, '.3g')} | "
                f"<= {100 * row.idle_share_max:.0f} % | "
                f"{_range(row.margin_vs_second_min_pct, row.margin_vs_second_max_pct, '.1f', ' %')} | "
                f"{row.second_at_end or '-'} | "
                f"{_range(row.saving_vs_fp16_min_pct, row.saving_vs_fp16_max_pct, '.1f', ' %')} | {row.fp16_at_end or '-'} |")
        if r.switches:
            lines += ["", "Switch points: " + "; ".join(f"{s.load_qps:.4g} req/s {s.before} -> {s.after} ({s.why})"
                                                         for s in r.switches) + "."]
        lines.append("")
    return "\n".join(lines) + "\n"


# --- figure --------------------------------------------------------------------------------------

def figure(results: list[TaskResult], path: Path, title: str = "") -> Path | None:
    """Per task: energy per token of the optimum (coloured by config), the next-best config and the best FP16;
    savings vs FP16 and margin over the next best; GPUs provisioned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [r for r in results if r.points]
    if not drawn:
        return None
    fig, axes = plt.subplots(len(drawn), 3, figsize=(16, 3.4 * len(drawn)), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for row, r in zip(axes, drawn):
        x = np.array([p.load_qps for p in r.points])
        best = np.array([p.best.energy_per_token_j for p in r.points])
        configs = list(dict.fromkeys(p.best.config for p in r.points))
        colour = {c: cmap(i % 10) for i, c in enumerate(configs)}
        ax = row[0]
        for c in configs:
            mask = np.array([p.best.config == c for p in r.points])
            ax.scatter(x[mask], best[mask], s=9, color=colour[c], label=f"optimum: {c}", zorder=3)
        second = np.array([p.second.energy_per_token_j if p.second else np.nan for p in r.points])
        fp16 = np.array([p.fp16.energy_per_token_j if p.fp16 else np.nan for p in r.points])
        ax.plot(x, second, color="0.6", lw=1, label="next-best other config")
        ax.plot(x, fp16, color="k", lw=1, ls="--", label="best FP16 (any GPU, TP, DP)")
        for s in r.switches:
            ax.axvline(s.load_qps, color="0.8", lw=0.7, zorder=0)
        ax.set_yscale("log")
        ax.set_xlabel("load (req/s)")
        ax.set_ylabel("J / output token")
        t = r.task
        ax.set_title(f"{t.name}: {t.model}, {t.workload}, SLO {t.slo.ttft_s:g} s / {t.slo.tpot_s:g} s", fontsize=9)
        ax.legend(fontsize=6, loc="upper right")
        ax = row[1]
        save = np.array([100 * (1 - p.best.energy_per_token_j / p.fp16.energy_per_token_j) if p.fp16 else np.nan
                         for p in r.points])
        margin = np.array([100 * (p.second.energy_per_token_j / p.best.energy_per_token_j - 1) if p.second else np.nan
                           for p in r.points])
        ax.plot(x, save, color="tab:green", label="saving vs best FP16 (%)")
        ax.plot(x, margin, color="tab:purple", label="margin over next best (%)")
        for s in r.switches:
            ax.axvline(s.load_qps, color="0.8", lw=0.7, zorder=0)
        ax.set_xlabel("load (req/s)")
        ax.set_ylabel("%")
        ax.legend(fontsize=7)
        ax.set_title("by how much it wins", fontsize=9)
        ax = row[2]
        ax.step(x, [p.best.gpus for p in r.points], where="post", color="tab:blue", label="GPUs of the optimum")
        ax.step(x, [p.fp16.gpus if p.fp16 else np.nan for p in r.points], where="post", color="k", ls="--",
                label="GPUs of the best FP16")
        ax.set_xlabel("load (req/s)")
        ax.set_ylabel("GPUs (DP x TP)")
        ax.legend(fontsize=7)
        ax.set_title("GPUs provisioned", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """PNG written to a temporary name, then renamed into place."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_outputs(results: list[TaskResult], profiles: ProfileSet, out: Path, tasks_from: str,
                  gpus: list[str] | None, max_instances: float, provenance: str = "") -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"grid": out / "dp_tp.csv", "segments": out / "dp_tp_segments.csv", "markdown": out / "dp_tp.md"}
    write_text(paths["grid"], grid_frame(results).to_csv(index=False, float_format="%.6g"))
    write_text(paths["segments"], segments_frame(results).to_csv(index=False, float_format="%.6g"))
    write_text(paths["markdown"], markdown(results, profiles, tasks_from, gpus, max_instances, provenance))
    png = figure(results, out / "dp_tp.png", f"Energy-optimal (quant, GPU, TP, DP), {profiles.path.name}")
    if png is not None:
        paths["figure"] = png
    return paths


def rows_used(profiles: ProfileSet, results: list[TaskResult]) -> str:
    from experiments.provenance import ProvenanceIndex

    index = ProvenanceIndex(profiles)
    curves = [(k, r.task.workload) for r in results for k, _ in r.candidates]
    quality = [(k.model, k.quant, r.task.name) for r in results if r.task.quality_min is not None for k, _ in r.candidates]
    return index.describe(curves=curves, quality=quality)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.dp_tp", description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=Path, default=None, help="profile set folder (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=Path("outputs/dp_tp"))
    parser.add_argument("--tasks", default="auto", choices=TASK_MODES)
    parser.add_argument("--slo", default="case_study", help="SLO set under experiments/conf/slo/")
    parser.add_argument("--cluster", default="case_study", help="pools under experiments/conf/cluster/")
    parser.add_argument("--gpus", nargs="+", default=None, help="GPU types to consider (default: all in the set)")
    parser.add_argument("--max-instances", type=float, default=4.0)
    parser.add_argument("--points", type=int, default=200)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        profiles = ProfileSet.load(args.profiles or default_profile_path())
        tasks, where = resolve_tasks(profiles, args.tasks, args.slo, args.cluster)
        results = plan(profiles, tasks, args.gpus, args.max_instances, args.points)
        paths = write_outputs(results, profiles, args.out, where, args.gpus, args.max_instances,
                              rows_used(profiles, results))
    except (ProfileError, DpTpError) as exc:
        print(f"dp_tp: {exc}", file=sys.stderr)
        return 2
    for r in results:
        wins = " -> ".join(dict.fromkeys(p.best.config for p in r.points)) or r.note
        print(f"{r.task.name}: {wins}")
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
