"""The profiling loop (qMeter's Profile Coordinator, paper §3.1) for every entry of a plan.

Per entry: for each workload, the saturation search of ``calibrate.search.find_saturation`` (the same
code that draws the simulator's curves) against each SLO with short Poisson bursts, then the QPS sweep
over fractions of the highest saturation found; then the fixed-concurrency fit runs; then, if asked,
lm-eval against the served endpoint. Every burst or run is a *point* of the results database: a
finished point is never measured again (a re-run replays the search from stored probes and launches
no engine when nothing is left to measure), and a point interrupted by an engine crash or hang is
measured again after the engine is restarted, up to ``max_attempts_per_point`` tries in all.
"""

from __future__ import annotations

import math
import platform

import numpy as np
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from calibrate.arrivals import BurstPlan
from calibrate.db import PointKey, ResultsDB, StoredPoint, qps_key
from calibrate.energy import NoEnergyMeter, idle_power_w, open_energy_meter
from calibrate.lock import WriterLock
from calibrate.loadgen import EngineFailure, Endpoint, RequestSpec, run_closed_loop, run_open_loop
from calibrate.plan import Plan, PlanEntry
from calibrate.physics import check_point, floors_for, shared_prefix_tokens
from calibrate.prefix_probe import PROBE_OUTPUT_TOKENS, PROBE_ROLES, prefix_verdict, probe_prompts
from calibrate.prompt_check import PromptSample, check_prompts, raise_if_bad
from calibrate.prompts import PromptBuilder, load_tokenizer
from calibrate.quality_import import (QualityImportError, lm_eval_command, lm_eval_scores, opencompass_scores,
                                      run_lm_eval, task_rows)
from calibrate.replay import point_prompt_base, replay_prompt_base, replay_requests
from calibrate.search import ProbeResult, find_saturation, sweep, sweep_points
from calibrate.supervisor import EngineGaveUp, EngineStartError, EngineSupervisor
from calibrate.validate import measured_result

FIT_PROMPT_OFFSET = 1_000_000  # prompt indices of fit runs, away from the bursts' pool
WARMUP_PROMPT_OFFSET = 2_000_000
PROBE_PROMPT_OFFSET = 4_000_000
MIXED_PROBE_OUTPUT_TOKENS = 2  # a mixed run's probe prompts: their first token ends the mixed iteration
PROMPT_CHECK_BURST_REQUESTS = 48  # requests of each point kind whose prompts are checked before measuring


class ProbeNotMeasured(RuntimeError):
    """A search or sweep probe whose point failed every attempt: it says nothing about the SLO."""


def failed_result(qps: float, n: int) -> ProbeResult:
    nan = math.nan
    return ProbeResult(qps, 0, 0.0, nan, nan, nan, nan, nan, nan, 0.0, 0.0, nan, nan, max(n, 1))


@dataclass
class EntryReport:
    entry: str
    saturation: list[dict] = field(default_factory=list)  # workload, slo, saturation_qps, probes, bounded
    sweep_points: int = 0
    fit_runs: int = 0
    error: str = ""


@dataclass
class RunReport:
    plan: str
    entries: list[EntryReport]
    measured_points: int
    skipped_points: int
    launches: int
    restarts: int
    wall_s: float
    energy: str
    quality_notes: list[str]

    @property
    def ok(self) -> bool:
        return all(not e.error for e in self.entries)


@dataclass(frozen=True)
class FitRunSpec:
    kind: str
    concurrency: int
    input_tokens: int
    output_tokens: int
    requests: int

    @property
    def key(self) -> str:
        return f"{self.kind}-c{self.concurrency}-in{self.input_tokens}-out{self.output_tokens}"


