"""Which requests a burst sends, and when: the same common random numbers as ``SimulatedProbe``.

A ``BurstPlan`` holds one pool of (input, output) lengths sampled from a workload and one set of
unit-rate exponential gaps, both from explicit seeds. A burst at ``qps`` sends the first ``n`` requests
with ``n = clamp(qps * burst_s, min_requests, max_requests)`` at ``cumsum(gaps[:n]) / qps``: exactly the
arrivals and lengths ``calibrate.sim_probe.SimulatedProbe`` replays for the same pools, seed and burst
settings, so a real engine and the simulated instance are probed with identical requests and
neighbouring probes differ only in load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from traces.workloads import workload_lengths


@dataclass(frozen=True)
class BurstPlan:
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    seed: int = 0
    burst_s: float = 120.0
    min_requests: int = 200
    max_requests: int = 3000
    _gaps: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.burst_s > 0:
            raise ValueError(f"burst_s must be > 0, got {self.burst_s}")
        if not 1 <= self.min_requests <= self.max_requests:
            raise ValueError(f"need 1 <= min_requests <= max_requests, got {self.min_requests}, {self.max_requests}")
        if len(self.input_tokens) < self.max_requests or len(self.output_tokens) < self.max_requests:
            raise ValueError(f"BurstPlan needs at least max_requests={self.max_requests} length pairs")
        rng = np.random.default_rng(self.seed)
        object.__setattr__(self, "_gaps", rng.exponential(1.0, self.max_requests))

    @classmethod
    def for_workload(cls, workload: str, seed: int, burst_s: float, min_requests: int, max_requests: int,
                     max_total_tokens: int) -> "BurstPlan":
        inp, out = workload_lengths(workload, max_total_tokens).sample(max_requests, np.random.default_rng(seed))
        return cls(inp, out, seed, burst_s, min_requests, max_requests)

    def size(self, qps: float) -> int:
        if not qps > 0:
            raise ValueError(f"a burst needs qps > 0, got {qps}")
        return int(min(max(qps * self.burst_s, self.min_requests), self.max_requests))

    def arrivals_s(self, qps: float) -> np.ndarray:
        return np.cumsum(self._gaps[: self.size(qps)]) / qps

    def lengths(self, qps: float) -> tuple[np.ndarray, np.ndarray]:
        n = self.size(qps)
        return (np.asarray(self.input_tokens[:n], dtype=np.int64), np.asarray(self.output_tokens[:n], dtype=np.int64))
