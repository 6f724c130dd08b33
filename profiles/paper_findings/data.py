"""What a findings check reads from a profile set, and a record of the rows it read.

Every number a check uses goes through ``Reader``, so the finding can say which rows decided it and
what their provenance is. A look-up that has no answer in the profile set (no curve, a load beyond
the measured curve, no quality row) raises ``NotCheckable``: the finding then says so instead of
guessing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from profiles.catalog import GPUS, MODELS, PAPER, QUANTS, kv_bytes_per_token, kv_capacity_tokens
from profiles.profile_set import LatencySlo, ProfileError, ProfileSet, saturation_from_curve
from profiles.quality import LOSS_RULE_NAME
from profiles.schema import ConfigKey

H100 = "h100-80gb"
A100 = "a100-40gb"
PAPER_AUTHORS = PAPER.split(",")[0]  # "Shi & Ding": how a source names the characterization paper

# Length pairs and load of the synthetic-length experiment (§5.1): short/medium/long inputs 128/(256, 512)/1024,
# outputs 64/(128, 256)/512 tokens, 5 req/s over a 2-minute trace (§4: "a 2-minute trace").
S51_INPUTS_TOKENS = (128, 256, 512, 1024)
S51_OUTPUTS_TOKENS = (64, 128, 256, 512)
S51_QPS = 5.0
S51_TRACE_S = 120.0
S51_SEED = 0


class NotCheckable(Exception):
    """The profile set holds no answer for a look-up a finding needs."""


def _slo_key(ttft_s: float, tpot_s: float) -> tuple[float, float]:
    return round(float(ttft_s), 9), round(float(tpot_s), 9)


@dataclass
class Tables:
    """Dictionaries over a profile set's tables, built once so that hundreds of look-ups stay fast."""

    saturation: dict  # (gpu, model, quant, tp, workload, slo key) -> (saturation_qps, provenance)
    slos: dict  # workload -> tuple of LatencySlo, tightest TTFT first
    quality: dict  # (model, quant, task) -> (score, provenance, source)
    step_provenance: dict  # ConfigKey -> provenance
    sim: dict = field(default_factory=dict)  # (key, input, output) -> SimPoint

    @classmethod
    def of(cls, profiles: ProfileSet) -> "Tables":
        s = profiles.saturation
        saturation, slos = {}, {}
        for row in s[["gpu", "model", "quant", "tp", "workload", "slo_ttft_s", "slo_tpot_s", "saturation_qps",
                      "provenance"]].itertuples(index=False):
            slo = _slo_key(row.slo_ttft_s, row.slo_tpot_s)
            saturation[(row.gpu, row.model, row.quant, int(row.tp), row.workload, slo)] = (
                float(row.saturation_qps), str(row.provenance))
            slos.setdefault(row.workload, set()).add(slo)
        q = profiles.quality
        quality = {(r.model, r.quant, r.task): (float(r.score), str(r.provenance), str(r.source))
                   for r in q[["model", "quant", "task", "score", "provenance", "source"]].itertuples(index=False)}
        m = profiles.step_models
        steps = {ConfigKey(r.gpu, r.model, r.quant, int(r.tp)): str(r.provenance)
                 for r in m[["gpu", "model", "quant", "tp", "provenance"]].itertuples(index=False)}
        return cls(saturation, {w: tuple(LatencySlo(*x) for x in sorted(v)) for w, v in slos.items()}, quality, steps)


@dataclass(frozen=True, slots=True)
class SimPoint:
    """P90 latencies and energy of one simulated burst (a §5.1 length pair)."""

    p90_ttft_s: float
    p90_tpot_s: float
    energy_per_output_token_j: float