def fit_run_specs(plan: Plan, capacity: dict) -> tuple[list[FitRunSpec], list[str]]:
    """The fit runs of an entry, clipped to what the engine can hold; notes say what was dropped."""
    f = plan.fit
    max_total = plan.burst.max_total_tokens
    kv = capacity.get("kv_capacity_tokens")
    max_batch = capacity.get("max_batch")
    max_tokens = capacity.get("max_num_tokens")
    runs, notes = [], []
    for L in f.prefill_input_tokens:
        O = f.prefill_output_tokens
        limit = [x for x in (max_tokens, (kv - O) if kv else None, max_total - O) if x is not None]
        if L > min(limit):
            notes.append(f"prefill run with {L} prompt tokens dropped (over the engine's limits {capacity} or "
                         f"max_total_tokens={max_total})")
            continue
        runs.append(FitRunSpec("prefill", 1, L, O, f.prefill_requests))
    for L in f.decode_input_tokens:
        O = f.decode_output_tokens
        if L + O > max_total or (max_tokens and L > max_tokens):
            notes.append(f"decode runs with {L} prompt tokens dropped (over the limits)")
            continue
        for B in sorted(f.decode_concurrency):
            if (max_batch and B > max_batch) or (kv and B * (L + O) > kv):
                notes.append(f"decode run c{B}-in{L} dropped: batch {B} x {L + O} tokens exceeds max_batch={max_batch} "
                             f"or kv_capacity_tokens={kv}")
                continue
            runs.append(FitRunSpec("decode", B, L, O, B * f.decode_rounds))
    Lb, Ob = f.mixed_background_input_tokens, f.mixed_background_output_tokens
    for L in f.mixed_input_tokens if f.mixed_concurrency else ():
        for B in sorted(f.mixed_concurrency):
            if (max_batch and B + 1 > max_batch) or (kv and B * (Lb + Ob) + L + 2 > kv) or \
                    (max_tokens and L + B > max_tokens) or L + 2 > max_total:
                notes.append(f"mixed run c{B}-in{L} dropped: over the engine's limits {capacity}")
                continue
            runs.append(FitRunSpec("mixed", B, L, Ob, B + f.mixed_probes))
    return runs, notes


