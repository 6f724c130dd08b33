"""qfleet-calibrate under hostile conditions (issue 12), against the stand-in engine in its own process:

* two kill -9 deaths of the tool's process group during the same point use up no attempt: the third run
  measures the point and the search finds what an undisturbed run finds; the killed runs end ``interrupted``;
* no engine process outlives the tool, after kill -9 of its process group or SIGTERM (checked by PID);
* a second writer on the same results database is refused, naming the first one's PID and host;
* a port held by a foreign server is never measured: refused before the launch, and a foreign server that
  answers the health URL instead of our engine is caught by the listener check;
* a probe that could not be measured stops the search with an error, not as an SLO miss.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from calibrate.coordinator import run_plan
from calibrate.db import ResultsDB
from calibrate.engines import make_handler
from calibrate.plan import plan_from_mapping
from calibrate.procs import is_ours, port_listeners
from test_calibrate_run import SLO, WORKLOAD, standin_plan, write_step

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(slos=[{"ttft_s": 10.0, "tpot_s": 1.0}], sweep_fractions=[1.0],
            search={"start_qps": 8.0, "min_qps": 1.0, "max_qps": 16.0, "rel_tol": 0.5},
            burst={"burst_s": 3.0, "min_requests": 24, "max_requests": 48, "seed": 0})


def write_plan(tmp: Path, name: str, **overrides) -> Path:
    data = standin_plan(tmp, name, **{**TINY, **overrides})
    path = tmp / "plan.json"
    path.write_text(json.dumps(data))
    return path


def start_tool(plan_file: Path, tmp: Path) -> subprocess.Popen:
    """qfleet-calibrate in its own process group (so the whole group can be killed), output to files."""
    n = len(list(tmp.glob("tool-*.out")))
    return subprocess.Popen([sys.executable, "-m", "calibrate.main", f"plan_file={plan_file}",
                             f"hydra.run.dir={tmp / 'hydra'}", "export=false"], cwd=ROOT, start_new_session=True,
                            stdout=open(tmp / f"tool-{n}.out", "wb"), stderr=open(tmp / f"tool-{n}.err", "wb"),
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def query(db: Path, sql: str, args=()) -> list[tuple]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []  # not created yet
    finally:
        conn.close()


def wait_for(what, timeout_s: float = 60.0, every_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what.__doc__ or what}")


def alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def running_point(db: Path, attempt: int):
    """(point key, engine pid) once a search point is measuring at this attempt with its engine launched."""
    rows = query(db, "SELECT point_key, run_id FROM points WHERE status='running' AND attempt=? AND phase='search'",
                 (attempt,))
    if not rows:
        return None
    launch = query(db, "SELECT pid FROM engine_events WHERE kind='launch' AND run_id=? ORDER BY id DESC", (rows[0][1],))
    return (rows[0][0], launch[0][0]) if launch else None


def test_two_tool_deaths_on_one_point_poison_nothing_and_leave_no_engine(tmp_path):
    plan_file = write_plan(tmp_path, "robust-kill", max_attempts_per_point=2)
    db = tmp_path / "results.sqlite"
    killed = []
    for death in (1, 2):
        tool = start_tool(plan_file, tmp_path)
        point, engine = wait_for(lambda: running_point(db, death))
        if death == 1:  # a second writer meanwhile is refused, naming the first
            second = subprocess.run([sys.executable, "-m", "calibrate.main", f"plan_file={plan_file}",
                                     f"hydra.run.dir={tmp_path / 'hydra2'}"], cwd=ROOT, capture_output=True,
                                    text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            assert f"being written by pid {tool.pid} on host {socket.gethostname()}" in second.stderr
            assert "Traceback" not in second.stderr
            point, engine = wait_for(lambda: running_point(db, death))  # the point in flight now
        time.sleep(0.3)  # inside the point (3 s)
        assert running_point(db, death) == (point, engine)
        os.killpg(tool.pid, signal.SIGKILL)
        tool.wait(timeout=30)
        killed.append((point, engine))
        wait_for(lambda: not alive(engine), timeout_s=20)  # the engine died with its owner (by PID)
    assert killed[0][0] == killed[1][0]  # both deaths on the same point
    assert len({engine for _, engine in killed}) == 2

    tool = start_tool(plan_file, tmp_path)
    assert tool.wait(timeout=240) == 0, (tmp_path / "tool-2.err").read_text()[-3000:]
    status, attempt, failed = query(db, "SELECT status, attempt, failed_attempts FROM points WHERE point_key=?",
                                    (killed[0][0],))[0]
    assert (status, attempt, failed) == ("done", 3, 0)
    assert query(db, "SELECT count(*) FROM points WHERE status != 'done'") == [(0,)]
    assert [r[0] for r in query(db, "SELECT status FROM runs ORDER BY id")] == ["interrupted", "interrupted", "done"]
    # The undisturbed search: every probe passes up to max_qps under this loose SLO.
    sat = query(db, "SELECT saturation_qps, bounded FROM saturation")
    assert sat == [(16.0, 0)]
    assert query(db, "SELECT count(*) FROM probes WHERE passed=0") == [(0,)]
    last = query(db, "SELECT pid FROM engine_events WHERE kind='launch' ORDER BY id DESC")[0][0]
    assert not alive(last)


def test_sigterm_stops_the_engine_and_marks_the_run(tmp_path):
    plan_file = write_plan(tmp_path, "robust-term")
    db = tmp_path / "results.sqlite"
    tool = start_tool(plan_file, tmp_path)
    _, engine = wait_for(lambda: running_point(db, 1))
    tool.send_signal(signal.SIGTERM)  # the tool only, not its group
    assert tool.wait(timeout=30) == 128 + signal.SIGTERM
    err = (tmp_path / "tool-0.err").read_text()
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert not alive(engine)
    watchdogs = [int(line.rsplit(" ", 1)[1]) for (detail,) in query(db, "SELECT detail FROM engine_events WHERE "
                                                                      "kind='launch'")
                 for line in detail.splitlines() if line.startswith("watchdog pid")]
    assert watchdogs and not any(alive(pid) for pid in watchdogs)
    assert query(db, "SELECT status FROM runs") == [("interrupted",)]
    assert query(db, "SELECT failed_attempts FROM points") == [(0,)]


@pytest.fixture
def foreign_server(tmp_path):
    """Another stand-in, not started by qfleet-calibrate, listening on a port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "calibrate.standin", "--port", str(port), "--step-model",
                             str(write_step(tmp_path)), "--model-name", "standin-m"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: port_listeners(port), timeout_s=30)
    yield proc, port
    proc.terminate()
    proc.wait(timeout=10)