@dataclass
class Reader:
    """Look-ups a check needs, each one recorded for the finding's provenance note."""

    profiles: ProfileSet
    tables: Tables | None = None
    curves_used: set = field(default_factory=set)
    saturation_used: set = field(default_factory=set)
    quality_used: set = field(default_factory=set)
    steps_used: set = field(default_factory=set)
    simulated: set = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.tables is None:
            self.tables = Tables.of(self.profiles)

    # --- configs and SLOs ------------------------------------------------------------------------

    def key(self, gpu: str, model: str, quant: str, tp: int) -> ConfigKey:
        return ConfigKey(gpu, model, quant, tp)

    def has(self, key: ConfigKey, workload: str) -> bool:
        return self.profiles.has_curve(key, workload)

    def slos(self, workload: str) -> tuple[LatencySlo, ...]:
        """The SLOs this profile set searched saturation for on a workload, tightest TTFT first."""
        if workload not in self.tables.slos:
            raise NotCheckable(f"saturation.csv has no SLO for workload '{workload}'")
        return self.tables.slos[workload]

    def slo(self, workload: str) -> LatencySlo:
        """The workload's tightest searched SLO: the one a finding about 'meeting the SLO' is held to."""
        return self.slos(workload)[0]

    # --- curves ----------------------------------------------------------------------------------

    def curve(self, key: ConfigKey, workload: str):
        if not self.profiles.has_curve(key, workload):
            raise NotCheckable(f"no curve for {key.label} on {workload}")
        self.curves_used.add((key, workload))
        return self.profiles.curve(key, workload)

    def at(self, key: ConfigKey, workload: str, qps: float, metric: str) -> float:
        """A curve metric at a load, interpolated; beyond the curve's last point there is no answer."""
        curve = self.curve(key, workload)
        qps_points = curve["qps"].to_numpy()
        if qps > qps_points[-1] * (1 + 1e-9):
            raise NotCheckable(f"{key.label} on {workload} is profiled up to {qps_points[-1]:.3g} req/s, "
                               f"not {qps:.3g} req/s")
        return float(np.interp(qps, qps_points, curve[metric].to_numpy()))

    def ttft_s(self, key: ConfigKey, workload: str, qps: float) -> float:
        return self.at(key, workload, qps, "p90_ttft_s")

    def tpot_s(self, key: ConfigKey, workload: str, qps: float) -> float:
        return self.at(key, workload, qps, "p90_tpot_s")

    def energy_j(self, key: ConfigKey, workload: str, qps: float) -> float:
        """Energy per output token of the whole config (all its TP GPUs) at a load."""
        self.curve(key, workload)
        try:
            value = self.profiles.energy_per_token_j(key, workload, qps)
        except ProfileError as exc:
            raise NotCheckable(str(exc)) from None
        if not np.isfinite(value):
            raise NotCheckable(f"{key.label} on {workload} has no energy at {qps:.3g} req/s")
        return value

    def top_qps(self, key: ConfigKey, workload: str) -> float:
        return float(self.curve(key, workload)["qps"].iloc[-1])

    # --- saturation, quality, step models --------------------------------------------------------

    def saturation_qps(self, key: ConfigKey, workload: str, slo: LatencySlo | None = None) -> float:
        slo = slo or self.slo(workload)
        found = self.tables.saturation.get((key.gpu, key.model, key.quant, key.tp, workload,
                                            _slo_key(slo.ttft_s, slo.tpot_s)))
        if found is not None:
            self.saturation_used.add((key, workload, slo))
            return found[0]
        if not self.profiles.has_curve(key, workload):
            raise NotCheckable(f"no saturation row or curve for {key.label} on {workload}")
        self.curves_used.add((key, workload))
        return saturation_from_curve(self.profiles.curve(key, workload), slo)

    def quality(self, model: str, quant: str, task: str) -> float:
        found = self.tables.quality.get((model, quant, task))
        if found is None:
            raise NotCheckable(f"quality.csv has no row for {model} {quant} {task}")
        self.quality_used.add((model, quant, task))
        return found[0]

    def has_task(self, task: str) -> bool:
        return any(t == task for _, _, t in self.tables.quality)

    def kv_cache_gb(self, key: ConfigKey) -> float:
        """KV-cache memory per GPU of a config: its step model's capacity times bytes per token."""
        try:
            step = self.profiles.step(key)
        except ProfileError:
            raise NotCheckable(f"no step model for {key.label}") from None
        self.steps_used.add(key)
        return step.kv_capacity_tokens * kv_bytes_per_token(MODELS[key.model], QUANTS[key.quant]) / key.tp / 1e9

    def kv_capacity_from_catalog(self, key: ConfigKey) -> bool:
        """True when the config's KV capacity is the catalog's memory arithmetic (RUNTIME_RESERVE_GB)."""
        expected = kv_capacity_tokens(GPUS[key.gpu], MODELS[key.model], QUANTS[key.quant], key.tp)
        return abs(self.profiles.step(key).kv_capacity_tokens - expected) <= 1

    # --- simulated bursts (§5.1) -----------------------------------------------------------------

    def simulate(self, key: ConfigKey, input_tokens: int, output_tokens: int) -> SimPoint:
        """A 2-minute Poisson burst of fixed-length requests at 5 req/s on the config's step model."""
        from calibrate.sim_probe import SimulatedProbe

        try:
            step = self.profiles.step(key)
        except ProfileError:
            raise NotCheckable(f"no step model for {key.label}") from None
        self.steps_used.add(key)
        self.simulated.add(key)
        memo = (key, input_tokens, output_tokens)
        if memo not in self.tables.sim:
            n = int(S51_QPS * S51_TRACE_S)
            probe = SimulatedProbe(step, np.full(n, input_tokens), np.full(n, output_tokens), seed=S51_SEED,
                                   burst_s=S51_TRACE_S, min_requests=n, max_requests=n)
            r = probe(S51_QPS)
            self.tables.sim[memo] = SimPoint(r.p90_ttft_s, r.p90_tpot_s, r.energy_per_output_token_j)
        return self.tables.sim[memo]

    # --- provenance ------------------------------------------------------------------------------

    def quality_rows_from_paper(self, include_fp16: bool = False) -> bool:
        """True when every quality row read (FP16 rows only if asked) was set from this paper's statements."""
        rows = [row for row in self.quality_used if include_fp16 or row[1] != "fp16"]
        sources = [self.tables.quality[row][2] for row in rows]
        return bool(sources) and all(LOSS_RULE_NAME in s or PAPER_AUTHORS in s for s in sources)

    def provenance_note(self) -> str:
        """Which rows were read and what their provenance is, one clause per table."""
        parts = []
        step_keys = set(self.steps_used) | {k for k, _ in self.curves_used} | {k for k, _, _ in self.saturation_used}
        if self.curves_used:
            kinds = _count(Counter(str(self.profiles.curve(k, w)["provenance"].iloc[0]) for k, w in self.curves_used))
            parts.append(f"curves.parquet: {len(self.curves_used)} curves ({kinds})")
        if self.saturation_used:
            kinds = _count(Counter(
                self.tables.saturation[(k.gpu, k.model, k.quant, k.tp, w, _slo_key(slo.ttft_s, slo.tpot_s))][1]
                for k, w, slo in self.saturation_used))
            parts.append(f"saturation.csv: {len(self.saturation_used)} rows ({kinds})")
        if self.simulated:
            parts.append(f"simulated 120 s bursts at {S51_QPS:g} req/s on {len(self.simulated)} step models")
        if step_keys:
            kinds = Counter(self.tables.step_provenance.get(k, "missing") for k in step_keys)
            parts.append(f"step models beneath: {_count(kinds)}")
        if self.quality_used:
            kinds = Counter(self.tables.quality[row][1] for row in self.quality_used)
            parts.append(f"quality.csv: {len(self.quality_used)} rows ({_count(kinds)})")
        return "; ".join(parts) if parts else "no rows read"


def _count(kinds: Counter) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
