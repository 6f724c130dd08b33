"""What a run measured: the per-request table and the per-run summary.

Both are built from ``RequestBatch`` columns with numpy only, so the same code serves the in-memory
path (one batch holding the whole trace) and the streamed path (``sim.stream``: one batch per flushed
block of requests). ``RequestStats`` accumulates the summary batch by batch; percentiles are exact
when it keeps every latency (``exact=True``, the in-memory path) and come from a ``LogHistogram``
with a stated relative error otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from calibrate.probe_stats import tpot_s
from profiles.fit_domain import FitDomain
from sim.cluster import RunResult, gpus_over_time, time_average
from sim.deployment import TaskSpec
from sim.requests import FINISHED, REJECT_REASONS, REJECTED, STATUS_NAMES, RequestBatch, table_batch

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True, slots=True, eq=False)
class RequestContext:
    """What turns raw request columns into verdicts: per task index its SLO and quality floor, per
    instance id the config label, the quality score it serves its task with and its step model's fit
    domain (largest prompt and context; inf where unknown)."""

    task_names: tuple[str, ...]
    slo_ttft_s: np.ndarray
    slo_tpot_s: np.ndarray
    quality_min: np.ndarray
    instance_label: np.ndarray  # object array, index = instance id; one extra "" slot last for id -1
    instance_quality: np.ndarray  # float array, same indexing; NaN for id -1
    instance_max_prompt_tokens: np.ndarray  # float array, same indexing; inf where unknown
    instance_max_context_tokens: np.ndarray

    @classmethod
    def build(cls, task_names: Sequence[str], tasks: Sequence[TaskSpec], labels: dict[int, str],
              quality: dict[int, float], domains: dict[int, FitDomain] | None = None) -> "RequestContext":
        by_name = {t.name: t for t in tasks}
        specs = [by_name[name] for name in task_names]
        size = max(max(labels, default=-1), max(quality, default=-1)) + 2
        label = np.full(size, "", dtype=object)
        score = np.full(size, np.nan)
        max_prompt = np.full(size, np.inf)
        max_context = np.full(size, np.inf)
        for inst, name in labels.items():
            label[inst] = name
        for inst, value in quality.items():
            score[inst] = value
        for inst, domain in (domains or {}).items():
            if domain.max_prompt_tokens is not None:
                max_prompt[inst] = domain.max_prompt_tokens
            if domain.max_context_tokens is not None:
                max_context[inst] = domain.max_context_tokens
        return cls(tuple(task_names), np.array([s.slo.ttft_s for s in specs], dtype=float),
                   np.array([s.slo.tpot_s for s in specs], dtype=float),
                   np.array([s.quality_min for s in specs], dtype=float), label, score, max_prompt, max_context)


def request_columns(batch: RequestBatch, ctx: RequestContext) -> dict[str, np.ndarray]:
    """Per-request columns of ``requests.parquet``; strings as small index arrays plus ``*_names``."""
    task = batch.task
    status = batch.status.astype(np.int64)
    instance = batch.instance
    finished = status == FINISHED
    ttft = batch.first_token_s - batch.arrival_s
    tpot = tpot_s(batch.first_token_s, batch.finish_s, batch.output_tokens)
    latency_met = finished & (ttft <= ctx.slo_ttft_s[task]) & (~(tpot > ctx.slo_tpot_s[task]))
    served = np.where(instance >= 0, instance, len(ctx.instance_quality) - 1)
    quality = ctx.instance_quality[served]
    quality_met = finished & (quality >= ctx.quality_min[task])
    return {
        "request_id": batch.request_id,
        "task": task,
        "arrival_s": batch.arrival_s,
        "first_token_s": batch.first_token_s,
        "finish_s": batch.finish_s,
        "ttft_s": np.where(finished, ttft, np.nan),
        "tpot_s": np.where(finished, tpot, np.nan),
        "input_tokens": batch.input_tokens,
        "output_tokens": batch.output_tokens,
        "instance": instance,
        "config": served,
        "status": status,
        "reject_reason": batch.reason.astype(np.int64),
        "energy_j": batch.energy_j,
        "prefix_id": batch.prefix_id,
        "prefix_tokens": batch.prefix_tokens,
        "cached_tokens": batch.cached_tokens,
        "quality": quality,
        "latency_slo_met": latency_met,
        "quality_slo_met": quality_met,
        "slo_met": latency_met & quality_met,
    }


# Columns held as an index into a table of names, and those names.
def _string_tables(ctx: RequestContext) -> dict[str, np.ndarray]:
    return {
        "task": np.array(ctx.task_names, dtype=object),
        "config": ctx.instance_label,
        "status": np.array(STATUS_NAMES, dtype=object),
        "reject_reason": np.array(REJECT_REASONS, dtype=object),
    }


def columns_table(columns: dict[str, np.ndarray], ctx: RequestContext) -> pa.Table:
    """The columns as an Arrow table; string columns are taken from their small name tables in C."""
    names = _string_tables(ctx)
    data = {}
    for key, values in columns.items():
        data[key] = pa.array(names[key].astype(str).tolist()).take(pa.array(values)) if key in names else values
    return pa.table(data)


def columns_frame(columns: dict[str, np.ndarray], ctx: RequestContext) -> pd.DataFrame:
    return columns_table(columns, ctx).to_pandas()


def request_context(result: RunResult) -> RequestContext:
    labels = {inst.instance_id: inst.label for inst in result.instances}
    domains = {inst.instance_id: inst.fit_domain for inst in result.instances}
    return RequestContext.build(result.requests.task_names, result.tasks, labels, result.instance_quality, domains)


def requests_frame(result: RunResult) -> pd.DataFrame:
    """One row per request: inputs, outcome, latencies, SLO verdicts, and which config served it."""
    ctx = request_context(result)
    return columns_frame(request_columns(table_batch(result.requests), ctx), ctx)


# --- percentiles without keeping every value --------------------------------------------------------


class LogHistogram:
    """Counts of positive values in logarithmic bins (DDSketch's mapping, fixed range).

    Bin ``i`` holds values in ``(gamma**(i-1), gamma**i]`` with ``gamma = (1 + a) / (1 - a)``; its
    representative ``2 gamma**i / (gamma + 1)`` is within relative error ``a`` of every value in it.
    A percentile interpolates linearly between the two order statistics around its rank, as
    ``numpy.percentile`` does, each taken from its bin: the result is within relative error ``a`` of
    the exact percentile. Values outside ``[min_value, max_value]`` fall in end bins (reported as the
    exact minimum or maximum seen). ``a = 5e-4`` gives about 32,000 bins (256 KB) for 1e-7..1e7 s.
    """

    def __init__(self, relative_error: float = 5e-4, min_value: float = 1e-7, max_value: float = 1e7):
        if not 0 < relative_error < 1:
            raise ValueError(f"relative_error must be in (0, 1), got {relative_error}")
        self.relative_error = relative_error
        gamma = (1 + relative_error) / (1 - relative_error)
        self._log_gamma = math.log(gamma)
        self._gamma = gamma
        self._first = math.floor(math.log(min_value) / self._log_gamma)
        self._bins = math.ceil(math.log(max_value) / self._log_gamma) - self._first + 1
        self.counts = np.zeros(self._bins + 2, dtype=np.int64)  # [0] under, [-1] over
        self.count = 0
        self.min = math.inf
        self.max = -math.inf

    def add(self, values: np.ndarray) -> None:
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        with np.errstate(divide="ignore"):
            index = np.ceil(np.log(values) / self._log_gamma) - self._first + 1
        index = np.clip(np.nan_to_num(index, nan=0.0, neginf=0.0), 0, self._bins + 1).astype(np.int64)
        self.counts += np.bincount(index, minlength=self._bins + 2)
        self.count += int(values.size)
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))

    def _value_at_rank(self, cumulative: np.ndarray, rank: int) -> float:
        i = int(np.searchsorted(cumulative, rank, side="right"))
        if i == 0:
            return self.min
        if i == len(cumulative) - 1:
            return self.max
        value = 2.0 * self._gamma ** (i - 1 + self._first) / (self._gamma + 1.0)
        return min(max(value, self.min), self.max)

    def percentile(self, q: float) -> float:
        if self.count == 0:
            return math.nan
        position = q / 100.0 * (self.count - 1)
        lo = math.floor(position)
        frac = position - lo
        cumulative = np.cumsum(self.counts)
        a = self._value_at_rank(cumulative, lo)
        b = self._value_at_rank(cumulative, min(lo + 1, self.count - 1)) if frac > 0 else a
        return a + frac * (b - a)

    def cdf_points(self, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
        """(value, fraction of values <= it) at up to ``points`` quantiles, for plotting."""
        if self.count == 0:
            return np.array([]), np.array([])
        qs = np.linspace(0.0, 100.0, points)
        return np.array([self.percentile(q) for q in qs]), qs / 100.0


# --- the summary ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskSummary:
    task: str
    requests: int
    finished: int
    rejected: int
    p50_ttft_s: float
    p90_ttft_s: float
    p99_ttft_s: float
    p50_tpot_s: float
    p90_tpot_s: float
    p99_tpot_s: float
    latency_slo_attainment: float
    quality_slo_met: bool | None  # None: the task finished no request, so there is nothing to judge
    slo_attainment: float
    configs: str


@dataclass
class _TaskStats:
    requests: int = 0
    finished: int = 0
    rejected: int = 0
    latency_met: int = 0
    quality_met_finished: int = 0
    slo_met: int = 0
    configs: set = field(default_factory=set)
    ttft: list = field(default_factory=list)  # exact mode: arrays of finished latencies
    tpot: list = field(default_factory=list)
    ttft_hist: LogHistogram | None = None
    tpot_hist: LogHistogram | None = None
    prefix_requests: int = 0  # finished requests that carry a shared prefix
    prefix_hits: int = 0  # ... of which the prefix cache served at least one block
    input_tokens: int = 0  # prompt tokens of finished requests
    cached_tokens: int = 0  # ... of which served by a prefix cache


def _pct(values: np.ndarray, q: float) -> float:
    values = values[np.isfinite(values)]
    return float(np.percentile(values, q)) if values.size else math.nan


class RequestStats:
    """Per-task counts, SLO attainment and latency percentiles, accumulated batch by batch."""

    def __init__(self, task_names: Sequence[str], exact: bool, relative_error: float = 5e-4):
        self.task_names = tuple(task_names)
        self.exact = exact
        self.relative_error = relative_error
        self._tasks = [_TaskStats() for _ in self.task_names]
        if not exact:
            for t in self._tasks:
                t.ttft_hist = LogHistogram(relative_error)
                t.tpot_hist = LogHistogram(relative_error)
        self.requests = 0
        self.finished = 0
        self.rejected = 0
        self.latency_met = 0
        self.slo_met = 0
        self.output_tokens = 0  # of finished requests
        self.input_tokens = 0  # prompt tokens of finished requests (cached ones included)
        self.by_reason = np.zeros(len(REJECT_REASONS), dtype=np.int64)
        self.max_finish_s = -math.inf
        # per config label: [requests, prompt beyond the fit, context beyond it, either]
        self.extrapolation: dict[str, np.ndarray] = {}

    @property
    def percentile_method(self) -> str:
        return "exact" if self.exact else f"log-histogram, relative error <= {self.relative_error:g}"

    def update(self, columns: dict[str, np.ndarray], ctx: RequestContext) -> None:
        task = columns["task"]
        status = columns["status"]
        finished = status == FINISHED
        rejected = status == REJECTED
        n = len(task)
        self.requests += n
        self.finished += int(finished.sum())
        self.rejected += int(rejected.sum())
        self.latency_met += int(columns["latency_slo_met"].sum())
        self.slo_met += int(columns["slo_met"].sum())
        self.output_tokens += int(columns["output_tokens"][finished].sum())
        self.input_tokens += int(columns["input_tokens"][finished].sum())
        self.by_reason += np.bincount(columns["reject_reason"][rejected], minlength=len(REJECT_REASONS))
        finish = columns["finish_s"]
        if np.isfinite(finish).any():
            self.max_finish_s = max(self.max_finish_s, float(np.nanmax(finish)))
        self._count_extrapolation(columns, ctx)
        for task_id, stats in enumerate(self._tasks):
            rows = task == task_id
            count = int(rows.sum())
            if not count:
                continue
            done = rows & finished
            stats.requests += count
            stats.finished += int(done.sum())
            stats.rejected += int((rows & rejected).sum())
            stats.latency_met += int(columns["latency_slo_met"][rows].sum())
            stats.slo_met += int(columns["slo_met"][rows].sum())
            stats.quality_met_finished += int(columns["quality_slo_met"][done].sum())
            stats.prefix_requests += int(np.count_nonzero(columns["prefix_id"][done] >= 0))
            stats.prefix_hits += int(np.count_nonzero(columns["cached_tokens"][done] > 0))
            stats.input_tokens += int(columns["input_tokens"][done].sum())
            stats.cached_tokens += int(columns["cached_tokens"][done].sum())
            served = np.unique(columns["config"][done])
            stats.configs.update(str(ctx.instance_label[i]) for i in served)
            ttft = columns["ttft_s"][done]
            tpot = columns["tpot_s"][done]
            if self.exact:
                stats.ttft.append(ttft)
                stats.tpot.append(tpot)
            else:
                stats.ttft_hist.add(ttft)
                stats.tpot_hist.add(tpot)

    def _count_extrapolation(self, columns: dict[str, np.ndarray], ctx: RequestContext) -> None:
        """Per config, the requests it took (routed to one of its replicas) whose prompt or prompt + output
        lie beyond its step model's fit domain; vectorised over the batch, summed per instance, then label."""
        instance = columns["instance"]
        taken = instance >= 0
        if not taken.any():
            return
        ids = instance[taken]
        prompt = columns["input_tokens"][taken]
        over_prompt = prompt > ctx.instance_max_prompt_tokens[ids]
        over_context = prompt + columns["output_tokens"][taken] > ctx.instance_max_context_tokens[ids]
        size = len(ctx.instance_label)
        per_instance = np.stack([np.bincount(ids, minlength=size), np.bincount(ids[over_prompt], minlength=size),
                                 np.bincount(ids[over_context], minlength=size),
                                 np.bincount(ids[over_prompt | over_context], minlength=size)])
        for inst in np.flatnonzero(per_instance[0]):
            label = str(ctx.instance_label[inst])
            counts = self.extrapolation.get(label)
            if counts is None:
                counts = self.extrapolation[label] = np.zeros(4, dtype=np.int64)
            counts += per_instance[:, inst]

    def histograms(self, task_id: int) -> tuple[LogHistogram, LogHistogram] | None:
        stats = self._tasks[task_id]
        return (stats.ttft_hist, stats.tpot_hist) if not self.exact else None

    def prefix_summary(self, task_id: int | None = None) -> dict:
        """Prefix-cache figures of one task (or of the run): how many finished requests carried a shared
        prefix, the share of those the cache served (hit rate), and the share of all prompt tokens it served."""
        tasks = self._tasks if task_id is None else [self._tasks[task_id]]
        carried = sum(t.prefix_requests for t in tasks)
        hits = sum(t.prefix_hits for t in tasks)
        prompt = sum(t.input_tokens for t in tasks)
        cached = sum(t.cached_tokens for t in tasks)
        return {
            "prefix_requests": carried,
            "prefix_hit_rate": hits / carried if carried else math.nan,
            "cached_tokens": cached,
            "cached_token_fraction": cached / prompt if prompt else math.nan,
        }

    def task_summaries(self) -> list[TaskSummary]:
        out = []
        for name, stats in zip(self.task_names, self._tasks):
            if self.exact:
                ttft = np.concatenate(stats.ttft) if stats.ttft else np.array([])
                tpot = np.concatenate(stats.tpot) if stats.tpot else np.array([])
                p_ttft = [_pct(ttft, q) for q in PERCENTILES]
                p_tpot = [_pct(tpot, q) for q in PERCENTILES]
            else:
                p_ttft = [stats.ttft_hist.percentile(q) for q in PERCENTILES]
                p_tpot = [stats.tpot_hist.percentile(q) for q in PERCENTILES]
            n = stats.requests
            out.append(TaskSummary(
                task=name,
                requests=n,
                finished=stats.finished,
                rejected=stats.rejected,
                p50_ttft_s=p_ttft[0], p90_ttft_s=p_ttft[1], p99_ttft_s=p_ttft[2],
                p50_tpot_s=p_tpot[0], p90_tpot_s=p_tpot[1], p99_tpot_s=p_tpot[2],
                latency_slo_attainment=stats.latency_met / n if n else math.nan,
                quality_slo_met=(stats.quality_met_finished == stats.finished) if stats.finished else None,
                slo_attainment=stats.slo_met / n if n else math.nan,
                configs=";".join(sorted(stats.configs)),
            ))
        return out


def run_summary(result, stats: RequestStats, tasks: Sequence[TaskSpec]) -> dict:
    """The per-run summary: GPUs, SLO attainment, energy per token, latency percentiles per task.

    Energy per token comes in two definitions, named as such: ``energy_per_output_token_j`` (all energy, idle GPUs
    included, over the output tokens of finished requests) and ``energy_per_token_in_out_j`` (the same energy over
    their input + output tokens); ``*_busy_j`` leave idle energy out."""
    end_s = result.end_s
    times, gpus = gpus_over_time(result)
    busy_j = idle_j = 0.0
    for inst in result.instances:
        b, i = inst.energy_j(end_s)
        busy_j += b
        idle_j += i
    out_tokens = float(stats.output_tokens)
    in_out_tokens = float(stats.input_tokens + stats.output_tokens)
    by_task = {t.task: t for t in stats.task_summaries()}
    n = stats.requests
    avg_gpus = time_average(times, gpus, end_s)
    summary = {
        "requests": int(n),
        "finished": int(stats.finished),
        "rejected": int(stats.rejected),
        "rejected_by_reason": {REJECT_REASONS[code]: int(count) for code, count in enumerate(stats.by_reason)
                               if count},
        "duration_s": end_s,
        "avg_gpus": avg_gpus,
        "peak_gpus": int(gpus.max()) if len(gpus) else 0,
        "gpu_hours": avg_gpus * end_s / 3600.0,
        "latency_slo_attainment": stats.latency_met / n if n else math.nan,
        "slo_attainment": stats.slo_met / n if n else math.nan,
        "energy_j": busy_j + idle_j,
        "busy_energy_j": busy_j,
        "idle_energy_j": idle_j,
        "energy_per_output_token_j": (busy_j + idle_j) / out_tokens if out_tokens else math.nan,
        "energy_per_output_token_busy_j": busy_j / out_tokens if out_tokens else math.nan,
        "energy_per_token_in_out_j": (busy_j + idle_j) / in_out_tokens if in_out_tokens else math.nan,
        "energy_per_token_in_out_busy_j": busy_j / in_out_tokens if in_out_tokens else math.nan,
        "output_tokens": int(out_tokens),
        "input_tokens": int(stats.input_tokens),
        "reconfigurations": dict(result.reconfigurations),
        "percentiles": stats.percentile_method,
        "extrapolation": extrapolation_summary(result.instances, stats),
        "engine": engine_summary(result),
        "tasks": [asdict(by_task[t.name]) if t.name in by_task else asdict(_empty_task(t.name)) for t in tasks],
    }
    settings = getattr(result, "prefix_cache", None)
    if settings is not None:
        summary["prefix_cache"] = {"block_tokens": settings.block_tokens, **stats.prefix_summary(),
                                   "evictions": sum(inst.prefix_cache.evictions for inst in result.instances)}
        for entry in summary["tasks"]:
            if entry["task"] in stats.task_names:
                entry.update(stats.prefix_summary(stats.task_names.index(entry["task"])))
    return summary


def engine_summary(result) -> dict[str, dict]:
    """Per task, the engine settings its pool ran under (``settings``: a preset's name, or ``profile`` for the step
    models as the profile set states them, with any overrides in brackets; the fields set) and, per config label
    it ran, the limits of the step model its replicas used; ``preemptions``: running requests its replicas evicted
    to free KV (the max_utilization and vllm schedulers and plug-ins; always 0 under guaranteed_no_evict). A
    scheduler plug-in is recorded by its ``_target_`` (and ``scheduler_params``, its parameters)."""
    out: dict[str, dict] = {}
    for task in result.tasks:
        engine = getattr(task, "engine", None)
        fields = engine.fields() if engine is not None else {}
        plugin = fields.get("scheduler")
        if plugin is not None and not isinstance(plugin, str):  # a plug-in: its target and parameters
            fields["scheduler"] = plugin.target
            fields["scheduler_params"] = dict(plugin.params)
        out[task.name] = {"settings": engine.name if engine is not None else "profile", **fields, "preemptions": 0,
                          "configs": {}}
    for inst in result.instances:
        task = result.instance_task.get(inst.instance_id)
        if task not in out:
            continue
        step = inst.step
        out[task]["preemptions"] += getattr(inst, "preemptions", 0)
        out[task]["configs"].setdefault(inst.label, {
            "max_batch": int(step.max_batch), "max_num_tokens": int(step.max_num_tokens),
            "kv_capacity_tokens": int(step.kv_capacity_tokens), "chunked_context": bool(step.chunked_context),
            "scheduler": inst.scheduler_label})
    for entry in out.values():
        entry["configs"] = dict(sorted(entry["configs"].items()))
    return out


def extrapolation_summary(instances, stats: RequestStats) -> dict[str, dict]:
    """Per config label, the requests it took and how many lie outside its step model's fit domain: prompt
    longer than the longest prompt fitted, prompt + output longer than the longest decode context fitted,
    admitted into a batch (running + admitted in that iteration) larger than the largest fitted; ``any``
    counts each request once. A count is None where its limit is unknown; ``domain`` is "unknown" when no
    limit is known (nothing is counted then)."""
    out: dict[str, dict] = {}
    batch: dict[str, list[int]] = {}
    domains: dict[str, FitDomain] = {}
    for inst in instances:
        domains.setdefault(inst.label, inst.fit_domain)
        counts = batch.setdefault(inst.label, [0, 0])
        counts[0] += inst.batch_extrapolated
        counts[1] += inst.batch_only_extrapolated
    for label in sorted(domains):
        domain = domains[label]
        n, prompt, context, prompt_or_context = (int(v) for v in stats.extrapolation.get(label, np.zeros(4)))
        if not domain.known:
            out[label] = {"requests": n, "prompt": None, "context": None, "batch": None, "any": None,
                          "share": None, "domain": "unknown"}
            continue
        over_batch, batch_only = batch[label]
        extrapolated = prompt_or_context + batch_only
        out[label] = {
            "requests": n,
            "prompt": prompt if domain.max_prompt_tokens is not None else None,
            "context": context if domain.max_context_tokens is not None else None,
            "batch": over_batch if domain.max_batch is not None else None,
            "any": extrapolated,
            "share": extrapolated / n if n else 0.0,
            "domain": domain.as_dict(),
        }
    return out


def extrapolation_lines(extrapolation: dict[str, dict]) -> list[str]:
    """Console lines: one per config that extrapolates, else one saying none does; configs without a known
    fit domain are named once."""
    lines = []
    for label, e in extrapolation.items():
        if not e["any"]:
            continue
        d = e["domain"]
        parts = [f"{what} {e[what]:,} > {d[limit]:,}{unit}" for what, limit, unit in (
            ("prompt", "max_prompt_tokens", " tokens"), ("context", "max_context_tokens", " tokens"),
            ("batch", "max_batch", " sequences")) if e[what]]
        pct = 100 * e["share"]
        share = f"{pct:.1f}" if pct >= 1 else f"{pct:.2g}"
        lines.append(f"extrapolating: {label}: {e['any']:,} of {e['requests']:,} requests ({share} %) "
                     f"outside its step model's fit domain ({', '.join(parts)})")
    if not lines:
        lines.append("extrapolation: no config served a request outside its step model's fit domain")
    unknown = [label for label, e in extrapolation.items() if e["domain"] == "unknown"]
    if unknown:
        lines.append(f"extrapolation: fit domain unknown (not counted) for {len(unknown)} config(s): "
                     + ", ".join(unknown))
    return lines


def _empty_task(name: str) -> TaskSummary:
    nan = math.nan
    return TaskSummary(name, 0, 0, 0, nan, nan, nan, nan, nan, nan, nan, None, nan, "")


def summarize(result: RunResult, frame: pd.DataFrame | None = None) -> dict:
    """The per-run summary of an in-memory run (exact percentiles). ``frame`` is accepted for callers
    that already built it; the summary is computed from the same columns either way."""
    ctx = request_context(result)
    columns = request_columns(table_batch(result.requests), ctx)
    stats = RequestStats(ctx.task_names, exact=True)
    stats.update(columns, ctx)
    return run_summary(result, stats, result.tasks)
