"""One writer per results database: an exclusive lock on ``<results_db>.lock`` naming its holder.

The lock is an ``flock`` on the lock file, so the kernel releases it when its holder dies, however it dies
(kill -9 included): a lock is never stale on the host that took it. The file holds the holder's PID, host,
command and start time, which is what a second writer is told. The file descriptor is not inherited by the
engines the holder starts (Python opens files close-on-exec), so an engine never keeps the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from calibrate.db import ResultsDbError


class DatabaseLocked(ResultsDbError):
    """Another qfleet-calibrate process is writing this results database."""


def lock_path(results_db: str | Path) -> Path:
    db = Path(results_db)
    return db.with_name(db.name + ".lock")


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        info = {}
    if not info:
        return "another process (its PID was not written yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')} since {since} ('{info.get('command', '?')}')"


class WriterLock:
    """``with WriterLock(db, command):`` holds the database's writer lock or raises ``DatabaseLocked``."""

    def __init__(self, results_db: str | Path, command: str = ""):
        self.path = lock_path(results_db)
        self.command = command
        self._fd: int | None = None
        self._readonly = False

    def acquire(self, create: bool = True) -> "WriterLock":
        """Take the lock. ``create=False`` (readers that write elsewhere, like an export): only when a lock file
        exists, and without writing to it; no lock file, or one that cannot be opened for writing, means no
        writer to wait for."""
        if not create:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return self
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._locked() from None
            self._fd, self._readonly = fd, True
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._locked() from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                                  "since": time.time()}).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def _locked(self) -> DatabaseLocked:
        return DatabaseLocked(
            f"{self.path.with_suffix('')}: results database is being written by {_holder(self.path)}; one plan "
            f"and database take one writer at a time: wait for it to finish (or stop it), or give this run "
            f"another results_db")

    def release(self) -> None:
        if self._fd is None:
            return
        if not self._readonly:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd, self._readonly = None, False

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
