"""Prefix caching in the instance model (sim.prefix_cache) against numbers worked out by hand: the uncached
part of a prompt is all a hit costs, reuse is in whole blocks, eviction is LRU within the free KV, and a run
without the cache is bit-identical to the engine before prefix caching existed."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from conftest import make_step, make_trace, poisson_trace
from profiles.profile_set import ProfileSet, default_profile_path
from sim.cluster import ClusterSettings, simulate
from sim.instance import replay_single_instance
from sim.metrics import requests_frame, summarize
from sim.policies import SloEnergyOptimal
from sim.prefix_cache import PrefixCache, PrefixCacheSettings
from sim.reference import replay_instance
from sim.requests import FINISHED, REJECTED, RequestTable
from test_cluster import TASKS, small_trace
from traces.shared_prefix import SharedPrefixSpec, add_shared_prefixes
from traces.trace import TraceError

BLOCK16 = PrefixCacheSettings(block_tokens=16)


def with_prefixes(arrival, inp, out, prefix_id, prefix_tokens):
    trace = make_trace(arrival, inp, out)
    return type(trace)(trace.arrival_s, trace.input_tokens, trace.output_tokens, trace.task, trace.task_names,
                       "test", np.asarray(prefix_id, dtype=np.int64), np.asarray(prefix_tokens, dtype=np.int64))


def run(step, trace, settings=BLOCK16):
    table = RequestTable(trace)
    instance = replay_single_instance(step, table, settings)
    return table, instance


def prefill_s(step, n_tokens: int, attn_sq: int) -> float:
    """The step model's time of a lone prefill of ``n_tokens`` new tokens, written out term by term."""
    return (step.overhead_s + step.per_seq_s + step.per_token_s * n_tokens
            + max(step.weights_s, step.flop_token_s * n_tokens) + step.per_prefill_token_s * n_tokens
            + step.prefill_attn_s * attn_sq)


def test_a_cached_prefix_costs_only_the_uncached_prompt(step):
    # Request 0 (prompt 600, prefix 7 of 512 tokens) fills the cache; request 1 (prompt 800, same prefix)
    # comes after it is done: 512 tokens (32 blocks) are served, 288 computed, attending over all 800.
    trace = with_prefixes([0.0, 5.0], [600, 800], [20, 20], [7, 7], [512, 512])
    table, instance = run(step, trace)
    assert table.cached_tokens == [0, 512]
    assert table.first_token_s[0] == pytest.approx(prefill_s(step, 600, 600**2), rel=1e-12)
    ttft = table.first_token_s[1] - 5.0
    assert ttft == pytest.approx(prefill_s(step, 288, 800**2 - 512**2), rel=1e-12)
    assert ttft == pytest.approx(step.iteration_s(1, 288, 0, 288, 800**2 - 512**2), rel=1e-12)
    # Without the cache the same request pays its whole prompt; the drop is the 512 tokens' per-token and
    # GEMM work (compute-bound at both 288 and 800 tokens here) and their attention.
    cold, _ = run(step, trace, None)
    drop = (cold.first_token_s[1] - 5.0) - ttft
    assert step.flop_token_s * 288 > step.weights_s
    assert drop == pytest.approx((step.per_token_s + step.per_prefill_token_s + step.flop_token_s) * 512
                                 + step.prefill_attn_s * 512**2, rel=1e-9)
    # The decode steps are the same: the cached prefix is still context the request reads.
    assert table.finish_s[1] - table.first_token_s[1] == pytest.approx(cold.finish_s[1] - cold.first_token_s[1],
                                                                        rel=1e-12)
    # Energy: all of the instance's busy joules go to the two requests, the second charged for 288 tokens.
    assert sum(table.energy_j) == pytest.approx(instance.busy_j, rel=1e-12)
    assert instance.prefix_cache.hits == 1 and instance.prefix_cache.cached_tokens == 512


