"""Global planner over a fixed fleet (issue 14, part 5): every task at once, by mixed-integer programming.

Per task t and config c (of the task's model, on a GPU type of the fleet, meeting the quality floor and, at some
load, the latency SLO; saturation x_c, TP tp_c; I_c: a replica's power at its curve's lowest load; e_c: J per
request = (power at x_c · headroom − I_c) / (x_c · headroom), linear in the load q_tc the replicas of c take):

    maximise the load served Σ (1 + load_t) u_t, then minimise the pools' power Σ n_tc · I_c + q_tc · e_c
    s.t.  Σ_c q_tc = load_t · u_t,  q_tc <= n_tc · x_c · headroom   (capacity: saturation QPS covers the load)
          y_tc <= n_tc <= U_tc · y_tc,  y_tc <= u_t <= Σ_c y_tc (y: config used, n: its replicas, u: task served)
          Σ_c y_tc <= max_configs                               (a pool mixes at most max_configs configs)
          Σ_{t, c on g} n_tc · tp_c <= fleet_g                  (cluster.fleet, GPUs per type)

solved with ``scipy.optimize.milp`` (HiGHS). Serving outweighs energy (each served task weighs (1 + load) times the
fleet's whole power), so a fleet too small for all tasks serves the most requests that fit, at the least power,
and leaves the rest unserved (``dp=0``; ``summary.json`` ``unserved_tasks`` and the console name
them). Without ``cluster.fleet`` the fleet is unbounded and the plan is each task's least-power pool.

A pool may mix configs (GPU types) of its model, up to ``max_configs`` (``PoolPlan.mix``): when one GPU type runs
out, the rest of a task's load goes to another. Route such pools with ``router=weighted_least_outstanding``, which
weights replicas by their saturation QPS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from sim.deployment import Deployment, PlanContext, PoolPlan
from sim.planning import task_configs
from sim.policy_api import Policy


@dataclass(frozen=True, slots=True)
class Option:
    """One way to serve a task: a config's GPU type, TP, saturation QPS (after headroom) and busy power."""

    key: object
    gpu: str
    tp: int
    capacity_qps: float
    power_w: float  # one replica's power at capacity_qps
    idle_w: float = 0.0  # one replica's power at its lowest load: pool power = n·idle_w + q·(power_w − idle_w)/capacity

    @property
    def joules_per_request(self) -> float:
        return (self.power_w - self.idle_w) / self.capacity_qps


@dataclass(frozen=True, slots=True)
class Assignment:
    """One group of a task's pool: ``options[task][index]`` times ``dp``."""

    index: int
    dp: int


@dataclass(frozen=True, slots=True)
class FleetSolution:
    pools: dict[str, tuple[Assignment, ...] | None]  # None: unserved
    power_w: float

    @property
    def unserved(self) -> list[str]:
        return [t for t, a in self.pools.items() if a is None]


def served_weight(load_qps: float) -> float:
    """How much serving a task counts, in units of the fleet's whole power: 1 + its load (req/s), so the busiest
    tasks are served first and an idle task still counts."""
    return 1.0 + load_qps


