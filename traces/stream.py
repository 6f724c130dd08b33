"""Traces read in chunks, for runs too long to hold in memory (a week is tens of millions of requests).

A ``TraceStream`` yields consecutive ``Trace`` chunks in arrival order and answers how many arrivals
of a task fall in a time window (what a planner's load estimate needs) without materialising the
whole trace. Two implementations:

* ``ChunkedTrace``: an in-memory ``Trace`` cut into time chunks (tests, streaming a shipped trace).
* ``AzureWeekTrace``: the shipped 2023 Azure traces (conv and code) tiled over any duration under a
  diurnal rate, mapped onto the §8.3 case-study tasks. Every chunk is generated on demand from the
  spec alone, so a week is never held in memory.

How ``AzureWeekTrace`` builds arrivals. Each Azure trace is a template of real inter-arrival times;
tiled end to end (``traces.transform.tile_period_s``) it is a stationary stream. The two templates
are merged on an "operational" time axis ``u`` where conv arrives at rate ``1 - share(code)`` and code
at rate ``share(code)`` (total 1 per unit), and wall time is ``t = Λ⁻¹(u)`` with ``Λ(t) = ∫₀ᵗ λ``
for the diurnal rate ``λ`` (a time change: the rate follows ``λ`` while the traces' burstiness is
kept). Conv requests get chat-s, chat-r or summarization drawn with the mix's shares (a fresh draw
per tiled copy, seeded by the copy's index); lengths are the trace's own (input, output) pairs
aligned to each task's benchmark means as in the §8.3 trace (``traces.workloads``), or raw
(``lengths="raw"``). Which trace serves a task follows its workload (``workloads``; default ``TASK_WORKLOAD``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np

from traces.azure import load_shipped_trace
from traces.case_study import CASE_STUDY_TASKS, DEFAULT_MIX, TASK_WORKLOAD, _normalise_mix, _normalise_workloads
from traces.lengths import AlignedLengths, EmpiricalLengths
from traces.synthetic import DiurnalRate, diurnal_rate
from traces.trace import Trace
from traces.transform import tile_period_s
from traces.workloads import (DEFAULT_MAX_TOTAL_TOKENS, LENGTH_READINGS, UnknownWorkloadError, workload_lengths,
                              workload_spec)


class TraceStream(Protocol):
    task_names: tuple[str, ...]
    source: str

    @property
    def first_arrival_s(self) -> float: ...

    @property
    def last_arrival_s(self) -> float: ...

    @property
    def duration_s(self) -> float:
        """Last minus first arrival, as ``Trace.duration_s``."""

    def chunks(self) -> Iterator[Trace]:
        """Consecutive chunks in arrival order; together they are the whole trace."""

    def count(self, task_id: int, lo_s: float, hi_s: float) -> int:
        """Arrivals of one task in ``[lo_s, hi_s)``."""


class ChunkedTrace:
    """An in-memory trace served as a stream of ``chunk_s``-long chunks."""

    def __init__(self, trace: Trace, chunk_s: float = 3600.0):
        if not (chunk_s > 0 and math.isfinite(chunk_s)):
            raise ValueError(f"chunk_s must be finite and > 0, got {chunk_s!r}")
        self.trace = trace
        self.chunk_s = chunk_s
        self.task_names = trace.task_names
        self.source = trace.source
        self._by_task = [trace.arrival_s[trace.task == k] for k in range(len(trace.task_names))]

    @property
    def first_arrival_s(self) -> float:
        return float(self.trace.arrival_s[0]) if len(self.trace) else 0.0

    @property
    def last_arrival_s(self) -> float:
        return float(self.trace.arrival_s[-1]) if len(self.trace) else 0.0

    @property
    def duration_s(self) -> float:
        return self.trace.duration_s

    def __len__(self) -> int:
        return len(self.trace)

    def chunks(self) -> Iterator[Trace]:
        arrival = self.trace.arrival_s
        if not len(arrival):
            return
        edges = np.arange(0.0, self.last_arrival_s + self.chunk_s, self.chunk_s)
        cuts = np.searchsorted(arrival, edges[1:], "left")
        lo = 0
        for hi in list(cuts) + [len(arrival)]:
            if hi > lo:
                yield _rows(self.trace, lo, hi)
                lo = hi

    def count(self, task_id: int, lo_s: float, hi_s: float) -> int:
        arrivals = self._by_task[task_id]
        return int(np.searchsorted(arrivals, hi_s, "left") - np.searchsorted(arrivals, lo_s, "left"))

    def bin_counts(self, task_id: int, edges: np.ndarray) -> np.ndarray:
        """Arrivals of one task in each ``[edges[i], edges[i + 1])``."""
        return np.diff(np.searchsorted(self._by_task[task_id], edges, "left"))


def _rows(trace: Trace, lo: int, hi: int) -> Trace:
    return Trace(trace.arrival_s[lo:hi], trace.input_tokens[lo:hi], trace.output_tokens[lo:hi], trace.task[lo:hi],
                 trace.task_names, trace.source, **trace.prefix_columns(lambda column: column[lo:hi]))


# --- the week-long Azure trace ---------------------------------------------------------------------

WEEK_S = 7 * 86_400.0
_NEWTON_TOLERANCE_S = 1e-9


@dataclass(frozen=True, slots=True)
class AzureWeekSpec:
    """Parameters of the tiled Azure trace. ``peak_rate_qps`` is the diurnal rate's peak (the mean is
    ``peak * 2 / (1 + peak_to_trough)``); ``mix``, ``workloads`` and ``lengths`` as in ``CaseStudyTraceSpec``:
    each task is served from the Azure trace its workload resamples (default: code gets the code trace, the
    other tasks share the conv trace), with that workload's lengths (``rescaled`` or ``raw``)."""

    duration_s: float = WEEK_S
    peak_rate_qps: float = 100.0
    peak_to_trough: float = 2.0
    period_s: float = 86_400.0
    mix: tuple[tuple[str, float], ...] = DEFAULT_MIX
    seed: int = 0
    chunk_s: float = 3600.0
    max_total_tokens: int = DEFAULT_MAX_TOTAL_TOKENS
    workloads: tuple[tuple[str, str], ...] | None = None  # None: TASK_WORKLOAD for the mix's tasks
    lengths: str = "rescaled"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mix", _normalise_mix(self.mix))
        workloads = self.workloads
        if workloads is None:
            workloads = tuple((name, TASK_WORKLOAD[name]) for name, _ in self.mix if name in TASK_WORKLOAD)
        object.__setattr__(self, "workloads", _normalise_workloads(workloads))
        for name in ("duration_s", "peak_rate_qps", "period_s", "chunk_s"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"AzureWeekSpec.{name} must be finite and > 0, got {value!r}")
        if not (self.peak_to_trough >= 1 and math.isfinite(self.peak_to_trough)):
            raise ValueError(f"AzureWeekSpec.peak_to_trough must be finite and >= 1, got {self.peak_to_trough!r}")
        names = [name for name, _ in self.mix]
        unknown = [n for n in names if n not in CASE_STUDY_TASKS]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(f"AzureWeekSpec.mix must name distinct tasks of {CASE_STUDY_TASKS}, got {names}")
        if any(not (share > 0 and math.isfinite(share)) for _, share in self.mix):
            raise ValueError("AzureWeekSpec.mix shares must be finite and > 0")
        if abs(sum(share for _, share in self.mix) - 1.0) > 1e-6:
            raise ValueError("AzureWeekSpec.mix shares must sum to 1")
        if self.lengths not in LENGTH_READINGS:
            raise ValueError(f"AzureWeekSpec.lengths must be one of {', '.join(LENGTH_READINGS)}, got {self.lengths!r}")
        mapped = dict(self.workloads)
        if len(mapped) != len(self.workloads) or set(mapped) != set(names):
            raise ValueError(f"AzureWeekSpec.workloads must give one workload to every task of the mix {names}, "
                             f"got {list(self.workloads)}")
        for name, workload in self.workloads:
            try:
                workload_spec(workload)
            except UnknownWorkloadError as exc:
                raise ValueError(f"AzureWeekSpec.workloads: task {name!r}: {exc} (a week tiles the Azure traces: "
                                 f"only Azure-derived workloads)") from None

    def azure_kind(self, task: str) -> str:
        """The shipped Azure trace (conv, code) whose arrivals and pairs serve a task."""
        return workload_spec(dict(self.workloads)[task]).azure_kind

    @property
    def rate(self) -> DiurnalRate:
        amplitude = (self.peak_to_trough - 1.0) / (self.peak_to_trough + 1.0)
        return diurnal_rate(self.peak_rate_qps / (1.0 + amplitude), self.peak_to_trough, self.period_s)

    @property
    def expected_requests(self) -> float:
        return float(_cumulative(self.rate, np.array([self.duration_s]))[0])


