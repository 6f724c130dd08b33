"""§8.2 energy-optimal (quant, GPU, TP, DP): DP = ceil(x / x_s), the known winner, and the switch points where a
second replica makes another config cheaper, on a hand-built profile set (tests/profile_fixtures.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from experiments import dp_tp
from experiments.dp_tp import DpTpTask, plan, resolve_tasks
from profile_fixtures import DP_TP_HAND, DP_TP_QPS, DP_TP_TOKENS, dp_tp_energy_j, dp_tp_profiles
from profiles.profile_set import LatencySlo, ProfileSet
from profiles.schema import ConfigKey

ROOT = Path(__file__).resolve().parent.parent
A = ("g1", "m", "fp16", 1)
B = ("g2", "m", "fp16", 1)
TASK = DpTpTask("t", "m", "w", LatencySlo(1.0, 0.2), 50.0)


@pytest.fixture(scope="module")
def hand(tmp_path_factory) -> ProfileSet:
    return dp_tp_profiles(tmp_path_factory.mktemp("dp_tp"))


@pytest.fixture(scope="module")
def result(hand):
    return plan(hand, [TASK], max_instances=1.5, points=60)[0]


def test_dp_is_ceil_of_load_over_saturation_and_energy_is_the_curve_at_the_per_replica_load(hand, result):
    grid = dp_tp.grid_frame([result])
    assert len(grid) == 60 and grid["load_qps"].max() == pytest.approx(30.0)
    for row in grid.itertuples(index=False):
        config = (row.gpu, "m", row.quant, row.tp)
        sat = DP_TP_HAND[config][2]
        assert row.dp == max(1, math.ceil(row.load_qps / sat - 1e-9))
        assert row.gpus == row.dp * row.tp
        # the profile set's own look-up at x / DP (interpolated between curve points)
        assert row.energy_per_token_j == pytest.approx(
            hand.energy_per_token_j(ConfigKey(*config), "w", row.load_qps / row.dp), rel=1e-12)
        if row.load_qps / row.dp in DP_TP_QPS:
            assert row.energy_per_token_j == pytest.approx(dp_tp_energy_j(config, row.load_qps / row.dp))
        # the whole pool's idle floor, DP x idle_w, over its energy
        idle = DP_TP_HAND[config][0] * row.dp
        assert row.idle_share == pytest.approx(idle / (row.load_qps * DP_TP_TOKENS * row.energy_per_token_j))
        assert row.pool_power_w == pytest.approx(row.energy_per_token_j * row.load_qps * DP_TP_TOKENS)
    # the quality floor (50) keeps out the cheapest config of all (W4A16-INT, 40)
    assert "w4a16-int" not in set(grid["quant"]) and result.excluded == {"below the quality floor": 1}


def test_known_winners_and_the_switch_where_a_second_replica_makes_another_config_cheaper(result):
    def best_at(x):
        return min(result.points, key=lambda p: abs(p.load_qps - x))

    p = best_at(8.0)
    assert (p.best.key, p.best.dp) == (ConfigKey(*A), 1)
    assert p.second.key == ConfigKey(*B)
    assert p.best.energy_per_token_j == pytest.approx(100 / (p.load_qps * 200) + 0.05)
    # A needs DP2 above its saturation 10 req/s: one replica of B is cheaper there
    p = best_at(12.0)
    assert (p.best.key, p.best.dp) == (ConfigKey(*B), 1)
    # next best: one TP2 replica of W8A8-INT (200 W idle), 0.7 % dearer; A at DP2 (0.133 J) comes after it
    assert (p.second.key, p.second.dp) == (ConfigKey("g1", "m", "w8a8-int", 2), 1)
    assert p.second.energy_per_token_j / p.best.energy_per_token_j - 1 == pytest.approx(0.1233333 / 0.1225 - 1, rel=1e-4)
    # above 20 req/s B needs DP2 and three replicas of A are cheaper
    p = best_at(25.0)
    assert (p.best.key, p.best.dp) == (ConfigKey(*A), 3)
    first, second = result.switches[:2]
    assert first.load_qps == pytest.approx(10.0, abs=1e-4)
    assert first.before == "g1 fp16 TP1 x DP1" and first.after == "g2 fp16 TP1 x DP1"
    assert "would need DP2" in first.why
    assert second.load_qps == pytest.approx(20.0, abs=1e-4)
    assert (second.before, second.after) == ("g2 fp16 TP1 x DP1", "g1 fp16 TP1 x DP3")
    # FP16 is the only method above the floor besides W8A8-INT TP2, so the optimum is FP16: no saving
    assert p.fp16 is not None and p.fp16.key == p.best.key


def test_segments_and_markdown_say_where_each_config_wins_and_by_how_much(hand, result):
    seg = dp_tp.segments_frame([result])
    assert list(seg["from_qps"][:3]) == pytest.approx([0.0, 10.0, 20.0], abs=1e-4)
    assert list(seg["gpu"][:3]) == ["g1", "g2", "g1"] and list(seg["dp"][:3]) == [1, 1, 3]
    assert (seg["margin_vs_second_min_pct"] >= 0).all()
    text = dp_tp.markdown([result], hand, "hand-built", None, 1.5)
    assert "Energy counted:" in text and "idle power between iterations" in text
    assert "| 0-10 | g1 fp16 TP1 | 1 | 1 |" in text
    assert "10 req/s g1 fp16 TP1 x DP1 -> g2 fp16 TP1 x DP1" in text


def test_the_command_writes_tables_and_figure(hand, tmp_path, capsys):
    assert dp_tp.main(["--profiles", str(hand.path), "--out", str(tmp_path), "--tasks", "workloads",
                       "--max-instances", "2", "--points", "40"]) == 0
    for name in ("dp_tp.csv", "dp_tp_segments.csv", "dp_tp.md", "dp_tp.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    grid = pd.read_csv(tmp_path / "dp_tp.csv")
    # per-workload task: no quality floor, so W4A16-INT (cheapest) wins up to its saturation
    assert set(grid["task"]) == {"w/m"} and grid["quant"].iloc[0] == "w4a16-int"
    assert not list(tmp_path.glob(".*tmp*"))


def test_the_calibrated_h200_set_with_one_config_plans_gracefully(tmp_path):
    profiles = ProfileSet.load(ROOT / "profiles/measured/transformers_h200_distinct/profile")
    tasks, where = resolve_tasks(profiles, "auto")
    assert len(tasks) == 1 and "no case-study task" in where
    (r,) = plan(profiles, tasks, points=20)
    assert all(p.second is None and p.fp16.key == p.best.key for p in r.points)
    assert [s.why for s in r.switches][0].endswith("(saturation 7.75 req/s per replica)")
    paths = dp_tp.write_outputs([r], profiles, tmp_path, where, None, 4.0)
    assert "| - | - | 0.0 % |" in paths["markdown"].read_text()


@pytest.mark.parametrize("args,message", [
    (["--profiles", "/no/such/profiles"], "dp_tp: /no/such/profiles: profile set folder not found"),
    (["--gpus", "b300"], "dp_tp: gpus: b300 not in the profile set"),
    (["--max-instances", "0"], "dp_tp: max_instances must be a finite number > 0, got 0.0"),
    (["--tasks", "case_study", "--slo", "nosuch"], "dp_tp: experiments/conf/slo/nosuch.yaml not found (choices: "),
])
def test_bad_inputs_get_one_line(hand, tmp_path, capsys, args, message):
    if args[0] != "--profiles":
        args = ["--profiles", str(hand.path), *args]
    assert dp_tp.main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(message), err
