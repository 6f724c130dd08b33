"""Reshape a trace's time axis: stretch or compress it, set its rate, repeat it, cut a window.

Lengths, tasks and shared prefixes are carried along unchanged; each result's ``source`` records the operation.
"""

from __future__ import annotations

import math

import numpy as np

from traces.trace import Trace


def rescale_time(trace: Trace, factor: float) -> Trace:
    """Multiply every arrival time by ``factor`` (0.5 halves the span and doubles the rate)."""
    if not (factor > 0 and math.isfinite(factor)):
        raise ValueError(f"factor must be finite and > 0, got {factor!r}")
    return _with_arrivals(trace, trace.arrival_s * factor, f"rescale_time({factor:g})")


def scale_to_rate(trace: Trace, target_rate_qps: float) -> Trace:
    """Rescale time so that ``trace.mean_rate_qps()`` equals ``target_rate_qps``."""
    if not (target_rate_qps > 0 and math.isfinite(target_rate_qps)):
        raise ValueError(f"target_rate_qps must be finite and > 0, got {target_rate_qps!r}")
    if trace.duration_s <= 0:
        raise ValueError(f"trace {trace.source!r} spans no time ({len(trace)} requests); its rate cannot be scaled")
    return rescale_time(trace, trace.mean_rate_qps() / target_rate_qps)


def tile_period_s(trace: Trace) -> float:
    """Length of one copy when tiling: the span plus one mean inter-arrival gap.

    The extra gap keeps the last request of one copy and the first of the next apart, so the
    tiled trace keeps the original mean gap; two periods hold exactly two copies.
    """
    if len(trace) < 2 or trace.duration_s <= 0:
        raise ValueError(f"trace {trace.source!r} needs >= 2 requests spanning > 0 s to be tiled")
    return trace.duration_s * len(trace) / (len(trace) - 1)


def tile(trace: Trace, duration_s: float) -> Trace:
    """Repeat the trace end to end (re-zeroed at its first arrival) to cover ``[0, duration_s)``."""
    if not (duration_s > 0 and math.isfinite(duration_s)):
        raise ValueError(f"duration_s must be finite and > 0, got {duration_s!r}")
    period_s = tile_period_s(trace)
    copies = math.ceil(duration_s / period_s)
    base = trace.arrival_s - trace.arrival_s[0]
    arrival_s = (base[None, :] + period_s * np.arange(copies)[:, None]).ravel()
    keep = arrival_s < duration_s
    return Trace(
        arrival_s=arrival_s[keep],
        input_tokens=np.tile(trace.input_tokens, copies)[keep],
        output_tokens=np.tile(trace.output_tokens, copies)[keep],
        task=np.tile(trace.task, copies)[keep],
        task_names=trace.task_names,
        source=f"{trace.source} | tile({duration_s:g} s)",
        **trace.prefix_columns(lambda column: np.tile(column, copies)[keep]),
    )


def slice_time(trace: Trace, start_s: float, end_s: float) -> Trace:
    """Requests arriving in ``[start_s, end_s)``, with times shifted so that ``start_s`` becomes 0."""
    if not (end_s > start_s):
        raise ValueError(f"end_s must be > start_s, got start_s={start_s!r}, end_s={end_s!r}")
    mask = (trace.arrival_s >= start_s) & (trace.arrival_s < end_s)
    sliced = trace.select(mask)
    return _with_arrivals(sliced, sliced.arrival_s - start_s, f"slice_time({start_s:g}, {end_s:g})")


def _with_arrivals(trace: Trace, arrival_s: np.ndarray, operation: str) -> Trace:
    return Trace(
        arrival_s=arrival_s,
        input_tokens=trace.input_tokens,
        output_tokens=trace.output_tokens,
        task=trace.task,
        task_names=trace.task_names,
        source=f"{trace.source} | {operation}",
        **trace.prefix_columns(lambda column: column),
    )
