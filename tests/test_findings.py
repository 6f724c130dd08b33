"""The paper's findings check: every finding gets a verdict, verdicts follow the numbers, reports list failures first."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from findings_fixtures import Flat, synthetic_profiles
from profile_fixtures import hand_made_profiles
from profiles.catalog import QUANTS
from profiles.findings import (
    BY_CONSTRUCTION, FAILS, HOLDS, NOT_CHECKABLE, VERDICTS, check_findings, counts_line, failures_first,
    findings_table, table2_comparison, verdict_counts, write_findings,
)
from profiles.paper_findings import CHECKS
from profiles.profile_set import ProfileSet, default_profile_path
from profiles.schema import ConfigKey

H100 = "h100-80gb"
WORKLOADS = ("sharegpt", "humaneval", "newsqa")
# What the shipped defaults lack by design: the quality table has no math (chat-M) task.
DEFAULT_NOT_CHECKABLE = {"quality-math-severe"}


def k34(quant: str) -> ConfigKey:
    return ConfigKey(H100, "codellama-34b", quant, 1)


def one(profiles: ProfileSet, name: str):
    found = [f for f in check_findings(profiles) if f.name == name]
    assert len(found) == 1, name
    return found[0]


@pytest.fixture(scope="module")
def shipped() -> ProfileSet:
    return ProfileSet.load(default_profile_path())


@pytest.fixture(scope="module")
def shipped_findings(shipped):
    return check_findings(shipped)


# --- every finding, one verdict ---------------------------------------------------------------------

def test_every_finding_gets_a_verdict_on_the_defaults(shipped_findings):
    assert [f.name for f in shipped_findings] == [c.name for c in CHECKS]
    assert len({f.name for f in shipped_findings}) == len(shipped_findings) >= 60
    for f in shipped_findings:
        assert f.verdict in VERDICTS, f
        assert f.evidence and f.section.startswith("§") and f.statement
    assert {f.name for f in shipped_findings if f.verdict == NOT_CHECKABLE} == DEFAULT_NOT_CHECKABLE
    # every section of §4-§7 is stated
    for section in ("§4.1", "§4.2", "§5.1", "§5.2", "§6", "§7", "Table 2"):
        assert any(section in f.section for f in shipped_findings), section


def test_the_issue_named_findings_are_reported(shipped_findings):
    names = {f.name for f in shipped_findings}
    assert {"kv-compression-latency", "humaneval-weight-only-ttft", "near-saturation-lighter-compression",
            "tp4-to-tp8-saturation-gain", "tp-weight-only-kv-degrades", "table2-saturation"} <= names


def test_a_set_missing_everything_is_not_checkable_not_a_crash(tmp_path):
    findings = check_findings(hand_made_profiles(tmp_path))
    assert len(findings) == len(CHECKS)
    assert all(f.verdict in VERDICTS for f in findings)
    assert verdict_counts(findings)[NOT_CHECKABLE] >= len(findings) - 3


def test_provenance_names_the_rows_read(shipped_findings):
    by_name = {f.name: f for f in shipped_findings}
    assert "curves.parquet" in by_name["kv-compression-latency"].provenance
    assert "saturation.csv" in by_name["tp4-to-tp8-saturation-gain"].provenance
    assert "quality.csv" in by_name["quality-w8a8-int-worst"].provenance


# --- by construction: numbers set from the paper's own statements -----------------------------------

def test_paper_derived_numbers_hold_only_by_construction(shipped_findings):
    by_name = {f.name: f for f in shipped_findings}
    assert by_name["kv-cache-memory"].verdict == BY_CONSTRUCTION
    assert "RUNTIME_RESERVE_GB" in by_name["kv-cache-memory"].provenance
    assert by_name["quality-13b-code-92pct"].verdict == BY_CONSTRUCTION
    assert by_name["fp16-deployability"].verdict == BY_CONSTRUCTION


def _quality(w8a8_int_loss: float, other_loss: float) -> dict:
    out = {}
    for model in ("llama2-13b", "codellama-34b", "llama2-70b"):
        for task in ("chat-s", "chat-r", "code", "summarization"):
            out[(model, "fp16", task)] = 50.0
            for q in QUANTS:
                if q != "fp16":
                    out[(model, q, task)] = 50.0 * (1 - (w8a8_int_loss if q == "w8a8-int" else other_loss))
    return out


def test_quality_finding_follows_a_measured_table(tmp_path):
    curves = {(k34("fp16"), "sharegpt"): Flat(10.0)}
    holds = synthetic_profiles(tmp_path, curves, _quality(0.30, 0.05), "worst")
    fails = synthetic_profiles(tmp_path, curves, _quality(0.02, 0.05), "not-worst")
    # a table whose sources are not the paper's rule: a real verdict, not "by construction"
    assert one(holds, "quality-w8a8-int-worst").verdict == HOLDS
    finding = one(fails, "quality-w8a8-int-worst")
    assert finding.verdict == FAILS and "0/12" in finding.evidence


def test_kv_cache_memory_is_checked_when_not_catalog_arithmetic(tmp_path):
    curves = {(ConfigKey("a100-40gb", "llama2-13b", q, 1), "sharegpt"): Flat(5.0) for q in ("fp16", "w4a16-int")}
    curves[(ConfigKey(H100, "llama2-13b", "fp16", 1), "sharegpt")] = Flat(10.0)
    finding = one(synthetic_profiles(tmp_path, curves), "kv-cache-memory")
    assert finding.verdict == FAILS  # 20,000 tokens of KV cache is ~16 GB for 13B FP16, not 12 / 53 GB


# --- verdicts follow the numbers: the same finding holds on one set and fails on another ------------

KV_PAIRS = (("w8a16-int", "w8a16kv8-int"), ("w4a16-int", "w4a16kv8-int"), ("w8a8-int", "w8a8kv8-int"),
            ("w8a8-fp", "w8a8kv8-fp"), ("w4a8", "w4a8kv8"), ("w4a8", "w4a8kv4"))


def _kv_set(tmp_path, kv_factor: float, name: str) -> ProfileSet:
    curves = {}
    for w in WORKLOADS:
        for base, kv in KV_PAIRS:
            curves[(k34(base), w)] = Flat(50.0, ttft_s=0.05, tpot_s=0.02)
            curves[(k34(kv), w)] = Flat(50.0, ttft_s=0.05 * kv_factor, tpot_s=0.02 * kv_factor)
    return synthetic_profiles(tmp_path, curves, name=name)


def test_kv_compression_latency_holds_when_kv_is_slower(tmp_path):
    assert one(_kv_set(tmp_path, 1.3, "slow-kv"), "kv-compression-latency").verdict == HOLDS
    finding = one(_kv_set(tmp_path, 0.8, "fast-kv"), "kv-compression-latency")
    assert finding.verdict == FAILS and "0/36" in finding.evidence


def _humaneval_set(tmp_path, weight_only_ttft_s: float, name: str) -> ProfileSet:
    curves = {(k34(q), "humaneval"): Flat(80.0, ttft_s=weight_only_ttft_s) for q in ("w8a16-int", "w4a16-int")}
    curves.update({(k34(q), "humaneval"): Flat(80.0, ttft_s=0.08) for q in ("w8a8-int", "w8a8-fp", "w4a8")})
    return synthetic_profiles(tmp_path, curves, name=name)


def test_humaneval_weight_only_ttft_follows_the_curves(tmp_path):
    assert one(_humaneval_set(tmp_path, 0.05, "wo-fast"), "humaneval-weight-only-ttft").verdict == HOLDS
    finding = one(_humaneval_set(tmp_path, 0.12, "wo-slow"), "humaneval-weight-only-ttft")
    assert finding.verdict == FAILS and "0/6" in finding.evidence


GROUPS_3_4 = ("w8a8-fp", "w8a8kv8-fp", "w8a8-int", "w8a8kv8-int", "w4a8", "w4a8kv8", "w4a8kv4")


def _tp_set(tmp_path, gain: float, name: str) -> ProfileSet:
    curves = {}
    for q in GROUPS_3_4:
        curves[(ConfigKey(H100, "llama2-70b", q, 4), "sharegpt")] = Flat(20.0)
        curves[(ConfigKey(H100, "llama2-70b", q, 8), "sharegpt")] = Flat(20.0 * (1 + gain))
    return synthetic_profiles(tmp_path, curves, name=name)


def test_tp4_to_tp8_gain_must_be_20_to_35_percent(tmp_path):
    assert one(_tp_set(tmp_path, 0.25, "tp-25"), "tp4-to-tp8-saturation-gain").verdict == HOLDS
    finding = one(_tp_set(tmp_path, 0.60, "tp-60"), "tp4-to-tp8-saturation-gain")
    assert finding.verdict == FAILS and "+60 %" in finding.evidence
    assert one(_tp_set(tmp_path, 0.05, "tp-5"), "tp4-to-tp8-saturation-gain").verdict == FAILS


def _near_saturation_set(tmp_path, eight_bit_top: bool, name: str) -> ProfileSet:
    high, low = (30.0, 20.0) if eight_bit_top else (20.0, 30.0)
    curves = {}
    for w in WORKLOADS:
        curves[(k34("fp16"), w)] = Flat(10.0, energy_j=1.0)
        curves[(k34("w4a8"), w)] = Flat(low, energy_j=0.5)
        curves[(k34("w8a8-int"), w)] = Flat(high, energy_j=0.7)
    return synthetic_profiles(tmp_path, curves, name=name)


def test_near_saturation_preference_follows_who_saturates_last(tmp_path):
    assert one(_near_saturation_set(tmp_path, True, "8bit-last"), "near-saturation-lighter-compression").verdict == HOLDS
    assert one(_near_saturation_set(tmp_path, False, "4bit-last"), "near-saturation-lighter-compression").verdict == FAILS


def _table2_set(tmp_path, scale: float, name: str) -> ProfileSet:
    paper = {"sharegpt": 10.0, "humaneval": 42.0, "newsqa": 8.0}
    curves = {(ConfigKey(H100, "llama2-13b", "w8a8-int", 1), w): Flat(scale * s) for w, s in paper.items()}
    curves.update({(ConfigKey(H100, "llama2-13b", "w8a16-int", 1), w): Flat(2.0 * s) for w, s in paper.items()})
    return synthetic_profiles(tmp_path, curves, name=name)


def test_table2_holds_near_the_papers_saturation(tmp_path):
    assert one(_table2_set(tmp_path, 1.1, "t2-near"), "table2-saturation").verdict == HOLDS
    finding = one(_table2_set(tmp_path, 1.8, "t2-far"), "table2-saturation")
    assert finding.verdict == FAILS and "1.80x" in finding.evidence


# --- Table 2 numbers are the saturation table's ----------------------------------------------------

def test_table2_comparison_equals_the_saturation_table(shipped):
    rows = table2_comparison(shipped)
    sat = shipped.saturation
    paper = {"sharegpt": 10.0, "humaneval": 42.0, "newsqa": 8.0}
    assert {r.quant for r in rows} == {q for q in QUANTS if QUANTS[q].weight_bits == 8}
    table2 = sat[sat.workload.isin(paper)]  # the random-length rows are not Table 2's
    assert len(rows) == 6 * len(table2[["workload", "slo_ttft_s", "slo_tpot_s"]].drop_duplicates())
    for r in rows:
        match = sat[(sat.gpu == H100) & (sat.model == "llama2-13b") & (sat.quant == r.quant) & (sat.tp == 1)
                    & (sat.workload == r.workload) & np.isclose(sat.slo_ttft_s, r.slo_ttft_s)
                    & np.isclose(sat.slo_tpot_s, r.slo_tpot_s)]
        assert len(match) == 1
        assert r.saturation_qps == pytest.approx(float(match.saturation_qps.iloc[0]))
        assert r.paper_saturation_qps == paper[r.workload]
        assert r.ratio == pytest.approx(r.saturation_qps / paper[r.workload])
    primary = {r.workload: r for r in rows if r.quant == "w8a8-int" and r.primary_slo}
    assert primary["sharegpt"].slo_ttft_s == sat[sat.workload == "sharegpt"].slo_ttft_s.min()


def test_table2_finding_quotes_the_table(shipped, shipped_findings):
    finding = next(f for f in shipped_findings if f.name == "table2-saturation")
    for r in table2_comparison(shipped):
        if r.quant == "w8a8-int" and r.primary_slo:
            assert f"{r.workload} {r.saturation_qps:.2f} vs {r.paper_saturation_qps:.0f} req/s ({r.ratio:.2f}x)" \
                in finding.evidence


# --- reports: failures first ----------------------------------------------------------------------

def _verdict_column(table_lines: list[str]) -> list[str]:
    rows = [line for line in table_lines if line.startswith("| ") and "**" in line]
    return [line.split("**")[1] for line in rows]


def test_markdown_lists_failures_first(tmp_path, shipped, shipped_findings):
    verdicts = _verdict_column(findings_table(shipped_findings))
    assert len(verdicts) == len(shipped_findings)
    assert [VERDICTS.index(v) for v in verdicts] == sorted(VERDICTS.index(v) for v in verdicts)
    assert verdicts[0] == FAILS
    write_findings(shipped, tmp_path, shipped_findings)
    text = (tmp_path / "findings.md").read_text()
    assert counts_line(shipped_findings) in text
    written = _verdict_column(text.splitlines())
    assert written[: len(verdicts)] == verdicts
    with open(tmp_path / "findings.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == [f.name for f in failures_first(shipped_findings)]


def test_counts_line_adds_up(shipped_findings):
    counts = verdict_counts(shipped_findings)
    assert sum(counts.values()) == len(shipped_findings)
    line = counts_line(shipped_findings)
    assert f"{counts[FAILS]} do not hold" in line and f"{counts[BY_CONSTRUCTION]} hold by construction" in line


def test_kernel_report_section_lists_failures_first(shipped, shipped_findings):
    from profiles.report_kernels import findings_section

    lines = findings_section(shipped, shipped_findings)
    verdicts = _verdict_column(lines)
    assert len(verdicts) == len(shipped_findings)
    assert [VERDICTS.index(v) for v in verdicts] == sorted(VERDICTS.index(v) for v in verdicts)
    assert counts_line(shipped_findings) in lines
