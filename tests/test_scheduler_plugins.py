"""Batch schedulers by ``_target_`` (issue 14, sim.scheduler_api): the shipped schedulers' ``schedule()`` on the plug-in
path equals their built-in loops and the per-iteration reference, by name equals by target, bad targets and parameters
get one line naming the key, decisions that break the contract stop the run naming the target, and the example
plug-in (examples/my_scheduler) with hand-computed times, conservation and end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_module

import sim.main  # noqa: F401  (registers the schema)
from conftest import make_step, make_trace, poisson_trace
from examples.my_scheduler import ShortestPromptFirst
from profiles.step_model import SCHEDULERS
from sim.config import ConfigError, build_run
from sim.instance import (Instance, MaxUtilizationInstance, PluginInstance, VllmInstance,
                          replay_single_instance)
from sim.main import run
from sim.prefix_cache import PrefixCacheSettings
from sim.reference import PAGED_SCHEDULERS, replay_paged
from sim.requests import FINISHED, REJECT_REASONS, REJECTED, RequestTable
from sim.scheduler_api import Decision, IterationScheduler, SchedulerError, SchedulerSpec
from sim.schedulers import MaxUtilization, Vllm

ROOT = Path(__file__).resolve().parents[1]
MAX_UTIL = SCHEDULERS.index("max_utilization")
VLLM = SCHEDULERS.index("vllm")
SMALL = ["trace.duration_s=60", "trace.total_rate_qps=20", "cluster.replan_interval_s=null", "progress=false",
         "outputs.figures=false"]
TIGHT = ["engine.kv_cache_free_fraction=0.03"]  # little KV: the paged schedulers evict


def composed(overrides):
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def replay(step, trace, scheduler=None):
    table = RequestTable(trace)
    return table, replay_single_instance(step, table, scheduler=scheduler)


def outcome(table, instance):
    return (list(table.first_token_s), list(table.finish_s), list(table.energy_j), list(table.status),
            instance.busy_s, instance.busy_j, instance.preemptions)


# --- the shipped schedulers: schedule() on the plug-in path == built-in loop == reference --------------------------

class PluginMaxUtilization(MaxUtilization):
    """MaxUtilization's own schedule(), run on the plug-in path (a subclass is not run as the built-in loop)."""


class PluginVllm(Vllm):
    """Vllm's own schedule(), run on the plug-in path."""


# Long prompts; short prompts under a tight cache, where one iteration often evicts several requests (so the order
# in which they return to the queue matters).
TRACES = {"long-prompts": lambda: (3000, 16, poisson_trace(20.0, 150, seed=0, in_range=(1, 600), out_range=(1, 300))),
          "short-prompts": lambda: (1500, 32, poisson_trace(40.0, 150, seed=1, in_range=(1, 60), out_range=(50, 400)))}


@pytest.mark.parametrize("code,plugin", [(MAX_UTIL, PluginMaxUtilization), (VLLM, PluginVllm)],
                         ids=["max_utilization", "vllm"])
@pytest.mark.parametrize("kind", sorted(TRACES))
def test_shipped_schedule_on_the_plugin_path_equals_the_built_in_loop_and_the_reference(code, plugin, kind):
    kv, max_batch, trace = TRACES[kind]()
    step = make_step(scheduler=code, kv_capacity_tokens=kv, max_batch=max_batch, max_num_tokens=1024)
    built_in_table, built_in = replay(step, trace)
    plugin_table, plugged = replay(step, trace, plugin())
    assert type(built_in) is (MaxUtilizationInstance, VllmInstance)[code - 1] and type(plugged) is PluginInstance
    assert outcome(plugin_table, plugged) == outcome(built_in_table, built_in)  # byte for byte
    ref = replay_paged(step, trace.arrival_s, trace.input_tokens, trace.output_tokens)
    assert np.array_equal(np.asarray(plugin_table.first_token_s), ref.first_token_s)
    assert np.array_equal(np.asarray(plugin_table.finish_s), ref.finish_s)
    assert plugged.busy_j == ref.busy_j and plugged.preemptions == ref.preemptions > 0


