"""The main job: Hydra composition, clear errors for wrong keys/values, and a small end-to-end sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException, MissingConfigException

import sim.main  # registers the schema  # noqa: F401
from sim.config import ConfigError, build_run, engine_field_set
from sim.main import run

SMALL = ["trace.duration_s=60", "trace.total_rate_qps=20", "progress=false"]


def composed(overrides):
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_default_config_is_the_case_study():
    cfg = composed([])
    assert cfg.trace.total_rate_qps > 100 and cfg.trace.duration_s == 3600
    pool = cfg.cluster.pools["chat-s"]
    assert (pool.model, pool.workload) == ("llama2-13b", "sharegpt")
    assert not any(engine_field_set(pool.engine, name) for name in pool.engine)  # no per-pool engine override
    assert pool.engine.scheduler == {"_target_": None}  # not set; a mapping, so scheduler._target_=... needs no +
    assert cfg.engine.preset is None  # engine=profile: the step models as profiled
    assert cfg.slo.tasks["code"].ttft_s == 0.15


def test_unknown_key_stops_at_once():
    with pytest.raises(ConfigCompositionException, match="nosuch"):
        composed(["nosuch=1"])
    with pytest.raises(ConfigCompositionException, match="headroomx"):
        composed(["policy.headroomx=0.5"])


def test_unknown_group_option_is_named():
    with pytest.raises(MissingConfigException, match="policy/greedy"):
        composed(["policy=greedy"])


@pytest.mark.parametrize(
    "override,key",
    [
        ("cluster.load_estimate=psychic", "cluster.load_estimate"),
        ("trace.total_rate_qps=-3", "trace.total_rate_qps"),
        ("router._target_=sim.router.Random", "router._target_"),
        ("cluster.pools.chat-s.model=llama9-1t", "cluster.pools.chat-s.model"),
        ("cluster.pools.code.workload=poems", "cluster.pools.code.workload"),
        ("slo.tasks.code.ttft_s=0", "slo.tasks.code.ttft_s"),
        ("cluster.gpu_types=[b200]", "cluster.gpu_types"),
        ("trace.arrival=sometimes", "trace.arrival"),
    ],
)
def test_wrong_value_names_its_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_run(composed(SMALL + [override]))


def test_a_run_writes_its_outputs(tmp_path, capsys):
    summary = run(composed(SMALL + ["policy=slo_energy_optimal"]), tmp_path)
    assert summary["finished"] + summary["rejected"] == summary["requests"] > 0
    frame = pd.read_parquet(tmp_path / "requests.parquet")
    assert len(frame) == summary["requests"]
    assert {"ttft_s", "tpot_s", "energy_j", "config", "status", "reject_reason", "slo_met"} <= set(frame.columns)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["avg_gpus"] == pytest.approx(summary["avg_gpus"])
    for name in ("gpus_over_time.png", "latency_cdf.png", "deployments.csv"):
        assert (tmp_path / name).stat().st_size > 0
    # every config that served the run, with its fit domain (the shipped rows know theirs) and its counts
    extrapolation = saved["extrapolation"]
    assert set(extrapolation) == set(frame.config.unique())
    assert sum(e["requests"] for e in extrapolation.values()) == (frame.instance >= 0).sum()
    for label, e in extrapolation.items():
        assert e["domain"]["max_prompt_tokens"] == 4096 and e["domain"]["max_context_tokens"] == 2048, label
        assert e["any"] == int(((frame.config == label) & (frame.input_tokens + frame.output_tokens > 2048)).sum())
    out = capsys.readouterr().out
    assert "extrapolating: " in out or "extrapolation: no config served a request outside" in out


def test_multirun_prints_the_comparison(tmp_path):
    exe = Path(sys.executable).with_name("qfleet-sim")
    cmd = [str(exe), "-m", "policy=fp16_only,energy_first", *SMALL, "outputs.per_request=false",
           f"hydra.sweep.dir={tmp_path}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Policy comparison" in done.stdout and "fp16_only" in done.stdout and "energy_first" in done.stdout
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert list(table.policy) == ["fp16_only", "energy_first"]
    assert (tmp_path / "policy_comparison.png").exists()


def test_wrong_value_on_the_command_line_exits_with_the_key(tmp_path):
    exe = Path(sys.executable).with_name("qfleet-sim")
    done = subprocess.run([str(exe), "cluster.load_estimate=psychic", *SMALL, f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "cluster.load_estimate" in done.stderr
