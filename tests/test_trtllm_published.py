"""The standing comparison with NVIDIA's published TensorRT-LLM throughput, and the engine facts it rests on."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from profiles.catalog import GPUS, MODELS, QUANTS, engine_weight_fraction, kv_capacity_tokens, unsupported_reason
from profiles.engine_settings import PAPER_CASE_STUDY, EngineSettings, EngineSettingsError, lookup_engine_settings
from profiles.kernel_step_model import IterationComposer
from profiles.kernel_tables import KernelTables
from profiles.step_model import StepModel

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("trtllm_published", ROOT / "benchmarks" / "trtllm_published.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["trtllm_published"] = module
    spec.loader.exec_module(module)
    return module


bench = _bench()


def _constant_step(iteration_s: float, **capacity) -> StepModel:
    """Every iteration takes ``iteration_s``, whatever it holds."""
    values = dict(overhead_s=iteration_s, per_seq_s=0.0, per_token_s=0.0, weights_s=0.0, flop_token_s=0.0,
                  per_kv_token_s=0.0, per_prefill_token_s=0.0, prefill_attn_s=0.0, idle_w=100.0, active_w=200.0,
                  flop_token_j=0.0, per_kv_token_j=0.0, weights_j=0.0, max_power_w=700.0,
                  kv_capacity_tokens=10**7, max_batch=10**5, max_num_tokens=10**7)
    values.update(capacity)
    return StepModel(**values)


def test_shipped_rows_load_with_their_settings():
    rows = bench.load_published()
    assert len(rows) == 142
    assert set(rows["gpu"]) == {"h200-141gb", "h100-80gb", "a100-80gb"}
    assert set(rows["model"]) == {"llama2-7b", "llama2-70b"}
    # one known cell per column, as transcribed
    cell = rows[(rows.model == "llama2-70b") & (rows.gpu == "h100-80gb") & (rows.precision == "fp8") & (rows.tp == 8)
                & (rows.input_tokens == 128) & (rows.output_tokens == 128)]
    assert float(cell["output_tokens_per_s"].iloc[0]) == pytest.approx(16384.83)


@pytest.mark.parametrize("column, value, message", [
    ("gpu", "b200", "field 'gpu': unknown GPU 'b200'"),
    ("precision", "int4", "field 'precision': 'int4' is not one of"),
    ("output_tokens_per_s", "-3", "field 'output_tokens_per_s': must be a positive number"),
    ("input_tokens", "777", "length pair 777/128 has no request count"),
])
def test_bad_published_rows_name_file_row_and_field(tmp_path, column, value, message):
    rows = bench.load_published().head(3).astype(str)
    rows.loc[1, column] = value
    if column == "input_tokens":
        rows.loc[1, "output_tokens"] = "128"
    path = tmp_path / "rows.csv"
    rows.to_csv(path, index=False)
    with pytest.raises(bench.PublishedDataError) as err:
        bench.load_published(path)
    assert str(path) in str(err.value) and "row 3" in str(err.value) and message in str(err.value)


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "rows.csv"
    bench.load_published().drop(columns=["tp"]).to_csv(path, index=False)
    with pytest.raises(bench.PublishedDataError, match="missing column"):
        bench.load_published(path)


def test_offline_throughput_of_a_constant_iteration_is_batch_over_time():
    """All N requests prefill in one iteration and decode together: N x O tokens in O iterations."""
    tokens_per_s, rejected = bench.offline_throughput(_constant_step(0.01), 128, 64, 500)
    assert rejected == 0
    assert tokens_per_s == pytest.approx(500 / 0.01)


def test_offline_throughput_is_capped_by_max_batch():
    """At most B sequences run: N requests finish in ceil(N / B) waves of O iterations."""
    tokens_per_s, _ = bench.offline_throughput(_constant_step(0.01, max_batch=100), 128, 64, 500)
    assert tokens_per_s == pytest.approx(500 * 64 / (5 * 64 * 0.01))


def test_bench_settings_follow_trtllm_bench_build():
    s = bench.bench_settings("llama2-70b", 4, 128, 4096)  # sequence length 4,224 has its own entry
    assert (s.max_batch, s.max_num_tokens, s.chunked_context) == (256, 8192, True)
    s = bench.bench_settings("llama2-70b", 4, 1000, 1000)
    assert (s.max_batch, s.max_num_tokens) == (4096, 8192)
    s = bench.bench_settings("llama2-70b", 1, 128, 128)  # no entry: BuildConfig defaults, labelled
    assert (s.max_batch, s.max_num_tokens) == (2048, 8192) and "assumption" in s.source
    assert s.kv_cache_free_fraction == pytest.approx(0.90)


def test_targets_name_the_misses():
    frame = pd.DataFrame({"status": ["ok"] * 4 + ["rejected"], "split": ["fit", "fit", "held-out", "held-out", "fit"],
                          "tp": [1, 8, 1, 8, 2], "ratio": [1.0, 0.7, 1.05, 0.8, float("nan")]})
    met = {t.name.split(" (")[0]: t for t in bench.targets(frame)}
    assert met["held-out"].value == pytest.approx(0.125) and not met["held-out"].met
    assert met["lowest TP median ratio"].value == pytest.approx(0.75) and not met["lowest TP median ratio"].met
    assert met["rows with rejected requests"].value == 1


def test_allreduce_is_looked_up_by_element_count():
    """aiconfigurator's custom all-reduce table is keyed by elements (tokens x hidden), not bytes."""
    h100 = KernelTables.load("h100_sxm", extrapolate=True)
    model = MODELS["llama2-70b"]
    comp = IterationComposer(h100, KernelTables.load("a100_sxm", extrapolate=True), h100, GPUS["h100-80gb"], model,
                             QUANTS["w8a8kv8-fp"], 8)
    tokens = 512
    assert comp.allreduce_s(tokens) == pytest.approx(2 * model.layers * h100.allreduce_s(8, tokens * model.hidden))
    assert comp.allreduce_s(tokens) < 2 * model.layers * h100.allreduce_s(8, 2 * tokens * model.hidden)


