"""Stated capacities and scheduling facts: plan validation, fingerprints (version 2 and the migration from
version 1), the transformers continuous-batching derivation, and exporting from a results database alone."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from calibrate.db import ResultsDB, ResultsDbError
from calibrate.engines import make_handler
from calibrate.engines.transformers_cb import GIB, LLAMA2_7B, cb_capacity, plan_statements, weights_bytes
from calibrate.export import ExportError
from calibrate.main import run as calibrate_run
from calibrate.plan import PlanError, load_plan_file, plan_from_mapping, validate_plan
from profiles.profile_set import ProfileSet
from profiles.schema import ConfigKey
from test_calibrate_plan import standin_plan

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "experiments" / "real_engine" / "plan_h100.json"
DB = ROOT / "profiles" / "measured" / "transformers_h100" / "results.sqlite"
STATED = {"capacity": {"kv_capacity_tokens": 1000, "max_batch": 8, "max_num_tokens": 512},
          "capacity_source": "derived: test", "scheduling": {"kv_pad_tokens": 256, "host_admission": True}}


def test_stated_capacity_and_scheduling_are_not_fingerprinted(tmp_path):
    plain = plan_from_mapping(standin_plan(tmp_path))
    data = standin_plan(tmp_path)
    data["entries"][0].update(STATED)
    data["engine"].update(capacity={"max_batch": 4}, capacity_source="engine docs")
    stated = plan_from_mapping(data)
    e0, e1 = plain.entries[0], stated.entries[0]
    assert plain.entry_fingerprint(e0) == stated.entry_fingerprint(e1)
    # the entry's statements override the engine's
    values, source = stated.stated_capacity(e1)
    assert values == {"kv_capacity_tokens": 1000, "max_batch": 8, "max_num_tokens": 512, "kv_pad_tokens": 256,
                      "host_admission": True}
    assert source == "derived: test; engine docs"
    assert make_handler(stated.engine).known_capacity(e1)["max_batch"] == 8
    # what shapes a measurement still does
    data["entries"][0]["launch_args"] = ["--x"]
    assert plan_from_mapping(data).entry_fingerprint(plan_from_mapping(data).entries[0]) != plain.entry_fingerprint(e0)


def test_bad_statements_are_named(tmp_path):
    data = standin_plan(tmp_path)
    data["entries"][0].update(capacity={"max_batchs": 4, "kv_capacity_tokens": 0},
                              scheduling={"kv_pad_tokens": -1, "host_admission": "yes", "chunk": 1})
    plan = plan_from_mapping(data)
    with pytest.raises(PlanError) as err:
        validate_plan(plan, make_handler(plan.engine))
    text = str(err.value)
    for needle in ("unknown key 'max_batchs'", "capacity.kv_capacity_tokens", "scheduling.kv_pad_tokens",
                   "scheduling.host_admission", "unknown key 'chunk'", "capacity_source"):
        assert needle in text, needle


def test_version1_fingerprints_migrate_and_mismatches_are_still_refused(tmp_path):
    data = standin_plan(tmp_path)
    data["engine"]["capacity"] = {"max_batch": 16}
    old = plan_from_mapping(data)
    v1 = old.legacy_entry_fingerprint(old.entries[0])
    db = ResultsDB(tmp_path / "r.sqlite", old.name)
    db.conn.execute("INSERT INTO plan VALUES (?, ?, ?)", (old.name, old.to_json(), "then"))
    db.conn.execute("INSERT INTO entry_fingerprint VALUES (?, ?, ?)", (old.name, "a", v1))
    # the plan now states the capacity on the entry instead, with its source: same measurements
    data["engine"]["capacity"] = {}
    data["entries"][0].update(STATED)
    new = plan_from_mapping(data)
    v2 = {e.name: new.entry_fingerprint(e) for e in new.entries}
    db.check_fingerprints(v2, new.legacy_fingerprints)  # read-only: passes, changes nothing
    assert db.conn.execute("SELECT fingerprint FROM entry_fingerprint").fetchone()[0] == v1
    assert db.register_plan(new.to_json(), v2, new.legacy_fingerprints) == ["a"]
    assert db.conn.execute("SELECT fingerprint FROM entry_fingerprint").fetchone()[0] == v2["a"]
    assert [e["kind"] for e in db.events("a")] == ["fingerprint-migrated"]
    assert db.register_plan(new.to_json(), v2, new.legacy_fingerprints) == []  # idempotent
    # a changed measurement setting is refused, version 1 or 2
    data["burst"] = {"burst_s": 5.0}
    changed = plan_from_mapping(data)
    with pytest.raises(ResultsDbError, match="different settings"):
        db.register_plan(changed.to_json(), {e.name: changed.entry_fingerprint(e) for e in changed.entries},
                         changed.legacy_fingerprints)
    db.close()


def test_the_committed_database_matches_the_plan_through_its_version1_fingerprints():
    plan = load_plan_file(PLAN)
    with ResultsDB(DB, plan.name, readonly=True) as db:
        stored = dict(db.conn.execute("SELECT entry, fingerprint FROM entry_fingerprint").fetchall())
        assert stored == plan.legacy_fingerprints(json.loads(db.conn.execute("SELECT plan_json FROM plan")
                                                             .fetchone()[0]))
        db.check_fingerprints({e.name: plan.entry_fingerprint(e) for e in plan.entries}, plan.legacy_fingerprints)


def test_transformers_capacity_from_its_memory_formula():
    assert weights_bytes(LLAMA2_7B, "bf16") == 2 * 6_738_415_616
    bf16 = cb_capacity(int(79.18 * GIB), weights_bytes(LLAMA2_7B, "bf16"), LLAMA2_7B)
    assert (bf16["kv_capacity_tokens"], bf16["max_batch"], bf16["max_num_tokens"]) == (114_688, 448, 8192)
    nf4 = cb_capacity(int(79.18 * GIB), weights_bytes(LLAMA2_7B, "nf4"), LLAMA2_7B)
    assert (nf4["kv_capacity_tokens"], nf4["max_batch"]) == (130_304, 509)
    # with logits processors the engine keeps 80 % instead of 90 %
    assert cb_capacity(int(79.18 * GIB), weights_bytes(LLAMA2_7B, "bf16"), LLAMA2_7B, 0.8)["max_batch"] == 398
    # the committed plan states exactly these, labelled derived
    plan = load_plan_file(PLAN)
    statements = plan_statements()
    for entry in plan.entries:
        want = statements["nf4" if entry.quant == "w4a16-int" else "bf16"]
        assert dict(entry.capacity) == want["capacity"] and dict(entry.scheduling) == want["scheduling"]
        assert entry.capacity_source.startswith("derived")


def _plan_copy(tmp_path: Path, **entry_changes) -> Path:
    data = json.loads(PLAN.read_text())
    data["results_db"] = str(DB)
    data["export_path"] = str(tmp_path / "profile")
    for e in data["entries"]:
        for key, value in entry_changes.items():
            if value is None:
                e.pop(key, None)
            else:
                e[key] = value
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    return path


def _cfg(plan_file: Path, **extra):
    return OmegaConf.create({"plan_file": str(plan_file), "dry_run": False, "export": True, "plan": {}, **extra})


def test_export_only_needs_no_checkpoint_and_writes_nothing_to_the_database(tmp_path):
    plan_file = _plan_copy(tmp_path)
    plan = load_plan_file(plan_file)
    assert not Path(plan.entries[0].checkpoint).exists()
    with pytest.raises(PlanError, match="does not exist"):  # a measuring run needs the checkpoints
        validate_plan(plan, make_handler(plan.engine))
    before = hashlib.sha256(DB.read_bytes()).hexdigest()
    lines: list[str] = []
    assert calibrate_run(_cfg(plan_file, export_only=True), log=lines.append, command="test export") == 0
    assert hashlib.sha256(DB.read_bytes()).hexdigest() == before
    assert not DB.with_name(DB.name + "-wal").exists()
    ps = ProfileSet.load(tmp_path / "profile")
    step = ps.step(ConfigKey("h100-80gb", "llama2-7b", "fp16", 1))
    assert (step.kv_capacity_tokens, step.max_batch, step.max_num_tokens) == (114_688, 448, 8192)
    assert step.kv_pad_tokens == 16384 and step.per_padded_kv_token_s > 0
    assert step.admission_lead_per_seq_s == step.per_seq_s > 0
    source = ps.step_models["source"].iloc[0]
    assert "stated in the plan (derived" in source and "exported from" in source
    assert "qfleet-calibrate plan_file=experiments/real_engine/plan_h100.json" in source  # how it was measured
    assert ps.manifest["fit"]["llama2-7b-bf16-tp1"]["capacity_lower_bounds"] == []
    assert any("export only: nothing measured" in line for line in lines)


def test_export_refuses_lower_bound_capacities_unless_asked(tmp_path):
    plan_file = _plan_copy(tmp_path, capacity=None, capacity_source=None, scheduling=None)
    with pytest.raises(ExportError, match="neither reported by the engine nor stated in the plan"):
        calibrate_run(_cfg(plan_file, export_only=True), log=lambda line: None)
    assert calibrate_run(_cfg(plan_file, export_only=True, export_lower_bounds=True), log=lambda line: None) == 0
    ps = ProfileSet.load(tmp_path / "profile")
    assert ps.step(ConfigKey("h100-80gb", "llama2-7b", "fp16", 1)).max_batch == 64  # the largest fit run
    assert ps.manifest["fit"]["llama2-7b-bf16-tp1"]["capacity_lower_bounds"] == [
        "kv_capacity_tokens", "max_batch", "max_num_tokens"]


def test_export_only_refuses_a_database_measured_with_other_settings(tmp_path):
    db_copy = tmp_path / "results.sqlite"
    shutil.copy(DB, db_copy)
    data = json.loads(PLAN.read_text())
    data.update(results_db=str(db_copy), export_path=str(tmp_path / "profile"))
    data["burst"]["burst_s"] = 30
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(data))
    with pytest.raises(ResultsDbError, match="different settings"):
        calibrate_run(_cfg(plan_file, export_only=True), log=lambda line: None)
