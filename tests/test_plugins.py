"""Plug-ins by Hydra ``_target_`` (issue 14): the example package runs end to end, bad targets and invalid plans get
one line, a plug-in router sees the documented replica view, UAQF's winner follows its weights, and the shipped
policies and routers give the results they gave before the change."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_module

import sim.main  # noqa: F401  (registers the schema)
from profile_fixtures import hand_made_profiles
from profiles.profile_set import LatencySlo
from profiles.schema import ConfigKey
from sim.config import ConfigError, build_run
from sim.deployment import Deployment, PlanContext, PoolPlan, TaskSpec
from sim.main import run
from sim.policy_api import PerTaskPolicy, Policy
from sim.uaqf import UtilityAware

SMALL = ["trace.duration_s=60", "trace.total_rate_qps=20", "cluster.replan_interval_s=20", "progress=false",
         "outputs.figures=false"]


def composed(overrides):
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def balanced(summary):
    assert summary["requests"] > 0
    assert summary["finished"] + summary["rejected"] == summary["requests"]
    assert sum(t["requests"] for t in summary["tasks"]) == summary["requests"]
    assert all(t["finished"] + t["rejected"] == t["requests"] for t in summary["tasks"])


def test_example_plugin_policy_and_router_run_end_to_end(tmp_path):
    cfg = composed(SMALL + ["policy._target_=examples.my_policy.FewestGpus", "+policy.peak_windows=2",
                            "router._target_=examples.my_policy.MostFreeKv"])
    summary = run(cfg, tmp_path)
    balanced(summary)
    assert summary["policy"] == "fewest_gpus"
    plans = pd.read_csv(tmp_path / "deployments.csv")
    assert set(plans.task) == {"chat-s", "chat-r", "code", "summarization"} and (plans.dp >= 1).all()


# --- bad targets and parameters: one line naming the key ------------------------------------------------------

class NotAPolicy:
    def route(self):
        pass


class Abstract(PerTaskPolicy):
    pass


class NeedsAlpha(PerTaskPolicy):
    def __init__(self, alpha: float):
        if alpha < 0:
            raise ValueError("alpha must be >= 0")
        self.alpha = alpha

    def plan_task(self, ctx, task):
        raise NotImplementedError


BAD_TARGETS = [
    (["policy._target_=examples.no_such.Policy"], "'policy._target_': cannot import 'examples.no_such.Policy': "
                                                  "No module named 'examples.no_such'"),
    (["policy._target_=examples.my_policy.NoSuchClass"], "module 'examples.my_policy' has no attribute 'NoSuchClass'"),
    (["policy._target_=sim.planning.replicas_for"], "'sim.planning.replicas_for' is a function, not a class"),
    (["policy._target_=test_plugins.NotAPolicy"], "does not implement the policy interface"),
    (["policy._target_=test_plugins.Abstract"], "abstract method(s) plan_task not defined"),
    (["policy._target_=examples.my_policy.MostFreeKv"], "no method plan"),
    (["router._target_=examples.my_policy.FewestGpus"], "'router._target_': 'examples.my_policy.FewestGpus' does not "
                                                        "implement the router interface"),
    (["policy._target_=not-a-path"], "'policy._target_': 'not-a-path' is not a dotted path"),
    (["+policy.alpha=1"], "'policy.alpha': policy 'fp16_only' does not use it (sim.policies.Fp16Only takes no "
                          "parameters)"),
    (["policy._target_=test_plugins.NeedsAlpha"], "'policy.alpha': missing: test_plugins.NeedsAlpha needs it"),
    (["policy._target_=test_plugins.NeedsAlpha", "+policy.alpha=-1"], "'policy': test_plugins.NeedsAlpha refused its "
                                                                      "parameters {'alpha': -1}: ValueError: alpha"),
    (["policy=uaqf", "policy.lambda_s=0.9"], "lambda_s + lambda_q + lambda_p must be 1"),
    (["policy=uaqf", "policy.lambda_p=-0.1"], "'policy.lambda_p': must be a finite number in [0, 1], got -0.1"),
    (["policy._target_=examples.my_policy.FewestGpus", "+policy.name=other"],
     "'policy.name': 'other' is not the name of examples.my_policy.FewestGpus ('fewest_gpus')"),
]


@pytest.mark.parametrize("overrides,message", BAD_TARGETS, ids=[" ".join(c[0]) for c in BAD_TARGETS])
def test_bad_target_gets_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        build_run(composed(SMALL + overrides))
    text = str(err.value)
    assert message in text and "\n" not in text, text


# --- plug-ins that return invalid plans -------------------------------------------------------------------------

class _Fp16Base(PerTaskPolicy):
    """Valid: each task's first FP16 config with a saturation point, DP 2."""

    def plan_task(self, ctx, task):
        key = next(k for k in ctx.profiles.configs() if k.model == task.model and k.quant == "fp16"
                   and k.gpu in ctx.gpu_types and ctx.profiles.saturation_qps(k, task.workload, task.slo) > 0)
        return PoolPlan(task.name, key, 2)


