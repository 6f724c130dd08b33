"""The policy plug-in interface: what a deployment policy sees, what it returns, and how a plan is checked.

A policy is any importable class chosen by Hydra ``_target_`` (``policy._target_=my_pkg.MyPolicy``); the
other keys of the ``policy`` node are its constructor's keyword arguments (``name`` excepted: the run's
label, see below). The cluster makes one instance per run and calls ``plan(ctx)`` at the start and at every
re-plan window (``cluster.replan_interval_s``).

What it sees, ``ctx: PlanContext`` (``sim.deployment``), read-only:

* ``tasks`` - one ``TaskSpec`` per pool: ``name``, ``model``, ``workload`` (the profile workload describing its
  lengths), ``slo`` (``ttft_s``, ``tpot_s``: P90 targets) and ``quality_min``;
* ``load_qps`` - ``{task: req/s}`` to plan this window for (``cluster.load_estimate``: the window's true rate, or
  the last window's), and ``load_history`` - the earlier windows' estimates, ``((time_s, {task: req/s}), ...)``,
  oldest first, for policies that forecast;
* ``profiles`` - the profile set (``profiles.profile_set.ProfileSet``, memoised): ``configs()``,
  ``saturation_qps(key, workload, slo)``, ``energy_per_token_j(key, workload, qps)``,
  ``quality_score(model, quant, task)``, ``curve(key, workload)`` (the QPS sweep: P50/P90/P99 TTFT and TPOT,
  throughput, power, energy per token), ``step(key)`` (the step model);
* ``current`` - the ``Deployment`` in force (None at the first plan); ``fleet`` - a ``FleetView``: the GPU types
  the policy may use and per task a ``PoolState`` (config, DP asked for, replicas serving / loading / draining,
  GPUs held); ``gpu_types``; ``now_s``; ``window_s`` (seconds until the next re-plan, None: none);
* ``rate_history`` - short-term peaks of the past: per earlier window, ``{task: WindowRates}`` (mean and the
  P50/P90/P99/max of the per-bin arrival rates and the bins' arrival counts, ``sim.deployment.WindowRates``;
  ``sim.burst_budget`` weighs each bin by its requests), counted from arrivals before
  ``now_s`` only. Filled only for a policy that declares ``rate_bin_s``: seconds per bin (e.g. 10), or a method
  ``rate_bin_s(task) -> seconds`` for a bin per task (``sim.burst_aware``); computed once per re-plan from the
  arrival counter (vectorised where the counter has ``bin_counts``), never on the per-request path;
* ``fleet_gpus`` - ``cluster.fleet``: whole GPUs per type that the plan must fit in (None: unbounded). A plan that
  needs more GPUs of a type than the fleet has is an error (``PlanError`` naming the type and each task's GPUs);
  it is not clipped. A policy that cannot fit every task returns ``dp=0`` for those it leaves unserved.

What it returns: a ``Deployment`` holding one ``PoolPlan(task, key, dp)`` per task of ``ctx.tasks``, where ``key``
is a ``ConfigKey(gpu, model, quant, tp)`` of the profile set, of the task's model, on one of ``ctx.gpu_types``, and
``dp >= 0`` replicas (``dp=0``: the task is not served; its requests are rejected, reason ``no_replica``, and the
run names it in ``summary.json`` ``unserved_tasks``). ``PoolPlan.mix = ((key, dp), ...)`` adds replicas of other
configs of the same model (e.g. another GPU type) to the same pool: a mixed pool, best routed with
``router=weighted_least_outstanding``; every group is checked as ``key``/``dp`` are. The optional ``PoolPlan`` fields (``load_qps``, ``saturation_qps``,
``predicted_energy_per_output_token_j``, ``quality``) are reported in ``deployments.csv``. Returning the plan in force
again costs nothing; a changed config or DP pays the model-load delay (``sim.pool``). Every plan is checked
(``check_deployment``); one that breaks a rule stops the run with one line naming the policy, the time and the
rule. A policy that cannot serve a task raises ``sim.planning.NoFeasibleConfig`` with a message (one line).

The run's label is the ``name`` key of the ``policy`` node, else the class's ``name`` attribute, else its class
name. Where the class declares ``name`` (the shipped ones do), a different ``policy.name`` is an error: the name
does not choose the policy, ``_target_`` does.

Optional: ``param_ranges = {"param": (lo, lo_included, hi or None, whole_number, null_allowed)}`` on the class
checks numeric parameters when the config is read (``sim.config.check_number``), before the constructor runs.

The shipped policies (``sim.policies``, ``sim.uaqf``) subclass ``PerTaskPolicy`` and plan each task on its own;
a policy that plans tasks jointly (a shared GPU budget) implements ``plan`` itself (``sim.fleet_milp``).
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from typing import Iterable

from profiles.schema import ConfigKey
from sim.deployment import Deployment, FleetView, PlanContext, PoolPlan, PoolState, TaskSpec


class Policy(ABC):
    """A deployment policy: ``plan(ctx)`` -> ``Deployment`` (see the module docstring)."""

    name: str = ""

    @abstractmethod
    def plan(self, ctx: PlanContext) -> Deployment:
        """Each task's pool for the window starting at ``ctx.now_s``."""


