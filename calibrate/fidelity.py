"""How closely the simulator reproduces a real engine: held-out sweep points, replays and saturation.

For every entry of a plan, from its results database alone (CPU only):

1. the step model is fitted on the entry's fixed-concurrency fit runs only (``calibrate.export.fit_only``, with
   the capacities and scheduling facts the plan states);
2. every sweep burst (and every replay of a trace slice, phase ``replay``, when the database has one) is
   replayed through ``sim.instance`` with the requests' measured send times (plus the fitted per-request
   overhead outside the engine) and their usage lengths; per point the measured and simulated P50/P90 TTFT,
   P50/P90 TPOT, output-token throughput and energy per output token, and their absolute percentage errors.
   Simulated energy is the step model's iteration energy plus ``idle_w`` over the rest of the same window NVML
   measured (``calibrate.coordinator`` reads the counter around the whole burst: the window starts just before
   the first request is sent and ends after the last token, ``window_s``);
3. replays also get the two-sample Kolmogorov-Smirnov distance of per-request TTFT and TPOT;
4. the saturation search (same SLO, search settings, burst plan and common random numbers:
   ``calibrate.arrivals.BurstPlan`` and ``calibrate.sim_probe.SimulatedProbe``) runs on the simulated instance
   and is compared with the measured saturation QPS.

Nothing is fitted on the sweep or replay points. ``ablation`` repeats 2 without the engine facts, one at a time,
to show what each part of the instance model is worth.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.stats import ks_2samp

from calibrate.arrivals import BurstPlan
from calibrate.db import ResultsDB
from calibrate.export import fit_only
from calibrate.fit import StepFit
from calibrate.loadgen import RequestRecord
from calibrate.plan import Plan, PlanEntry, shown_path
from calibrate.replay import replay_prefixes
from calibrate.probe_stats import probe_result, tpot_s
from calibrate.search import find_saturation
from calibrate.sim_probe import SimulatedProbe
from profiles.profile_set import LatencySlo
from profiles.step_model import StepModel
from sim.instance import replay_single_instance
from sim.prefix_cache import PrefixCacheSettings
from sim.requests import RequestTable
from traces.trace import Trace

METRICS = ("p50_ttft_s", "p90_ttft_s", "p50_tpot_s", "p90_tpot_s", "output_tokens_per_s",
           "energy_per_output_token_j")
LABELS = {"p50_ttft_s": "P50 TTFT", "p90_ttft_s": "P90 TTFT", "p50_tpot_s": "P50 TPOT", "p90_tpot_s": "P90 TPOT",
          "output_tokens_per_s": "throughput", "energy_per_output_token_j": "energy/token"}
UNITS = {"p50_ttft_s": ("ms", 1e3), "p90_ttft_s": ("ms", 1e3), "p50_tpot_s": ("ms", 1e3), "p90_tpot_s": ("ms", 1e3),
         "output_tokens_per_s": ("tok/s", 1.0), "energy_per_output_token_j": ("J", 1.0)}
TARGETS_PCT = {"p90_ttft_s": 10.0, "p90_tpot_s": 10.0, "energy_per_output_token_j": 10.0}
SATURATION_TARGET_PCT = 10.0
REPLAY_TTFT_TARGET_PCT = 25.0  # P90 TTFT of every replayed trace slice
QUANT_LABEL = {"fp16": "FP16", "w4a16-int": "NF4"}


@dataclass(frozen=True)
class PointRow:
    entry: str
    quant: str
    workload: str
    phase: str  # "sweep" or "replay"
    point: str  # point key
    qps: float
    n_requests: int
    measured: dict
    simulated: dict
    ape_pct: dict
    ks: dict = field(default_factory=dict)  # replays: KS distance of per-request TTFT and TPOT
    # replays: per-request arrays in send order (send_s, input/output tokens, measured/simulated TTFT and TPOT)
    samples: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class SaturationRow:
    entry: str
    quant: str
    workload: str
    slo_ttft_s: float
    slo_tpot_s: float
    measured_qps: float
    simulated_qps: float
    ape_pct: float
    measured_probes: int
    simulated_probes: int


@dataclass(frozen=True)
class MissingReplay:
    entry: str
    name: str
    status: str  # what the database holds: "not in the database", "running", "interrupted", "failed"
    note: str


@dataclass(frozen=True)
class FidelityReport:
    plan: str
    results_db: str
    rows: tuple[PointRow, ...]
    saturation: tuple[SaturationRow, ...]
    missing_replays: tuple[MissingReplay, ...]
    fits: dict  # entry -> {"step": dict, "request_overhead_s", "notes", "fit_runs"}
    ablation: dict = field(default_factory=dict)  # variant -> {"median"|"mape"|"max": {metric: APE % over sweeps}}

    def medians(self, phase: str = "sweep", entry: str | None = None, workload: str | None = None) -> dict:
        rows = [r for r in self.rows if r.phase == phase and (entry is None or r.entry == entry)
                and (workload is None or r.workload == workload)]
        return {m: _median([r.ape_pct.get(m, math.nan) for r in rows]) for m in METRICS}

    def mape(self, phase: str = "sweep") -> dict:
        rows = [r for r in self.rows if r.phase == phase]
        return {m: _mean([r.ape_pct.get(m, math.nan) for r in rows]) for m in METRICS}

    def groups(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys((r.entry, r.workload) for r in self.rows if r.phase == "sweep"))


def _median(values: Sequence[float]) -> float:
    v = [x for x in values if math.isfinite(x)]
    return float(np.median(v)) if v else math.nan


def _mean(values: Sequence[float]) -> float:
    v = [x for x in values if math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def _ape(measured: float, simulated: float) -> float:
    if not (math.isfinite(measured) and math.isfinite(simulated)) or measured == 0:
        return math.nan
    return 100.0 * abs(simulated - measured) / abs(measured)


# --- one point -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replayed:
    """A measured point and its simulated twin (per-request arrays in send order)."""

    measured: dict
    simulated: dict
    ttft_s: tuple[np.ndarray, np.ndarray]  # (measured, simulated)
    tpot_s: tuple[np.ndarray, np.ndarray]
    send_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray


def replay_point(step: StepModel, request_overhead_s: float, qps: float, records: Sequence[RequestRecord],
                 energy_j: float | None = None, window_s: float | None = None,
                 prefixes: dict[int, tuple[int, int]] | None = None,
                 prefix_cache: PrefixCacheSettings | None = None, graphs: set | None = None) -> Replayed | None:
    """Replay a measured point's requests through one simulated instance.

    Times are those of the load generator (send times from its start); requests reach the instance
    ``request_overhead_s`` after they were sent. The simulated energy covers the same window as the measured:
    iteration energy, plus ``idle_w`` for the rest of the simulated run, plus ``idle_w`` for the part of the
    measured window after the last token (``window_s`` minus the last measured finish). ``prefixes`` maps a
    request's index to (shared-prefix id, prefix tokens) for replays that share prefixes on purpose; with
    ``prefix_cache`` the simulated instance reuses them as the engine's prefix cache does. ``graphs``: the CUDA
    graphs the engine had captured before this point (updated with the point's own)."""
    recs = sorted((r for r in records if r.ok), key=lambda r: r.send_s)
    if len(recs) < 2:
        return None
    send = np.array([r.send_s for r in recs])
    first_m = np.array([r.first_token_s for r in recs])
    finish_m = np.array([r.finish_s for r in recs])
    inp = np.array([r.prompt_tokens for r in recs], dtype=np.int64)
    out = np.array([r.completion_tokens for r in recs], dtype=np.int64)
    origin = min(0.0, float(send[0]))
    arrival = send - origin + request_overhead_s
    prefix_id = prefix_tokens = None
    if prefixes:
        pairs = [prefixes.get(r.index, (-1, 0)) for r in recs]
        prefix_id = np.array([g for g, _ in pairs], dtype=np.int64)
        prefix_tokens = np.minimum(np.array([t for _, t in pairs], dtype=np.int64), inp)
    table = RequestTable(Trace(arrival, inp, out, np.zeros(len(recs), dtype=np.int64), ("replay",), "replay",
                               prefix_id, prefix_tokens))
    instance = replay_single_instance(step, table, prefix_cache=prefix_cache, graphs=graphs)
    first_s = np.array(table.first_token_s) + origin
    finish_s = np.array(table.finish_s) + origin
    rejected = sum(1 for s in table.status if s != 1)
    sim_energy = None
    if energy_j is not None and window_s is not None and math.isfinite(energy_j):
        end = float(np.nanmax(np.array(table.finish_s)))
        busy_j, idle_j = instance.energy_j(end)
        after = max(float(window_s) - (float(finish_m.max()) - origin), 0.0)
        sim_energy = busy_j + idle_j + step.idle_w * after
    meas = probe_result(qps, send, first_m, finish_m, out, energy_j)
    sim = probe_result(qps, send, first_s, finish_s, out, sim_energy, rejected)
    return Replayed({m: getattr(meas, m) for m in METRICS}, {m: getattr(sim, m) for m in METRICS},
                    (first_m - send, first_s - send), (tpot_s(first_m, finish_m, out), tpot_s(first_s, finish_s, out)),
                    send, inp, out)


def point_row(entry: PlanEntry, workload: str, phase: str, point: str, qps: float, records: Sequence[RequestRecord],
              step: StepModel, request_overhead_s: float, energy_j: float | None, window_s: float | None,
              with_ks: bool = False, prefixes: dict[int, tuple[int, int]] | None = None,
              prefix_cache: PrefixCacheSettings | None = None, graphs: set | None = None) -> PointRow | None:
    rep = replay_point(step, request_overhead_s, qps, records, energy_j, window_s, prefixes, prefix_cache, graphs)
    if rep is None:
        return None
    ks, samples = {}, {}
    if with_ks:
        samples = {"send_s": rep.send_s, "input_tokens": rep.input_tokens, "output_tokens": rep.output_tokens,
                   "measured_ttft_s": rep.ttft_s[0], "simulated_ttft_s": rep.ttft_s[1],
                   "measured_tpot_s": rep.tpot_s[0], "simulated_tpot_s": rep.tpot_s[1]}
        for name, (a, b) in (("ttft", rep.ttft_s), ("tpot", rep.tpot_s)):
            a, b = a[np.isfinite(a)], b[np.isfinite(b)]
            if a.size and b.size:
                with warnings.catch_warnings():  # ties make scipy fall back from the exact p-value: not used
                    warnings.simplefilter("ignore", RuntimeWarning)
                    ks[name] = float(ks_2samp(a, b).statistic)
    return PointRow(entry.name, entry.quant, workload, phase, point, float(qps),
                    int(sum(1 for r in records if r.ok)), rep.measured, rep.simulated,
                    {m: _ape(rep.measured[m], rep.simulated[m]) for m in METRICS}, ks, samples)


# --- one entry ---------------------------------------------------------------------------------------------


def _replay_qps(records: Sequence[RequestRecord]) -> float:
    ok = [r for r in records if r.ok]
    span = max(r.send_s for r in ok) - min(r.send_s for r in ok) if len(ok) > 1 else 0.0
    return (len(ok) - 1) / span if span > 0 else 0.0


def entry_rows(plan: Plan, db: ResultsDB, entry: PlanEntry, fit: StepFit) -> tuple[list[PointRow], list[MissingReplay]]:
    """Every held-out sweep point and replay, replayed through the simulated instance. Points are replayed in the
    order the engine measured them, per qfleet-calibrate invocation (one engine launch), so CUDA graphs the engine
    captured in earlier points (fit runs, search bursts) are already there when a later point replays."""
    rows: list[PointRow] = []
    missing: list[MissingReplay] = []
    replays = {r.name: r for r in plan.replays_for(entry)}
    stored_replays = {p.key.point_key: p for p in db.points(entry=entry.name, phase="replay")}
    for name in dict.fromkeys(list(replays) + list(stored_replays)):
        p = stored_replays.get(name)
        if p is None:
            missing.append(MissingReplay(entry.name, name, "not in the database", "never measured"))
        elif p.status != "done":
            missing.append(MissingReplay(entry.name, name, p.status,
                                         f"{p.attempt} attempt(s); last error: {(p.error or 'none recorded')[:160]}"))
    capture = fit.step.graph_capture_s > 0.0
    points = sorted(db.points(entry=entry.name, status="done"), key=lambda p: (p.run_id or 0, p.started_at or 0.0))
    graphs: dict[int, set] = {}
    for p in points:
        phase = p.key.phase
        warm = graphs.setdefault(p.run_id or 0, set()) if capture else None
        if phase not in ("sweep", "replay"):
            if capture:  # what the engine captured in this point stays captured for the later ones
                replay_point(fit.step, fit.request_overhead_s, 0.0, db.requests(p.id), graphs=warm)
            continue
        records = db.requests(p.id)
        if phase == "sweep":
            row = point_row(entry, p.key.workload, "sweep", p.key.point_key, float(p.qps), records, fit.step,
                            fit.request_overhead_s, p.energy_j, p.window_s, graphs=warm)
            if row is not None:
                rows.append(row)
            continue
        name = p.key.point_key
        spec = replays.get(name)
        prefixes = replay_prefixes(spec) if spec is not None and spec.shared_prefix is not None else None
        cache = None
        if prefixes:
            block = int(plan.stated_capacity(entry)[0].get("prefix_block_tokens") or 0)
            cache = PrefixCacheSettings(block_tokens=block) if block > 0 else None
            if cache is None:
                missing.append(MissingReplay(entry.name, name, "done", "shares prefixes on purpose, but the plan "
                                             "states no scheduling.prefix_block_tokens: simulated without a cache"))
        before = set(warm) if warm is not None else None
        row = point_row(entry, p.key.workload, "replay", name, _replay_qps(records), records, fit.step,
                        fit.request_overhead_s, p.energy_j, p.window_s, with_ks=True, prefixes=prefixes,
                        prefix_cache=cache, graphs=warm)
        if row is not None:
            rows.append(row)
        if cache is not None:  # what the same replay looks like to a simulator without the engine's prefix cache
            off = point_row(entry, p.key.workload, "replay-no-prefix-cache", name, _replay_qps(records), records,
                            fit.step, fit.request_overhead_s, p.energy_j, p.window_s, with_ks=True, graphs=before)
            if off is not None:
                rows.append(off)
    return rows, missing


def entry_saturation(plan: Plan, db: ResultsDB, entry: PlanEntry, fit: StepFit) -> list[SaturationRow]:
    out = []
    b = plan.burst
    for s in db.saturations(entry.name):
        bp = BurstPlan.for_workload(s["workload"], b.seed, b.burst_s, b.min_requests, b.max_requests,
                                    b.max_total_tokens)
        probe = SimulatedProbe(fit.step, bp.input_tokens, bp.output_tokens, seed=b.seed, burst_s=b.burst_s,
                               min_requests=b.min_requests, max_requests=b.max_requests,
                               request_overhead_s=fit.request_overhead_s)
        found = find_saturation(probe, LatencySlo(s["slo_ttft_s"], s["slo_tpot_s"]), plan.search)
        out.append(SaturationRow(entry.name, entry.quant, s["workload"], s["slo_ttft_s"], s["slo_tpot_s"],
                                 float(s["saturation_qps"]), float(found.saturation_qps),
                                 _ape(float(s["saturation_qps"]), float(found.saturation_qps)), int(s["probes"]),
                                 len(found.probes)))
    return out


# Ablation: the instance model without (some of) the engine facts the plan states.
def _variants(stated: dict) -> dict[str, dict | None]:
    cap = {k: v for k, v in stated.items() if k in ("kv_capacity_tokens", "max_batch", "max_num_tokens")}
    return {
        "capacity = largest fit run (lower bound), linear KV, admission at the boundary": None,
        "+ the engine's capacity (stated in the plan)": dict(cap),
        "+ KV padded to 16,384-token CUDA-graph shapes": {**cap, "kv_pad_tokens": stated.get("kv_pad_tokens", 0)},
        "+ host admission": {k: v for k, v in stated.items() if k != "graph_q_pad_tokens"},
        "+ CUDA-graph capture of new shapes (final)": dict(stated),
    }


def fidelity_report(plan: Plan, db: ResultsDB, saturation: bool = True, ablation: bool = False,
                    entries: Sequence[str] | None = None) -> FidelityReport:
    rows: list[PointRow] = []
    sat: list[SaturationRow] = []
    missing: list[MissingReplay] = []
    fits: dict = {}
    ablation_rows: dict[str, list[PointRow]] = {}
    for entry in plan.entries:
        if entries is not None and entry.name not in entries:
            continue
        if not db.points(entry=entry.name, phase="fit", status="done"):
            continue
        stated, source = plan.stated_capacity(entry)
        fit, runs = fit_only(db, entry, stated, source)
        fits[entry.name] = {"step": fit.step.as_dict(), "request_overhead_s": fit.request_overhead_s,
                            "notes": list(fit.notes), "fit_runs": len(runs), "capacity_source": fit.capacity_source,
                            "observation_mape_pct": fit.mape_pct, "power_mape_pct": fit.power_mape_pct}
        r, m = entry_rows(plan, db, entry, fit)
        rows += r
        missing += m
        if saturation:
            sat += entry_saturation(plan, db, entry, fit)
        if ablation:
            for name, variant in _variants(stated).items():
                vfit = fit if variant == stated else fit_only(db, entry, variant or {}, source)[0]
                vrows = [r for r in entry_rows(plan, db, entry, vfit)[0] if r.phase == "sweep"]
                ablation_rows.setdefault(name, []).extend(vrows)
    abl = {name: {"median": {m: _median([r.ape_pct.get(m, math.nan) for r in vr]) for m in METRICS},
                  "mape": {m: _mean([r.ape_pct.get(m, math.nan) for r in vr]) for m in METRICS},
                  "max": {m: max((r.ape_pct[m] for r in vr if math.isfinite(r.ape_pct[m])), default=math.nan)
                          for m in METRICS}}
           for name, vr in ablation_rows.items()}
    return FidelityReport(plan.name, str(db.path), tuple(rows), tuple(sat), tuple(missing), fits, abl)


# --- output ------------------------------------------------------------------------------------------------


def _fmt(metric: str, value: float) -> str:
    if not math.isfinite(value):
        return "-"
    unit, scale = UNITS[metric]
    v = value * scale
    return f"{v:.3f}" if unit == "J" else f"{v:.0f}" if unit == "tok/s" else f"{v:.1f}"


def _pct(value: float) -> str:
    return f"{value:.1f}" if math.isfinite(value) else "-"


def point_table(report: FidelityReport, phase: str = "sweep") -> str:
    """Markdown: one row per point, measured / simulated and APE per metric."""
    head = ["config", "workload", "req/s"] + [f"{LABELS[m]} ({UNITS[m][0]}) meas / sim (APE %)" for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report.rows:
        if r.phase != phase:
            continue
        cells = [QUANT_LABEL.get(r.quant, r.quant), r.workload, f"{r.qps:.3g}"]
        cells += [f"{_fmt(m, r.measured[m])} / {_fmt(m, r.simulated[m])} ({_pct(r.ape_pct[m])})" for m in METRICS]
        if r.ks:
            cells[-1] += f"; KS TTFT {r.ks.get('ttft', math.nan):.3f}, TPOT {r.ks.get('tpot', math.nan):.3f}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def median_table(report: FidelityReport) -> str:
    """Markdown: median APE per metric, overall and per entry/workload, against the targets."""
    head = ["points"] + [f"{LABELS[m]}" for m in METRICS]
    lines = ["| median APE % | " + " | ".join(head[1:]) + " |", "|" + "---|" * len(head)]
    groups = [("all sweep points", None, None)] + [
        (f"{QUANT_LABEL.get(_quant(report, e), e)} {w}", e, w) for e, w in report.groups()]
    for label, e, w in groups:
        med = report.medians("sweep", e, w)
        n = sum(1 for r in report.rows if r.phase == "sweep" and (e is None or r.entry == e)
                and (w is None or r.workload == w))
        lines.append(f"| {label} ({n}) | " + " | ".join(_pct(med[m]) for m in METRICS) + " |")
    lines.append("| target | " + " | ".join(f"<= {TARGETS_PCT[m]:.0f}" if m in TARGETS_PCT else "" for m in METRICS)
                 + " |")
    mape = report.mape("sweep")
    lines.append("| MAPE, all sweep points | " + " | ".join(_pct(mape[m]) for m in METRICS) + " |")
    return "\n".join(lines)


def _quant(report: FidelityReport, entry: str) -> str:
    for r in report.rows:
        if r.entry == entry:
            return r.quant
    return entry


def saturation_table(report: FidelityReport) -> str:
    lines = ["| config | workload | SLO P90 TTFT / TPOT | measured req/s | simulated req/s | APE % | probes meas / sim |",
             "|---|---|---|---|---|---|---|"]
    for s in report.saturation:
        lines.append(f"| {QUANT_LABEL.get(s.quant, s.quant)} | {s.workload} | {s.slo_ttft_s:g} s / {s.slo_tpot_s:g} s | "
                     f"{s.measured_qps:.4g} | {s.simulated_qps:.4g} | {_pct(s.ape_pct)} | "
                     f"{s.measured_probes} / {s.simulated_probes} |")
    return "\n".join(lines)


def ablation_table(report: FidelityReport) -> str:
    if not report.ablation:
        return ""
    ms = ("p90_ttft_s", "p90_tpot_s", "energy_per_output_token_j")
    lines = ["| instance model | " + " | ".join(f"{LABELS[m]} median / MAPE / max APE %" for m in ms) + " |",
             "|---|" + "---|" * len(ms)]
    for name, stats in report.ablation.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{_pct(stats['median'][m])} / {_pct(stats['mape'][m])} / {_pct(stats['max'][m])}" for m in ms) + " |")
    return "\n".join(lines)


def replay_lines(report: FidelityReport) -> list[str]:
    lines = []
    if any(r.phase == "replay" for r in report.rows):
        lines += ["", "Replays (trace slices, held out; KS = two-sample Kolmogorov-Smirnov distance of per-request "
                      "values):", "", point_table(report, "replay")]
    if any(r.phase == "replay-no-prefix-cache" for r in report.rows):
        lines += ["", "The replays that share prefixes, simulated without the engine's prefix cache (what a simulator "
                      "that ignores prefix caching would predict):", "", point_table(report, "replay-no-prefix-cache")]
    for m in report.missing_replays:
        lines.append(f"- NOT MEASURED: replay '{m.name}' of {m.entry}: {m.status} in the results database ({m.note}); "
                     f"no simulated figures or KS distances are reported for it.")
    return lines


def targets_summary(report: FidelityReport) -> list[str]:
    med = report.medians("sweep")
    out = []
    for m, target in TARGETS_PCT.items():
        verdict = "met" if med[m] <= target else "MISSED"
        out.append(f"median APE {LABELS[m]} {med[m]:.1f} % (target <= {target:.0f} %): {verdict}")
    for r in report.rows:
        if r.phase == "replay":
            ape = r.ape_pct["p90_ttft_s"]
            verdict = "met" if ape <= REPLAY_TTFT_TARGET_PCT else "MISSED"
            out.append(f"replay {r.point}: P90 TTFT APE {ape:.1f} % (target <= {REPLAY_TTFT_TARGET_PCT:.0f} %): "
                       f"{verdict}")
    for s in report.saturation:
        verdict = "met" if s.ape_pct <= SATURATION_TARGET_PCT else "MISSED"
        out.append(f"saturation {QUANT_LABEL.get(s.quant, s.quant)} {s.workload}: measured {s.measured_qps:.4g}, "
                   f"simulated {s.simulated_qps:.4g} req/s ({s.ape_pct:.1f} %, target <= "
                   f"{SATURATION_TARGET_PCT:.0f} %): {verdict}")
    return out


def markdown(report: FidelityReport) -> str:
    parts = [f"# Simulator fidelity: plan '{report.plan}'", "",
             f"Recomputed from `{shown_path(report.results_db)}` by `calibrate.fidelity` (`python benchmarks/fidelity.py`). "
             f"Step model fitted on the fit runs only; every sweep burst replayed with its measured send times "
             f"and usage lengths.", "", "## Targets", ""]
    parts += [f"- {line}" for line in targets_summary(report)]
    parts += ["", "## Median absolute percentage error", "", median_table(report), "",
              "## Per sweep point (measured / simulated, APE %)", "", point_table(report), "",
              "## Saturation QPS (same search, SLO, bursts and random numbers on the simulated instance)", "",
              saturation_table(report)]
    if report.ablation:
        parts += ["", "## What each part of the instance model is worth (sweep points)", "", ablation_table(report)]
    parts += ["", "## Replays"] + (replay_lines(report) or ["", "No replay in the plan."])
    return "\n".join(parts) + "\n"


def csv_rows(report: FidelityReport) -> list[dict]:
    out = []
    for r in report.rows:
        row = {"entry": r.entry, "quant": r.quant, "workload": r.workload, "phase": r.phase, "point": r.point,
               "qps": r.qps, "n_requests": r.n_requests}
        for m in METRICS:
            row[f"measured_{m}"] = r.measured[m]
            row[f"simulated_{m}"] = r.simulated[m]
            row[f"ape_pct_{m}"] = r.ape_pct[m]
        row["ks_ttft"] = r.ks.get("ttft", math.nan)
        row["ks_tpot"] = r.ks.get("tpot", math.nan)
        out.append(row)
    return out


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summary(report: FidelityReport) -> dict:
    return {
        "plan": report.plan,
        "median_ape_pct": report.medians("sweep"),
        "mape_pct": report.mape("sweep"),
        "median_ape_pct_by_group": {f"{e} {w}": report.medians("sweep", e, w) for e, w in report.groups()},
        "saturation": [s.__dict__ for s in report.saturation],
        "replays": [{"entry": r.entry, "name": r.point, "ks": r.ks, "ape_pct": r.ape_pct}
                    for r in report.rows if r.phase == "replay"],
        "missing_replays": [m.__dict__ for m in report.missing_replays],
        "ablation_median_ape_pct": report.ablation,
        "fits": report.fits,
    }


def write_outputs(report: FidelityReport, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """fidelity.csv (per point), fidelity.md, summary.json and fidelity.png, each written to a temporary file
    and renamed into place."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    frame = pd.DataFrame(csv_rows(report))
    target = out / "fidelity.csv"
    _write_atomic(target, lambda p: frame.to_csv(p, index=False, float_format="%.6g"))
    written.append(target)
    target = out / "fidelity.md"
    _write_atomic(target, lambda p: p.write_text(markdown(report)))
    written.append(target)
    target = out / "summary.json"
    _write_atomic(target, lambda p: p.write_text(json.dumps(summary(report), indent=2, sort_keys=True,
                                                            default=_json_default) + "\n"))
    written.append(target)
    replays = replay_request_rows(report)
    if replays:
        target = out / "replay_requests.csv"
        frame = pd.DataFrame(replays)
        _write_atomic(target, lambda p: frame.to_csv(p, index=False, float_format="%.6g"))
        written.append(target)
    if plots:
        target = out / "fidelity.png"
        _write_atomic(target, lambda p: plot(report, p))
        written.append(target)
    return written


def replay_request_rows(report: FidelityReport) -> list[dict]:
    """Per request of every replay: send time, lengths, measured and simulated TTFT and TPOT."""
    rows = []
    for r in report.rows:
        if r.phase != "replay" or not r.samples:
            continue
        smp = r.samples
        for i in range(len(smp["send_s"])):
            rows.append({"entry": r.entry, "replay": r.point, **{k: v[i].item() for k, v in smp.items()}})
    return rows


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serializable: {value!r}")


def plot(report: FidelityReport, path: Path) -> None:
    """One row per entry and workload: P90 TTFT, P90 TPOT and energy per token against load, measured dots and
    simulated lines. One row per replay: the CDFs of per-request TTFT and TPOT, measured and simulated, and TTFT
    along the replay (what the KS distances summarise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = report.groups()
    replays = [r for r in report.rows if r.phase == "replay" and r.samples]
    metrics = ("p90_ttft_s", "p90_tpot_s", "energy_per_output_token_j")
    n_rows = len(groups) + len(replays)
    fig, axes = plt.subplots(n_rows, len(metrics), figsize=(4.2 * len(metrics), 3.0 * n_rows), squeeze=False)
    for i, (entry, workload) in enumerate(groups):
        rows = sorted((r for r in report.rows if r.phase == "sweep" and r.entry == entry and r.workload == workload),
                      key=lambda r: r.qps)
        sat = [s for s in report.saturation if s.entry == entry and s.workload == workload]
        qps = [r.qps for r in rows]
        for j, m in enumerate(metrics):
            ax = axes[i][j]
            unit, scale = UNITS[m]
            ax.plot(qps, [r.simulated[m] * scale for r in rows], "-", color="tab:blue", label="simulated")
            ax.plot(qps, [r.measured[m] * scale for r in rows], "o", color="black", label="measured")
            for s in sat:
                ax.axvline(s.measured_qps, color="black", ls=":", lw=0.8)
                ax.axvline(s.simulated_qps, color="tab:blue", ls=":", lw=0.8)
            med = _median([r.ape_pct[m] for r in rows])
            ax.set_title(f"{QUANT_LABEL.get(_quant(report, entry), entry)} {workload}: {LABELS[m]}\n"
                         f"median APE {med:.1f} %", fontsize=9)
            ax.set_xlabel("offered load (req/s)")
            ax.set_ylabel(f"{LABELS[m]} ({unit})")
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=8, title="dotted: saturation", title_fontsize=7)
    for k, r in enumerate(replays):
        i = len(groups) + k
        smp = r.samples
        label = f"{QUANT_LABEL.get(r.quant, r.quant)} replay {r.point}"
        for j, (name, key) in enumerate((("TTFT", "ttft"), ("TPOT", "tpot"))):
            ax = axes[i][j]
            for who, style, color in (("measured", "-", "black"), ("simulated", "--", "tab:blue")):
                v = np.sort(smp[f"{who}_{key}_s"][np.isfinite(smp[f"{who}_{key}_s"])]) * 1e3
                ax.step(v, np.arange(1, v.size + 1) / v.size, style, color=color, where="post", label=who)
            ax.set_xscale("log")
            ax.set_xlabel(f"per-request {name} (ms)")
            ax.set_ylabel("fraction of requests")
            ax.set_title(f"{label}: {name} CDF\nKS {r.ks.get(key, math.nan):.3f}, P90 APE "
                         f"{r.ape_pct[f'p90_{key}_s']:.1f} %", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        ax = axes[i][2]
        t = smp["send_s"] - smp["send_s"][0]
        ax.plot(t, smp["measured_ttft_s"] * 1e3, ".", color="black", ms=3, label="measured")
        ax.plot(t, smp["simulated_ttft_s"] * 1e3, ".", color="tab:blue", ms=3, alpha=0.6, label="simulated")
        ax.set_yscale("log")
        ax.set_xlabel("send time in the replay (s)")
        ax.set_ylabel("TTFT (ms)")
        ax.set_title(f"{label}\nTTFT per request ({r.n_requests} at {r.qps:.2f} req/s)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"qfleet-sim vs {report.plan} (held out: sweep bursts and trace replays; fit on fixed-concurrency "
                 f"runs only)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def open_plan_db(plan_file: str | Path, results_db: str | Path | None = None,
                 readonly: bool = True) -> tuple[Plan, ResultsDB]:
    """The plan (no launch checks: checkpoints need not exist here) and its results database, read-only."""
    from calibrate.plan import load_plan_file

    plan = load_plan_file(plan_file)
    db = ResultsDB(results_db or plan.results_db, plan.name, readonly=readonly)
    db.check_fingerprints({e.name: plan.entry_fingerprint(e) for e in plan.entries}, plan.legacy_fingerprints)
    return plan, db
