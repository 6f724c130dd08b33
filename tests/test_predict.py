"""Saturation prediction (calibrate.predict, paper §8.1), the random-length rows of the default profiles, the
incremental builder that writes them, and the predicted start of the saturation search."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from calibrate.predict import (
    XGBSaturationModel,
    cross_gpu_splits,
    evaluate,
    fit_from_simulated_runs,
    mape,
    paper_regime,
    predicted_saturation,
    random_splits,
    unseen_length_splits,
)
from calibrate.search import SearchSettings, find_saturation
from calibrate.sim_probe import SimulatedProbe
from profiles.build_default import RANDOM_LENGTH_SLO, RANDOM_LENGTH_WORKLOADS, build, roofline_configs, write_random_lengths
from profiles.profile_set import LatencySlo, ProfileSet, default_profile_path
from profiles.schema import ConfigKey
from traces.workloads import RANDOM_LENGTH_PAIRS, random_workload, random_workload_pair, workload_lengths

GPU_F = {"h100-80gb": 1.0, "a100-40gb": 0.45}
QUANT_F = {"fp16": 1.0, "w8a16-int": 1.3, "w4a16-int": 1.6, "w8a8-int": 1.8}
SIZES = {"llama2-7b": 6.7, "llama2-13b": 13.0, "codellama-34b": 33.7, "llama2-70b": 69.0}
NAMED = {"sharegpt": (331, 231), "humaneval": (193, 67), "newsqa": (806, 200)}


def synthetic() -> pd.DataFrame:
    """A known smooth saturation: 3000 x GPU x method x TP^0.8 / size / (1 + in/400) / (1 + out/100) req/s."""
    rows = []
    workloads = [(w, "named", *p) for w, p in NAMED.items()] + \
        [(random_workload(i, o), "random", i, o) for i, o in RANDOM_LENGTH_PAIRS]
    for (gpu, g), (quant, q), (model, size), tp in itertools.product(GPU_F.items(), QUANT_F.items(), SIZES.items(),
                                                                     (1, 2, 4, 8)):
        for w, kind, i, o in workloads:
            rows.append(dict(gpu=gpu, model=model, quant=quant, tp=tp, workload=w, kind=kind, model_size_b=size,
                             input_tokens=float(i), output_tokens=float(o), slo_ttft_s=1.0, slo_tpot_s=0.2,
                             saturation_qps=3000.0 * g * q * tp ** 0.8 / size / (1 + i / 400) / (1 + o / 100)))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def shipped() -> ProfileSet:
    return ProfileSet.load(default_profile_path())


# --- the predictor on a known function ------------------------------------------------------------------------


def test_xgboost_recovers_a_smooth_function_and_extrapolates_badly():
    data = synthetic()
    rand = next(s for s in random_splits(data, [0]) if s.name == "all data (8:2)")
    longest = next(s for s in unseen_length_splits(data) if s.name == "input 1024")
    results = {r.split.name: r.mape for r in evaluate(data, [rand, longest])}
    # interpolation within the grid: a few percent (measured 5.7 % raw, 2.6 % on log QPS)
    assert results["all data (8:2)"]["xgb"] < 9.0 and results["all data (8:2)"]["xgb-log"] < 5.0
    # the longest input never seen: trees cannot extrapolate (measured 57 % raw, 46 % log)
    assert results["input 1024"]["xgb"] > 40.0 and results["input 1024"]["xgb-log"] > 30.0
    assert results["input 1024"]["xgb"] > 5 * results["all data (8:2)"]["xgb"]


def test_xgboost_is_deterministic_for_a_seed():
    data = synthetic()
    order = np.random.default_rng(0).permutation(len(data))
    train, test = data.iloc[order[:2000]], data.iloc[order[2000:]]
    a = XGBSaturationModel(seed=3).fit(train).predict(test)
    assert np.array_equal(a, XGBSaturationModel(seed=3).fit(train).predict(test))
    assert not np.array_equal(a, XGBSaturationModel(seed=4).fit(train).predict(test))  # row subsampling is seeded
    assert mape(test["saturation_qps"].to_numpy(), a) < 10.0


# --- split schemes ---------------------------------------------------------------------------------------------


def test_random_splits_exclude_what_they_should():
    data = synthetic()
    splits = random_splits(data, [0, 1])
    by_name = {}
    for s in splits:
        by_name.setdefault(s.name, []).append(s)
        assert len(np.intersect1d(s.train, s.test)) == 0
    for s in by_name["without HumanEval"]:
        assert not (data.iloc[np.r_[s.train, s.test]]["workload"] == "humaneval").any()
    for s in by_name["H100 only"]:
        assert set(data.iloc[np.r_[s.train, s.test]]["gpu"]) == {"h100-80gb"}
    for s in by_name["random-length only"]:
        assert set(data.iloc[np.r_[s.train, s.test]]["kind"]) == {"random"}
    for s in by_name["H100 only, without HumanEval"]:
        rows = data.iloc[np.r_[s.train, s.test]]
        assert set(rows["gpu"]) == {"h100-80gb"} and "humaneval" not in set(rows["workload"])
    whole = by_name["all data (8:2)"]
    assert len(whole[0].train) + len(whole[0].test) == len(data)
    assert len(whole[0].test) == round(0.2 * len(data)) and len(by_name["all data (9:1)"][0].test) == round(0.1 * len(data))
    assert not np.array_equal(whole[0].test, whole[1].test)  # seeds differ
    again = random_splits(data, [0])[0]
    assert np.array_equal(again.test, whole[0].test)  # and repeat


def test_unseen_length_and_cross_gpu_splits_exclude_what_they_should():
    data = synthetic()
    for s in unseen_length_splits(data):
        column = "input_tokens" if s.scheme == "unseen-input" else "output_tokens"
        length = float(s.name.split()[-1])
        test, train = data.iloc[s.test], data.iloc[s.train]
        assert set(test["kind"]) == {"random"} and set(test[column]) == {length}
        assert not ((train["kind"] == "random") & (train[column] == length)).any()
        assert len(test) == len(data[(data["kind"] == "random") & (data[column] == length)])
    first, swap, with_random = cross_gpu_splits(data)[:3]
    test, train = data.iloc[first.test], data.iloc[first.train]
    assert set(test["gpu"]) == {"a100-40gb"} and set(test["workload"]) == {"sharegpt"}
    assert set(train.loc[train["gpu"] == "a100-40gb", "workload"]) == {"humaneval", "newsqa"}
    assert set(train["kind"]) == {"named"} and set(data.iloc[with_random.train]["kind"]) == {"named", "random"}
    assert set(data.iloc[swap.test]["workload"]) == {"humaneval", "newsqa"}
    assert set(data.iloc[swap.train].query("gpu == 'a100-40gb'")["workload"]) == {"sharegpt"}


def test_paper_regime_keeps_the_papers_three_sources():
    data = synthetic()
    regime = paper_regime(data)
    named, rand = regime[regime["kind"] == "named"], regime[regime["kind"] == "random"]
    assert set(named["gpu"]) == {"h100-80gb", "a100-40gb"}
    assert named.loc[named["gpu"] == "a100-40gb", "tp"].max() == 4
    assert set(map(tuple, rand[["gpu", "model", "tp"]].drop_duplicates().to_numpy())) == {("h100-80gb", "codellama-34b", 1)}
    assert len(rand) == len(QUANT_F) * 16


# --- the random-length rows of the default profiles ----------------------------------------------------------------


def test_default_profiles_have_the_random_length_rows(shipped):
    sat = shipped.saturation
    rand = sat[sat["workload"].map(lambda w: random_workload_pair(w) is not None)]
    configs = {(r.gpu, r.model, r.quant, int(r.tp)) for r in shipped.step_models.itertuples()}
    assert len(configs) == 606 and len(rand) == 606 * 16
    counts = rand.groupby(["gpu", "model", "quant", "tp"])["workload"].agg(lambda w: tuple(sorted(w)))
    assert set(counts.index) == configs and set(counts) == {tuple(sorted(RANDOM_LENGTH_WORKLOADS))}
    assert np.allclose(rand["slo_ttft_s"], RANDOM_LENGTH_SLO.ttft_s) and np.allclose(rand["slo_tpot_s"], RANDOM_LENGTH_SLO.tpot_s)
    assert (rand["saturation_qps"] > 0).all()
    assert set(rand["provenance"]) == {"derived"}
    assert rand["source"].str.contains("find_saturation").all() and rand["source"].str.contains("chat-S").all()
    means = shipped.workloads.set_index("workload")
    for w in RANDOM_LENGTH_WORKLOADS:
        i, o = random_workload_pair(w)
        assert means.loc[w, "mean_input_tokens"] == pytest.approx(i, rel=0.02)
        assert means.loc[w, "mean_output_tokens"] == pytest.approx(o, rel=0.02)
    assert shipped.manifest["random_length_workloads"]["slo"] == [1.0, 0.2]
    # the case-study rows are all still there
    assert len(sat) - len(rand) == 606 * 4


def test_random_length_saturation_is_monotone_in_length(shipped):
    """Longer outputs (or inputs) never raise saturation for the same config, beyond the search's resolution
    (rel_tol 0.02: a saturation is found to within 2 % of the next failing rate)."""
    sat = shipped.saturation
    rand = sat[sat["workload"].map(lambda w: random_workload_pair(w) is not None)].copy()
    rand[["inp", "out"]] = [random_workload_pair(w) for w in rand["workload"]]
    table = rand.set_index(["gpu", "model", "quant", "tp", "inp", "out"])["saturation_qps"]
    worst = 0.0
    for (gpu, model, quant, tp), group in rand.groupby(["gpu", "model", "quant", "tp"]):
        grid = group.pivot(index="inp", columns="out", values="saturation_qps").sort_index().sort_index(axis=1)
        values = grid.to_numpy()
        rises = [values[:, 1:] / values[:, :-1], values[1:, :] / values[:-1, :]]
        worst = max(worst, max(float(r.max()) for r in rises))
    assert worst <= 1.02 + 1e-9, worst
    # and the spread is real: the longest pair saturates far below the shortest on every config
    ratio = table.xs((1024, 512), level=("inp", "out")) / table.xs((128, 64), level=("inp", "out"))
    assert ratio.max() < 0.5


def test_incremental_builder_writes_what_the_full_build_writes(tmp_path):
    config = next(c for c in roofline_configs(("h100-80gb",)) if c[0] == ConfigKey("h100-80gb", "llama2-70b", "w4a16-int", 4))
    full = build(tmp_path / "full", [config], workers=1, name="t", description="one config")
    partial = tmp_path / "partial"
    shutil.copytree(full, partial)
    sat = pd.read_csv(partial / "saturation.csv")
    sat[sat["workload"].map(lambda w: random_workload_pair(w) is None)].to_csv(partial / "saturation.csv", index=False,
                                                                                float_format="%.10g")
    manifest = json.loads((partial / "manifest.json").read_text())
    del manifest["random_length_workloads"]
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    write_random_lengths(partial, workers=1, configs=[config])
    for name in ("saturation.csv", "workloads.csv", "manifest.json", "step_models.csv"):
        assert (partial / name).read_bytes() == (full / name).read_bytes(), name
    ProfileSet.load(partial)


# --- the step model fitted on a few fixed-concurrency runs -----------------------------------------------------------


def test_fit_runs_predictor_finds_the_saturation_of_a_default_config(shipped):
    key = ConfigKey("h100-80gb", "llama2-13b", "w8a8-fp", 1)
    fit = fit_from_simulated_runs(shipped.step(key))
    inp, out = workload_lengths("sharegpt").sample(3000, np.random.default_rng(0))
    pred = predicted_saturation(fit.step, fit.request_overhead_s, inp, out, LatencySlo(1.0, 0.2))
    assert pred == pytest.approx(shipped.saturation_qps(key, "sharegpt", LatencySlo(1.0, 0.2)), rel=0.05)


def test_predicted_start_takes_fewer_probes_on_the_simulated_instance(shipped):
    key = ConfigKey("a100-40gb", "llama2-7b", "fp16", 1)
    inp, out = workload_lengths("random-256-128").sample(3000, np.random.default_rng(0))
    probe = SimulatedProbe(shipped.step(key), inp, out, seed=0, max_requests=3000)
    fixed = find_saturation(probe, RANDOM_LENGTH_SLO, SearchSettings())
    for error in (0.0, 0.1, -0.3):
        started = find_saturation(probe, RANDOM_LENGTH_SLO, SearchSettings(), start_qps=fixed.saturation_qps * (1 + error))
        assert started.saturation_qps == pytest.approx(fixed.saturation_qps, rel=0.03)
        assert len(started.probes) < len(fixed.probes), (error, len(started.probes), len(fixed.probes))
    # no prediction: the fixed search, unchanged
    assert [p.qps for p in find_saturation(probe, RANDOM_LENGTH_SLO, SearchSettings(), start_qps=None).probes] == \
        [p.qps for p in fixed.probes]


# --- qfleet-calibrate on the stand-in: a predicted start, fewer probes, still resumable ----------------------------

FEW_FIT_RUNS = {"prefill_input_tokens": [16, 64, 256, 1024, 2040], "prefill_output_tokens": 4, "prefill_requests": 3,
                "decode_concurrency": [1, 8, 32], "decode_input_tokens": [64, 256], "decode_output_tokens": 32,
                "decode_rounds": 2}


def test_predicted_start_reduces_probes_on_the_standin_and_stays_resumable(tmp_path):
    from calibrate.db import ResultsDB
    from calibrate.engines import make_handler
    from calibrate.coordinator import run_plan
    from calibrate.plan import plan_from_mapping, validate_plan
    from test_calibrate_run import SLO, WORKLOAD, standin_plan

    # a fixed start of 8 req/s (not the default 1: a burst at 1 req/s lasts min_requests seconds) keeps this short
    search = {"start_qps": 8.0, "rel_tol": 0.05, "min_qps": 0.5, "max_qps": 500.0}
    burst = {"burst_s": 2.0, "min_requests": 20, "max_requests": 200, "seed": 0}
    probes, found = {}, {}
    for start in ("fixed", "predicted"):
        (tmp_path / start).mkdir()
        data = standin_plan(tmp_path / start, f"standin-{start}", sweep_fractions=[1.0], burst=burst,
                            search={**search, "start": start},
                            fit=FEW_FIT_RUNS if start == "predicted" else {"enabled": False})
        plan = plan_from_mapping(data)
        handler = make_handler(plan.engine)
        validate_plan(plan, handler)
        lines: list[str] = []
        with ResultsDB(plan.results_db, plan.name) as db:
            report = run_plan(plan, handler, db, log=lines.append, command=start)
            assert report.ok, lines
            (sat,) = db.saturations("standin-fp16")
            probes[start], found[start] = sat["probes"], sat["saturation_qps"]
            if start == "predicted":
                predicted = db.info("standin-fp16")[f"predicted_saturation/{WORKLOAD}/{SLO['ttft_s']:g}/{SLO['tpot_s']:g}"]
                assert predicted["saturation_qps"] == pytest.approx(found["fixed"], rel=0.15)
                assert any("predicted saturation" in line for line in lines)
                # the fit runs were measured before the search
                order = [p.key.phase for p in sorted(db.points(status="done"), key=lambda p: p.id)]
                assert order.index("search") > max(i for i, ph in enumerate(order) if ph == "fit")
                again = run_plan(plan, handler, db, log=lambda line: None, command="rerun")
                assert again.ok and again.measured_points == 0 and again.launches == 0
                (sat_again,) = db.saturations("standin-fp16")
                assert sat_again["probes"] == probes["predicted"]
    assert found["predicted"] == pytest.approx(found["fixed"], rel=0.1)
    assert probes["predicted"] <= 4 < 6 <= probes["fixed"], probes  # measured: 2 and 8


def test_predicted_start_needs_the_fit(tmp_path):
    from calibrate.engines import make_handler
    from calibrate.plan import plan_from_mapping, plan_problems
    from test_calibrate_run import standin_plan

    plan = plan_from_mapping(standin_plan(tmp_path, "no-fit", search={"start": "predicted"}))
    assert any("plan.search.start" in p and "fit.enabled" in p for p in plan_problems(plan, make_handler(plan.engine)))
    from calibrate.plan import PlanError
    with pytest.raises(PlanError, match="search start must be one of"):
        plan_from_mapping(standin_plan(tmp_path, "bad", search={"start": "guess"}))


def test_random_length_workloads_draw_around_their_pair():
    small, large = workload_lengths("random-256-64"), workload_lengths("random-512-128")
    inp, out = small.sample(20_000, np.random.default_rng(1))
    assert (inp.min(), inp.max(), out.min(), out.max()) == (192, 320, 48, 80)
    assert inp.mean() == pytest.approx(256, rel=0.01) and out.mean() == pytest.approx(64, rel=0.01)
    big_in, big_out = large.sample(20_000, np.random.default_rng(1))
    assert (big_in >= inp).all() and (big_out >= out).all()  # common random numbers: longer targets, longer requests
    assert "assumption" in small.describe() and "+-25%" in small.describe()
    with pytest.raises(ValueError, match="max_total_tokens"):
        workload_lengths("random-3500-500")