@pytest.mark.parametrize("scheduler,rules", [
    (MaxUtilization(block_tokens=16), dict(block_tokens=16, prefill_first=False, watermark=0.0)),
    (Vllm(block_tokens=64, watermark=0.05), dict(block_tokens=64, prefill_first=True, watermark=0.05)),
], ids=["max_utilization-16", "vllm-64-5%"])
def test_shipped_classes_with_other_parameters_follow_the_reference_on_both_paths(scheduler, rules):
    step = make_step(kv_capacity_tokens=4000, max_batch=16, max_num_tokens=1024)
    trace = poisson_trace(25.0, 150, seed=3, in_range=(1, 600), out_range=(1, 300))
    ref = replay_paged(step, trace.arrival_s, trace.input_tokens, trace.output_tokens, rules)
    subclass = type("Sub", (type(scheduler),), {})
    results = []
    for sched in (scheduler, subclass(**rules_params(rules))):
        table, instance = replay(step, trace, sched)
        assert np.array_equal(np.asarray(table.first_token_s), ref.first_token_s)
        assert np.array_equal(np.asarray(table.finish_s), ref.finish_s)
        assert instance.preemptions == ref.preemptions > 0
        results.append(outcome(table, instance))
    assert results[0] == results[1]


def rules_params(rules):
    return {"block_tokens": rules["block_tokens"], "watermark": rules["watermark"]}


def test_the_scheduler_picks_the_engine_class_and_the_default_path_is_untouched():
    table = RequestTable(make_trace([0.0], [10], [2]))

    def make(step, **kwargs):
        return Instance(0, "x", 1, step, table, 0.0, 0.0, **kwargs)

    assert type(make(make_step())) is Instance and type(make(make_step(), scheduler=None)) is Instance
    assert type(make(make_step(scheduler=VLLM))) is VllmInstance
    assert type(make(make_step(), scheduler=Vllm())) is VllmInstance
    assert type(make(make_step(), scheduler=SchedulerSpec("sim.schedulers.MaxUtilization", "max_utilization",
                                                          MaxUtilization))) is MaxUtilizationInstance
    plugged = make(make_step(), scheduler=ShortestPromptFirst(block_tokens=32))
    assert type(plugged) is PluginInstance and plugged._block == 32
    assert plugged.scheduler_label == "examples.my_scheduler.scheduler.ShortestPromptFirst"
    assert make(make_step(scheduler=VLLM)).scheduler_label == "vllm" and make(make_step()).scheduler_label == (
        "guaranteed_no_evict")
    with pytest.raises(ValueError, match="chunked_context runs only with the guaranteed_no_evict scheduler, not "
                                         "examples.my_scheduler.scheduler.ShortestPromptFirst"):
        make(make_step(chunked_context=1), scheduler=ShortestPromptFirst())
    with pytest.raises(TypeError, match="scheduler sim.schedulers.MaxUtilization runs on MaxUtilizationInstance, not "
                                        "VllmInstance"):
        VllmInstance(0, "x", 1, make_step(), table, 0.0, 0.0, scheduler=MaxUtilization())
    with pytest.raises(ValueError, match="prefix caching runs only with the guaranteed_no_evict scheduler"):
        make(make_step(), scheduler=ShortestPromptFirst(), prefix_cache=PrefixCacheSettings(block_tokens=16))


# --- by name == by target, through qfleet-sim ----------------------------------------------------------------------

def requests_and_summary(overrides, out: Path):
    summary = run(composed(SMALL + TIGHT + overrides), out)
    frame = pd.read_parquet(out / "requests.parquet")
    return frame[["arrival_s", "first_token_s", "finish_s", "instance", "status", "energy_j"]], summary


