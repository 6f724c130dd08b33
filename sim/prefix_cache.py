"""Prefix caching: an instance keeps the KV of shared prompt prefixes and skips recomputing them.

Engines (vLLM's automatic prefix caching, SGLang's radix cache, TensorRT-LLM's KV-cache reuse) keep
the KV blocks of finished prompts and reuse them when a later prompt starts with the same tokens. The
instance model (``sim.instance``) models that per *prefix id* (``traces.trace``: requests that share a
system prompt or a chat history carry the same id and their ``prefix_tokens``), with these semantics:

* **Granularity.** Only whole blocks of ``block_tokens`` are reused. A request carrying prefix ``p``
  with ``prefix_tokens = P`` and ``input_tokens = L``, when ``p`` is cached with ``C`` tokens, hits
  ``hit = floor(min(C, P, L - 1) / block_tokens) * block_tokens`` tokens: at least one prompt token is
  always computed (it yields the first token's logits), and the cap is applied before the rounding, so
  a hit is whole blocks (vLLM's rule). A request without a prefix, or whose prefix is not cached, hits 0.
* **Cost.** Only the ``L - hit`` uncached tokens are prefilled: they count in the iteration's tokens,
  its prefill tokens and its token budget (``max_num_tokens``); the attention term ``sum(L^2)`` of the
  step model counts ``L^2 - hit^2``, since the new tokens attend over the whole context.
* **Insertion.** When the prefill iteration of a request carrying ``p`` ends, ``p`` is inserted with
  ``floor(P / block_tokens) * block_tokens`` tokens (or, if cached, grown to that and refreshed). A hit
  refreshes ``p`` at admission too (its blocks are in use). Requests prefilled in the same iteration do
  not see each other's prefixes (the KV exists only once the iteration ends).
* **Capacity and eviction.** The cache lives in the KV blocks that running requests have not reserved:
  ``kv_capacity_tokens - reserved``. After every admitted request, and after the insertions at the end
  of a prefill iteration (once that boundary's finished requests have freed their KV), least recently
  used entries are evicted, whole, until the cached tokens fit what is free. An evicted prefix is a miss
  next time.
* **Reservation stays conservative.** A request still reserves ``input + output`` KV tokens, hit or not:
  the blocks it shares with the cache are counted twice. Engines that share blocks by reference hold
  more; this model never admits more than an engine without a cache would.

* **Chunked context** (``StepModel.chunked_context == 1``). The hit is decided at admission as above; the
  uncached tokens then run in chunks, the first starting at offset ``hit`` (chunk ``[o, o + c)`` costs ``c``
  budget and prefill tokens and ``(o + c)^2 - o^2`` attention, so the chunks sum to ``L^2 - hit^2``), and ``p``
  is inserted when the iteration of the request's *last* chunk ends.

What differs between engines is a parameter (``PrefixCacheSettings``); the rest is the mechanism above.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PrefixCacheSettings:
    """How an instance's prefix cache behaves (one value for every replica of a run)."""

    block_tokens: int = 16  # KV block size: reuse is in whole blocks (vLLM 16, TensorRT-LLM tokens_per_block)

    def __post_init__(self) -> None:
        value = self.block_tokens
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"cluster.prefix_cache.block_tokens must be a whole number >= 1, got {value!r}")


class PrefixCache:
    """LRU over prefix ids, each holding a whole number of blocks; owned by one instance."""

    __slots__ = ("block_tokens", "entries", "cached_tokens", "hits", "evictions")

    def __init__(self, settings: PrefixCacheSettings):
        self.block_tokens = settings.block_tokens
        self.entries: OrderedDict[int, int] = OrderedDict()  # prefix id -> cached tokens, LRU first
        self.cached_tokens = 0
        self.hits = 0  # admitted requests that reused at least one block
        self.evictions = 0

    def hit_tokens(self, prefix_id: int, prefix_tokens: int, input_tokens: int) -> int:
        """Tokens of this prompt the cache would serve now (no change of state)."""
        cached = self.entries.get(prefix_id)
        if cached is None:
            return 0
        usable = min(cached, prefix_tokens, input_tokens - 1)
        return usable - usable % self.block_tokens if usable > 0 else 0

    def use(self, prefix_id: int) -> None:
        """A request was admitted with a hit on ``prefix_id``: it becomes the most recently used."""
        self.entries.move_to_end(prefix_id)
        self.hits += 1

    def insert(self, prefix_id: int, prefix_tokens: int) -> None:
        """A prefill carrying ``prefix_id`` ended: its whole blocks are cached (most recently used)."""
        tokens = prefix_tokens - prefix_tokens % self.block_tokens
        if tokens <= 0:
            return
        entries = self.entries
        cached = entries.get(prefix_id)
        if cached is None:
            entries[prefix_id] = tokens
            self.cached_tokens += tokens
        else:
            entries.move_to_end(prefix_id)
            if tokens > cached:
                entries[prefix_id] = tokens
                self.cached_tokens += tokens - cached

    def fit(self, free_tokens: int) -> None:
        """Evict least recently used entries until the cached tokens fit ``free_tokens``."""
        if self.cached_tokens <= free_tokens:
            return
        entries = self.entries
        while self.cached_tokens > free_tokens and entries:
            _, tokens = entries.popitem(last=False)
            self.cached_tokens -= tokens
            self.evictions += 1
