"""A straightforward per-iteration replay of one instance: the oracle the fast path is tested against.

It spends a loop turn on every iteration and keeps one record per running request, exactly as the
engine semantics in ``sim.instance`` describe them, with no closed forms and no SimPy. It is slow on
purpose; use it only on small cases.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from profiles.step_model import StepModel

LEAD_TOL_S = 1e-9  # an arrival this close to the admission cutoff counts as before it (as in sim.instance)


@dataclass(frozen=True, slots=True)
class ReferenceResult:
    first_token_s: np.ndarray
    finish_s: np.ndarray
    busy_s: float
    busy_j: float


def replay_instance(
    step: StepModel, arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray
) -> ReferenceResult:
    """Replay requests (all admissible on an empty instance) through one instance, iteration by iteration."""
    n = len(arrival_s)
    first = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    waiting: deque[int] = deque()
    running: list[list[int]] = []  # [request id, tokens generated so far]
    reserved = 0
    now = 0.0
    nxt = 0
    busy_s = 0.0
    busy_j = 0.0
    last_n_seq = 0  # sequences of the iteration that just ended (0 when the engine was idle)
    lead = step.admission_lead_per_seq_s
    while nxt < n or waiting or running:
        if not waiting and not running:
            now = max(now, float(arrival_s[nxt]))
            last_n_seq = 0
        while nxt < n and arrival_s[nxt] <= now:
            waiting.append(nxt)
            nxt += 1
        # Admission lead: the decision for this iteration was taken lead * n_seq before the boundary; a
        # request that came later waits for the next boundary, unless the engine would otherwise go idle.
        cutoff = np.inf
        if lead > 0.0 and last_n_seq > 0 and waiting:
            cutoff = now - lead * last_n_seq + LEAD_TOL_S
            if not running and arrival_s[waiting[0]] > cutoff:
                cutoff = np.inf
        new: list[int] = []
        budget = step.max_num_tokens
        while waiting and len(running) + len(new) < step.max_batch:
            rid = waiting[0]
            need = int(input_tokens[rid] + output_tokens[rid])
            if reserved + need > step.kv_capacity_tokens or input_tokens[rid] > budget or arrival_s[rid] > cutoff:
                break
            waiting.popleft()
            new.append(rid)
            reserved += need
            budget -= int(input_tokens[rid])
        if not new and not running:
            continue  # head waits for nothing: cannot happen for admissible requests
        batch = len(running)
        kv = sum(int(input_tokens[rid]) + generated for rid, generated in running)
        prefill = sum(int(input_tokens[rid]) for rid in new)
        prefill_sq = sum(int(input_tokens[rid]) ** 2 for rid in new)
        n_tok = batch + prefill
        last_n_seq = batch + len(new)
        duration = step.iteration_s(batch + len(new), n_tok, kv, prefill, prefill_sq)
        busy_j += step.iteration_j(duration, n_tok, kv)
        busy_s += duration
        now += duration
        still: list[list[int]] = []
        for record in running:
            record[1] += 1
            rid = record[0]
            if record[1] == output_tokens[rid]:
                finish[rid] = now
                reserved -= int(input_tokens[rid] + output_tokens[rid])
            else:
                still.append(record)
        for rid in new:
            first[rid] = now
            if output_tokens[rid] == 1:
                finish[rid] = now
                reserved -= int(input_tokens[rid] + output_tokens[rid])
            else:
                still.append([rid, 1])
        running = still
    return ReferenceResult(first, finish, busy_s, busy_j)
