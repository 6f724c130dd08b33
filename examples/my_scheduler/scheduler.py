"""ShortestPromptFirst: decode first, then admit the shortest waiting prompts within a prefill token budget.

A scheduling idea worth a what-if: FIFO admission makes a short request wait behind every long prompt queued before
it; admitting the shortest prompts first cuts the median TTFT (and the queue) when prompt lengths vary, at the risk
of starving long prompts, which ``max_wait_s`` bounds (a request that has waited that long goes first, in arrival
order). A prefill token budget below the engine's ``max_num_tokens`` keeps prefills from stretching the iterations
that running requests decode in (better TPOT, worse TTFT).

Each iteration, using only ``sim.scheduler_api``:

1. every running request gets the KV block its next token needs, evicting the newest running requests when the
   cache is full (``grow_running``, as TensorRT-LLM's MAX_UTILIZATION does);
2. admission order: evicted requests first (they lost their KV and recompute it: finish them soon), then requests
   waiting for ``max_wait_s`` or more in queue order, then the rest by prompt length, shortest first, ties in queue
   order;
3. admit in that order while a batch seat, the blocks (less the watermark) and the budget allow; stop at the first
   that does not fit (``admit_in_order``), so a long prompt blocks only what sorts after it.
"""

from __future__ import annotations

from sim.scheduler_api import Decision, IterationScheduler, SchedulerView


class ShortestPromptFirst(IterationScheduler):
    name = "shortest_prompt_first"
    # checked when the config is read, before __init__ runs: (low, low included, high, whole number, null allowed)
    param_ranges = {**IterationScheduler.param_ranges,
                    "prefill_budget_tokens": (1, True, None, True, True), "max_wait_s": (0, True, None, False, True)}

    def __init__(self, block_tokens: int = 16, watermark: float = 0.0, prefill_budget_tokens: int | None = None,
                 max_wait_s: float | None = None):
        super().__init__(block_tokens, watermark)
        if prefill_budget_tokens is not None and (isinstance(prefill_budget_tokens, bool)
                                                  or not isinstance(prefill_budget_tokens, int)
                                                  or prefill_budget_tokens < 1):
            raise ValueError(f"prefill_budget_tokens must be a whole number >= 1 or null, got "
                             f"{prefill_budget_tokens!r}")
        if max_wait_s is not None and not max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be >= 0 or null, got {max_wait_s!r}")
        self.prefill_budget_tokens = prefill_budget_tokens  # None: the engine's max_num_tokens
        self.max_wait_s = max_wait_s  # None: no aging

    def schedule(self, view: SchedulerView) -> Decision:
        decode, evict, free = self.grow_running(view)
        if not view.waiting and not evict:
            return Decision(decode)
        budget = view.max_num_tokens
        if self.prefill_budget_tokens is not None and self.prefill_budget_tokens < budget:
            budget = self.prefill_budget_tokens
        prompts = self.admit_in_order(view, self.admission_order(view, evict), free, view.max_batch - len(decode),
                                      budget)
        return Decision(decode, prompts, evict)

    def admission_order(self, view: SchedulerView, evict: list[int]) -> list[int]:
        """Evicted requests (this iteration's, then earlier ones: the waiting requests that have generated tokens),
        then the aged ones in queue order, then the rest shortest prompt first. O(queue log queue) per iteration."""
        generated = view.generated  # running requests and evicted ones only
        recompute = evict + [rid for rid in view.waiting if rid in generated]
        fresh = [rid for rid in view.waiting if rid not in generated]
        aged = []
        if self.max_wait_s is not None:
            cutoff = view.now_s - self.max_wait_s
            aged = [rid for rid in fresh if view.arrival_s(rid) <= cutoff]
            fresh = [rid for rid in fresh if view.arrival_s(rid) > cutoff]
        fresh.sort(key=view.input_tokens)  # stable: ties keep queue order
        return recompute + aged + fresh
