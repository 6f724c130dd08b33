"""Hardware floors (calibrate.physics): points and fits faster than the GPU allows are flagged and stop the export."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from pathlib import Path

import pytest

from calibrate.db import ResultsDB
from calibrate.engines import make_handler
from calibrate.export import ExportError
from calibrate.loadgen import RequestRecord
from calibrate.main import export_only
from calibrate.physics import check_point, check_step_model, floors_for
from calibrate.plan import PlanError, load_plan_file, plan_from_mapping, validate_plan
from profiles.step_model import StepModel

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "experiments" / "real_engine" / "plan_h200_distinct.json"
# llama2-7b: 32 layers x (4 x 4096^2 + 3 x 4096 x 11008) layer parameters, an LM head of 32000 x 4096
LAYERS = 32 * (4 * 4096 ** 2 + 3 * 4096 * 11008)
LM_HEAD = 32000 * 4096
H200_PEAK = 1979e12 / 2  # BF16 dense: an FP16 model's GEMMs run on BF16 tensor cores


def record(index, ttft_s, tpot_s, prompt=1000, completion=10):
    first = ttft_s
    times = tuple(first + k * tpot_s for k in range(completion))
    return RequestRecord(index, 0.0, first, times[-1], times, prompt, completion, prompt, completion)


def test_floors_of_llama2_7b_on_an_h200_by_hand():
    f = floors_for("h200-141gb", "llama2-7b", "fp16", 1)
    assert f.known
    assert f.prefill_s(1000) == pytest.approx(2 * (LAYERS * 1000 + LM_HEAD) / H200_PEAK, rel=1e-9)  # 13.1 ms
    assert f.prefill_s(7435) == pytest.approx(0.0973, abs=5e-4)  # the 7,435 tokens: >= 97 ms
    assert f.prefill_s(1) == f.decode_iteration_s  # one token: reading the weights is the floor
    fp8 = floors_for("h200-141gb", "llama2-7b", "w8a8-fp", 1)  # FP8 GEMMs: twice the peak, half the floor
    assert fp8.prefill_s_per_token == pytest.approx(f.prefill_s_per_token / 2)
    assert f.decode_iteration_s == pytest.approx(2 * (32 * (4 * 4096 ** 2 + 3 * 4096 * 11008) + 2 * 32000 * 4096)
                                                 / 4.8e12, rel=1e-9)  # 2.8 ms of weight reads
    assert floors_for("h200-141gb", "llama2-7b", "fp16", 2).decode_iteration_s == pytest.approx(f.decode_iteration_s / 2)


def test_a_prefill_faster_than_its_flops_is_flagged_with_its_ratio():
    f = floors_for("h200-141gb", "llama2-7b", "fp16", 1)
    floor_s = f.prefill_s(7435)
    v = check_point(f, "fit", [record(0, 0.048, 0.036, prompt=7435), record(1, 0.53, 0.036, prompt=7435)])
    assert v.status == "violation" and v.ttft_violations == 1 and v.tpot_violations == 0
    assert v.worst_ttft_ratio == pytest.approx(0.048 / floor_s) and v.examples == (0,)
    assert "1 first token(s) faster than the prefill floor" in v.describe()


def test_what_a_plan_shares_on_purpose_is_not_charged_to_the_floor():
    f = floors_for("h200-141gb", "llama2-7b", "fp16", 1)
    fast = [record(0, 0.02, 0.036, prompt=7435)]
    assert check_point(f, "replay", fast).status == "violation"
    assert check_point(f, "replay", fast, shared_tokens=lambda i: 7168).status == "ok"  # 267 tokens computed


def test_decode_faster_than_reading_the_weights_and_power_below_idle_are_flagged():
    f = floors_for("h200-141gb", "llama2-7b", "fp16", 1)
    v = check_point(f, "sweep", [record(0, 0.2, 0.001)], energy_j=100.0, window_s=1.0, idle_w=121.0)
    assert v.status == "violation" and v.tpot_violations == 1 and v.power_violation and v.mean_power_w == 100.0
    ok = check_point(f, "sweep", [record(0, 0.2, 0.036)], energy_j=400.0, window_s=1.0, idle_w=121.0)
    assert ok.status == "ok" and ok.checked_requests == 1


def test_the_prefix_probe_repeats_are_expected_reuse():
    f = floors_for("h200-141gb", "llama2-7b", "fp16", 1)
    recs = [record(i, t, 0.036, prompt=7435) for i, t in enumerate((0.53, 0.53, 0.05, 0.05, 0.53))]
    v = check_point(f, "prefix-probe", recs)
    assert v.status == "ok" and v.expected_reuse == 2 and v.checked_requests == 3


def test_an_unknown_gpu_is_unchecked_not_passed():
    v = check_point(floors_for("standin-cpu", "standin-m", "fp16", 1), "fit", [record(0, 1e-6, 1e-6)])
    assert v.status == "unchecked" and "standin-cpu" in v.reason


def test_a_step_model_faster_than_the_floors_is_reported():
    f = floors_for("h200-141gb", "llama2-7b", "fp16", 1)
    fast = StepModel(overhead_s=0.0, per_seq_s=0.0, per_token_s=0.0, weights_s=0.001, flop_token_s=1e-6,
                     per_kv_token_s=0.0, per_prefill_token_s=0.0, prefill_attn_s=0.0, idle_w=100.0, active_w=200.0,
                     flop_token_j=0.0, per_kv_token_j=0.0, weights_j=0.0, max_power_w=700.0,
                     kv_capacity_tokens=100000, max_batch=64, max_num_tokens=8192)
    problems = check_step_model(fast, f, [1024, 8192])
    assert len(problems) == 3  # both prefills (1 ms and 8.2 ms vs 13.7 and 109 ms) and the 1 ms decode (< 2.8 ms)
    assert problems[0].startswith("prefill of 1024 tokens takes 1.0 ms in the step model, below the floor 13.4 ms")


def test_the_measured_h200_profile_passes_and_records_its_checks(tmp_path):
    plan = load_plan_file(PLAN)
    data = json.loads(PLAN.read_text())
    data["export_path"] = str(tmp_path / "profile")
    plan = plan_from_mapping(data)
    export_only(plan, make_handler(plan.engine), lambda line: None, "test")
    manifest = json.loads((tmp_path / "profile" / "manifest.json").read_text())
    assert manifest["physics"]["violations"] == [] and manifest["physics"]["checked_points"] == 55
    assert manifest["prefix_caching"]["llama2-7b-bf16-tp1"]["detected"] is True


def test_export_refuses_a_point_faster_than_physics_unless_the_plan_accepts_it(tmp_path):
    db_path = tmp_path / "results.sqlite"
    shutil.copy(ROOT / "profiles" / "measured" / "transformers_h200_distinct" / "results.sqlite", db_path)
    con = sqlite3.connect(db_path)  # make one 8,192-token prefill 40 ms: what a cached prefix looks like
    pid = con.execute("SELECT id FROM points WHERE point_key='prefill-c1-in8192-out4'").fetchone()[0]
    con.execute("UPDATE requests SET first_token_s = send_s + 0.04 WHERE point_id=? AND idx=(SELECT min(idx) FROM "
                "requests WHERE point_id=?)", (pid, pid))
    con.commit()
    con.close()
    data = json.loads(PLAN.read_text())
    data.update(results_db=str(db_path), export_path=str(tmp_path / "profile"))
    plan = plan_from_mapping(data)
    with pytest.raises(ExportError, match=r"fit - prefill-c1-in8192-out4: 1 first token\(s\) faster than the prefill "
                                          r"floor \(worst at 0.37 x the floor\)"):
        export_only(plan, make_handler(plan.engine), lambda line: None, "test")
    assert not (tmp_path / "profile").exists()
    data["physics"] = {"accept_violations": True, "reason": "test: a tampered point"}
    plan = plan_from_mapping(data)
    export_only(plan, make_handler(plan.engine), lambda line: None, "test")
    physics = json.loads((tmp_path / "profile" / "manifest.json").read_text())["physics"]
    assert physics["accepted_reason"] == "test: a tampered point" and len(physics["violations"]) == 1


def test_accepting_violations_needs_a_reason():
    data = json.loads(PLAN.read_text())
    data["physics"] = {"accept_violations": True, "reason": " "}
    plan = plan_from_mapping(data)
    with pytest.raises(PlanError, match="plan.physics.reason: accept_violations is true but no reason"):
        validate_plan(plan, make_handler(plan.engine), launch_checks=False)


def test_a_database_without_the_verdict_column_gains_it(tmp_path):
    db_path = tmp_path / "old.sqlite"
    shutil.copy(ROOT / "profiles" / "measured" / "transformers_h200" / "results.sqlite", db_path)
    con = sqlite3.connect(db_path)
    assert "physics_json" not in {r[1] for r in con.execute("PRAGMA table_info(points)")}
    con.close()
    with ResultsDB(db_path, "transformers-h200-llama2-7b") as db:
        point = db.points(phase="fit")[0]
        assert db.physics(point.id) is None
        db.set_physics(point.id, json.dumps({"status": "ok"}))
        assert db.physics(point.id) == {"status": "ok"}
    assert math.isfinite(point.qps or 0.0)
