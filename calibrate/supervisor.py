"""Engine process supervision: launch, readiness, liveness, crash and hang detection, kill and restart.

``EngineSupervisor`` runs an entry's one-time preparation steps (skipped when already done), launches
the server in its own process group with stdout and stderr captured to a log file per launch, and
waits until the health URL answers 200 (failing early, with the log's tail, if the process exits, and
after ``ready_timeout_s`` if it never answers). While a measurement runs, ``monitor()`` watches the
process and its health URL; it raises ``EngineCrashed`` when the process is gone and ``EngineFailure``
after three failed health checks in a row. A hang (no token for ``token_timeout_s``) is detected by
the load generator. ``restart()`` kills the whole process group (SIGTERM, then SIGKILL) and launches
again, at most ``max_restarts`` times per entry. Every step is recorded in ``engine_events``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp

from calibrate.db import ResultsDB
from calibrate.engines.base import LaunchSpec
from calibrate.loadgen import EngineCrashed, EngineFailure, Endpoint
from calibrate.plan import Plan, PlanEntry
from calibrate.procs import engine_preexec, is_ours, port_listeners, proc_available, start_watchdog


class EngineStartError(RuntimeError):
    """The engine could not be prepared or brought up; the message holds its log's tail."""


class EngineGaveUp(RuntimeError):
    """The engine failed more often than ``max_restarts`` allows."""


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


