"""The results database: WAL, one transaction per point, unique keys, interrupted attempts, plan fingerprints."""

from __future__ import annotations

import math
import sqlite3

import pytest

from calibrate.db import PointKey, ResultsDB, ResultsDbError, qps_key
from calibrate.loadgen import RequestRecord
from calibrate.validate import measured_result


def records(n=3):
    return [RequestRecord(i, 0.25 * i, 0.25 * i + 0.125, 0.25 * i + 0.5, (0.25 * i + 0.125, 0.25 * i + 0.5), 8, 2, 8, 2)
            for i in range(n)]


def test_point_lifecycle_and_unique_keys(tmp_path):
    db = ResultsDB(tmp_path / "r.sqlite", "plan")
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    key = PointKey("e", "w", "sweep", qps_key(1.5))
    assert key.point_key == "qps=1.5" and db.get_point(key) is None
    pid, attempt = db.begin_point(key, run_id=1, launch=1, qps=1.5)
    assert attempt == 1 and db.get_point(key).status == "running"
    db.fail_attempt(pid, "crash: engine exited")
    pid2, attempt = db.begin_point(key, run_id=1, launch=2, qps=1.5)
    assert pid2 == pid and attempt == 2
    recs = records()
    db.finish_point(pid, "done", measured_result(1.5, recs), recs, None, 1.0)
    stored = db.get_point(key)
    assert stored.status == "done" and stored.attempt == 2 and stored.launch == 2
    assert stored.result.n_requests == 3 and math.isnan(stored.result.mean_power_w)
    assert db.requests(pid) == recs
    with pytest.raises(ResultsDbError, match="already done"):
        db.begin_point(key, run_id=2, launch=1)
    with pytest.raises(sqlite3.IntegrityError):
        db.conn.execute("INSERT INTO points (plan_name, entry, workload, phase, point_key, status, attempt) "
                        "VALUES ('plan','e','w','sweep','qps=1.5','done',1)")


def test_a_failed_transaction_leaves_the_point_unfinished(tmp_path):
    db = ResultsDB(tmp_path / "r.sqlite", "plan")
    key = PointKey("e", "", "fit", "decode-c1-in8-out2")
    pid, _ = db.begin_point(key, 1, 1)
    bad = records() + [records()[0]]  # duplicate request index: the insert fails inside the transaction
    with pytest.raises(sqlite3.IntegrityError):
        db.finish_point(pid, "done", measured_result(0.0, records()), bad, None, 1.0)
    assert db.get_point(key).status == "running" and db.requests(pid) == []


def test_changed_entry_settings_are_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsDB(path, "plan") as db:
        db.register_plan("{}", {"a": "f1", "b": "f2"})
    with ResultsDB(path, "plan") as db:
        db.register_plan("{}", {"a": "f1", "b": "f2", "c": "f3"})  # a new entry is fine
        with pytest.raises(ResultsDbError, match="entry 'b' was measured with different settings"):
            db.register_plan("{}", {"a": "f1", "b": "changed"})
    with ResultsDB(path, "other-plan") as db:
        db.register_plan("{}", {"b": "changed"})  # another plan name is another namespace


def test_events_info_probes_and_quality(tmp_path):
    db = ResultsDB(tmp_path / "r.sqlite", "plan")
    db.event(1, "e", "launch", 123, "argv")
    db.event(1, "e", "crash", 123, "exit -9")
    assert [e["kind"] for e in db.events("e")] == ["launch", "crash"] and db.events(kind="crash")[0]["pid"] == 123
    db.set_info("e", "capacity", {"max_batch": 16})
    assert db.info("e") == {"capacity": {"max_batch": 16}}
    db.record_probe("e", "w", (1.0, 0.2), 0, 2.0, 7, True)
    db.record_probe("e", "w", (1.0, 0.2), 1, 4.0, 8, False)
    assert db.probes("e", "w", (1.0, 0.2)) == [(0, 2.0, 7, True), (1, 4.0, 8, False)]
    db.record_saturation("e", "w", (1.0, 0.2), 2.0, 2, True, 7)
    assert db.saturations("e")[0]["saturation_qps"] == 2.0
    db.put_quality([{"model": "m", "quant": "fp16", "task": "code", "score": 12.5, "source": "s"}])
    assert db.quality() == [{"model": "m", "quant": "fp16", "task": "code", "score": 12.5, "source": "s"}]
