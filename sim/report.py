"""Writing a run's outputs and the Table-4-style comparison across the runs of a sweep."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from hydra.experimental.callback import Callback

from sim.cluster import RunResult
from sim.figures import plot_gpus_over_time, plot_latency_cdfs, plot_policy_comparison

SUMMARY_FILE = "summary.json"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_run(out_dir: Path, policy: str, result: RunResult, frame: pd.DataFrame, summary: dict,
              per_request: bool, figures: bool) -> list[Path]:
    """Per-request Parquet, summary JSON, deployments CSV and figures; each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if per_request:
        path = out_dir / "requests.parquet"
        tmp = out_dir / ".requests.parquet.tmp"
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        written.append(path)
    plans = [
        {"time_s": t, "task": p.task, "config": p.key.label, "dp": p.dp, "gpus": p.gpus, "load_qps": p.load_qps,
         "saturation_qps": p.saturation_qps, "predicted_energy_per_token_j": p.predicted_energy_per_token_j,
         "quality": p.quality}
        for t, deployment in result.deployments for p in deployment.plans
    ]
    path = out_dir / "deployments.csv"
    tmp = out_dir / ".deployments.csv.tmp"
    pd.DataFrame(plans).to_csv(tmp, index=False)
    os.replace(tmp, path)
    written.append(path)
    path = out_dir / SUMMARY_FILE
    _atomic_write_text(path, json.dumps({"policy": policy, **summary}, indent=2, default=_jsonable) + "\n")
    written.append(path)
    if figures:
        written.append(plot_gpus_over_time(result, out_dir / "gpus_over_time.png", f"GPUs over time ({policy})"))
        written.append(plot_latency_cdfs(result, frame, out_dir / "latency_cdf.png", f"Latency CDFs ({policy})"))
    return written


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
            "policy": s["policy"],
            "avg_gpus": s["avg_gpus"],
            "peak_gpus": s["peak_gpus"],
            "slo_attainment": s["slo_attainment"],
            "latency_slo_attainment": s["latency_slo_attainment"],
            "energy_per_output_token_j": s["energy_per_output_token_j"],
            "energy_per_output_token_busy_j": s["energy_per_output_token_busy_j"],
            "quality_slo_met": {t["task"]: t["quality_slo_met"] for t in tasks},
            "configs": {t["task"]: t["configs"] for t in tasks},
            "rejected": s["rejected"],
        })
    return rows


def format_comparison(rows: Sequence[dict]) -> str:
    """A Markdown table in the shape of the paper's Table 4, plus quality and configs per task."""
    tasks = list(rows[0]["quality_slo_met"]) if rows else []
    head = ["policy", "avg GPUs", "peak GPUs", "SLO attainment %", "latency SLO %", "J/token", "J/token (busy)",
            "rejected"] + [f"quality {t}" for t in tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["policy"], _fmt(r["avg_gpus"], 1), str(r["peak_gpus"]), _fmt(100 * r["slo_attainment"], 1),
                 _fmt(100 * r["latency_slo_attainment"], 1), _fmt(r["energy_per_output_token_j"]),
                 _fmt(r["energy_per_output_token_busy_j"]), str(r["rejected"])]
        cells += ["met" if r["quality_slo_met"][t] else "BROKEN" for t in tasks]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Configs chosen per task (gpu/model/quant/tp):")
    for r in rows:
        lines.append(f"  {r['policy']}: " + "; ".join(f"{t}={c}" for t, c in r["configs"].items()))
    return "\n".join(lines)


def compare_sweep(sweep_dir: Path) -> str | None:
    """Collect every run's summary under a sweep folder, write the comparison, return its text."""
    summaries = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob(f"*/{SUMMARY_FILE}"))]
    if not summaries:
        return None
    rows = comparison_rows(summaries)
    text = format_comparison(rows)
    _atomic_write_text(sweep_dir / "comparison.md", text + "\n")
    flat = [{k: v for k, v in r.items() if k not in ("quality_slo_met", "configs")}
            | {f"quality_met_{t}": m for t, m in r["quality_slo_met"].items()}
            | {f"config_{t}": c for t, c in r["configs"].items()} for r in rows]
    tmp = sweep_dir / ".comparison.csv.tmp"
    pd.DataFrame(flat).to_csv(tmp, index=False)
    os.replace(tmp, sweep_dir / "comparison.csv")
    plot_policy_comparison(rows, sweep_dir / "policy_comparison.png")
    return text


class CompareCallback(Callback):
    """At the end of a multirun, print the Table-4-style comparison and where the outputs are."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        text = compare_sweep(sweep_dir)
        if text is None:
            print(f"qfleet-sim: no run summaries found under {sweep_dir}")
            return
        print("\n=== Policy comparison (paper §8.3, Table 4 style) ===")
        print(text)
        print(f"\nOutputs: {sweep_dir.resolve()}")
        print("  comparison.md / comparison.csv / policy_comparison.png; per run: summary.json, requests.parquet,")
        print("  deployments.csv, gpus_over_time.png, latency_cdf.png")