def test_second_request_of_a_prefix_gets_its_first_token_sooner_by_the_expected_amount():
    # A weights-bound engine (GEMMs stream the weights at 1,000 tokens and at 200): the GEMM term stays.
    step = make_step(weights_s=0.05)
    trace = with_prefixes([0.0, 2.0], [1000, 1000], [1, 1], [3, 3], [800, 800])
    table, _ = run(step, trace)
    first = table.first_token_s[0] - 0.0
    second = table.first_token_s[1] - 2.0
    assert step.flop_token_s * 1000 < step.weights_s
    assert first == pytest.approx(prefill_s(step, 1000, 1000**2), rel=1e-12)
    assert second == pytest.approx(prefill_s(step, 200, 1000**2 - 800**2), rel=1e-12)
    expected_drop = (step.per_token_s + step.per_prefill_token_s) * 800 + step.prefill_attn_s * 800**2
    assert first - second == pytest.approx(expected_drop, rel=1e-9)
    assert expected_drop == pytest.approx(0.00224, rel=1e-12)  # 1.6 ms per-token work + 0.64 ms attention


@pytest.mark.parametrize("block, prefix, prompt, hit", [
    (16, 500, 800, 496),     # 31 whole blocks of the 500-token prefix
    (128, 500, 800, 384),    # 3 blocks
    (1, 500, 800, 500),      # token granularity
    (16, 512, 512, 496),     # the whole prompt is the prefix: one token must be computed, so 31 blocks
    (16, 15, 800, 0),        # less than a block: nothing cached
    (16, 512, 300, 288),     # a shorter prompt of the same prefix (299 tokens usable): 18 blocks
])
def test_reuse_is_in_whole_blocks_and_leaves_one_token_to_compute(step, block, prefix, prompt, hit):
    warm_prompt = max(prefix + 1, 600)
    trace = with_prefixes([0.0, 5.0], [warm_prompt, prompt], [1, 1], [1, 1], [prefix, min(prefix, prompt)])
    table, _ = run(step, trace, PrefixCacheSettings(block_tokens=block))
    assert table.cached_tokens == [0, hit]
    assert table.first_token_s[1] - 5.0 == pytest.approx(
        step.iteration_s(1, prompt - hit, 0, prompt - hit, prompt**2 - hit**2), rel=1e-12)


def test_lru_evicts_what_no_longer_fits_the_free_kv_and_an_evicted_prefix_misses():
    # 2,000 KV tokens. A and B cache prefixes 1 and 2 (512 each). C (1,000 + 200) holds 1,200, leaving 800:
    # prefix 1 (least recently used) is evicted. D (prefix 1, needs 601) then leaves 199 free, so prefix 2
    # goes too, and D misses. After C is done E (prefix 2) misses and F (prefix 1, cached again by D) hits.
    step = make_step(kv_capacity_tokens=2000)
    trace = with_prefixes([0.0, 1.0, 2.0, 2.001, 10.0, 11.0], [600, 600, 1000, 600, 600, 600],
                          [1, 1, 200, 1, 1, 1], [1, 2, -1, 1, 2, 1], [512, 512, 0, 512, 512, 512])
    table, instance = run(step, trace)
    assert table.status == [FINISHED] * 6
    assert table.first_token_s[3] < table.finish_s[2]  # D ran while C held its KV
    assert table.cached_tokens == [0, 0, 0, 0, 0, 512]
    assert instance.prefix_cache.evictions == 2
    # With room for everything, D and E hit.
    roomy, roomy_instance = run(make_step(kv_capacity_tokens=20000), trace)
    assert roomy.cached_tokens == [0, 0, 0, 512, 512, 512] and roomy_instance.prefix_cache.evictions == 0
    ref = replay_instance(step, trace.arrival_s, trace.input_tokens, trace.output_tokens, trace.prefix_id,
                          trace.prefix_tokens, 16)
    assert list(ref.cached_tokens) == table.cached_tokens and ref.evictions == 2


