"""Engine settings in qfleet-sim: applying them to step models, the `engine` config group and per-pool overrides,
clear errors, the summary's record, a chunked-context cluster against the per-iteration reference, and the
default (profile) settings leaving the case study bit-identical."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module

import sim.main  # registers the schema  # noqa: F401
from conftest import make_step
from profiles.engine_settings import (PAPER_CASE_STUDY, PRESETS, TRTLLM_SERVE, EngineOverrides, EngineSettingsError,
                                      apply_engine_settings, profile_kv_fraction)
from profiles.profile_set import ProfileSet, default_profile_path
from sim.cluster import ClusterSettings, simulate
from sim.config import ConfigError, build_run
from sim.main import run
from sim.metrics import requests_frame, summarize
from sim.policies import SloEnergyOptimal
from test_cluster import TASKS, small_trace
from test_prefix_cache import BEFORE_PREFIX_CACHING, _digest
from test_speed_equivalence import _assert_matches_reference

SMALL = ["trace.duration_s=60", "trace.total_rate_qps=20", "progress=false"]
CONF = Path(__file__).resolve().parents[1] / "experiments" / "conf" / "engine"


@pytest.fixture(scope="module")
def profiles() -> ProfileSet:
    return ProfileSet.load(default_profile_path())


def composed(overrides):
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


# --- applying settings to a step model -----------------------------------------------------------------------------

def test_apply_replaces_limits_sets_the_flag_and_scales_kv_by_the_fraction_ratio():
    step = make_step(kv_capacity_tokens=100_000, max_batch=32, max_num_tokens=4096)
    out = apply_engine_settings(step, TRTLLM_SERVE.with_overrides(chunked_context=True), profile_fraction=0.75)
    assert (out.max_batch, out.max_num_tokens, out.chunked_context) == (2048, 8192, 1)
    assert out.kv_capacity_tokens == 120_000  # 100,000 x 0.9 / 0.75
    assert dataclasses.replace(out, max_batch=32, max_num_tokens=4096, chunked_context=0,
                               kv_capacity_tokens=100_000) == step  # nothing else changes
    # Overrides keep every field they do not set; none at all, or the same fraction, return the step itself.
    only = apply_engine_settings(step, EngineOverrides(chunked_context=True), 0.9)
    assert only == dataclasses.replace(step, chunked_context=1)
    assert apply_engine_settings(step, None, 0.5) is step
    assert apply_engine_settings(step, EngineOverrides(), 0.5) is step
    assert apply_engine_settings(step, EngineOverrides(kv_cache_free_fraction=0.9), 0.9).kv_capacity_tokens == 100_000
    assert apply_engine_settings(step, EngineOverrides(kv_cache_free_fraction=0.5), 1.0).kv_capacity_tokens == 50_000


def test_apply_names_the_field_that_breaks():
    step = make_step(max_batch=32, max_num_tokens=4096)
    with pytest.raises(EngineSettingsError, match="'max_num_tokens' must be >= max_batch"):
        apply_engine_settings(step, EngineOverrides(chunked_context=True, max_num_tokens=16), 1.0)
    for bad, field in ((dict(max_batch=0), "max_batch"), (dict(kv_cache_free_fraction=1.5), "kv_cache_free_fraction"),
                       (dict(chunked_context=1), "chunked_context"), (dict(max_num_tokens=2.5), "max_num_tokens")):
        with pytest.raises(EngineSettingsError, match=field):
            EngineOverrides(**bad)


def test_profile_fraction_comes_from_the_manifest():
    assert profile_kv_fraction({}) == 1.0
    assert profile_kv_fraction({"engine_settings": {"kv_cache_free_fraction": 0.9}}) == 0.9
    assert profile_kv_fraction({"engine_settings": {"max_batch": 256}}) == 1.0
    with pytest.raises(EngineSettingsError, match="engine_settings.kv_cache_free_fraction"):
        profile_kv_fraction({"engine_settings": {"kv_cache_free_fraction": 0}}, "m.json")


# --- the config group ----------------------------------------------------------------------------------------------

def test_engine_group_presets_match_profiles_engine_settings():
    files = {p.stem for p in CONF.glob("*.yaml")}
    assert files == {"profile", *PRESETS}
    for name in PRESETS:
        assert composed([f"engine={name}"]).engine.preset == name
    cfg = composed([])
    assert cfg.engine.preset is None and all(t.engine is None for t in build_run(composed(SMALL)).tasks)


def test_run_and_pool_settings_resolve_per_pool():
    spec = build_run(composed(SMALL + ["engine=trtllm_serve", "engine.kv_cache_free_fraction=0.8",
                                       "cluster.pools.code.engine.chunked_context=true",
                                       "cluster.pools.code.engine.max_num_tokens=4096",
                                       "cluster.pools.chat-r.engine.preset=paper_case_study"]))
    engines = {t.name: t.engine for t in spec.tasks}
    assert engines["chat-s"] == TRTLLM_SERVE.with_overrides(kv_cache_free_fraction=0.8)
    assert engines["code"].fields() == dict(max_batch=2048, max_num_tokens=4096, kv_cache_free_fraction=0.8,
                                            chunked_context=True, scheduler="guaranteed_no_evict")
    assert engines["chat-r"].fields() == dict(PAPER_CASE_STUDY.fields(), kv_cache_free_fraction=0.8)
    profile_only = build_run(composed(SMALL + ["cluster.pools.code.engine.chunked_context=true"]))
    assert {t.name: t.engine for t in profile_only.tasks} == {
        "chat-s": None, "chat-r": None, "code": EngineOverrides(chunked_context=True), "summarization": None}


@pytest.mark.parametrize("override,key", [
    ("engine.max_batch=0", "engine.max_batch"),
    ("engine.kv_cache_free_fraction=1.5", "engine.kv_cache_free_fraction"),
    ("engine.preset=vllm", "engine.preset"),
    ("cluster.pools.code.engine.max_num_tokens=-3", "cluster.pools.code.engine.max_num_tokens"),
    ("cluster.pools.code.engine.preset=nope", "cluster.pools.code.engine.preset"),
])
def test_wrong_engine_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        build_run(composed(SMALL + [override]))


def test_chunked_context_below_the_batch_limit_fails_at_config_time():
    with pytest.raises(ConfigError, match=r"config key 'cluster.pools.code.engine'.*'max_num_tokens' must be >= "):
        build_run(composed(SMALL + ["cluster.pools.code.engine.chunked_context=true",
                                    "cluster.pools.code.engine.max_num_tokens=100"]))


# --- runs ------------------------------------------------------------------------------------------------------------

def test_profile_settings_and_an_identical_preset_leave_the_case_study_bit_identical(profiles):
    """The default profile set is built under paper_case_study (256 / 8,192 / fraction 1.0, no chunking): running
    every pool explicitly under that preset is the engine of before, bit for bit."""
    trace = small_trace(seed=5, rate=60.0, duration=300.0, arrival="diurnal")
    settings = ClusterSettings(replan_interval_s=60.0, engine_start_s=30.0, max_queue=4)
    for engine in (None, PAPER_CASE_STUDY):
        tasks = tuple(dataclasses.replace(t, engine=engine) for t in TASKS)
        assert _digest(simulate(trace, tasks, SloEnergyOptimal(0.9), profiles, settings)) == BEFORE_PREFIX_CACHING


@pytest.mark.parametrize("router", ["least_outstanding", "round_robin"])
def test_chunked_context_in_a_cluster_matches_the_per_iteration_reference(profiles, router):
    """Every pool chunks its prompts under a 512-token budget (so most prompts span iterations), with re-planning."""
    engine = EngineOverrides(chunked_context=True, max_num_tokens=512, max_batch=128)
    tasks = tuple(dataclasses.replace(t, engine=engine) for t in TASKS)
    trace = small_trace(seed=7, rate=60.0, duration=600.0, arrival="diurnal")
    settings = ClusterSettings(replan_interval_s=60.0, engine_start_s=30.0, router=router)
    result = simulate(trace, tasks, SloEnergyOptimal(0.9), profiles, settings)
    assert all(inst.step.chunked_context == 1 and inst.step.max_num_tokens == 512 for inst in result.instances)
    assert (np.asarray(result.requests.input_tokens) > 512).any()
    _assert_matches_reference(result)
    frame = requests_frame(result)
    assert frame.energy_j.sum() == pytest.approx(summarize(result, frame)["busy_energy_j"], rel=1e-9)


def test_summary_records_each_pools_engine_settings(tmp_path):
    cfg = composed(SMALL + ["outputs.figures=false", "cluster.replan_interval_s=null",
                            "cluster.pools.code.engine.chunked_context=true"])
    run(cfg, tmp_path)
    engine = json.loads((tmp_path / "summary.json").read_text())["engine"]
    assert set(engine) == {"chat-s", "chat-r", "code", "summarization"}
    assert engine["chat-s"]["settings"] == "profile" and engine["code"]["settings"] == "profile[chunked_context=True]"
    assert engine["code"]["chunked_context"] is True
    for task, entry in engine.items():
        assert entry["configs"], task
        for limits in entry["configs"].values():
            assert limits["chunked_context"] is (task == "code")
            assert limits["max_batch"] == 256 and limits["max_num_tokens"] == 8192
