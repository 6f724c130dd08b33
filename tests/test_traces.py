"""Tests of the traces package: Azure loader and its errors, arrivals, lengths, workloads, §8.3 trace."""

from __future__ import annotations

import importlib.resources
import re
import time
from pathlib import Path

import numpy as np
import pytest

from traces.azure import load_azure_trace, load_shipped_trace, shipped_trace_path
from traces.case_study import (
    CASE_STUDY_TASKS,
    TASK_WORKLOAD,
    CaseStudyTraceSpec,
    build_case_study_trace,
    build_workload_trace,
)
from traces.lengths import AlignedLengths, EmpiricalLengths, FixedLengths
from traces.synthetic import diurnal_rate, gamma_arrivals, poisson_arrivals, time_varying_arrivals
from traces.trace import Trace, TraceError
from traces.transform import rescale_time, scale_to_rate, slice_time, tile, tile_period_s
from traces.workloads import UnknownWorkloadError, describe_workload, workload_lengths

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
GOOD_ROWS = [
    "2023-11-16 18:15:46.6805900,374,44",
    "2023-11-16 18:15:50.9951690,396,109",
    "2023-11-16 18:15:51.2224670,879,55",
    "2023-11-16 18:15:51.3910170,91,16",
]


def cv_of(x: np.ndarray) -> float:
    return float(np.std(x) / np.mean(x))


def write_csv(tmp_path: Path, lines: list[str], name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


# --- shipped Azure traces -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, rows, span_s, mean_in, mean_out",
    [("conv", 19_366, 3_502, 1_155, 211), ("code", 8_819, 3_436, 2_048, 28)],
)
def test_shipped_trace_matches_source_table(kind, rows, span_s, mean_in, mean_out):
    start = time.perf_counter()
    trace = load_azure_trace(shipped_trace_path(kind), task_name=kind)
    assert time.perf_counter() - start < 1.0
    assert len(trace) == rows
    assert trace.arrival_s[0] == 0.0 and np.all(np.diff(trace.arrival_s) >= 0)
    assert trace.duration_s == pytest.approx(span_s, abs=1.0)
    assert trace.input_tokens.mean() == pytest.approx(mean_in, rel=0.005)
    assert trace.output_tokens.mean() == pytest.approx(mean_out, rel=0.01)
    assert trace.input_tokens.dtype == np.int64 and trace.output_tokens.dtype == np.int64
    assert trace.task_names == (kind,) and np.all(trace.task == 0)
    assert trace.source.endswith(f"AzureLLMInferenceTrace_{kind}.csv")


def test_shipped_files_are_package_data():
    data = importlib.resources.files("traces") / "data"
    for name in ("AzureLLMInferenceTrace_conv.csv", "AzureLLMInferenceTrace_code.csv", "LICENSE.txt", "SOURCE.md"):
        assert (data / name).is_file(), name
    source = (data / "SOURCE.md").read_text(encoding="utf-8")
    assert "Azure/AzurePublicDataset" in source and "Splitwise" in source and "ISCA 2024" in source
    assert "Attribution 4.0" in (data / "LICENSE.txt").read_text(encoding="utf-8")
    with pytest.raises(KeyError, match="conv, code"):
        shipped_trace_path("chat")


def test_shipped_trace_cache_is_shared_and_read_only():
    trace = load_shipped_trace("code")
    assert load_shipped_trace("code") is trace
    with pytest.raises(ValueError):
        trace.input_tokens[0] = 5


def test_loader_parses_timestamps_relative_to_first_row(tmp_path):
    trace = load_azure_trace(write_csv(tmp_path, [HEADER, *GOOD_ROWS]), task_name="chat")
    assert trace.arrival_s == pytest.approx([0.0, 4.314579, 4.541877, 4.710427], abs=1e-9)
    assert list(trace.input_tokens) == [374, 396, 879, 91]
    assert list(trace.output_tokens) == [44, 109, 55, 16]
    assert trace.task_names == ("chat",)


def test_loader_accepts_whole_seconds_and_skips_blank_lines(tmp_path):
    path = write_csv(tmp_path, [HEADER, "2023-11-16 18:15:46,1,1", "", "2023-11-16 18:15:47.5000000,2,2"])
    trace = load_azure_trace(path)
    assert trace.arrival_s == pytest.approx([0.0, 1.5])