@pytest.mark.parametrize("pool,name,by_target", [
    ("chat-s", "vllm", "engine.scheduler"),
    ("code", "max_utilization", "cluster.pools.code.engine.scheduler"),
], ids=["vllm-every-pool", "max_utilization-one-pool"])
def test_a_shipped_scheduler_by_target_gives_the_results_of_its_name(tmp_path, pool, name, by_target):
    label = {"vllm": "sim.schedulers.Vllm", "max_utilization": "sim.schedulers.MaxUtilization"}[name]
    by_name = [f"{by_target}={name}"]
    by_target = [f"{by_target}._target_={label}"]
    named, named_summary = requests_and_summary(by_name, tmp_path / "name")
    targeted, targeted_summary = requests_and_summary(by_target, tmp_path / "target")
    pd.testing.assert_frame_equal(named, targeted, check_exact=True)
    assert named_summary["finished"] == targeted_summary["finished"] > 0
    preemptions = {t: e["preemptions"] for t, e in named_summary["engine"].items()}
    assert preemptions == {t: e["preemptions"] for t, e in targeted_summary["engine"].items()}
    assert sum(preemptions.values()) > 0  # the KV is tight enough for the schedulers to matter
    entry = targeted_summary["engine"][pool]
    assert entry["scheduler"] == label and entry["scheduler_params"] == {}
    assert {c["scheduler"] for c in entry["configs"].values()} == {label}
    assert named_summary["engine"][pool]["scheduler"] == name
    assert {c["scheduler"] for c in named_summary["engine"][pool]["configs"].values()} == {name}


# --- bad targets and parameters: one line naming the key -----------------------------------------------------------

class DuckScheduler:
    """Has schedule() but is no IterationScheduler (no block_tokens, watermark)."""

    def schedule(self, view):
        return Decision()


class NeedsBudget(MaxUtilization):
    def __init__(self, budget: int):
        super().__init__()
        self.budget = budget


class ClassAttributeBlocks(IterationScheduler):
    """Sets the engine parameters as class attributes and never calls IterationScheduler.__init__."""

    block_tokens = 0

    def __init__(self):
        pass

    def schedule(self, view):
        return Decision()


def replicas_for():
    pass


