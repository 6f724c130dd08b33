"""The router plug-in interface: which replica of a pool gets the next request.

A router is any importable class chosen by Hydra ``_target_`` (``router._target_=my_pkg.MyRouter``); the other
keys of the ``router`` node are its constructor's keyword arguments (``name`` excepted: a label, as for
policies, see ``sim.policy_api``). Every pool gets its own instance, so a router may keep per-pool state.

For every request the pool calls ``pick(replicas, now_s)`` with the pool's replicas that are not yet released,
in the order they were started (loading, serving and draining ones alike: only ``serving`` ones may be picked),
and routes the request to the replica returned, or rejects it (reason ``no_replica``) on None.

What a router sees of each replica (``ReplicaView``; ``sim.instance.Instance`` provides it, nothing is copied):

* ``serving`` - taking requests (model loaded, not draining or released); ``instance_id``, ``label`` (the
  config), ``gpus``, ``capacity_qps`` (its saturation QPS for the pool's task: a weight for mixed pools);
* its load: ``queued`` (waiting for admission), ``running`` (the running batch: admitted, not finished),
  ``outstanding`` (= queued + running), ``kv_used_tokens`` (KV reserved by the running batch) of
  ``kv_capacity_tokens``, ``max_batch``;
* replicas are advanced lazily: the load figures are exact as of the replica's last decision point. Call
  ``replica.sync(now_s)`` first to bring it up to the arrival (``LeastOutstanding`` does); ``next_s`` is when
  the replica next changes by itself (``inf`` while idle).

A router must not change a replica in any other way (no ``enqueue``, ``drain`` or ``release``): the pool does.
``pick`` is on the hot path (once per request): keep it O(replicas) with plain attribute reads.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable


class ReplicaView(Protocol):
    """One replica as a router sees it (``sim.instance.Instance`` implements it)."""

    instance_id: int
    label: str
    gpus: int
    capacity_qps: float
    serving: bool
    outstanding: int
    next_s: float

    @property
    def queued(self) -> int: ...

    @property
    def running(self) -> int: ...

    @property
    def kv_used_tokens(self) -> int: ...

    @property
    def kv_capacity_tokens(self) -> int: ...

    @property
    def max_batch(self) -> int: ...

    def sync(self, now_s: float) -> None: ...


@runtime_checkable
class Router(Protocol):
    """Picks a serving replica for each request (see the module docstring)."""

    def pick(self, replicas: Sequence[ReplicaView], now_s: float) -> ReplicaView | None:
        """A serving replica for a request arriving at ``now_s``, or None when none serves."""


__all__ = ["ReplicaView", "Router"]