class EntryRunner:
    """Measures one entry: engine on demand, points through the results database."""

    def __init__(self, plan: Plan, entry: PlanEntry, handler, db: ResultsDB, run_id: int, log: Callable[[str], None],
                 nvml=None):
        self.plan = plan
        self.entry = entry
        self.handler = handler
        self.db = db
        self.run_id = run_id
        self.log = log
        self.supervisor = EngineSupervisor(handler, entry, plan, db, run_id, log)
        if plan.energy.enabled:
            self.meter = open_energy_meter(entry.devices, nvml)
        else:
            self.meter = NoEnergyMeter("energy measurement disabled by plan.energy.enabled=false")
        tokenizer = None
        self.tokenizer_name = "the word approximation"
        if plan.engine.tokenizer:
            path = entry.checkpoint_ref if plan.engine.tokenizer == "checkpoint" else plan.engine.tokenizer
            tokenizer = load_tokenizer(path)
            self.tokenizer_name = f"tokenizer '{path}'"
        self.prompts = PromptBuilder(seed=plan.burst.seed, tokenizer=tokenizer, tokenizer_name=self.tokenizer_name)
        self._prompt_cache: dict[tuple, str] = {}
        self.floors = floors_for(entry.gpu, entry.model, entry.quant, entry.tp)
        self._shared_prefix = shared_prefix_tokens(plan, entry)
        self.measured = 0
        self.skipped = 0
        self._warm_launch = 0
        self._last_point: StoredPoint | None = None

    # --- the engine, lazily ------------------------------------------------------------------------

    def _engine(self) -> Endpoint:
        endpoint = self.supervisor.ensure_running()
        while self._warm_launch != self.supervisor.launches:
            self._warm_launch = self.supervisor.launches
            try:
                self._warm_up(endpoint)
            except EngineFailure as failure:
                self.supervisor.failed(failure)
                endpoint = self.supervisor.restart(f"warm-up failed: {failure}")
        return endpoint

    def _warm_up(self, endpoint: Endpoint) -> None:
        n = self.plan.engine.warmup_requests
        if n > 0:
            specs = [RequestSpec(WARMUP_PROMPT_OFFSET + i, 0.0, self._prompt(WARMUP_PROMPT_OFFSET + i, 16), 16, 4)
                     for i in range(n)]
            records = run_closed_loop(endpoint, specs, 1, self.supervisor.monitor)
            bad = [r.error for r in records if not r.ok]
            if bad:
                raise EngineFailure(f"warm-up requests failed: {bad[0]}")
        idle = idle_power_w(self.meter, self.plan.energy.idle_s)
        if idle is not None:
            self.db.set_info(self.entry.name, f"idle_w/launch{self.supervisor.launches}", idle)

    def _prompt(self, index: int, n_tokens: int, prefix: tuple[int, int] | None = None) -> str:
        key = (index, n_tokens, prefix)
        text = self._prompt_cache.get(key)
        if text is None:
            text = self.prompts.prompt(index, n_tokens, prefix)
            self._prompt_cache[key] = text
        return text

    # --- what each point sends (one place, so the prompt check sees exactly what is measured) ------------

    def burst_specs(self, workload: str, phase: str, plan_b: BurstPlan, qps: float) -> list[RequestSpec]:
        arrivals = plan_b.arrivals_s(qps)
        inp, out = plan_b.lengths(qps)
        base = point_prompt_base(f"{workload}|{phase}|{qps_key(qps)}")
        return [RequestSpec(i, float(arrivals[i]), self._prompt(base + i, int(inp[i])), int(inp[i]), int(out[i]))
                for i in range(len(arrivals))]

    def fit_specs(self, i: int, spec: "FitRunSpec") -> list[RequestSpec]:
        base = FIT_PROMPT_OFFSET + 10_000 * i
        if spec.kind == "mixed":
            return self.mixed_specs(base, spec)
        return [RequestSpec(base + j, 0.0, self._prompt(base + j, spec.input_tokens), spec.input_tokens,
                            spec.output_tokens) for j in range(spec.requests)]

    def mixed_specs(self, base: int, spec: "FitRunSpec") -> list[RequestSpec]:
        """A mixed run: ``concurrency`` background requests sent at once, then single prompts (2 output tokens)
        every ``mixed_probe_gap_s`` from 1 s on, each at a random offset within a quarter gap (seeded), so they
        land at every phase of the background's decode iterations."""
        f = self.plan.fit
        Lb, B = f.mixed_background_input_tokens, spec.concurrency
        specs = [RequestSpec(base + j, 0.0, self._prompt(base + j, Lb), Lb, spec.output_tokens) for j in range(B)]
        jitter = np.random.default_rng([self.plan.burst.seed, base]).uniform(0.0, f.mixed_probe_gap_s / 4, f.mixed_probes)
        for k in range(f.mixed_probes):
            idx = base + B + k
            specs.append(RequestSpec(idx, 1.0 + k * f.mixed_probe_gap_s + float(jitter[k]),
                                     self._prompt(idx, spec.input_tokens), spec.input_tokens, MIXED_PROBE_OUTPUT_TOKENS))
        return specs

    def replay_specs(self, replay) -> list[RequestSpec]:
        reqs = replay_requests(replay)
        base = replay_prompt_base(replay.name)
        specs = []
        for j in range(len(reqs.arrival_s)):
            n = int(reqs.input_tokens[j])
            prefix = None
            if reqs.prefix_tokens is not None and reqs.prefix_tokens[j] > 0:
                prefix = (int(point_prompt_base(f"prefix|{replay.name}") + reqs.prefix_group[j]),
                          int(reqs.prefix_tokens[j]))
            specs.append(RequestSpec(base + j, float(reqs.arrival_s[j]), self._prompt(base + j, n, prefix), n,
                                     int(reqs.output_tokens[j])))
        return specs

    def probe_specs(self) -> list[RequestSpec]:
        n = self.plan.prefix_probe.prompt_tokens
        return [RequestSpec(PROBE_PROMPT_OFFSET + k, 0.0, self._prompt(PROBE_PROMPT_OFFSET + index, n), n,
                            PROBE_OUTPUT_TOKENS) for k, (_, index) in enumerate(probe_prompts(n))]

    def prompt_samples(self) -> list[PromptSample]:
        """A sample of every kind of point the entry will measure: the first requests of two burst rates per
        workload (so prompts repeated across points show), each fit run's first two and its longest, every
        replay's first requests and longest prompts (all of a shared-prefix replay), the probe's distinct ones."""
        samples: list[PromptSample] = []
        k = PROMPT_CHECK_BURST_REQUESTS
        b = self.plan.burst
        for workload in self.entry.workloads:
            plan_b = BurstPlan.for_workload(workload, b.seed, b.burst_s, b.min_requests, b.max_requests,
                                            b.max_total_tokens)
            for qps in (self.plan.search.start_qps, self.plan.search.start_qps * 2):
                for spec in self.burst_specs(workload, "search", plan_b, qps)[:k]:
                    samples.append(PromptSample(f"search burst {workload} {qps:g} req/s request {spec.index}",
                                                spec.prompt, spec.input_tokens))
        if self.plan.fit.enabled:
            runs, _ = fit_run_specs(self.plan, self.handler.known_capacity(self.entry))
            for i, run in enumerate(runs):
                for spec in self.fit_specs(i, run)[:2]:
                    samples.append(PromptSample(f"fit {run.key} request {spec.index}", spec.prompt, spec.input_tokens))
        for replay in self.plan.replays_for(self.entry):
            reqs = replay_requests(replay)
            specs = self.replay_specs(replay)
            chosen = set(range(min(k, len(specs)))) | set(np.argsort(reqs.input_tokens)[-4:].tolist())
            if reqs.prefix_tokens is not None:
                chosen = set(range(len(specs)))
            for j in sorted(chosen):
                group = None if reqs.prefix_group is None or reqs.prefix_group[j] < 0 else int(reqs.prefix_group[j])
                samples.append(PromptSample(f"replay {replay.name} request {j}", specs[j].prompt, specs[j].input_tokens,
                                            group, int(reqs.prefix_tokens[j]) if group is not None else 0))
        if self.plan.prefix_probe.enabled:
            probe = self.probe_specs()
            for spec, role in zip(probe, PROBE_ROLES):
                if role != "same-warm":  # the repeats are the point of the probe
                    samples.append(PromptSample(f"prefix probe {role}", spec.prompt, spec.input_tokens))
        return samples

    def check_prompts(self) -> None:
        """Before any point is measured: the prompts are the vocabulary's own, of the meant length, and share no
        prefix the workload does not ask for (``calibrate.prompt_check``); a failure stops the plan."""
        check = check_prompts(self.prompts, self.prompt_samples())
        self.db.set_info(self.entry.name, "prompt_check", check.as_dict())
        raise_if_bad(check, self.tokenizer_name)
        self.log(f"[{self.entry.name}] prompts: {check.samples} sampled prompts checked ({check.method}); "
                 f"worst unknown/special share {100 * check.worst_unusable_fraction:.1f} %, worst count error "
                 f"{check.worst_count_error_tokens} tokens, longest unintended shared prefix "
                 f"{check.longest_unintended_shared_tokens} tokens")

    # --- points ------------------------------------------------------------------------------------

    def measure(self, key: PointKey, specs: Sequence[RequestSpec], qps: float | None = None,
                concurrency: int | None = None, input_tokens: int | None = None,
                output_tokens: int | None = None, open_loop: bool = False) -> StoredPoint:
        stored = self.db.get_point(key)
        if stored is not None and (stored.status == "done" or (stored.status == "failed"
                                                                and stored.run_id == self.run_id)):
            self.skipped += 1
            return stored
        if stored is not None and stored.status == "failed":
            # Failed in an earlier run: this run gives it a fresh set of attempts rather than reuse a verdict
            # that may have come from a broken engine, a crash or a foreign server.
            self.log(f"[{self.entry.name}] point {key.phase} {key.point_key} failed in an earlier run "
                     f"({stored.error}); measuring it again")
            self.db.retry_failed(stored.id)
        elif stored is not None and stored.status == "running":
            self.log(f"[{self.entry.name}] point {key.phase} {key.point_key} was left unfinished by run "
                     f"{stored.run_id} (the tool stopped mid-point); measuring it again, not counted as a failure")
        max_attempts = self.plan.max_attempts_per_point
        while True:
            stored = self.db.get_point(key)
            # Only attempts the engine failed while this tool watched count; a tool that died mid-point did not fail it.
            if stored is not None and stored.failed_attempts >= max_attempts and stored.status != "done":
                self.db.finish_point(stored.id, "failed", failed_result(qps or 0.0, len(specs)), [], None, None,
                                     error=f"gave up after {stored.failed_attempts} failed attempt(s): {stored.error}")
                self.log(f"[{self.entry.name}] point {key.phase} {key.point_key} failed {stored.failed_attempts} "
                         f"times; recorded as failed")
                return self.db.get_point(key)  # type: ignore[return-value]
            endpoint = self._engine()
            point_id, attempt = self.db.begin_point(key, self.run_id, self.supervisor.launches, qps, concurrency,
                                                    input_tokens, output_tokens)
            e0 = self.meter.read_j()
            t0 = time.perf_counter()
            try:
                if concurrency is None or open_loop:
                    records = run_open_loop(endpoint, specs, self.supervisor.monitor)
                else:
                    records = run_closed_loop(endpoint, specs, concurrency, self.supervisor.monitor)
            except EngineFailure as failure:
                self.supervisor.failed(failure)
                self.db.fail_attempt(point_id, f"{failure.kind}: {failure}")
                self.log(f"[{self.entry.name}] {failure.kind} during {key.phase} {key.point_key} "
                         f"(attempt {attempt}): {failure}")
                self.supervisor.restart(f"{failure.kind}: {failure}")  # the next point needs a healthy engine
                continue
            window = time.perf_counter() - t0
            e1 = self.meter.read_j()
            energy = (e1 - e0) if (e0 is not None and e1 is not None) else None
            ok = [r for r in records if r.ok]
            if qps is None:
                span = (max(r.finish_s for r in ok) - min(r.send_s for r in ok)) if ok else 0.0
                rate = len(ok) / span if span > 0 else 0.0
            else:
                rate = qps
            result = measured_result(rate, records, energy)
            self.db.finish_point(point_id, "done", result, records, energy, window)
            verdict = check_point(self.floors, key.phase, records, energy, window,
                                  self.db.info(self.entry.name).get(f"idle_w/launch{self.supervisor.launches}"),
                                  self._shared_prefix.get(key.point_key))
            self.db.set_physics(point_id, verdict.as_json())
            if verdict.status == "violation":
                self.log(f"[{self.entry.name}] PHYSICS: {key.phase} {key.point_key}: {verdict.describe()}; the export "
                         f"will refuse this point unless plan.physics accepts it with a reason")
            self.measured += 1
            return self.db.get_point(key)  # type: ignore[return-value]

    # --- phases ------------------------------------------------------------------------------------

    def burst_probe(self, workload: str, plan_b: BurstPlan, phase: str):
        def probe(qps: float) -> ProbeResult:
            specs = self.burst_specs(workload, phase, plan_b, qps)
            point = self.measure(PointKey(self.entry.name, workload, phase, qps_key(qps)), specs, qps=qps)
            self._last_point = point
            if point.status != "done":  # never measured: not an SLO miss, so the search cannot go on
                raise ProbeNotMeasured(f"{phase} probe of {workload} at {qps:.4g} req/s could not be measured "
                                       f"({point.error}); the search stops here instead of counting it as an SLO "
                                       f"miss. Fix the engine and re-run: finished points are kept")
            assert point.result is not None
            return point.result
        return probe

    def predicted_start(self, workload: str, slo) -> float | None:
        """With ``search.start = predicted``: the saturation that the same search finds on the simulated instance
        built from the step model fitted on this entry's (finished) fit runs, with the bursts' lengths, arrivals
        and sizes (``calibrate.predict``). It depends on stored measurements only, so a re-run predicts the same
        start and replays the stored probes. None (start at ``search.start_qps``) when the fit fails."""
        if self.plan.search.start != "predicted":
            return None
        from calibrate.export import ExportError, fit_only
        from calibrate.predict import predicted_saturation

        try:
            stated, source = self.plan.stated_capacity(self.entry)
            fit, _ = fit_only(self.db, self.entry, stated, source)
        except ExportError as exc:
            self.log(f"[{self.entry.name}] {workload}: no predicted start ({exc}); starting at "
                     f"{self.plan.search.start_qps:g} req/s")
            return None
        b = self.plan.burst
        plan_b = BurstPlan.for_workload(workload, b.seed, b.burst_s, b.min_requests, b.max_requests, b.max_total_tokens)
        search = replace(self.plan.search, start="fixed")
        predicted = predicted_saturation(fit.step, fit.request_overhead_s, plan_b.input_tokens, plan_b.output_tokens,
                                         slo, burst_s=b.burst_s, min_requests=b.min_requests,
                                         max_requests=b.max_requests, seed=b.seed, search=search)
        self.db.set_info(self.entry.name, f"predicted_saturation/{workload}/{slo.ttft_s:g}/{slo.tpot_s:g}",
                         {"saturation_qps": predicted, "method": "calibrate.predict.predicted_saturation on the step "
                          "model fitted on this entry's fit runs (calibrate.export.fit_only)"})
        self.log(f"[{self.entry.name}] {workload} SLO {slo.ttft_s:g}/{slo.tpot_s:g} s: predicted saturation "
                 f"{predicted:.4g} req/s from the fit runs' step model; the search starts there")
        return predicted if predicted > 0 else None

    def run_workload(self, workload: str, report: EntryReport) -> None:
        b = self.plan.burst
        plan_b = BurstPlan.for_workload(workload, b.seed, b.burst_s, b.min_requests, b.max_requests, b.max_total_tokens)
        search_probe = self.burst_probe(workload, plan_b, "search")
        found = []
        for slo in self.plan.slos:
            slo_key = (slo.ttft_s, slo.tpot_s)
            seq = [0]

            def recorded(qps: float, slo=slo, slo_key=slo_key, seq=seq) -> ProbeResult:
                result = search_probe(qps)
                assert self._last_point is not None
                self.db.record_probe(self.entry.name, workload, slo_key, seq[0], qps, self._last_point.id,
                                     result.meets(slo))
                seq[0] += 1
                return result

            outcome = find_saturation(recorded, slo, self.plan.search, start_qps=self.predicted_start(workload, slo))
            passing = None
            if outcome.passing is not None:
                passing = self.db.get_point(PointKey(self.entry.name, workload, "search",
                                                     qps_key(outcome.saturation_qps)))
            self.db.record_saturation(self.entry.name, workload, slo_key, outcome.saturation_qps, len(outcome.probes),
                                      outcome.bounded, passing.id if passing else None)
            report.saturation.append({"workload": workload, "slo_ttft_s": slo.ttft_s, "slo_tpot_s": slo.tpot_s,
                                      "saturation_qps": outcome.saturation_qps, "probes": len(outcome.probes),
                                      "bounded": outcome.bounded})
            self.log(f"[{self.entry.name}] {workload} SLO {slo.ttft_s:g}/{slo.tpot_s:g} s: saturation "
                     f"{outcome.saturation_qps:.4g} req/s after {len(outcome.probes)} probes")
            found.append(outcome.saturation_qps)
        top = max(found) if found else 0.0
        if top <= 0:
            self.log(f"[{self.entry.name}] {workload}: no SLO is met even at min_qps; sweeping from min_qps instead")
            top = self.plan.search.min_qps / min(self.plan.sweep_fractions)
        points = sweep_points(top, self.plan.sweep_fractions)
        sweep(self.burst_probe(workload, plan_b, "sweep"), points)
        report.sweep_points += len(points)

    def run_replay(self, replay) -> None:
        """A slice of a real trace, its arrival pattern scaled to the replay's rate (phase "replay")."""
        specs = self.replay_specs(replay)
        point = self.measure(PointKey(self.entry.name, f"trace:{replay.trace}", "replay", replay.name), specs)
        self.log(f"[{self.entry.name}] replay {replay.name}: {len(specs)} requests at {replay.rate_qps:g} req/s "
                 f"({point.status})")

    def capacity(self) -> dict:
        """The engine's capacities, discovered once (needs the engine) and then read from the database."""
        info = self.db.info(self.entry.name)
        if "capacity" in info:
            return info["capacity"]
        endpoint = self._engine()
        found = self.handler.discover_capacity(self.entry, endpoint.base_url)
        self.db.set_info(self.entry.name, "capacity", found)
        return found

    def run_fit(self, report: EntryReport) -> None:
        known = self.handler.known_capacity(self.entry)
        stored_info = self.db.info(self.entry.name)
        capacity = stored_info.get("capacity")
        if capacity is None:
            specs_known, _ = fit_run_specs(self.plan, known)
            all_done = all((p := self.db.get_point(PointKey(self.entry.name, "", "fit", s.key))) is not None
                           and p.status in ("done", "failed") for s in specs_known)
            capacity = known if all_done else self.capacity()
        runs, notes = fit_run_specs(self.plan, capacity)
        for note in notes:
            self.log(f"[{self.entry.name}] fit: {note}")
        for i, spec in enumerate(runs):
            specs = self.fit_specs(i, spec)
            self.measure(PointKey(self.entry.name, "", "fit", spec.key), specs, concurrency=spec.concurrency,
                         input_tokens=spec.input_tokens, output_tokens=spec.output_tokens,
                         open_loop=spec.kind == "mixed")
            report.fit_runs += 1

    def run_prefix_probe(self) -> None:
        """Does the engine reuse prefixes (``calibrate.prefix_probe``)? Stored as engine info ``prefix_caching``."""
        n = self.plan.prefix_probe.prompt_tokens
        point = self.measure(PointKey(self.entry.name, "", "prefix-probe", f"in{n}"), self.probe_specs(),
                             concurrency=1, input_tokens=n, output_tokens=PROBE_OUTPUT_TOKENS)
        if point.status != "done":
            self.log(f"[{self.entry.name}] prefix-caching probe {point.status}: {point.error}")
            return
        verdict = prefix_verdict(self.db.requests(point.id), n, f"{self.plan.engine.version}, entry {self.entry.name}")
        self.db.set_info(self.entry.name, "prefix_caching", verdict.as_dict())
        self.log(f"[{self.entry.name}] prefix caching: {verdict.source}")

    def run_quality(self) -> None:
        lm = self.plan.quality.run_lm_eval
        if lm is None or self.db.info(self.entry.name).get("lm_eval_done"):
            return
        endpoint = self._engine()
        out = Path(self.plan.work_dir) / "lm_eval" / self.entry.name
        tokenizer = self.entry.checkpoint_ref if self.plan.engine.tokenizer else None
        cmd = lm_eval_command(endpoint.model, endpoint.url, lm.tasks, out, tokenizer, lm.num_concurrent, lm.limit,
                              lm.extra_args)
        result = run_lm_eval(cmd, out, Path(self.plan.work_dir) / "logs" / f"{self.entry.name}-lm_eval.log")
        scores, source = lm_eval_scores(result)
        rows, missing = task_rows(scores, self.entry.model, self.entry.quant,
                                  f"{source}; run by qfleet-calibrate against {endpoint.url}")
        self.db.put_quality(rows)
        self.db.set_info(self.entry.name, "lm_eval_done", {"results": str(result), "missing_tasks": missing})

    def run(self) -> EntryReport:
        report = EntryReport(self.entry.name)
        try:
            self.db.set_info(self.entry.name, "energy", self.meter.describe())
            self.check_prompts()
            if self.plan.prefix_probe.enabled:
                self.run_prefix_probe()
            predicted = self.plan.search.start == "predicted" and self.plan.fit.enabled
            if predicted:  # the fit runs first: their step model predicts where each search starts
                self.run_fit(report)
            for workload in self.entry.workloads:
                self.run_workload(workload, report)
            if self.plan.fit.enabled and not predicted:
                self.run_fit(report)
            for replay in self.plan.replays_for(self.entry):
                self.run_replay(replay)
            self.run_quality()
        except (EngineStartError, EngineGaveUp, QualityImportError, RuntimeError) as exc:
            report.error = f"{type(exc).__name__}: {exc}"
            self.log(f"[{self.entry.name}] stopped: {report.error}")
            self.db.event(self.run_id, self.entry.name, "entry-failed", None, report.error)
        finally:
            self.supervisor.stop("entry finished" if not report.error else "entry failed")
        return report


