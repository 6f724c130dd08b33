"""Request-length samplers: ``sample(n, rng) -> (input_tokens, output_tokens)`` as int64 arrays.

A sampler is the "workload" half of a synthetic trace (arrivals are the other half). All
randomness comes from the caller's ``numpy.random.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from traces.trace import Trace


@runtime_checkable
class LengthSampler(Protocol):
    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class FixedLengths:
    """Every request has the same lengths (microbenchmarks, profiling at a fixed shape)."""

    input_tokens: int
    output_tokens: int

    def __post_init__(self) -> None:
        for name in ("input_tokens", "output_tokens"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"FixedLengths.{name} must be an integer >= 1, got {value!r}")

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        _check_n(n)
        return (np.full(n, self.input_tokens, dtype=np.int64), np.full(n, self.output_tokens, dtype=np.int64))

    def describe(self) -> str:
        return f"fixed: {self.input_tokens} input / {self.output_tokens} output tokens per request"


@dataclass(frozen=True, slots=True, eq=False)
class EmpiricalLengths:
    """Resamples (input, output) pairs with replacement, keeping their joint distribution.

    The arrays are stored as read-only copies, so a sampler can be shared safely.
    """

    input_tokens: np.ndarray
    output_tokens: np.ndarray
    provenance: str = ""

    def __post_init__(self) -> None:
        inp = np.array(self.input_tokens, dtype=np.int64, copy=True)
        out = np.array(self.output_tokens, dtype=np.int64, copy=True)
        if inp.ndim != 1 or inp.shape != out.shape:
            raise ValueError(f"EmpiricalLengths needs two 1-D arrays of equal length, got {inp.shape} and {out.shape}")
        if len(inp) == 0:
            raise ValueError("EmpiricalLengths needs at least one (input, output) pair")
        if inp.min() < 1 or out.min() < 1:
            raise ValueError("EmpiricalLengths: every pair needs >= 1 input and >= 1 output token")
        inp.setflags(write=False)
        out.setflags(write=False)
        object.__setattr__(self, "input_tokens", inp)
        object.__setattr__(self, "output_tokens", out)

    @classmethod
    def from_trace(cls, trace: Trace, provenance: str | None = None) -> "EmpiricalLengths":
        return cls(trace.input_tokens, trace.output_tokens, provenance if provenance is not None else f"empirical: {trace.source}")

    @property
    def mean_input_tokens(self) -> float:
        return float(self.input_tokens.mean())

    @property
    def mean_output_tokens(self) -> float:
        return float(self.output_tokens.mean())

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        _check_n(n)
        idx = rng.integers(0, len(self.input_tokens), size=n)
        return self.input_tokens[idx], self.output_tokens[idx]

    def describe(self) -> str:
        return self.provenance or f"empirical: {len(self.input_tokens)} (input, output) pairs"


@dataclass(frozen=True, slots=True, eq=False)
class AlignedLengths:
    """Empirical pairs rescaled to a benchmark's mean lengths (paper §8.3: Azure lengths "aligned").

    Input and output are scaled separately by ``target_mean / base_mean``, rounded, clipped to
    ``>= 1`` and to ``input + output <= max_total_tokens`` (the model's context): output is cut
    first; input is cut only to leave room for one output token. Rounding and clipping mean the
    sampled means can sit slightly off the targets (a fraction of a percent for the shipped
    workloads; the tests allow 3 %).
    """

    base: EmpiricalLengths
    mean_input_tokens: float
    mean_output_tokens: float
    max_total_tokens: int = 4096
    provenance: str = ""

    def __post_init__(self) -> None:
        for name in ("mean_input_tokens", "mean_output_tokens"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"AlignedLengths.{name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.max_total_tokens) != self.max_total_tokens or self.max_total_tokens < 2:
            raise ValueError(f"AlignedLengths.max_total_tokens must be an integer >= 2, got {self.max_total_tokens!r}")

    @property
    def input_scale(self) -> float:
        return self.mean_input_tokens / self.base.mean_input_tokens

    @property
    def output_scale(self) -> float:
        return self.mean_output_tokens / self.base.mean_output_tokens

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raw_in, raw_out = self.base.sample(n, rng)
        return self.align(raw_in, raw_out)

    def align(self, input_tokens: np.ndarray, output_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scale, round and clip given base pairs (deterministic; exposed for inspection)."""
        max_total = int(self.max_total_tokens)
        inp = np.clip(np.rint(input_tokens * self.input_scale), 1, max_total - 1).astype(np.int64)
        out = np.rint(output_tokens * self.output_scale).astype(np.int64)
        out = np.clip(out, 1, max_total - inp)
        return inp, out

    def describe(self) -> str:
        return self.provenance or (
            f"derived: {self.base.describe()} scaled to means {self.mean_input_tokens:g}/{self.mean_output_tokens:g}, "
            f"input+output <= {self.max_total_tokens}"
        )


@dataclass(frozen=True, slots=True)
class UniformLengths:
    """Random lengths around a target: input and output drawn independently and uniformly from the integers
    within ``range_ratio`` of their targets (``[round(m (1 - r)), round(m (1 + r))]``).

    The qMeter paper's "synthetic random-input workloads" (§8.1) control input and output length; how
    widely the lengths vary around a pair is not stated, so ``range_ratio`` is an assumption named in
    ``describe()``. Lengths come from one uniform draw per request and side (common random numbers): two
    targets sampled with the same seed differ only in scale, so a longer target never gives a shorter
    request.
    """

    input_tokens: int
    output_tokens: int
    range_ratio: float = 0.5

    def __post_init__(self) -> None:
        for name in ("input_tokens", "output_tokens"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"UniformLengths.{name} must be an integer >= 1, got {value!r}")
        if not 0 <= self.range_ratio < 1:
            raise ValueError(f"UniformLengths.range_ratio must be in [0, 1), got {self.range_ratio!r}")

    def bounds(self, target: int) -> tuple[int, int]:
        return max(1, int(round(target * (1 - self.range_ratio)))), int(round(target * (1 + self.range_ratio)))

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        _check_n(n)
        u = rng.random((2, n))
        out = []
        for row, target in zip(u, (self.input_tokens, self.output_tokens)):
            lo, hi = self.bounds(target)
            out.append(np.minimum(lo + np.floor(row * (hi - lo + 1)), hi).astype(np.int64))
        return out[0], out[1]

    @property
    def max_total_tokens(self) -> int:
        return self.bounds(self.input_tokens)[1] + self.bounds(self.output_tokens)[1]

    def describe(self) -> str:
        (il, ih), (ol, oh) = self.bounds(self.input_tokens), self.bounds(self.output_tokens)
        return (f"random: {il}-{ih} input / {ol}-{oh} output tokens per request, uniform and independent "
                f"(targets {self.input_tokens}/{self.output_tokens}; assumption: range +-{self.range_ratio:.0%} "
                f"of the target, the qMeter paper's random-input workloads do not state their spread)")


def _check_n(n: int) -> None:
    if int(n) != n or n < 0:
        raise ValueError(f"sample size n must be an integer >= 0, got {n!r}")
