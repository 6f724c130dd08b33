"""qfleet-calibrate: profile real serving engines into a profile set the simulator runs on (Hydra app).

    qfleet-calibrate                                    # the stand-in demo plan (CPU only)
    qfleet-calibrate plan=transformers_h100             # transformers serve on one H100
    qfleet-calibrate plan=trtllm_llama2_h100 dry_run=true   # TensorRT-LLM commands and capability table
    qfleet-calibrate plan_file=my_plan.json             # a JSON plan with the same keys
    qfleet-calibrate plan_file=my_plan.json export_only=true   # re-export from the results DB (no GPU)

Validates the whole plan before launching anything, prints the launch commands and (for TensorRT-LLM)
which quant methods the engine version can run on each entry's GPU, measures every entry (resuming
from the results database), then exports the profile set and prints the fit and validation errors.
"""

from __future__ import annotations

import signal
import sys
from typing import Callable

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from calibrate.config import CalibrateConf
from calibrate.db import ResultsDB, ResultsDbError
from calibrate.engines import make_handler
from calibrate.export import ExportError, export_profile_set
from calibrate.lock import WriterLock
from calibrate.plan import Plan, PlanError, load_plan_file, plan_from_mapping, shown_path, validate_plan
from calibrate.prompts import PromptError
from calibrate.quality_import import QualityImportError
from calibrate.replay import describe_replay

ConfigStore.instance().store(name="qfleet_calibrate_schema", node=CalibrateConf)


def plan_of(cfg: DictConfig) -> Plan:
    if cfg.plan_file:
        return load_plan_file(cfg.plan_file)
    return plan_from_mapping(OmegaConf.to_container(cfg.plan, resolve=True, throw_on_missing=True))


def describe_plan(plan: Plan, handler) -> list[str]:
    """What will run: per entry its launch (and preparation) commands; the engine's capability table."""
    from pathlib import Path

    lines = [f"plan '{plan.name}': {len(plan.entries)} entr{'y' if len(plan.entries) == 1 else 'ies'} on "
             f"{handler.describe()}; results {plan.results_db}; profile set {plan.export_path}"]
    for entry in plan.entries:
        spec = handler.launch_spec(entry, plan.engine.port or 8000, Path(plan.work_dir))
        lines.append(f"  {entry.name}: {entry.model} {entry.quant} tp={entry.tp} on {entry.gpu} "
                     f"GPUs {list(entry.devices)}; workloads {list(entry.workloads)}")
        for step in spec.prepare:
            lines.append(f"    {step.name}: {' '.join(step.argv)}")
        lines.append(f"    serve: {' '.join(spec.argv)}")
        for replay in plan.replays_for(entry):
            lines.append(f"    {describe_replay(replay)}")
    if hasattr(handler, "capability_table"):
        for gpu, tp, model in sorted({(e.gpu, e.tp, e.model) for e in plan.entries}):
            lines.append(f"  {handler.describe()} on {gpu} tp={tp} ({model}):")
            for quant, reason in handler.capability_table(gpu, tp, model):
                lines.append(f"    {quant:14s} {'ok' if reason is None else 'CANNOT RUN: ' + reason}")
    return lines


def _log_fits(fits, log: Callable[[str], None]) -> None:
    for ef in fits:
        log(f"  {ef.entry} fit: observation MAPE "
            + ", ".join(f"{g} {v:.2f} %" for g, v in sorted(ef.fit.mape_pct.items()))
            + "; held-out sweep replay MAPE "
            + ", ".join(f"{m} {v:.2f} %" for m, v in sorted(ef.validation_mape_pct.items())))


def export_only(plan: Plan, handler, log: Callable[[str], None], command: str,
                allow_lower_bounds: bool = False) -> int:
    """Validate the plan without its launch checks (checkpoints and the engine need not exist here), check that
    the results database's entries were measured with this plan's settings, and export; the database is
    opened read-only and nothing is measured."""
    validate_plan(plan, handler, launch_checks=False)
    lock = WriterLock(plan.results_db, command)
    lock.acquire(create=False)  # a writer at work: refuse; no lock file: nobody ever wrote here (create none)
    try:
        return _export_only(plan, log, command, allow_lower_bounds)
    finally:
        lock.release()


