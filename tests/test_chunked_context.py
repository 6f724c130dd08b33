"""Chunked context (StepModel.chunked_context == 1, TensorRT-LLM's enable_chunked_context) in the instance model:
hand-computed cases, the fast path against the per-iteration reference, energy conservation, and the engine
without the flag unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_step, make_trace, poisson_trace
from profiles.step_model import StepModelError
from sim.instance import ChunkedInstance, Instance, replay_single_instance
from sim.prefix_cache import PrefixCacheSettings
from sim.reference import replay_instance
from sim.requests import FINISHED, REJECT_REASONS, REJECTED, RequestTable
from traces.shared_prefix import SharedPrefixSpec, add_shared_prefixes


def run(step, trace, cache=None):
    table = RequestTable(trace)
    instance = replay_single_instance(step, table, cache)
    return table, instance


def test_a_long_prompt_runs_in_three_chunks_and_its_first_token_ends_the_third():
    # 20,000 prompt tokens under a budget of 8,192: chunks of 8,192, 8,192 and 3,616 tokens, attention terms
    # 8192^2, 16384^2 - 8192^2 and 20000^2 - 16384^2 (summing to 20000^2), one sequence each, no KV read.
    step = make_step(chunked_context=1, max_num_tokens=8192, kv_capacity_tokens=30000)
    table, instance = run(step, make_trace([2.0], [20000], [4]))
    chunks = [(8192, 8192**2), (8192, 16384**2 - 8192**2), (3616, 20000**2 - 16384**2)]
    assert sum(sq for _, sq in chunks) == 20000**2 and sum(c for c, _ in chunks) == 20000
    iterations = [step.iteration_s(1, c, 0, c, sq) for c, sq in chunks]
    assert table.first_token_s[0] - 2.0 == pytest.approx(sum(iterations), rel=1e-12)
    decode = [step.iteration_s(1, 1, 20000 + i) for i in range(1, 4)]
    assert table.finish_s[0] - table.first_token_s[0] == pytest.approx(sum(decode), rel=1e-12)
    energy = sum(step.iteration_j(d, c, 0) for d, (c, _) in zip(iterations, chunks)) + sum(
        step.iteration_j(d, 1, 20000 + i) for i, d in enumerate(decode, 1))
    assert instance.busy_j == pytest.approx(energy, rel=1e-12)
    assert table.energy_j[0] == pytest.approx(instance.busy_j, rel=1e-12)
    assert isinstance(instance, ChunkedInstance)
    ref = replay_instance(step, np.array([2.0]), np.array([20000]), np.array([4]))
    assert ref.first_token_s[0] == pytest.approx(table.first_token_s[0], abs=1e-12)
    # Without chunked context the same prompt can never run: rejected at arrival.
    plain, _ = run(make_step(max_num_tokens=8192, kv_capacity_tokens=30000), make_trace([2.0], [20000], [4]))
    assert plain.status == [REJECTED] and REJECT_REASONS[plain.reason[0]] == "exceeds_max_num_tokens"


def test_the_budget_counts_the_decode_tokens_of_the_batch():
    # Ten short requests decode; a 1,000-token prompt arrives at the end of their prefill. With a budget of 512,
    # the ten decode tokens leave 502 for its first chunk, then 498 for the second (not 512 and 488).
    step = make_step(chunked_context=1, max_num_tokens=512, max_batch=32)
    t1 = 0.0 + step.iteration_s(10, 50, 0, 50, 10 * 5**2)
    table, instance = run(step, make_trace([0.0] * 10 + [t1], [5] * 10 + [1000], [100] * 10 + [2]))
    assert table.first_token_s[0] == t1
    first = step.iteration_s(11, 10 + 502, 10 * 6, 502, 502**2)
    second = step.iteration_s(11, 10 + 498, 10 * 7, 498, 1000**2 - 502**2)
    assert table.first_token_s[10] == pytest.approx(t1 + first + second, rel=1e-12)
    assert sum(table.energy_j) == pytest.approx(instance.busy_j, rel=1e-12)
    _assert_matches_reference(step, make_trace([0.0] * 10 + [t1], [5] * 10 + [1000], [100] * 10 + [2]))


def test_decoders_leave_max_num_tokens_minus_batch_per_iteration_to_a_prompt():
    # Six decoders under a budget of 8 leave 2 tokens per iteration: a 10-token prompt takes five iterations,
    # chunk j covering [2j, 2j + 2) while the decoders' KV grows by 6 tokens per iteration.
    step = make_step(chunked_context=1, max_num_tokens=8, max_batch=8)
    t1 = 0.0 + step.iteration_s(6, 6, 0, 6, 6)
    trace = make_trace([0.0] * 6 + [t1], [1] * 6 + [10], [100] * 6 + [3])
    table, _ = run(step, trace)
    expected = sum(step.iteration_s(7, 8, 6 * (2 + j), 2, (2 * j + 2) ** 2 - (2 * j) ** 2) for j in range(5))
    assert table.first_token_s[6] - t1 == pytest.approx(expected, rel=1e-12)
    _assert_matches_reference(step, trace)


def test_chunked_context_needs_a_budget_for_a_full_batch_of_decode_tokens():
    with pytest.raises(StepModelError, match="'max_num_tokens' must be >= max_batch"):
        make_step(chunked_context=1, max_num_tokens=16, max_batch=32)
    make_step(chunked_context=0, max_num_tokens=16, max_batch=32)  # without chunking, nothing to check


def _assert_matches_reference(step, trace, block=None) -> None:
    cache = PrefixCacheSettings(block) if block is not None else None
    table, instance = run(step, trace, cache)
    if block is None:
        ref = replay_instance(step, trace.arrival_s, trace.input_tokens, trace.output_tokens)
    else:
        ref = replay_instance(step, trace.arrival_s, trace.input_tokens, trace.output_tokens, trace.prefix_id,
                              trace.prefix_tokens, block)
        assert table.cached_tokens == ref.cached_tokens.tolist()
        assert instance.prefix_cache.evictions == ref.evictions
    assert np.max(np.abs(np.asarray(table.first_token_s) - ref.first_token_s)) < 1e-9
    assert np.max(np.abs(np.asarray(table.finish_s) - ref.finish_s)) < 1e-9
    assert instance.busy_j == pytest.approx(ref.busy_j, rel=1e-9)
    assert sum(table.energy_j) == pytest.approx(instance.busy_j, rel=1e-9)
    assert all(s == FINISHED for s in table.status)
    assert instance.tokens_out == int(trace.output_tokens.sum())


MODES = {
    "plain": {},
    "admission lead": dict(admission_lead_per_seq_s=3e-4),
    "kv padding": dict(kv_pad_tokens=1024, per_padded_kv_token_s=2e-6),
    "graph capture": dict(graph_q_pad_tokens=64, graph_capture_s=0.01),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("rate", [3.0, 25.0, 80.0])
def test_fast_path_matches_the_reference_with_long_prompts_and_tight_kv(mode, rate):
    """Prompts up to 3x the budget mixed with decodes, a KV capacity that holds few requests at once."""
    for seed, (budget, batch, kv) in enumerate([(512, 16, 4000), (256, 8, 2500), (1024, 64, 6000)]):
        step = make_step(chunked_context=1, max_num_tokens=budget, max_batch=batch, kv_capacity_tokens=kv,
                         **MODES[mode])
        trace = poisson_trace(rate, 300, seed=seed + int(rate), in_range=(1, min(3 * budget, kv - 200)),
                              out_range=(1, 200))
        assert (trace.input_tokens > budget).any()
        _assert_matches_reference(step, trace)


@pytest.mark.parametrize("rate", [5.0, 40.0])
def test_fast_path_matches_the_reference_with_a_prefix_cache(rate):
    """Cached tokens are skipped: the first chunk starts at the cached offset; prefixes are cached when the last
    chunk's iteration ends; the cache is squeezed by running requests (evictions)."""
    step = make_step(chunked_context=1, max_num_tokens=384, kv_capacity_tokens=5000,
                     admission_lead_per_seq_s=2e-4)
    trace = add_shared_prefixes(poisson_trace(rate, 400, seed=int(rate), in_range=(1, 1500), out_range=(1, 200)),
                                SharedPrefixSpec(0.7, 6, 600, zipf_s=1.0), seed=1)
    _assert_matches_reference(step, trace, block=16)
    table, instance = run(step, trace, PrefixCacheSettings(16))
    assert sum(table.cached_tokens) > 0
    if rate > 10:
        assert instance.prefix_cache.evictions > 0


