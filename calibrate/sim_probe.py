"""A probe backed by the simulator's instance model: how the shipped profile curves are produced.

The same saturation search and sweep that drive real engines run against ``sim.instance``; the
arrivals use common random numbers (one set of unit-rate gaps and lengths per seed, scaled by 1/QPS)
so neighbouring probes differ only in load, which keeps the search's comparisons monotone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from calibrate.probe_stats import probe_result
from calibrate.search import ProbeResult
from profiles.step_model import StepModel
from sim.instance import replay_single_instance
from sim.requests import RequestTable
from traces.trace import Trace


@dataclass(frozen=True)
class SimulatedProbe:
    """Poisson bursts of ``burst_s`` seconds (request count clamped) against one simulated instance."""

    step: StepModel
    input_tokens: np.ndarray  # a pool of lengths, used in order
    output_tokens: np.ndarray
    seed: int = 0
    burst_s: float = 120.0
    min_requests: int = 200
    max_requests: int = 3000
    request_overhead_s: float = 0.0  # a request reaches the instance this long after it is sent (HTTP, tokenizing)
    _gaps: np.ndarray = field(init=False, repr=False)
    # CUDA graphs captured by earlier probes: one engine runs the whole search, so a shape is captured once
    _graphs: set = field(init=False, repr=False, default_factory=set)

    def __post_init__(self) -> None:
        if len(self.input_tokens) < self.max_requests or len(self.output_tokens) < self.max_requests:
            raise ValueError(f"SimulatedProbe needs at least max_requests={self.max_requests} length pairs")
        rng = np.random.default_rng(self.seed)
        object.__setattr__(self, "_gaps", rng.exponential(1.0, self.max_requests))

    def __call__(self, qps: float) -> ProbeResult:
        n = int(min(max(qps * self.burst_s, self.min_requests), self.max_requests))
        arrival_s = np.cumsum(self._gaps[:n]) / qps
        inp = np.asarray(self.input_tokens[:n], dtype=np.int64)
        out = np.asarray(self.output_tokens[:n], dtype=np.int64)
        eps = self.request_overhead_s
        at_engine = arrival_s + eps if eps else arrival_s
        table = RequestTable(Trace(at_engine, inp, out, np.zeros(n, dtype=np.int64), ("probe",), "probe"))
        instance = replay_single_instance(self.step, table, graphs=self._graphs)
        end = max(f for f in table.finish_s if f == f) if n else 0.0
        busy_j, idle_j = instance.energy_j(end)
        rejected = sum(1 for s in table.status if s != 1)
        return probe_result(qps, arrival_s, np.array(table.first_token_s), np.array(table.finish_s), out,
                            busy_j + idle_j - instance.step.idle_w * float(arrival_s[0]), rejected)
