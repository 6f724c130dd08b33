"""A pool: the DP replicas serving one task, and how they change when the plan changes.

Reconfiguration is make-before-break: new replicas load their model (``load_s``, GPUs allocated and
drawing idle power meanwhile) while the old ones keep serving; once every replica of the new config
is ready, the old ones stop taking requests, finish what they hold, and release their GPUs. Scaling
the same config up adds loading replicas; scaling down drains the least-loaded ones at once.
"""

from __future__ import annotations

from typing import Callable

import simpy

from profiles.profile_set import ProfileSet
from profiles.schema import ConfigKey
from sim.deployment import PoolPlan, TaskSpec
from sim.instance import Instance
from sim.requests import RequestTable
from sim.router import Router


class Pool:
    def __init__(
        self,
        env: simpy.Environment,
        task: TaskSpec,
        router: Router,
        profiles: ProfileSet,
        requests: RequestTable,
        new_instance_id: Callable[[], int],
        load_s: Callable[[ConfigKey], float],
        on_gpus: Callable[[str, float, int], None],
        max_queue: int | None = None,
    ):
        self.env = env
        self.task = task
        self.router = router
        self.profiles = profiles
        self.requests = requests
        self._new_id = new_instance_id
        self._load_s = load_s
        self._on_gpus = on_gpus
        self.max_queue = max_queue
        self.replicas: list[Instance] = []  # every replica not yet released: loading, serving, draining
        self.all_instances: list[Instance] = []
        self.key_of: dict[int, ConfigKey] = {}
        self.plan: PoolPlan | None = None
        self.reconfigurations = 0

    # --- routing ---------------------------------------------------------------------------------

    def route(self, rid: int) -> None:
        instance = self.router.pick(self.replicas)
        if instance is None:
            self.requests.reject(rid, "no_replica", self.env.now)
        else:
            instance.enqueue(rid)

    # --- plan changes ----------------------------------------------------------------------------

    def apply(self, plan: PoolPlan, initial: bool = False) -> None:
        previous = self.plan
        self.plan = plan
        if previous is not None and previous.key == plan.key and previous.dp == plan.dp:
            return
        if not initial:
            self.reconfigurations += 1
        ready_at = self.env.now if initial else self.env.now + self._load_s(plan.key)
        current = [r for r in self.replicas if r.accepting and self.key_of[r.instance_id] == plan.key]
        if previous is not None and previous.key == plan.key:
            surplus = len(current) - plan.dp
            if surplus > 0:
                # Drain loading replicas first, then the least loaded.
                current.sort(key=lambda r: (r.serving, r.outstanding, -r.instance_id))
                for replica in current[:surplus]:
                    replica.drain()
                return
            for _ in range(plan.dp - len(current)):
                self._start(plan.key, ready_at)
            return
        for _ in range(plan.dp - len(current)):
            self._start(plan.key, ready_at)
        # Stop loading replicas of configs no longer wanted; serving old ones wait for the new ones.
        for replica in list(self.replicas):
            if self.key_of[replica.instance_id] != plan.key and not replica.serving and replica.accepting:
                replica.drain()
        self._retire_old_if_ready()

    def _start(self, key: ConfigKey, ready_s: float) -> Instance:
        instance = Instance(
            self.env,
            self._new_id(),
            key.label,
            key.tp,
            self.profiles.step(key),
            self.requests,
            ready_s=ready_s,
            max_queue=self.max_queue,
            on_ready=self._ready,
            on_release=self._released,
        )
        self.key_of[instance.instance_id] = key
        self.replicas.append(instance)
        self.all_instances.append(instance)
        self._on_gpus(self.task.name, self.env.now, key.tp)
        return instance

    def _ready(self, instance: Instance) -> None:
        self._retire_old_if_ready()

    def _retire_old_if_ready(self) -> None:
        if self.plan is None:
            return
        wanted = self.plan.key
        new = [r for r in self.replicas if r.accepting and self.key_of[r.instance_id] == wanted]
        if len(new) < self.plan.dp or not all(r.serving for r in new):
            return
        for replica in self.replicas:
            if self.key_of[replica.instance_id] != wanted and replica.accepting:
                replica.drain()

    def _released(self, instance: Instance) -> None:
        self.replicas.remove(instance)
        self._on_gpus(self.task.name, self.env.now, -instance.gpus)