# --- malformed input: the error names file, row (file line, header = 1) and column ---------

MALFORMED = {
    "missing column": (["TIMESTAMP,ContextTokens", "2023-11-16 18:15:46.6805900,374"], 1, "GeneratedTokens"),
    "negative tokens": ([HEADER, GOOD_ROWS[0], "2023-11-16 18:15:50.9951690,-396,109"], 3, "ContextTokens"),
    "zero output tokens": ([HEADER, *GOOD_ROWS[:3], "2023-11-16 18:15:51.3910170,91,0"], 5, "GeneratedTokens"),
    "zero input tokens": ([HEADER, "2023-11-16 18:15:46.6805900,0,44", *GOOD_ROWS[1:]], 2, "ContextTokens"),
    "non-numeric tokens": ([HEADER, *GOOD_ROWS[:2], "2023-11-16 18:15:51.2224670,879,abc"], 4, "GeneratedTokens"),
    "non-integer tokens": ([HEADER, *GOOD_ROWS[:3], "2023-11-16 18:15:51.3910170,91.5,16"], 5, "ContextTokens"),
    "empty token cell": ([HEADER, GOOD_ROWS[0], "2023-11-16 18:15:50.9951690,,109"], 3, "ContextTokens"),
    "unparsable timestamp": ([HEADER, GOOD_ROWS[0], "16/11/2023 18:15:50,396,109", GOOD_ROWS[2]], 3, "TIMESTAMP"),
    "unsorted timestamps": ([HEADER, GOOD_ROWS[0], GOOD_ROWS[2], GOOD_ROWS[1], GOOD_ROWS[3]], 4, "TIMESTAMP"),
    "error after a blank line": ([HEADER, GOOD_ROWS[0], "", "2023-11-16 18:15:51.2224670,-1,55"], 4, "ContextTokens"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_trace_error_names_file_row_and_column(tmp_path, case):
    lines, row, column = MALFORMED[case]
    path = write_csv(tmp_path, lines, name=f"bad_{case.replace(' ', '_')}.csv")
    with pytest.raises(TraceError) as info:
        load_azure_trace(path)
    message = str(info.value)
    assert path.name in message
    assert re.search(rf"\brow {row}\b", message), message
    assert column in message


@pytest.mark.parametrize("content", ["", HEADER + "\n"], ids=["zero bytes", "header only"])
def test_empty_trace_is_an_error(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(TraceError, match="empty"):
        load_azure_trace(path)


def test_missing_file_is_a_trace_error(tmp_path):
    with pytest.raises(TraceError, match="nope.csv"):
        load_azure_trace(tmp_path / "nope.csv")


# --- arrivals -------------------------------------------------------------------------------


def test_poisson_arrivals_count_and_cv():
    rate_qps, duration_s = 50.0, 2_000.0
    arrivals = poisson_arrivals(rate_qps, duration_s, np.random.default_rng(1))
    expected = rate_qps * duration_s
    assert abs(len(arrivals) - expected) < 4 * np.sqrt(expected)
    assert np.all(np.diff(arrivals) >= 0) and arrivals[0] >= 0 and arrivals[-1] < duration_s
    assert cv_of(np.diff(arrivals)) == pytest.approx(1.0, abs=0.02)


def test_arrivals_depend_only_on_the_generator():
    a = poisson_arrivals(5.0, 100.0, np.random.default_rng(7))
    b = poisson_arrivals(5.0, 100.0, np.random.default_rng(7))
    c = poisson_arrivals(5.0, 100.0, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("cv", [0.5, 1.0, 3.0])
def test_gamma_arrivals_rate_and_cv(cv):
    rate_qps, duration_s = 100.0, 2_000.0
    arrivals = gamma_arrivals(rate_qps, cv, duration_s, np.random.default_rng(2))
    gaps = np.diff(arrivals)
    assert np.all(gaps >= 0) and arrivals[-1] < duration_s
    assert np.mean(gaps) == pytest.approx(1 / rate_qps, rel=0.03)
    assert cv_of(gaps) == pytest.approx(cv, rel=0.10)


def test_thinning_follows_a_step_rate():
    def rate_fn(t_s: np.ndarray) -> np.ndarray:
        return np.where(t_s < 500.0, 10.0, 40.0)

    arrivals = time_varying_arrivals(rate_fn, 40.0, 1_000.0, np.random.default_rng(3))
    low, high = np.sum(arrivals < 500.0), np.sum(arrivals >= 500.0)
    assert abs(low - 5_000) < 4 * np.sqrt(5_000)
    assert abs(high - 20_000) < 4 * np.sqrt(20_000)


def test_thinning_follows_a_diurnal_rate():
    rate = diurnal_rate(mean_qps=20.0, peak_to_trough=3.0, period_s=1_000.0)
    assert rate.peak_qps / rate.trough_qps == pytest.approx(3.0)
    assert float(rate(np.array([500.0]))[0]) == pytest.approx(rate.peak_qps)  # peak mid-period by default
    assert float(np.mean(rate(np.linspace(0, 1_000, 10_000, endpoint=False)))) == pytest.approx(20.0)
    arrivals = time_varying_arrivals(rate, rate.peak_qps, 10_000.0, np.random.default_rng(4))
    assert len(arrivals) == pytest.approx(200_000, rel=0.01)
    edges = np.linspace(0.0, 10_000.0, 41)  # 40 segments of 250 s
    counts, _ = np.histogram(arrivals, bins=edges)
    t, w = np.linspace(0, 10_000, 400_001), 10_000 / 400_000
    expected = np.array([rate(t[(t >= a) & (t < b)]).sum() * w for a, b in zip(edges[:-1], edges[1:])])
    assert np.all(np.abs(counts - expected) < 4.5 * np.sqrt(expected))


def test_thinning_rejects_a_rate_above_the_peak():
    with pytest.raises(ValueError, match="peak_rate_qps"):
        time_varying_arrivals(lambda t: np.full_like(t, 5.0), 4.0, 100.0, np.random.default_rng(0))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_arrivals_reject_bad_parameters(bad):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="duration_s"):
        poisson_arrivals(1.0, bad, rng)
    with pytest.raises(ValueError, match="cv"):
        gamma_arrivals(1.0, bad, 10.0, rng)


# --- lengths and workloads ------------------------------------------------------------------


def test_fixed_and_empirical_lengths():
    rng = np.random.default_rng(5)
    inp, out = FixedLengths(512, 64).sample(10, rng)
    assert inp.dtype == np.int64 and set(inp) == {512} and set(out) == {64}
    base = EmpiricalLengths(np.array([10, 20, 30]), np.array([1, 2, 3]))
    inp, out = base.sample(3_000, rng)
    assert inp.dtype == np.int64 and out.dtype == np.int64
    assert set(zip(inp.tolist(), out.tolist())) == {(10, 1), (20, 2), (30, 3)}  # pairs kept together
    with pytest.raises(ValueError, match="output_tokens"):
        FixedLengths(512, 0)
    with pytest.raises(ValueError):
        EmpiricalLengths(np.array([1, 2]), np.array([1]))


@pytest.mark.parametrize("workload, mean_in, mean_out", [("sharegpt", 331, 231), ("humaneval", 193, 67), ("newsqa", 806, 200)])
def test_aligned_workloads_hit_target_means(workload, mean_in, mean_out):
    sampler = workload_lengths(workload, max_total_tokens=4096)
    inp, out = sampler.sample(200_000, np.random.default_rng(6))
    assert inp.mean() == pytest.approx(mean_in, rel=0.03)
    assert out.mean() == pytest.approx(mean_out, rel=0.03)
    assert inp.min() >= 1 and out.min() >= 1 and (inp + out).max() <= 4096
    assert "derived" in sampler.describe() and f"{mean_in}/{mean_out}" in sampler.describe()


def test_aligned_lengths_clip_output_first():
    base = EmpiricalLengths(np.array([100, 10, 1000]), np.array([100, 50, 5]))
    aligned = AlignedLengths(base, base.mean_input_tokens, base.mean_output_tokens, max_total_tokens=64)  # scale 1
    inp, out = aligned.align(base.input_tokens, base.output_tokens)
    assert list(inp) == [63, 10, 63]  # input alone cut to leave room for one output token
    assert np.all(inp + out <= 64) and inp.min() >= 1 and out.min() >= 1
    assert list(out) == [1, 50, 1]  # 10 + 50 fits; the long prompts keep one output token


def test_raw_azure_workloads_and_fixed_shapes():
    conv = load_shipped_trace("conv")
    inp, out = workload_lengths("azure-conv").sample(5_000, np.random.default_rng(0))
    assert set(inp.tolist()) <= set(conv.input_tokens.tolist())
    assert "Azure" in workload_lengths("azure-code").describe()
    fixed = workload_lengths("fixed-512-64")
    assert isinstance(fixed, FixedLengths) and (fixed.input_tokens, fixed.output_tokens) == (512, 64)
    assert describe_workload("fixed-512-64").startswith("fixed")
    assert "ShareGPT" in describe_workload("sharegpt")
    with pytest.raises(ValueError, match="max_total_tokens"):
        workload_lengths("fixed-4000-200", max_total_tokens=4096)


def test_unknown_workload_lists_known_names():
    with pytest.raises(UnknownWorkloadError) as info:
        workload_lengths("alpaca")
    assert isinstance(info.value, KeyError)
    for name in ("sharegpt", "humaneval", "newsqa", "azure-conv", "azure-code", "fixed-<in>-<out>"):
        assert name in str(info.value)


# --- the §8.3 case-study trace ----------------------------------------------------------------


@pytest.fixture(scope="module")
def case_study_trace() -> Trace:
    return build_case_study_trace(CaseStudyTraceSpec())


def test_case_study_trace_rate_mix_and_lengths(case_study_trace):
    trace, spec = case_study_trace, CaseStudyTraceSpec()
    assert trace.task_names == CASE_STUDY_TASKS
    assert len(trace) / spec.duration_s == pytest.approx(spec.total_rate_qps, rel=0.01)
    assert trace.arrival_s.min() >= 0 and trace.arrival_s.max() < spec.duration_s
    counts = np.bincount(trace.task, minlength=len(CASE_STUDY_TASKS))
    by_task = dict(zip(CASE_STUDY_TASKS, counts))
    assert by_task["chat-s"] / by_task["chat-r"] == pytest.approx(4.0, abs=0.1)
    for task, share in spec.mix:
        assert by_task[task] / len(trace) == pytest.approx(share, abs=0.005)
    targets = {"sharegpt": (331, 231), "humaneval": (193, 67), "newsqa": (806, 200)}
    for task_id, task in enumerate(CASE_STUDY_TASKS):
        mask = trace.task == task_id
        mean_in, mean_out = targets[TASK_WORKLOAD[task]]
        assert trace.input_tokens[mask].mean() == pytest.approx(mean_in, rel=0.03)
        assert trace.output_tokens[mask].mean() == pytest.approx(mean_out, rel=0.03)
    assert (trace.input_tokens + trace.output_tokens).max() <= spec.max_total_tokens


def test_case_study_trace_is_deterministic_per_seed(case_study_trace):
    again = build_case_study_trace(CaseStudyTraceSpec())
    for column in ("arrival_s", "input_tokens", "output_tokens", "task"):
        assert np.array_equal(getattr(case_study_trace, column), getattr(again, column)), column
    other = build_case_study_trace(CaseStudyTraceSpec(seed=1))
    assert len(other) != len(again) or not np.array_equal(other.arrival_s, again.arrival_s)
    assert not np.array_equal(other.task[:1000], again.task[:1000])


def test_case_study_gamma_and_diurnal_arrivals():
    gamma = build_case_study_trace(CaseStudyTraceSpec(total_rate_qps=100.0, duration_s=600.0, arrival="gamma", cv=2.0))
    assert len(gamma) / 600.0 == pytest.approx(100.0, rel=0.05)
    assert cv_of(np.diff(gamma.arrival_s)) == pytest.approx(2.0, rel=0.1)
    diurnal = build_case_study_trace(CaseStudyTraceSpec(total_rate_qps=100.0, duration_s=3600.0, arrival="diurnal"))
    assert len(diurnal) / 3600.0 == pytest.approx(100.0, rel=0.02)
    first, middle = np.sum(diurnal.arrival_s < 360.0), np.sum(np.abs(diurnal.arrival_s - 1800.0) < 180.0)
    assert middle / first == pytest.approx(2.0, rel=0.15)  # peak (mid-trace) / trough (start) = 2


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"total_rate_qps": 0.0}, "total_rate_qps"),
        ({"duration_s": -5.0}, "duration_s"),
        ({"arrival": "weibull"}, "arrival"),
        ({"arrival": "gamma", "cv": 0.0}, "cv"),
        ({"mix": (("chat-s", 0.56), ("chat-r", 0.14), ("code", 0.20))}, "mix"),  # sums to 0.9
        ({"mix": (("chat-s", 0.8), ("chat-r", 0.2), ("code", -0.1), ("summarization", 0.1))}, "mix"),
        ({"mix": (("chat-s", 0.5), ("chat-r", 0.2), ("code", 0.2), ("summarization", 0.1))}, "mix"),  # not 4:1
        ({"mix": (("chat-s", 0.56), ("chat-r", 0.14), ("math", 0.30))}, "mix"),
    ],
)
def test_case_study_spec_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"CaseStudyTraceSpec\.{field}\b"):
        CaseStudyTraceSpec(**kwargs)