SPF = "examples.my_scheduler.ShortestPromptFirst"
BAD = [
    (["engine.scheduler._target_=examples.no_such.Scheduler"],
     "config key 'engine.scheduler._target_': cannot import 'examples.no_such.Scheduler': No module named "
     "'examples.no_such'"),
    (["engine.scheduler._target_=test_scheduler_plugins.replicas_for"],
     "config key 'engine.scheduler._target_': 'test_scheduler_plugins.replicas_for' is a function, not a class"),
    (["engine.scheduler._target_=examples.my_policy.FewestGpus"],
     "config key 'engine.scheduler._target_': 'examples.my_policy.FewestGpus' does not implement the scheduler "
     "interface (sim.scheduler_api.IterationScheduler: schedule(view) -> Decision): no method schedule"),
    (["engine.scheduler._target_=sim.scheduler_api.IterationScheduler"],
     "config key 'engine.scheduler._target_': 'sim.scheduler_api.IterationScheduler' does not implement the scheduler "
     "interface (sim.scheduler_api.IterationScheduler: schedule(view) -> Decision): abstract method(s) schedule"),
    (["engine.scheduler._target_=test_scheduler_plugins.DuckScheduler"],
     "config key 'engine.scheduler._target_': 'test_scheduler_plugins.DuckScheduler' does not implement the "
     "scheduler interface (sim.scheduler_api.IterationScheduler: schedule(view) -> Decision): subclass "
     "sim.scheduler_api.IterationScheduler"),
    ([f"engine.scheduler._target_={SPF}", "+engine.scheduler.alpha=1"],
     "config key 'engine.scheduler.alpha': engine.scheduler 'shortest_prompt_first' does not use it "
     "(examples.my_scheduler.ShortestPromptFirst takes block_tokens, watermark, prefill_budget_tokens, max_wait_s)"),
    (["engine.scheduler._target_=test_scheduler_plugins.NeedsBudget"],
     "config key 'engine.scheduler.budget': missing: test_scheduler_plugins.NeedsBudget needs it"),
    ([f"engine.scheduler._target_={SPF}", "+engine.scheduler.block_tokens=0"],
     "config key 'engine.scheduler.block_tokens': must be a whole number >= 1, got 0"),
    ([f"engine.scheduler._target_={SPF}", "+engine.scheduler.prefill_budget_tokens=0.5"],
     "config key 'engine.scheduler.prefill_budget_tokens': must be a whole number >= 1 or null, got 0.5"),
    ([f"engine.scheduler._target_={SPF}", "+engine.scheduler.watermark=1"],
     "config key 'engine.scheduler': examples.my_scheduler.ShortestPromptFirst refused its parameters "
     "{'watermark': 1}: ValueError: watermark must be in [0, 1), got 1"),
    (["engine.scheduler._target_=test_scheduler_plugins.ClassAttributeBlocks"],
     "config key 'engine.scheduler': test_scheduler_plugins.ClassAttributeBlocks: block_tokens must be a whole number "
     ">= 1, got 0"),
    (["+engine.scheduler.block_tokens=32"], "config key 'engine.scheduler._target_': missing: name the "
                                            "engine.scheduler class"),
    (["engine.scheduler._target_=sim.schedulers.Vllm", "+engine.scheduler.name=fifo"],
     "config key 'engine.scheduler.name': 'fifo' is not the name of sim.schedulers.Vllm ('vllm')"),
    (["engine.scheduler=fifo"], "config key 'engine.scheduler': must be one of guaranteed_no_evict, max_utilization, "
                                "vllm, got 'fifo' (or a plug-in: engine.scheduler._target_=package.module.Class)"),
    (["cluster.pools.code.engine.scheduler._target_=examples.my_scheduler.NoSuchClass"],
     "config key 'cluster.pools.code.engine.scheduler._target_': cannot import 'examples.my_scheduler.NoSuchClass': "
     "module 'examples.my_scheduler' has no attribute 'NoSuchClass'"),
    ([f"cluster.pools.code.engine.scheduler._target_={SPF}", "+cluster.pools.code.engine.scheduler.max_wait_s=-1"],
     "config key 'cluster.pools.code.engine.scheduler.max_wait_s': must be "),
    ([f"cluster.pools.code.engine.scheduler._target_={SPF}", "+cluster.pools.code.engine.scheduler.budget=3"],
     "config key 'cluster.pools.code.engine.scheduler.budget': cluster.pools.code.engine.scheduler "
     "'shortest_prompt_first' does not use it"),
    ([f"engine.scheduler._target_={SPF}", "engine.chunked_context=true"],
     "config key 'engine': profile[chunked_context=True,scheduler=examples.my_scheduler.ShortestPromptFirst] on "),
    ([f"cluster.pools.code.engine.scheduler._target_={SPF}", "cluster.pools.code.engine.chunked_context=true"],
     "config key 'cluster.pools.code.engine': profile[chunked_context=True,scheduler=examples.my_scheduler."
     "ShortestPromptFirst] on "),
    ([f"engine.scheduler._target_={SPF}", "cluster.prefix_cache.enabled=true"],
     "config key 'cluster.prefix_cache.enabled': prefix caching runs only with the guaranteed_no_evict scheduler; "
     "pool 'chat-s' runs examples.my_scheduler.ShortestPromptFirst"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(c[0]) for c in BAD])
def test_a_bad_scheduler_plugin_gets_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        build_run(composed(SMALL + overrides))
    text = str(err.value)
    assert message in text and "\n" not in text, text
    if "chunked_context" in " ".join(overrides):
        assert "chunked_context runs only with the guaranteed_no_evict scheduler, not " + SPF in text


def test_a_plugin_with_its_parameters_is_built_per_pool():
    spec = build_run(composed(SMALL + [f"engine.scheduler._target_={SPF}", "+engine.scheduler.max_wait_s=5",
                                       "cluster.pools.code.engine.scheduler=vllm"]))
    schedulers = {t.name: t.engine.scheduler for t in spec.tasks}
    assert schedulers.pop("code") == "vllm"
    for plugin in schedulers.values():
        assert isinstance(plugin, SchedulerSpec) and plugin.target == SPF and plugin.cls is ShortestPromptFirst
        made = plugin.make()
        assert made.max_wait_s == 5 and made is not plugin.make()  # one scheduler object per replica


# --- decisions that break the contract stop the run, naming the target ---------------------------------------------

class Livelock(IterationScheduler):
    def schedule(self, view):
        return Decision()


class NotADecision(IterationScheduler):
    def schedule(self, view):
        return {"decode": list(view.running)}


