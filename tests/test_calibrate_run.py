"""Whole calibration runs against the stand-in engine (a real server in its own process).

* the saturation search lands within 15 % of the stand-in's known saturation (the same search on the
  simulated instance with the same step model, requests and SLO);
* the fit recovers what the runs identify of the stand-in's step model within a stated error (see
  ``test_fit_recovers_the_standin_step_model``);
* the exported profile set loads and qfleet-sim runs on it;
* re-running the plan measures nothing and launches nothing;
* an engine killed with SIGKILL mid-sweep is restarted and the plan finishes with no point lost and
  none measured twice; a hung engine is detected, restarted, and its point measured again;
* a point left unfinished by a crashed coordinator is measured again on the next run.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import sim.main  # noqa: F401  (registers the qfleet-sim schema)
from calibrate.arrivals import BurstPlan
from calibrate.db import PointKey, ResultsDB
from calibrate.engines import make_handler
from calibrate.coordinator import run_plan
from calibrate.main import run as calibrate_run
from calibrate.plan import plan_from_mapping, validate_plan
from calibrate.search import SearchSettings, find_saturation
from calibrate.sim_probe import SimulatedProbe
from profiles.profile_set import LatencySlo, ProfileSet
from profiles.schema import ConfigKey
from profiles.step_model import StepModel

# The stand-in's step model: decode iterations of 12-25 ms, a compute-bound kink at 150 prompt tokens.
STEP = dict(overhead_s=0.003, per_seq_s=0.0, per_token_s=5e-5, weights_s=0.009, flop_token_s=6e-5, per_kv_token_s=5e-7,
            per_prefill_token_s=3e-5, prefill_attn_s=1e-8, idle_w=0.0, active_w=0.0, flop_token_j=0.0, per_kv_token_j=0.0,
            weights_j=0.0, max_power_w=0.0, kv_capacity_tokens=32000, max_batch=32, max_num_tokens=2048)
SLO = {"ttft_s": 0.25, "tpot_s": 0.05}
WORKLOAD = "fixed-128-24"
BURST = {"burst_s": 3.0, "min_requests": 40, "max_requests": 300, "seed": 0}
SEARCH = {"start_qps": 16.0, "rel_tol": 0.05, "min_qps": 0.5, "max_qps": 500.0}
LM_EVAL = {"results": {"hellaswag": {"acc_norm,none": 0.70}, "arc_challenge": {"acc_norm,none": 0.50},
                       "winogrande": {"acc,none": 0.60}, "triviaqa": {"exact_match,remove_whitespace": 0.40}},
           "lm_eval_version": "0.4.8"}


def write_step(tmp: Path, **extra) -> Path:
    path = tmp / "standin-step.json"
    path.write_text(json.dumps({**STEP, **extra}))
    return path


def standin_plan(tmp: Path, name: str, launch_extra=(), **overrides) -> dict:
    plan = {
        "name": name, "results_db": str(tmp / "results.sqlite"), "export_path": str(tmp / "profile"),
        "work_dir": str(tmp / "work"),
        "engine": {"kind": "openai", "version": "qfleet-standin (test)",
                   "launch": ["{python}", "-m", "calibrate.standin", "--host", "{host}", "--port", "{port}",
                              "--step-model", "{checkpoint}", "--model-name", "{model}", *launch_extra],
                   "request_model": "{model}", "request_extras": {"ignore_eos": True, "min_tokens": "{output_tokens}"},
                   "capacity_path": "/standin/config", "ready_timeout_s": 30, "token_timeout_s": 4,
                   "liveness_interval_s": 0.25, "warmup_requests": 1},
        "entries": [{"name": "standin-fp16", "model": "standin-m", "checkpoint": str(write_step(tmp)),
                     "quant": "fp16", "tp": 1, "gpu": "standin-cpu", "workloads": [WORKLOAD]}],
        "slos": [SLO], "search": SEARCH, "burst": BURST, "sweep_fractions": [0.3, 0.6, 1.0],
        "fit": {"enabled": False}, "energy": {"enabled": True, "idle_s": 0.2},
        "prefix_probe": {"enabled": False},
    }
    plan.update(overrides)
    return plan


def true_saturation() -> float:
    """The same search, on the simulated instance, with the same step model, requests and SLO."""
    b = BURST
    bp = BurstPlan.for_workload(WORKLOAD, b["seed"], b["burst_s"], b["min_requests"], b["max_requests"], 4096)
    probe = SimulatedProbe(StepModel(**STEP), bp.input_tokens, bp.output_tokens, seed=b["seed"], burst_s=b["burst_s"],
                           min_requests=b["min_requests"], max_requests=b["max_requests"])
    return find_saturation(probe, LatencySlo(**SLO), SearchSettings(**SEARCH)).saturation_qps


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """One full qfleet-calibrate run (search, sweep, fit, quality import, export) on the stand-in."""
    tmp = tmp_path_factory.mktemp("calibrated")
    (tmp / "lm_eval.json").write_text(json.dumps(LM_EVAL))
    data = standin_plan(tmp, "standin-full", fit={
        "prefill_input_tokens": [16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2040], "prefill_output_tokens": 4,
        "prefill_requests": 6, "decode_concurrency": [1, 2, 4, 8, 16, 32], "decode_input_tokens": [64, 512],
        "decode_output_tokens": 32, "decode_rounds": 2},
        quality={"lm_eval_results": [{"path": str(tmp / "lm_eval.json"), "model": "standin-m", "quant": "fp16"}]})
    plan_file = tmp / "plan.json"
    plan_file.write_text(json.dumps(data))
    cfg = OmegaConf.create({"plan_file": str(plan_file), "dry_run": False, "export": True, "plan": {}})
    lines: list[str] = []
    started = time.perf_counter()
    code = calibrate_run(cfg, log=lines.append, command=f"qfleet-calibrate plan_file={plan_file}")
    return {"tmp": tmp, "code": code, "lines": lines, "wall_s": time.perf_counter() - started,
            "plan": plan_from_mapping(data)}


def test_saturation_search_finds_the_known_saturation(calibrated):
    assert calibrated["code"] == 0, "\n".join(calibrated["lines"])
    plan = calibrated["plan"]
    with ResultsDB(plan.results_db, plan.name) as db:
        sat = db.saturations("standin-fp16")
        assert len(sat) == 1 and sat[0]["bounded"]
        found, truth = sat[0]["saturation_qps"], true_saturation()
        assert truth > 10
        assert found == pytest.approx(truth, rel=0.15), (found, truth)
        probes = db.probes("standin-fp16", WORKLOAD, (SLO["ttft_s"], SLO["tpot_s"]))
        assert len(probes) == sat[0]["probes"] >= 4 and [p[0] for p in probes] == list(range(len(probes)))
        search = db.points(entry="standin-fp16", phase="search", status="done")
        assert {p.qps for p in search} == {p[1] for p in probes}
        assert all(p.result.failed_requests == 0 for p in search)


def test_fit_recovers_the_standin_step_model(calibrated):
    plan = calibrated["plan"]
    fit = ProfileSet.load(plan.export_path).manifest["fit"]["standin-fp16"]
    step = ProfileSet.load(plan.export_path).step(ConfigKey("standin-cpu", "standin-m", "fp16", 1))
    # What the runs identify (calibrate.fit): the decode constant overhead_s + weights_s, the decode slope
    # per_seq_s + per_token_s, the prefill slope per_token_s + per_prefill_token_s, per_kv_token_s,
    # prefill_attn_s, and (from the compute-bound kink) flop_token_s and weights_s.
    # Stated error: 5 % on the decode constant, 15 % on the slopes, per_kv_token_s, flop_token_s and
    # weights_s, 25 % on prefill_attn_s (a few ms at 2040 tokens) and on overhead_s (constant minus weights).
    def identified(s) -> dict:
        return {"decode constant": s.overhead_s + s.weights_s, "decode slope": s.per_seq_s + s.per_token_s,
                "prefill slope": s.per_token_s + s.per_prefill_token_s, "per_kv_token_s": s.per_kv_token_s,
                "flop_token_s": s.flop_token_s, "weights_s": s.weights_s, "prefill_attn_s": s.prefill_attn_s,
                "overhead_s": s.overhead_s}
    tolerance = {"decode constant": 0.05, "prefill_attn_s": 0.25, "overhead_s": 0.25}
    got, want = identified(step), identified(StepModel(**STEP))
    for name in got:
        assert got[name] == pytest.approx(want[name], rel=tolerance.get(name, 0.15)), (name, got[name], want[name])
    assert (step.kv_capacity_tokens, step.max_batch, step.max_num_tokens) == (32000, 32, 2048)
    assert fit["kink_tokens"] == pytest.approx(150, rel=0.15)
    assert 0 < fit["request_overhead_s"] < 0.01
    assert max(fit["mape_pct"].values()) < 5.0
    # Held-out: the sweep bursts replayed in the simulator with the fitted model. TTFTs at low load are
    # ~20 ms, so a few ms of host scheduling jitter on this shared CPU is a large relative error there.
    held_out = fit["validation_mape_pct"]
    assert held_out["p50_tpot_s"] < 10.0 and held_out["p90_tpot_s"] < 10.0, held_out
    assert held_out["p50_ttft_s"] < 25.0 and held_out["p90_ttft_s"] < 25.0, held_out


def test_exported_profile_set_is_measured_and_loads(calibrated):
    plan = calibrated["plan"]
    ps = ProfileSet.load(plan.export_path)
    assert ps.configs() == [ConfigKey("standin-cpu", "standin-m", "fp16", 1)]
    for table in (ps.step_models, ps.curves, ps.saturation):
        assert set(table["provenance"]) == {"measured"}
        assert table["source"].str.contains("engine openai qfleet-standin \\(test\\)").all()
        assert table["source"].str.contains("no GPU energy counter|NVML|energy").all()
    assert len(ps.curves) == 3 and ps.curves["energy_per_output_token_j"].isna().all()
    assert ps.step_models["idle_w"].iloc[0] == 0.0 and "no GPU energy measured" in ps.step_models["source"].iloc[0]
    assert ps.quality_score("standin-m", "fp16", "chat-s") == pytest.approx(55.0)
    sat = ps.saturation_qps(ConfigKey("standin-cpu", "standin-m", "fp16", 1), WORKLOAD, LatencySlo(**SLO))
    assert sat > 0
    # the fit domain is that of the fit runs: prefill prompts up to 2,040 (+4 output), decode runs at
    # 64/512 prompt tokens (+32 output) with up to 32 clients
    domain = ps.fit_domain(ConfigKey("standin-cpu", "standin-m", "fp16", 1))
    assert (domain.max_prompt_tokens, domain.max_context_tokens, domain.max_batch) == (2040, 2044, 32)
    assert ps.manifest["fit"]["standin-fp16"]["fit_domain"] == domain.as_dict()


def test_qfleet_sim_runs_on_the_calibrated_profiles(calibrated, tmp_path):
    plan = calibrated["plan"]
    overrides = [f"profiles.path={plan.export_path}", "cluster.gpu_types=[standin-cpu]",
                 "~cluster.pools.chat-r", "~cluster.pools.code", "~cluster.pools.summarization",
                 "cluster.pools.chat-s={model:standin-m,workload:" + WORKLOAD + "}",
                 "slo.tasks.chat-s.ttft_s=0.25", "slo.tasks.chat-s.tpot_s=0.05", "slo.tasks.chat-s.quality_min=50",
                 "trace=azure_conv", "trace.target_rate_qps=40", "trace.duration_s=120", "policy=fp16_only",
                 "progress=false", "outputs.figures=false", "outputs.per_request=false"]
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    summary = sim.main.run(cfg, tmp_path)
    assert summary["policy"] == "fp16_only"
    written = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    assert written["profiles"] == plan.export_path
    extrapolation = written["extrapolation"]["standin-cpu/standin-m/fp16/tp1"]
    assert extrapolation["domain"] == {"max_prompt_tokens": 2040, "max_context_tokens": 2044, "max_batch": 32}
    refused = ("exceeds_max_num_tokens", "exceeds_kv_capacity", "queue_full", "no_replica")  # never taken
    assert extrapolation["requests"] == summary["requests"] - sum(summary["rejected_by_reason"].get(r, 0)
                                                                  for r in refused)
    assert extrapolation["any"] == extrapolation["context"] > 0  # Azure conversations: longer than 2,044 tokens


def test_rerunning_a_finished_plan_measures_and_launches_nothing(calibrated):
    plan = calibrated["plan"]
    handler = make_handler(plan.engine)
    with ResultsDB(plan.results_db, plan.name) as db:
        before = len(db.points(status="done"))
        report = run_plan(plan, handler, db, log=lambda line: None, command="rerun")
        assert report.ok and report.measured_points == 0 and report.launches == 0
        assert report.skipped_points >= before and len(db.points(status="done")) == before


def test_sigkill_mid_sweep_restarts_and_loses_nothing(tmp_path):
    data = standin_plan(tmp_path, "standin-kill", sweep_fractions=[0.2, 0.4, 0.6, 0.8, 1.0],
                        search={**SEARCH, "start_qps": 30.0, "rel_tol": 0.3},
                        burst={**BURST, "burst_s": 2.0, "min_requests": 30})
    plan = plan_from_mapping(data)
    handler = make_handler(plan.engine)
    validate_plan(plan, handler)
    killed: dict = {}

    def killer():
        with ResultsDB(plan.results_db, plan.name) as watch:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and "pid" not in killed:
                sweep = watch.points(phase="sweep")
                done = [p for p in sweep if p.status == "done"]
                running = [p for p in sweep if p.status == "running"]
                if len(done) >= 2 and running:
                    time.sleep(0.8)  # well inside the third sweep point
                    pid = watch.events(kind="launch")[-1]["pid"]
                    os.kill(pid, signal.SIGKILL)
                    killed.update(pid=pid, point=running[0].key.point_key)
                time.sleep(0.05)

    thread = threading.Thread(target=killer)
    with ResultsDB(plan.results_db, plan.name) as db:
        thread.start()
        report = run_plan(plan, handler, db, log=lambda line: None, command="kill test")
        thread.join()
        assert "pid" in killed, "the killer never found a sweep point in progress"
        assert report.ok and report.restarts == 1 and report.launches == 2
        sweep = db.points(phase="sweep")
        assert len(sweep) == 5 and all(p.status == "done" for p in sweep)
        assert len({p.key.point_key for p in sweep}) == 5
        attempts = {p.key.point_key: p.attempt for p in sweep}
        assert attempts[killed["point"]] == 2 and sum(attempts.values()) == 6
        for p in sweep:  # each point's requests are one measurement, all of it from one engine launch
            reqs = db.requests(p.id)
            assert len(reqs) == p.result.n_requests + p.result.failed_requests == len({r.index for r in reqs})
            assert p.launch == (2 if p.key.point_key == killed["point"] or p.started_at > killed_time(db) else 1)
        crash = db.events(kind="crash")
        assert len(crash) == 1 and "exited" in crash[0]["detail"] and len(db.events(kind="restart")) == 1


def killed_time(db: ResultsDB) -> float:
    return db.events(kind="crash")[0]["at"]


def test_hung_engine_is_restarted_and_the_point_measured_again(tmp_path):
    marker = tmp_path / "hung-once"
    data = standin_plan(tmp_path, "standin-hang",
                        launch_extra=["--hang-after-requests", "15", "--hang-once-file", str(marker)],
                        slos=[{"ttft_s": 10.0, "tpot_s": 1.0}], sweep_fractions=[1.0],
                        search={"start_qps": 20.0, "min_qps": 1.0, "max_qps": 20.0, "rel_tol": 0.5},
                        burst={"burst_s": 1.0, "min_requests": 20, "max_requests": 40, "seed": 0})
    data["engine"]["token_timeout_s"] = 1.0
    plan = plan_from_mapping(data)
    with ResultsDB(plan.results_db, plan.name) as db:
        report = run_plan(plan, make_handler(plan.engine), db, log=lambda line: None, command="hang test")
        assert report.ok and report.restarts == 1 and marker.exists()
        hang = db.events(kind="hang")
        assert len(hang) == 1 and "no bytes" in hang[0]["detail"]
        first = db.points(phase="search")[0]
        assert first.status == "done" and first.attempt == 2 and first.result.failed_requests == 0


def test_point_left_running_by_a_crashed_coordinator_is_measured_again(tmp_path):
    data = standin_plan(tmp_path, "standin-resume", slos=[{"ttft_s": 10.0, "tpot_s": 1.0}], sweep_fractions=[1.0],
                        search={"start_qps": 10.0, "min_qps": 1.0, "max_qps": 10.0, "rel_tol": 0.5},
                        burst={"burst_s": 1.0, "min_requests": 10, "max_requests": 20, "seed": 0})
    plan = plan_from_mapping(data)
    key = PointKey("standin-fp16", WORKLOAD, "search", "qps=10.0")
    with ResultsDB(plan.results_db, plan.name) as db:
        db.register_plan(plan.to_json(), {e.name: plan.entry_fingerprint(e) for e in plan.entries})
        db.begin_point(key, run_id=0, launch=1, qps=10.0)  # the coordinator died here, mid-point
        report = run_plan(plan, make_handler(plan.engine), db, log=lambda line: None, command="resume test")
        assert report.ok and report.measured_points == 2  # the interrupted search point and the sweep point
        point = db.get_point(key)
        assert point.status == "done" and point.attempt == 2 and len(db.requests(point.id)) == 10
    assert np.isfinite(point.result.p90_ttft_s)


def test_trace_replay_phase_keeps_every_request(tmp_path):
    """A slice of the shipped Azure conv trace, scaled to a rate, replayed once and recorded per request."""
    replay = {"name": "conv-slice", "trace": "conv", "start_s": 100.0, "duration_s": 6.0, "rate_qps": 12.0,
              "max_total_tokens": 160}
    plan = plan_from_mapping(standin_plan(tmp_path, "replay-test", replays=[replay], sweep_fractions=[1.0]))
    handler = make_handler(plan.engine)
    validate_plan(plan, handler)
    from traces.azure import load_shipped_trace
    from traces.transform import scale_to_rate, slice_time

    expected = scale_to_rate(slice_time(load_shipped_trace("conv"), 100.0, 106.0), 12.0)
    with ResultsDB(plan.results_db, plan.name) as db:
        report = run_plan(plan, handler, db, log=lambda _: None)
        assert report.ok
        point = db.get_point(PointKey("standin-fp16", "trace:conv", "replay", "conv-slice"))
        assert point is not None and point.status == "done"
        records = db.requests(point.id)
    assert len(records) == len(expected) > 0
    assert all(r.ok for r in records)
    sends = np.array([r.send_s for r in records])
    assert np.allclose(sends - sends[0], expected.arrival_s - expected.arrival_s[0], atol=0.05)
    assert all(r.input_tokens + r.output_tokens <= 160 for r in records)
    # A second run finds the replay done and sends nothing.
    with ResultsDB(plan.results_db, plan.name) as db:
        again = run_plan(plan, handler, db, log=lambda _: None)
    assert again.measured_points == 0


@pytest.mark.parametrize("block_tokens", [0, 16])
def test_calibration_detects_whether_the_engine_reuses_prefixes(tmp_path, block_tokens):
    """The stand-in with prefix caching (blocks of 16 words) skips all but 16 of a repeated 1,024-token prompt's
    prefill: 13.6 ms of step-model time instead of 157 ms; without it the repeat costs the same."""
    extra = ("--prefix-block-tokens", str(block_tokens)) if block_tokens else ()
    data = standin_plan(tmp_path, f"standin-prefix-{block_tokens}", launch_extra=extra, sweep_fractions=[1.0],
                        slos=[{"ttft_s": 10.0, "tpot_s": 1.0}],
                        search={"start_qps": 10.0, "min_qps": 1.0, "max_qps": 10.0, "rel_tol": 0.5},
                        burst={"burst_s": 1.0, "min_requests": 10, "max_requests": 20, "seed": 0},
                        prefix_probe={"enabled": True, "prompt_tokens": 1024})
    plan = plan_from_mapping(data)
    with ResultsDB(plan.results_db, plan.name) as db:
        report = run_plan(plan, make_handler(plan.engine), db, log=lambda line: None, command="prefix probe test")
        assert report.ok
        verdict = db.info("standin-fp16")["prefix_caching"]
        check = db.info("standin-fp16")["prompt_check"]
    step = StepModel(**STEP)
    cold_s = step.iteration_s(1, 1024, 0, 1024, 1024 ** 2)
    warm_s = step.iteration_s(1, 16, 0, 16, 1024 ** 2 - 1008 ** 2)
    assert verdict["detected"] is bool(block_tokens)
    assert verdict["cold_ttft_s"] == pytest.approx(cold_s, rel=0.25, abs=0.01)
    assert verdict["warm_ttft_s"] == pytest.approx(warm_s if block_tokens else cold_s, rel=0.25, abs=0.01)
    assert check["problems"] == [] and check["samples"] == 33 and check["longest_unintended_shared_tokens"] <= 3