class PerTaskPolicy(Policy):
    """A policy that plans every task on its own: implement ``plan_task``."""

    def plan(self, ctx: PlanContext) -> Deployment:
        return Deployment(tuple(self.plan_task(ctx, task) for task in ctx.tasks))

    @abstractmethod
    def plan_task(self, ctx: PlanContext, task: TaskSpec) -> PoolPlan:
        """One task's pool for the load in ``ctx.load_qps[task.name]``."""


class PlanError(RuntimeError):
    """A policy returned a plan the cluster cannot run; the message names the policy, the time and the rule."""


def check_deployment(deployment: object, ctx: PlanContext, policy: str, configs: Iterable[ConfigKey]) -> Deployment:
    """``deployment`` if it is a runnable plan for ``ctx``, else PlanError naming the first rule it breaks.

    ``configs``: the profile set's configs (a set is fastest). ``policy``: how the policy is named in the message."""
    where = f"policy {policy} returned an invalid plan at t={ctx.now_s:g} s"
    if not isinstance(deployment, Deployment):
        raise PlanError(f"{where}: got {type(deployment).__name__}, not a sim.deployment.Deployment")
    plans = deployment.plans
    if not isinstance(plans, tuple):
        raise PlanError(f"{where}: Deployment.plans must be a tuple of PoolPlan, got {type(plans).__name__}")
    tasks = {t.name: t for t in ctx.tasks}
    seen: set[str] = set()
    configs = configs if isinstance(configs, (set, frozenset)) else set(configs)
    for plan in plans:
        if not isinstance(plan, PoolPlan):
            raise PlanError(f"{where}: a plan entry is {type(plan).__name__}, not a sim.deployment.PoolPlan")
        task = tasks.get(plan.task)
        if task is None:
            raise PlanError(f"{where}: task {plan.task!r} is not one of the run's tasks {sorted(tasks)}")
        if plan.task in seen:
            raise PlanError(f"{where}: task '{plan.task}' is planned twice")
        seen.add(plan.task)
        mix = plan.mix
        if not isinstance(mix, tuple) or not all(isinstance(g, tuple) and len(g) == 2 for g in mix):
            raise PlanError(f"{where}: task '{plan.task}': PoolPlan.mix must be a tuple of (ConfigKey, dp) pairs")
        keys = [plan.key] + [k for k, _ in mix]
        if len(set(keys)) != len(keys):
            raise PlanError(f"{where}: task '{plan.task}': a config appears twice in the pool (key and mix)")
        for key, dp in plan.groups:
            _check_group(where, plan.task, task, key, dp, configs, ctx)
    missing = [name for name in tasks if name not in seen]
    if missing:
        raise PlanError(f"{where}: task(s) {missing} missing (every task of the run needs a PoolPlan)")
    fleet = ctx.fleet_gpus
    if fleet is not None:
        used: dict[str, int] = {}
        for plan in plans:
            for key, dp in plan.groups:
                used[key.gpu] = used.get(key.gpu, 0) + dp * key.tp
        for gpu, n in sorted(used.items()):
            if n > fleet.get(gpu, 0):
                asked = ", ".join(f"{p.task}: {sum(d * k.tp for k, d in p.groups if k.gpu == gpu)}" for p in plans
                                  if any(k.gpu == gpu and d for k, d in p.groups))
                raise PlanError(f"{where}: plan needs {n} {gpu} GPUs, cluster.fleet has {fleet.get(gpu, 0)} "
                                f"({asked}); a policy that cannot fit must leave tasks unserved (dp=0), e.g. "
                                f"policy=fleet_milp")
    return deployment


def _check_group(where: str, name: str, task: TaskSpec, key: object, dp: object, configs, ctx: PlanContext) -> None:
    """One (config, replicas) group of a task's pool."""
    if not isinstance(key, ConfigKey) or key not in configs:
        raise PlanError(f"{where}: task '{name}': config {getattr(key, 'label', key)!r} is not in the profile set")
    if key.model != task.model:
        raise PlanError(f"{where}: task '{name}': config {key.label} serves model {key.model}, the pool "
                        f"serves {task.model} (cluster.pools.{name}.model)")
    if key.gpu not in ctx.gpu_types:
        raise PlanError(f"{where}: task '{name}': config {key.label} runs on {key.gpu}, not one of "
                        f"cluster.gpu_types {list(ctx.gpu_types)}")
    if isinstance(dp, bool) or not isinstance(dp, numbers.Integral) or dp < 0:
        raise PlanError(f"{where}: task '{name}': dp={dp!r}, must be a whole number >= 0 (0: not served)")


__all__ = ["Policy", "PerTaskPolicy", "PlanContext", "PlanError", "Deployment", "PoolPlan", "PoolState",
           "FleetView", "TaskSpec", "ConfigKey", "check_deployment"]
