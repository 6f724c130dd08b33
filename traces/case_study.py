"""The cluster-level trace of the qMeter paper's §8.3 case study, and single-workload traces.

§8.3: four request types (chat-S, chat-R, code, summarization), each with its own pool; lengths
sampled from the Azure LLM trace aligned with the task's benchmark dataset; total load scaled
above 100 req/s; chat-S : chat-R = 4 : 1; chat-S is 50-60 % of traffic. Tasks are drawn per
arrival from the mix (independent thinning of one arrival process), so each task's stream is
itself Poisson when the total is.

Which workload gives each task its lengths (``workloads``) and how those lengths read the Azure pairs
(``lengths``: ``rescaled`` to the benchmark means, or ``raw``) are parameters of the spec; the app
takes them from its trace config (``experiments/conf/trace/case_study.yaml``: ``tasks``, ``lengths``).
The defaults below are the library's, equal to that config's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from traces.synthetic import diurnal_rate, gamma_arrivals, poisson_arrivals, time_varying_arrivals
from traces.trace import Trace
from traces.workloads import DEFAULT_MAX_TOTAL_TOKENS, LENGTH_READINGS, UnknownWorkloadError, workload_lengths

CASE_STUDY_TASKS: tuple[str, ...] = ("chat-s", "chat-r", "code", "summarization")

# Benchmark dataset each task's lengths are aligned with (paper §3.2 Table 2 / §8.3). The library's default;
# the app reads the map from ``trace.tasks.<task>.workload``.
TASK_WORKLOAD: Mapping[str, str] = {
    "chat-s": "sharegpt",
    "chat-r": "sharegpt",
    "code": "humaneval",
    "summarization": "newsqa",
}

CHAT_S_TO_CHAT_R = 4.0  # paper §8.3: fixed ratio

# ASSUMPTION: the paper fixes only chat-S : chat-R = 4 : 1 and says chat-S is "50-60 % of the
# traffic". The split below (chat-S 56 %, chat-R 14 %, code 20 %, summarization 10 %) is ours.
DEFAULT_MIX: tuple[tuple[str, float], ...] = (
    ("chat-s", 0.56),
    ("chat-r", 0.14),
    ("code", 0.20),
    ("summarization", 0.10),
)

ARRIVALS = ("poisson", "gamma", "diurnal")
DIURNAL_PEAK_TO_TROUGH = 2.0
_SHARE_TOLERANCE = 1e-6


@dataclass(frozen=True, slots=True)
class CaseStudyTraceSpec:
    """Parameters of the §8.3 trace. ``mix`` shares other than chat-s:chat-r = 4:1 are an assumption.

    ``arrival``: ``poisson``; ``gamma`` (renewal, coefficient of variation ``cv``); ``diurnal``
    (sinusoidal rate with mean ``total_rate_qps`` and peak/trough 2, one period per
    ``diurnal_period_s``, default the whole trace, so the trace's mean rate is the total rate).
    ``workloads``: (task, workload) pairs, one per task of ``mix`` (default ``TASK_WORKLOAD``);
    ``lengths``: ``rescaled`` or ``raw`` (``traces.workloads.LENGTH_READINGS``).
    """

    total_rate_qps: float = 120.0
    duration_s: float = 3600.0
    mix: tuple[tuple[str, float], ...] = DEFAULT_MIX
    arrival: str = "poisson"
    cv: float = 1.0
    seed: int = 0
    max_total_tokens: int = DEFAULT_MAX_TOTAL_TOKENS
    diurnal_period_s: float | None = None
    workloads: tuple[tuple[str, str], ...] | None = None  # None: TASK_WORKLOAD for the mix's tasks
    lengths: str = "rescaled"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mix", _normalise_mix(self.mix))
        workloads = self.workloads
        if workloads is None:
            workloads = tuple((name, TASK_WORKLOAD[name]) for name, _ in self.mix if name in TASK_WORKLOAD)
        object.__setattr__(self, "workloads", _normalise_workloads(workloads))
        _validate(self)

    def share(self, task: str) -> float:
        return dict(self.mix).get(task, 0.0)

    def workload(self, task: str) -> str:
        return dict(self.workloads)[task]


def build_case_study_trace(spec: CaseStudyTraceSpec) -> Trace:
    """The §8.3 trace: one arrival process, a task drawn per arrival, lengths from each task's workload."""
    _validate(spec)
    arrival_rng, task_rng, length_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(3))
    arrival_s = _arrivals(spec, arrival_rng)
    mix_tasks = [name for name, _ in spec.mix]
    shares = np.array([share for _, share in spec.mix])
    drawn = task_rng.choice(len(mix_tasks), size=len(arrival_s), p=shares / shares.sum())
    task = np.array([CASE_STUDY_TASKS.index(name) for name in mix_tasks], dtype=np.int64)[drawn]
    input_tokens = np.empty(len(arrival_s), dtype=np.int64)
    output_tokens = np.empty(len(arrival_s), dtype=np.int64)
    workloads = dict(spec.workloads)
    for task_id, name in enumerate(CASE_STUDY_TASKS):  # fixed order: same seed -> same lengths
        if name not in workloads:
            continue  # not in the mix: no request (an empty draw consumes no random numbers)
        mask = task == task_id
        sampler = workload_lengths(workloads[name], spec.max_total_tokens, spec.lengths)
        input_tokens[mask], output_tokens[mask] = sampler.sample(int(mask.sum()), length_rng)
    return Trace(
        arrival_s=arrival_s,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        task=task,
        task_names=CASE_STUDY_TASKS,
        source=(
            f"case-study §8.3: {spec.arrival} {spec.total_rate_qps:g} req/s for {spec.duration_s:g} s, "
            f"mix {dict(spec.mix)}, workloads {dict(spec.workloads)}, {spec.lengths} lengths, seed {spec.seed}"
        ),
    )


