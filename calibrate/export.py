"""Export a plan's measurements as a profile set (``profiles.profile_set``) the simulator runs on.

Per entry: the step model fitted to its fit runs (``calibrate.fit``), the sweep bursts as curves, the
searched saturation points, and quality rows (imported or measured with lm-eval; optionally filled from
another profile set with their own provenance kept). Every measured row carries ``measured`` provenance
with the engine and its version, the GPU (NVML's name, or the absence of one), the dates and the
command. Each step-model row carries its fit domain (``profiles.fit_domain``: the longest prefill prompt,
the longest context and the largest decode concurrency of the fit runs it was fitted on), so the simulator
can say when a run goes beyond it. The manifest holds the fit report: observation errors, the held-out validation (sweep bursts
replayed through the simulator) and the notes on fixed parameters.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from calibrate.arrivals import BurstPlan
from calibrate.db import ResultsDB
from calibrate.physics import check_database, check_step_model, floors_for, violations
from calibrate.fit import FitRun, StepFit, fit_step_model, observations
from calibrate.plan import Plan, PlanEntry, shown_path
from calibrate.validate import compare
from profiles.fit_domain import UNKNOWN_DOMAIN, FitDomain
from profiles.profile_set import ProfileSet, default_profile_path, write_profile_set
from profiles.schema import CURVE_COLUMNS, CURVE_METRICS, QUALITY_COLUMNS, SATURATION_COLUMNS, STEP_MODEL_COLUMNS, \
    STEP_MODEL_OPTIONAL_COLUMNS, \
    WORKLOAD_COLUMNS
from traces.workloads import describe_workload


LATENCY_METRICS = tuple(m for m in CURVE_METRICS if m not in ("mean_power_w", "energy_per_output_token_j"))


class ExportError(RuntimeError):
    """Measurements that cannot make a profile set; names the entry."""


@dataclass(frozen=True)
class EntryFit:
    entry: str
    fit: StepFit
    validation_mape_pct: dict  # sweep bursts replayed through the simulator (held out)
    in_sample_mape_pct: dict  # fit runs replayed
    fit_runs: int
    sweep_points: int
    domain: FitDomain = UNKNOWN_DOMAIN  # prompts, contexts and batches of the fit runs


def fit_domain(runs: Sequence[FitRun]) -> FitDomain:
    """What the step model saw: of the fit runs that gave observations, the longest prefill prompt, the longest
    context (prompt + output tokens: decode runs, and prefill runs, whose later tokens are decode observations
    at batch 1) and the largest decode concurrency (a prefill run has one client)."""
    used = {o.run for o in observations(runs)}
    seen = [r for r in runs if r.label in used]
    if not seen:
        return UNKNOWN_DOMAIN
    prompts = [r.input_tokens for r in seen if r.kind == "prefill"]
    return FitDomain(max_prompt_tokens=max(prompts) if prompts else None,
                     max_context_tokens=max(r.input_tokens + r.output_tokens for r in seen),
                     max_batch=max(r.concurrency if r.kind == "decode" else 1 for r in seen))


def _date(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d") if ts else "unknown date"


def _fit_runs(db: ResultsDB, entry: PlanEntry) -> list[FitRun]:
    runs = []
    for p in db.points(entry=entry.name, phase="fit", status="done"):
        kind = p.key.point_key.split("-", 1)[0]
        runs.append(FitRun(kind, int(p.concurrency or 1), int(p.input_tokens or 0), int(p.output_tokens or 0),
                           tuple(db.requests(p.id)), p.energy_j, p.window_s))
    return runs


def fit_only(db: ResultsDB, entry: PlanEntry, stated: dict | None = None, source: str = "") -> tuple[StepFit, list]:
    """The step model of an entry fitted on its fit runs only (nothing else from the database but the idle
    baseline, the power limit and what the engine reported); returns (fit, the fit runs)."""
    runs = _fit_runs(db, entry)
    if not runs:
        raise ExportError(f"entry '{entry.name}': no finished fit runs in {db.path}; run the plan with fit.enabled")
    info = db.info(entry.name)
    idles = [v for k, v in info.items() if k.startswith("idle_w/")]
    idle_w = statistics.median(idles) if idles else None
    power_limit = (info.get("energy") or {}).get("power_limit_w")
    try:
        return fit_step_model(runs, info.get("capacity") or {}, idle_w, power_limit, stated, source), runs
    except ValueError as exc:
        raise ExportError(f"entry '{entry.name}': step-model fit failed: {exc}") from None


def fit_entry(db: ResultsDB, entry: PlanEntry, plan: Plan | None = None) -> EntryFit:
    """Fit an entry's step model on its fit runs only (with the plan's stated capacities and scheduling facts,
    when a plan is given) and replay its sweep bursts through the simulator (held out)."""
    stated, source = plan.stated_capacity(entry) if plan is not None else ({}, "")
    sfit, runs = fit_only(db, entry, stated, source)
    sweep = [(f"{p.key.workload} {p.key.point_key}", float(p.qps), db.requests(p.id))
             for p in db.points(entry=entry.name, phase="sweep", status="done")]
    _, held_out = compare(sfit.step, sweep, sfit.request_overhead_s)
    _, in_sample = compare(sfit.step, [(r.label, 0.0, r.records) for r in runs], sfit.request_overhead_s)
    return EntryFit(entry.name, sfit, held_out, in_sample, len(runs), len(sweep), fit_domain(runs))


def _provenance(plan: Plan, db: ResultsDB, entry: PlanEntry, command: str) -> str:
    info = db.info(entry.name)
    energy = info.get("energy") or {}
    gpus = energy.get("gpus")
    gpu = ", ".join(gpus) if gpus else f"no GPU energy counter ({energy.get('reason', 'not recorded')})"
    points = db.points(entry=entry.name, status="done")
    dates = sorted({_date(p.finished_at) for p in points})
    when = dates[0] if len(dates) == 1 else f"{dates[0]}..{dates[-1]}" if dates else "unknown date"
    return (f"measured: qfleet-calibrate plan '{plan.name}' entry '{entry.name}' ({entry.checkpoint}); engine "
            f"{plan.engine.kind} {plan.engine.version}; GPU {gpu}; {when}; command '{command}'")


def _quality_rows(plan: Plan, db: ResultsDB, log: Callable[[str], None]) -> tuple[list[dict], list[str]]:
    rows = [{**r, "provenance": "measured"} for r in db.quality()]
    notes = []
    have = {(r["model"], r["quant"], r["task"]) for r in rows}
    wanted = {(e.model, e.quant) for e in plan.entries}
    if plan.quality.reuse_from:
        src = default_profile_path() if plan.quality.reuse_from == "default" else Path(plan.quality.reuse_from)
        other = ProfileSet.load(src)
        for r in other.quality.to_dict("records"):
            key = (r["model"], r["quant"], r["task"])
            if (r["model"], r["quant"]) in wanted and key not in have:
                rows.append({"model": r["model"], "quant": r["quant"], "task": r["task"], "score": float(r["score"]),
                             "provenance": r["provenance"],
                             "source": f"reused from profile set {src}: {r['source']}"})
                have.add(key)
    for model, quant in sorted(wanted):
        if not any(m == model and q == quant for m, q, _ in have):
            notes.append(f"no quality score for {model}/{quant}: import lm-eval/OpenCompass results or set "
                         f"quality.reuse_from; policies that need quality cannot use this config")
    for n in notes:
        log(f"export: {n}")
    return rows, notes


def export_profile_set(plan: Plan, db: ResultsDB, command: str, path: str | Path | None = None,
                       log: Callable[[str], None] = print,
                       allow_lower_bounds: bool = False) -> tuple[Path, list[EntryFit]]:
    """Write the plan's profile set. A capacity neither stated in the plan nor reported by the engine would
    become a hard cap of the simulated instance at the largest fit run; that is refused (``ExportError``
    naming the entry and the fields) unless ``allow_lower_bounds``."""
    target = Path(path or plan.export_path)
    step_rows, curve_rows, sat_rows, fits = [], [], [], []
    workloads: set[str] = set()
    for entry in plan.entries:
        points = db.points(entry=entry.name, phase="sweep", status="done")
        if not points:
            log(f"export: entry '{entry.name}' has no finished sweep; skipped")
            continue
        ef = fit_entry(db, entry, plan)
        if ef.fit.lower_bounds and not allow_lower_bounds:
            raise ExportError(
                f"entry '{entry.name}': capacity {', '.join(ef.fit.lower_bounds)} neither reported by the engine nor "
                f"stated in the plan; the largest fit run (a lower bound) would cap the simulated instance. State "
                f"them in plan.entries[].capacity (or plan.engine.capacity) with capacity_source saying where they "
                f"come from, or export with export_lower_bounds=true to accept the lower bounds")
        if ef.fit.lower_bounds:
            log(f"export: entry '{entry.name}': {', '.join(ef.fit.lower_bounds)} = largest fit run (lower bound, "
                f"accepted by export_lower_bounds)")
        fits.append(ef)
        prov = _provenance(plan, db, entry, command)
        base = {"gpu": entry.gpu, "model": entry.model, "quant": entry.quant, "tp": entry.tp}
        fit = ef.fit
        fit_text = (f"step model fitted by calibrate.fit to {ef.fit_runs} fixed-concurrency runs "
                    f"({fit.observations} iteration observations; MAPE "
                    + ", ".join(f"{g} {v:.1f} %" for g, v in sorted(fit.mape_pct.items()))
                    + "; held-out sweep replay MAPE "
                    + ", ".join(f"{m} {v:.1f} %" for m, v in sorted(ef.validation_mape_pct.items()))
                    + "); " + "; ".join(fit.notes))
        d = ef.domain
        fit_text += (f"; fit domain (fit_max_* columns): prompts up to {d.max_prompt_tokens} tokens, contexts up to "
                     f"{d.max_context_tokens} tokens, batches up to {d.max_batch} sequences (the fit runs)")
        step_rows.append({**base, **fit.step.as_dict(), **d.as_columns(), "provenance": "measured",
                          "source": f"{prov}; {fit_text}"})
        energy_note = "energy from NVML" if db.info(entry.name).get("energy", {}).get("gpus") else \
            "no energy measured (empty energy columns)"
        for p in points:
            r = p.result
            workloads.add(p.key.workload)
            if not all(math.isfinite(getattr(r, m)) for m in LATENCY_METRICS):
                log(f"export: entry '{entry.name}' sweep point {p.key.point_key} has no finished request; "
                    f"left out of the curve")
                continue
            curve_rows.append({**base, "workload": p.key.workload, "qps": float(p.qps),
                               **{m: _num(getattr(r, m)) for m in CURVE_METRICS}, "n_requests": int(r.n_requests),
                               "provenance": "measured",
                               "source": f"{prov}; sweep burst of {r.n_requests} requests at {p.qps:.4g} req/s "
                                         f"(Poisson, seed {plan.burst.seed}); {energy_note}"})
        for s in db.saturations(entry.name):
            energy = math.nan
            if s["passing_point_id"] is not None:
                pp = [q for q in db.points(entry=entry.name, phase="search") if q.id == s["passing_point_id"]]
                if pp and pp[0].result is not None:
                    energy = pp[0].result.energy_per_output_token_j
            sat_rows.append({**base, "workload": s["workload"], "slo_ttft_s": s["slo_ttft_s"],
                             "slo_tpot_s": s["slo_tpot_s"], "saturation_qps": s["saturation_qps"],
                             "energy_per_output_token_j": _num(energy), "probes": s["probes"],
                             "provenance": "measured",
                             "source": f"{prov}; calibrate.search.find_saturation (rel_tol {plan.search.rel_tol}) "
                                       f"with Poisson bursts of {plan.burst.burst_s:g} s"
                                       + ("" if s["bounded"] else f"; not bounded: max_qps {plan.search.max_qps} "
                                                                   f"still met the SLO")})
    if not step_rows:
        raise ExportError(f"plan '{plan.name}': no entry has finished measurements in {db.path}; nothing to export")
    physics = physics_gate(plan, db, fits, log)
    quality, quality_notes = _quality_rows(plan, db, log)
    workload_rows = []
    b = plan.burst
    for w in sorted(workloads):
        bp = BurstPlan.for_workload(w, b.seed, b.burst_s, b.min_requests, b.max_requests, b.max_total_tokens)
        workload_rows.append({"workload": w, "mean_input_tokens": float(np.mean(bp.input_tokens)),
                              "mean_output_tokens": float(np.mean(bp.output_tokens)), "provenance": "derived",
                              "source": f"{describe_workload(w)}; means of the {b.max_requests} pairs the bursts "
                                        f"drew from (seed {b.seed})"})
    manifest = {
        "name": plan.name,
        "description": f"Measured by qfleet-calibrate from plan '{plan.name}' on {plan.engine.kind} "
                       f"{plan.engine.version}",
        "created": dt.date.today().isoformat(),
        "command": command,
        "engine": {"kind": plan.engine.kind, "version": plan.engine.version},
        "results_db": shown_path(db.path),
        "fit": {ef.entry: {"capacity_source": ef.fit.capacity_source,
                           "capacity_lower_bounds": list(ef.fit.lower_bounds),
                           "mape_pct": ef.fit.mape_pct, "validation_mape_pct": ef.validation_mape_pct,
                           "in_sample_replay_mape_pct": ef.in_sample_mape_pct,
                           "request_overhead_s": ef.fit.request_overhead_s, "kink_tokens": ef.fit.kink_tokens,
                           "power_mape_pct": ef.fit.power_mape_pct, "notes": list(ef.fit.notes),
                           "fit_runs": ef.fit_runs, "sweep_points": ef.sweep_points,
                           "fit_domain": ef.domain.as_dict()} for ef in fits},
        "quality_notes": quality_notes,
        "workloads": sorted(workloads),
        "physics": physics,
        "prefix_caching": {e.name: db.info(e.name).get("prefix_caching") for e in plan.entries
                           if db.info(e.name).get("prefix_caching")},
    }
    tables = {
        "step_models": pd.DataFrame(step_rows, columns=list(STEP_MODEL_COLUMNS) + list(STEP_MODEL_OPTIONAL_COLUMNS)),
        "curves": pd.DataFrame(curve_rows, columns=list(CURVE_COLUMNS)),
        "saturation": pd.DataFrame(sat_rows, columns=list(SATURATION_COLUMNS)),
        "quality": pd.DataFrame(quality, columns=list(QUALITY_COLUMNS)),
        "workloads": pd.DataFrame(workload_rows, columns=list(WORKLOAD_COLUMNS)),
    }
    return write_profile_set(target, manifest, tables), fits


def physics_gate(plan: Plan, db: ResultsDB, fits: list[EntryFit], log: Callable[[str], None]) -> dict:
    """Every point and fitted step model against the GPU's floors (``calibrate.physics``): a violation stops the
    export, naming the points, unless the plan accepts it with a reason; returns what the manifest records."""
    checked = check_database(plan, db)
    problems = violations(checked)
    for ef in fits:
        entry = plan.entry(ef.entry)
        floors = floors_for(entry.gpu, entry.model, entry.quant, entry.tp)
        prompts = [r.input_tokens for r in _fit_runs(db, entry) if r.kind == "prefill"]
        problems += [f"{ef.entry} fitted step model: {p}" for p in check_step_model(ef.fit.step, floors, prompts)]
    unchecked = sorted({f"{p.key.entry}: {v.reason}" for p, v in checked if v.status == "unchecked"})
    for line in unchecked:
        log(f"export: physics not checked for {line}")
    if problems and not plan.physics.accept_violations:
        shown = "\n  - ".join(problems[:20]) + (f"\n  - ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ExportError(
            f"plan '{plan.name}': {len(problems)} measurement(s) or fit(s) are faster than the GPU allows (prefill "
            f"FLOPs / peak, weight bytes / bandwidth, idle power); the engine did not compute what was sent (cached "
            f"prefixes, identical or truncated prompts, a wrong clock). Find out why before fitting; to publish them "
            f"anyway, set plan.physics.accept_violations=true with a reason:\n  - {shown}")
    if problems:
        log(f"export: {len(problems)} physics violation(s) accepted by the plan: {plan.physics.reason}")
    return {"checked_points": sum(1 for _, v in checked if v.status != "unchecked"), "violations": problems,
            "accepted_reason": plan.physics.reason if problems else "", "unchecked": unchecked}


def _num(x) -> float:
    return float(x) if x is not None and math.isfinite(float(x)) else math.nan