class DpNegative(_Fp16Base):
    def plan_task(self, ctx, task):
        plan = super().plan_task(ctx, task)
        return PoolPlan(plan.task, plan.key, -1 if ctx.now_s > 0 else 1)  # valid first, invalid at the re-plan


class UnknownConfig(_Fp16Base):
    def plan_task(self, ctx, task):
        return PoolPlan(task.name, ConfigKey("b200", task.model, "fp16", 1), 1)


class WrongModel(_Fp16Base):
    def plan_task(self, ctx, task):
        plan = super().plan_task(ctx, task)
        other = next(k for k in ctx.profiles.configs() if k.model != task.model and k.gpu in ctx.gpu_types)
        return PoolPlan(task.name, other, 1) if task.name == "code" else plan


class TaskMissing(_Fp16Base):
    def plan(self, ctx):
        return Deployment(tuple(self.plan_task(ctx, t) for t in ctx.tasks if t.name != "code"))


class NotADeployment(Policy):
    def plan(self, ctx):
        return {"chat-s": 1}


INVALID_PLANS = [
    ("DpNegative", "returned an invalid plan at t=20 s: task 'chat-s': dp=-1, must be a whole number >= 0"),
    ("UnknownConfig", "task 'chat-s': config 'b200/llama2-13b/fp16/tp1' is not in the profile set"),
    ("WrongModel", "task 'code': config "),
    ("TaskMissing", "task(s) ['code'] missing"),
    ("NotADeployment", "got dict, not a sim.deployment.Deployment"),
]


@pytest.mark.parametrize("name,message", INVALID_PLANS, ids=[c[0] for c in INVALID_PLANS])
def test_invalid_plan_stops_with_one_line(tmp_path, name, message):
    with pytest.raises(ConfigError) as err:
        run(composed(SMALL + [f"policy._target_=test_plugins.{name}"]), tmp_path)
    text = str(err.value)
    assert f"(test_plugins.{name}) returned" in text and message in text and "\n" not in text, text


def test_valid_plugin_plan_runs(tmp_path):
    balanced(run(composed(SMALL + ["policy._target_=test_plugins._Fp16Base"]), tmp_path))


# --- a plug-in router sees the documented replica view ----------------------------------------------------------

class RecordingRouter:
    """Least-outstanding by the documented view, recording what it saw."""

    seen: list = []

    def pick(self, replicas, now_s):
        best = None
        for r in replicas:
            if not r.serving:
                continue
            r.sync(now_s)
            RecordingRouter.seen.append((now_s, r.instance_id, r.label, r.gpus, r.queued, r.running, r.outstanding,
                                         r.kv_used_tokens, r.kv_capacity_tokens, r.max_batch, r.next_s))
            if best is None or r.outstanding < best.outstanding:
                best = r
        return best


def test_plugin_router_gets_the_documented_view(tmp_path):
    RecordingRouter.seen = []
    summary = run(composed(SMALL + ["router._target_=test_plugins.RecordingRouter"]), tmp_path)
    balanced(summary)
    seen = pd.DataFrame(RecordingRouter.seen, columns=["now_s", "id", "label", "gpus", "queued", "running",
                                                       "outstanding", "kv_used", "kv_capacity", "max_batch", "next_s"])
    assert len(seen) >= summary["requests"]  # one look at every serving replica per request
    assert (seen.queued + seen.running == seen.outstanding).all()
    assert ((seen.kv_used >= 0) & (seen.kv_used <= seen.kv_capacity)).all()
    assert (seen.running <= seen.max_batch).all() and (seen.next_s >= seen.now_s).all()
    assert seen.running.max() > 0 and seen.kv_used.max() > 0  # it saw batches running, not an idle fleet
    assert seen.label.str.contains("/fp16/").all()


