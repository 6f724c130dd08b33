"""Writing a run's outputs and the Table-4-style comparison across the runs of a sweep."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from hydra.experimental.callback import Callback

from sim.cluster import RunResult, StreamRunResult
from sim.figures import plot_gpus_over_time, plot_latency_cdf_curves, plot_latency_cdfs, plot_policy_comparison
from sim.stream import RequestSink, latency_cdf_curves

SUMMARY_FILE = "summary.json"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


ERROR_FILE = "error.json"


def _atomic_write_frame_csv(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _write_deployments(out_dir: Path, result) -> Path:
    plans = [
        {"time_s": t, "task": p.task, "config": p.label, "dp": p.dp, "gpus": p.gpus, "load_qps": p.load_qps,
         "saturation_qps": p.saturation_qps,
         "predicted_energy_per_output_token_j": p.predicted_energy_per_output_token_j, "quality": p.quality}
        for t, deployment in result.deployments for p in deployment.plans
    ]
    path = out_dir / "deployments.csv"
    _atomic_write_frame_csv(pd.DataFrame(plans), path)
    return path


def _write_summary(out_dir: Path, policy: str, summary: dict) -> Path:
    """Written last: a run folder with a summary is a finished run (sweeps skip it)."""
    path = out_dir / SUMMARY_FILE
    _atomic_write_text(path, json.dumps({"policy": policy, **summary}, indent=2, default=_jsonable) + "\n")
    error = out_dir / ERROR_FILE
    if error.exists():
        error.unlink()
    return path


def write_run(out_dir: Path, policy: str, result: RunResult, frame: pd.DataFrame, summary: dict,
              per_request: bool, figures: bool) -> list[Path]:
    """Per-request Parquet, deployments CSV, figures, then the summary JSON; each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if per_request:
        path = out_dir / "requests.parquet"
        tmp = out_dir / ".requests.parquet.tmp"
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        written.append(path)
    written.append(_write_deployments(out_dir, result))
    if figures:
        written.append(plot_gpus_over_time(result, out_dir / "gpus_over_time.png", f"GPUs over time ({policy})"))
        written.append(plot_latency_cdfs(result, frame, out_dir / "latency_cdf.png", f"Latency CDFs ({policy})"))
    written.append(_write_summary(out_dir, policy, summary))
    return written


def write_stream_run(out_dir: Path, policy: str, result: StreamRunResult, sink: RequestSink, summary: dict,
                     figures: bool) -> list[Path]:
    """A streamed run's outputs: its requests.parquet was written by the sink while it ran."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [p for p in (sink.parquet_path,) if p is not None and p.exists()]
    written.append(_write_deployments(out_dir, result))
    if figures:
        written.append(plot_gpus_over_time(result, out_dir / "gpus_over_time.png", f"GPUs over time ({policy})"))
        written.append(plot_latency_cdf_curves(result.tasks, latency_cdf_curves(sink, sink.stats.task_names),
                                               out_dir / "latency_cdf.png",
                                               f"Latency CDFs ({policy}; {sink.stats.percentile_method})"))
    written.append(_write_summary(out_dir, policy, summary))
    return written


def write_error(out_dir: Path, overrides: Sequence[str], error: str) -> Path:
    """Mark a run as failed: what was asked and why it failed (a later sweep runs it again)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ERROR_FILE
    _atomic_write_text(path, json.dumps({"run": out_dir.name, "overrides": list(overrides), "error": error},
                                        indent=2) + "\n")
    return path


def finished_summary(out_dir: Path, overrides: Sequence[str]) -> dict | None:
    """The summary of a finished run of the same overrides in ``out_dir``, or None."""
    path = out_dir / SUMMARY_FILE
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if summary.get("overrides") != list(overrides):
        return None
    return summary


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def comparison_rows(summaries: Sequence[dict]) -> list[dict]:
    rows = []
    for s in summaries:
        tasks = s["tasks"]
        rows.append({
            "run": s.get("run", s["policy"]),
            "policy": s["policy"],
            "avg_gpus": s["avg_gpus"],
            "peak_gpus": s["peak_gpus"],
            "slo_attainment": s["slo_attainment"],
            "latency_slo_attainment": s["latency_slo_attainment"],
            "energy_per_output_token_j": s["energy_per_output_token_j"],
            "energy_per_output_token_busy_j": s["energy_per_output_token_busy_j"],
            "energy_per_token_in_out_j": s.get("energy_per_token_in_out_j", math.nan),
            "quality_slo_met": {t["task"]: t["quality_slo_met"] for t in tasks},
            "configs": {t["task"]: t["configs"] for t in tasks},
            "rejected": s["rejected"],
        })
    return rows


def format_comparison(rows: Sequence[dict]) -> str:
    """A Markdown table in the shape of the paper's Table 4, plus quality and configs per task. Energy per token
    in both definitions: per output token (with and without idle GPUs) and per input + output token."""
    tasks = list(rows[0]["quality_slo_met"]) if rows else []
    head = ["run", "avg GPUs", "peak GPUs", "SLO attainment %", "latency SLO %", "J/output token",
            "J/output token (busy)", "J/(in+out) token", "rejected"] + [f"quality {t}" for t in tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], _fmt(r["avg_gpus"], 1), str(r["peak_gpus"]), _fmt(100 * r["slo_attainment"], 1),
                 _fmt(100 * r["latency_slo_attainment"], 1), _fmt(r["energy_per_output_token_j"]),
                 _fmt(r["energy_per_output_token_busy_j"]), _fmt(r["energy_per_token_in_out_j"]), str(r["rejected"])]
        cells += [{True: "met", False: "BROKEN"}.get(r["quality_slo_met"][t], "n/a (none finished)") for t in tasks]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Configs chosen per task (gpu/model/quant/tp):")
    for r in rows:
        lines.append(f"  {r['run']}: " + "; ".join(f"{t}={c}" for t, c in r["configs"].items()))
    return "\n".join(lines)