def solve_fleet(load_qps: dict[str, float], options: dict[str, list[Option]],
                fleet: dict[str, int] | None, max_configs: int = 2) -> FleetSolution:
    """The MILP above: most tasks served, then least power, within ``fleet`` (None: unbounded); a pool holds at
    most ``max_configs`` configs (1: no mixing)."""
    tasks = list(options)
    var: list[tuple[str, int]] = [(t, i) for t in tasks for i in range(len(options[t]))]
    nv, nt = len(var), len(tasks)
    if nv == 0:
        return FleetSolution({t: None for t in tasks}, 0.0)
    upper = []
    for t, i in var:
        o = options[t][i]
        need = max(1, math.ceil(load_qps[t] / o.capacity_qps - 1e-9))
        cap = fleet.get(o.gpu, 0) // o.tp if fleet is not None else need
        upper.append(min(need, cap))
    # variables: n (replicas per option), y (option used), u (task served), q (load sent to the option, req/s)
    size = 3 * nv + nt
    qv = 2 * nv + nt
    total_power = sum(options[t][i].power_w * upper[k] for k, (t, i) in enumerate(var)) + 1.0
    c = np.concatenate([[options[t][i].idle_w for t, i in var], np.zeros(nv),
                        [-total_power * served_weight(load_qps[t]) for t in tasks],
                        [options[t][i].joules_per_request for t, i in var]])
    rows, lo, hi = [], [], []

    def add(entries: dict[int, float], low: float, high: float) -> None:
        r = np.zeros(size)
        for j, v in entries.items():
            r[j] += v
        rows.append(r)
        lo.append(low)
        hi.append(high)

    for j, t in enumerate(tasks):
        mine = [k for k, (tk, _) in enumerate(var) if tk == t]
        u = 2 * nv + j
        add({**{qv + k: 1.0 for k in mine}, u: -load_qps[t]}, 0.0, np.inf)  # the load is served
        add({**{nv + k: 1.0 for k in mine}, u: -1.0}, 0.0, np.inf)  # served: some option used
        add({nv + k: 1.0 for k in mine}, -np.inf, float(max_configs))
        for k in mine:
            add({nv + k: 1.0, u: -1.0}, -np.inf, 0.0)  # an option is used only by a served task
    for k, (t, i) in enumerate(var):
        add({qv + k: 1.0, k: -options[t][i].capacity_qps}, -np.inf, 0.0)  # q <= n · saturation · headroom
        add({k: 1.0, nv + k: -float(upper[k])}, -np.inf, 0.0)  # n <= U y
        add({k: 1.0, nv + k: -1.0}, 0.0, np.inf)  # n >= y
    if fleet is not None:
        for gpu in sorted({options[t][i].gpu for t, i in var}):
            add({k: float(options[t][i].tp) for k, (t, i) in enumerate(var) if options[t][i].gpu == gpu},
                -np.inf, float(fleet.get(gpu, 0)))
    ub = np.concatenate([np.array(upper, dtype=float), np.where(np.array(upper) > 0, 1.0, 0.0), np.ones(nt),
                         np.full(nv, np.inf)])
    integrality = np.concatenate([np.ones(2 * nv + nt), np.zeros(nv)])
    res = milp(c, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=integrality,
               bounds=Bounds(np.zeros(size), ub))
    if res.x is None:
        raise RuntimeError(f"fleet MILP found no solution: {res.message}")
    q = res.x[qv:]
    x = np.round(res.x[:qv]).astype(int)
    pools: dict[str, tuple[Assignment, ...] | None] = {}
    power = 0.0
    for j, t in enumerate(tasks):
        groups = tuple(Assignment(i, int(x[k])) for k, (tk, i) in enumerate(var) if tk == t and x[k] >= 1)
        pools[t] = groups if x[2 * nv + j] >= 1 and groups else None
        if pools[t]:
            power += sum(options[t][i].idle_w * x[k] + options[t][i].joules_per_request * q[k]
                         for k, (tk, i) in enumerate(var) if tk == t)
    return FleetSolution(pools, power)


def busy_power_w(profiles, key, workload: str, qps: float) -> float:
    """The profile's mean power of one replica at ``qps`` (interpolated on its curve, its lowest point below it);
    inf when it has none."""
    curve = profiles.curve(key, workload)
    rows = curve[curve["mean_power_w"].notna()]
    if rows.empty:
        return math.inf
    return float(np.interp(qps, rows["qps"].to_numpy(float), rows["mean_power_w"].to_numpy(float)))


def pool_power_w(groups: list[tuple[Option, int]], load_qps: float) -> float:
    """The MILP's power model for given groups: idle power of every replica plus the load, cheapest J/request
    first; inf when the groups cannot carry the load."""
    power, left = 0.0, load_qps
    for option, dp in sorted(groups, key=lambda g: g[0].joules_per_request):
        take = min(left, dp * option.capacity_qps)
        left -= take
        power += dp * option.idle_w + take * option.joules_per_request
    return power if left <= 1e-9 else math.inf


