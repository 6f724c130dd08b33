"""MostFreeKv: the serving replica with the most free KV cache, then the shortest queue (``sim.router_api``)."""

from __future__ import annotations

from typing import Sequence

from sim.router_api import ReplicaView


class MostFreeKv:
    name = "most_free_kv"

    def pick(self, replicas: Sequence[ReplicaView], now_s: float) -> ReplicaView | None:
        best, best_rank = None, None
        for replica in replicas:
            if not replica.serving:
                continue
            replica.sync(now_s)  # replicas advance lazily: bring this one up to the arrival first
            rank = (replica.kv_used_tokens - replica.kv_capacity_tokens, replica.queued)
            if best is None or rank < best_rank:
                best, best_rank = replica, rank
        return best