def _export_only(plan: Plan, log: Callable[[str], None], command: str, allow_lower_bounds: bool) -> int:
    with ResultsDB(plan.results_db, plan.name, readonly=True) as db:
        db.check_fingerprints({e.name: plan.entry_fingerprint(e) for e in plan.entries}, plan.legacy_fingerprints)
        measured = db.run_commands()
        provenance = (f"{' | '.join(measured) or 'unknown command'}; exported from {shown_path(plan.results_db)} by "
                      f"'{command}'")
        path, fits = export_profile_set(plan, db, provenance, log=log, allow_lower_bounds=allow_lower_bounds)
    _log_fits(fits, log)
    log(f"profile set written to {path} (export only: nothing measured)")
    return 0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(cfg: DictConfig, log: Callable[[str], None] = print, command: str | None = None,
        warn: Callable[[str], None] = _stderr) -> int:
    """One qfleet-calibrate invocation; returns the exit code. ``warn`` gets what made the run fail (stderr)."""
    command = command or " ".join(["qfleet-calibrate", *sys.argv[1:]])
    plan = plan_of(cfg)
    handler = make_handler(plan.engine)
    if cfg.get("export_only", False):
        return export_only(plan, handler, log, command, bool(cfg.get("export_lower_bounds", False)))
    validate_plan(plan, handler)
    for line in describe_plan(plan, handler):
        log(line)
    if cfg.dry_run:
        log("dry run: nothing launched")
        return 0
    from calibrate.coordinator import run_plan  # imported late: dry runs need no load generator

    # One writer per results database, for the measurement and the export it feeds (calibrate.lock).
    with WriterLock(plan.results_db, command), ResultsDB(plan.results_db, plan.name) as db:
        report = run_plan(plan, handler, db, log, command, lock=False)
        log(f"measured {report.measured_points} point(s), skipped {report.skipped_points} already finished; "
            f"{report.launches} engine launch(es), {report.restarts} restart(s); {report.wall_s:.1f} s; "
            f"energy: {report.energy}")
        for note in report.quality_notes:
            log(f"quality: {note}")
        for e in report.entries:
            for s in e.saturation:
                log(f"  {e.entry} {s['workload']} SLO P90 TTFT {s['slo_ttft_s']:g} s / TPOT {s['slo_tpot_s']:g} s: "
                    f"saturation {s['saturation_qps']:.4g} req/s ({s['probes']} probes"
                    f"{'' if s['bounded'] else ', not bounded'})")
            if e.error:
                log(f"  {e.entry}: FAILED: {e.error}")
        if not report.ok:
            failed = [e for e in report.entries if e.error]
            for e in failed:  # the cause in one line (the engine's log tail is on stdout and in the log file)
                warn(f"qfleet-calibrate: entry '{e.entry}' failed: {e.error.splitlines()[0].rstrip(':')}")
            warn(f"qfleet-calibrate: not exported: {len(failed)} of {len(report.entries)} entries failed; finished "
                 f"points are kept in {plan.results_db}, a re-run resumes")
            return 1
        if cfg.export:
            path, fits = export_profile_set(plan, db, command, log=log,
                                            allow_lower_bounds=bool(cfg.get("export_lower_bounds", False)))
            _log_fits(fits, log)
            log(f"profile set written to {path}")
    return 0


@hydra.main(version_base="1.3", config_path="../experiments/calibrate_conf", config_name="config")
def main(cfg: DictConfig) -> None:
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        code = run(cfg)
    except (PlanError, ResultsDbError, ExportError, QualityImportError, PromptError) as exc:
        print(f"qfleet-calibrate: {exc}", file=sys.stderr)
        sys.exit(2)
    except (ToolTerminated, KeyboardInterrupt) as exc:
        # The finally blocks on the way out stopped the engine and marked the run interrupted.
        what = "SIGTERM" if isinstance(exc, ToolTerminated) else "Ctrl-C"
        print(f"qfleet-calibrate: stopped by {what}; the engine was stopped, the point in progress will be measured "
              f"again by the next run (finished points are kept)", file=sys.stderr)
        sys.exit(128 + (signal.SIGTERM if isinstance(exc, ToolTerminated) else signal.SIGINT))
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code:
        sys.exit(code)


class ToolTerminated(BaseException):
    """SIGTERM reached qfleet-calibrate: unwind (stopping the engine, marking the run) and exit."""


def _terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one unwinding is enough
    raise ToolTerminated()


if __name__ == "__main__":
    main()