class FleetMilp(Policy):
    name = "fleet_milp"
    param_ranges = {"headroom": (0, False, 1, False, False), "max_configs": (1, True, None, True, False),
                    "switch_gain": (0, True, None, False, False)}

    def __init__(self, headroom: float = 0.9, max_configs: int = 2, switch_gain: float = 0.05):
        self.switch_gain = float(switch_gain)
        if not (0 < headroom <= 1):
            raise ValueError(f"policy.headroom must be in (0, 1], got {headroom}")
        self.headroom = float(headroom)
        self.max_configs = int(max_configs)
        self.unserved: dict[str, float] = {}  # task -> first time (s) it was left unserved
        self._options: dict[tuple[str, tuple[str, ...]], list[Option]] = {}

    def options(self, ctx: PlanContext, task) -> list[Option]:
        memo = (task.name, tuple(ctx.gpu_types))
        if memo not in self._options:
            opts = []
            for key in task_configs(ctx.profiles, task, ctx.gpu_types):
                if ctx.profiles.quality_score(key.model, key.quant, task.name) < task.quality_min:
                    continue
                sat = ctx.profiles.saturation_qps(key, task.workload, task.slo)
                if sat <= 0:
                    continue
                power = busy_power_w(ctx.profiles, key, task.workload, sat * self.headroom)
                idle = busy_power_w(ctx.profiles, key, task.workload, 0.0)
                if math.isfinite(power):
                    opts.append(Option(key, key.gpu, key.tp, sat * self.headroom, power, min(idle, power)))
            self._options[memo] = sorted(opts, key=lambda o: o.key.label)
        return self._options[memo]

    def plan(self, ctx: PlanContext) -> Deployment:
        options = {t.name: self.options(ctx, t) for t in ctx.tasks}
        fleet = dict(ctx.fleet_gpus) if ctx.fleet_gpus is not None else None
        solution = solve_fleet(dict(ctx.load_qps), options, fleet, self.max_configs)
        if ctx.current is not None and self._keep(ctx, options, solution):
            return ctx.current  # hysteresis: the plan in force still serves the same tasks at nearly the same power
        plans = []
        for task in ctx.tasks:
            a = solution.pools[task.name]
            if a is None:
                self.unserved.setdefault(task.name, ctx.now_s)
                any_key = (options[task.name][0].key if options[task.name]
                           else task_configs(ctx.profiles, task, ctx.gpu_types)[0])
                plans.append(PoolPlan(task.name, any_key, 0, ctx.load_qps[task.name]))
                continue
            first = options[task.name][a[0].index]
            mix = tuple((options[task.name][g.index].key, g.dp) for g in a[1:])
            plans.append(PoolPlan(task.name, first.key, a[0].dp, ctx.load_qps[task.name],
                                  first.capacity_qps / self.headroom, math.nan,
                                  ctx.profiles.quality_score(first.key.model, first.key.quant, task.name), mix))
        return Deployment(tuple(plans))

    def _keep(self, ctx: PlanContext, options: dict[str, list[Option]], solution: FleetSolution) -> bool:
        """The plan in force serves the tasks the solution serves, within the fleet, at a power no more than
        ``switch_gain`` above the solution's: keep it (no model loads for a near-equal plan)."""
        by_key = {t: {o.key: o for o in opts} for t, opts in options.items()}
        power = 0.0
        for plan in ctx.current.plans:
            served = solution.pools.get(plan.task) is not None
            if (plan.gpus > 0) != served:
                return False
            if not served:
                continue
            groups = []
            for key, dp in plan.groups:
                option = by_key[plan.task].get(key)
                if option is None:
                    return False
                groups.append((option, dp))
            power += pool_power_w(groups, ctx.load_qps[plan.task])
        if not math.isfinite(power):
            return False
        if ctx.fleet_gpus is not None:
            used: dict[str, int] = {}
            for plan in ctx.current.plans:
                for key, dp in plan.groups:
                    used[key.gpu] = used.get(key.gpu, 0) + dp * key.tp
            if any(n > ctx.fleet_gpus.get(g, 0) for g, n in used.items()):
                return False
        return power <= solution.power_w * (1 + self.switch_gain) + 1e-9