def test_a_port_taken_by_a_foreign_server_is_refused(tmp_path, foreign_server):
    proc, port = foreign_server
    (listener,) = port_listeners(port)
    assert listener.pid == proc.pid and is_ours(listener, proc.pid)
    data = standin_plan(tmp_path, "robust-port", **TINY)
    data["engine"]["port"] = port
    plan = plan_from_mapping(data)
    with ResultsDB(plan.results_db, plan.name) as db:
        report = run_plan(plan, make_handler(plan.engine), db, log=lambda line: None, command="port test")
        assert not report.ok and f"engine.port {port} is already in use by pid {proc.pid}" in report.entries[0].error
        assert db.points() == [] and db.events(kind="launch") == []
    assert proc.poll() is None  # not ours to stop


def test_a_foreign_server_answering_for_our_engine_is_never_measured(tmp_path, foreign_server, monkeypatch):
    """The race the pre-launch check cannot close: the port was free, our engine never listens on it, and a foreign
    server answers the health URL. The listener check refuses it."""
    import calibrate.supervisor as supervisor

    proc, port = foreign_server
    calls = []
    real = supervisor.port_listeners
    monkeypatch.setattr(supervisor, "port_listeners", lambda p: (calls.append(p), [] if len(calls) == 1 else real(p))[1])
    data = standin_plan(tmp_path, "robust-foreign", **TINY)
    data["engine"]["port"] = port
    data["engine"]["launch"] = ["{python}", "-c", "import time; time.sleep(30)", "{port}"]  # an engine that never listens
    plan = plan_from_mapping(data)
    with ResultsDB(plan.results_db, plan.name) as db:
        report = run_plan(plan, make_handler(plan.engine), db, log=lambda line: None, command="foreign test")
        error = report.entries[0].error
        assert not report.ok and "is not the engine we started" in error and f"pid {proc.pid}" in error
        assert db.points() == [] and len(db.events(kind="foreign-server")) == 1
        engine = db.events(kind="launch")[0]["pid"]
    assert not alive(engine) and proc.poll() is None


def test_a_probe_that_could_not_be_measured_is_not_an_slo_miss(tmp_path):
    """An engine that hangs on every launch: the first search point fails its attempts; the search stops with an
    error instead of reading the failure as an SLO miss and exporting a lower saturation."""
    data = standin_plan(tmp_path, "robust-unmeasured", launch_extra=["--hang-after-requests", "2"], **TINY,
                        max_attempts_per_point=2)
    data["engine"].update(token_timeout_s=1.0, max_restarts=5)
    plan = plan_from_mapping(data)
    with ResultsDB(plan.results_db, plan.name) as db:
        report = run_plan(plan, make_handler(plan.engine), db, log=lambda line: None, command="unmeasured test")
        assert not report.ok and "could not be measured" in report.entries[0].error
        (point,) = db.points()
        assert point.status == "failed" and point.failed_attempts == 2
        assert db.saturations() == [] and db.probes("standin-fp16", WORKLOAD, (10.0, 1.0)) == []
    assert SLO  # the module's SLO is not the one searched here
