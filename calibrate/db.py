"""The results database of a profiling plan (SQLite, WAL): nothing finished is ever measured again.

Tables:

* ``plan``          one row per plan name: its JSON and, per entry, a fingerprint of everything that
                    shapes a measurement (a changed entry under the same plan name is refused). Fingerprints
                    are version 2 (``Plan.entry_fingerprint``: stated capacities and scheduling facts left out,
                    they do not change a measurement); a database holding version 1 (before qfleet knew stated
                    capacities, with ``engine.capacity`` hashed) is migrated when the plan is registered: an
                    entry whose stored fingerprint equals its version-1 fingerprint, computed with the
                    ``engine.capacity`` of the stored plan, gets its version-2 fingerprint (an engine event
                    ``fingerprint-migrated`` records it); anything else is still refused;
* ``runs``          one row per ``qfleet-calibrate`` invocation (start, end, status, command, host);
* ``points``        the unit of work, unique per (plan, entry, workload, phase, point_key): a burst of
                    the saturation search or of the QPS sweep, or a fixed-concurrency fit run. A point
                    is marked ``running`` (committed) when it starts and ``done`` or ``failed`` in the
                    same transaction that stores its requests, so a crash loses at most the point in
                    progress, which the next run measures again (its ``attempt`` counts the tries);
  Each finished point also holds its verdict against the GPU's hardware floors (``physics_json``,
                    ``calibrate.physics``; the column is added to databases made before it);
* ``requests``      every request of a finished point (send, token times, usage lengths, error);
* ``probes``        the saturation search's sequence per (entry, workload, SLO): which QPS, which point,
                    passed or not;
* ``saturation``    the search's outcome per (entry, workload, SLO);
* ``engine_events`` launches, readiness, crashes, hangs, kills and restarts, with log excerpts;
* ``engine_info``   facts about an entry's engine: version, GPU, idle power, capacities, settings;
* ``quality``       imported quality scores.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from calibrate.loadgen import RequestRecord
from calibrate.search import ProbeResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS plan (
    name TEXT PRIMARY KEY, plan_json TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entry_fingerprint (
    plan_name TEXT NOT NULL, entry TEXT NOT NULL, fingerprint TEXT NOT NULL,
    PRIMARY KEY (plan_name, entry));
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, plan_name TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL,
    status TEXT NOT NULL, command TEXT, host TEXT);
CREATE TABLE IF NOT EXISTS points (
    id INTEGER PRIMARY KEY, plan_name TEXT NOT NULL, entry TEXT NOT NULL, workload TEXT NOT NULL,
    phase TEXT NOT NULL, point_key TEXT NOT NULL, qps REAL, concurrency INTEGER,
    input_tokens INTEGER, output_tokens INTEGER, status TEXT NOT NULL, attempt INTEGER NOT NULL,
    result_json TEXT, energy_j REAL, window_s REAL, run_id INTEGER, launch INTEGER,
    started_at REAL, finished_at REAL, error TEXT,
    UNIQUE (plan_name, entry, workload, phase, point_key));
CREATE TABLE IF NOT EXISTS requests (
    point_id INTEGER NOT NULL, idx INTEGER NOT NULL, send_s REAL, first_token_s REAL, finish_s REAL,
    input_tokens INTEGER, output_tokens INTEGER, prompt_tokens INTEGER, completion_tokens INTEGER,
    token_times TEXT, error TEXT, PRIMARY KEY (point_id, idx));
CREATE TABLE IF NOT EXISTS probes (
    plan_name TEXT NOT NULL, entry TEXT NOT NULL, workload TEXT NOT NULL, slo_ttft_s REAL NOT NULL,
    slo_tpot_s REAL NOT NULL, seq INTEGER NOT NULL, qps REAL NOT NULL, point_id INTEGER NOT NULL,
    passed INTEGER NOT NULL, PRIMARY KEY (plan_name, entry, workload, slo_ttft_s, slo_tpot_s, seq));
CREATE TABLE IF NOT EXISTS saturation (
    plan_name TEXT NOT NULL, entry TEXT NOT NULL, workload TEXT NOT NULL, slo_ttft_s REAL NOT NULL,
    slo_tpot_s REAL NOT NULL, saturation_qps REAL NOT NULL, probes INTEGER NOT NULL, bounded INTEGER NOT NULL,
    passing_point_id INTEGER,
    PRIMARY KEY (plan_name, entry, workload, slo_ttft_s, slo_tpot_s));
CREATE TABLE IF NOT EXISTS engine_events (
    id INTEGER PRIMARY KEY, run_id INTEGER, plan_name TEXT NOT NULL, entry TEXT NOT NULL, at REAL NOT NULL,
    kind TEXT NOT NULL, pid INTEGER, detail TEXT);
CREATE TABLE IF NOT EXISTS engine_info (
    plan_name TEXT NOT NULL, entry TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (plan_name, entry, key));
CREATE TABLE IF NOT EXISTS quality (
    plan_name TEXT NOT NULL, model TEXT NOT NULL, quant TEXT NOT NULL, task TEXT NOT NULL,
    score REAL NOT NULL, source TEXT NOT NULL, PRIMARY KEY (plan_name, model, quant, task));
"""


