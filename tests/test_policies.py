"""Each policy picks what its definition says, on a hand-made profile with known answers."""

from __future__ import annotations

import pytest

from profile_fixtures import hand_made_profiles
from profiles.profile_set import LatencySlo
from profiles.schema import ConfigKey
from sim.deployment import PlanContext, TaskSpec
from sim.planning import NoFeasibleConfig, replicas_for
from sim.policies import EnergyFirst, Fp16Only, QualityFirst, SloEnergyOptimal, make_policy

TASK = TaskSpec("chat", "m", "w", LatencySlo(1.0, 0.2), quality_min=55.0)


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    return hand_made_profiles(tmp_path_factory.mktemp("profiles"))


def plan(policy, profiles, load=10.0, gpus=("g1", "g2")):
    return policy.plan(PlanContext((TASK,), {"chat": load}, profiles, gpus, 0.0)).for_task("chat")


def test_replicas_is_ceil_of_load_over_saturation():
    assert replicas_for(10.0, 4.0) == 3
    assert replicas_for(8.0, 4.0) == 2
    assert replicas_for(0.0, 4.0) == 1
    assert replicas_for(10.0, 6.0, headroom=0.9) == 2
    assert replicas_for(11.0, 6.0, headroom=0.9) == 3


def test_fp16_only_picks_energy_optimal_gpu_dp_tp_at_per_replica_load(profiles):
    # g1 tp1: dp 3 at 0.30 J; g1 tp2: dp 2, 5 req/s each -> 0.22 J (0.15 J only at saturation);
    # g2 tp1: dp 2 at 0.20 J -> the energy-optimal (GPU, DP, TP).
    p = plan(Fp16Only(), profiles)
    assert (p.key, p.dp) == (ConfigKey("g2", "m", "fp16", 1), 2)
    assert p.predicted_energy_per_output_token_j == pytest.approx(0.20)
    # Restricted to g1, tp2's 0.22 J beats tp1's 0.30 J.
    p = plan(Fp16Only(), profiles, gpus=("g1",))
    assert (p.key, p.dp) == (ConfigKey("g1", "m", "fp16", 2), 2)


def test_quality_first_takes_best_quantized_method_then_energy_optimal(profiles):
    p = plan(QualityFirst(), profiles)
    assert p.key == ConfigKey("g1", "m", "w8a16-int", 1)  # 59 beats 57 and 50.48; FP16 is not a method
    assert p.dp == 2 and p.quality == 59.0


def test_energy_first_ignores_quality(profiles):
    p = plan(EnergyFirst(), profiles)
    assert p.key == ConfigKey("g1", "m", "w8a8kv8-int", 1)  # 0.10 J at saturation, quality 50.48 < 55
    assert p.dp == 2  # ceil(10 / 8)


def test_slo_energy_optimal_respects_quality_floor_and_headroom(profiles):
    p = plan(SloEnergyOptimal(headroom=0.9), profiles)
    assert p.key == ConfigKey("g2", "m", "w4a16-int", 1)  # cheapest with quality >= 55
    assert p.dp == 2  # ceil(10 / (7 * 0.9))
    p = plan(SloEnergyOptimal(headroom=0.9), profiles, load=12.6)
    assert p.dp == 2
    p = plan(SloEnergyOptimal(headroom=0.9), profiles, load=12.7)
    assert p.dp == 3


def test_no_feasible_config_is_a_clear_error(profiles):
    strict = TaskSpec("chat", "m", "w", LatencySlo(1.0, 0.2), quality_min=99.0)
    with pytest.raises(NoFeasibleConfig, match="quality floor 99"):
        SloEnergyOptimal().plan(PlanContext((strict,), {"chat": 1.0}, profiles, ("g1", "g2"), 0.0))


def test_unknown_policy_is_named():
    with pytest.raises(ValueError, match="policy.name='greedy'"):
        make_policy("greedy")