# --- UAQF: the winner follows the weights -----------------------------------------------------------------------

TASK = TaskSpec("chat", "m", "w", LatencySlo(1.0, 0.2), quality_min=55.0)


def test_uaqf_winner_flips_with_the_weights(tmp_path):
    # Hand-made profiles (tests/profile_fixtures.py), quality floor 55 drops W8A8KV8-INT. Speedup = saturation per GPU
    # over FP16 on the same GPU and TP: g1 W8A16-INT 5/4 = 1.25, g2 W4A16-INT 7/6 = 1.17, every FP16 1.0. Quality
    # loss: 1 and 3 points. Stability: the fixture's P50s are 0, so every SP is 0 (the term drops out).
    # Latency-critical (0.6, 0.2, 0.2): U(W8A16) = 0.6 - 0.2/3 = 0.53 beats W4A16 0.4 - 0.2 = 0.2 and FP16 0.
    # Accuracy-critical (0.1, 0.8, 0.1): U(W8A16) = 0.1 - 0.8/3 < 0 = U(FP16); among the FP16 configs the least
    # energy at 10 req/s: g2 TP1 (2 replicas at 5 req/s, 0.20 J).
    profiles = hand_made_profiles(tmp_path)
    ctx = PlanContext((TASK,), {"chat": 10.0}, profiles, ("g1", "g2"), 0.0)
    fast = UtilityAware(0.6, 0.2, 0.2).plan(ctx).for_task("chat")
    assert (fast.key, fast.dp) == (ConfigKey("g1", "m", "w8a16-int", 1), 3)  # ceil(10 / (5 * 0.9))
    careful = UtilityAware(0.1, 0.8, 0.1).plan(ctx).for_task("chat")
    assert (careful.key, careful.dp) == (ConfigKey("g2", "m", "fp16", 1), 2)
    ranked = UtilityAware(0.6, 0.2, 0.2).rank(ctx, TASK)
    assert ranked[0].utility == pytest.approx(0.6 - 0.2 / 3)
    assert {s.terms.key.quant for s in ranked} == {"fp16", "w8a16-int", "w4a16-int"}  # floor applied
    w4 = next(s.terms for s in ranked if s.terms.key.quant == "w4a16-int")
    assert (w4.speedup, w4.quality_loss, w4.baseline) == (pytest.approx(7 / 6), pytest.approx(3.0), "g2/m/fp16/tp1")


def test_uaqf_runs_from_its_config_group(tmp_path):
    summary = run(composed(SMALL + ["policy=uaqf"]), tmp_path)
    balanced(summary)
    assert summary["policy"] == "uaqf"


# --- shipped policies and routers unchanged ---------------------------------------------------------------------

# Digests of requests.parquet (arrival, first token, finish, instance, status, energy) and (finished, rejected,
# avg GPUs), computed with the code before plug-ins (commit 45cabae) on the same settings.
BEFORE = {
    "fp16_only/least_outstanding": ["d1c8a7309c1b11d1", 9826, 0, 8.0],
    "quality_first/least_outstanding": ["08aa66ba37bf5bae", 9826, 0, 6.268959883],
    "energy_first/round_robin": ["13b37c3ecc5fee2e", 9826, 0, 4.495999959],
    "slo_energy_optimal/least_outstanding": ["ba1297aa2c8b5ed8", 9826, 0, 5.162188033],
}
DIGEST = ["trace.duration_s=240", "trace.total_rate_qps=40", "cluster.replan_interval_s=60", "progress=false",
          "outputs.figures=false", "trace.arrival=diurnal", "trace.diurnal_period_s=240"]


@pytest.mark.parametrize("case", sorted(BEFORE))
def test_shipped_policies_give_the_results_they_gave_before(tmp_path, case):
    policy, router = case.split("/")
    summary = run(composed(DIGEST + [f"policy={policy}", f"router={router}"]), tmp_path)
    frame = pd.read_parquet(tmp_path / "requests.parquet")
    cols = ["arrival_s", "first_token_s", "finish_s", "instance", "status", "energy_j"]
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame[cols], index=False).values.tobytes()).hexdigest()[:16]
    assert [digest, summary["finished"], summary["rejected"], round(summary["avg_gpus"], 9)] == BEFORE[case]
    assert summary["policy"] == policy
    assert Path(tmp_path / "deployments.csv").exists()
