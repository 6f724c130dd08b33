"""Sweeps: one folder per run, merged tables at the end, finished runs skipped on a re-run, a failed run
reported without sinking the others, the joblib launcher, and the capacity-planning sweep's figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

EXE = str(Path(sys.executable).with_name("qfleet-sim"))
TINY = ["trace.duration_s=30", "progress=false", "outputs.per_request=false", "outputs.figures=false"]


def qfleet(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def test_sweep_merges_runs_reports_a_failure_and_resumes(tmp_path):
    # total_rate_qps=-3 fails validation in its own run; the other two runs must still finish.
    args = ["-m", "trace.total_rate_qps=20,-3", "policy=fp16_only,energy_first", *TINY,
            f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${hydra.job.override_dirname}"]
    first = qfleet(*args)
    runs = pd.read_parquet(tmp_path / "runs.parquet")
    assert sorted(runs.policy) == ["energy_first", "fp16_only"]
    assert set(runs["override.trace.total_rate_qps"]) == {"20"}
    assert {"avg_gpus", "slo_attainment", "energy_per_output_token_j", "wall_s", "requests"} <= set(runs.columns)
    tasks = pd.read_parquet(tmp_path / "tasks.parquet")
    assert len(tasks) == 2 * 4 and {"p90_ttft_s", "slo_attainment", "task", "run"} <= set(tasks.columns)
    assert pd.read_csv(tmp_path / "summary.csv").shape[0] == 2
    failures = pd.read_csv(tmp_path / "failures.csv")
    assert len(failures) == 2 and failures.error.str.contains("trace.total_rate_qps").all()
    assert "Failed runs (2" in first.stdout
    failed_dirs = [p.parent for p in tmp_path.glob("*/error.json")]
    assert len(failed_dirs) == 2 and all(not (d / "summary.json").exists() for d in failed_dirs)

    summaries = sorted(tmp_path.glob("*/summary.json"))
    stamps = [p.stat().st_mtime_ns for p in summaries]
    second = qfleet(*args)
    assert second.stdout.count("finished earlier: skipped") == 2
    assert [p.stat().st_mtime_ns for p in summaries] == stamps  # finished runs were not run again
    assert len(list(tmp_path.glob("*/error.json"))) == 2  # failed runs were retried (and failed again)
    assert len(pd.read_parquet(tmp_path / "runs.parquet")) == 2


def test_joblib_launcher_runs_a_sweep_on_two_workers(tmp_path):
    qfleet("-m", "policy=fp16_only,slo_energy_optimal", *TINY, "hydra/launcher=joblib",
                  "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path}")
    runs = pd.read_parquet(tmp_path / "runs.parquet")
    assert sorted(runs.policy) == ["fp16_only", "slo_energy_optimal"]
    pids = {json.loads(p.read_text())["pid"] for p in tmp_path.glob("*/summary.json")}
    assert len(pids) == 2 and os.getpid() not in pids  # each run in its own worker process


def test_capacity_sweep_draws_the_planning_figure(tmp_path):
    done = qfleet("--config-name", "capacity_sweep", "trace.total_rate_qps=15,30", "policy=fp16_only,slo_energy_optimal",
                  "cluster=h100_only", "slo=case_study,tight", "trace.duration_s=30", f"hydra.sweep.dir={tmp_path}")
    runs = pd.read_parquet(tmp_path / "runs.parquet")
    assert len(runs) + len(list(tmp_path.glob("*/error.json"))) == 8
    assert (tmp_path / "capacity.png").stat().st_size > 10_000
    assert "Capacity figure" in done.stdout
    from experiments.capacity_sweep_plot import capacity_table

    table = capacity_table(tmp_path)
    assert set(table["override.slo"]) <= {"case_study", "tight"} and table["slo_met"].dtype == bool
