"""A trace: the requests a simulation replays, as columns rather than objects.

Two optional columns describe shared prompt prefixes (system prompts, chat history, repeated code
context) for engines that cache their KV: ``prefix_id`` (-1 = no shared prefix) and ``prefix_tokens``
(how many leading prompt tokens are that prefix, ``0 <= prefix_tokens <= input_tokens``). They are
``None`` together for traces without prefixes, which behave exactly as before they existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

NO_PREFIX = -1  # prefix_id of a request without a shared prefix


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
    prefix_id: np.ndarray | None = None  # int, NO_PREFIX or an id shared by the requests of one prefix
    prefix_tokens: np.ndarray | None = None  # int, leading prompt tokens that are the shared prefix

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
        if (self.prefix_id is None) != (self.prefix_tokens is None):
            raise TraceError(f"trace {self.source!r}: prefix_id and prefix_tokens must be given together")
        if self.prefix_id is not None:
            self._check_prefixes(n)

    def _check_prefixes(self, n: int) -> None:
        for name in ("prefix_id", "prefix_tokens"):
            if len(getattr(self, name)) != n:
                raise TraceError(f"trace {self.source!r}: column '{name}' has {len(getattr(self, name))} rows, expected {n}")
        if not n:
            return
        pid, ptok = self.prefix_id, self.prefix_tokens
        checks = (
            (pid < NO_PREFIX, "prefix_id", "must be >= -1 (-1: no shared prefix)"),
            (ptok < 0, "prefix_tokens", "must be >= 0"),
            (ptok > self.input_tokens, "prefix_tokens", "exceeds the request's input_tokens"),
            ((pid == NO_PREFIX) & (ptok != 0), "prefix_tokens", "must be 0 when prefix_id is -1"),
        )
        for bad, name, why in checks:
            if np.any(bad):
                row = int(np.flatnonzero(bad)[0])
                raise TraceError(f"trace {self.source!r}: row {row} column '{name}' {why} "
                                 f"(prefix_id {pid[row]}, prefix_tokens {ptok[row]}, input_tokens {self.input_tokens[row]})")

    @property
    def has_prefixes(self) -> bool:
        return self.prefix_id is not None

    def prefix_columns(self, op: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
        """``op`` applied to the prefix columns, as keyword arguments of a derived ``Trace`` (empty without)."""
        if self.prefix_id is None:
            return {}
        return {"prefix_id": op(self.prefix_id), "prefix_tokens": op(self.prefix_tokens)}

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
            **self.prefix_columns(lambda column: column[mask]),
        )

    def mean_rate_qps(self) -> float:
        return len(self) / self.duration_s if self.duration_s > 0 else 0.0
