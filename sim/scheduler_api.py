"""The batch-scheduler plug-in interface: what an engine's scheduler sees at each iteration boundary, what it returns.

A scheduler decides, at every iteration boundary of one replica, which running requests run a decode step, which
waiting requests are admitted (their prompt is prefilled in this iteration) and which running requests are evicted
back to the queue. It is any importable class subclassing ``IterationScheduler``, chosen by Hydra ``_target_``
(``engine.scheduler._target_=my_pkg.MyScheduler`` for every pool, ``cluster.pools.<task>.engine.scheduler._target_=``
for one); the other keys of the node are its constructor's keyword arguments (``+engine.scheduler.budget=512``).
Every replica gets its own scheduler object, so a scheduler may keep per-replica state. The shipped ones are
``sim.schedulers.MaxUtilization`` (``scheduler=max_utilization``) and ``sim.schedulers.Vllm`` (``scheduler=vllm``);
both are written against this interface and are good starting points (subclass one and override ``schedule``). An
instance of exactly one of them runs as a built-in loop with the same results (``sim.schedulers``); any other
scheduler runs on ``sim.instance.PluginInstance``, which calls ``schedule`` and checks every decision.

The engine model it plugs into (``sim.instance.PagedInstance``; semantics in ``sim.instance``, "Schedulers"): KV is
allocated on demand in blocks of ``block_tokens``. A request with ``g`` output tokens generated holds the KV of
``input + g - 1`` tokens; its next decode step writes one more token, so it needs ``ceil((input + g) / block)``
blocks (at most one more than it holds). An admitted request prefills ``input + g`` tokens in one iteration (a new
request has ``g = 0``; an evicted one recomputes what it had, and keeps ``g``), takes ``ceil((input + g) / block)``
blocks and yields token ``g + 1``. Prompts are never chunked. An evicted request drops all its blocks and waits at
the head of the queue.

What it sees, ``view: SchedulerView``, the replica's live state (read it, never change it; it is not a copy):

* ``running`` - rids of the running requests, oldest (re)admission first; ``waiting`` - rids waiting, in queue
  order (evicted ones at the head); ``generated[rid]`` - output tokens generated so far (running requests and
  evicted ones; absent for a request never run: use ``view.generated_tokens(rid)``); ``held_blocks[rid]`` - blocks
  a running request holds;
* ``free_blocks`` of ``total_blocks`` (``block_tokens`` KV tokens each), ``watermark_blocks`` (what the scheduler's
  own ``watermark`` keeps free of new prompts), ``max_batch`` (most running requests), ``max_num_tokens`` (the
  iteration's prompt-token budget), ``now_s``, ``replica`` (its label);
* per request: ``input_tokens(rid)``, ``output_tokens(rid)``, ``arrival_s(rid)``, ``generated_tokens(rid)``,
  ``prompt_tokens(rid)`` (``input + generated``: what admitting it prefills), ``blocks(tokens)`` (blocks holding
  that many tokens), ``decode_blocks(rid)`` (blocks a running request's next decode step needs beyond what it
  holds: 0 or 1).

What it returns, ``Decision(decode, prompts, evict)`` (sequences of rids), applied in this order:

1. ``evict``: running requests evicted; their blocks are freed and they go back to the queue head, ``evict[0]``
   first (the shipped schedulers list them oldest admission first);
2. ``decode``: running requests (not evicted) that run one decode step; each gets the block it needs. A running
   request not listed sits the iteration out, keeping its blocks (vLLM's prefill-only iterations);
3. ``prompts``: waiting requests (after the evictions) admitted in this order; each prefills ``prompt_tokens(rid)``.

Rules checked on every decision (one line naming the scheduler, the replica, the time and the rule; the run stops):
listed requests must be running (decode, evict) or waiting (prompts), each at most once; the blocks taken must fit
the free blocks; running + admitted must fit ``max_batch``; the admitted prompt tokens must fit ``max_num_tokens``
unless a single prompt is admitted (a recomputed prompt may be longer than the budget: it runs alone); and a
decision that runs nothing while requests run or wait is a livelock (the replica would sleep forever).
The engine also rejects, at arrival, a request whose whole KV (input + output, in blocks) exceeds
``total_blocks - watermark_blocks`` (``exceeds_kv_capacity``) or whose prompt exceeds ``max_num_tokens``, so one
request alone can always run; a scheduler that always ends up running something therefore finishes every request.

Parameters: ``block_tokens`` (KV tokens per block, an engine property the scheduler class chooses: vLLM 16,
TensorRT-LLM 64) and ``watermark`` (share of the blocks new prompts must leave free) are the base class's; a
subclass adds its own as constructor keywords, and may declare ``param_ranges`` as policies do
(``sim.policy_api``), checked when the config is read. Not modelled for schedulers of this kind: chunked context
and prefix caching (both refused when the config is read), the admission lead of ``StepModel``.

Cost: ``schedule`` runs once per iteration (thousands of times per simulated second of a busy replica); keep it
O(running + what it admits) with plain reads of the view. The two helpers below do the common parts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Sequence


@dataclass(frozen=True, slots=True)
class Decision:
    """One iteration's schedule (rids): who is evicted, who decodes, who is admitted; see the module docstring."""

    decode: Sequence[int] = ()
    prompts: Sequence[int] = ()
    evict: Sequence[int] = ()