def import_quality_files(plan: Plan, db: ResultsDB) -> list[str]:
    notes = []
    for q in plan.quality.lm_eval_results:
        scores, source = lm_eval_scores(q.path)
        rows, missing = task_rows(scores, q.model, q.quant, source)
        db.put_quality(rows)
        notes.append(f"{q.path}: {len(rows)} task score(s) for {q.model}/{q.quant}"
                     + (f"; missing {', '.join(missing)}" if missing else ""))
    for q in plan.quality.opencompass_csv:
        scores, source = opencompass_scores(q.path, q.column)
        rows, missing = task_rows(scores, q.model, q.quant, source)
        db.put_quality(rows)
        notes.append(f"{q.path}: {len(rows)} task score(s) for {q.model}/{q.quant}"
                     + (f"; missing {', '.join(missing)}" if missing else ""))
    return notes


def run_plan(plan: Plan, handler, db: ResultsDB, log: Callable[[str], None] = print, command: str = "",
             nvml=None, lock: bool = True) -> RunReport:
    """Measure every entry of a validated plan; returns what was done. ``lock``: take the database's writer lock
    (``calibrate.lock``) for the run; a caller that holds it already passes False."""
    if lock:
        with WriterLock(db.path, command):
            return run_plan(plan, handler, db, log, command, nvml, lock=False)
    started = time.perf_counter()
    for stale in db.interrupt_stale_runs():
        log(f"results database {db.path}: run {stale['id']} (pid {stale['pid']} on {stale['host']}) was still marked "
            f"running; its process is gone: marked interrupted")
    migrated = db.register_plan(plan.to_json(), {e.name: plan.entry_fingerprint(e) for e in plan.entries},
                                plan.legacy_fingerprints)
    for name in migrated:
        log(f"results database {db.path}: entry '{name}' fingerprint migrated to version 2 (stated capacities "
            f"and scheduling facts are no longer part of it)")
    run_id = db.start_run(command, platform.node())
    quality_notes = import_quality_files(plan, db)
    reports, measured, skipped, launches, restarts = [], 0, 0, 0, 0
    energy = ""
    status = "failed"
    try:
        for entry in plan.entries:
            runner = EntryRunner(plan, entry, handler, db, run_id, log, nvml)
            energy = energy or (runner.meter.reason or "NVML")
            reports.append(runner.run())
            measured += runner.measured
            skipped += runner.skipped
            launches += runner.supervisor.launches
            restarts += runner.supervisor.restarts
        status = "done" if all(not r.error for r in reports) else "incomplete"
    except BaseException as exc:
        if not isinstance(exc, Exception):  # SIGTERM (calibrate.main), Ctrl-C: the tool was stopped
            status = "interrupted"
        raise
    finally:
        db.finish_run(run_id, status)
    return RunReport(plan.name, reports, measured, skipped, launches, restarts, time.perf_counter() - started,
                     energy, quality_notes)
