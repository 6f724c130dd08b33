"""Issue 14 parts 4 and 5: burst-aware sizing (above the mean on bursts, holds under noise, no look-ahead), the
fleet MILP (equals brute force, names the unserved task), capacity-weighted routing and ``cluster.fleet`` checks."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest
from hydra import compose, initialize_config_module

import sim.main  # noqa: F401  (registers the schema)
from conftest import make_trace
from profiles.profile_set import LatencySlo, ProfileSet, default_profile_path
from sim.burst_aware import BurstAware
from sim.cluster import ClusterSettings, simulate
from sim.config import ConfigError, build_run
from sim.deployment import TaskSpec
from sim.fleet_milp import Option, served_weight, solve_fleet
from sim.main import run
from sim.policies import SloEnergyOptimal
from sim.router import WeightedLeastOutstanding

TASK = TaskSpec("chat-s", "llama2-13b", "sharegpt", LatencySlo(1.0, 0.2), quality_min=55.0)
WINDOW_S = 60.0


@pytest.fixture(scope="module")
def profiles():
    return ProfileSet.load(default_profile_path())


def arrivals(rates_per_second: np.ndarray, seed: int = 0) -> np.ndarray:
    """Poisson arrivals second by second at the given rates."""
    rng = np.random.default_rng(seed)
    out = [s + np.sort(rng.random(rng.poisson(r))) for s, r in enumerate(rates_per_second)]
    return np.concatenate(out)


def trace_of(arrival_s: np.ndarray):
    n = len(arrival_s)
    return make_trace(arrival_s, np.full(n, 100), np.full(n, 20), names=("chat-s",))


def settings(**kw):
    return ClusterSettings(gpu_types=("h100-80gb",), replan_interval_s=WINDOW_S, engine_start_s=1.0, **kw)


def plans(result):
    return [(t, d.for_task("chat-s")) for t, d in result.deployments]


def sat_of(profiles, key):
    return profiles.saturation_qps(key, TASK.workload, TASK.slo)


def test_burst_aware_sizes_above_the_mean_on_bursts(profiles):
    # 10 s of every minute at 10x the base rate: the mean is ~1.9x the base, the 2-s peaks 10x
    base = 3.0
    rates = np.tile(np.r_[np.full(50, base), np.full(10, 10 * base)], 10)
    result = simulate(trace_of(arrivals(rates)), [TASK], BurstAware(), profiles, settings())
    later = [p for t, p in plans(result) if t >= 2 * WINDOW_S]
    mean_qps = rates.mean()
    for plan in later:
        assert plan.load_qps > 3 * mean_qps  # sized for the peak, not the mean
        assert plan.dp * sat_of(profiles, plan.key) >= plan.load_qps
    seo = simulate(trace_of(arrivals(rates)), [TASK], SloEnergyOptimal(), profiles, settings())
    assert max(p.load_qps for _, p in plans(seo)) < 1.2 * mean_qps


def test_burst_aware_keeps_its_plan_under_noise(profiles):
    # window rates alternate around SLO-Energy-Optimal's DP boundary: it re-plans every window, burst-aware holds
    key = simulate(trace_of(arrivals(np.full(60, 5.0))), [TASK], SloEnergyOptimal(), profiles,
                   settings()).deployments[0][1].for_task("chat-s").key
    sat = sat_of(profiles, key) * 0.9
    lo, hi = 0.7 * sat, 1.3 * sat
    rates = np.concatenate([np.full(int(WINDOW_S), hi if i % 2 else lo) for i in range(12)])
    trace = trace_of(arrivals(rates, seed=3))
    seo = simulate(trace, [TASK], SloEnergyOptimal(), profiles, settings())
    burst = simulate(trace, [TASK], BurstAware(), profiles, settings())
    assert seo.reconfigurations["chat-s"] >= 8
    assert burst.reconfigurations["chat-s"] <= 2


class Spy(BurstAware):
    def __init__(self):
        super().__init__()
        self.seen = []

    def plan_task(self, ctx, task):
        for end_s, _ in ctx.rate_history:
            assert end_s <= ctx.now_s
        self.seen.append(ctx.now_s)
        return super().plan_task(ctx, task)


def test_burst_aware_does_not_look_ahead(profiles):
    # quiet for 10 windows, then a burst: no plan before the burst is sized for it
    rates = np.r_[np.full(600, 2.0), np.full(60, 60.0), np.full(120, 2.0)]
    policy = Spy()
    result = simulate(trace_of(arrivals(rates)), [TASK], policy, profiles,
                      settings(load_estimate="trailing"))
    before = [p for t, p in plans(result) if 0 < t <= 600]
    after = [p for t, p in plans(result) if t == 660]
    assert before and after
    assert max(p.load_qps for p in before) < 10
    assert max(p.dp * p.key.tp for p in before) < after[0].dp * after[0].key.tp
    assert after[0].load_qps > 40


# --- the fleet MILP ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class K:
    label: str


def power_scale(load, options, fleet):
    """The solver's unit of served weight: the power of every option at its largest useful DP, plus 1."""
    return 1.0 + sum(o.power_w * min(max(1, math.ceil(load[t] / o.capacity_qps - 1e-9)), fleet.get(o.gpu, 0) // o.tp)
                     for t in options for o in options[t])


def pool_choices(t, load, options, fleet, max_configs):
    """Every pool for task t: None (unserved) or up to max_configs (option, dp) groups covering the load."""
    singles = [(i, dp) for i, o in enumerate(options[t]) for dp in range(1, fleet.get(o.gpu, 0) // o.tp + 1)]
    out = [None]
    for size in range(1, max_configs + 1):
        for combo in itertools.combinations(singles, size):
            if len({i for i, _ in combo}) < size:
                continue
            if sum(dp * options[t][i].capacity_qps for i, dp in combo) >= load[t]:
                out.append(combo)
    return out


def brute_force(load, options, fleet, max_configs):
    """Most tasks served, then least power, by enumerating every pool per task."""
    tasks = list(options)
    choices = [pool_choices(t, load, options, fleet, max_configs) for t in tasks]
    total = power_scale(load, options, fleet)
    best = None
    for combo in itertools.product(*choices):
        used = {}
        power = 0.0
        for t, pool in zip(tasks, combo):
            left = load[t]
            for i, dp in sorted(pool or (), key=lambda g: options[t][g[0]].joules_per_request):
                o = options[t][i]
                used[o.gpu] = used.get(o.gpu, 0) + dp * o.tp
                take = min(left, dp * o.capacity_qps)  # the cheapest J/request first
                left -= take
                power += dp * o.idle_w + take * o.joules_per_request
        if any(n > fleet.get(g, 0) for g, n in used.items()):
            continue
        score = power - total * sum(served_weight(load[t]) for t, c in zip(tasks, combo) if c is not None)
        if best is None or score < best[0]:
            best = (score, power)
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_configs", [1, 2])
def test_milp_equals_brute_force(seed, max_configs):
    rng = np.random.default_rng(seed)
    gpus = ["a", "b"]
    options = {}
    load = {}
    for t in ("t1", "t2", "t3"):
        options[t] = [Option(K(f"{t}-{j}"), gpus[j % 2], int(rng.choice([1, 2])), float(rng.uniform(2, 10)),
                             float(rng.uniform(300, 900)), float(rng.uniform(50, 300))) for j in range(2)]
        load[t] = float(rng.uniform(1, 16))
    fleet = {"a": int(rng.integers(1, 5)), "b": int(rng.integers(1, 5))}
    solution = solve_fleet(load, options, fleet, max_configs)
    expected = brute_force(load, options, fleet, max_configs)
    total = power_scale(load, options, fleet)
    score = solution.power_w - total * sum(served_weight(load[t]) for t, a in solution.pools.items() if a is not None)
    assert score == pytest.approx(expected[0], rel=1e-9, abs=1e-6)
    assert solution.power_w == pytest.approx(expected[1], abs=1e-6)
    used = {}
    for t, pool in solution.pools.items():
        if pool is not None:
            assert len(pool) <= max_configs
            assert sum(g.dp * options[t][g.index].capacity_qps for g in pool) >= load[t] - 1e-9
            for g in pool:
                o = options[t][g.index]
                used[o.gpu] = used.get(o.gpu, 0) + g.dp * o.tp
    assert all(n <= fleet[g] for g, n in used.items())


def test_milp_mixes_gpu_types_when_one_runs_out():
    options = {"t": [Option(K("fast"), "h100", 1, 10.0, 300.0, 100.0), Option(K("slow"), "a100", 1, 4.0, 200.0, 60.0)]}
    solution = solve_fleet({"t": 24.0}, options, {"h100": 2, "a100": 4})
    groups = {options["t"][g.index].key.label: g.dp for g in solution.pools["t"]}
    assert groups == {"fast": 2, "slow": 1}


SMALL = ["trace.duration_s=60", "trace.total_rate_qps=20", "cluster.replan_interval_s=20", "progress=false",
         "outputs.figures=false"]


def composed(overrides):
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_too_small_fleet_names_the_unserved_task(tmp_path, capsys):
    cfg = composed(SMALL + ["policy=fleet_milp", "cluster.fleet={a100-40gb: 1, h100-80gb: 2}"])
    summary = run(cfg, tmp_path)
    assert summary["unserved_tasks"], summary["unserved_tasks"]
    out = capsys.readouterr().out
    for task in summary["unserved_tasks"]:
        assert f"task '{task}' NOT SERVED" in out
        rows = [t for t in summary["tasks"] if t["task"] == task]
        assert rows[0]["finished"] == 0
    assert summary["finished"] + summary["rejected"] == summary["requests"]
    # a per-task policy over the same fleet: one line naming the fleet and the tasks' GPUs
    cfg = composed(SMALL + ["policy=slo_energy_optimal", "cluster.fleet={a100-40gb: 1, h100-80gb: 2}"])
    with pytest.raises(ConfigError) as err:
        run(cfg, tmp_path / "seo")
    message = str(err.value)
    assert "\n" not in message and "cluster.fleet" in message and "GPUs" in message


def test_fleet_milp_unbounded_fleet_serves_every_task(tmp_path):
    summary = run(composed(SMALL + ["policy=fleet_milp"]), tmp_path)
    assert summary["unserved_tasks"] == {} and summary["rejected"] == 0


@pytest.mark.parametrize("value, key", [
    ("{a100-40gb: -1}", "cluster.fleet.a100-40gb"),
    ("{a100-40gb: 1.5}", "cluster.fleet.a100-40gb"),
    ("{tpu-v5: 4}", "cluster.fleet.tpu-v5"),
    ("7", "cluster.fleet"),
    ("{a100-40gb: lots}", "cluster.fleet.a100-40gb"),
])
def test_bad_fleet_is_one_line(value, key):
    with pytest.raises(ConfigError) as err:
        build_run(composed(SMALL + [f"cluster.fleet={value}"]))
    message = str(err.value)
    assert "\n" not in message and key in message


# --- capacity-weighted routing ------------------------------------------------------------------------------

class FakeReplica:
    def __init__(self, instance_id, capacity_qps):
        self.instance_id = instance_id
        self.capacity_qps = capacity_qps
        self.serving = True
        self.next_s = math.inf
        self.outstanding = 0


def test_weighted_router_routes_in_proportion_to_capacity():
    replicas = [FakeReplica(0, 30.0), FakeReplica(1, 10.0), FakeReplica(2, 20.0)]
    router = WeightedLeastOutstanding()
    picks = {0: 0, 1: 0, 2: 0}
    for i in range(600):  # nothing finishes: the outstanding work is spread in proportion to capacity
        chosen = router.pick(replicas, float(i))
        chosen.outstanding += 1
        picks[chosen.instance_id] += 1
    share = np.array([picks[0], picks[1], picks[2]]) / 600
    assert share == pytest.approx([0.5, 1 / 6, 1 / 3], abs=0.01)


class MixedPool(SloEnergyOptimal):
    """One chat-s pool: one replica of an H100 config and one of an A100 config."""

    name = "mixed_pool"

    def __init__(self, keys):
        super().__init__()
        self.keys = keys

    def plan_task(self, ctx, task):
        from sim.deployment import PoolPlan
        return PoolPlan(task.name, self.keys[0], 1, mix=((self.keys[1], 1),))


def test_mixed_gpu_pool_routes_in_proportion_to_capacity(profiles):
    from profiles.schema import ConfigKey
    keys = [ConfigKey("h100-80gb", "llama2-13b", "w4a8kv8", 1), ConfigKey("a100-40gb", "llama2-13b", "w4a8kv4", 1)]
    sats = [sat_of(profiles, k) for k in keys]
    assert sats[0] != pytest.approx(sats[1], rel=0.2)
    rates = np.full(300, 0.8 * sum(sats))
    trace = trace_of(arrivals(rates, seed=5))
    result = simulate(trace, [TASK], MixedPool(keys), profiles,
                      ClusterSettings(gpu_types=("a100-40gb", "h100-80gb"), replan_interval_s=None,
                                      router="weighted_least_outstanding"))
    by_label = {}
    for inst in result.instances:
        by_label[inst.label] = inst.instance_id
    counts = np.bincount(np.asarray(result.requests.instance), minlength=max(by_label.values()) + 1)
    got = np.array([counts[by_label[k.label]] for k in keys], dtype=float)
    assert got.sum() == len(trace)
    assert got / got.sum() == pytest.approx(np.array(sats) / sum(sats), abs=0.08)
    assert result.deployments[0][1].plans[0].gpus == 2
