"""Engines that never outlive their owner, and servers that are ours (Linux ``/proc``; elsewhere the checks
are skipped and say so).

* ``engine_preexec``: the engine's leader gets SIGTERM when the thread that started it dies
  (``prctl(PR_SET_PDEATHSIG)``), whatever kills the tool;
* ``start_watchdog``: a small process in its own session (a kill of the tool's process group does not reach
  it) that waits for the tool to die and then kills the engine's whole process group, SIGTERM then SIGKILL,
  so workers the engine started die too; it exits by itself when the engine's group is gone;
* ``port_listeners``: which processes listen on a TCP port (``/proc/net/tcp*`` socket inodes matched against
  ``/proc/<pid>/fd``), so readiness can tell our engine from another server on the same port.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1
_TCP_LISTEN = "0A"


def engine_preexec() -> None:
    """In the child, before exec: die (SIGTERM) with the parent. Best effort: a platform without prctl skips it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


WATCHDOG = r"""
import os, signal, sys, time
owner, pgid, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
signal.signal(signal.SIGINT, signal.SIG_IGN)
def group_alive():
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
while True:
    if not group_alive():
        sys.exit(0)
    if os.getppid() != owner:
        break
    time.sleep(0.2)
for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        sys.exit(0)
    end = time.monotonic() + wait
    while time.monotonic() < end:
        if not group_alive():
            sys.exit(0)
        time.sleep(0.1)
"""


def start_watchdog(engine_pgid: int, grace_s: float = 10.0) -> subprocess.Popen:
    """A watchdog that kills process group ``engine_pgid`` when this process dies (see module doc)."""
    return subprocess.Popen([sys.executable, "-I", "-S", "-c", WATCHDOG, str(os.getpid()), str(engine_pgid),
                             str(grace_s)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


@dataclass(frozen=True)
class Listener:
    pid: int | None  # None: the socket's owner could not be read (another user's process)
    pgid: int | None
    command: str

    def describe(self) -> str:
        if self.pid is None:
            return "a process this user cannot see (another user's)"
        return f"pid {self.pid} ({self.command[:120]})"


def proc_available() -> bool:
    return Path("/proc/net/tcp").exists()


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _TCP_LISTEN and int(local.rsplit(":", 1)[1], 16) == port and inode != "0":
                inodes.add(inode)
    return inodes


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def port_listeners(port: int) -> list[Listener]:
    """The processes listening on TCP ``port`` (any address). Empty when nothing listens or /proc is absent."""
    inodes = _listening_inodes(port)
    if not inodes:
        return []
    wanted = {f"socket:[{i}]" for i in inodes}
    found: dict[int, Listener] = {}
    seen_inodes: set[str] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target in wanted:
                seen_inodes.add(target)
                try:
                    pgid = os.getpgid(pid)
                except OSError:
                    pgid = None
                found[pid] = Listener(pid, pgid, _command(pid))
    listeners = list(found.values())
    if len(seen_inodes) < len(wanted):
        listeners.append(Listener(None, None, "?"))
    return listeners


def descends_from(pid: int, root: int) -> bool:
    """Is ``pid`` ``root`` or one of its descendants (walking the PPid chain in /proc)?"""
    for _ in range(64):
        if pid == root:
            return True
        if pid <= 1:
            return False
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        ppid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), 0)
        pid = ppid
    return False


def is_ours(listener: Listener, root: int) -> bool:
    """A listener belongs to the engine whose leader is ``root``: same process group, or a descendant."""
    return listener.pid is not None and (listener.pgid == root or descends_from(listener.pid, root))