# Columns added after the first schema: (table, column, type). physics_json: the point's verdict against the
# hardware floors; failed_attempts: attempts that failed while the tool was alive (a tool that died mid-point
# is not a failure of the point); owner_pid/owner_host: the process measuring the point; runs.pid: the run's.
MIGRATIONS = (
    ("points", "physics_json", "TEXT"),
    ("points", "failed_attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("points", "owner_pid", "INTEGER"),
    ("points", "owner_host", "TEXT"),
    ("runs", "pid", "INTEGER"),
)


class ResultsDbError(RuntimeError):
    """A results database that does not match the plan run against it."""


@dataclass(frozen=True, slots=True)
class PointKey:
    entry: str
    workload: str  # "" for entry-level points (fit runs)
    phase: str  # "search", "sweep" or "fit"
    point_key: str


@dataclass(frozen=True, slots=True)
class StoredPoint:
    id: int
    key: PointKey
    status: str
    attempt: int
    qps: float | None
    concurrency: int | None
    input_tokens: int | None
    output_tokens: int | None
    result: ProbeResult | None
    energy_j: float | None
    window_s: float | None
    error: str | None
    launch: int | None
    started_at: float | None
    finished_at: float | None
    run_id: int | None = None  # the qfleet-calibrate invocation (one engine launch sequence) that measured it
    failed_attempts: int = 0  # attempts the engine failed while the tool was alive (what max_attempts counts)


def qps_key(qps: float) -> str:
    """A point key for a QPS: exact (repr) so a replayed search finds the points it measured."""
    return f"qps={float(qps)!r}"


def _result_json(result: ProbeResult) -> str:
    return json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                       for k, v in asdict(result).items()})


def _result_from(text: str | None) -> ProbeResult | None:
    if text is None:
        return None
    values = json.loads(text)
    return ProbeResult(**{k: (math.nan if v is None else v) for k, v in values.items()})


LegacyFingerprints = Callable[[dict | None], dict[str, str]]