class EngineSupervisor:
    def __init__(self, handler, entry: PlanEntry, plan: Plan, db: ResultsDB, run_id: int,
                 log=print):
        self.handler = handler
        self.entry = entry
        self.plan = plan
        self.spec = plan.engine
        self.db = db
        self.run_id = run_id
        self.log = log
        self.workdir = Path(plan.work_dir)
        self.proc: subprocess.Popen | None = None
        self.launch_spec: LaunchSpec | None = None
        self.log_path: Path | None = None
        self.launches = 0
        self.restarts = 0
        self.endpoint: Endpoint | None = None
        self.watchdog: subprocess.Popen | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_running(self) -> Endpoint:
        if not self.running or self.endpoint is None:
            if self.proc is not None:  # it died between measurements
                self._record("crash", f"exit code {self.proc.poll()} found between measurements\n{_tail(self.log_path)}")
                self.restart("process exited between measurements")
            else:
                self.start()
        assert self.endpoint is not None
        return self.endpoint

    def start(self) -> Endpoint:
        port = self.spec.port or free_port(self.spec.host)
        taken = port_listeners(port)
        if taken:
            raise EngineStartError(f"entry '{self.entry.name}': engine.port {port} is already in use by "
                                   f"{'; '.join(l.describe() for l in taken)}; stop that server or choose another "
                                   f"engine.port (0 picks a free one)")
        spec = self.handler.launch_spec(self.entry, port, self.workdir)
        self.launch_spec = spec
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for step in spec.prepare:
            self._prepare(step, logs)
        for path, text in spec.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        self.launches += 1
        self.log_path = logs / f"{self.entry.name}-run{self.run_id}-launch{self.launches}.log"
        env = {**os.environ, **dict(spec.env)}
        with open(self.log_path, "wb") as out:
            try:
                # Own session (a kill of the engine's group never reaches the tool), SIGTERM when the tool dies
                # (PR_SET_PDEATHSIG), and a watchdog that kills the whole group after the tool dies.
                self.proc = subprocess.Popen(list(spec.argv), stdout=out, stderr=subprocess.STDOUT, env=env,
                                             start_new_session=True, cwd=str(self.workdir),
                                             preexec_fn=engine_preexec)
            except OSError as exc:
                raise EngineStartError(f"entry '{self.entry.name}': engine.launch: cannot start {spec.argv[0]!r} "
                                       f"({exc.strerror or exc}); give an installed program or an existing "
                                       f"executable path") from None
        self.watchdog = start_watchdog(self.proc.pid)
        self._record("launch", f"{' '.join(spec.argv)}\nlog: {self.log_path}\nwatchdog pid {self.watchdog.pid}")
        self.log(f"[{self.entry.name}] launched engine pid {self.proc.pid} on {spec.base_url} (log {self.log_path})")
        started = time.perf_counter()
        self._wait_ready(spec)
        self._record("ready", f"ready after {time.perf_counter() - started:.1f} s at {spec.base_url}")
        self.endpoint = self.handler.endpoint(self.entry, spec.base_url)
        return self.endpoint

    def _prepare(self, step, logs: Path) -> None:
        if step.done_marker.exists():
            return
        log_path = logs / f"{self.entry.name}-{step.name}.log"
        self._record("prepare", f"{step.name}: {' '.join(step.argv)}\nlog: {log_path}")
        self.log(f"[{self.entry.name}] {step.name}: {' '.join(step.argv)}")
        with open(log_path, "wb") as out:
            try:
                result = subprocess.run(list(step.argv), stdout=out, stderr=subprocess.STDOUT,
                                        env={**os.environ, **dict(step.env)}, cwd=str(self.workdir))
            except FileNotFoundError as exc:
                raise EngineStartError(f"entry '{self.entry.name}': {step.name} could not start ({exc})") from None
        if result.returncode != 0 or not step.done_marker.exists():
            raise EngineStartError(f"entry '{self.entry.name}': {step.name} failed (exit {result.returncode}); "
                                   f"log {log_path}:\n{_tail(log_path)}")

    def _wait_ready(self, spec: LaunchSpec) -> None:
        deadline = time.monotonic() + self.spec.ready_timeout_s
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            code = self.proc.poll()
            if code is not None:
                detail = f"exited with code {code} before becoming ready; log {self.log_path}:\n{_tail(self.log_path)}"
                self._record("crash", detail)
                self.stop("exited before becoming ready")
                raise EngineStartError(f"entry '{self.entry.name}': engine {detail}")
            try:
                with opener.open(spec.health_url, timeout=self.spec.health_timeout_s) as resp:
                    healthy = resp.status == 200
            except OSError:
                healthy = False
            if healthy:
                self._check_ours(spec)
                return
            if time.monotonic() > deadline:
                self.stop("not ready in time")
                raise EngineStartError(f"entry '{self.entry.name}': engine not ready after {self.spec.ready_timeout_s:g} s; "
                                       f"log {self.log_path}:\n{_tail(self.log_path)}")
            time.sleep(0.2)

    def _check_ours(self, spec: LaunchSpec) -> None:
        """The server answering on the port must be the process we started (or one of its process group): a
        foreign server that took the port would be measured instead of the engine."""
        port = urllib.parse.urlsplit(spec.health_url).port
        if port is None or not proc_available():
            return  # no /proc (not Linux): cannot check; the port was free before the launch
        listeners = port_listeners(port)
        ours = [l for l in listeners if is_ours(l, self.proc.pid)]
        foreign = [l for l in listeners if not is_ours(l, self.proc.pid)]
        if ours and not foreign:
            return
        detail = (f"the server answering {spec.health_url} is not the engine we started (pid {self.proc.pid}): "
                  f"port {port} is held by {'; '.join(l.describe() for l in foreign) or 'nobody we can see'}")
        self._record("foreign-server", detail)
        self.stop("a foreign server holds the engine's port")
        raise EngineStartError(f"entry '{self.entry.name}': {detail}; stop that server or choose another engine.port "
                               f"(0 picks a free one). Nothing was measured against it.")

    def stop(self, reason: str) -> None:
        proc = self.proc
        self.proc = None
        self.endpoint = None
        watchdog, self.watchdog = self.watchdog, None
        if proc is None:
            return
        try:
            self._stop(proc)
        finally:
            if watchdog is not None:  # it exits by itself once the engine's group is gone
                try:
                    watchdog.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    watchdog.kill()
                    watchdog.wait()
        self._record("kill", f"{reason}; exit code {proc.returncode}", pid=proc.pid)

    def _stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        else:
            try:  # the leader is gone; make sure no worker of its group survives
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def restart(self, reason: str) -> Endpoint:
        self.restarts += 1
        if self.restarts > self.spec.max_restarts:
            self.stop(f"giving up: {reason}")
            raise EngineGaveUp(f"entry '{self.entry.name}': engine failed {self.restarts} times "
                               f"(max_restarts={self.spec.max_restarts}); last: {reason}")
        self.stop(reason)
        self._record("restart", reason)
        self.log(f"[{self.entry.name}] restarting engine: {reason}")
        return self.start()

    def failed(self, failure: EngineFailure) -> None:
        """Record a failure seen during a measurement, with the log's tail."""
        self._record(failure.kind, f"{failure}\nlog {self.log_path}:\n{_tail(self.log_path)}")

    # --- liveness ----------------------------------------------------------------------------------

    async def monitor(self) -> None:
        """Return never while the engine is healthy; raise when it died or stopped answering."""
        proc = self.proc
        url = self.launch_spec.health_url if self.launch_spec else ""
        misses = 0
        timeout = aiohttp.ClientTimeout(total=self.spec.health_timeout_s)
        async with aiohttp.ClientSession(trust_env=False) as session:
            while True:
                await asyncio.sleep(self.spec.liveness_interval_s)
                if proc is None or proc.poll() is not None:
                    code = None if proc is None else proc.returncode
                    raise EngineCrashed(f"engine process exited (code {code}) during the measurement")
                try:
                    async with session.get(url, timeout=timeout, allow_redirects=False) as resp:
                        misses = 0 if resp.status == 200 else misses + 1
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    misses += 1
                if misses >= 3:
                    raise EngineFailure(f"health check {url} failed 3 times in a row")

    def _record(self, kind: str, detail: str, pid: int | None = None) -> None:
        if pid is None and self.proc is not None:
            pid = self.proc.pid
        self.db.event(self.run_id, self.entry.name, kind, pid, detail)