def build_workload_trace(
    workload: str,
    rate_qps: float,
    duration_s: float,
    seed: int,
    task_name: str | None = None,
    max_total_tokens: int = DEFAULT_MAX_TOTAL_TOKENS,
) -> Trace:
    """A single-workload Poisson trace (profiling, saturation search); task defaults to the workload name."""
    if not (rate_qps > 0 and math.isfinite(rate_qps)):
        raise ValueError(f"rate_qps must be finite and > 0, got {rate_qps!r}")
    sampler = workload_lengths(workload, max_total_tokens)
    arrival_rng, length_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    arrival_s = poisson_arrivals(rate_qps, duration_s, arrival_rng)
    input_tokens, output_tokens = sampler.sample(len(arrival_s), length_rng)
    return Trace(
        arrival_s=arrival_s,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        task=np.zeros(len(arrival_s), dtype=np.int64),
        task_names=(task_name or workload,),
        source=f"{workload}: poisson {rate_qps:g} req/s for {duration_s:g} s, seed {seed} ({sampler.describe()})",
    )


def _arrivals(spec: CaseStudyTraceSpec, rng: np.random.Generator) -> np.ndarray:
    if spec.arrival == "poisson":
        return poisson_arrivals(spec.total_rate_qps, spec.duration_s, rng)
    if spec.arrival == "gamma":
        return gamma_arrivals(spec.total_rate_qps, spec.cv, spec.duration_s, rng)
    rate = diurnal_rate(spec.total_rate_qps, DIURNAL_PEAK_TO_TROUGH, period_s=spec.diurnal_period_s or spec.duration_s)
    return time_varying_arrivals(rate, rate.peak_qps, spec.duration_s, rng)


def _normalise_mix(mix: object) -> tuple[tuple[str, float], ...]:
    """Accept a tuple of pairs, a list of pairs (Hydra) or a mapping; store a tuple of pairs."""
    items = list(mix.items()) if isinstance(mix, Mapping) else mix
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ValueError(f"CaseStudyTraceSpec.mix must be (task, share) pairs, got {mix!r}")
    pairs = []
    for item in items:
        if isinstance(item, (str, bytes)) or len(item) != 2:
            raise ValueError(f"CaseStudyTraceSpec.mix: entry {item!r} is not a (task, share) pair")
        pairs.append((str(item[0]), float(item[1])))
    return tuple(pairs)