def test_prefill_sees_no_prefix_of_its_own_iteration_and_the_budget_counts_uncached_tokens(step):
    # Two requests of one prefix arriving together are prefilled in one iteration: neither hits. With a
    # 1,000-token budget, a warm cache lets three 800-token prompts (288 new tokens each) share an iteration.
    together = with_prefixes([0.0, 0.0], [800, 800], [1, 1], [4, 4], [512, 512])
    table, _ = run(step, together)
    assert table.cached_tokens == [0, 0] and table.first_token_s[0] == table.first_token_s[1]
    budget = make_step(max_num_tokens=1000)
    warm = with_prefixes([0.0, 5.0, 5.0, 5.0], [800] * 4, [1] * 4, [4] * 4, [512] * 4)
    table, _ = run(budget, warm)
    assert table.cached_tokens == [0, 512, 512, 512]
    assert table.first_token_s[1] == table.first_token_s[2] == table.first_token_s[3]
    assert table.first_token_s[1] - 5.0 == pytest.approx(
        budget.iteration_s(3, 3 * 288, 0, 3 * 288, 3 * (800**2 - 512**2)), rel=1e-12)


@pytest.mark.parametrize("rate", [2.0, 20.0, 80.0])
@pytest.mark.parametrize("kv", [20000, 5000])
def test_fast_path_with_a_cache_matches_the_per_iteration_reference(rate, kv):
    step = make_step(kv_capacity_tokens=kv, kv_pad_tokens=2048, per_padded_kv_token_s=1e-6,
                     admission_lead_per_seq_s=2e-4)
    trace = add_shared_prefixes(poisson_trace(rate, 400, seed=int(rate), in_range=(1, 1500), out_range=(1, 200)),
                                SharedPrefixSpec(0.7, 6, 600, zipf_s=1.0), seed=1)
    table, instance = run(step, trace)
    ref = replay_instance(step, trace.arrival_s, trace.input_tokens, trace.output_tokens, trace.prefix_id,
                          trace.prefix_tokens, 16)
    assert np.max(np.abs(np.asarray(table.first_token_s) - ref.first_token_s)) < 1e-9
    assert np.max(np.abs(np.asarray(table.finish_s) - ref.finish_s)) < 1e-9
    assert table.cached_tokens == ref.cached_tokens.tolist()
    assert instance.prefix_cache.evictions == ref.evictions
    assert instance.busy_j == pytest.approx(ref.busy_j, rel=1e-9)
    assert sum(table.energy_j) == pytest.approx(instance.busy_j, rel=1e-9)
    assert sum(table.cached_tokens) > 0
    if kv == 5000 and rate >= 20.0:
        assert instance.prefix_cache.evictions > 0


def test_every_request_is_finished_or_rejected_with_the_cache_on():
    step = make_step(kv_capacity_tokens=3000, max_num_tokens=1024)
    trace = add_shared_prefixes(poisson_trace(40.0, 600, seed=9, in_range=(1, 1400), out_range=(1, 300)),
                                SharedPrefixSpec(0.8, 4, 900), seed=2)
    table = RequestTable(trace)
    instance = replay_single_instance(step, table, BLOCK16)
    status = np.asarray(table.status)
    assert np.all((status == FINISHED) | (status == REJECTED))
    counts = table.counts()
    assert counts["finished"] + counts["rejected"] == 600 and counts["rejected"] > 0
    # Rejections are decided on the whole prompt: a hit is never promised at arrival.
    rejected = status == REJECTED
    assert np.all((trace.input_tokens[rejected] > 1024) | (trace.input_tokens + trace.output_tokens > 3000)[rejected])
    assert instance.tokens_out == int(trace.output_tokens[~rejected].sum())
    assert instance.prefix_cache.cached_tokens <= step.kv_capacity_tokens


def _digest(result) -> str:
    r = result.requests
    h = hashlib.sha256()
    for col in (r.first_token_s, r.finish_s, r.energy_j, r.instance, r.status, r.reason):
        h.update(np.asarray(col).tobytes())
    h.update(np.array([i.busy_j for i in result.instances]).tobytes())
    return h.hexdigest()


# sha256 of the outcomes of the scenario below. First computed with the engine before prefix caching (d194967), which
# the cache-off engine matched; re-pinned from the cache-off engine when the default profiles were rebuilt for
# issue 11 (new step models, no engine change in between).
BEFORE_PREFIX_CACHING = "fbd85bef5564557b44b8766d5c7fcdd593c017805d13b8cbce161e73bb7ed3ec"


@pytest.fixture(scope="module")
def profiles() -> ProfileSet:
    return ProfileSet.load(default_profile_path())