class ResultsDB:
    def __init__(self, path: str | Path, plan_name: str, readonly: bool = False):
        """Open (or create) a results database. ``readonly=True`` opens an existing one without writing
        anything, not even SQLite's WAL side files when none exist (for exports and fidelity reports from a
        committed database)."""
        self.path = Path(path)
        self.plan_name = plan_name
        self.readonly = readonly
        self._failed_col = "failed_attempts"
        if readonly:
            if not self.path.is_file():
                raise ResultsDbError(f"{self.path}: results database not found")
            wal = self.path.with_name(self.path.name + "-wal")
            flags = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
            self.conn = sqlite3.connect(f"file:{self.path.resolve()}?{flags}", uri=True, timeout=30.0,
                                        isolation_level=None)
            try:
                columns = {row[1] for row in self.conn.execute("PRAGMA table_info(points)")}
            except sqlite3.DatabaseError as exc:
                raise ResultsDbError(f"{self.path}: not a readable SQLite results database ({exc})") from None
            if not columns:
                raise ResultsDbError(f"{self.path}: not a qfleet results database (no points table)")
            self._failed_col = "failed_attempts" if "failed_attempts" in columns else "0"
            return
        if self.path.is_dir():
            raise ResultsDbError(f"{self.path}: results_db is a directory; give the path of an SQLite file "
                                 f"(created when missing)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(SCHEMA)
            for table, column, kind in MIGRATIONS:
                columns = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
                if column not in columns:  # a database made before the column existed
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        except sqlite3.DatabaseError as exc:
            raise ResultsDbError(f"{self.path}: not a usable SQLite results database ({exc}); give another "
                                 f"results_db, or move this file away") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ResultsDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tx(self):
        return _Transaction(self.conn)

    # --- plan and runs ---------------------------------------------------------------------------

    def _mismatch(self, entry: str) -> ResultsDbError:
        return ResultsDbError(
            f"{self.path}: plan '{self.plan_name}' entry '{entry}' was measured with different settings "
            f"(engine, lengths, burst, search or fit settings changed); its stored points would not "
            f"match. Rename the entry or the plan, or use another results_db.")

    def _fingerprint_states(self, fingerprints: dict[str, str], legacy: LegacyFingerprints | None
                            ) -> dict[str, str]:
        """Per entry: 'new' (none stored), 'match', 'legacy' (stored is its version-1 fingerprint) or 'mismatch'."""
        row = self.conn.execute("SELECT plan_json FROM plan WHERE name=?", (self.plan_name,)).fetchone()
        old_fps: dict[str, str] | None = None
        states = {}
        for entry, fingerprint in fingerprints.items():
            old = self.conn.execute("SELECT fingerprint FROM entry_fingerprint WHERE plan_name=? AND entry=?",
                                    (self.plan_name, entry)).fetchone()
            if old is None:
                states[entry] = "new"
            elif old[0] == fingerprint:
                states[entry] = "match"
            else:
                if old_fps is None:
                    stored = None
                    if row is not None:
                        try:
                            stored = json.loads(row[0])
                        except json.JSONDecodeError:
                            stored = None
                    old_fps = legacy(stored) if legacy is not None else {}
                states[entry] = "legacy" if old_fps.get(entry) == old[0] else "mismatch"
        return states

    def check_fingerprints(self, fingerprints: dict[str, str], legacy: LegacyFingerprints | None = None) -> None:
        """Read-only: raise if an entry stored here was measured with other settings (a version-1 fingerprint
        that migrates counts as matching); entries never measured here pass."""
        for entry, state in self._fingerprint_states(fingerprints, legacy).items():
            if state == "mismatch":
                raise self._mismatch(entry)

    def register_plan(self, plan_json: str, fingerprints: dict[str, str],
                      legacy: LegacyFingerprints | None = None) -> list[str]:
        """Record the plan; refuse an entry whose measurement settings changed under the same name.

        ``legacy(stored_plan)`` gives the version-1 fingerprints of the entries (``Plan.legacy_fingerprints``);
        an entry stored under its version-1 fingerprint is migrated to ``fingerprints``. Returns the migrated
        entries."""
        migrated = []
        with self._tx():
            states = self._fingerprint_states(fingerprints, legacy)
            for entry, state in states.items():
                if state == "mismatch":
                    raise self._mismatch(entry)
            row = self.conn.execute("SELECT plan_json FROM plan WHERE name=?", (self.plan_name,)).fetchone()
            if row is None:
                self.conn.execute("INSERT INTO plan VALUES (?, ?, ?)",
                                  (self.plan_name, plan_json, time.strftime("%Y-%m-%dT%H:%M:%S")))
            else:
                self.conn.execute("UPDATE plan SET plan_json=? WHERE name=?", (plan_json, self.plan_name))
            for entry, fingerprint in fingerprints.items():
                if states[entry] == "new":
                    self.conn.execute("INSERT INTO entry_fingerprint VALUES (?, ?, ?)",
                                      (self.plan_name, entry, fingerprint))
                elif states[entry] == "legacy":
                    self.conn.execute("UPDATE entry_fingerprint SET fingerprint=? WHERE plan_name=? AND entry=?",
                                      (fingerprint, self.plan_name, entry))
                    self.conn.execute(
                        "INSERT INTO engine_events (run_id, plan_name, entry, at, kind, pid, detail) "
                        "VALUES (?,?,?,?,?,?,?)",
                        (None, self.plan_name, entry, time.time(), "fingerprint-migrated", None,
                         f"entry fingerprint version 1 -> 2 ({fingerprint}): stated capacities and scheduling "
                         f"facts are no longer part of it"))
                    migrated.append(entry)
        return migrated

    def start_run(self, command: str, host: str) -> int:
        with self._tx():
            cur = self.conn.execute("INSERT INTO runs (plan_name, started_at, status, command, host, pid) "
                                    "VALUES (?,?,?,?,?,?)", (self.plan_name, time.time(), "running", command, host,
                                                             os.getpid()))
            return int(cur.lastrowid)

    def interrupt_stale_runs(self) -> list[dict]:
        """Runs still marked ``running`` whose process is gone: marked ``interrupted`` (call with the writer lock
        held: then no other process of this database is running). Returns them (id, pid, host, started_at)."""
        host = socket.gethostname()
        stale = []
        with self._tx():
            rows = self.conn.execute("SELECT id, pid, host, started_at FROM runs WHERE status='running'").fetchall()
            for run_id, pid, run_host, started in rows:
                if pid == os.getpid() and run_host == host:
                    continue  # this process's own run
                self.conn.execute("UPDATE runs SET status='interrupted', finished_at=? WHERE id=?",
                                  (time.time(), run_id))
                stale.append({"id": run_id, "pid": pid, "host": run_host, "started_at": started})
        return stale

    def runs(self) -> list[dict]:
        keys = ("id", "plan_name", "started_at", "finished_at", "status", "command", "host", "pid")
        rows = self.conn.execute(f"SELECT {', '.join(keys)} FROM runs ORDER BY id").fetchall()
        return [dict(zip(keys, row)) for row in rows]

    def run_commands(self) -> list[str]:
        """The distinct commands of the plan's recorded invocations, in order (provenance of a re-export)."""
        rows = self.conn.execute("SELECT command FROM runs WHERE plan_name=? ORDER BY id", (self.plan_name,))
        return list(dict.fromkeys(r[0] for r in rows if r[0]))

    def finish_run(self, run_id: int, status: str) -> None:
        with self._tx():
            self.conn.execute("UPDATE runs SET finished_at=?, status=? WHERE id=?", (time.time(), status, run_id))

    # --- points ----------------------------------------------------------------------------------

    def get_point(self, key: PointKey) -> StoredPoint | None:
        row = self.conn.execute(
            "SELECT id, status, attempt, qps, concurrency, input_tokens, output_tokens, result_json, energy_j, "
            f"window_s, error, launch, started_at, finished_at, run_id, {self._failed_col} FROM points "
            "WHERE plan_name=? AND entry=? AND workload=? AND phase=? AND point_key=?",
            (self.plan_name, key.entry, key.workload, key.phase, key.point_key)).fetchone()
        if row is None:
            return None
        return StoredPoint(row[0], key, row[1], row[2], row[3], row[4], row[5], row[6], _result_from(row[7]),
                           row[8], row[9], row[10], row[11], row[12], row[13], row[14], int(row[15] or 0))

    def begin_point(self, key: PointKey, run_id: int, launch: int, qps: float | None = None,
                    concurrency: int | None = None, input_tokens: int | None = None,
                    output_tokens: int | None = None) -> tuple[int, int]:
        """Mark a point as running (committed at once); returns (point id, attempt number)."""
        with self._tx():
            row = self.conn.execute(
                "SELECT id, status, attempt FROM points WHERE plan_name=? AND entry=? AND workload=? AND phase=? "
                "AND point_key=?", (self.plan_name, key.entry, key.workload, key.phase, key.point_key)).fetchone()
            now = time.time()
            owner = (os.getpid(), socket.gethostname())
            if row is None:
                cur = self.conn.execute(
                    "INSERT INTO points (plan_name, entry, workload, phase, point_key, qps, concurrency, input_tokens, "
                    "output_tokens, status, attempt, run_id, launch, started_at, owner_pid, owner_host) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (self.plan_name, key.entry, key.workload, key.phase, key.point_key, qps, concurrency,
                     input_tokens, output_tokens, "running", 1, run_id, launch, now, *owner))
                return int(cur.lastrowid), 1
            if row[1] == "done":
                raise ResultsDbError(f"point {key} is already done; it must not be measured again")
            attempt = int(row[2]) + 1
            self.conn.execute("UPDATE points SET status='running', attempt=?, run_id=?, launch=?, started_at=?, "
                              "error=NULL, owner_pid=?, owner_host=? WHERE id=?",
                              (attempt, run_id, launch, now, *owner, row[0]))
            return int(row[0]), attempt

    def fail_attempt(self, point_id: int, error: str) -> None:
        """An attempt that the engine failed while this tool was alive: it counts against max_attempts_per_point.
        (An attempt left ``running`` by a tool that died never comes here, so it does not count.)"""
        with self._tx():
            self.conn.execute("UPDATE points SET status='interrupted', error=?, failed_attempts=failed_attempts+1 "
                              "WHERE id=?", (error[:2000], point_id))

    def retry_failed(self, point_id: int) -> None:
        """A point recorded ``failed`` by an earlier run gets a fresh set of attempts in this one."""
        with self._tx():
            self.conn.execute("UPDATE points SET status='interrupted', failed_attempts=0, result_json=NULL "
                              "WHERE id=? AND status='failed'", (point_id,))
            self.conn.execute("DELETE FROM requests WHERE point_id=?", (point_id,))

    def finish_point(self, point_id: int, status: str, result: ProbeResult | None, records: Iterable[RequestRecord],
                     energy_j: float | None, window_s: float | None, error: str | None = None) -> None:
        """Store the point's outcome and all its requests in one transaction."""
        if status not in ("done", "failed"):
            raise ValueError(f"finish_point status must be 'done' or 'failed', got {status!r}")
        with self._tx():
            self.conn.execute("DELETE FROM requests WHERE point_id=?", (point_id,))
            self.conn.executemany(
                "INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(point_id, r.index, r.send_s, _finite(r.first_token_s), _finite(r.finish_s), r.input_tokens,
                  r.output_tokens, r.prompt_tokens, r.completion_tokens,
                  json.dumps([round(t, 6) for t in r.token_times_s]), r.error or None) for r in records])
            self.conn.execute(
                "UPDATE points SET status=?, result_json=?, energy_j=?, window_s=?, finished_at=?, error=? WHERE id=?",
                (status, _result_json(result) if result is not None else None, energy_j, window_s, time.time(),
                 error, point_id))

    def set_physics(self, point_id: int, verdict_json: str) -> None:
        """The point's verdict against the hardware floors (``calibrate.physics``)."""
        with self._tx():
            self.conn.execute("UPDATE points SET physics_json=? WHERE id=?", (verdict_json, point_id))

    def physics(self, point_id: int) -> dict | None:
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(points)")}
        if "physics_json" not in columns:
            return None
        row = self.conn.execute("SELECT physics_json FROM points WHERE id=?", (point_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def points(self, entry: str | None = None, phase: str | None = None, status: str | None = None) -> list[StoredPoint]:
        sql = ("SELECT entry, workload, phase, point_key FROM points WHERE plan_name=?")
        args: list = [self.plan_name]
        for col, value in (("entry", entry), ("phase", phase), ("status", status)):
            if value is not None:
                sql += f" AND {col}=?"
                args.append(value)
        rows = self.conn.execute(sql + " ORDER BY id", args).fetchall()
        return [self.get_point(PointKey(*row)) for row in rows]  # type: ignore[misc]

    def requests(self, point_id: int) -> list[RequestRecord]:
        rows = self.conn.execute(
            "SELECT idx, send_s, first_token_s, finish_s, token_times, input_tokens, output_tokens, prompt_tokens, "
            "completion_tokens, error FROM requests WHERE point_id=? ORDER BY idx", (point_id,)).fetchall()
        return [RequestRecord(r[0], r[1], _nan(r[2]), _nan(r[3]), tuple(json.loads(r[4])), r[5], r[6], r[7], r[8],
                              r[9] or "") for r in rows]

    # --- search bookkeeping ----------------------------------------------------------------------

    def record_probe(self, entry: str, workload: str, slo: tuple[float, float], seq: int, qps: float,
                     point_id: int, passed: bool) -> None:
        with self._tx():
            self.conn.execute("INSERT OR REPLACE INTO probes VALUES (?,?,?,?,?,?,?,?,?)",
                              (self.plan_name, entry, workload, slo[0], slo[1], seq, qps, point_id, int(passed)))

    def probes(self, entry: str, workload: str, slo: tuple[float, float]) -> list[tuple[int, float, int, bool]]:
        rows = self.conn.execute(
            "SELECT seq, qps, point_id, passed FROM probes WHERE plan_name=? AND entry=? AND workload=? AND "
            "slo_ttft_s=? AND slo_tpot_s=? ORDER BY seq", (self.plan_name, entry, workload, slo[0], slo[1])).fetchall()
        return [(r[0], r[1], r[2], bool(r[3])) for r in rows]

    def record_saturation(self, entry: str, workload: str, slo: tuple[float, float], saturation_qps: float,
                          probes: int, bounded: bool, passing_point_id: int | None) -> None:
        with self._tx():
            self.conn.execute("INSERT OR REPLACE INTO saturation VALUES (?,?,?,?,?,?,?,?,?)",
                              (self.plan_name, entry, workload, slo[0], slo[1], saturation_qps, probes, int(bounded),
                               passing_point_id))

    def saturations(self, entry: str | None = None) -> list[dict]:
        sql = "SELECT entry, workload, slo_ttft_s, slo_tpot_s, saturation_qps, probes, bounded, passing_point_id " \
              "FROM saturation WHERE plan_name=?"
        args: list = [self.plan_name]
        if entry is not None:
            sql += " AND entry=?"
            args.append(entry)
        keys = ("entry", "workload", "slo_ttft_s", "slo_tpot_s", "saturation_qps", "probes", "bounded", "passing_point_id")
        return [dict(zip(keys, row)) for row in self.conn.execute(sql, args).fetchall()]

    # --- engine events and facts -----------------------------------------------------------------

    def event(self, run_id: int | None, entry: str, kind: str, pid: int | None = None, detail: str = "") -> None:
        with self._tx():
            self.conn.execute("INSERT INTO engine_events (run_id, plan_name, entry, at, kind, pid, detail) "
                              "VALUES (?,?,?,?,?,?,?)", (run_id, self.plan_name, entry, time.time(), kind, pid,
                                                         detail[:8000]))

    def events(self, entry: str | None = None, kind: str | None = None) -> list[dict]:
        sql = "SELECT id, run_id, entry, at, kind, pid, detail FROM engine_events WHERE plan_name=?"
        args: list = [self.plan_name]
        if entry is not None:
            sql += " AND entry=?"
            args.append(entry)
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind)
        keys = ("id", "run_id", "entry", "at", "kind", "pid", "detail")
        return [dict(zip(keys, row)) for row in self.conn.execute(sql + " ORDER BY id", args).fetchall()]

    def set_info(self, entry: str, key: str, value) -> None:
        with self._tx():
            self.conn.execute("INSERT OR REPLACE INTO engine_info VALUES (?,?,?,?)",
                              (self.plan_name, entry, key, json.dumps(value)))

    def info(self, entry: str) -> dict:
        rows = self.conn.execute("SELECT key, value FROM engine_info WHERE plan_name=? AND entry=?",
                                 (self.plan_name, entry)).fetchall()
        return {k: json.loads(v) for k, v in rows}

    # --- quality ---------------------------------------------------------------------------------

    def put_quality(self, rows: Iterable[dict]) -> None:
        with self._tx():
            self.conn.executemany("INSERT OR REPLACE INTO quality VALUES (?,?,?,?,?,?)",
                                  [(self.plan_name, r["model"], r["quant"], r["task"], float(r["score"]), r["source"])
                                   for r in rows])

    def quality(self) -> list[dict]:
        keys = ("model", "quant", "task", "score", "source")
        rows = self.conn.execute("SELECT model, quant, task, score, source FROM quality WHERE plan_name=? "
                                 "ORDER BY model, quant, task", (self.plan_name,)).fetchall()
        return [dict(zip(keys, row)) for row in rows]


def _finite(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