class SchedulerError(RuntimeError):
    """A scheduler returned a decision the engine cannot run; the message names the scheduler and the rule."""


class SchedulerView:
    """A replica's scheduling state as its scheduler sees it (live, read-only by contract; the engine owns it)."""

    __slots__ = ("running", "waiting", "generated", "held_blocks", "free_blocks", "total_blocks", "block_tokens",
                 "watermark_blocks", "max_batch", "max_num_tokens", "now_s", "replica", "_inp", "_out", "_arr",
                 "_mask")

    def __init__(self, running: list[int], waiting: deque, generated: dict[int, int], held_blocks: dict[int, int],
                 total_blocks: int, block_tokens: int, watermark_blocks: int, max_batch: int, max_num_tokens: int,
                 replica: str, requests: Any):
        self.running = running
        self.waiting = waiting
        self.generated = generated
        self.held_blocks = held_blocks
        self.free_blocks = total_blocks
        self.total_blocks = total_blocks
        self.block_tokens = block_tokens
        self.watermark_blocks = watermark_blocks
        self.max_batch = max_batch
        self.max_num_tokens = max_num_tokens
        self.now_s = 0.0
        self.replica = replica
        self._inp = requests.input_tokens
        self._out = requests.output_tokens
        self._arr = requests.arrival_s
        self._mask = requests.mask

    def input_tokens(self, rid: int) -> int:
        return self._inp[rid & self._mask]

    def output_tokens(self, rid: int) -> int:
        """The output tokens the request will generate in all (its trace length)."""
        return self._out[rid & self._mask]

    def arrival_s(self, rid: int) -> float:
        return self._arr[rid & self._mask]

    def generated_tokens(self, rid: int) -> int:
        """Output tokens generated so far (0 for a request never run)."""
        return self.generated.get(rid, 0)

    def prompt_tokens(self, rid: int) -> int:
        """Tokens admitting this waiting request prefills: its input plus what it generated before an eviction."""
        return self._inp[rid & self._mask] + self.generated.get(rid, 0)

    def blocks(self, tokens: int) -> int:
        """KV blocks that hold ``tokens`` tokens."""
        return -(-tokens // self.block_tokens)

    def decode_blocks(self, rid: int) -> int:
        """Blocks a running request's next decode step needs beyond those it holds (0 or 1)."""
        return -(-(self._inp[rid & self._mask] + self.generated[rid]) // self.block_tokens) - self.held_blocks[rid]


class IterationScheduler(ABC):
    """An engine batch scheduler: ``schedule(view) -> Decision`` once per iteration (see the module docstring).

    ``block_tokens``: KV tokens per block; ``watermark``: share of the blocks a new prompt must leave free (also
    what the engine keeps out of reach at arrival). Subclasses add their own keyword parameters."""

    name: str = ""
    block_tokens: int = 16
    watermark: float = 0.0
    param_ranges = {"block_tokens": (1, True, None, True, False), "watermark": (0, True, 1, False, False)}

    def __init__(self, block_tokens: int = 16, watermark: float = 0.0):
        self.block_tokens = block_tokens
        self.watermark = watermark
        self.block_tokens, self.watermark = engine_params(self)

    @abstractmethod
    def schedule(self, view: SchedulerView) -> Decision:
        """This iteration's decision for the replica ``view`` shows."""

    # --- helpers for the common parts ------------------------------------------------------------------------

    @staticmethod
    def grow_running(view: SchedulerView) -> tuple[list[int], list[int], int]:
        """Give every running request, oldest first, the block its next decode step needs; when none is free, evict
        the newest running request (the request itself if it is the newest). Returns (decode, evict, free blocks
        left): ``decode`` the requests kept, in order; ``evict`` oldest admission first (queue-head order)."""
        running = view.running
        gen = view.generated
        held = view.held_blocks
        inp = view._inp
        mask = view._mask
        block = view.block_tokens
        free = view.free_blocks
        kept = list(running)
        evicted = []
        i = 0
        while i < len(kept):
            rid = kept[i]
            need = -(-(inp[rid & mask] + gen[rid]) // block) - held[rid]
            if need > free:
                victim = kept.pop()
                free += held[victim]
                evicted.append(victim)
                continue
            free -= need
            i += 1
        evicted.reverse()
        return kept, evicted, free

    @staticmethod
    def admit_in_order(view: SchedulerView, queue: Iterable[int], free_blocks: int, seats: int,
                       budget_tokens: int | None = None) -> list[int]:
        """Admit from ``queue`` in its order while a seat is left (``seats``: batch room), the prompt's blocks fit
        ``free_blocks`` less the watermark and its tokens fit the budget (``max_num_tokens`` unless given; a prompt
        longer than the budget is admitted only as the iteration's first). Stops at the first that does not fit, so
        nothing overtakes it. Returns the admitted rids."""
        inp = view._inp
        mask = view._mask
        gen = view.generated
        block = view.block_tokens
        avail = free_blocks - view.watermark_blocks
        budget = view.max_num_tokens if budget_tokens is None else budget_tokens
        out: list[int] = []
        if seats <= 0:
            return out
        for rid in queue:
            tokens = inp[rid & mask] + gen.get(rid, 0)
            blocks = -(-tokens // block)
            if blocks > avail or (tokens > budget and out):
                break
            avail -= blocks
            budget -= tokens
            out.append(rid)
            if len(out) == seats:
                break
        return out


def engine_params(scheduler: IterationScheduler) -> tuple[int, float]:
    """The scheduler's ``(block_tokens, watermark)`` as the engine reads them; ValueError (one line) when they
    describe no engine (a subclass may set them as class attributes without calling ``__init__``)."""
    block, watermark = scheduler.block_tokens, scheduler.watermark
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block_tokens must be a whole number >= 1, got {block!r}")
    if isinstance(watermark, bool) or not isinstance(watermark, (int, float)) or not 0.0 <= watermark < 1.0:
        raise ValueError(f"watermark must be in [0, 1), got {watermark!r}")
    return block, float(watermark)


@dataclass(frozen=True)
class SchedulerSpec:
    """A scheduler chosen by ``_target_``: its class, keyword arguments and label; ``make()`` builds one per
    replica. Held by the engine settings (``profiles.engine_settings``: ``scheduler`` is a shipped name or this)."""

    target: str
    label: str
    cls: type
    params: tuple[tuple[str, Any], ...] = ()

    def make(self) -> IterationScheduler:
        return self.cls(**dict(self.params))

    def __str__(self) -> str:
        return self.target


__all__ = ["Decision", "IterationScheduler", "SchedulerError", "SchedulerSpec", "SchedulerView", "engine_params"]