def test_cache_off_is_bit_identical_to_the_engine_before_prefix_caching(profiles):
    trace = small_trace(seed=5, rate=60.0, duration=300.0, arrival="diurnal")
    settings = ClusterSettings(replan_interval_s=60.0, engine_start_s=30.0, max_queue=4)
    result = simulate(trace, TASKS, SloEnergyOptimal(0.9), profiles, settings)
    assert _digest(result) == BEFORE_PREFIX_CACHING
    assert "prefix_cache" not in summarize(result) and sum(result.requests.cached_tokens) == 0
    # Prefix columns without a cache change nothing; a cache without prefixes changes nothing either.
    prefixed = add_shared_prefixes(trace, SharedPrefixSpec(0.5, 8, 256), seed=0)
    assert _digest(simulate(prefixed, TASKS, SloEnergyOptimal(0.9), profiles, settings)) == BEFORE_PREFIX_CACHING
    cached = ClusterSettings(replan_interval_s=60.0, engine_start_s=30.0, max_queue=4, prefix_cache=BLOCK16)
    assert _digest(simulate(trace, TASKS, SloEnergyOptimal(0.9), profiles, cached)) == BEFORE_PREFIX_CACHING


def test_summary_and_requests_report_the_cache_per_task(profiles):
    trace = add_shared_prefixes(small_trace(seed=3, rate=40.0, duration=120.0),
                                {"chat-s": SharedPrefixSpec(0.6, 4, 256), "code": SharedPrefixSpec(1.0, 1, 128)},
                                seed=0)
    settings = ClusterSettings(replan_interval_s=None, prefix_cache=BLOCK16)
    result = simulate(trace, TASKS, SloEnergyOptimal(0.9), profiles, settings)
    frame = requests_frame(result)
    summary = summarize(result, frame)
    assert {"prefix_id", "prefix_tokens", "cached_tokens"} <= set(frame.columns)
    by_task = {t["task"]: t for t in summary["tasks"]}
    for name in ("chat-s", "code"):
        rows = frame[(frame.task == name) & (frame.status == "finished")]
        carried = rows[rows.prefix_id >= 0]
        assert by_task[name]["prefix_requests"] == len(carried) > 0
        assert by_task[name]["prefix_hit_rate"] == pytest.approx((carried.cached_tokens > 0).mean())
        assert by_task[name]["cached_token_fraction"] == pytest.approx(rows.cached_tokens.sum() / rows.input_tokens.sum())
        assert by_task[name]["prefix_hit_rate"] > 0.5
    assert by_task["chat-r"]["prefix_requests"] == 0 and by_task["chat-r"]["cached_token_fraction"] == 0.0
    assert summary["prefix_cache"]["block_tokens"] == 16
    assert summary["prefix_cache"]["cached_tokens"] == int(frame.cached_tokens.sum()) > 0
    # Hits come in whole blocks, never the whole prompt.
    hit = frame.cached_tokens.to_numpy()
    assert np.all(hit % 16 == 0) and np.all(hit < frame.input_tokens.to_numpy())


def test_cache_settings_are_validated():
    for bad in (0, -16, 1.5, True):
        with pytest.raises(ValueError, match="cluster.prefix_cache.block_tokens"):
            PrefixCacheSettings(block_tokens=bad)


def test_cache_unit_lru_order_and_block_rounding():
    cache = PrefixCache(PrefixCacheSettings(block_tokens=16))
    cache.insert(1, 100)  # 96 tokens
    cache.insert(2, 40)   # 32
    cache.insert(1, 50)   # refresh only (smaller); 1 is now most recent
    assert dict(cache.entries) == {2: 32, 1: 96} and cache.cached_tokens == 128
    assert cache.hit_tokens(1, 200, 1000) == 96 and cache.hit_tokens(1, 40, 1000) == 32
    assert cache.hit_tokens(1, 96, 96) == 80 and cache.hit_tokens(3, 96, 1000) == 0
    cache.fit(100)  # evicts 2 (least recently used) first
    assert dict(cache.entries) == {1: 96} and cache.evictions == 1
    cache.fit(95)
    assert not cache.entries and cache.cached_tokens == 0
