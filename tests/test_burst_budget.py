"""Issue 14 part 4, second policy: burst-budget sizing (predicted misses from the profile curves, one miss budget
across tasks, no look-ahead, hysteresis), the per-bin counts it reads, and the pinned plan (``policy=fixed``)
that the burst frontier benchmark is built on."""

from __future__ import annotations

import numpy as np
import pytest

import sim.main  # noqa: F401  (registers the schema)
from conftest import make_trace
from profiles.profile_set import LatencySlo, ProfileSet, default_profile_path
from profiles.schema import ConfigKey
from sim.burst_budget import BurstBudget, miss_share
from sim.cluster import ClusterSettings, simulate
from sim.config import ConfigError
from sim.deployment import TaskSpec
from sim.fixed import FixedPlan
from test_burst_fleet import arrivals

CHAT = TaskSpec("chat-s", "llama2-13b", "sharegpt", LatencySlo(1.0, 0.2), quality_min=55.0)
CODE = TaskSpec("code", "codellama-34b", "humaneval", LatencySlo(0.15, 0.2), quality_min=35.0)
WINDOW_S = 60.0


@pytest.fixture(scope="module")
def profiles():
    return ProfileSet.load(default_profile_path())


def two_task_trace(chat_rates: np.ndarray, code_rates: np.ndarray, seed: int = 0):
    a_chat, a_code = arrivals(chat_rates, seed), arrivals(code_rates, seed + 1)
    arrival = np.concatenate([a_chat, a_code])
    task = np.r_[np.zeros(len(a_chat), int), np.ones(len(a_code), int)]
    order = np.argsort(arrival, kind="stable")
    n = len(arrival)
    return make_trace(arrival[order], np.full(n, 100), np.full(n, 20), task=task[order], names=("chat-s", "code"))


def settings(**kw):
    return ClusterSettings(gpu_types=("h100-80gb",), replan_interval_s=WINDOW_S, engine_start_s=1.0, **kw)


# --- the miss model -----------------------------------------------------------------------------------------

def test_miss_share_reads_the_quantiles():
    # the SLO at the P50 / P90 / P99 misses 50 / 10 / 1 % of requests; halfway between P50 and P90: 30 %
    assert miss_share(1.0, 1.0, 2.0, 3.0) == pytest.approx(0.5)
    assert miss_share(2.0, 1.0, 2.0, 3.0) == pytest.approx(0.1)
    assert miss_share(3.0, 1.0, 2.0, 3.0) == pytest.approx(0.01)
    assert miss_share(1.5, 1.0, 2.0, 3.0) == pytest.approx(0.3)
    # past P99 the tail falls tenfold per (P99 - P90)
    assert miss_share(4.0, 1.0, 2.0, 3.0) == pytest.approx(0.001)
    assert miss_share(0.5, 1.0, 2.0, 3.0) == pytest.approx(0.75)


def test_predicted_misses_follow_the_fluid_backlog(profiles):
    # one replica serving s req/s (its saturation), TTFT SLO 1 s: a queue may hold s requests before arrivals miss.
    # 1-s bins of 3s, s, 0, 0 arrivals: the backlog ends the bins at 2s, 2s, s, 0, so it is above s for half of
    # bin 1, all of bins 2 and 3 (from 2s down to s) and none of bin 4
    key = ConfigKey("h100-80gb", "llama2-13b", "w4a8kv8", 1)
    policy = BurstBudget()
    sat = profiles.saturation_qps(key, CHAT.workload, CHAT.slo)
    grid, share, curve_sat = policy.miss_table(profiles, CHAT, key)
    # rates are capped where the curve's P90 crosses the SLO (the searched saturation sits past it: the sweep is
    # coarse at its knee); there the curve's share is the 10 % the P90 leaves
    assert curve_sat < sat
    at_sat = float(np.interp(min(sat, curve_sat), grid, share))
    assert at_sat == pytest.approx(0.1, abs=0.01)
    counts = np.array([3 * sat, sat, 0.0, 0.0])
    expected = 3 * sat * (0.5 + 0.5 * at_sat) + sat * 1.0
    assert policy.predicted_misses_for(profiles, CHAT, key, counts, 1.0, 1) == pytest.approx(expected, rel=1e-9)
    # more replicas: fewer misses, down to the curve's tail alone
    misses = [policy.predicted_misses_for(profiles, CHAT, key, counts, 1.0, dp) for dp in range(1, 6)]
    assert all(a >= b for a, b in zip(misses, misses[1:]))
    assert misses[0] > misses[1]  # two replicas clear the backlog: only the curve's share at saturation is left
    assert misses[1] == pytest.approx(3 * sat * at_sat, rel=1e-9)
    assert misses[-1] < 0.01