def test_a_cached_prefix_starts_the_chunks_at_its_offset():
    # Request 1 shares request 0's 512-token prefix (cached once request 0's prefill is done): its 700 uncached
    # tokens run in chunks of 256, 256 and 188 from offset 512.
    step = make_step(chunked_context=1, max_num_tokens=256, kv_capacity_tokens=20000)
    trace = make_trace([0.0, 30.0], [600, 1212], [2, 2])
    trace = type(trace)(trace.arrival_s, trace.input_tokens, trace.output_tokens, trace.task, trace.task_names,
                        "test", np.array([3, 3]), np.array([512, 512]))
    table, _ = run(step, trace, PrefixCacheSettings(16))
    assert table.cached_tokens == [0, 512]
    bounds = [512, 768, 1024, 1212]
    expected = sum(step.iteration_s(1, b - a, 0, b - a, b * b - a * a) for a, b in zip(bounds, bounds[1:]))
    assert table.first_token_s[1] - 30.0 == pytest.approx(expected, rel=1e-12)


def test_without_the_flag_the_engine_is_the_plain_instance_and_unchanged():
    step = make_step(max_num_tokens=100_000)
    trace = poisson_trace(40.0, 300, seed=2)
    table, instance = run(step, trace)
    assert type(instance) is Instance
    chunked, _ = run(make_step(chunked_context=1, max_num_tokens=100_000), trace)
    # With a budget no iteration reaches, chunking never splits a prompt, but decode tokens share the budget and
    # prompts are admitted the same way: the outcomes equal the plain engine's.
    assert np.allclose(np.asarray(chunked.first_token_s), np.asarray(table.first_token_s), rtol=0, atol=1e-9)
    assert np.allclose(np.asarray(chunked.finish_s), np.asarray(table.finish_s), rtol=0, atol=1e-9)
    assert np.allclose(np.asarray(chunked.energy_j), np.asarray(table.energy_j), rtol=1e-9)


def test_every_request_is_finished_or_rejected_and_rejections_are_kv_only():
    step = make_step(chunked_context=1, kv_capacity_tokens=3000, max_num_tokens=256, max_batch=16)
    trace = poisson_trace(40.0, 500, seed=9, in_range=(1, 3200), out_range=(1, 300))
    table, instance = run(step, trace)
    status = np.asarray(table.status)
    assert np.all((status == FINISHED) | (status == REJECTED))
    rejected = status == REJECTED
    assert rejected.any() and np.all((trace.input_tokens + trace.output_tokens)[rejected] > 3000)
    assert {REJECT_REASONS[r] for r, s in zip(table.reason, status) if s == REJECTED} == {"exceeds_kv_capacity"}
    assert (trace.input_tokens[~rejected] > 256).any()
    assert instance.tokens_out == int(trace.output_tokens[~rejected].sum())
    assert sum(table.energy_j) == pytest.approx(instance.busy_j, rel=1e-9)
