"""The instance model: one serving-engine replica with continuous batching at iteration level.

What it emulates (TensorRT-LLM's in-flight batching with the GUARANTEED_NO_EVICT scheduler, no
chunked prefill):

* requests wait in FIFO order; at each iteration boundary the head of the queue is admitted while the
  batch has room (``max_batch``), its whole KV footprint (input + output tokens) fits what is not yet
  reserved, and its prompt fits the iteration's token budget (``max_num_tokens``); admission stops at
  the first request that does not fit, so nothing overtakes the head;
* an iteration runs the prompts of the newly admitted requests (prefill, which yields their first
  token) together with one decode step of every running request;
* a request finishes at the end of the iteration that produces its last token and frees its KV.

Between changes of batch composition the decode iterations are deterministic, so the instance jumps
over the whole stretch up to the next completion in one event (closed form in ``StepModel``); an
arrival that could be admitted cuts the stretch at the iteration boundary that follows it.
Energy: every iteration's energy comes from the step model; between iterations, and while the model
loads, the GPUs draw ``idle_w``.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Callable

import simpy

from profiles.step_model import StepModel
from sim.requests import FINISHED, RequestTable

# Process states, as seen by arrivals.
_LOADING, _IDLE, _WAKING, _BUSY, _STRETCH, _CUT, _RELEASED = range(7)


class Instance:
    """A replica of a config; owns its queue, batch and energy counters."""

    def __init__(
        self,
        env: simpy.Environment,
        instance_id: int,
        label: str,
        gpus: int,
        step: StepModel,
        requests: RequestTable,
        ready_s: float,
        max_queue: int | None = None,
        on_ready: Callable[["Instance"], None] | None = None,
        on_release: Callable[["Instance"], None] | None = None,
    ):
        self.env = env
        self.instance_id = instance_id
        self.label = label
        self.gpus = gpus
        self.step = step
        self.requests = requests
        self.max_queue = max_queue
        self._on_ready = on_ready
        self._on_release = on_release

        self.alloc_s = env.now
        self.ready_s = max(ready_s, env.now)
        self.release_s: float | None = None
        self.accepting = True  # false once drained: the router stops sending it work
        self.busy_s = 0.0
        self.busy_j = 0.0
        self.tokens_out = 0

        self.waiting: deque[int] = deque()
        self._heap: list[tuple[int, int]] = []  # (finish iteration, request id) of decoding requests
        self._kv_offset = 0  # sum over decoders of (input tokens - admission iteration)
        self._kv_reserved = 0
        self._iteration = 0
        self._energy_per_token_j = 0.0  # cumulative energy share of one decode token
        self._in_prefill = 0
        self.outstanding = 0  # waiting + running: what least-outstanding routing compares

        # A replica ready at creation serves at once, even before its process first runs.
        self._state = _BUSY if self.ready_s <= env.now else _LOADING
        self._wake: simpy.Event | None = None
        self.process = env.process(self._run())

    # --- what the router calls --------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        return self.accepting and self._state not in (_LOADING, _RELEASED)

    def enqueue(self, rid: int) -> None:
        """Accept a request now; it waits for the next iteration boundary."""
        req = self.requests
        step = self.step
        inp = req.input_tokens[rid]
        if inp + req.output_tokens[rid] > step.kv_capacity_tokens:
            req.reject(rid, "exceeds_kv_capacity", self.env.now)
            return
        if inp > step.max_num_tokens:
            req.reject(rid, "exceeds_max_num_tokens", self.env.now)
            return
        if self.max_queue is not None and len(self.waiting) >= self.max_queue:
            req.reject(rid, "queue_full", self.env.now)
            return
        req.instance[rid] = self.instance_id
        was_empty = not self.waiting
        self.waiting.append(rid)
        self.outstanding += 1
        state = self._state
        if state == _IDLE:
            self._state = _WAKING
            self._wake.succeed()
        elif state == _STRETCH and was_empty and self._admissible(rid):
            self._state = _CUT
            self.process.interrupt()

    def drain(self) -> None:
        """Stop taking new requests; release the GPUs once the queued and running work is done."""
        self.accepting = False
        if self._state == _IDLE:
            self._state = _WAKING
            self._wake.succeed()

    # --- energy bookkeeping ----------------------------------------------------------------------

    def energy_j(self, until_s: float) -> tuple[float, float]:
        """(busy energy, idle energy) of this instance's GPUs from allocation to ``until_s``."""
        end = self.release_s if self.release_s is not None else until_s
        idle_s = max(end - self.alloc_s - self.busy_s, 0.0)
        return self.busy_j, self.step.idle_w * idle_s

    # --- the engine loop --------------------------------------------------------------------------

    def _admissible(self, rid: int) -> bool:
        req = self.requests
        return (
            len(self._heap) + self._in_prefill < self.step.max_batch
            and self._kv_reserved + req.input_tokens[rid] + req.output_tokens[rid] <= self.step.kv_capacity_tokens
        )

    def _admit(self) -> list[int]:
        req = self.requests
        step = self.step
        waiting = self.waiting
        room = step.max_batch - len(self._heap)
        budget = step.max_num_tokens
        kv_free = step.kv_capacity_tokens - self._kv_reserved
        new: list[int] = []
        while waiting and room > 0:
            rid = waiting[0]
            inp = req.input_tokens[rid]
            need = inp + req.output_tokens[rid]
            if need > kv_free or inp > budget:
                break
            waiting.popleft()
            new.append(rid)
            room -= 1
            budget -= inp
            kv_free -= need
        self._kv_reserved = step.kv_capacity_tokens - kv_free
        return new

    def _finish(self, rid: int, finish_s: float) -> None:
        req = self.requests
        req.finish_s[rid] = finish_s
        req.status[rid] = FINISHED
        req.energy_j[rid] += self._energy_per_token_j
        self._kv_reserved -= req.input_tokens[rid] + req.output_tokens[rid]
        self.tokens_out += req.output_tokens[rid]
        self.outstanding -= 1

    def _run(self):
        env = self.env
        step = self.step
        req = self.requests
        heap = self._heap
        if self.ready_s > env.now:
            yield env.timeout(self.ready_s - env.now)
        self._state = _BUSY
        if self._on_ready is not None:
            self._on_ready(self)
        while True:
            new = self._admit() if self.waiting else []
            batch = len(heap)
            if new:
                yield from self._mixed_iteration(new, batch)
                continue
            if batch == 0:
                if not self.accepting:
                    break
                self._state = _IDLE
                self._wake = env.event()
                yield self._wake
                self._state = _BUSY
                continue
            # Decode-only stretch up to the next completion.
            i0 = self._iteration
            kv0 = self._kv_offset + batch * i0
            k = heap[0][0] - i0 + 1
            start = env.now
            self._state = _BUSY if self.waiting else _STRETCH
            try:
                yield env.timeout(step.decode_stretch_s(batch, kv0, k))
            except simpy.Interrupt:
                # An admissible arrival: run on to the boundary that ends the iteration in flight.
                k = step.decode_iterations_until(batch, kv0, env.now - start)
                remaining = start + step.decode_stretch_s(batch, kv0, k) - env.now
                if remaining > 0.0:
                    yield env.timeout(remaining)
            self._state = _BUSY
            if k == 0:
                continue
            duration = step.decode_stretch_s(batch, kv0, k)
            energy = step.decode_stretch_j(batch, kv0, k)
            self.busy_s += duration
            self.busy_j += energy
            self._energy_per_token_j += energy / batch
            self._iteration = i0 + k
            last = self._iteration - 1
            now = env.now
            while heap and heap[0][0] <= last:
                finish_iter, rid = heapq.heappop(heap)
                self._kv_offset -= req.input_tokens[rid] - (finish_iter - req.output_tokens[rid] + 1)
                self._finish(rid, now)
        self._state = _RELEASED
        self.release_s = env.now
        if self._on_release is not None:
            self._on_release(self)

    def _mixed_iteration(self, new: list[int], batch: int):
        """Prefill the admitted requests together with one decode step of the running batch."""
        env = self.env
        step = self.step
        req = self.requests
        heap = self._heap
        i = self._iteration
        prefill = 0
        prefill_sq = 0
        for rid in new:
            inp = req.input_tokens[rid]
            prefill += inp
            prefill_sq += inp * inp
        n_tok = batch + prefill
        kv = self._kv_offset + batch * i
        duration = step.iteration_s(batch + len(new), n_tok, kv, prefill, prefill_sq)
        energy = step.iteration_j(duration, n_tok, kv)
        self._in_prefill = len(new)
        self._state = _BUSY
        yield env.timeout(duration)
        self._in_prefill = 0
        self.busy_s += duration
        self.busy_j += energy
        per_token = energy / n_tok
        self._energy_per_token_j += per_token
        acc = self._energy_per_token_j
        now = env.now
        for rid in new:
            inp = req.input_tokens[rid]
            out = req.output_tokens[rid]
            req.first_token_s[rid] = now
            req.energy_j[rid] = per_token * inp - acc
            if out == 1:
                self._finish(rid, now)
            else:
                heapq.heappush(heap, (i + out - 1, rid))
                self._kv_offset += inp - i
        while heap and heap[0][0] <= i:
            finish_iter, rid = heapq.heappop(heap)
            self._kv_offset -= req.input_tokens[rid] - (finish_iter - req.output_tokens[rid] + 1)
            self._finish(rid, now)
        self._iteration = i + 1


def replay_single_instance(step: StepModel, requests: RequestTable) -> Instance:
    """Run every request of a table through one always-ready instance; for probes and tests."""
    env = simpy.Environment()
    instance = Instance(env, 0, "single", 1, step, requests, ready_s=0.0)

    def feed():
        arrivals = requests.arrival_s
        for rid in range(requests.n):
            delay = arrivals[rid] - env.now
            if delay > 0:
                yield env.timeout(delay)
            instance.enqueue(rid)

    env.process(feed())
    env.run()
    return instance
