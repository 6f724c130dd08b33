"""Bad input gets one line naming the file, field or value and what would be valid; never a traceback, never
a silent wrong answer (issue 12). One table per tool: each row is an input and the message it must get."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import sim.main  # noqa: F401  (registers the schema)
from calibrate.db import ResultsDbError
from calibrate.main import run as calibrate_run
from calibrate.plan import PlanError
from profiles.profile_set import default_profile_path
from sim.config import ConfigError
from sim.report import comparison_rows, format_comparison
from test_calibrate_run import standin_plan

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["trace.duration_s=20", "trace.total_rate_qps=5", "progress=false", "outputs.figures=false",
         "outputs.per_request=false"]
AZURE = ["trace=azure_conv", "~cluster.pools.chat-r", "~cluster.pools.code", "~cluster.pools.summarization",
         "progress=false", "outputs.figures=false", "outputs.per_request=false"]
ONE = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,10,10\n"
SAME_TIME = ONE + "2023-11-16 18:17:03.9799600,12,9\n"


def _profiles(tmp: Path, name: str, damage) -> str:
    path = tmp / name
    shutil.copytree(default_profile_path(), path)
    damage(path)
    return str(path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# (case, overrides (a function of the tmp folder), what the message must contain)
SIM_CASES = [
    ("truncated CSV profile", lambda t: [f"profiles.path={_profiles(t, 'p', lambda p: _truncate(p / 'step_models.csv'))}"],
     "step_models.csv: not a readable CSV table"),
    ("truncated Parquet profile", lambda t: [f"profiles.path={_profiles(t, 'p', lambda p: _truncate(p / 'curves.parquet'))}"],
     "curves.parquet: not a readable Parquet table"),
    ("0-byte quality.csv", lambda t: [f"profiles.path={_profiles(t, 'p', lambda p: (p / 'quality.csv').write_text(''))}"],
     "quality.csv: not a readable CSV table (empty file)"),
    ("workload missing from the profiles", lambda t: ["cluster.pools.code.workload=azure-code"],
     "'cluster.pools.code.workload': 'azure-code' has no curves for codellama-34b"),
    ("no config meets the SLO", lambda t: ["slo.tasks.code.ttft_s=0.0001"],
     "policy fp16_only: task 'code' (codellama-34b, workload humaneval): no FP16 config meets the SLO P90 TTFT "
     "0.0001 s / P90 TPOT 0.2 s (slo.tasks.code); the closest, "),
    ("no config meets the quality floor", lambda t: ["policy=slo_energy_optimal", "slo.tasks.code.quality_min=100"],
     "no config reaches the quality floor 100 (slo.tasks.code.quality_min); the best, codellama-34b fp16, scores"),
    ("NaN rate", lambda t: ["trace.total_rate_qps=nan"], "'trace.total_rate_qps': must be a finite number > 0, got nan"),
    ("NaN duration", lambda t: ["trace.duration_s=nan"], "'trace.duration_s': must be a finite number > 0 or null"),
    ("NaN interval", lambda t: ["cluster.replan_interval_s=nan"], "'cluster.replan_interval_s': must be a finite"),
    ("seed -1", lambda t: ["seed=-1"], "'seed': must be a whole number >= 0, got -1"),
    ("rate x duration needs terabytes", lambda t: ["trace.total_rate_qps=1e12"],
     "trace.total_rate_qps x trace.duration_s = ~2e+13 requests, more than the 1e+08 a run may hold"),
    ("duration needs terabytes", lambda t: ["trace.duration_s=1e15"], "more than the 1e+08 a run may hold"),
    ("engine_start_s NaN", lambda t: ["cluster.engine_start_s=nan"], "'cluster.engine_start_s': must be a finite number >= 0"),
    ("max_queue -1", lambda t: ["cluster.max_queue=-1"], "'cluster.max_queue': must be a whole number >= 1 or null, got -1"),
    ("drain_limit_s -1", lambda t: ["cluster.drain_limit_s=-1"], "'cluster.drain_limit_s': must be a finite number >= 0"),
    ("headroom on a policy that ignores it", lambda t: ["+policy.headroom=0.5"],
     "'policy.headroom': policy 'fp16_only' does not use it"),
    ("headroom out of range", lambda t: ["policy=slo_energy_optimal", "policy.headroom=1.5"],
     "'policy.headroom': must be a finite number in (0, 1] or null, got 1.5"),
    ("load_gbps_per_gpu inf", lambda t: ["cluster.load_gbps_per_gpu=inf"], "'cluster.load_gbps_per_gpu': must be a finite"),
    ("cv without gamma arrivals", lambda t: ["trace.cv=3"], "'trace.cv': only trace.arrival=gamma uses it"),
    ("quality floor NaN", lambda t: ["slo.tasks.code.quality_min=nan"], "'slo.tasks.code.quality_min': must be a finite"),
    ("SLO inf", lambda t: ["slo.tasks.code.tpot_s=inf"], "'slo.tasks.code.tpot_s': must be a finite number > 0"),
]
AZURE_CASES = [
    ("a directory as the trace", lambda t: [f"trace.path={t}"], "is a directory, not a trace file"),
    ("one-request trace scaled", lambda t: [f"trace.path={_file(t, ONE)}", "trace.target_rate_qps=5"],
     "'trace.target_rate_qps': trace "),
    ("zero-span trace tiled", lambda t: [f"trace.path={_file(t, SAME_TIME)}", "trace.duration_s=60"],
     "only a trace of >= 2 requests at different times can be tiled"),
    ("a case-study key on an Azure trace", lambda t: ["trace.total_rate_qps=50"],
     "'trace.total_rate_qps': not used by trace.kind=azure"),
    ("tiled to terabytes", lambda t: ["trace.duration_s=1e13"], "requests, more than the 1e+08 a run may hold"),
]


def _file(tmp: Path, text: str) -> Path:
    path = tmp / f"trace-{len(text)}.csv"
    path.write_text(text)
    return path


def composed(overrides):
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("case,overrides,message", [*((c, o, m) for c, o, m in SIM_CASES),
                                                     *((c, lambda t, o=o: AZURE + o(t), m) for c, o, m in AZURE_CASES)],
                         ids=[c for c, _, _ in SIM_CASES + AZURE_CASES])
def test_bad_sim_input_gets_one_clear_line(tmp_path, case, overrides, message):
    ov = overrides(tmp_path)
    base = [] if ov[:1] == AZURE[:1] else SMALL
    with pytest.raises(ConfigError) as err:
        sim.main.run(composed(base + ov), tmp_path / "out")
    text = str(err.value)
    assert message in text, text
    assert "\n" not in text and "Traceback" not in text


def test_the_command_line_prints_one_line_and_exits_2(tmp_path):
    damaged = _profiles(tmp_path, "p", lambda p: _truncate(p / "curves.parquet"))
    done = subprocess.run([sys.executable, "-m", "sim.main", *SMALL, f"profiles.path={damaged}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("qfleet-sim: ") and "curves.parquet" in lines[0], done.stderr


def test_a_multirun_whose_every_run_failed_exits_non_zero(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sim.main", "-m", "seed=-1,-2", *SMALL,
                           f"hydra.sweep.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 1
    assert "every run of the multirun failed (2)" in done.stderr and "'seed'" in done.stderr


def test_a_pool_that_finished_nothing_has_no_quality_verdict(tmp_path):
    summary = sim.main.run(composed(["trace.duration_s=3", "trace.total_rate_qps=1", "progress=false",
                                     "outputs.figures=false", "outputs.per_request=false"]), tmp_path)
    verdicts = {t["task"]: (t["finished"], t["quality_slo_met"]) for t in summary["tasks"]}
    idle = [task for task, (finished, _) in verdicts.items() if finished == 0]
    assert idle and all(verdicts[task][1] is None for task in idle)
    assert all(met is True for finished, met in verdicts.values() if finished)
    table = format_comparison(comparison_rows([summary]))
    assert "BROKEN" not in table and "n/a (none finished)" in table


# --- qfleet-calibrate --------------------------------------------------------------------------------


def _plan(tmp: Path, **engine) -> Path:
    data = standin_plan(tmp, "bad-input", slos=[{"ttft_s": 10.0, "tpot_s": 1.0}], sweep_fractions=[1.0],
                        search={"start_qps": 4.0, "min_qps": 1.0, "max_qps": 4.0, "rel_tol": 0.5},
                        burst={"burst_s": 1.0, "min_requests": 4, "max_requests": 8, "seed": 0})
    data["engine"].update(engine)
    path = tmp / "plan.json"
    path.write_text(json.dumps(data))
    return path


def _not_sqlite(tmp: Path) -> Path:
    plan = _plan(tmp)
    Path(json.loads(plan.read_text())["results_db"]).write_text("not a database\n" * 64)
    return plan


# (case, plan file (a function of the tmp folder), the exception or exit code, what the message must contain)
CALIBRATE_CASES = [
    ("plan file is a directory", lambda t: t, PlanError, "is a directory; give a JSON plan file"),
    ("results database is not SQLite", _not_sqlite, ResultsDbError, "not a usable SQLite results database"),
    ("launch command does not exist", lambda t: _plan(t, launch=["/no/such/engine", "--port", "{port}"]), 1,
     "engine.launch: cannot start '/no/such/engine' (No such file or directory)"),
    ("server exits at once", lambda t: _plan(t, launch=["{python}", "-c", "raise SystemExit(3)", "{port}"]), 1,
     "engine exited with code 3 before becoming ready; log "),
    ("server never becomes healthy", lambda t: _plan(t, launch=["{python}", "-c", "import time; time.sleep(30)",
                                                               "{port}"], ready_timeout_s=1.5), 1,
     "engine not ready after 1.5 s; log "),
]


@pytest.mark.parametrize("case,plan,outcome,message", CALIBRATE_CASES, ids=[c[0] for c in CALIBRATE_CASES])
def test_bad_calibrate_input_gets_one_clear_line(tmp_path, case, plan, outcome, message):
    cfg = OmegaConf.create({"plan_file": str(plan(tmp_path)), "dry_run": False, "export": True, "plan": {}})
    warned: list[str] = []
    if isinstance(outcome, int):
        assert calibrate_run(cfg, log=lambda line: None, warn=warned.append) == outcome
        assert len(warned) == 2 and message in warned[0], warned
        assert "not exported: 1 of 1 entries failed" in warned[1]  # the cause, not "nothing to export"
        assert all("\n" not in line for line in warned)
    else:
        with pytest.raises(outcome, match=message):
            calibrate_run(cfg, log=lambda line: None, warn=warned.append)
