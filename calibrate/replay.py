"""The requests a trace-slice replay sends: one place, so the dry run shows exactly what the engine will get.

``duration_s`` is the slice's length in *trace* time; the slice is then compressed or stretched to
``rate_qps``, so on the engine it lasts about ``n_requests / rate_qps`` seconds (the Azure 2023 conversation
trace runs at about 5.5 req/s: 60 s of it replayed at 1 req/s take about 5 minutes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibrate.plan import ReplaySpec
from calibrate.prompts import stable_hash

REPLAY_PROMPT_OFFSET = 3_000_000


def point_prompt_base(label: str) -> int:
    """The prompt index of request 0 of a point: every point (each burst QPS, each replay) draws its own prompts,
    so no two points send the same prompt (an engine that caches prefixes would skip its prefill)."""
    return (1 + stable_hash(label)) << 24


def replay_prompt_base(name: str) -> int:
    """The prompt index (and request index) of a replay's request 0."""
    return REPLAY_PROMPT_OFFSET + point_prompt_base(f"replay|{name}")


@dataclass(frozen=True)
class ReplayRequests:
    arrival_s: np.ndarray  # send times from the replay's start
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    trace_source: str
    prefix_group: np.ndarray | None = None  # shared-prefix group per request (-1: none); None: all distinct
    prefix_tokens: np.ndarray | None = None  # tokens of the prompt that are the group's shared prefix

    @property
    def wall_s(self) -> float:
        """Time from the first to the last send on the engine (draining the last requests comes on top)."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self.arrival_s) > 1 else 0.0


def replay_requests(replay: ReplaySpec) -> ReplayRequests:
    """The slice of ``replay.trace``, scaled to ``replay.rate_qps``, lengths clipped to ``max_total_tokens``
    (output first, at most ``max_total_tokens - 1``; then input into what is left)."""
    from traces.azure import load_azure_trace, load_shipped_trace
    from traces.transform import scale_to_rate, slice_time

    trace = load_shipped_trace(replay.trace) if replay.trace in ("conv", "code") else load_azure_trace(replay.trace)
    piece = scale_to_rate(slice_time(trace, replay.start_s, replay.start_s + replay.duration_s), replay.rate_qps)
    out = np.clip(np.asarray(piece.output_tokens, dtype=np.int64), 1, replay.max_total_tokens - 1)
    inp = np.maximum(1, np.minimum(np.asarray(piece.input_tokens, dtype=np.int64), replay.max_total_tokens - out))
    group, shared = (shared_prefixes(inp, replay.shared_prefix) if replay.shared_prefix is not None else (None, None))
    return ReplayRequests(np.asarray(piece.arrival_s, dtype=float), inp, out, piece.source, group, shared)


def replay_prefixes(spec: ReplaySpec) -> dict[int, tuple[int, int]]:
    """Request index -> (shared-prefix group, tokens) of a replay that shares prefixes, as the coordinator sends it."""
    reqs = replay_requests(spec)
    if reqs.prefix_tokens is None:
        return {}
    base = replay_prompt_base(spec.name)
    return {base + j: (int(reqs.prefix_group[j]), int(reqs.prefix_tokens[j]))
            for j in range(len(reqs.arrival_s)) if reqs.prefix_tokens[j] > 0}


def shared_prefixes(input_tokens: np.ndarray, spec) -> tuple[np.ndarray, np.ndarray]:
    """Which requests start with which shared prefix: a ``spec.fraction`` of them, each with one of
    ``spec.groups`` prefixes of ``spec.tokens`` tokens (at most its prompt - 1), seeded by ``spec.seed``."""
    rng = np.random.default_rng([int(spec.seed), 0x5AFE])
    n = len(input_tokens)
    shared = rng.random(n) < spec.fraction
    group = rng.integers(0, spec.groups, n)
    tokens = np.where(shared, np.minimum(spec.tokens, np.asarray(input_tokens) - 1), 0).clip(min=0)
    return np.where(tokens > 0, group, -1).astype(np.int64), tokens.astype(np.int64)


def describe_replay(replay: ReplaySpec) -> str:
    """One line for the dry run: how many requests, over how long, of which lengths."""
    reqs = replay_requests(replay)
    return (f"replay {replay.name}: {replay.trace} [{replay.start_s:g}, {replay.start_s + replay.duration_s:g}) s of "
            f"trace, {len(reqs.arrival_s)} requests at {replay.rate_qps:g} req/s = {reqs.wall_s:.0f} s of sending; "
            f"input mean {reqs.input_tokens.mean():.0f} / max {reqs.input_tokens.max()} tokens, output mean "
            f"{reqs.output_tokens.mean():.0f} / max {reqs.output_tokens.max()} tokens"
            + (f"; {int((reqs.prefix_tokens > 0).sum())} requests start with one of {replay.shared_prefix.groups} "
               f"shared prefixes of up to {replay.shared_prefix.tokens} tokens"
               if reqs.prefix_tokens is not None else ""))
