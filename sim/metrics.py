"""What a run measured: the per-request table and the per-run summary."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from calibrate.probe_stats import tpot_s
from sim.cluster import RunResult, gpus_over_time, time_average
from sim.requests import FINISHED, REJECT_REASONS, REJECTED, STATUS_NAMES


def requests_frame(result: RunResult) -> pd.DataFrame:
    """One row per request: inputs, outcome, latencies, SLO verdicts, and which config served it."""
    req = result.requests
    tasks = {t.name: t for t in result.tasks}
    task_names = np.array(req.task_names, dtype=object)
    task = task_names[np.asarray(req.task, dtype=np.int64)]
    arrival = np.asarray(req.arrival_s)
    first = np.asarray(req.first_token_s)
    finish = np.asarray(req.finish_s)
    out = np.asarray(req.output_tokens)
    status = np.asarray(req.status)
    instance = np.asarray(req.instance)
    labels = {inst.instance_id: inst.label for inst in result.instances}
    config = np.array([labels.get(int(i), "") for i in instance], dtype=object)
    ttft = first - arrival
    tpot = tpot_s(first, finish, out)
    slo_ttft = np.array([tasks[t].slo.ttft_s for t in task], dtype=float)
    slo_tpot = np.array([tasks[t].slo.tpot_s for t in task], dtype=float)
    finished = status == FINISHED
    latency_met = finished & (ttft <= slo_ttft) & (~(tpot > slo_tpot))
    quality = _served_quality(result, instance, task)
    floors = np.array([tasks[t].quality_min for t in task], dtype=float)
    quality_met = finished & (quality >= floors)
    return pd.DataFrame(
        {
            "request_id": np.arange(req.n, dtype=np.int64),
            "task": task.astype(str),
            "arrival_s": arrival,
            "first_token_s": first,
            "finish_s": finish,
            "ttft_s": np.where(finished, ttft, np.nan),
            "tpot_s": np.where(finished, tpot, np.nan),
            "input_tokens": np.asarray(req.input_tokens, dtype=np.int64),
            "output_tokens": out.astype(np.int64),
            "instance": instance.astype(np.int64),
            "config": config.astype(str),
            "status": np.array(STATUS_NAMES, dtype=object)[status].astype(str),
            "reject_reason": np.array(REJECT_REASONS, dtype=object)[np.asarray(req.reason)].astype(str),
            "energy_j": np.asarray(req.energy_j),
            "quality": quality,
            "latency_slo_met": latency_met,
            "quality_slo_met": quality_met,
            "slo_met": latency_met & quality_met,
        }
    )


def _served_quality(result: RunResult, instance: np.ndarray, task: np.ndarray) -> np.ndarray:
    """Quality score of the config that served each request (NaN for requests no replica took)."""
    by_id = np.full(max(result.instance_quality, default=-1) + 2, np.nan)
    for inst, score in result.instance_quality.items():
        by_id[inst] = score
    return by_id[np.where(instance >= 0, instance, len(by_id) - 1)]


@dataclass(frozen=True, slots=True)
class TaskSummary:
    task: str
    requests: int
    finished: int
    rejected: int
    p50_ttft_s: float
    p90_ttft_s: float
    p99_ttft_s: float
    p50_tpot_s: float
    p90_tpot_s: float
    p99_tpot_s: float
    latency_slo_attainment: float
    quality_slo_met: bool
    slo_attainment: float
    configs: str


def _pct(values: np.ndarray, q: float) -> float:
    values = values[np.isfinite(values)]
    return float(np.percentile(values, q)) if values.size else math.nan


def summarize(result: RunResult, frame: pd.DataFrame | None = None) -> dict:
    """The per-run summary: GPUs, SLO attainment, energy per token, latency percentiles per task."""
    frame = requests_frame(result) if frame is None else frame
    end_s = result.end_s
    times, gpus = gpus_over_time(result)
    busy_j = idle_j = 0.0
    for inst in result.instances:
        b, i = inst.energy_j(end_s)
        busy_j += b
        idle_j += i
    finished = frame["status"] == STATUS_NAMES[FINISHED]
    out_tokens = float(frame.loc[finished, "output_tokens"].sum())
    tasks = []
    for spec in result.tasks:
        rows = frame[frame["task"] == spec.name]
        done = rows[rows["status"] == STATUS_NAMES[FINISHED]]
        ttft = done["ttft_s"].to_numpy()
        tpot = done["tpot_s"].to_numpy()
        configs = sorted(set(done["config"]))
        tasks.append(
            TaskSummary(
                task=spec.name,
                requests=len(rows),
                finished=len(done),
                rejected=int((rows["status"] == STATUS_NAMES[REJECTED]).sum()),
                p50_ttft_s=_pct(ttft, 50),
                p90_ttft_s=_pct(ttft, 90),
                p99_ttft_s=_pct(ttft, 99),
                p50_tpot_s=_pct(tpot, 50),
                p90_tpot_s=_pct(tpot, 90),
                p99_tpot_s=_pct(tpot, 99),
                latency_slo_attainment=float(rows["latency_slo_met"].mean()) if len(rows) else math.nan,
                quality_slo_met=bool(len(done) and done["quality_slo_met"].all()),
                slo_attainment=float(rows["slo_met"].mean()) if len(rows) else math.nan,
                configs=";".join(configs),
            )
        )
    rejected = frame[frame["status"] == STATUS_NAMES[REJECTED]]
    return {
        "requests": int(len(frame)),
        "finished": int(finished.sum()),
        "rejected": int(len(rejected)),
        "rejected_by_reason": {str(k): int(v) for k, v in rejected["reject_reason"].value_counts().items()},
        "duration_s": end_s,
        "avg_gpus": time_average(times, gpus, end_s),
        "peak_gpus": int(gpus.max()) if len(gpus) else 0,
        "gpu_hours": time_average(times, gpus, end_s) * end_s / 3600.0,
        "latency_slo_attainment": float(frame["latency_slo_met"].mean()) if len(frame) else math.nan,
        "slo_attainment": float(frame["slo_met"].mean()) if len(frame) else math.nan,
        "energy_j": busy_j + idle_j,
        "busy_energy_j": busy_j,
        "idle_energy_j": idle_j,
        "energy_per_output_token_j": (busy_j + idle_j) / out_tokens if out_tokens else math.nan,
        "energy_per_output_token_busy_j": busy_j / out_tokens if out_tokens else math.nan,
        "output_tokens": int(out_tokens),
        "reconfigurations": dict(result.reconfigurations),
        "tasks": [asdict(t) for t in tasks],
    }