def _cumulative(rate: DiurnalRate, t_s: np.ndarray) -> np.ndarray:
    """Λ(t) = ∫₀ᵗ rate: the expected number of arrivals before t."""
    w = 2.0 * np.pi / rate.period_s
    wave = np.sin(w * (t_s - rate.peak_at_s)) - np.sin(-w * rate.peak_at_s)
    return rate.mean_qps * (t_s + rate.amplitude / w * wave)


def _inverse_cumulative(rate: DiurnalRate, u: np.ndarray) -> np.ndarray:
    """t with Λ(t) = u (Newton; Λ is increasing since the rate stays above its trough > 0)."""
    t = u / rate.mean_qps
    for _ in range(50):
        step = (_cumulative(rate, t) - u) / rate(t)
        t = t - step
        if not step.size or np.max(np.abs(step)) < _NEWTON_TOLERANCE_S:
            break
    return np.maximum.accumulate(t) if t.size else t


@dataclass(frozen=True, slots=True, eq=False)
class _Template:
    """One tiled Azure trace on the operational axis: copy j holds arrivals ``(j + offset) * period_u``."""

    offset: np.ndarray  # arrival position within a copy, in [0, 1)
    period_u: float
    input_tokens: np.ndarray  # per task id (index into CASE_STUDY_TASKS): aligned lengths, or None
    output_tokens: np.ndarray
    tasks: tuple[int, ...]  # task ids this template serves
    shares: np.ndarray  # their probabilities, summing to 1
    stream_id: int