# --- the policy in a run ------------------------------------------------------------------------------------

class Spy(BurstBudget):
    """Records what each plan could see."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen = []

    def plan(self, ctx):
        self.seen.append((ctx.now_s, [(t, {k: (w.counts.sum(), w.bin_s) for k, w in r.items()})
                                      for t, r in ctx.rate_history]))
        return super().plan(ctx)


def test_counts_are_past_arrivals_only_and_sum_to_them(profiles):
    rates = np.r_[np.full(300, 5.0)]
    trace = two_task_trace(rates, np.full(300, 3.0))
    policy = Spy(lookback=2)
    simulate(trace, [CHAT, CODE], policy, profiles, settings())
    arrival = trace.arrival_s
    for now_s, history in policy.seen[1:]:
        t_end, rates_at = history[-1]
        assert t_end == now_s
        for task_id, name in enumerate(("chat-s", "code")):
            count, bin_s = rates_at[name]
            lo = max(0.0, now_s - WINDOW_S)
            expected = int(np.sum((trace.task == task_id) & (arrival >= lo) & (arrival < now_s)))
            assert count == expected
        assert rates_at["chat-s"][1] == 5.0 and rates_at["code"][1] == 1.0  # bins: 5 x the TTFT SLO, in [1, 10] s


def test_the_budget_goes_to_the_task_that_misses(profiles):
    # chat-s steady far below one replica; code bursts to 4x one replica's saturation for 5 s of every 20
    code_key_sat = profiles.saturation_qps(ConfigKey("h100-80gb", "codellama-34b", "w4a8kv4", 1), CODE.workload,
                                           CODE.slo)
    code_rates = np.tile(np.r_[np.full(15, 5.0), np.full(5, 4 * code_key_sat)], 20)
    trace = two_task_trace(np.full(400, 3.0), code_rates)
    result = simulate(trace, [CHAT, CODE], BurstBudget(target=0.99), profiles, settings())
    later = [d for t, d in result.deployments if t >= 2 * WINDOW_S]
    assert later
    for d in later:
        assert d.for_task("chat-s").dp == 1  # no margin where nothing misses
        code = d.for_task("code")
        assert code.dp * code.saturation_qps >= 2 * code_key_sat  # the bursts bought replicas
    # a looser budget buys fewer
    loose = simulate(trace, [CHAT, CODE], BurstBudget(target=0.5, task_floor=0.0), profiles, settings())
    tight_gpus = max(d.for_task("code").gpus for _, d in result.deployments[2:])
    loose_gpus = max(d.for_task("code").gpus for _, d in loose.deployments[2:])
    assert loose_gpus < tight_gpus


def test_burst_budget_does_not_look_ahead(profiles):
    # quiet, then a burst from t=600: no plan at or before t=600 is sized for it; the plan at 660 is
    rates = np.r_[np.full(600, 2.0), np.full(60, 60.0), np.full(120, 2.0)]
    trace = two_task_trace(rates, np.full(780, 1.0))
    result = simulate(trace, [CHAT, CODE], BurstBudget(), profiles, settings(load_estimate="trailing"))
    before = [d.for_task("chat-s") for t, d in result.deployments if 0 < t <= 600]
    after = [d.for_task("chat-s") for t, d in result.deployments if t == 660]
    assert before and after
    assert max(p.gpus for p in before) < after[0].gpus


def test_burst_budget_shrinks_only_after_down_after_windows(profiles):
    # busy for 4 minutes, then quiet: the pool keeps its GPUs for down_after quiet windows, then shrinks
    rates = np.r_[np.full(240, 60.0), np.full(600, 2.0)]
    trace = two_task_trace(rates, np.full(840, 1.0))
    result = simulate(trace, [CHAT, CODE], BurstBudget(lookback=1, down_after=3, first_peak_to_mean=1.0), profiles,
                      settings())
    gpus = {t: d.for_task("chat-s").gpus for t, d in result.deployments}
    busy = gpus[240.0]  # planned on the last busy window
    assert busy >= 2
    assert gpus[300.0] == gpus[360.0] == gpus[420.0] == busy  # three quiet windows: held
    assert gpus[480.0] < busy  # the fourth: shrunk


def test_no_task_is_given_up_below_its_floor(profiles):
    # with a budget loose enough to give code up (target 0.5), task_floor still holds code's own predicted misses
    code_key = ConfigKey("h100-80gb", "codellama-34b", "w4a8kv4", 1)
    sat = profiles.saturation_qps(code_key, CODE.workload, CODE.slo)
    code_rates = np.tile(np.r_[np.full(15, 5.0), np.full(5, 4 * sat)], 20)
    trace = two_task_trace(np.full(400, 20.0), code_rates)
    gpus = {}
    for floor in (0.0, 0.9):
        policy = BurstBudget(target=0.5, task_floor=floor)
        result = simulate(trace, [CHAT, CODE], policy, profiles, settings())
        gpus[floor] = max(d.for_task("code").gpus for _, d in result.deployments[2:])
    assert gpus[0.9] > gpus[0.0]


def test_growth_needs_two_rises_in_a_row():
    from sim.deployment import WindowRates
    policy = BurstBudget(max_growth=1.5)

    def ws(*means):
        return [WindowRates(m, m, m, m, m, 1.0, np.full(10, m)) for m in means]
    assert policy.growth(ws(10.0, 12.0, 15.0)) == pytest.approx(1.2)  # the smaller rise
    assert policy.growth(ws(12.0, 10.0, 15.0)) == 1.0  # one rise is not a trend
    assert policy.growth(ws(15.0, 12.0, 10.0)) == 1.0  # falling: no shrink ahead of time
    assert policy.growth(ws(10.0, 20.0, 40.0)) == 1.5  # capped
    assert policy.growth(ws(10.0, 12.0)) == 1.0


def test_a_plan_that_misses_is_replaced_now_at_the_same_gpus(profiles):
    # chat-r on one TP2 replica (2 GPUs) while its load passes TP2's saturation: two TP1 replicas (2 GPUs, more
    # capacity) replace it at the next plan, without waiting down_after windows
    chat_r = TaskSpec("chat-r", "llama2-70b", "sharegpt", LatencySlo(3.0, 0.2), quality_min=50.0)
    tp2 = ConfigKey("h100-80gb", "llama2-70b", "w4a8kv4", 2)
    tp1 = ConfigKey("h100-80gb", "llama2-70b", "w4a8kv4", 1)
    sat_tp2 = profiles.saturation_qps(tp2, chat_r.workload, chat_r.slo)
    assert 2 * profiles.saturation_qps(tp1, chat_r.workload, chat_r.slo) > 1.2 * sat_tp2

    class StartOnTp2(BurstBudget):
        def _first_plan(self, ctx, task):
            self._below[task.name] = []
            return FixedPlan({task.name: {"config": tp2.label, "dp": 1}}).plan_task(ctx, task)

    a = arrivals(np.full(300, 1.15 * sat_tp2))
    n = len(a)
    trace = make_trace(a, np.full(n, 100), np.full(n, 20), names=("chat-r",))
    result = simulate(trace, [chat_r], StartOnTp2(down_after=3), profiles, settings())
    at_60 = result.deployments[1]
    assert at_60[0] == WINDOW_S
    plan = at_60[1].for_task("chat-r")
    assert plan.key != tp2 and plan.gpus >= 2 and plan.dp * plan.saturation_qps > 1.15 * sat_tp2


def test_bad_target_is_refused():
    with pytest.raises(ValueError, match="policy.target"):
        BurstBudget(target=1.0)


# --- the pinned plan ----------------------------------------------------------------------------------------

def test_fixed_plan_runs_what_it_is_given(profiles):
    trace = two_task_trace(np.full(120, 3.0), np.full(120, 2.0))
    pools = {"chat-s": {"config": "h100-80gb/llama2-13b/w4a8kv8/tp1", "dp": 2},
             "code": {"config": "h100-80gb/codellama-34b/w4a8kv4/tp2", "dp": 1}}
    result = simulate(trace, [CHAT, CODE], FixedPlan(pools), profiles, settings())
    for _, d in result.deployments:
        assert (d.for_task("chat-s").key.label, d.for_task("chat-s").dp) == ("h100-80gb/llama2-13b/w4a8kv8/tp1", 2)
        assert d.for_task("code").gpus == 2
    assert sum(result.reconfigurations.values()) == 0  # never re-planned into anything else


@pytest.mark.parametrize("pools, message", [
    (None, "policy.pools must map"),
    ({"chat-s": {"config": "h100-80gb/llama2-13b/w4a8kv8", "dp": 1}}, "policy.pools.chat-s.config"),
    ({"chat-s": {"config": "h100-80gb/llama2-13b/w4a8kv8/tp1", "dp": -1}}, "policy.pools.chat-s.dp"),
    ({"chat-s": {"config": "h100-80gb/llama2-13b/w4a8kv8/tp1"}}, "policy.pools.chat-s must be"),
])
def test_fixed_plan_bad_pools_are_named(pools, message):
    with pytest.raises(ValueError, match=message):
        FixedPlan(pools)


def test_fixed_plan_wrong_model_or_missing_task_is_one_line(tmp_path):
    from hydra import compose, initialize_config_module

    from sim.main import run
    overrides = ["policy=fixed", "trace.duration_s=30", "outputs.figures=false", "progress=false",
                 "policy.pools.code.config=h100-80gb/llama2-13b/w4a8kv4/tp1"]
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with pytest.raises(ConfigError, match="policy.pools.code.config: .* serves llama2-13b, but task 'code' runs "
                                          "codellama-34b"):
        run(cfg, tmp_path)


# --- the oracle frontier of benchmarks/burst_frontier.py ----------------------------------------------------

def _frontier_module():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "burst_frontier.py"
    spec = importlib.util.spec_from_file_location("burst_frontier", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_oracle_frontier_picks_replicas_per_window_by_lambda():
    # one task, two 100-s windows of 50 requests; one replica misses 20 in the first window and none in the second,
    # two replicas miss none. A second replica costs 100 GPU-s and saves 20 misses: worth it once lambda > 5.
    frontier = _frontier_module().oracle_frontier
    reqs = np.array([50.0, 50.0])
    misses = {"t": {1: (reqs, np.array([20.0, 0.0])), 2: (reqs, np.array([0.0, 0.0]))}}
    window_s = np.array([100.0, 100.0])
    (l1, gpu_h1, att1, per1), (l2, gpu_h2, att2, per2) = frontier(misses, {"t": 1}, window_s, (4.0, 6.0))
    assert gpu_h1 == pytest.approx(200 / 3600) and att1 == pytest.approx(0.8)  # one replica throughout
    assert gpu_h2 == pytest.approx(300 / 3600) and att2 == pytest.approx(1.0)  # two in the first window only
    # TP2 doubles every replica's GPU-seconds: the same lambda no longer buys the second replica
    (_, gpu_h_tp2, att_tp2, _), = frontier(misses, {"t": 2}, window_s, (6.0,))
    assert gpu_h_tp2 == pytest.approx(400 / 3600) and att_tp2 == pytest.approx(0.8)
