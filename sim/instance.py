"""The instance model: one serving-engine replica with continuous batching at iteration level.

What it emulates (TensorRT-LLM's in-flight batching with the GUARANTEED_NO_EVICT scheduler; without
chunked context unless the step model asks for it, see "Chunked context" below):

* requests wait in FIFO order; at each iteration boundary the head of the queue is admitted while the
  batch has room (``max_batch``), its whole KV footprint (input + output tokens) fits what is not yet
  reserved, and its prompt fits the iteration's token budget (``max_num_tokens``); admission stops at
  the first request that does not fit, so nothing overtakes the head;
* an iteration runs the prompts of the newly admitted requests (prefill, which yields their first
  token) together with one decode step of every running request;
* a request finishes at the end of the iteration that produces its last token and frees its KV;
* optionally (``StepModel.admission_lead_per_seq_s > 0``) the engine takes its admission decision for the
  next iteration before the host-side work of the iteration in flight is done: a request that reached
  the engine less than ``admission_lead_per_seq_s * n_seq`` seconds before the boundary (``n_seq`` the
  sequences of the ending iteration) waits for the following boundary, unless the engine would otherwise
  go idle (it then takes the request at once). That is a Python engine whose HTTP front-end shares the
  interpreter with the batching loop (transformers' continuous batching): new requests cannot be
  enqueued while the loop does its per-sequence host work (token emission, scheduling).

Between changes of batch composition the decode iterations are deterministic, so the instance jumps
over the whole stretch up to the next completion in one step (closed form in ``StepModel``); an
arrival that could be admitted cuts the stretch at the iteration boundary that follows it.
Energy: every iteration's energy comes from the step model; between iterations, and while the model
loads, the GPUs draw ``idle_w``.

How it runs. A replica is a state machine advanced lazily: ``next_s`` is the time of its next
decision point (the end of the prefill iteration or decode stretch in flight, or a wake-up), and
``advance(t)`` processes every decision point before ``t``. Replicas interact with the rest of the
cluster only when a request is routed to them and when the control plane (model loaded, drained)
touches them, so the cluster advances a replica only then: work is O(arrivals + completions +
reconfigurations), with no event object, process or callback per iteration. Times follow the same
floating-point arithmetic as a SimPy process would (``now + delay``), so results are identical to the
event-per-stretch formulation, and ``sim.reference`` checks them against a per-iteration replay.

Per-request state lives in the request table's columns (slot = ``rid & table.mask``); a running
request is one int on the heap, ``finish_iteration << 32 | rid``.

Prefix caching (optional, ``prefix_cache`` settings; semantics in ``sim.prefix_cache``): a request whose
shared prefix is cached prefills only its uncached tokens, and its prefix is cached when its prefill
iteration ends. Without it the engine runs exactly the code paths above, with no per-request cost.

Chunked context (``StepModel.chunked_context == 1``, TensorRT-LLM's ``enable_chunked_context``). A replica of such
a step model is a ``ChunkedInstance`` (``Instance(...)`` picks the class from the step model), a separate code path:
without the flag the engine runs exactly the code above. With it:

* the iteration token budget ``max_num_tokens`` covers every token of the iteration: one per decoding sequence
  plus the prompt tokens (chunks) computed in it (TensorRT-LLM's micro-batch scheduler counts generation tokens
  in ``max_num_tokens``). Such a step model needs ``max_num_tokens >= max_batch`` (``StepModel`` checks it), so
  the decode tokens of a full batch always fit and a batch with room always leaves a budget token;
* at each iteration boundary, first the request already admitted whose prompt is only partly prefilled gets its
  next chunk (admission order; by construction at most one request is ever part-way: a chunk shorter than the
  rest of its prompt used up the budget, so nothing after it got any); then new requests are admitted from the
  FIFO head while the batch (decoding + prefilling sequences) has room (``max_batch``), the request's whole KV
  footprint (input + output) fits what is not reserved (reserved at admission), and at least one budget token is
  left; each gets a chunk ``min(its remaining prompt, budget left)``. Nothing overtakes the head. A prompt longer
  than ``max_num_tokens`` is not rejected (``exceeds_max_num_tokens`` only applies without chunked context);
* a chunk covering prompt positions ``[o, o + c)`` adds ``c`` prefill tokens and ``(o + c)^2 - o^2`` to the
  iteration's sum-of-squares attention term, so a prompt's chunks sum to ``L^2`` (the same causal attention work);
  sequences with a chunk count in ``n_seq``; the KV term stays the decoding sequences' KV read (a chunk's reading
  of its earlier chunks is the attention term). A request's first token comes at the end of the iteration that
  computes its last chunk; it then decodes as without chunking;
* energy: an iteration's energy is shared per token as without chunking (``energy / n_tok``); a request is
  charged the share of every chunk it computed and of every decode token, so the per-request energies still sum
  to the busy energy;
* prefix caching works with it: the cached tokens are skipped, the first chunk starts at the cached offset
  (``hit``), the budget and attention term count uncached tokens only (chunks sum to ``L^2 - hit^2``), and the
  prefix is cached when the iteration of its last chunk ends;
* CUDA-graph capture: every iteration that computes a chunk is an iteration with prompts (it may pay a capture);
  admission lead: as without chunking, the lead counts the ``n_seq`` of the ending iteration, and the engine never
  counts as going idle while a prompt is part-way.

Schedulers (``StepModel.scheduler``; engine setting ``scheduler``). Everything above is TensorRT-LLM's
GUARANTEED_NO_EVICT (``guaranteed_no_evict``, code 0, the default: a request's whole KV is reserved at admission, so
nothing is ever evicted). Two more, and plug-ins, each a separate class (``PagedInstance`` and its subclasses,
picked by ``Instance(...)`` from the step model or its ``scheduler`` argument) so the default path is untouched; they
allocate KV on demand in blocks and evict running requests when the cache runs out:

* ``max_utilization`` (code 1, ``MaxUtilizationInstance``, TensorRT-LLM's MAX_UTILIZATION capacity scheduler;
  64-token blocks, ``tokens_per_block``): at each boundary every running request, oldest admission first, gets the
  block its next token needs (a request with ``g`` tokens generated holds the KV of ``input + g - 1`` tokens and
  its decode step writes one more); when no block is free the most recently admitted running request is paused:
  its blocks are freed and it goes back to the head of the queue (paused ones in admission order). Then requests
  are admitted from the queue head by their current need: the blocks of their prompt (not input + output), batch
  room and the ``max_num_tokens`` budget. Decodes and prompts share the iteration, as under the default.
* ``vllm`` (code 2, ``VllmInstance``, vLLM V0's default scheduler; 16-token blocks): prompts first: waiting prompts
  are admitted from the head (``max_batch`` as ``max_num_seqs``, ``max_num_tokens`` as ``max_num_batched_tokens``,
  blocks of the prompt leaving a watermark of 1 % of the blocks free); an iteration that admitted prompts runs no
  decode step; otherwise every running request decodes, getting its block as above, and when none is free the
  newest running request is preempted (recompute mode) to the head of the queue.
* State of an evicted request (both): its KV is dropped, not kept or swapped, and it keeps the tokens it generated
  (``g``). When readmitted it recomputes ``input + g`` tokens as one prompt (needing their blocks and budget; a
  recomputed prompt longer than ``max_num_tokens`` runs as its iteration's only prompt), which costs a prefill of
  ``input + g`` tokens (``(input + g)^2`` attention) and yields token ``g + 1``; its first-token time is that of
  its first prefill. This is what TensorRT-LLM does with a paused request (its context is run again over prompt
  and generated tokens) and vLLM's default preemption mode (recompute). The recomputed tokens are charged to the
  request (energy per token computed, as everywhere), so per-request energies still sum to the busy energy.
  ``preemptions`` counts evictions (``summary.json``: ``engine.<task>.preemptions``).
* Admission at arrival: a request whose whole KV (input + output, in blocks) exceeds the blocks a prompt may take
  is rejected (``exceeds_kv_capacity``), so one request alone always runs to completion and every request
  finishes or is rejected; a prompt over ``max_num_tokens`` is rejected as under the default.
* Not modelled with these schedulers: chunked context (``StepModel`` refuses the combination), prefix caching (an
  instance refuses it), the admission lead (ignored). They advance one iteration per boundary (no closed-form
  decode stretch: each iteration's allocation depends on every running request's length), so they cost a loop
  turn per iteration; ``sim.reference.replay_paged`` is the per-iteration oracle they are tested against.
* Plug-ins (engine setting ``scheduler: {_target_: package.module.Class, ...}``; interface ``sim.scheduler_api``):
  any ``IterationScheduler`` runs on the same engine (``PluginInstance``), which asks its ``schedule(view)`` for each
  iteration's evictions, decode steps and prompts, checks the decision and applies it; everything above (blocks,
  recomputation, admission at arrival, energy) holds. The shipped two are such classes too
  (``sim.schedulers.MaxUtilization``, ``Vllm``); an instance of exactly one of them runs as its built-in loop
  (``MaxUtilizationInstance``, ``VllmInstance``: the hooks ``_decodes`` and ``_prompts``, no call or check per
  iteration), whose results equal those of its ``schedule()`` on the plug-in path (tested).

Extrapolation (``profiles.fit_domain``): when the step model's fit domain knows its largest batch, every
iteration that admits requests compares the batch they join (running + newly admitted) with it and counts
the admitted requests of a larger one in ``batch_extrapolated`` (one comparison per admitting iteration;
none when the limit is unknown). Prompt and context are per request and counted from the request
columns after the run (``sim.metrics``).
"""