def test_case_study_spec_accepts_hydra_style_mix():
    spec = CaseStudyTraceSpec(mix=[["chat-s", 0.64], ["chat-r", 0.16], ["code", 0.1], ["summarization", 0.1]])
    assert spec.mix[0] == ("chat-s", 0.64) and isinstance(spec.mix, tuple)
    assert hash(spec) == hash(CaseStudyTraceSpec(mix=tuple((k, v) for k, v in spec.mix)))


def test_build_workload_trace():
    trace = build_workload_trace("humaneval", rate_qps=21.0, duration_s=600.0, seed=3, task_name="code")
    assert trace.task_names == ("code",)
    assert len(trace) / 600.0 == pytest.approx(21.0, rel=0.1)
    assert trace.input_tokens.mean() == pytest.approx(193, rel=0.1)
    same = build_workload_trace("humaneval", rate_qps=21.0, duration_s=600.0, seed=3, task_name="code")
    assert np.array_equal(trace.arrival_s, same.arrival_s) and np.array_equal(trace.output_tokens, same.output_tokens)
    assert build_workload_trace("fixed-512-64", 2.0, 60.0, 0).task_names == ("fixed-512-64",)


# --- transforms -------------------------------------------------------------------------------


@pytest.fixture()
def small_trace() -> Trace:
    arrival_s = np.array([0.0, 1.0, 2.5, 4.0, 6.0])
    return Trace(arrival_s, np.arange(1, 6), np.arange(10, 15), np.array([0, 1, 0, 1, 0]), ("a", "b"), "small")


