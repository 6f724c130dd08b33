"""Fixed-concurrency fit runs of a known step model, as a client would record them (no server).

What ``calibrate.fit`` is fed on a real engine is a handful of closed-loop runs (``plan.fit``); here the
engine is the step model itself, replayed iteration by iteration (FIFO admission within max batch, KV
capacity and token budget, as ``sim.instance`` without chunked context), and each iteration's time is
multiplied by a log-normal jitter (``noise``, seeded) standing in for measurement noise. Token times are
those the client would see. Used by ``calibrate.predict`` to emulate "a few fixed-concurrency runs" of a
config whose truth is a profile set's step model.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from calibrate.fit import FitRun
from calibrate.loadgen import RequestRecord
from profiles.step_model import StepModel


@dataclass(frozen=True, slots=True)
class FitRunDesign:
    """Which runs: single-client prefills at several prompt lengths, closed-loop decodes at a few batch sizes."""

    prefill_input_tokens: tuple[int, ...] = (16, 64, 256, 1024, 2048)
    prefill_output_tokens: int = 4
    prefill_requests: int = 3
    decode_concurrency: tuple[int, ...] = (1, 16, 128)
    decode_input_tokens: tuple[int, ...] = (128, 1024)
    decode_output_tokens: int = 32
    decode_rounds: int = 2

    def runs(self, step: StepModel) -> list[tuple[str, int, int, int, int]]:
        """(kind, clients, input, output, requests) of every run this step model's capacities allow: a decode run's
        clients are capped at the max batch and at what the KV cache holds, as ``calibrate.plan`` caps them."""
        out = [("prefill", 1, L, self.prefill_output_tokens, self.prefill_requests)
               for L in self.prefill_input_tokens if L <= step.max_num_tokens]
        for L in self.decode_input_tokens:
            seen = set()
            for B in self.decode_concurrency:
                cap = int(min(B, step.max_batch, step.kv_capacity_tokens // (L + self.decode_output_tokens)))
                if cap >= 1 and cap not in seen:
                    seen.add(cap)
                    out.append(("decode", cap, L, self.decode_output_tokens, self.decode_rounds * cap))
        return out


def closed_loop_run(step: StepModel, kind: str, clients: int, L: int, O: int, n: int,
                    rng: np.random.Generator | None = None, noise: float = 0.0) -> FitRun:
    """One closed loop of ``clients`` (each sends its next request when its previous one finished), ``n`` requests
    of ``L`` prompt and ``O`` output tokens; iteration times carry ``exp(noise * N(0, 1))`` jitter."""
    sends: list[tuple[float, int]] = [(0.0, i) for i in range(min(clients, n))]
    heapq.heapify(sends)
    sent = len(sends)
    waiting: deque[int] = deque()
    running: list[list[int]] = []  # [rid, generated]
    times: dict[int, list[float]] = {}
    send_at: dict[int, float] = {}
    now, reserved = 0.0, 0
    while sends or waiting or running:
        while sends and sends[0][0] <= now:
            t, rid = heapq.heappop(sends)
            send_at[rid] = t
            waiting.append(rid)
        if not waiting and not running:
            now = sends[0][0]
            continue
        new: list[int] = []
        budget = step.max_num_tokens
        while waiting and len(running) + len(new) < step.max_batch and reserved + L + O <= step.kv_capacity_tokens \
                and L <= budget:
            new.append(waiting.popleft())
            reserved += L + O
            budget -= L
        if not new and not running:
            raise ValueError(f"a request of {L}+{O} tokens cannot be admitted by this step model")
        kv = sum(L + g for _, g in running)
        b = len(running)
        d = step.iteration_s(b + len(new), b + L * len(new), kv, L * len(new), float(L * L * len(new)))
        if noise > 0 and rng is not None:
            d *= math.exp(noise * float(rng.standard_normal()))
        now += d
        still = []
        for rec in running + [[rid, 0] for rid in new]:
            rec[1] += 1
            times.setdefault(rec[0], []).append(now)
            if rec[1] == O:
                reserved -= L + O
                if sent < n:
                    heapq.heappush(sends, (now, sent))
                    sent += 1
            else:
                still.append(rec)
        running = still
    records = tuple(RequestRecord(rid, send_at[rid], times[rid][0], times[rid][-1], tuple(times[rid]), L, O, L, O)
                    for rid in sorted(times))
    return FitRun(kind, clients, L, O, records)


def simulated_fit_runs(step: StepModel, design: FitRunDesign = FitRunDesign(), seed: int = 0,
                       noise: float = 0.03) -> list[FitRun]:
    """The design's runs against ``step``, jittered with a generator seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    return [closed_loop_run(step, kind, clients, L, O, n, rng, noise) for kind, clients, L, O, n in design.runs(step)]