from __future__ import annotations

import math
import operator
from collections import deque
from heapq import heappop, heappush
from typing import Callable

from profiles.fit_domain import UNKNOWN_DOMAIN, FitDomain
from profiles.step_model import SCHEDULERS, StepModel
from sim.prefix_cache import PrefixCache, PrefixCacheSettings
from sim.requests import FINISHED, REASON_CODE, REJECTED, RequestTable
from sim.scheduler_api import (Decision, IterationScheduler, SchedulerError, SchedulerSpec, SchedulerView,
                               engine_params)
from sim.schedulers import MaxUtilization, Vllm

INF = math.inf
_RID_BITS = 32
_RID_MASK = (1 << _RID_BITS) - 1
MAX_REQUEST_ID = _RID_MASK

# What the replica is doing until ``next_s``.
_OP_NONE, _OP_MIXED, _OP_STRETCH = 0, 1, 2

_LEAD_TOL = 1e-9  # s: an arrival this close to the admission cutoff counts as before it (rounding)
_KV_CAPACITY = REASON_CODE["exceeds_kv_capacity"]
_MAX_NUM_TOKENS = REASON_CODE["exceeds_max_num_tokens"]
_QUEUE_FULL = REASON_CODE["queue_full"]


class Instance:
    """A replica of a config; owns its queue, batch and energy counters."""

    __slots__ = (
        "instance_id", "label", "gpus", "step", "requests", "max_queue", "_on_release",
        "alloc_s", "ready_s", "release_s", "accepting", "ready", "released", "serving",
        "busy_s", "busy_j", "tokens_out", "outstanding", "waiting", "next_s",
        "_heap", "_kv_offset", "_kv_reserved", "_iteration", "_energy_per_token_j",
        "_op", "_cuttable", "_new", "_op_batch", "_op_i", "_op_kv0", "_op_k", "_op_start", "_op_s", "_op_j",
        "_op_tokens", "_op_nseq", "prefix_cache",
        "fit_domain", "_fit_max_batch", "batch_extrapolated", "batch_only_extrapolated", "_graphs",
        "capacity_qps",
    )

    def __new__(cls, *args, **kwargs):
        # A step model with chunked context gets its own engine loop (ChunkedInstance), a scheduler other than the
        # default (by name in the step model, or a plug-in) the paged one; otherwise this class's.
        step = args[3] if len(args) > 3 else kwargs["step"]
        if cls is Instance:
            if kwargs.get("scheduler") is not None:
                cls = _paged_class(kwargs["scheduler"])
            elif step.scheduler:
                cls = _SCHEDULER_CLASSES[step.scheduler]
            elif step.chunked_context:
                cls = ChunkedInstance
        return object.__new__(cls)

    def __init__(
        self,
        instance_id: int,
        label: str,
        gpus: int,
        step: StepModel,
        requests: RequestTable,
        alloc_s: float,
        ready_s: float,
        max_queue: int | None = None,
        on_release: Callable[["Instance"], None] | None = None,
        prefix_cache: PrefixCacheSettings | None = None,
        fit_domain: FitDomain = UNKNOWN_DOMAIN,
        graphs: set | None = None,
        scheduler: "SchedulerSpec | IterationScheduler | None" = None,
    ):
        # ``scheduler``: a batch scheduler plug-in (sim.scheduler_api); given, ``Instance(...)`` builds a PagedInstance,
        # which takes it; None: the step model's scheduler.
        self.instance_id = instance_id
        self.label = label
        self.capacity_qps = 1.0  # the replica's saturation QPS for its task (set by the pool; routers may weight by it)
        self.gpus = gpus
        self.step = step
        self.requests = requests
        self.max_queue = max_queue
        self._on_release = on_release

        self.alloc_s = alloc_s
        self.ready_s = max(ready_s, alloc_s)
        self.release_s: float | None = None
        self.accepting = True  # false once drained: the router stops sending it work
        self.ready = self.ready_s <= alloc_s  # a replica ready at creation serves at once
        self.released = False
        self.serving = self.ready  # accepting, model loaded, not released: what routers look at
        self.busy_s = 0.0
        self.busy_j = 0.0
        self.tokens_out = 0
        self.outstanding = 0  # waiting + running: what least-outstanding routing compares

        self.waiting: deque[int] = deque()
        self.next_s = INF  # next decision point; INF while idle or loading
        self._heap: list[int] = []  # finish_iteration << 32 | rid of decoding requests
        self._kv_offset = 0  # sum over decoders of (input tokens - admission iteration)
        self._kv_reserved = 0
        self._iteration = 0
        self._energy_per_token_j = 0.0  # cumulative energy share of one decode token
        self._op = _OP_NONE
        self._cuttable = False  # a decode stretch an admissible arrival may cut short
        self._new: list[int] = []  # requests prefilled by the iteration in flight
        self._op_batch = 0
        self._op_i = 0
        self._op_kv0 = 0
        self._op_k = 0
        self._op_start = 0.0
        self._op_s = 0.0
        self._op_j = 0.0
        self._op_tokens = 0
        self._op_nseq = 0  # sequences of the iteration(s) in flight: sets the admission lead
        self.prefix_cache = PrefixCache(prefix_cache) if prefix_cache is not None else None
        # padded shapes whose CUDA graph this replica has captured (None: capture not modelled); ``graphs`` hands in
        # (and keeps updating) the set of an engine that has already run, e.g. earlier bursts of one launch
        self._graphs: set | None = None
        if step.graph_capture_s > 0.0:
            self._graphs = graphs if graphs is not None else set()
        self.fit_domain = fit_domain
        self._fit_max_batch = fit_domain.max_batch or 0  # 0: unknown, nothing counted
        self.batch_extrapolated = 0  # requests admitted into a batch larger than the fit's largest
        self.batch_only_extrapolated = 0  # ... of which prompt and context lie inside the fit domain

    # --- what a router reads (the replica view of ``sim.router_api``) ----------------------------------

    def sync(self, now_s: float) -> None:
        """Bring the replica up to ``now_s`` (it is advanced lazily): afterwards its queue, batch and KV figures
        reflect every iteration that ended before ``now_s``."""
        if self.next_s < now_s:
            self.advance(now_s)

    @property
    def queued(self) -> int:
        """Requests waiting for admission."""
        return len(self.waiting)

    @property
    def running(self) -> int:
        """Requests admitted (prefilling or decoding) and not finished: the running batch."""
        return self.outstanding - len(self.waiting)

    @property
    def kv_used_tokens(self) -> int:
        """KV-cache tokens reserved by the running batch (input + output of every admitted request)."""
        return self._kv_reserved

    @property
    def kv_capacity_tokens(self) -> int:
        return self.step.kv_capacity_tokens

    @property
    def max_batch(self) -> int:
        return self.step.max_batch

    @property
    def scheduler_label(self) -> str:
        """The batch scheduler: its shipped name (``profiles.step_model.SCHEDULERS``), or a plug-in's target."""
        return SCHEDULERS[self.step.scheduler]

    # --- what the router and the pool call ---------------------------------------------------------

    def enqueue(self, rid: int, now_s: float) -> None:
        """Accept a request at ``now_s``; it waits for the next iteration boundary."""
        if self.next_s < now_s:
            self.advance(now_s)
        req = self.requests
        slot = rid & req.mask
        step = self.step
        inp = req.input_tokens[slot]
        need = inp + req.output_tokens[slot]
        if need > step.kv_capacity_tokens:
            reason = _KV_CAPACITY
        elif inp > step.max_num_tokens:
            reason = _MAX_NUM_TOKENS
        elif self.max_queue is not None and len(self.waiting) >= self.max_queue:
            reason = _QUEUE_FULL
        else:
            req.instance[slot] = self.instance_id
            was_empty = not self.waiting
            self.waiting.append(rid)
            self.outstanding += 1
            if self.next_s == INF:  # idle: wake at once (after every arrival of this instant)
                self.next_s = now_s
            elif (self._cuttable and was_empty and len(self._heap) < step.max_batch
                  and self._kv_reserved + need <= step.kv_capacity_tokens):
                self._cut(now_s + step.admission_lead_per_seq_s * self._op_batch - _LEAD_TOL
                          if step.admission_lead_per_seq_s > 0.0 else now_s)
            return
        req.status[slot] = REJECTED
        req.reason[slot] = reason
        req.finish_s[slot] = now_s

    def mark_ready(self) -> None:
        """The model has loaded; the replica serves from now on (unless it was drained meanwhile)."""
        self.ready = True
        self.serving = self.accepting and not self.released

    def drain(self, now_s: float) -> None:
        """Stop taking new requests; release the GPUs once the queued and running work is done."""
        if self.next_s < now_s:
            self.advance(now_s)
        self.accepting = False
        self.serving = False
        if self.ready and not self.released and self.next_s == INF:
            self.release(now_s)

    def release(self, now_s: float) -> None:
        self.released = True
        self.serving = False
        self.release_s = now_s
        if self._on_release is not None:
            self._on_release(self)

    # --- energy bookkeeping ----------------------------------------------------------------------

    def energy_j(self, until_s: float) -> tuple[float, float]:
        """(busy energy, idle energy) of this instance's GPUs from allocation to ``until_s``."""
        end = self.release_s if self.release_s is not None else until_s
        idle_s = max(end - self.alloc_s - self.busy_s, 0.0)
        return self.busy_j, self.step.idle_w * idle_s

    # --- the engine ------------------------------------------------------------------------------

    def _count_batch_extrapolation(self, new: list[int]) -> None:
        """Requests admitted into a batch beyond the fit domain (rare: off the hot path). Those whose prompt
        and context are inside the domain are counted apart, so a run can count each request once."""
        self.batch_extrapolated += len(new)
        domain = self.fit_domain
        max_prompt = domain.max_prompt_tokens
        max_context = domain.max_context_tokens
        req = self.requests
        for rid in new:
            slot = rid & req.mask
            inp = req.input_tokens[slot]
            if (max_prompt is None or inp <= max_prompt) and (
                    max_context is None or inp + req.output_tokens[slot] <= max_context):
                self.batch_only_extrapolated += 1

    def _cut(self, at_s: float) -> None:
        """An admissible arrival during a decode stretch: stop at the first boundary at or after ``at_s`` (the
        arrival, or the arrival plus the admission lead), unless the stretch ends before that anyway."""
        step = self.step
        batch, kv0, start = self._op_batch, self._op_kv0, self._op_start
        k = step.decode_iterations_until(batch, kv0, at_s - start)
        self._cuttable = False
        if k > self._op_k:
            return
        duration = step.decode_stretch_s(batch, kv0, k)
        remaining = start + duration - at_s
        self._op_k = k
        self._op_s = duration
        self.next_s = at_s + remaining if remaining > 0.0 else at_s

    def advance(self, until_s: float) -> None:
        """Process every decision point before ``until_s``: finish what is in flight, admit, start the next."""
        next_s = self.next_s
        if next_s >= until_s:
            return
        req = self.requests
        mask = req.mask
        inp_col = req.input_tokens
        out_col = req.output_tokens
        first_col = req.first_token_s
        finish_col = req.finish_s
        status_col = req.status
        energy_col = req.energy_j
        step = self.step
        kv_capacity = step.kv_capacity_tokens
        max_batch = step.max_batch
        max_num_tokens = step.max_num_tokens
        heap = self._heap
        waiting = self.waiting
        new = self._new
        kv_offset = self._kv_offset
        kv_reserved = self._kv_reserved
        iteration = self._iteration
        ept = self._energy_per_token_j
        busy_s = self.busy_s
        busy_j = self.busy_j
        tokens_out = self.tokens_out
        outstanding = self.outstanding
        op = self._op
        lead = step.admission_lead_per_seq_s
        arrival_col = req.arrival_s
        cache = self.prefix_cache
        cached_col = req.cached_tokens
        fit_max_batch = self._fit_max_batch
        released = False
        while next_s < until_s:
            now = next_s
            # --- finish what was in flight ---
            if op == _OP_MIXED:
                i = self._op_i
                energy = self._op_j
                busy_s += self._op_s
                busy_j += energy
                per_token = energy / self._op_tokens
                ept += per_token
                for rid in new:
                    slot = rid & mask
                    inp = inp_col[slot]
                    out = out_col[slot]
                    first_col[slot] = now
                    computed = inp if cache is None else inp - cached_col[slot]  # prompt tokens prefilled
                    if out == 1:
                        energy_col[slot] = per_token * computed - ept + ept
                        finish_col[slot] = now
                        status_col[slot] = FINISHED
                        kv_reserved -= inp + 1
                        tokens_out += 1
                        outstanding -= 1
                    else:
                        energy_col[slot] = per_token * computed - ept
                        heappush(heap, ((i + out - 1) << _RID_BITS) | rid)
                        kv_offset += inp - i
                iteration = i + 1
            elif op == _OP_STRETCH:
                k = self._op_k
                if k:
                    batch = self._op_batch
                    kv0 = self._op_kv0
                    busy_s += self._op_s
                    energy = step.decode_stretch_j(batch, kv0, k)
                    busy_j += energy
                    ept += energy / batch
                    iteration = self._op_i + k
            if op != _OP_NONE:
                limit = iteration << _RID_BITS  # every request whose last token came at iteration - 1 or before
                while heap and heap[0] < limit:
                    key = heappop(heap)
                    rid = key & _RID_MASK
                    slot = rid & mask
                    inp = inp_col[slot]
                    out = out_col[slot]
                    kv_offset -= inp - ((key >> _RID_BITS) - out + 1)
                    finish_col[slot] = now
                    status_col[slot] = FINISHED
                    energy_col[slot] += ept
                    kv_reserved -= inp + out
                    tokens_out += out
                    outstanding -= 1
                if cache is not None and op == _OP_MIXED:
                    self._cache_prefixes(new, kv_capacity - kv_reserved)
            # --- decide what comes next ---
            self._cuttable = False
            cutoff = INF
            if waiting:
                if lead > 0.0 and op != _OP_NONE:
                    # the decision was taken before this iteration's host work: later arrivals wait, unless
                    # the engine would go idle (then it takes them at once)
                    cutoff = now - lead * (self._op_nseq if op == _OP_MIXED else self._op_batch) + _LEAD_TOL
                    if not heap and arrival_col[waiting[0] & mask] > cutoff:
                        cutoff = INF
                new.clear()
                room = max_batch - len(heap)
                budget = max_num_tokens
                kv_free = kv_capacity - kv_reserved
                prefill = 0
                prefill_sq = 0
                if cache is not None:
                    kv_free, prefill, prefill_sq = self._admit_cached(room, budget, kv_free, cutoff)
                while cache is None and waiting and room > 0:
                    rid = waiting[0]
                    slot = rid & mask
                    inp = inp_col[slot]
                    need = inp + out_col[slot]
                    if need > kv_free or inp > budget or arrival_col[slot] > cutoff:
                        break
                    waiting.popleft()
                    new.append(rid)
                    room -= 1
                    budget -= inp
                    kv_free -= need
                    prefill += inp
                    prefill_sq += inp * inp
                kv_reserved = kv_capacity - kv_free
                if new:
                    batch = len(heap)
                    n_tok = batch + prefill
                    kv = kv_offset + batch * iteration
                    duration = step.iteration_s(batch + len(new), n_tok, kv, prefill, prefill_sq)
                    if self._graphs is not None:
                        duration += self._capture_s(n_tok, kv)
                    self._op_j = step.iteration_j(duration, n_tok, kv)
                    self._op_s = duration
                    self._op_i = iteration
                    self._op_tokens = n_tok
                    self._op_nseq = batch + len(new)
                    if fit_max_batch and batch + len(new) > fit_max_batch:
                        self._count_batch_extrapolation(new)
                    op = _OP_MIXED
                    next_s = now + duration
                    continue
            batch = len(heap)
            if batch == 0:
                op = _OP_NONE
                next_s = INF
                if not self.accepting:
                    released = True
                break
            # Decode-only stretch up to the next completion.
            kv0 = kv_offset + batch * iteration
            k = (heap[0] >> _RID_BITS) - iteration + 1
            if waiting and cutoff != INF and arrival_col[waiting[0] & mask] > cutoff:
                # the head arrived within the admission lead: stop at the first boundary that sees it
                k_head = step.decode_iterations_until(
                    batch, kv0, arrival_col[waiting[0] & mask] + lead * batch - _LEAD_TOL - now)
                if k_head < 1:
                    k_head = 1
                if k_head < k:
                    k = k_head
            self._op_batch = batch
            self._op_i = iteration
            self._op_kv0 = kv0
            self._op_k = k
            self._op_start = now
            self._cuttable = not waiting
            duration = step.decode_stretch_s(batch, kv0, k)
            self._op_s = duration
            op = _OP_STRETCH
            next_s = now + duration
        self.next_s = next_s
        self._op = op
        self._kv_offset = kv_offset
        self._kv_reserved = kv_reserved
        self._iteration = iteration
        self._energy_per_token_j = ept
        self.busy_s = busy_s
        self.busy_j = busy_j
        self.tokens_out = tokens_out
        self.outstanding = outstanding
        if released:
            self.release(now)

    def _capture_s(self, n_tok: int, kv: float) -> float:
        """CUDA-graph capture: the first iteration with prompts that meets a padded shape pays ``graph_capture_s``
        (decode-only stretches are not charged: their few shapes are captured in an engine's first seconds)."""
        shape = self.step.graph_shape(n_tok, kv)
        if shape in self._graphs:
            return 0.0
        self._graphs.add(shape)
        return self.step.graph_capture_s

    # --- prefix caching (sim.prefix_cache) -------------------------------------------------------

    def _admit_cached(self, room: int, budget: int, kv_free: int, cutoff: float) -> tuple[int, int, int]:
        """Admission with a prefix cache: as in ``advance``, but a request's prompt costs its uncached tokens
        (token budget, prefill tokens, ``L^2 - hit^2``); the cache is fitted to the free KV after each one.
        Returns the free KV, the prefill tokens and their attention sum."""
        req = self.requests
        mask = req.mask
        inp_col = req.input_tokens
        out_col = req.output_tokens
        arrival_col = req.arrival_s
        prefix_col = req.prefix_id
        prefix_tokens_col = req.prefix_tokens
        cached_col = req.cached_tokens
        cache = self.prefix_cache
        waiting = self.waiting
        new = self._new
        prefill = 0
        prefill_sq = 0
        while waiting and room > 0:
            rid = waiting[0]
            slot = rid & mask
            inp = inp_col[slot]
            need = inp + out_col[slot]
            prefix = prefix_col[slot]
            hit = cache.hit_tokens(prefix, prefix_tokens_col[slot], inp) if prefix >= 0 else 0
            computed = inp - hit
            if need > kv_free or computed > budget or arrival_col[slot] > cutoff:
                break
            waiting.popleft()
            new.append(rid)
            room -= 1
            budget -= computed
            kv_free -= need
            prefill += computed
            prefill_sq += inp * inp - hit * hit
            cached_col[slot] = hit
            if hit:
                cache.use(prefix)
            cache.fit(kv_free)
        return kv_free, prefill, prefill_sq

    def _cache_prefixes(self, prefilled: list[int], kv_free: int) -> None:
        """The prefill iteration of ``prefilled`` ended: cache their prefixes (admission order), then fit the
        cache to the KV that is free once this boundary's finished requests have released theirs."""
        req = self.requests
        mask = req.mask
        prefix_col = req.prefix_id
        prefix_tokens_col = req.prefix_tokens
        cache = self.prefix_cache
        for rid in prefilled:
            slot = rid & mask
            prefix = prefix_col[slot]
            if prefix >= 0:
                cache.insert(prefix, prefix_tokens_col[slot])
        cache.fit(kv_free)


