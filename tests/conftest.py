"""Shared builders for tests: small step models and traces with known behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from profiles.step_model import StepModel
from traces.trace import Trace


def make_step(**overrides) -> StepModel:
    values = dict(
        overhead_s=0.002, per_seq_s=2e-5, per_token_s=1e-6, weights_s=0.008, flop_token_s=4e-5,
        per_kv_token_s=2e-7, per_prefill_token_s=1e-6, prefill_attn_s=1e-9, idle_w=100.0, active_w=200.0,
        flop_token_j=0.01, per_kv_token_j=1e-5, weights_j=2.0, max_power_w=700.0,
        kv_capacity_tokens=20000, max_batch=32, max_num_tokens=4096,
    )
    values.update(overrides)
    return StepModel(**values)


def make_trace(arrival_s, input_tokens, output_tokens, task=None, names=("t",)) -> Trace:
    n = len(arrival_s)
    return Trace(
        np.asarray(arrival_s, dtype=float),
        np.asarray(input_tokens, dtype=np.int64),
        np.asarray(output_tokens, dtype=np.int64),
        np.zeros(n, dtype=np.int64) if task is None else np.asarray(task, dtype=np.int64),
        tuple(names),
        "test",
    )


def poisson_trace(rate_qps: float, n: int, seed: int, in_range=(1, 800), out_range=(1, 300)) -> Trace:
    rng = np.random.default_rng(seed)
    return make_trace(
        np.cumsum(rng.exponential(1.0 / rate_qps, n)),
        rng.integers(*in_range, n),
        rng.integers(*out_range, n),
    )


@pytest.fixture
def step() -> StepModel:
    return make_step()