def _normalise_workloads(workloads: object) -> tuple[tuple[str, str], ...]:
    """Accept (task, workload) pairs or a mapping; store a tuple of pairs."""
    items = list(workloads.items()) if isinstance(workloads, Mapping) else workloads
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ValueError(f"CaseStudyTraceSpec.workloads must be (task, workload) pairs, got {workloads!r}")
    pairs = []
    for item in items:
        if isinstance(item, (str, bytes)) or len(item) != 2:
            raise ValueError(f"CaseStudyTraceSpec.workloads: entry {item!r} is not a (task, workload) pair")
        pairs.append((str(item[0]), str(item[1])))
    return tuple(pairs)


def _validate(spec: CaseStudyTraceSpec) -> None:
    def fail(field: str, why: str) -> None:
        raise ValueError(f"CaseStudyTraceSpec.{field} {why}, got {getattr(spec, field)!r}")

    if not (spec.total_rate_qps > 0 and math.isfinite(spec.total_rate_qps)):
        fail("total_rate_qps", "must be finite and > 0")
    if not (spec.duration_s > 0 and math.isfinite(spec.duration_s)):
        fail("duration_s", "must be finite and > 0")
    if spec.arrival not in ARRIVALS:
        fail("arrival", f"must be one of {', '.join(ARRIVALS)}")
    if not (spec.cv > 0 and math.isfinite(spec.cv)):
        fail("cv", "must be finite and > 0")
    if spec.diurnal_period_s is not None and not (spec.diurnal_period_s > 0 and math.isfinite(spec.diurnal_period_s)):
        fail("diurnal_period_s", "must be None or finite and > 0")
    if int(spec.max_total_tokens) != spec.max_total_tokens or spec.max_total_tokens < 2:
        fail("max_total_tokens", "must be an integer >= 2")
    names = [name for name, _ in spec.mix]
    if not names:
        fail("mix", "must name at least one task")
    unknown = [n for n in names if n not in CASE_STUDY_TASKS]
    if unknown:
        fail("mix", f"has unknown task(s) {unknown} (known: {', '.join(CASE_STUDY_TASKS)})")
    if len(set(names)) != len(names):
        fail("mix", "names a task twice")
    if any(not (share > 0 and math.isfinite(share)) for _, share in spec.mix):
        fail("mix", "shares must be finite and > 0")
    if abs(sum(share for _, share in spec.mix) - 1.0) > _SHARE_TOLERANCE:
        fail("mix", "shares must sum to 1")
    shares = dict(spec.mix)
    if not ("chat-s" in shares and "chat-r" in shares) or not math.isclose(
        shares["chat-s"] / shares["chat-r"], CHAT_S_TO_CHAT_R, rel_tol=1e-6
    ):
        fail("mix", f"must keep chat-s : chat-r = {CHAT_S_TO_CHAT_R:g} : 1 (paper §8.3)")
    if spec.lengths not in LENGTH_READINGS:
        fail("lengths", f"must be one of {', '.join(LENGTH_READINGS)}")
    mapped = [name for name, _ in spec.workloads]
    if len(set(mapped)) != len(mapped):
        fail("workloads", "names a task twice")
    if set(mapped) != set(names):
        missing, extra = sorted(set(names) - set(mapped)), sorted(set(mapped) - set(names))
        fail("workloads", f"must give a workload to every task of the mix and no other (missing {missing}, "
                          f"extra {extra})")
    for name, workload in spec.workloads:
        try:
            workload_lengths(workload, spec.max_total_tokens, spec.lengths)
        except UnknownWorkloadError as exc:
            raise ValueError(f"CaseStudyTraceSpec.workloads: task {name!r}: {exc}") from None
