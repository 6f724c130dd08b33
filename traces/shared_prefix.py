"""A configured hit model: give a trace without prefix columns shared prompt prefixes.

The published Azure traces record only lengths, so whether requests share a system prompt or a chat
history is not in them. This transformation assumes it, per task: a ``fraction`` of the task's requests
(drawn independently per request) carries one of ``groups`` shared prefixes of ``tokens`` tokens, the
prefix picked uniformly (``zipf_s = 0``) or with Zipf popularity ``p(k) ~ (k + 1)^-zipf_s``. A prefix is
clipped to ``input_tokens - 1`` (at least one prompt token is the request's own); a request with a
one-token prompt gets none. Prefix ids are unique across tasks (task ``k``'s ids follow those of tasks
``0..k-1``). The draw is seeded explicitly (``seed``, the task's index, and ``chunk`` for a trace built in
chunks), so a run is deterministic and which requests of a task share which prefix does not depend on the other
tasks' settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np

from traces.trace import NO_PREFIX, Trace


@dataclass(frozen=True, slots=True)
class SharedPrefixSpec:
    """One task's shared prefixes: which fraction of requests carries one, how many there are, how long."""

    fraction: float = 0.0
    groups: int = 8
    tokens: int = 1024
    zipf_s: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not (0.0 <= self.fraction <= 1.0):
            raise ValueError(f"SharedPrefixSpec.fraction must be in [0, 1], got {self.fraction!r}")
        for name in ("groups", "tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"SharedPrefixSpec.{name} must be a whole number >= 1, got {value!r}")
        if not (self.zipf_s >= 0.0 and math.isfinite(self.zipf_s)):
            raise ValueError(f"SharedPrefixSpec.zipf_s must be finite and >= 0, got {self.zipf_s!r}")

    def popularity(self) -> np.ndarray:
        weights = np.arange(1, self.groups + 1, dtype=float) ** -self.zipf_s
        return weights / weights.sum()


def add_shared_prefixes(trace: Trace, spec: SharedPrefixSpec | Mapping[str, SharedPrefixSpec], seed: int,
                        chunk: int = 0) -> Trace:
    """The trace with prefix columns drawn by ``spec`` (one for every task, or per task name: tasks not
    named get none). A trace that already carries prefixes is refused: the two would be mixed."""
    if trace.has_prefixes:
        raise ValueError(f"trace {trace.source!r} already carries prefix_id/prefix_tokens; "
                         "a shared-prefix model would overwrite them")
    specs = _per_task(trace.task_names, spec)
    prefix_id = np.full(len(trace), NO_PREFIX, dtype=np.int64)
    prefix_tokens = np.zeros(len(trace), dtype=np.int64)
    offset = 0
    for task_id, task_spec in enumerate(specs):
        if task_spec is not None and task_spec.fraction > 0.0:
            rows = np.flatnonzero(trace.task == task_id)
            rng = np.random.default_rng((int(seed), task_id, int(chunk)))
            carries = rng.random(len(rows)) < task_spec.fraction
            group = rng.choice(task_spec.groups, size=len(rows), p=task_spec.popularity())
            tokens = np.minimum(task_spec.tokens, trace.input_tokens[rows] - 1)
            carries &= tokens > 0
            prefix_id[rows[carries]] = offset + group[carries]
            prefix_tokens[rows[carries]] = tokens[carries]
        offset += task_spec.groups if task_spec is not None else 0
    return Trace(trace.arrival_s, trace.input_tokens, trace.output_tokens, trace.task, trace.task_names,
                 f"{trace.source} | shared_prefix(seed {seed})", prefix_id=prefix_id, prefix_tokens=prefix_tokens)


def _per_task(task_names: tuple[str, ...],
              spec: SharedPrefixSpec | Mapping[str, SharedPrefixSpec]) -> list[SharedPrefixSpec | None]:
    if isinstance(spec, SharedPrefixSpec):
        return [spec] * len(task_names)
    unknown = sorted(set(spec) - set(task_names))
    if unknown:
        raise ValueError(f"shared prefixes given for task(s) {unknown} not in the trace (tasks: {list(task_names)})")
    return [spec.get(name) for name in task_names]


class SharedPrefixStream:
    """A ``TraceStream`` whose chunks get shared prefixes, each chunk drawn with its own index as ``chunk``."""

    def __init__(self, stream, spec: SharedPrefixSpec | Mapping[str, SharedPrefixSpec], seed: int):
        _per_task(stream.task_names, spec)  # fail at once on unknown task names
        self.stream = stream
        self.spec = spec
        self.seed = seed
        self.task_names = stream.task_names
        self.source = f"{stream.source} | shared_prefix(seed {seed})"

    @property
    def first_arrival_s(self) -> float:
        return self.stream.first_arrival_s

    @property
    def last_arrival_s(self) -> float:
        return self.stream.last_arrival_s

    @property
    def duration_s(self) -> float:
        return self.stream.duration_s

    def chunks(self) -> Iterator[Trace]:
        for index, chunk in enumerate(self.stream.chunks()):
            yield add_shared_prefixes(chunk, self.spec, self.seed, chunk=index)

    def count(self, task_id: int, lo_s: float, hi_s: float) -> int:
        return self.stream.count(task_id, lo_s, hi_s)

    def bin_counts(self, task_id: int, edges):
        from sim.cluster import bin_counts
        return bin_counts(self.stream, task_id, edges)
