"""Kernel-table look-ups, composition of iterations, the fitted step models and the power fit."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from profiles.catalog import GPUS, MODELS, QUANTS
from profiles.kernel_step_model import IterationComposer, kernel_choice, kernel_step_model, observations
from profiles.kernel_tables import KernelTables, OutOfGridError, tables_root
from profiles.power_model import derive_power_model, fit_power_model


@pytest.fixture(scope="module")
def h100():
    return KernelTables.load("h100_sxm")


@pytest.fixture(scope="module")
def a100():
    return KernelTables.load("a100_sxm")


def test_tables_carry_their_provenance(h100, a100):
    assert h100.meta["framework_version"] == "1.3.0rc20" and "H100" in h100.meta["device"]
    assert a100.meta["framework_version"] == "1.0.0" and "A100" in a100.meta["device"]
    assert set(a100.gemm) == {"bfloat16", "int8_wo", "int4_wo", "sq"}
    assert set(h100.gemm) == {"bfloat16", "fp8"}
    assert a100.has_kv_dtype("bfloat16") and not a100.has_kv_dtype("fp8") and h100.has_kv_dtype("fp8")
    assert (tables_root() / "LICENSE").read_text().count("Apache License") >= 1


def test_grid_points_are_returned_exactly(h100):
    frame = pd.read_parquet(tables_root() / "h100_sxm" / "gemm.parquet")
    row = frame[(frame.gemm_dtype == "bfloat16") & (frame.m == 64) & (frame.n == 4096) & (frame.k == 4096)].iloc[0]
    assert h100.gemm_s("bfloat16", 64, 4096, 4096) == pytest.approx(row.latency_ms / 1e3, rel=1e-12)


def test_interpolation_lies_between_neighbours(h100):
    lo = h100.gemm_s("bfloat16", 4096, 8192, 8192)
    hi = h100.gemm_s("bfloat16", 8192, 8192, 8192)
    mid = h100.gemm_s("bfloat16", 6000, 8192, 8192)
    assert lo < mid < hi
    # n = 11008 (Llama-2-7B intermediate) is between grid points 10240 and 12288.
    t = h100.gemm_s("bfloat16", 256, 11008, 4096)
    assert h100.gemm_s("bfloat16", 256, 10240, 4096) < t < h100.gemm_s("bfloat16", 256, 12288, 4096)


def test_heads_between_entries_interpolate_linearly(h100):
    t16 = h100.generation_attention_s(16, 16, "bfloat16", 32, 1023)
    t24 = h100.generation_attention_s(24, 24, "bfloat16", 32, 1023)
    t20 = h100.generation_attention_s(20, 20, "bfloat16", 32, 1023)
    assert t20 == pytest.approx((t16 + t24) / 2, rel=1e-9)


def test_no_silent_extrapolation(h100):
    with pytest.raises(OutOfGridError, match=r"m=100000 is outside the measured grid"):
        h100.gemm_s("bfloat16", 100000, 4096, 4096)
    with pytest.raises(OutOfGridError):
        h100.allreduce_s(2, 1e12)
    flagged = KernelTables.load("h100_sxm", extrapolate=True)
    edge = flagged.gemm_s("bfloat16", 32768, 4096, 4096)
    assert flagged.gemm_s("bfloat16", 100000, 4096, 4096) == pytest.approx(edge)
    assert flagged.clamped_lookups == 1


def test_kernel_choice_labels_rules():
    assert kernel_choice("h100_sxm", QUANTS["fp16"]).rules == ()
    assert kernel_choice("h100_sxm", QUANTS["w8a8kv8-fp"]).rules == ()
    assert "ratio-transfer" in kernel_choice("h100_sxm", QUANTS["w8a16-int"]).rules
    assert kernel_choice("h100_sxm", QUANTS["w8a8kv8-int"]).rules == ("ratio-transfer", "kv8-int-as-fp8")
    assert "kv8-ratio" in kernel_choice("a100_sxm", QUANTS["w8a8kv8-int"]).rules
    assert "w4a8-from-8bit" in kernel_choice("h100_sxm", QUANTS["w4a8"]).rules


@pytest.mark.parametrize("gpu,system,model,quant,tp", [
    ("h100-80gb", "h100_sxm", "llama2-13b", "fp16", 1),
    ("h100-80gb", "h100_sxm", "llama2-70b", "w8a8-fp", 4),
    ("a100-40gb", "a100_sxm", "llama2-7b", "w4a16-int", 1),
])
def test_fitted_step_model_reproduces_composed_iterations(gpu, system, model, quant, tp):
    tables = {s: KernelTables.load(s, extrapolate=True) for s in ("a100_sxm", "h100_sxm")}
    comp = IterationComposer(tables[system], tables["a100_sxm"], tables["h100_sxm"], GPUS[gpu], MODELS[model], QUANTS[quant], tp)
    power = fit_power_model()
    if gpu != "h100-80gb":
        power = derive_power_model(power, GPUS["h100-80gb"], GPUS[gpu])
    result = kernel_step_model(comp, power)
    assert result.fit_mape < 0.08
    step = result.step
    for obs in observations(comp, step.kv_capacity_tokens)[::5]:
        predicted = step.iteration_s(obs.n_seq, obs.n_tok, obs.kv_tokens, obs.prefill_tokens, obs.prefill_sq)
        assert predicted == pytest.approx(obs.time_s, rel=0.25)
    assert result.provenance == ("derived" if quant == "w4a16-int" and gpu == "h100-80gb" else "measured-kernels")
    assert "MAPE" in result.source and ("custom_allreduce_perf" in result.source) == (tp > 1)


def test_power_fit_matches_measurements_and_derivations_scale():
    h100 = fit_power_model()
    assert h100.mape < 0.10
    assert 100 < h100.idle_w < h100.static_w < h100.power_limit_w == 700
    assert h100.joule_per_flop["fp8"] < h100.joule_per_flop["bf16"]  # 8-bit math costs less per op
    a100 = derive_power_model(h100, GPUS["h100-80gb"], GPUS["a100-40gb"])
    assert a100.idle_w == pytest.approx(h100.idle_w * 400 / 700)
    assert a100.power_limit_w == 400 and a100.provenance == "derived" and math.isnan(a100.mape)