def _flat_overrides(overrides: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in overrides:
        key, _, value = item.partition("=")
        out[key.lstrip("+~")] = value
    return out


def sweep_tables(summaries: Sequence[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per run (scalars of its summary and its overrides) and one row per run and task."""
    runs, tasks = [], []
    for s in summaries:
        overrides = _flat_overrides(s.get("overrides", []))
        base = {"run": s.get("run", s["policy"]), "policy": s["policy"],
                **{f"override.{k}": v for k, v in overrides.items()}}
        scalars = {k: v for k, v in s.items() if isinstance(v, (int, float, str, bool)) and k not in base}
        scalars.update({f"rejected.{k}": v for k, v in s.get("rejected_by_reason", {}).items()})
        scalars.update({f"reconfigurations.{k}": v for k, v in s.get("reconfigurations", {}).items()})
        runs.append(base | scalars)
        for t in s.get("tasks", []):
            tasks.append(base | t)
    return pd.DataFrame(runs), pd.DataFrame(tasks)


def _atomic_parquet(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _label_runs(summaries: list[dict]) -> None:
    """Name each run by the overrides that vary across the sweep (just the policy when only it varies)."""
    flat = [_flat_overrides(s.get("overrides", [])) for s in summaries]
    keys = sorted({k for f in flat for k in f})
    varying = [k for k in keys if len({f.get(k) for f in flat}) > 1 and k != "policy"]
    for s, f in zip(summaries, flat):
        parts = [s["policy"]] + [f"{k.split('.')[-1]}={f[k]}" for k in varying if k in f]
        s["run"] = " ".join(parts)


def sweep_failures(sweep_dir: Path) -> list[dict]:
    """Runs of a sweep that failed and have not succeeded since (error marker, no summary)."""
    failed = []
    for path in sorted(sweep_dir.glob(f"*/{ERROR_FILE}")):
        if not (path.parent / SUMMARY_FILE).exists():
            failed.append(json.loads(path.read_text()))
    return failed


def compare_sweep(sweep_dir: Path) -> str | None:
    """Collect every run's summary under a sweep folder, write the comparison and the merged tables,
    return the comparison's text (None when no run finished)."""
    summaries = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob(f"*/{SUMMARY_FILE}"))]
    failures = sweep_failures(sweep_dir)
    if failures:
        _atomic_write_frame_csv(pd.DataFrame(failures), sweep_dir / "failures.csv")
    elif (sweep_dir / "failures.csv").exists():
        (sweep_dir / "failures.csv").unlink()
    if not summaries:
        return None
    summaries.sort(key=lambda s: s.get("job_num", 0))
    _label_runs(summaries)
    rows = comparison_rows(summaries)
    text = format_comparison(rows)
    if failures:
        text += f"\n\nFailed runs ({len(failures)}; their folders hold error.json, a re-run retries them):\n"
        text += "\n".join(f"  {f['run']}: {f['error'].strip().splitlines()[-1]}" for f in failures)
    _atomic_write_text(sweep_dir / "comparison.md", text + "\n")
    flat = [{k: v for k, v in r.items() if k not in ("quality_slo_met", "configs")}
            | {f"quality_met_{t}": m for t, m in r["quality_slo_met"].items()}
            | {f"config_{t}": c for t, c in r["configs"].items()} for r in rows]
    _atomic_write_frame_csv(pd.DataFrame(flat), sweep_dir / "comparison.csv")
    runs, tasks = sweep_tables(summaries)
    _atomic_parquet(runs, sweep_dir / "runs.parquet")
    _atomic_parquet(tasks, sweep_dir / "tasks.parquet")
    _atomic_write_frame_csv(runs, sweep_dir / "summary.csv")
    if len(rows) <= MAX_BARS:
        plot_policy_comparison(rows, sweep_dir / "policy_comparison.png")
    return text


MAX_BARS = 12  # beyond this a bar per run is unreadable: use runs.parquet (e.g. experiments/capacity_sweep_plot.py)


class CompareCallback(Callback):
    """At the end of a multirun, print the Table-4-style comparison, merge every run's summary into
    sweep-level tables, and report failed runs."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        text = compare_sweep(sweep_dir)
        if text is None:
            print(f"qfleet-sim: no run summaries found under {sweep_dir}")
            failures = sweep_failures(sweep_dir)
            if failures:
                print(f"qfleet-sim: {len(failures)} run(s) failed; see {sweep_dir / 'failures.csv'}")
                print(f"qfleet-sim: every run of the multirun failed ({len(failures)}); first: "
                      f"{failures[0]['error'].strip().splitlines()[-1]}", file=sys.stderr)
                sys.exit(1)
            return
        print("\n=== Policy comparison (paper §8.3, Table 4 style) ===")
        print(text)
        print(f"\nOutputs: {sweep_dir.resolve()}")
        print("  comparison.md / comparison.csv / policy_comparison.png (up to 12 runs);")
        print("  runs.parquet + summary.csv (one row per run), tasks.parquet (per run and task), failures.csv;")
        print("  per run: summary.json, requests.parquet, deployments.csv, gpus_over_time.png, latency_cdf.png")
