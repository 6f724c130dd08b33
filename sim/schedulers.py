"""The shipped on-demand KV schedulers as plug-ins of ``sim.scheduler_api``: readable, and a place to start from.

``scheduler=max_utilization`` and ``scheduler=vllm`` select these classes with their defaults, and
``scheduler._target_=sim.schedulers.Vllm`` (optionally with ``block_tokens`` / ``watermark``) the same. The engine
runs an instance of exactly one of these classes as a built-in loop (``sim.instance.MaxUtilizationInstance``,
``VllmInstance``), because a ``schedule()`` call and a checked decision per iteration cost 12-45 % more on these
loops; tests check that ``schedule()`` below, run through the plug-in path, gives byte-identical results to the
built-in loops and to the per-iteration reference (``sim.reference.replay_paged``). A subclass runs ``schedule()``
(the plug-in path), so ``class MyVllm(Vllm)`` overriding one method is a complete scheduler.
Semantics in ``sim.instance`` ("Schedulers").
"""

from __future__ import annotations

from itertools import chain

from sim.scheduler_api import Decision, IterationScheduler, SchedulerView


class MaxUtilization(IterationScheduler):
    """TensorRT-LLM's MAX_UTILIZATION capacity scheduler: every running request first gets the KV block its next token
    needs (evicting, i.e. pausing, the newest running requests when the cache is full), then new and paused requests
    are admitted from the queue head by their current need, in the same iteration. 64-token blocks (TensorRT-LLM's
    ``tokens_per_block``)."""

    name = "max_utilization"

    def __init__(self, block_tokens: int = 64, watermark: float = 0.0):
        super().__init__(block_tokens, watermark)

    def schedule(self, view: SchedulerView) -> Decision:
        running = view.running
        if not view.waiting and view.free_blocks >= len(running):
            return Decision(running)  # a decode step needs at most one block: nothing to evict, nobody to admit
        decode, evict, free = self.grow_running(view)
        if not view.waiting and not evict:
            return Decision(decode)
        queue = chain(evict, view.waiting) if evict else view.waiting  # the paused ones wait at the head
        return Decision(decode, self.admit_in_order(view, queue, free, view.max_batch - len(decode)), evict)


class Vllm(IterationScheduler):
    """vLLM V0's default scheduler: waiting prompts first (an iteration that admits prompts runs no decode step),
    16-token blocks allocated on demand, a 1 % block watermark kept free at admission, preemption by recomputation of
    the newest running request; ``max_num_tokens`` is ``max_num_batched_tokens``, ``max_batch`` ``max_num_seqs``."""

    name = "vllm"

    def __init__(self, block_tokens: int = 16, watermark: float = 0.01):
        super().__init__(block_tokens, watermark)

    def schedule(self, view: SchedulerView) -> Decision:
        running = view.running
        if view.waiting:
            prompts = self.admit_in_order(view, view.waiting, view.free_blocks, view.max_batch - len(running))
            if prompts:
                return Decision(prompts=prompts)
        if view.free_blocks >= len(running):
            return Decision(running)
        decode, evict, _ = self.grow_running(view)
        return Decision(decode, evict=evict)


__all__ = ["MaxUtilization", "Vllm"]