class Broken(MaxUtilization):
    """MaxUtilization's decision, changed by ``bend`` once a request runs."""

    def schedule(self, view):
        decision = super().schedule(view)
        return self.bend(view, decision) if view.running else decision


class AdmitsRunning(Broken):
    def bend(self, view, d):
        return Decision(d.decode, [view.running[0]], d.evict)


class AdmitsUnknown(Broken):
    def bend(self, view, d):
        return Decision(d.decode, [999], d.evict)


class DecodesWaiting(Broken):
    def bend(self, view, d):
        return Decision(list(d.decode) + [view.waiting[0]], (), d.evict)


class DecodesEvicted(Broken):
    def bend(self, view, d):
        return Decision(d.decode, (), [view.running[0]])


class EvictsWaiting(Broken):
    def bend(self, view, d):
        return Decision(d.decode, (), [view.waiting[-1]])


class DecodesTwice(Broken):
    def bend(self, view, d):
        return Decision(list(d.decode) * 2, d.prompts, d.evict)


class NotIds(Broken):
    def bend(self, view, d):
        return Decision(d.decode, [0.5], d.evict)


class Greedy(IterationScheduler):
    """Admits every waiting request at once: ignores blocks, max_batch and the token budget."""

    def __init__(self):
        super().__init__(block_tokens=64)

    def schedule(self, view):
        return Decision(list(view.running), list(view.waiting))


THREE = make_trace([0.0, 0.0, 0.0], [100, 100, 100], [20, 20, 20])
VIOLATIONS = [
    (Livelock, {}, "schedules nothing while 0 request(s) run and 3 wait: the replica would sit idle forever "
                   "(livelock)"),
    (NotADecision, {}, "returned dict, not a sim.scheduler_api.Decision"),
    (AdmitsRunning, {}, "admits request 0, which is running"),
    (AdmitsUnknown, {}, "admits request 999, which is not waiting on this replica"),
    (DecodesWaiting, {"max_batch": 1}, "decodes request 1, which is not running"),
    (DecodesEvicted, {}, "decodes request 0, which it evicts"),
    (EvictsWaiting, {"max_batch": 1}, "evicts request 2, which is not running"),
    (DecodesTwice, {}, "request 0 appears twice in Decision.decode"),
    (NotIds, {}, "Decision.prompts must be a sequence of request ids (int), got [0.5]"),
    (Greedy, {"kv_capacity_tokens": 256}, "its decode steps and prompts need 2 KV block(s) more than are free (4 "
                                          "blocks of 64 tokens)"),
    (Greedy, {"max_batch": 2}, "0 running + 3 admitted = 3 requests, more than max_batch 2"),
    (Greedy, {"max_num_tokens": 250}, "admits 3 prompts of 300 tokens together, more than max_num_tokens 250 (only a "
                                      "lone prompt may exceed it)"),
]


@pytest.mark.parametrize("cls,limits,rule", VIOLATIONS, ids=[f"{c.__name__}-{r[:20]}" for c, _, r in VIOLATIONS])
def test_an_invalid_decision_stops_with_one_line_naming_the_target_and_the_rule(cls, limits, rule):
    step = make_step(**limits)
    spec = SchedulerSpec(f"test_scheduler_plugins.{cls.__name__}", cls.__name__, cls)
    with pytest.raises(SchedulerError) as err:
        replay(step, THREE, spec)
    text = str(err.value)
    assert text.startswith(f"scheduler test_scheduler_plugins.{cls.__name__} returned an invalid decision at t=")
    assert "on replica 0 (single): " + rule in text and "\n" not in text, text


def test_the_same_decisions_run_when_they_keep_the_rules():
    table, instance = replay(make_step(), THREE, Greedy())  # everything fits: no rule is broken
    assert list(table.status) == [FINISHED] * 3 and instance.preemptions == 0


def test_a_runtime_violation_stops_qfleet_sim_with_one_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        run(composed(SMALL + ["cluster.pools.code.engine.scheduler._target_=test_scheduler_plugins.AdmitsRunning"]),
            tmp_path)
    text = str(err.value)
    assert "scheduler test_scheduler_plugins.AdmitsRunning returned an invalid decision at t=" in text
    assert "codellama-34b" in text and ": admits request " in text and "which is running" in text
    assert "\n" not in text