class ChunkedInstance(Instance):
    """A replica whose engine runs chunked context (``StepModel.chunked_context == 1``; semantics in the module
    docstring). Built by ``Instance(...)`` when the step model asks for it; it replaces ``enqueue`` (no prompt is
    too long for the token budget) and ``advance`` (prompts run in chunks), and keeps everything else."""

    __slots__ = ("_part_rid", "_part_done", "_part_c", "_new_c")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # the step model guarantees max_num_tokens >= max_batch
        self._part_rid = -1  # the request whose prompt is part-way prefilled (at most one), -1: none
        self._part_done = 0  # its prompt tokens computed (or cached) once the iteration in flight ends
        self._part_c = 0  # its chunk in the iteration in flight (0: it has none)
        self._new_c: list[int] = []  # the chunk of each request in ``_new`` (their last chunk)

    def enqueue(self, rid: int, now_s: float) -> None:
        """As ``Instance.enqueue``, without the prompt-length limit (a long prompt runs in chunks)."""
        if self.next_s < now_s:
            self.advance(now_s)
        req = self.requests
        slot = rid & req.mask
        step = self.step
        need = req.input_tokens[slot] + req.output_tokens[slot]
        if need > step.kv_capacity_tokens:
            reason = _KV_CAPACITY
        elif self.max_queue is not None and len(self.waiting) >= self.max_queue:
            reason = _QUEUE_FULL
        else:
            req.instance[slot] = self.instance_id
            was_empty = not self.waiting
            self.waiting.append(rid)
            self.outstanding += 1
            if self.next_s == INF:
                self.next_s = now_s
            # A cuttable stretch has no prompt part-way, and a batch with room leaves a budget token
            # (max_num_tokens >= max_batch).
            elif (self._cuttable and was_empty and len(self._heap) < step.max_batch
                  and self._kv_reserved + need <= step.kv_capacity_tokens):
                self._cut(now_s + step.admission_lead_per_seq_s * self._op_batch - _LEAD_TOL
                          if step.admission_lead_per_seq_s > 0.0 else now_s)
            return
        req.status[slot] = REJECTED
        req.reason[slot] = reason
        req.finish_s[slot] = now_s

    def advance(self, until_s: float) -> None:
        """As ``Instance.advance``, with prompts computed in chunks under the iteration's token budget."""
        next_s = self.next_s
        if next_s >= until_s:
            return
        req = self.requests
        mask = req.mask
        inp_col = req.input_tokens
        out_col = req.output_tokens
        first_col = req.first_token_s
        finish_col = req.finish_s
        status_col = req.status
        energy_col = req.energy_j
        arrival_col = req.arrival_s
        step = self.step
        kv_capacity = step.kv_capacity_tokens
        max_batch = step.max_batch
        max_num_tokens = step.max_num_tokens
        lead = step.admission_lead_per_seq_s
        heap = self._heap
        waiting = self.waiting
        new = self._new  # requests whose last chunk is in the iteration in flight
        new_c = self._new_c
        kv_offset = self._kv_offset
        kv_reserved = self._kv_reserved
        iteration = self._iteration
        ept = self._energy_per_token_j
        busy_s = self.busy_s
        busy_j = self.busy_j
        tokens_out = self.tokens_out
        outstanding = self.outstanding
        op = self._op
        part_rid = self._part_rid
        part_done = self._part_done
        part_c = self._part_c
        cache = self.prefix_cache
        if cache is not None:
            prefix_col = req.prefix_id
            prefix_tokens_col = req.prefix_tokens
            cached_col = req.cached_tokens
        fit_max_batch = self._fit_max_batch
        released = False
        while next_s < until_s:
            now = next_s
            # --- finish what was in flight ---
            if op == _OP_MIXED:
                i = self._op_i
                energy = self._op_j
                busy_s += self._op_s
                busy_j += energy
                per_token = energy / self._op_tokens
                ept += per_token
                if part_c:  # the part-way prompt's chunk
                    energy_col[part_rid & mask] += per_token * part_c
                for rid, c in zip(new, new_c):
                    slot = rid & mask
                    inp = inp_col[slot]
                    out = out_col[slot]
                    first_col[slot] = now
                    if out == 1:
                        energy_col[slot] += per_token * c
                        finish_col[slot] = now
                        status_col[slot] = FINISHED
                        kv_reserved -= inp + 1
                        tokens_out += 1
                        outstanding -= 1
                    else:
                        energy_col[slot] += per_token * c - ept
                        heappush(heap, ((i + out - 1) << _RID_BITS) | rid)
                        kv_offset += inp - i
                iteration = i + 1
            elif op == _OP_STRETCH:
                k = self._op_k
                if k:
                    batch = self._op_batch
                    busy_s += self._op_s
                    energy = step.decode_stretch_j(batch, self._op_kv0, k)
                    busy_j += energy
                    ept += energy / batch
                    iteration = self._op_i + k
            if op != _OP_NONE:
                limit = iteration << _RID_BITS
                while heap and heap[0] < limit:
                    key = heappop(heap)
                    rid = key & _RID_MASK
                    slot = rid & mask
                    inp = inp_col[slot]
                    out = out_col[slot]
                    kv_offset -= inp - ((key >> _RID_BITS) - out + 1)
                    finish_col[slot] = now
                    status_col[slot] = FINISHED
                    energy_col[slot] += ept
                    kv_reserved -= inp + out
                    tokens_out += out
                    outstanding -= 1
                if cache is not None and op == _OP_MIXED:
                    self._cache_prefixes(new, kv_capacity - kv_reserved)
            # --- decide what comes next: the part-way prompt's chunk, then admissions ---
            self._cuttable = False
            new.clear()
            new_c.clear()
            part_c = 0
            batch = len(heap)
            budget = max_num_tokens - batch
            n_chunks = 0  # sequences with a chunk in the next iteration
            prefill = 0
            prefill_sq = 0
            cutoff = INF
            if waiting and lead > 0.0 and op != _OP_NONE:
                cutoff = now - lead * (self._op_nseq if op == _OP_MIXED else self._op_batch) + _LEAD_TOL
                if not heap and part_rid < 0 and arrival_col[waiting[0] & mask] > cutoff:
                    cutoff = INF  # the engine would otherwise go idle
            if part_rid >= 0:
                rest = inp_col[part_rid & mask] - part_done
                c = rest if rest <= budget else budget
                budget -= c
                prefill += c
                prefill_sq += (part_done + c) * (part_done + c) - part_done * part_done
                n_chunks = 1
                if c == rest:
                    new.append(part_rid)
                    new_c.append(c)
                    part_rid = -1
                    part_done = 0
                else:
                    part_done += c
                    part_c = c
            if waiting and budget > 0:
                room = max_batch - batch - n_chunks
                kv_free = kv_capacity - kv_reserved
                admitted = 0
                took = []
                while waiting and room > 0 and budget > 0:
                    rid = waiting[0]
                    slot = rid & mask
                    inp = inp_col[slot]
                    need = inp + out_col[slot]
                    if need > kv_free or arrival_col[slot] > cutoff:
                        break
                    hit = 0
                    if cache is not None:
                        prefix = prefix_col[slot]
                        if prefix >= 0:
                            hit = cache.hit_tokens(prefix, prefix_tokens_col[slot], inp)
                    waiting.popleft()
                    took.append(rid)
                    room -= 1
                    kv_free -= need
                    admitted += 1
                    energy_col[slot] = 0.0
                    rest = inp - hit
                    c = rest if rest <= budget else budget
                    budget -= c
                    prefill += c
                    prefill_sq += (hit + c) * (hit + c) - hit * hit
                    if cache is not None:
                        cached_col[slot] = hit
                        if hit:
                            cache.use(prefix)
                        cache.fit(kv_free)
                    if c == rest:
                        new.append(rid)
                        new_c.append(c)
                    else:
                        part_rid = rid
                        part_done = hit + c
                        part_c = c
                kv_reserved = kv_capacity - kv_free
                if admitted:
                    if fit_max_batch and batch + n_chunks + admitted > fit_max_batch:
                        self._count_batch_extrapolation(took)
                    n_chunks += admitted
            if n_chunks:
                n_tok = batch + prefill
                kv = kv_offset + batch * iteration
                duration = step.iteration_s(batch + n_chunks, n_tok, kv, prefill, prefill_sq)
                if self._graphs is not None:
                    duration += self._capture_s(n_tok, kv)
                self._op_j = step.iteration_j(duration, n_tok, kv)
                self._op_s = duration
                self._op_i = iteration
                self._op_tokens = n_tok
                self._op_nseq = batch + n_chunks
                op = _OP_MIXED
                next_s = now + duration
                continue
            if batch == 0:
                op = _OP_NONE
                next_s = INF
                if not self.accepting:
                    released = True
                break
            # Decode-only stretch up to the next completion (no prompt is part-way here).
            kv0 = kv_offset + batch * iteration
            k = (heap[0] >> _RID_BITS) - iteration + 1
            if waiting and cutoff != INF and arrival_col[waiting[0] & mask] > cutoff:
                k_head = step.decode_iterations_until(
                    batch, kv0, arrival_col[waiting[0] & mask] + lead * batch - _LEAD_TOL - now)
                if k_head < 1:
                    k_head = 1
                if k_head < k:
                    k = k_head
            self._op_batch = batch
            self._op_i = iteration
            self._op_kv0 = kv0
            self._op_k = k
            self._op_start = now
            self._cuttable = not waiting
            duration = step.decode_stretch_s(batch, kv0, k)
            self._op_s = duration
            op = _OP_STRETCH
            next_s = now + duration
        self.next_s = next_s
        self._op = op
        self._part_rid = part_rid
        self._part_done = part_done
        self._part_c = part_c
        self._kv_offset = kv_offset
        self._kv_reserved = kv_reserved
        self._iteration = iteration
        self._energy_per_token_j = ept
        self.busy_s = busy_s
        self.busy_j = busy_j
        self.tokens_out = tokens_out
        self.outstanding = outstanding
        if released:
            self.release(now)


