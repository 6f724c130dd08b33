"""Routers: which replica of a pool gets the next request (the interface: ``sim.router_api``)."""

from __future__ import annotations

from typing import Callable, Sequence, Union

from sim.instance import Instance
from sim.router_api import Router


class RoundRobin:
    """Cycles through the serving replicas in order; state-free with respect to load."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def pick(self, replicas: Sequence[Instance], now_s: float) -> Instance | None:
        n = len(replicas)
        for offset in range(n):
            candidate = replicas[(self._next + offset) % n]
            if candidate.serving:
                self._next = (self._next + offset + 1) % n
                return candidate
        return None


class LeastOutstanding:
    """The serving replica with the fewest queued plus running requests (lowest id on ties).

    Replicas are advanced lazily (``sim.instance``), so each candidate is first brought up to the
    arrival time: its outstanding count then reflects every completion before it.
    """

    name = "least_outstanding"

    def pick(self, replicas: Sequence[Instance], now_s: float) -> Instance | None:
        best = None
        best_load = 0
        for candidate in replicas:
            if candidate.serving:
                if candidate.next_s < now_s:
                    candidate.advance(now_s)
                if best is None or candidate.outstanding < best_load:
                    best, best_load = candidate, candidate.outstanding
        return best


class WeightedLeastOutstanding:
    """The serving replica with the least outstanding work per unit of capacity, ``(outstanding + 1) /
    capacity_qps`` (``capacity_qps``: the replica's saturation QPS for its task, set by the pool; lowest id on
    ties). In a pool of replicas of different configs (GPU types), a replica of twice the capacity takes about twice
    the requests; among equal replicas it is LeastOutstanding."""

    name = "weighted_least_outstanding"

    def pick(self, replicas: Sequence[Instance], now_s: float) -> Instance | None:
        best = None
        best_load = 0.0
        for candidate in replicas:
            if candidate.serving:
                if candidate.next_s < now_s:
                    candidate.advance(now_s)
                load = (candidate.outstanding + 1) / candidate.capacity_qps
                if best is None or load < best_load:
                    best, best_load = candidate, load
        return best


ROUTERS = {"round_robin": RoundRobin, "least_outstanding": LeastOutstanding,
           "weighted_least_outstanding": WeightedLeastOutstanding}

# What ``ClusterSettings.router`` holds: a shipped router's name, or a factory making one router per pool.
RouterSpec = Union[str, Callable[[], Router]]


def make_router(spec: RouterSpec) -> Router:
    """A fresh router (one per pool) from a shipped router's name or a factory (a plug-in's class and params)."""
    if callable(spec):
        return spec()
    try:
        return ROUTERS[spec]()
    except KeyError:
        raise ValueError(f"router.name='{spec}' is not one of {sorted(ROUTERS)}") from None