def test_the_command_line_prints_the_violation_in_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "sim.main", *SMALL, "engine.scheduler._target_=test_scheduler_plugins."
                           "Livelock", f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("qfleet-sim: scheduler test_scheduler_plugins.Livelock returned "
                                                   "an invalid decision at t="), done.stderr
    assert lines[0].endswith("(livelock)")


# --- the example: examples/my_scheduler ----------------------------------------------------------------------------

# A (t=0, 100 prompt tokens, 5 output) runs alone (max_batch 1); B (800 tokens) and C (50) arrive during its prefill.
ABC = make_trace([0.0, 0.001, 0.002], [100, 800, 50], [5, 3, 3])
ONE_SEAT = dict(max_batch=1)


def serve_one_at_a_time(step, first, second):
    """Hand-computed times of ABC when A runs first, then ``first`` (index), then ``second``: each prefill is one
    iteration of its prompt alone, each decode step one of batch 1 over input + g KV tokens."""
    inp, out = ABC.input_tokens, ABC.output_tokens
    first_token = [0.0, 0.0, 0.0]
    finish = [0.0, 0.0, 0.0]
    t = 0.0
    for rid in (0, first, second):
        L = int(inp[rid])
        t = t + step.iteration_s(1, L, 0, L, L * L)
        first_token[rid] = t
        for g in range(1, int(out[rid])):
            t = t + step.iteration_s(1, 1, L + g)
        finish[rid] = t
    return first_token, finish


def test_example_serves_the_shortest_prompt_first_with_exact_times():
    step = make_step(**ONE_SEAT)
    fifo, _ = replay(step, ABC, MaxUtilization(block_tokens=16))
    spf, _ = replay(step, ABC, ShortestPromptFirst())
    assert (list(fifo.first_token_s), list(fifo.finish_s)) == serve_one_at_a_time(step, 1, 2)  # B, then C
    assert (list(spf.first_token_s), list(spf.finish_s)) == serve_one_at_a_time(step, 2, 1)  # C, then B
    # C no longer waits for B's 800-token prefill and decodes; B waits for C's instead
    assert spf.first_token_s[2] < fifo.first_token_s[2] and spf.first_token_s[1] > fifo.first_token_s[1]


def test_example_aging_lets_a_request_that_waited_max_wait_s_go_first():
    step = make_step(**ONE_SEAT)
    _, finish_a = serve_one_at_a_time(step, 1, 2)
    # at A's finish B (arrived at 0.001) has waited max_wait_s, C (0.002) not yet: B goes first, as under FIFO
    aged, _ = replay(step, ABC, ShortestPromptFirst(max_wait_s=finish_a[0] - 0.0015))
    assert (list(aged.first_token_s), list(aged.finish_s)) == serve_one_at_a_time(step, 1, 2)
    late, _ = replay(step, ABC, ShortestPromptFirst(max_wait_s=finish_a[0]))  # nobody aged yet: C first
    assert (list(late.first_token_s), list(late.finish_s)) == serve_one_at_a_time(step, 2, 1)


def test_example_prefill_budget_puts_the_second_prompt_in_the_next_iteration():
    step = make_step()
    trace = make_trace([0.0, 0.0], [60, 60], [2, 2])
    together, _ = replay(step, trace, ShortestPromptFirst())
    both = step.iteration_s(2, 120, 0, 120, 2 * 3600)
    assert list(together.first_token_s) == [both, both]
    split, _ = replay(step, trace, ShortestPromptFirst(prefill_budget_tokens=100))  # 60 + 60 > 100
    t1 = step.iteration_s(1, 60, 0, 60, 3600)
    t2 = t1 + step.iteration_s(2, 61, 61, 60, 3600)  # X decodes (60 + 1 KV tokens) while Y prefills
    t3 = t2 + step.iteration_s(1, 1, 61)
    assert list(split.first_token_s) == [t1, t2] and list(split.finish_s) == [t2, t3]