def test_a100_80gb_runs_on_its_own_measured_kernels():
    tables = {s: KernelTables.load(s, extrapolate=True) for s in ("a100_sxm", "h100_sxm")}
    args = (tables["a100_sxm"], tables["a100_sxm"], tables["h100_sxm"])
    big = IterationComposer(*args, GPUS["a100-80gb"], MODELS["llama2-13b"], QUANTS["fp16"], 1)
    small = IterationComposer(*args, GPUS["a100-40gb"], MODELS["llama2-13b"], QUANTS["fp16"], 1)
    assert "a100-80gb-kernels" not in big.choice.rules
    assert "a100-80gb-kernels" in small.choice.rules
    m, q = MODELS["llama2-13b"], QUANTS["fp16"]
    assert kv_capacity_tokens(GPUS["a100-80gb"], m, q, 1) > 4 * kv_capacity_tokens(GPUS["a100-40gb"], m, q, 1)


def test_kv_capacity_scales_with_the_free_memory_fraction():
    g, m, q = GPUS["h100-80gb"], MODELS["llama2-7b"], QUANTS["fp16"]
    full = kv_capacity_tokens(g, m, q, 1)
    assert kv_capacity_tokens(g, m, q, 1, 0.9) == pytest.approx(0.9 * full, abs=1)


def test_engine_can_load_what_planning_would_not_deploy():
    g, m, q = GPUS["h100-80gb"], MODELS["llama2-70b"], QUANTS["fp16"]
    assert unsupported_reason(g, m, q, 2) is not None  # 69 GB of weights per GPU: over the 85 % planning rule
    assert unsupported_reason(g, m, q, 2, engine_weight_fraction(g)) is None
    assert unsupported_reason(g, m, q, 1, engine_weight_fraction(g)) is not None  # 138 GB never loads


@pytest.mark.parametrize("field, value", [("max_batch", 0), ("max_num_tokens", 2.5), ("kv_cache_free_fraction", 0.0),
                                          ("kv_cache_free_fraction", 1.5), ("kv_cache_free_fraction", float("nan")),
                                          ("chunked_context", 1)])
def test_engine_settings_reject_values_no_engine_takes(field, value):
    with pytest.raises(EngineSettingsError, match=field):
        replace(PAPER_CASE_STUDY, **{field: value})


def test_engine_settings_overrides_are_recorded_and_checked():
    s = lookup_engine_settings("trtllm_serve").with_overrides(chunked_context=True)
    assert s.chunked_context and "chunked_context=True" in s.name and "overridden" in s.source
    with pytest.raises(EngineSettingsError, match="no field"):
        PAPER_CASE_STUDY.with_overrides(max_batch_size=4)
    with pytest.raises(EngineSettingsError, match="unknown engine settings"):
        lookup_engine_settings("vllm")
    assert isinstance(PAPER_CASE_STUDY, EngineSettings)
