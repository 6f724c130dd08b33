"""Per-request state of a run, held in flat columns indexed by request id.

Plain Python lists on the hot path (scalar access to a list is several times cheaper than to a
numpy array); they turn into numpy columns once, when requests are summarised or written.

Two tables share one layout, so the engine (``sim.instance``) runs unchanged on either:

* ``RequestTable`` holds every request of a trace (the in-memory path): slot = request id.
* ``RequestRing`` holds only the requests in flight (the streaming path): a ring of ``capacity``
  slots (a power of two), slot = request id & ``mask``. Requests are loaded in blocks as the trace
  is read; once every request up to some id is finished or rejected, that prefix is handed out as
  numpy columns (to be written and summarised) and its slots are reused. The ring doubles when the
  requests in flight outgrow it, so memory follows the in-flight count, not the trace length.

The engine reads and writes ``column[rid & table.mask]``; ``RequestTable.mask`` is ``-1`` (all bits
set), so the in-memory path indexes by request id directly.

Shared prefixes: ``prefix_id`` / ``prefix_tokens`` are inputs (-1 / 0 for a trace without them) and
``cached_tokens`` an outcome: the prompt tokens an instance's prefix cache served (``sim.prefix_cache``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from traces.trace import Trace

PENDING, FINISHED, REJECTED = 0, 1, 2
STATUS_NAMES = ("pending", "finished", "rejected")

# Why a request was turned away; index = code stored per request.
REJECT_REASONS = (
    "",
    "exceeds_kv_capacity",  # input + output can never fit the instance's KV cache
    "exceeds_max_num_tokens",  # prompt longer than one iteration's token budget (only without chunked context)
    "queue_full",  # the replica's waiting queue was at its configured limit
    "no_replica",  # the pool had no serving replica when the request arrived
    "unfinished_at_end",  # still queued or running when the drain limit was reached
)
REASON_CODE = {name: code for code, name in enumerate(REJECT_REASONS)}

# Outcome columns and the value a slot holds before its request has an outcome.
_OUTCOME_DEFAULTS = (
    ("first_token_s", math.nan),
    ("finish_s", math.nan),
    ("instance", -1),
    ("status", PENDING),
    ("reason", 0),
    ("energy_j", 0.0),
    ("cached_tokens", 0),
)
_INPUT_COLUMNS = ("arrival_s", "input_tokens", "output_tokens", "task", "prefix_id", "prefix_tokens")
_COLUMN_DTYPES = {
    "arrival_s": np.float64, "input_tokens": np.int64, "output_tokens": np.int64, "task": np.int64,
    "first_token_s": np.float64, "finish_s": np.float64, "instance": np.int64, "status": np.int8,
    "reason": np.int8, "energy_j": np.float64, "prefix_id": np.int64, "prefix_tokens": np.int64,
    "cached_tokens": np.int64,
}


class RequestTable:
    """Inputs (from the trace) and outcomes of every request of one run."""

    __slots__ = (
        "n",
        "mask",
        "arrival_s",
        "input_tokens",
        "output_tokens",
        "task",
        "task_names",
        "prefix_id",
        "prefix_tokens",
        "first_token_s",
        "finish_s",
        "instance",
        "status",
        "reason",
        "energy_j",
        "cached_tokens",
    )

    def __init__(self, trace: Trace):
        self.n = len(trace)
        self.mask = -1  # slot = request id
        self.arrival_s: list[float] = trace.arrival_s.astype(float).tolist()
        self.input_tokens: list[int] = trace.input_tokens.astype(np.int64).tolist()
        self.output_tokens: list[int] = trace.output_tokens.astype(np.int64).tolist()
        self.task: list[int] = trace.task.astype(np.int64).tolist()
        self.task_names = trace.task_names
        if trace.has_prefixes:
            self.prefix_id: list[int] = trace.prefix_id.astype(np.int64).tolist()
            self.prefix_tokens: list[int] = trace.prefix_tokens.astype(np.int64).tolist()
        else:
            self.prefix_id = [-1] * self.n
            self.prefix_tokens = [0] * self.n
        self.first_token_s: list[float] = [math.nan] * self.n
        self.finish_s: list[float] = [math.nan] * self.n
        self.instance: list[int] = [-1] * self.n
        self.status: list[int] = [PENDING] * self.n
        self.reason: list[int] = [0] * self.n
        self.energy_j: list[float] = [0.0] * self.n
        self.cached_tokens: list[int] = [0] * self.n  # prompt tokens served from a prefix cache

    def reject(self, rid: int, reason: str, now_s: float) -> None:
        self.status[rid] = REJECTED
        self.reason[rid] = REASON_CODE[reason]
        self.finish_s[rid] = now_s

    def counts(self) -> dict[str, int]:
        status = np.asarray(self.status)
        return {name: int(np.count_nonzero(status == code)) for code, name in enumerate(STATUS_NAMES)}


@dataclass(frozen=True, slots=True, eq=False)
class RequestBatch:
    """Consecutive requests ``[first_id, first_id + len)`` with their inputs and outcomes, as numpy columns."""

    first_id: int
    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    task: np.ndarray
    prefix_id: np.ndarray
    prefix_tokens: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    instance: np.ndarray
    status: np.ndarray
    reason: np.ndarray
    energy_j: np.ndarray
    cached_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def request_id(self) -> np.ndarray:
        return np.arange(self.first_id, self.first_id + len(self), dtype=np.int64)


def table_batch(table: RequestTable) -> RequestBatch:
    """The whole in-memory table as one batch."""
    return RequestBatch(0, **{name: np.asarray(getattr(table, name), dtype=_COLUMN_DTYPES[name])
                              for name in _INPUT_COLUMNS + tuple(n for n, _ in _OUTCOME_DEFAULTS)})


class RequestRing:
    """The requests in flight of a streamed run (see the module notes); same slot layout as ``RequestTable``."""

    __slots__ = (
        "mask",
        "capacity",
        "loaded",
        "emitted",
        "task_names",
        "arrival_s",
        "input_tokens",
        "output_tokens",
        "task",
        "prefix_id",
        "prefix_tokens",
        "first_token_s",
        "finish_s",
        "instance",
        "status",
        "reason",
        "energy_j",
        "cached_tokens",
        "finished",
        "rejected",
    )

    def __init__(self, task_names: tuple[str, ...], capacity: int = 1 << 16):
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError(f"RequestRing capacity must be a power of two, got {capacity}")
        self.task_names = task_names
        self.capacity = capacity
        self.mask = capacity - 1
        self.loaded = 0  # requests [0, loaded) have been loaded
        self.emitted = 0  # requests [0, emitted) have been handed out and their slots freed
        self.finished = 0
        self.rejected = 0
        for name in _INPUT_COLUMNS:
            setattr(self, name, [0] * capacity)
        for name, default in _OUTCOME_DEFAULTS:
            setattr(self, name, [default] * capacity)

    @property
    def in_flight(self) -> int:
        return self.loaded - self.emitted

    def load(self, arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray,
             task: np.ndarray, prefix_id: np.ndarray | None = None,
             prefix_tokens: np.ndarray | None = None) -> tuple[int, list[float], list[int]]:
        """Append a block of requests (ids continue from ``loaded``); returns the first new id and the
        block's arrival times and tasks as lists (what the arrival loop reads). Without prefix columns the
        block's requests carry none."""
        first = self.loaded
        n = len(arrival_s)
        while self.loaded + n - self.emitted > self.capacity:
            self._grow()
        if prefix_id is None:
            prefix = ([-1] * n, [0] * n)
        else:
            prefix = (prefix_id.tolist(), prefix_tokens.tolist())
        columns = (arrival_s.tolist(), input_tokens.tolist(), output_tokens.tolist(), task.tolist()) + prefix
        for name, values in zip(_INPUT_COLUMNS, columns):
            self._write(getattr(self, name), first, values)
        self.loaded += n
        return first, columns[0], columns[3]

    def reject(self, rid: int, reason: str, now_s: float) -> None:
        slot = rid & self.mask
        self.status[slot] = REJECTED
        self.reason[slot] = REASON_CODE[reason]
        self.finish_s[slot] = now_s

    def reject_pending(self, reason: str, now_s: float) -> int:
        """Reject every loaded request still pending (end of run); returns how many."""
        count = 0
        status = self.status
        mask = self.mask
        for rid in range(self.emitted, self.loaded):
            if status[rid & mask] == PENDING:
                self.reject(rid, reason, now_s)
                count += 1
        return count

    def done_prefix(self) -> int:
        """The largest id ``k`` such that every request in ``[emitted, k)`` is finished or rejected."""
        status = self.status
        mask = self.mask
        k = self.emitted
        end = self.loaded
        while k < end and status[k & mask] != PENDING:
            k += 1
        return k

    def emit(self, upto: int) -> RequestBatch | None:
        """Hand out requests ``[emitted, upto)`` (all decided) as numpy columns and free their slots."""
        lo = self.emitted
        if upto <= lo:
            return None
        columns = {}
        for name in _INPUT_COLUMNS:
            columns[name] = np.asarray(self._read(getattr(self, name), lo, upto), dtype=_COLUMN_DTYPES[name])
        for name, default in _OUTCOME_DEFAULTS:
            column = getattr(self, name)
            columns[name] = np.asarray(self._read(column, lo, upto), dtype=_COLUMN_DTYPES[name])
            self._write(column, lo, [default] * (upto - lo))
        status = columns["status"]
        if np.any(status == PENDING):
            raise AssertionError(f"request {lo + int(np.argmax(status == PENDING))} emitted while still pending")
        self.finished += int(np.count_nonzero(status == FINISHED))
        self.rejected += int(np.count_nonzero(status == REJECTED))
        self.emitted = upto
        return RequestBatch(lo, **columns)

    # --- ring arithmetic -------------------------------------------------------------------------

    def _read(self, column: list, lo: int, hi: int) -> list:
        a = lo & self.mask
        n = hi - lo
        if a + n <= self.capacity:
            return column[a:a + n]
        return column[a:] + column[:a + n - self.capacity]

    def _write(self, column: list, lo: int, values: list) -> None:
        n = len(values)
        if n == 0:
            return
        a = lo & self.mask
        head = min(n, self.capacity - a)
        column[a:a + head] = values[:head]
        if head < n:
            column[:n - head] = values[head:]

    def _grow(self) -> None:
        lo, hi = self.emitted, self.loaded
        live = {name: self._read(getattr(self, name), lo, hi)
                for name in _INPUT_COLUMNS + tuple(n for n, _ in _OUTCOME_DEFAULTS)}
        self.capacity *= 2
        self.mask = self.capacity - 1
        for name in _INPUT_COLUMNS:
            setattr(self, name, [0] * self.capacity)
        for name, default in _OUTCOME_DEFAULTS:
            setattr(self, name, [default] * self.capacity)
        for name, values in live.items():
            self._write(getattr(self, name), lo, values)
