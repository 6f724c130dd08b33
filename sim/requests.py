"""Per-request state of a run, held in flat columns indexed by request id.

Plain Python lists on the hot path (scalar access to a list is several times cheaper than to a
numpy array); they turn into numpy columns once, when the run is summarised.
"""

from __future__ import annotations

import math

import numpy as np

from traces.trace import Trace

PENDING, FINISHED, REJECTED = 0, 1, 2
STATUS_NAMES = ("pending", "finished", "rejected")

# Why a request was turned away; index = code stored per request.
REJECT_REASONS = (
    "",
    "exceeds_kv_capacity",  # input + output can never fit the instance's KV cache
    "exceeds_max_num_tokens",  # prompt longer than one iteration's token budget (no chunked prefill)
    "queue_full",  # the replica's waiting queue was at its configured limit
    "no_replica",  # the pool had no serving replica when the request arrived
    "unfinished_at_end",  # still queued or running when the drain limit was reached
)
REASON_CODE = {name: code for code, name in enumerate(REJECT_REASONS)}


class RequestTable:
    """Inputs (from the trace) and outcomes of every request of one run."""

    __slots__ = (
        "n",
        "arrival_s",
        "input_tokens",
        "output_tokens",
        "task",
        "task_names",
        "first_token_s",
        "finish_s",
        "instance",
        "status",
        "reason",
        "energy_j",
    )

    def __init__(self, trace: Trace):
        self.n = len(trace)
        self.arrival_s: list[float] = trace.arrival_s.astype(float).tolist()
        self.input_tokens: list[int] = trace.input_tokens.astype(np.int64).tolist()
        self.output_tokens: list[int] = trace.output_tokens.astype(np.int64).tolist()
        self.task: list[int] = trace.task.astype(np.int64).tolist()
        self.task_names = trace.task_names
        self.first_token_s: list[float] = [math.nan] * self.n
        self.finish_s: list[float] = [math.nan] * self.n
        self.instance: list[int] = [-1] * self.n
        self.status: list[int] = [PENDING] * self.n
        self.reason: list[int] = [0] * self.n
        self.energy_j: list[float] = [0.0] * self.n

    def reject(self, rid: int, reason: str, now_s: float) -> None:
        self.status[rid] = REJECTED
        self.reason[rid] = REASON_CODE[reason]
        self.finish_s[rid] = now_s

    def counts(self) -> dict[str, int]:
        status = np.asarray(self.status)
        return {name: int(np.count_nonzero(status == code)) for code, name in enumerate(STATUS_NAMES)}
