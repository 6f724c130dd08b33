"""A trace: the requests a simulation replays, as columns rather than objects."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class TraceError(ValueError):
    """Malformed trace input; the message names the file, row and column."""


@dataclass(frozen=True, eq=False)
class Trace:
    """Requests sorted by arrival. ``task`` holds indices into ``task_names``."""

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    task: np.ndarray
    task_names: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        for name in ("input_tokens", "output_tokens", "task"):
            if len(getattr(self, name)) != n:
                raise TraceError(f"trace {self.source!r}: column '{name}' has {len(getattr(self, name))} rows, expected {n}")
        if n and np.any(np.diff(self.arrival_s) < 0):
            row = int(np.argmax(np.diff(self.arrival_s) < 0)) + 1
            raise TraceError(f"trace {self.source!r}: arrival_s is not sorted at row {row}")
        if n and (np.any(self.input_tokens < 1) or np.any(self.output_tokens < 1)):
            bad = np.flatnonzero((self.input_tokens < 1) | (self.output_tokens < 1))[0]
            raise TraceError(f"trace {self.source!r}: row {bad} has fewer than one input or output token")
        if n and (self.task.min() < 0 or self.task.max() >= len(self.task_names)):
            raise TraceError(f"trace {self.source!r}: task index out of range of {self.task_names}")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) > 1 else 0.0

    def task_id(self, name: str) -> int:
        try:
            return self.task_names.index(name)
        except ValueError:
            raise KeyError(f"task '{name}' is not in trace {self.source!r} (tasks: {self.task_names})") from None

    def select(self, mask: np.ndarray, source: str | None = None) -> "Trace":
        return Trace(
            self.arrival_s[mask],
            self.input_tokens[mask],
            self.output_tokens[mask],
            self.task[mask],
            self.task_names,
            source if source is not None else self.source,
        )

    def mean_rate_qps(self) -> float:
        return len(self) / self.duration_s if self.duration_s > 0 else 0.0