class PagedInstance(Instance):
    """A replica whose batch scheduler allocates KV on demand in blocks and evicts running requests when it runs out
    (semantics in the module docstring). Built by ``Instance(...)`` when ``StepModel.scheduler`` is not 0 or a
    ``scheduler`` is given. It advances one iteration per decision point: the allocation of each iteration depends on
    every running request's length, so there is no closed-form decode stretch.

    The shipped schedulers run as built-in loops (``MaxUtilizationInstance``, ``VllmInstance``: the hooks
    ``_decodes`` and ``_prompts``), which give the same results as their ``sim.schedulers`` classes'
    ``schedule()`` (tested) at no per-iteration call; any other scheduler runs as a ``PluginInstance``, which asks
    ``scheduler.schedule(view)`` at every boundary and checks the decision (``sim.scheduler_api``)."""

    __slots__ = ("preemptions", "scheduler", "scheduler_label", "_run", "_gen", "_held", "_free", "_total_blocks",
                 "_block", "_watermark", "_dec", "_pre")

    PREFILL_FIRST = False  # vLLM: an iteration that schedules prompts runs no decode step
    _PLUGIN = False  # PluginInstance: the scheduler's ``schedule(view)`` decides each iteration

    def __init__(self, *args, scheduler: "SchedulerSpec | IterationScheduler | None" = None, **kwargs):
        super().__init__(*args, **kwargs)
        if scheduler is None:
            if self.step.scheduler not in _SHIPPED:
                raise ValueError(f"{type(self).__name__} {self.label}: the step model's scheduler is "
                                 f"{SCHEDULERS[self.step.scheduler]}; give a scheduler or build with Instance(...)")
            sched = _SHIPPED[self.step.scheduler]()
            label = SCHEDULERS[self.step.scheduler]
        elif isinstance(scheduler, SchedulerSpec):
            sched = scheduler.make()
            label = scheduler.target
        else:
            sched = scheduler
            label = f"{type(sched).__module__}.{type(sched).__qualname__}"
        self.scheduler = sched
        self.scheduler_label = label  # how summaries and errors name it: the shipped name, else the target
        if not isinstance(sched, IterationScheduler):
            raise TypeError(f"scheduler {label} is a {type(sched).__name__}, not a sim.scheduler_api."
                            f"IterationScheduler")
        engine = _BUILT_IN.get(type(sched), PluginInstance)
        if type(self) is not engine:  # built directly as the wrong class: it would run another scheduler's loop
            raise TypeError(f"scheduler {label} runs on {engine.__name__}, not {type(self).__name__}; build replicas "
                            f"with Instance(...), which picks the class")
        if self.prefix_cache is not None:
            raise ValueError(f"prefix caching runs only with the guaranteed_no_evict scheduler, not {label} "
                             f"(instance {self.label})")
        if self.step.chunked_context:
            raise ValueError(f"chunked_context runs only with the guaranteed_no_evict scheduler, not {label} "
                             f"(instance {self.label})")
        try:
            block, watermark = engine_params(sched)
        except ValueError as exc:
            raise ValueError(f"scheduler {label}: {exc}") from None
        self.preemptions = 0  # running requests evicted (paused or preempted) to free KV
        self._run: list[int] = []  # decoding requests, in order of (re)admission
        self._gen: dict[int, int] = {}  # rid -> output tokens generated so far (kept across a preemption)
        self._held: dict[int, int] = {}  # rid -> KV blocks held
        self._block = block  # KV tokens per block
        self._total_blocks = self.step.kv_capacity_tokens // block
        self._free = self._total_blocks
        self._watermark = int(watermark * self._total_blocks)  # blocks a new prompt must leave free
        self._dec: list[int] = []  # decode steps of the iteration in flight
        self._pre: list[tuple[int, int]] = []  # (rid, prompt tokens computed) of the iteration in flight

    @property
    def running(self) -> int:
        return len(self._run) + len(self._pre)

    @property
    def kv_used_tokens(self) -> int:
        """KV-cache tokens in the blocks the running requests hold."""
        return (self._total_blocks - self._free) * self._block

    def enqueue(self, rid: int, now_s: float) -> None:
        """Accept a request at ``now_s`` (it waits for the next iteration boundary), or reject one that could not
        run alone: its whole KV (input + output, in blocks) above the blocks a prompt may take, or its prompt over
        ``max_num_tokens``."""
        if self.next_s < now_s:
            self.advance(now_s)
        req = self.requests
        slot = rid & req.mask
        step = self.step
        inp = req.input_tokens[slot]
        if -(-(inp + req.output_tokens[slot]) // self._block) > self._total_blocks - self._watermark:
            reason = _KV_CAPACITY
        elif inp > step.max_num_tokens:
            reason = _MAX_NUM_TOKENS
        elif self.max_queue is not None and len(self.waiting) >= self.max_queue:
            reason = _QUEUE_FULL
        else:
            req.instance[slot] = self.instance_id
            req.energy_j[slot] = 0.0
            self.waiting.append(rid)
            self.outstanding += 1
            if self.next_s == INF:
                self.next_s = now_s
            return
        req.status[slot] = REJECTED
        req.reason[slot] = reason
        req.finish_s[slot] = now_s

    def _decodes(self, dec: list[int]) -> None:
        """Give every running request (oldest first) the block its next token needs; when none is free, evict the
        most recently admitted running request (the request itself if it is the newest) back to the head of the
        queue, where evicted requests keep their order. Fills ``dec`` with the requests that decode."""
        req = self.requests
        mask = req.mask
        inp_col = req.input_tokens
        block = self._block
        run = self._run
        gen = self._gen
        held = self._held
        free = self._free
        evicted = []
        i = 0
        while i < len(run):
            rid = run[i]
            need = -(-(inp_col[rid & mask] + gen[rid]) // block) - held[rid]
            if need > free:
                victim = run.pop()
                free += held[victim]
                held[victim] = 0
                evicted.append(victim)
                continue
            free -= need
            held[rid] += need
            i += 1
        self._free = free
        if evicted:
            self.preemptions += len(evicted)
            self.waiting.extendleft(evicted)  # newest first in ``evicted``: the oldest ends up at the head
        dec.extend(run)

    def _prompts(self, pre: list[tuple[int, int]], seqs: int) -> None:
        """Admit from the queue head while the batch has room, the prompt's blocks fit (leaving the watermark) and
        its tokens fit the budget (a recomputed prompt longer than ``max_num_tokens`` runs as an iteration's only
        prompt). Nothing overtakes the head."""
        req = self.requests
        mask = req.mask
        inp_col = req.input_tokens
        block = self._block
        waiting = self.waiting
        gen = self._gen
        held = self._held
        room = self.step.max_batch - seqs
        budget = self.step.max_num_tokens
        avail = self._free - self._watermark
        while waiting and room > 0:
            rid = waiting[0]
            g = gen.get(rid, 0)
            tokens = inp_col[rid & mask] + g
            blocks = -(-tokens // block)
            if blocks > avail or (tokens > budget and pre):
                break
            waiting.popleft()
            gen[rid] = g
            held[rid] = blocks
            avail -= blocks
            budget -= tokens
            room -= 1
            pre.append((rid, tokens))
        self._free = avail + self._watermark

    def advance(self, until_s: float) -> None:
        """Process every iteration boundary before ``until_s``: finish the iteration in flight, schedule the next."""
        next_s = self.next_s
        if next_s >= until_s:
            return
        req = self.requests
        mask = req.mask
        inp_col = req.input_tokens
        out_col = req.output_tokens
        first_col = req.first_token_s
        finish_col = req.finish_s
        status_col = req.status
        energy_col = req.energy_j
        step = self.step
        gen = self._gen
        held = self._held
        run = self._run
        dec = self._dec
        pre = self._pre
        plugin = self._PLUGIN
        prefill_first = self.PREFILL_FIRST
        fit_max_batch = self._fit_max_batch
        released = False
        while next_s < until_s:
            now = next_s
            if self._op == _OP_MIXED:  # the iteration in flight ends
                self.busy_s += self._op_s
                energy = self._op_j
                self.busy_j += energy
                per_token = energy / self._op_tokens
                done = []
                for rid in dec:
                    slot = rid & mask
                    energy_col[slot] += per_token
                    g = gen[rid] + 1
                    gen[rid] = g
                    if g == out_col[slot]:
                        done.append(rid)
                for rid, tokens in pre:
                    slot = rid & mask
                    energy_col[slot] += per_token * tokens
                    g = gen[rid]
                    if g == 0:
                        first_col[slot] = now
                    g += 1
                    gen[rid] = g
                    run.append(rid)
                    if g == out_col[slot]:
                        done.append(rid)
                for rid in done:
                    slot = rid & mask
                    run.remove(rid)
                    self._free += held.pop(rid)
                    del gen[rid]
                    finish_col[slot] = now
                    status_col[slot] = FINISHED
                    self.tokens_out += int(out_col[slot])
                    self.outstanding -= 1
            # --- schedule the next iteration ---
            dec.clear()
            pre.clear()
            kv = 0
            if plugin:
                kv = self._plugin_step(now)  # (it sums the decodes' KV while it gives them their blocks)
            elif prefill_first:
                if self.waiting:
                    self._prompts(pre, len(run))
                if not pre:
                    self._decodes(dec)
            else:
                self._decodes(dec)
                if self.waiting:
                    self._prompts(pre, len(dec))
            if not dec and not pre:
                self._op = _OP_NONE
                next_s = INF
                if not self.accepting:
                    released = True
                break
            batch = len(dec)
            prefill = 0
            prefill_sq = 0
            for _, tokens in pre:
                prefill += tokens
                prefill_sq += tokens * tokens
            if not plugin:
                for rid in dec:
                    kv += inp_col[rid & mask] + gen[rid]
            n_tok = batch + prefill
            duration = step.iteration_s(batch + len(pre), n_tok, kv, prefill, prefill_sq)
            if pre and self._graphs is not None:
                duration += self._capture_s(n_tok, kv)
            if pre and fit_max_batch and batch + len(pre) > fit_max_batch:
                self._count_batch_extrapolation([rid for rid, _ in pre])
            self._op_j = step.iteration_j(duration, n_tok, kv)
            self._op_s = duration
            self._op_tokens = n_tok
            self._op_nseq = batch + len(pre)
            self._op = _OP_MIXED
            next_s = now + duration
        self.next_s = next_s
        if released:
            self.release(now)


class MaxUtilizationInstance(PagedInstance):
    """TensorRT-LLM's MAX_UTILIZATION capacity scheduler (``scheduler: max_utilization``, ``sim.schedulers.
    MaxUtilization``) as a built-in loop: every running request first gets the KV block its next token needs (pausing
    the newest running requests when the cache is full), then new and paused requests are admitted by their current
    KV need. Blocks of 64 tokens (TensorRT-LLM's ``tokens_per_block``) unless the scheduler's ``block_tokens`` says
    otherwise."""

    __slots__ = ()


class VllmInstance(PagedInstance):
    """vLLM V0's default scheduler (``scheduler: vllm``, ``sim.schedulers.Vllm``) as a built-in loop: waiting prompts
    first (an iteration that admits prompts runs no decode step), 16-token blocks allocated on demand, a 1 % block
    watermark kept free at admission, preemption by recomputation of the newest running request; ``max_num_tokens``
    is ``max_num_batched_tokens``."""

    __slots__ = ()
    PREFILL_FIRST = True


class PluginInstance(PagedInstance):
    """A replica running a plug-in scheduler (``sim.scheduler_api``): at every iteration boundary it asks
    ``scheduler.schedule(view)``, checks the decision against the contract (requests in the right state, each once;
    free blocks, ``max_batch``, ``max_num_tokens``; no livelock) and applies it. A broken rule stops the run with a
    ``SchedulerError`` naming the scheduler's target, the replica, the time and the rule."""

    __slots__ = ("_schedule", "_view")
    _PLUGIN = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._schedule = self.scheduler.schedule
        self._view = SchedulerView(self._run, self.waiting, self._gen, self._held, self._total_blocks, self._block,
                                   self._watermark, self.step.max_batch, self.step.max_num_tokens, self.label,
                                   self.requests)

    def _violation(self, now_s: float, rule: str) -> SchedulerError:
        return SchedulerError(f"scheduler {self.scheduler_label} returned an invalid decision at t={now_s:.6g} s on "
                              f"replica {self.instance_id} ({self.label}): {rule}")

    def _ids(self, value: object, name: str, now_s: float) -> list[int] | tuple[int, ...]:
        """A decision field as request ids: itself when it is a list or tuple of ints (checked in C), else
        converted (numpy integers, other sequences); SchedulerError when an entry is no integer."""
        if (type(value) is list or type(value) is tuple) and set(map(type, value)) <= _INT_TYPES:
            return value
        try:
            return [operator.index(r) for r in value]
        except TypeError:
            raise self._violation(now_s, f"Decision.{name} must be a sequence of request ids (int), got "
                                         f"{_short(value)}") from None

    def _checked(self, decision: object, now_s: float) -> tuple:
        """The decision's (decode, prompts, evict) once they name running requests (decode, evict), no running
        request as a prompt unless evicted by the same decision, and each request once; else SchedulerError. Set
        operations, O(listed); that a prompt is waiting is checked when it is taken from the queue."""
        if type(decision) is not Decision and not isinstance(decision, Decision):
            raise self._violation(now_s, f"returned {type(decision).__name__}, not a sim.scheduler_api.Decision")
        decode = self._ids(decision.decode, "decode", now_s)
        prompts = self._ids(decision.prompts, "prompts", now_s)
        evict = self._ids(decision.evict, "evict", now_s)
        running = self._held.keys()
        listed = set(decode)
        if len(listed) != len(decode):
            raise self._violation(now_s, f"request {_twice(decode)} appears twice in Decision.decode")
        if not running >= listed:
            raise self._violation(now_s, f"decodes request {min(listed - running)}, which is not running")
        evicted = set(evict)
        if evict:
            if len(evicted) != len(evict):
                raise self._violation(now_s, f"request {_twice(evict)} appears twice in Decision.evict")
            if not running >= evicted:
                raise self._violation(now_s, f"evicts request {min(evicted - running)}, which is not running")
            if listed & evicted:
                raise self._violation(now_s, f"decodes request {min(listed & evicted)}, which it evicts")
        if prompts:
            admitted = set(prompts)
            if len(admitted) != len(prompts):
                raise self._violation(now_s, f"request {_twice(prompts)} appears twice in Decision.prompts")
            if (admitted & running) - evicted:
                raise self._violation(now_s, f"admits request {min((admitted & running) - evicted)}, which is "
                                             f"running")
        return decode, prompts, evict

    def _plugin_step(self, now_s: float) -> int:
        """Ask the scheduler, check its decision, apply it: evictions (blocks freed, back to the queue head), then a
        block for every decode step that needs one, then the prompts (blocks of input + generated tokens). Returns
        the KV tokens the decode steps read."""
        view = self._view
        view.free_blocks = free = self._free
        view.now_s = now_s
        decode, prompts, evict = self._checked(self._schedule(view), now_s)
        req = self.requests
        mask = req.mask
        inp_col = req.input_tokens
        block = self._block
        run = self._run
        gen = self._gen
        held = self._held
        waiting = self.waiting
        dec = self._dec
        dec.extend(decode)  # first: ``decode`` may be the running list itself, which evictions change
        if evict:
            for rid in evict:
                run.remove(rid)
                free += held.pop(rid)
            waiting.extendleft(reversed(evict))
            self.preemptions += len(evict)
        kv = 0
        for rid in dec:
            tokens = inp_col[rid & mask] + gen[rid]
            kv += tokens
            need = -(-tokens // block) - held[rid]
            if need:
                held[rid] += need
                free -= need
        pre = self._pre
        prefill = 0
        for rid in prompts:
            if waiting and waiting[0] == rid:
                waiting.popleft()
            else:
                try:
                    waiting.remove(rid)
                except ValueError:
                    raise self._violation(now_s, f"admits request {rid}, which is not waiting on this "
                                                 f"replica") from None
            g = gen.get(rid, 0)
            tokens = inp_col[rid & mask] + g
            blocks = -(-tokens // block)
            gen[rid] = g
            held[rid] = blocks
            free -= blocks
            prefill += tokens
            pre.append((rid, tokens))
        self._free = free
        step = self.step
        if free < 0:
            raise self._violation(now_s, f"its decode steps and prompts need {-free} KV block(s) more than are free "
                                         f"({self._total_blocks} blocks of {block} tokens)")
        if len(run) + len(pre) > step.max_batch:
            raise self._violation(now_s, f"{len(run)} running + {len(pre)} admitted = {len(run) + len(pre)} "
                                         f"requests, more than max_batch {step.max_batch}")
        if prefill > step.max_num_tokens and len(pre) > 1:
            raise self._violation(now_s, f"admits {len(pre)} prompts of {prefill} tokens together, more than "
                                         f"max_num_tokens {step.max_num_tokens} (only a lone prompt may exceed it)")
        if not dec and not pre and (run or waiting):
            raise self._violation(now_s, f"schedules nothing while {len(run)} request(s) run and {len(waiting)} "
                                         f"wait: the replica would sit idle forever (livelock)")
        return kv


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _twice(rids) -> int:
    """A request id listed more than once."""
    seen = set()
    for rid in rids:
        if rid in seen:
            return rid
        seen.add(rid)
    raise ValueError("no request is listed twice")


_INT_TYPES = {int}


_SCHEDULER_CLASSES = {1: MaxUtilizationInstance, 2: VllmInstance}  # by StepModel.scheduler code
_SHIPPED = {1: MaxUtilization, 2: Vllm}  # the scheduler class of each shipped name
_BUILT_IN = {MaxUtilization: MaxUtilizationInstance, Vllm: VllmInstance}  # classes that run as built-in loops


def _paged_class(scheduler: "SchedulerSpec | IterationScheduler") -> type:
    """The engine class of a given scheduler: a shipped class itself runs its built-in loop, anything else (a
    subclass included: it may override ``schedule``) the plug-in path."""
    cls = scheduler.cls if isinstance(scheduler, SchedulerSpec) else type(scheduler)
    return _BUILT_IN.get(cls, PluginInstance)


def replay_single_instance(step: StepModel, requests: RequestTable,
                           prefix_cache: PrefixCacheSettings | None = None, graphs: set | None = None,
                           scheduler: SchedulerSpec | IterationScheduler | None = None) -> Instance:
    """Run every request of a table through one always-ready instance (with a prefix cache of these settings,
    if given; with the CUDA graphs of ``graphs`` already captured, and the set updated; under a plug-in
    ``scheduler``, if given); for probes, calibration replays and tests."""
    instance = Instance(0, "single", 1, step, requests, alloc_s=0.0, ready_s=0.0, prefix_cache=prefix_cache,
                        graphs=graphs, scheduler=scheduler)
    arrivals = requests.arrival_s
    now = 0.0
    for rid in range(requests.n):
        delay = arrivals[rid] - now
        if delay > 0:
            now = now + delay
        instance.enqueue(rid, now)
    instance.advance(INF)
    return instance
