"""A pool: the DP replicas serving one task, and how they change when the plan changes.

Reconfiguration is make-before-break: new replicas load their model (``load_s``, GPUs allocated and
drawing idle power meanwhile) while the old ones keep serving; once every replica of the new config
is ready, the old ones stop taking requests, finish what they hold, and release their GPUs. Scaling
the same config up adds loading replicas; scaling down drains the least-loaded ones at once.

The pool is the control plane of its replicas: model-load completions and GPU releases are SimPy
events; the replicas' engines advance lazily (``sim.instance``). A drained replica gets no new work,
so its future is fixed: it is run to completion (or to the run's horizon) when drained, and its
release is scheduled as an event at the moment it happens.

Engine settings: a task with ``TaskSpec.engine`` runs every replica on the profile's step model under those
settings (``profiles.engine_settings.apply_engine_settings``, once per config); without, on the profile's own
step model object, unchanged. A scheduler plug-in in the settings (``sim.scheduler_api``) gives every replica its
own scheduler object.
"""

from __future__ import annotations

import math
from typing import Callable

import simpy

from profiles.engine_settings import apply_engine_settings, is_scheduler_plugin, profile_kv_fraction
from profiles.profile_set import ProfileSet
from profiles.schema import ConfigKey
from profiles.step_model import StepModel
from sim.deployment import PoolPlan, TaskSpec
from sim.instance import Instance
from sim.prefix_cache import PrefixCacheSettings
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
        horizon_s: float = math.inf,
        prefix_cache: PrefixCacheSettings | None = None,
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
        self.horizon_s = horizon_s  # the run stops here: nothing at or after it happens
        self.prefix_cache = prefix_cache  # every replica gets its own (cold) cache of these settings
        self.replicas: list[Instance] = []  # every replica not yet released: loading, serving, draining
        self.all_instances: list[Instance] = []
        self.key_of: dict[int, ConfigKey] = {}
        self.plan: PoolPlan | None = None
        self.reconfigurations = 0
        # The task's engine settings applied to the profile's step models, once per config (none: the profile's own).
        self._steps: dict[ConfigKey, StepModel] = {}
        self._kv_fraction = (profile_kv_fraction(profiles.manifest, str(profiles.path)) if task.engine is not None
                             else 1.0)
        # A scheduler plug-in (sim.scheduler_api) of the task's engine settings: every replica makes its own.
        scheduler = task.engine.fields().get("scheduler") if task.engine is not None else None
        self._scheduler = scheduler if is_scheduler_plugin(scheduler) else None

    def step(self, key: ConfigKey) -> StepModel:
        """The step model this pool's replicas of ``key`` run: the profile's, under the task's engine settings."""
        step = self._steps.get(key)
        if step is None:
            step = self._steps[key] = apply_engine_settings(self.profiles.step(key), self.task.engine,
                                                            self._kv_fraction)
        return step

    # --- routing ---------------------------------------------------------------------------------

    def route(self, rid: int, now_s: float) -> None:
        instance = self.router.pick(self.replicas, now_s)
        if instance is None:
            self.requests.reject(rid, "no_replica", now_s)
        else:
            instance.enqueue(rid, now_s)

    # --- plan changes ----------------------------------------------------------------------------

    def apply(self, plan: PoolPlan, initial: bool = False) -> None:
        """Bring the pool to ``plan``: every (config, replicas) group of it (``PoolPlan.groups``). A group of a config
        already running scales at once (surplus drained, loading ones first; missing ones started); replicas of
        configs the plan no longer holds keep serving until every wanted replica serves (make-before-break)."""
        previous = self.plan
        self.plan = plan
        if (previous is not None and previous.key == plan.key and previous.dp == plan.dp
                and previous.mix == plan.mix):
            return
        now = self.env.now
        if not initial:
            self.reconfigurations += 1
        wanted = self._wanted()
        for key, n in wanted.items():
            current = [r for r in self.replicas if r.accepting and self.key_of[r.instance_id] == key]
            surplus = len(current) - n
            if surplus > 0:
                for replica in current:
                    replica.advance(now)
                # Drain loading replicas first, then the least loaded.
                current.sort(key=lambda r: (r.serving, r.outstanding, -r.instance_id))
                for replica in current[:surplus]:
                    self._drain(replica)
            else:
                ready_at = now if initial else now + self._load_s(key)
                for _ in range(-surplus):
                    self._start(key, ready_at)
        # Stop loading replicas of configs no longer wanted; serving old ones wait for the new ones.
        for replica in list(self.replicas):
            if self.key_of[replica.instance_id] not in wanted and not replica.serving and replica.accepting:
                self._drain(replica)
        self._retire_old_if_ready()

    def _wanted(self) -> dict[ConfigKey, int]:
        wanted: dict[ConfigKey, int] = {}
        for key, n in self.plan.groups:
            wanted[key] = wanted.get(key, 0) + n
        return wanted

    def _start(self, key: ConfigKey, ready_s: float) -> Instance:
        now = self.env.now
        instance = Instance(
            self._new_id(),
            key.label,
            key.tp,
            self.step(key),
            self.requests,
            alloc_s=now,
            ready_s=ready_s,
            max_queue=self.max_queue,
            on_release=self._released,
            prefix_cache=self.prefix_cache,
            fit_domain=self.profiles.fit_domain(key),
            scheduler=self._scheduler,
        )
        self.key_of[instance.instance_id] = key
        sat = self.profiles.saturation_qps(key, self.task.workload, self.task.slo)
        instance.capacity_qps = sat if sat > 0 else 1.0
        self.replicas.append(instance)
        self.all_instances.append(instance)
        self._on_gpus(self.task.name, now, key.tp)
        if not instance.ready:
            loaded = self.env.timeout(instance.ready_s - now)
            loaded.callbacks.append(lambda _event: self._ready(instance))
        return instance

    def _ready(self, instance: Instance) -> None:
        instance.mark_ready()
        self._retire_old_if_ready()
        if not instance.accepting and not instance.released:
            instance.release(self.env.now)  # drained while loading: gives its GPUs back at once

    def _drain(self, replica: Instance) -> None:
        replica.drain(self.env.now)
        if not replica.released:
            replica.advance(self.horizon_s)  # no new work reaches it: run what it holds to the end

    def _retire_old_if_ready(self) -> None:
        if self.plan is None:
            return
        wanted = self._wanted()
        for key, n in wanted.items():
            new = [r for r in self.replicas if r.accepting and self.key_of[r.instance_id] == key]
            if len(new) < n or not all(r.serving for r in new):
                return
        for replica in self.replicas:
            if self.key_of[replica.instance_id] not in wanted and replica.accepting:
                self._drain(replica)

    def _released(self, instance: Instance) -> None:
        release_s = instance.release_s
        self._on_gpus(self.task.name, release_s, -instance.gpus)
        gone = self.env.timeout(max(release_s - self.env.now, 0.0))
        gone.callbacks.append(lambda _event: self.replicas.remove(instance))
