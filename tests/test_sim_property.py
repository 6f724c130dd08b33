"""Property (hypothesis): whatever settings and trace qfleet-sim is given, valid or not, a run ends either in a
summary whose request totals balance or in one clear error line (a ``ConfigError`` naming its key), never in a
traceback. Small traces and few examples keep it well under a minute."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_module
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import sim.main  # noqa: F401  (registers the schema)
from sim.config import ConfigError

BAD_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1e30])


def maybe_bad(good: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly valid values (11 in 12), sometimes a NaN, an infinity, a negative, zero or an absurd size."""
    return st.integers(0, 11).flatmap(lambda k: BAD_FLOATS if k == 11 else good)


def fmt(value) -> str:
    return "null" if value is None else repr(value)


@st.composite
def case_study(draw) -> list[str]:
    arrival = draw(st.sampled_from(["poisson", "gamma", "diurnal", "sometimes"]))
    ov = [f"trace.total_rate_qps={fmt(draw(maybe_bad(st.floats(0.2, 15))))}",
          f"trace.duration_s={fmt(draw(maybe_bad(st.floats(0.5, 15))))}", f"trace.arrival={arrival}"]
    if arrival == "gamma" or draw(st.integers(0, 9)) == 0:
        ov.append(f"trace.cv={fmt(draw(maybe_bad(st.floats(0.2, 4))))}")
    return ov


@st.composite
def azure_csv(draw) -> tuple[str, list[str]]:
    """An Azure-format trace of 0-12 rows: gaps of zero allowed, token counts sometimes invalid."""
    rows = draw(st.lists(st.tuples(st.sampled_from([0.0, 0.05, 0.3, 1.0, 2.5]),
                                   st.integers(-1, 400), st.integers(-1, 120)), max_size=12))
    lines, t = ["TIMESTAMP,ContextTokens,GeneratedTokens"], 0.0
    for gap, inp, out in rows:
        t += gap
        lines.append(f"2023-11-16 18:{17 + int(t // 60):02d}:{t % 60:010.7f},{inp},{out}")
    ov = [f"trace.target_rate_qps={fmt(draw(st.one_of(st.none(), maybe_bad(st.floats(0.2, 8)))))}",
          f"trace.duration_s={fmt(draw(st.one_of(st.none(), maybe_bad(st.floats(1, 20)))))}"]
    return "\n".join(lines) + "\n", ov


@st.composite
def settings_and_trace(draw) -> tuple[str | None, list[str]]:
    csv = None
    if draw(st.booleans()):
        ov = draw(case_study())
    else:
        csv, trace_ov = draw(azure_csv())
        ov = ["trace=azure_conv", "~cluster.pools.chat-r", "~cluster.pools.code", "~cluster.pools.summarization",
              *trace_ov]
    policy = draw(st.sampled_from(["fp16_only", "quality_first", "energy_first", "slo_energy_optimal"]))
    ov.append(f"policy={policy}")
    if draw(st.integers(0, 1 if policy == "slo_energy_optimal" else 9)) == 1:  # elsewhere unused: an error
        ov.append(f"++policy.headroom={fmt(draw(maybe_bad(st.floats(0.1, 1.0))))}")
    ov += [
        f"seed={draw(st.integers(0, 9).flatmap(lambda k: st.integers(-3, -1) if k == 9 else st.integers(0, 2**31)))}",
        f"cluster.engine_start_s={fmt(draw(maybe_bad(st.floats(0, 30))))}",
        f"cluster.drain_limit_s={fmt(draw(maybe_bad(st.floats(0, 600))))}",
        f"cluster.max_queue={fmt(draw(st.one_of(st.none(), st.integers(-2, 64))))}",
        f"cluster.replan_interval_s={fmt(draw(st.one_of(st.none(), maybe_bad(st.floats(2, 60)))))}",
        f"slo.tasks.chat-s.ttft_s={fmt(draw(maybe_bad(st.floats(0.05, 5))))}",
        "progress=false", "outputs.figures=false", "outputs.per_request=false",
    ]
    return csv, ov


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(settings_and_trace())
def test_every_run_ends_in_a_balanced_summary_or_one_clear_line(case):
    csv, overrides = case
    with tempfile.TemporaryDirectory() as tmp:
        if csv is not None:
            path = Path(tmp) / "trace.csv"
            path.write_text(csv)
            overrides = [*overrides, f"trace.path={path}"]
        with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        try:
            summary = sim.main.run(cfg, Path(tmp) / "out")
        except ConfigError as exc:
            text = str(exc)
            assert text.strip() and "\n" not in text and "Traceback" not in text, text
            event(f"clear error: {text.split(':')[0]}")  # --hypothesis-show-statistics shows the mix
            return
    event(f"summary ({'azure' if csv is not None else 'case study'} trace)")
    n = summary["requests"]
    assert n == summary["finished"] + summary["rejected"], overrides
    assert sum(summary["rejected_by_reason"].values()) == summary["rejected"], overrides
    assert sum(t["requests"] for t in summary["tasks"]) == n, overrides
    assert all(t["finished"] + t["rejected"] == t["requests"] for t in summary["tasks"]), overrides