class AzureWeekTrace:
    """The shipped Azure 2023 traces tiled over ``spec.duration_s`` under a diurnal rate (see module notes)."""

    def __init__(self, spec: AzureWeekSpec = AzureWeekSpec()):
        self.spec = spec
        self.rate = spec.rate
        self.task_names = CASE_STUDY_TASKS
        self.source = (
            f"azure-week: Azure LLM 2023 conv+code traces tiled over {spec.duration_s:g} s, diurnal rate peak "
            f"{spec.peak_rate_qps:g} req/s, peak/trough {spec.peak_to_trough:g}, period {spec.period_s:g} s, "
            f"mix {dict(spec.mix)}, workloads {dict(spec.workloads)}, {spec.lengths} lengths, seed {spec.seed}"
        )
        self._templates = self._build_templates()
        self._n_chunks = math.ceil(spec.duration_s / spec.chunk_s)
        self._cache: OrderedDict[int, Trace] = OrderedDict()
        self._task_arrivals: OrderedDict[int, list[np.ndarray]] = OrderedDict()
        self._chunk_counts: dict[int, np.ndarray] = {}
        self._copy_tasks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def _build_templates(self) -> list[_Template]:
        shares = dict(self.spec.mix)
        workloads = dict(self.spec.workloads)
        groups = tuple((kind, [t for t in CASE_STUDY_TASKS if t in shares and self.spec.azure_kind(t) == kind])
                       for kind in ("conv", "code"))
        templates = []
        for stream_id, (kind, names) in enumerate(groups):
            if not names:
                continue
            trace = load_shipped_trace(kind)
            total = sum(shares[n] for n in names)
            n = len(trace)
            period_s = tile_period_s(trace)
            offset = (trace.arrival_s - trace.arrival_s[0]) / period_s
            inputs = np.zeros((len(CASE_STUDY_TASKS), n), dtype=np.int64)
            outputs = np.zeros((len(CASE_STUDY_TASKS), n), dtype=np.int64)
            for name in names:
                sampler = workload_lengths(workloads[name], self.spec.max_total_tokens, self.spec.lengths)
                k = CASE_STUDY_TASKS.index(name)
                if isinstance(sampler, AlignedLengths):
                    inputs[k], outputs[k] = sampler.align(trace.input_tokens, trace.output_tokens)
                else:  # a raw azure-* workload: the trace's own pairs
                    assert isinstance(sampler, EmpiricalLengths)
                    inputs[k], outputs[k] = trace.input_tokens, trace.output_tokens
            templates.append(_Template(
                offset=offset, period_u=n / total, input_tokens=inputs, output_tokens=outputs,
                tasks=tuple(CASE_STUDY_TASKS.index(name) for name in names),
                shares=np.array([shares[name] / total for name in names]), stream_id=stream_id,
            ))
        return templates

    # --- TraceStream ---------------------------------------------------------------------------

    @property
    def first_arrival_s(self) -> float:
        for h in range(self._n_chunks):
            chunk = self.chunk(h)
            if len(chunk):
                return float(chunk.arrival_s[0])
        return 0.0

    @property
    def last_arrival_s(self) -> float:
        for h in reversed(range(self._n_chunks)):
            chunk = self.chunk(h)
            if len(chunk):
                return float(chunk.arrival_s[-1])
        return 0.0

    @property
    def duration_s(self) -> float:
        return self.last_arrival_s - self.first_arrival_s

    @property
    def n_chunks(self) -> int:
        return self._n_chunks

    def chunks(self) -> Iterator[Trace]:
        for h in range(self._n_chunks):
            yield self.chunk(h)

    def count(self, task_id: int, lo_s: float, hi_s: float) -> int:
        if hi_s <= lo_s:
            return 0
        chunk_s = self.spec.chunk_s
        first = max(int(lo_s // chunk_s), 0)
        last = min(int(hi_s // chunk_s), self._n_chunks - 1)
        total = 0
        for h in range(first, last + 1):
            start, end = h * chunk_s, (h + 1) * chunk_s
            if lo_s <= start and end <= hi_s:
                total += int(self._counts(h)[task_id])
            else:
                arrivals = self._arrivals_of(h)[task_id]
                total += int(np.searchsorted(arrivals, hi_s, "left") - np.searchsorted(arrivals, lo_s, "left"))
        return total

    def bin_counts(self, task_id: int, edges: np.ndarray) -> np.ndarray:
        """Arrivals of one task in each ``[edges[i], edges[i + 1])`` (the chunks they span, searched once)."""
        chunk_s = self.spec.chunk_s
        lo_s, hi_s = float(edges[0]), float(edges[-1])
        first = max(int(lo_s // chunk_s), 0)
        last = min(int(hi_s // chunk_s), self._n_chunks - 1)
        parts = [self._arrivals_of(h)[task_id] for h in range(first, last + 1)]
        arrivals = np.concatenate(parts) if parts else np.empty(0)
        return np.diff(np.searchsorted(arrivals, edges, "left"))

    # --- chunks --------------------------------------------------------------------------------

    def chunk(self, h: int) -> Trace:
        """Chunk ``h``: the arrivals in ``[h * chunk_s, (h + 1) * chunk_s)`` (cut at ``duration_s``)."""
        if h in self._cache:
            self._cache.move_to_end(h)
            return self._cache[h]
        trace = self._generate(h)
        self._cache[h] = trace
        while len(self._cache) > 3:
            self._cache.popitem(last=False)
        return trace

    def _generate(self, h: int) -> Trace:
        spec = self.spec
        t_lo = h * spec.chunk_s
        t_hi = min((h + 1) * spec.chunk_s, spec.duration_s)
        u_lo, u_hi = _cumulative(self.rate, np.array([t_lo, t_hi]))
        parts_u, parts_in, parts_out, parts_task = [], [], [], []
        for tpl in self._templates:
            for copy in range(int(u_lo // tpl.period_u), int(u_hi // tpl.period_u) + 1):
                u = (copy + tpl.offset) * tpl.period_u
                lo, hi = np.searchsorted(u, [u_lo, u_hi], "left")
                if hi <= lo:
                    continue
                task = self._tasks_of_copy(tpl, copy)[lo:hi]
                rows = np.arange(lo, hi)
                parts_u.append(u[lo:hi])
                parts_in.append(tpl.input_tokens[task, rows])
                parts_out.append(tpl.output_tokens[task, rows])
                parts_task.append(task)
        if not parts_u:
            empty = np.array([], dtype=np.int64)
            return Trace(np.array([], dtype=float), empty, empty, empty, self.task_names, self.source)
        u = np.concatenate(parts_u)
        order = np.argsort(u, kind="stable")
        arrival = _inverse_cumulative(self.rate, u[order])
        arrival = np.clip(arrival, t_lo, np.nextafter(t_hi, -np.inf))
        return Trace(arrival, np.concatenate(parts_in)[order], np.concatenate(parts_out)[order],
                     np.concatenate(parts_task)[order], self.task_names, f"{self.source} | chunk {h}")

    def _tasks_of_copy(self, tpl: _Template, copy: int) -> np.ndarray:
        key = (tpl.stream_id, copy)
        tasks = self._copy_tasks.get(key)
        if tasks is None:
            ids = np.array(tpl.tasks, dtype=np.int64)
            if len(ids) == 1:
                tasks = np.full(len(tpl.offset), ids[0], dtype=np.int64)
            else:
                rng = np.random.default_rng([self.spec.seed, tpl.stream_id, copy])
                tasks = ids[rng.choice(len(ids), size=len(tpl.offset), p=tpl.shares)]
            self._copy_tasks[key] = tasks
            while len(self._copy_tasks) > 16:
                self._copy_tasks.popitem(last=False)
        return tasks

    def _arrivals_of(self, h: int) -> list[np.ndarray]:
        if h in self._task_arrivals:
            self._task_arrivals.move_to_end(h)
            return self._task_arrivals[h]
        chunk = self.chunk(h)
        per_task = [chunk.arrival_s[chunk.task == k] for k in range(len(self.task_names))]
        self._task_arrivals[h] = per_task
        while len(self._task_arrivals) > 3:
            self._task_arrivals.popitem(last=False)
        return per_task

    def _counts(self, h: int) -> np.ndarray:
        counts = self._chunk_counts.get(h)
        if counts is None:
            chunk = self.chunk(h)
            counts = self._chunk_counts[h] = np.bincount(chunk.task, minlength=len(self.task_names))
        return counts
