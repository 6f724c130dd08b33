"""Streamed runs: a trace read in chunks, only the requests in flight held, results written in chunks.

``simulate_stream`` runs the same control and data planes as ``sim.cluster.simulate`` (same code,
same arithmetic, so the same per-request outcomes for the same trace) over a ``TraceStream``. Request
state lives in a ``RequestRing``; after every block of arrivals the longest prefix of decided
requests is handed to a ``RequestSink`` as numpy columns, which appends them to ``requests.parquet``
(``pyarrow.parquet.ParquetWriter``, one row group per ``row_group_rows``) and to a streaming summary
(``sim.metrics.RequestStats``: exact counts and sums, percentiles from log histograms with a stated
relative error). Memory follows the requests in flight and the instances, not the trace length.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from profiles.profile_set import ProfileSet
from sim.cluster import FEED_BLOCK, ClusterSettings, StreamRunResult, _Run
from sim.deployment import TaskSpec
from sim.metrics import RequestContext, RequestStats, columns_table, request_columns, run_summary
from sim.policies import Policy
from sim.requests import RequestBatch, RequestRing
from traces.stream import TraceStream

ROW_GROUP_ROWS = 1 << 20


class RequestSink:
    """Where a streamed run's decided requests go: an optional Parquet file and the running summary."""

    def __init__(self, task_names: Sequence[str], parquet_path: Path | None = None, exact: bool = False,
                 relative_error: float = 5e-4, row_group_rows: int = ROW_GROUP_ROWS):
        self.stats = RequestStats(task_names, exact=exact, relative_error=relative_error)
        self.parquet_path = Path(parquet_path) if parquet_path is not None else None
        self._tmp = self.parquet_path.with_name(f".{self.parquet_path.name}.tmp") if self.parquet_path else None
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.row_group_rows = row_group_rows
        self.rows_written = 0

    def consume(self, batch: RequestBatch, ctx: RequestContext) -> None:
        columns = request_columns(batch, ctx)
        self.stats.update(columns, ctx)
        if self._tmp is None:
            return
        self._pending.append(columns_table(columns, ctx))
        self._pending_rows += len(batch)
        if self._pending_rows >= self.row_group_rows:
            self._write()

    def _write(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        if self._writer is None:
            self._tmp.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self._tmp, table.schema, compression="zstd")
        self._writer.write_table(table, row_group_size=len(table))
        self.rows_written += len(table)
        self._pending = []
        self._pending_rows = 0

    def close(self) -> Path | None:
        """Flush and move the Parquet file into place (atomically); returns its path."""
        if self._tmp is None:
            return None
        self._write()
        if self._writer is None:  # no request at all: an empty file with the schema of an empty batch
            return None
        self._writer.close()
        os.replace(self._tmp, self.parquet_path)
        return self.parquet_path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()


class _Context:
    """The request context of a run so far, rebuilt only when instances were added."""

    def __init__(self, run: _Run, tasks: tuple[TaskSpec, ...]):
        self.run = run
        self.tasks = tasks
        self._instances = -1
        self._ctx: RequestContext | None = None

    def get(self) -> RequestContext:
        pools = self.run.pools
        count = sum(len(p.all_instances) for p in pools.values())
        if count != self._instances:
            labels, quality, domains = {}, {}, {}
            for name, pool in pools.items():
                for inst in pool.all_instances:
                    key = pool.key_of[inst.instance_id]
                    labels[inst.instance_id] = inst.label
                    quality[inst.instance_id] = self.run.profiles.quality_score(key.model, key.quant, name)
                    domains[inst.instance_id] = inst.fit_domain
            self._ctx = RequestContext.build(self.run.task_names, self.tasks, labels, quality, domains)
            self._instances = count
        return self._ctx


def simulate_stream(
    stream: TraceStream,
    tasks: Sequence[TaskSpec],
    policy: Policy,
    profiles: ProfileSet,
    settings: ClusterSettings,
    sink: RequestSink,
    progress: Callable[[float], None] | None = None,
    block: int = FEED_BLOCK,
    ring_capacity: int = 1 << 16,
) -> StreamRunResult:
    """Replay a streamed trace; decided requests go to ``sink``. Raises if any request is unaccounted for."""
    tasks = tuple(tasks)
    ring = RequestRing(stream.task_names, ring_capacity)
    last_arrival = stream.last_arrival_s
    run = _Run(stream.task_names, tasks, policy, profiles, settings, ring, stream, last_arrival,
               stream.duration_s, stream.source)
    context = _Context(run, tasks)
    run.start()
    peak_in_flight = 0
    try:
        for chunk in stream.chunks():
            for lo in range(0, len(chunk), block):
                hi = min(lo + block, len(chunk))
                first, arrival, task = ring.load(chunk.arrival_s[lo:hi], chunk.input_tokens[lo:hi],
                                                 chunk.output_tokens[lo:hi], chunk.task[lo:hi],
                                                 *(c[lo:hi] for c in (chunk.prefix_id, chunk.prefix_tokens)
                                                   if c is not None))
                run.feed(first, arrival, task)
                peak_in_flight = max(peak_in_flight, ring.in_flight)
                batch = ring.emit(ring.done_prefix())
                if batch is not None:
                    sink.consume(batch, context.get())
                if progress is not None:
                    progress(min(run.now_s, last_arrival))
        run.finish()
        horizon = run.env.now
        unfinished = ring.reject_pending("unfinished_at_end", horizon)
        batch = ring.emit(ring.loaded)
        if batch is not None:
            sink.consume(batch, context.get())
        sink.close()
    except BaseException:
        sink.abort()
        raise
    if ring.finished + ring.rejected != ring.loaded or ring.emitted != ring.loaded:
        raise AssertionError(f"request conservation broken: {ring.finished} finished + {ring.rejected} rejected "
                             f"of {ring.loaded} requests")
    finished_end = sink.stats.max_finish_s if math.isfinite(sink.stats.max_finish_s) else 0.0
    end_s = horizon if unfinished else max(last_arrival, finished_end)
    return StreamRunResult(source=stream.source, tasks=tasks, requests=ring.loaded, end_s=end_s,
                           peak_in_flight=peak_in_flight, **run.outcome())


def stream_summary(result: StreamRunResult, sink: RequestSink) -> dict:
    """The per-run summary of a streamed run (same keys as ``sim.metrics.summarize``)."""
    summary = run_summary(result, sink.stats, result.tasks)
    summary["peak_requests_in_flight"] = result.peak_in_flight
    return summary


def latency_cdf_curves(sink: RequestSink,
                       task_names: Sequence[str]) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per task, TTFT and TPOT CDF points from the sink's histograms (for ``sim.figures``)."""
    curves = {}
    for task_id, name in enumerate(task_names):
        hists = sink.stats.histograms(task_id)
        if hists is not None:
            curves[name] = {"ttft_s": hists[0].cdf_points(), "tpot_s": hists[1].cdf_points()}
    return curves