def test_rescale_time_and_scale_to_rate(small_trace):
    half = rescale_time(small_trace, 0.5)
    assert half.duration_s == pytest.approx(small_trace.duration_s / 2)
    assert half.mean_rate_qps() == pytest.approx(2 * small_trace.mean_rate_qps())
    assert np.array_equal(half.input_tokens, small_trace.input_tokens) and "rescale_time" in half.source
    conv = scale_to_rate(load_shipped_trace("conv"), 120.0)
    assert conv.mean_rate_qps() == pytest.approx(120.0)
    with pytest.raises(ValueError, match="factor"):
        rescale_time(small_trace, 0.0)


def test_tile_repeats_end_to_end(small_trace):
    period_s = tile_period_s(small_trace)
    assert period_s == pytest.approx(7.5)  # span 6 s + one mean gap of 1.5 s
    doubled = tile(small_trace, 2 * period_s)
    assert len(doubled) == 2 * len(small_trace)
    assert np.array_equal(doubled.arrival_s[5:], small_trace.arrival_s + period_s)
    assert np.array_equal(doubled.task, np.tile(small_trace.task, 2))
    partial = tile(small_trace, 10.0)
    assert partial.arrival_s.max() < 10.0 and len(partial) == 5 + 2  # 7.5 and 8.5 fit, 10.0 does not
    week = tile(load_shipped_trace("code"), 7 * 86_400.0)
    assert week.arrival_s.max() < 7 * 86_400.0
    assert week.mean_rate_qps() == pytest.approx(load_shipped_trace("code").mean_rate_qps(), rel=0.01)


def test_slice_time_re_zeroes(small_trace):
    window = slice_time(small_trace, 1.0, 4.0)
    assert list(window.arrival_s) == [0.0, 1.5]
    assert list(window.input_tokens) == [2, 3]
    assert len(slice_time(small_trace, 100.0, 200.0)) == 0
    with pytest.raises(ValueError, match="end_s"):
        slice_time(small_trace, 4.0, 1.0)
