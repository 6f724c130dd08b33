"""Shared prefixes on the trace side: the optional trace columns, the Azure CSV columns, the configured hit model,
the configuration keys, and a streamed run with prefixes and caches equal to the in-memory run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException

import sim.main  # registers the schema  # noqa: F401
from conftest import make_trace
from profiles.profile_set import ProfileSet, default_profile_path
from sim.cluster import ClusterSettings, simulate
from sim.config import ConfigError, build_run
from sim.metrics import requests_frame, summarize
from sim.policies import SloEnergyOptimal
from sim.prefix_cache import PrefixCacheSettings
from sim.stream import RequestSink, simulate_stream, stream_summary
from test_cluster import TASKS, small_trace
from traces.azure import load_azure_trace
from traces.shared_prefix import SharedPrefixSpec, SharedPrefixStream, add_shared_prefixes
from traces.stream import ChunkedTrace
from traces.trace import Trace, TraceError
from traces.transform import slice_time, tile

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens,PrefixId,PrefixTokens"


def write_csv(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "prefixed.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_prefix_columns_are_read(tmp_path):
    path = write_csv(tmp_path, [HEADER, "2023-11-16 18:00:00.0000000,800,20,3,512",
                                "2023-11-16 18:00:01.0000000,100,5,-1,0"])
    trace = load_azure_trace(path)
    assert trace.prefix_id.tolist() == [3, -1] and trace.prefix_tokens.tolist() == [512, 0]
    plain = write_csv(tmp_path, ["TIMESTAMP,ContextTokens,GeneratedTokens", "2023-11-16 18:00:00.0000000,800,20"])
    assert load_azure_trace(plain).prefix_id is None


@pytest.mark.parametrize("lines, where", [
    (["TIMESTAMP,ContextTokens,GeneratedTokens,PrefixId", "2023-11-16 18:00:00.0000000,800,20,3"],
     r"row 1 \(header\): column 'PrefixId' needs column 'PrefixTokens'"),
    ([HEADER, "2023-11-16 18:00:00.0000000,800,20,3,512", "2023-11-16 18:00:01.0000000,800,20,x,512"],
     r"row 3 column 'PrefixId': 'x' is not an integer prefix id"),
    ([HEADER, "2023-11-16 18:00:00.0000000,800,20,3,"], r"row 2 column 'PrefixTokens': an empty value"),
    ([HEADER, "2023-11-16 18:00:00.0000000,800,20,3,900"],
     r"row 2 column 'PrefixTokens': 900 prefix tokens exceed the 800 ContextTokens"),
    ([HEADER, "2023-11-16 18:00:00.0000000,800,20,-2,0"], r"row 2 column 'PrefixId': prefix id -2 is below -1"),
    ([HEADER, "2023-11-16 18:00:00.0000000,800,20,-1,5"], r"row 2 column 'PrefixTokens': 5 prefix tokens on a request"),
    ([HEADER, "2023-11-16 18:00:00.0000000,800,20,4,-5"], r"row 2 column 'PrefixTokens': negative prefix token count"),
])
def test_bad_prefix_columns_name_file_row_and_column(tmp_path, lines, where):
    path = write_csv(tmp_path, lines)
    with pytest.raises(TraceError, match=where) as info:
        load_azure_trace(path)
    assert str(path) in str(info.value)


def test_trace_checks_its_prefix_columns():
    base = make_trace([0.0, 1.0], [100, 50], [5, 5])
    args = (base.arrival_s, base.input_tokens, base.output_tokens, base.task, base.task_names, "t")
    with pytest.raises(TraceError, match="given together"):
        Trace(*args, prefix_id=np.array([1, 2]))
    with pytest.raises(TraceError, match=r"row 1 column 'prefix_tokens' exceeds"):
        Trace(*args, prefix_id=np.array([1, 2]), prefix_tokens=np.array([10, 60]))
    with pytest.raises(TraceError, match="has 1 rows"):
        Trace(*args, prefix_id=np.array([1]), prefix_tokens=np.array([10]))


def test_prefix_columns_survive_select_tile_slice_and_chunks():
    trace = add_shared_prefixes(small_trace(seed=1, rate=20.0, duration=60.0), SharedPrefixSpec(0.5, 4, 200), seed=0)
    tiled = tile(trace, 150.0)
    assert tiled.prefix_id[: len(trace)].tolist() == trace.prefix_id.tolist()
    assert len(tiled.prefix_id) == len(tiled)
    window = slice_time(trace, 10.0, 20.0)
    rows = (trace.arrival_s >= 10.0) & (trace.arrival_s < 20.0)
    assert window.prefix_tokens.tolist() == trace.prefix_tokens[rows].tolist()
    chunks = list(ChunkedTrace(trace, 7.0).chunks())
    assert np.concatenate([c.prefix_id for c in chunks]).tolist() == trace.prefix_id.tolist()


def test_hit_model_draws_fraction_groups_and_clipped_lengths():
    n = 20_000
    rng = np.random.default_rng(0)
    inp = rng.integers(1, 3000, n)
    trace = make_trace(np.arange(n) * 0.01, inp, np.full(n, 10), task=np.arange(n) % 2, names=("a", "b"))
    spec = {"a": SharedPrefixSpec(0.5, 8, 1024), "b": SharedPrefixSpec(0.25, 3, 64, zipf_s=1.0)}
    out = add_shared_prefixes(trace, spec, seed=7)
    a, b = trace.task == 0, trace.task == 1
    carried = out.prefix_id >= 0
    assert carried[a].mean() == pytest.approx(0.5 * np.mean(inp[a] > 1), abs=0.02)
    assert carried[b].mean() == pytest.approx(0.25 * np.mean(inp[b] > 1), abs=0.02)
    assert set(out.prefix_id[a & carried]) == set(range(8))  # task a: ids 0..7
    assert set(out.prefix_id[b & carried]) == {8, 9, 10}  # task b: the next 3 ids
    # Zipf(1) over 3 groups: 6/11, 3/11, 2/11.
    shares = np.bincount(out.prefix_id[b & carried] - 8) / np.count_nonzero(b & carried)
    assert shares == pytest.approx([6 / 11, 3 / 11, 2 / 11], abs=0.03)
    # Clipped to input - 1; a one-token prompt carries none.
    assert np.array_equal(out.prefix_tokens[a & carried], np.minimum(1024, inp[a & carried] - 1))
    assert not carried[inp == 1].any()
    # Deterministic per seed, different across seeds; task b's draw does not depend on task a's settings.
    assert np.array_equal(add_shared_prefixes(trace, spec, seed=7).prefix_id, out.prefix_id)
    assert not np.array_equal(add_shared_prefixes(trace, spec, seed=8).prefix_id, out.prefix_id)
    other = add_shared_prefixes(trace, {"a": SharedPrefixSpec(0.9, 8, 1024), "b": spec["b"]}, seed=7)
    assert np.array_equal(other.prefix_id[b], out.prefix_id[b])


@pytest.mark.parametrize("kwargs, field", [
    (dict(fraction=1.5), "fraction"), (dict(fraction=-0.1), "fraction"), (dict(groups=0), "groups"),
    (dict(tokens=0), "tokens"), (dict(tokens=2.5), "tokens"), (dict(zipf_s=-1.0), "zipf_s"),
])
def test_hit_model_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"SharedPrefixSpec.{field}"):
        SharedPrefixSpec(**kwargs)


def test_hit_model_refuses_unknown_tasks_and_traces_with_prefixes():
    trace = make_trace([0.0, 1.0], [100, 50], [5, 5])
    with pytest.raises(ValueError, match=r"task\(s\) \['nope'\]"):
        add_shared_prefixes(trace, {"nope": SharedPrefixSpec(0.5)}, seed=0)
    prefixed = add_shared_prefixes(trace, SharedPrefixSpec(1.0, 1, 10), seed=0)
    with pytest.raises(ValueError, match="already carries"):
        add_shared_prefixes(prefixed, SharedPrefixSpec(0.5), seed=0)


# --- configuration ---------------------------------------------------------------------------------------


def composed(overrides):
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


SMALL = ["trace.duration_s=60", "trace.total_rate_qps=20", "progress=false"]


def test_config_turns_on_the_cache_and_the_hit_model():
    spec = build_run(composed(SMALL + ["cluster.prefix_cache.enabled=true", "cluster.prefix_cache.block_tokens=32",
                                       "trace.shared_prefix.fraction=0.5", "trace.shared_prefix.tokens=256",
                                       "+trace.shared_prefix.tasks={code:{fraction:1.0}}"]))
    assert spec.settings.prefix_cache == PrefixCacheSettings(block_tokens=32)
    trace = spec.trace
    code = trace.task == trace.task_id("code")
    assert (trace.prefix_id[code] >= 0).mean() > 0.95
    assert 0.4 < (trace.prefix_id[~code] >= 0).mean() < 0.6
    assert trace.prefix_tokens.max() == 256
    off = build_run(composed(SMALL))
    assert off.settings.prefix_cache is None and off.trace.prefix_id is None


@pytest.mark.parametrize("override, key", [
    ("cluster.prefix_cache.block_tokens=0", "cluster.prefix_cache.block_tokens"),
    ("trace.shared_prefix.fraction=1.5", "trace.shared_prefix.fraction"),
    ("trace.shared_prefix.groups=0", "trace.shared_prefix.groups"),
    ("trace.shared_prefix.tokens=-4", "trace.shared_prefix.tokens"),
    ("+trace.shared_prefix.tasks={code:{tokens:0}}", "trace.shared_prefix.tasks.code.tokens"),
    ("+trace.shared_prefix.tasks={poetry:{fraction:0.5}}", "trace.shared_prefix.tasks.poetry"),
    ("trace.shared_prefix.seed=-1", "trace.shared_prefix.seed"),
])
def test_wrong_prefix_value_names_its_key(override, key):
    overrides = SMALL + ["cluster.prefix_cache.enabled=true", "trace.shared_prefix.fraction=0.3", override]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_run(composed(overrides))


def test_unknown_prefix_key_stops_at_once():
    with pytest.raises(ConfigCompositionException, match="size_gb"):
        composed(["cluster.prefix_cache.size_gb=3"])
    with pytest.raises(ConfigCompositionException, match="enabled"):
        composed(["cluster.prefix_cache.enabled=maybe"])


# --- streamed runs ---------------------------------------------------------------------------------------


def test_streamed_run_with_prefix_caches_equals_in_memory_run(tmp_path):
    profiles = ProfileSet.load(default_profile_path())
    trace = add_shared_prefixes(small_trace(seed=2, rate=50.0, duration=300.0), SharedPrefixSpec(0.6, 5, 400), seed=4)
    settings = ClusterSettings(replan_interval_s=60.0, engine_start_s=30.0, prefix_cache=PrefixCacheSettings(16))
    memory = simulate(trace, TASKS, SloEnergyOptimal(0.9), profiles, settings)
    frame = requests_frame(memory)
    summary = summarize(memory, frame)
    sink = RequestSink(trace.task_names, tmp_path / "requests.parquet")
    streamed = simulate_stream(ChunkedTrace(trace, 60.0), TASKS, SloEnergyOptimal(0.9), profiles, settings, sink,
                               block=333, ring_capacity=128)
    written = pd.read_parquet(tmp_path / "requests.parquet")
    pd.testing.assert_frame_equal(written, frame, check_dtype=False)
    assert frame.cached_tokens.sum() > 0
    assert stream_summary(streamed, sink)["prefix_cache"] == summary["prefix_cache"]


def test_shared_prefix_stream_draws_each_chunk_with_its_own_index():
    trace = small_trace(seed=1, rate=20.0, duration=120.0)
    stream = SharedPrefixStream(ChunkedTrace(trace, 30.0), SharedPrefixSpec(0.5, 4, 100), seed=5)
    chunks = list(stream.chunks())
    plain = list(ChunkedTrace(trace, 30.0).chunks())
    for index, (chunk, raw) in enumerate(zip(chunks, plain)):
        expected = add_shared_prefixes(raw, SharedPrefixSpec(0.5, 4, 100), seed=5, chunk=index)
        assert np.array_equal(chunk.prefix_id, expected.prefix_id)
    assert stream.count(0, 0.0, 60.0) == ChunkedTrace(trace, 30.0).count(0, 0.0, 60.0)