@pytest.mark.parametrize("params", [{}, {"prefill_budget_tokens": 256, "max_wait_s": 2.0}, {"block_tokens": 64}],
                         ids=["defaults", "budget-aging", "block64"])
def test_example_finishes_or_rejects_every_request_and_conserves_energy(params):
    step = make_step(kv_capacity_tokens=2048, max_batch=16, max_num_tokens=1024)
    trace = poisson_trace(30.0, 300, seed=7, in_range=(1, 1500), out_range=(1, 800))
    table, instance = replay(step, trace, ShortestPromptFirst(**params))
    status = np.asarray(table.status)
    assert np.all((status == FINISHED) | (status == REJECTED)) and (status == REJECTED).any()
    assert {REJECT_REASONS[r] for r, s in zip(table.reason, status) if s == REJECTED} <= {
        "exceeds_kv_capacity", "exceeds_max_num_tokens"}
    assert instance.preemptions > 0 and instance.outstanding == 0 and instance.kv_used_tokens == 0
    assert instance.tokens_out == int(trace.output_tokens[status == FINISHED].sum())
    assert sum(table.energy_j) == pytest.approx(instance.busy_j, rel=1e-12)


def test_example_cuts_the_median_ttft_and_aging_bounds_the_tail():
    # 2,000 requests at 8 req/s, prompts 1-2,000 tokens: one replica near saturation. Measured: median TTFT FIFO 2.35 s,
    # shortest-first 0.13 s; longest TTFT 8.4 s and 104 s (long prompts starve); with max_wait_s=10 0.20 s and 11.3 s.
    step = make_step(kv_capacity_tokens=20000, max_batch=32, max_num_tokens=2048)
    trace = poisson_trace(8.0, 2000, seed=5, in_range=(1, 2000), out_range=(1, 200))
    ttft = {}
    for name, sched in (("fifo", MaxUtilization(block_tokens=16)), ("spf", ShortestPromptFirst()),
                        ("aged", ShortestPromptFirst(max_wait_s=10.0))):
        table, _ = replay(step, trace, sched)
        assert all(s == FINISHED for s in table.status)
        ttft[name] = np.asarray(table.first_token_s) - trace.arrival_s
    assert np.median(ttft["spf"]) < np.median(ttft["fifo"]) / 10
    assert ttft["spf"].max() > 10 * ttft["fifo"].max()
    assert np.median(ttft["aged"]) < np.median(ttft["fifo"]) / 10 and ttft["aged"].max() < 1.5 * ttft["fifo"].max()


def test_example_runs_end_to_end_through_qfleet_sim(tmp_path):
    summary = run(composed(SMALL + TIGHT + [f"engine.scheduler._target_={SPF}",
                                            "+engine.scheduler.prefill_budget_tokens=2048",
                                            "cluster.pools.code.engine.scheduler._target_=sim.schedulers.Vllm"]),
                  tmp_path)
    assert summary["requests"] > 0 and summary["finished"] + summary["rejected"] == summary["requests"]
    frame = pd.read_parquet(tmp_path / "requests.parquet")
    assert frame.status.isin(["finished", "rejected"]).all()
    assert frame.energy_j.sum() == pytest.approx(summary["busy_energy_j"], rel=1e-9)
    engine = json.loads((tmp_path / "summary.json").read_text())["engine"]
    assert engine["code"]["scheduler"] == "sim.schedulers.Vllm"
    for task in ("chat-s", "chat-r", "summarization"):
        assert engine[task]["scheduler"] == SPF
        assert engine[task]["scheduler_params"] == {"prefill_budget_tokens": 2048}
        assert {c["scheduler"] for c in engine[task]["configs"].values()} == {SPF}
    assert sum(e["preemptions"] for e in engine.values()) > 0


def test_reference_rules_are_the_shipped_defaults():
    # the reference's rules and the shipped classes' defaults describe the same schedulers
    for code, cls in ((MAX_UTIL, MaxUtilization), (VLLM, Vllm)):
        made = cls()
        rules = PAGED_SCHEDULERS[code]
        assert (made.block_tokens, made.watermark) == (rules["block_tokens"], rules["watermark"])
        assert isinstance(made, IterationScheduler) and made.name == SCHEDULERS[code]
