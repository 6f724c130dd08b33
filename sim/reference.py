"""A straightforward per-iteration replay of one instance: the oracle the fast path is tested against.

It spends a loop turn on every iteration and keeps one record per running request, exactly as the
engine semantics in ``sim.instance`` describe them, with no closed forms and no SimPy. It is slow on
purpose; use it only on small cases.

With ``block_tokens`` set it also models a prefix cache, written here from the semantics stated in
``sim.prefix_cache`` (a plain dict with explicit use stamps, not that module's class): per-request hits in
whole blocks capped at ``input - 1``, uncached tokens only in the iteration's cost and budget,
insertion when a prefill iteration ends, LRU eviction to the KV not reserved by running requests.

With ``step.chunked_context == 1`` it runs chunked context as ``sim.instance`` states it, written generally (any
number of part-way prompts, admission order): each iteration the token budget ``max_num_tokens`` less one token
per decoding sequence goes first to the admitted prompts not yet fully computed, then to new admissions (batch
room counting decoding and prefilling sequences, whole KV footprint, at least one budget token left), a chunk
``[o, o + c)`` costing ``c`` prefill tokens and ``(o + c)^2 - o^2`` attention; the first token comes when the
last chunk's iteration ends, and a cached prefix is inserted then.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from profiles.step_model import StepModel

LEAD_TOL_S = 1e-9  # an arrival this close to the admission cutoff counts as before it (as in sim.instance)


@dataclass(frozen=True, slots=True)
class ReferenceResult:
    first_token_s: np.ndarray
    finish_s: np.ndarray
    busy_s: float
    busy_j: float
    cached_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    evictions: int = 0


class _ReferenceCache:
    """Prefix id -> [cached tokens, last use]; the least recently used entry has the smallest stamp."""

    def __init__(self, block_tokens: int):
        self.block = block_tokens
        self.entries: dict[int, list[int]] = {}
        self.clock = 0
        self.evictions = 0

    def _stamp(self) -> int:
        self.clock += 1
        return self.clock

    def hit(self, prefix: int, prefix_tokens: int, input_tokens: int) -> int:
        if prefix < 0 or prefix not in self.entries:
            return 0
        usable = min(self.entries[prefix][0], prefix_tokens, input_tokens - 1)
        return max(usable // self.block * self.block, 0)

    def use(self, prefix: int) -> None:
        self.entries[prefix][1] = self._stamp()

    def insert(self, prefix: int, prefix_tokens: int) -> None:
        whole = prefix_tokens // self.block * self.block
        if prefix < 0 or whole == 0:
            return
        old = self.entries.get(prefix, [0, 0])[0]
        self.entries[prefix] = [max(old, whole), self._stamp()]

    def shrink_to(self, free_tokens: int) -> None:
        while sum(tokens for tokens, _ in self.entries.values()) > free_tokens:
            oldest = min(self.entries, key=lambda p: self.entries[p][1])
            del self.entries[oldest]
            self.evictions += 1


def replay_instance(
    step: StepModel, arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray,
    prefix_id: np.ndarray | None = None, prefix_tokens: np.ndarray | None = None, block_tokens: int | None = None,
) -> ReferenceResult:
    """Replay requests (all admissible on an empty instance) through one instance, iteration by iteration;
    with ``block_tokens`` (and the prefix columns) through a prefix cache of that block size."""
    n = len(arrival_s)
    cache = _ReferenceCache(block_tokens) if block_tokens is not None else None
    if prefix_id is None:
        prefix_id = np.full(n, -1, dtype=np.int64)
        prefix_tokens = np.zeros(n, dtype=np.int64)
    cached = np.zeros(n, dtype=np.int64)
    first = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    waiting: deque[int] = deque()
    running: list[list[int]] = []  # [request id, tokens generated so far]
    chunked = step.chunked_context == 1
    prefilling: list[list[int]] = []  # chunked: [request id, prompt tokens computed or cached], admission order
    reserved = 0
    now = 0.0
    nxt = 0
    busy_s = 0.0
    busy_j = 0.0
    last_n_seq = 0  # sequences of the iteration that just ended (0 when the engine was idle)
    lead = step.admission_lead_per_seq_s
    graphs: set[tuple] = set()  # padded shapes whose CUDA graph is captured
    while nxt < n or waiting or running or prefilling:
        if not waiting and not running and not prefilling:
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
            if not running and not prefilling and arrival_s[waiting[0]] > cutoff:
                cutoff = np.inf
        if chunked:
            busy_s, busy_j, now, reserved, last_n_seq = _chunked_iteration(
                step, arrival_s, input_tokens, output_tokens, prefix_id, prefix_tokens, cache, cached, first, finish,
                waiting, running, prefilling, reserved, now, cutoff, graphs, busy_s, busy_j, last_n_seq)
            continue
        new: list[int] = []
        budget = step.max_num_tokens
        while waiting and len(running) + len(new) < step.max_batch:
            rid = waiting[0]
            need = int(input_tokens[rid] + output_tokens[rid])
            hit = cache.hit(int(prefix_id[rid]), int(prefix_tokens[rid]), int(input_tokens[rid])) if cache is not None else 0
            if (reserved + need > step.kv_capacity_tokens or input_tokens[rid] - hit > budget
                    or arrival_s[rid] > cutoff):
                break
            waiting.popleft()
            new.append(rid)
            reserved += need
            budget -= int(input_tokens[rid]) - hit
            cached[rid] = hit
            if cache is not None:
                if hit:
                    cache.use(int(prefix_id[rid]))
                cache.shrink_to(step.kv_capacity_tokens - reserved)
        if not new and not running:
            continue  # head waits for nothing: cannot happen for admissible requests
        batch = len(running)
        kv = sum(int(input_tokens[rid]) + generated for rid, generated in running)
        prefill = sum(int(input_tokens[rid]) - int(cached[rid]) for rid in new)
        prefill_sq = sum(int(input_tokens[rid]) ** 2 - int(cached[rid]) ** 2 for rid in new)
        n_tok = batch + prefill
        last_n_seq = batch + len(new)
        duration = step.iteration_s(batch + len(new), n_tok, kv, prefill, prefill_sq)
        if new and step.graph_capture_s > 0.0:  # the first iteration with prompts of a padded shape captures it
            shape = step.graph_shape(n_tok, kv)
            if shape not in graphs:
                graphs.add(shape)
                duration += step.graph_capture_s
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
        if cache is not None and new:
            for rid in new:
                cache.insert(int(prefix_id[rid]), int(prefix_tokens[rid]))
            cache.shrink_to(step.kv_capacity_tokens - reserved)
    return ReferenceResult(first, finish, busy_s, busy_j, cached, cache.evictions if cache is not None else 0)


def _chunked_iteration(step, arrival_s, input_tokens, output_tokens, prefix_id, prefix_tokens, cache, cached, first,
                       finish, waiting, running, prefilling, reserved, now, cutoff, graphs, busy_s, busy_j, last_n_seq):
    """One iteration with chunked context: schedule chunks and admissions, run it, update every record."""
    budget = step.max_num_tokens - len(running)
    chunks: list[tuple[list[int], int]] = []  # (prefilling record, chunk tokens)
    for record in prefilling:
        if budget <= 0:
            break
        c = min(int(input_tokens[record[0]]) - record[1], budget)
        chunks.append((record, c))
        budget -= c
    while waiting and len(running) + len(prefilling) < step.max_batch and budget > 0:
        rid = waiting[0]
        need = int(input_tokens[rid] + output_tokens[rid])
        if reserved + need > step.kv_capacity_tokens or arrival_s[rid] > cutoff:
            break
        hit = cache.hit(int(prefix_id[rid]), int(prefix_tokens[rid]), int(input_tokens[rid])) if cache is not None else 0
        waiting.popleft()
        reserved += need
        cached[rid] = hit
        if cache is not None:
            if hit:
                cache.use(int(prefix_id[rid]))
            cache.shrink_to(step.kv_capacity_tokens - reserved)
        record = [rid, hit]
        prefilling.append(record)
        c = min(int(input_tokens[rid]) - hit, budget)
        chunks.append((record, c))
        budget -= c
    if not chunks and not running:
        return busy_s, busy_j, now, reserved, last_n_seq  # cannot happen for admissible requests
    batch = len(running)
    kv = sum(int(input_tokens[rid]) + generated for rid, generated in running)
    prefill = sum(c for _, c in chunks)
    prefill_sq = sum((record[1] + c) ** 2 - record[1] ** 2 for record, c in chunks)
    n_tok = batch + prefill
    duration = step.iteration_s(batch + len(chunks), n_tok, kv, prefill, prefill_sq)
    if chunks and step.graph_capture_s > 0.0:
        shape = step.graph_shape(n_tok, kv)
        if shape not in graphs:
            graphs.add(shape)
            duration += step.graph_capture_s
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
    completed = []
    for record, c in chunks:
        record[1] += c
        rid = record[0]
        if record[1] < input_tokens[rid]:
            continue
        prefilling.remove(record)
        completed.append(rid)
        first[rid] = now
        if output_tokens[rid] == 1:
            finish[rid] = now
            reserved -= int(input_tokens[rid] + output_tokens[rid])
        else:
            still.append([rid, 1])
    running[:] = still
    if cache is not None and chunks:
        for rid in completed:
            cache.insert(int(prefix_id[rid]), int(prefix_tokens[rid]))
        cache.shrink_to(step.kv_capacity_tokens - reserved)
    return busy_s, busy_j, now, reserved, batch + len(chunks)


# KV blocks and admission rules of the on-demand schedulers (as sim.instance's MaxUtilizationInstance, VllmInstance)
PAGED_SCHEDULERS = {1: dict(block_tokens=64, prefill_first=False, watermark=0.0),
                    2: dict(block_tokens=16, prefill_first=True, watermark=0.01)}


@dataclass(frozen=True, slots=True)
class PagedReferenceResult:
    first_token_s: np.ndarray
    finish_s: np.ndarray
    busy_s: float
    busy_j: float
    energy_j: np.ndarray
    preemptions: int
    max_running: int  # most sequences in one iteration


def replay_paged(step: StepModel, arrival_s: np.ndarray, input_tokens: np.ndarray,
                 output_tokens: np.ndarray, rules: dict | None = None) -> PagedReferenceResult:
    """Replay requests (each admissible alone) through one instance whose scheduler is ``max_utilization``
    (``step.scheduler == 1``) or ``vllm`` (2), or follows ``rules`` if given (``block_tokens``, ``prefill_first``,
    ``watermark``, as in ``PAGED_SCHEDULERS``: the shipped schedulers with other parameters), iteration by
    iteration, from the semantics in ``sim.instance``:

    * a running request with ``g`` tokens generated holds the KV of ``input + g - 1`` tokens; its decode step writes
      one more, so it needs ``ceil((input + g) / block)`` blocks; a (re)computed prompt of ``input + g`` tokens needs
      ``ceil((input + g) / block)`` blocks and yields token ``g + 1`` (the first token only when ``g == 0``);
    * decodes: running requests, oldest admission first, get their block; none free: the newest running request is
      evicted (all its blocks freed; it may be the request itself) and goes back to the queue head (evicted ones
      in admission order), keeping ``g``, to recompute ``input + g`` tokens later;
    * prompts: from the queue head, while the sequences fit ``max_batch``, the blocks fit the free blocks less the
      watermark (``int(share x total blocks)``) and the tokens fit ``max_num_tokens`` (an oversize recompute only
      as the iteration's first prompt);
    * max_utilization: decodes, then prompts in the same iteration; vllm: prompts first, and decodes only in an
      iteration that admitted none;
    * energy: an iteration's energy is shared per token computed (prompt tokens and one per decode step);
    * CUDA-graph capture as for the default engine (first iteration with prompts of a padded shape).
    """
    rules = PAGED_SCHEDULERS[step.scheduler] if rules is None else rules
    block = rules["block_tokens"]
    total = step.kv_capacity_tokens // block
    watermark = int(rules["watermark"] * total)
    n = len(arrival_s)
    first = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    energy = np.zeros(n)
    generated = [0] * n
    blocks_of = [0] * n
    waiting: deque[int] = deque()
    running: list[int] = []
    free = total
    now = 0.0
    nxt = 0
    busy_s = busy_j = 0.0
    preemptions = 0
    max_running = 0
    graphs: set[tuple] = set()

    def blocks(tokens: int) -> int:
        return (tokens + block - 1) // block

    while nxt < n or waiting or running:
        if not waiting and not running:
            now = max(now, float(arrival_s[nxt]))
        while nxt < n and arrival_s[nxt] <= now:
            waiting.append(nxt)
            nxt += 1
        decodes: list[int] = []
        prompts: list[tuple[int, int]] = []

        def schedule_decodes():
            nonlocal free, preemptions
            out = []
            order = list(running)
            evicted = []
            for rid in order:
                if rid in evicted:
                    continue
                want = blocks(int(input_tokens[rid]) + generated[rid])
                while want - blocks_of[rid] > free:
                    victim = [r for r in running if r not in evicted][-1]
                    evicted.append(victim)
                    free += blocks_of[victim]
                    blocks_of[victim] = 0
                    if victim == rid:
                        break
                if rid in evicted:
                    continue
                free -= want - blocks_of[rid]
                blocks_of[rid] = want
                out.append(rid)
            for rid in evicted:
                running.remove(rid)
            preemptions += len(evicted)
            for rid in reversed(sorted(evicted, key=order.index)):
                waiting.appendleft(rid)
            return out

        def schedule_prompts(seqs):
            nonlocal free
            out = []
            budget = step.max_num_tokens
            while waiting and seqs + len(out) < step.max_batch:
                rid = waiting[0]
                tokens = int(input_tokens[rid]) + generated[rid]
                if blocks(tokens) > free - watermark or (tokens > budget and out):
                    break
                waiting.popleft()
                free -= blocks(tokens)
                blocks_of[rid] = blocks(tokens)
                budget -= tokens
                out.append((rid, tokens))
            return out

        if rules["prefill_first"]:
            prompts = schedule_prompts(len(running))
            if not prompts:
                decodes = schedule_decodes()
        else:
            decodes = schedule_decodes()
            prompts = schedule_prompts(len(running))
        if not decodes and not prompts:
            continue  # cannot happen for admissible requests
        max_running = max(max_running, len(decodes) + len(prompts))
        kv = sum(int(input_tokens[rid]) + generated[rid] for rid in decodes)
        prefill = sum(t for _, t in prompts)
        prefill_sq = sum(t * t for _, t in prompts)
        n_tok = len(decodes) + prefill
        duration = step.iteration_s(len(decodes) + len(prompts), n_tok, kv, prefill, prefill_sq)
        if prompts and step.graph_capture_s > 0.0:  # the first iteration with prompts of a padded shape captures it
            shape = step.graph_shape(n_tok, kv)
            if shape not in graphs:
                graphs.add(shape)
                duration += step.graph_capture_s
        joules = step.iteration_j(duration, n_tok, kv)
        busy_s += duration
        busy_j += joules
        now += duration
        finished = []
        for rid in decodes:
            energy[rid] += joules / n_tok
            generated[rid] += 1
            if generated[rid] == output_tokens[rid]:
                finished.append(rid)
        for rid, tokens in prompts:
            energy[rid] += joules / n_tok * tokens
            if generated[rid] == 0:
                first[rid] = now
            generated[rid] += 1
            running.append(rid)
            if generated[rid] == output_tokens[rid]:
                finished.append(rid)
        for rid in finished:
            running.remove(rid)
            free += blocks_of[rid]
            blocks_of[rid] = 0
            finish[rid] = now
    return PagedReferenceResult(first, finish, busy_s, busy_j, energy, preemptions, max_running)
