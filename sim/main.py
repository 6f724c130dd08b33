"""qfleet-sim: the main job (Hydra app). Groups: trace, cluster, policy, router, profiles, slo, engine.

    qfleet-sim                                   # the §8.3 case study under FP16-Only
    qfleet-sim -m policy=fp16_only,quality_first,energy_first
    qfleet-sim trace=azure_week policy=slo_energy_optimal          # a week, streamed
    qfleet-sim engine=trtllm_serve engine.chunked_context=true     # other engine settings for every pool
    qfleet-sim engine.scheduler._target_=examples.my_scheduler.ShortestPromptFirst   # a scheduler plug-in
    qfleet-sim --config-name capacity_sweep hydra/launcher=joblib  # load x policy x GPU mix x SLO

In a multirun, each run writes its own folder; a folder that already holds the summary of a finished
run with the same overrides is skipped (re-running a sweep resumes it), and a run that fails writes
``error.json``, is reported at the end and does not stop the others.
"""

from __future__ import annotations

import os
import resource
import sys
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from sim.cluster import simulate
from sim.config import ConfigError, SimConf, build_run, plugin_label
from sim.planning import NoFeasibleConfig
from sim.policy_api import PlanError
from sim.scheduler_api import SchedulerError
from profiles.profile_set import ProfileError
from sim.metrics import extrapolation_lines, requests_frame, summarize
from sim.report import comparison_rows, finished_summary, format_comparison, write_error, write_run, write_stream_run
from sim.stream import RequestSink, simulate_stream, stream_summary
from traces.stream import ChunkedTrace
from traces.trace import Trace

ConfigStore.instance().store(name="qfleet_schema", node=SimConf)
# ``${qfleet_label:${policy}}`` in run-folder names: the policy's label (sim.config.plugin_label)
OmegaConf.register_new_resolver("qfleet_label", plugin_label, replace=True)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(cfg: DictConfig, out_dir: Path, extra: dict | None = None) -> dict:
    """One simulation from a composed config; returns the summary (also written under out_dir)."""
    spec = build_run(cfg)
    label = spec.policy_label
    streaming = cfg.outputs.streaming if cfg.outputs.streaming is not None else not isinstance(spec.trace, Trace)
    bar = None
    if cfg.progress:
        bar = tqdm(total=round(spec.trace.duration_s), desc=f"{label}", unit="sim-s", file=sys.stderr,
                   mininterval=1.0, leave=False)

    def progress(now_s: float) -> None:
        bar.update(round(now_s) - bar.n)

    started = time.perf_counter()
    try:
        return _simulate(cfg, spec, out_dir, extra, label, streaming, bar, progress, started)
    except (NoFeasibleConfig, ProfileError, PlanError, SchedulerError) as exc:  # a plan or plug-in that cannot run
        raise ConfigError(str(exc)) from None


def unserved_tasks(deployments) -> dict:
    """Tasks some plan left unserved (dp=0): {task: {first_s, windows}}, in plan order."""
    out: dict[str, dict] = {}
    for time_s, deployment in deployments:
        for plan in deployment.plans:
            if plan.gpus == 0:
                info = out.setdefault(plan.task, {"first_s": float(time_s), "windows": 0})
                info["windows"] += 1
    return out


def _simulate(cfg, spec, out_dir: Path, extra: dict | None, label: str, streaming: bool, bar, progress,
              started: float) -> dict:
    if streaming:
        stream = ChunkedTrace(spec.trace) if isinstance(spec.trace, Trace) else spec.trace
        sink = RequestSink(stream.task_names, out_dir / "requests.parquet" if cfg.outputs.per_request else None)
        result = simulate_stream(stream, spec.tasks, spec.policy, spec.profiles, spec.settings, sink,
                                 progress if bar is not None else None)
        wall_s = time.perf_counter() - started
        summary = stream_summary(result, sink)
        n = result.requests
    else:
        result = simulate(spec.trace, spec.tasks, spec.policy, spec.profiles, spec.settings,
                          progress if bar is not None else None)
        wall_s = time.perf_counter() - started
        frame = requests_frame(result)
        summary = summarize(result, frame)
        n = len(spec.trace)
    if bar is not None:
        bar.close()
    summary["wall_s"] = wall_s
    summary["unserved_tasks"] = unserved_tasks(result.deployments)
    summary["trace"] = spec.trace.source
    summary["profiles"] = str(spec.profiles.path)
    summary.update(extra or {})
    if streaming:
        write_stream_run(out_dir, label, result, sink, summary, cfg.outputs.figures)
    else:
        write_run(out_dir, label, result, frame, summary, cfg.outputs.per_request, cfg.outputs.figures)
    print(f"[{label}] {n:,} requests simulated in {wall_s:.1f} s wall "
          f"({n / max(wall_s, 1e-9):,.0f} req/s); outputs in {out_dir}")
    for line in extrapolation_lines(summary["extrapolation"]):
        print(f"[{label}] {line}")
    for task, info in summary["unserved_tasks"].items():
        print(f"[{label}] task '{task}' NOT SERVED in {info['windows']} plan window(s) from t={info['first_s']:g} s: "
              f"the policy planned no replica for it (dp=0: cluster.fleet too small for every task); its requests were "
              f"rejected (no_replica)")
    return {"policy": label, **summary}


@hydra.main(version_base="1.3", config_path="../experiments/conf", config_name="config")
def main(cfg: DictConfig) -> dict | None:
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode.name == "MULTIRUN"
    overrides = list(hydra_cfg.overrides.task)
    job = {"run": out_dir.name if multirun else plugin_label(cfg.policy),
           "job_num": hydra_cfg.job.num if multirun else 0, "overrides": overrides, "pid": os.getpid()}
    if multirun:
        done = finished_summary(out_dir, overrides)
        if done is not None:
            print(f"[{out_dir.name}] finished earlier: skipped "
                  f"(delete {out_dir / 'summary.json'} to run it again)")
            return done
    try:
        summary = run(cfg, out_dir, job)
    except ConfigError as exc:
        if multirun:
            write_error(out_dir, overrides, f"ConfigError: {exc}")
            print(f"qfleet-sim: run {out_dir.name} failed: {exc}", file=sys.stderr)
            return None
        print(f"qfleet-sim: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # a failed run of a sweep is reported, not fatal to the other runs
        if not multirun:
            raise
        write_error(out_dir, overrides, traceback.format_exc())
        print(f"qfleet-sim: run {out_dir.name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    if not multirun:
        print(format_comparison(comparison_rows([summary])))
    return summary


if __name__ == "__main__":
    main()
