"""§7 (hardware): Llama-2-13B on one A100-40GB versus one H100, within the A100's saturation range.

The KV-cache memory figures of §7 (2) are the ones ``catalog.RUNTIME_RESERVE_GB`` was derived from; when a
profile set's KV capacities are the catalog's arithmetic, those findings hold by construction.
"""

from __future__ import annotations

import numpy as np

from profiles.catalog import QUANTS, RUNTIME_RESERVE_GB
from profiles.paper_findings.common import FP16, WORKLOADS, Outcome, check, ms
from profiles.paper_findings.data import A100, H100, NotCheckable, Reader
from profiles.paper_findings.s4_application import M13
from profiles.schema import ConfigKey

LOW_MID_FRACTIONS = (0.1, 0.25, 0.5)  # "low to mid QPS", as fractions of the A100 config's saturation
KV_CACHE_GB = {"a100 w4a16-int": 30.0, "a100 fp16": 12.0, "h100 fp16": 53.0}  # §7 (2), "≈"
KV_CACHE_TOLERANCE = 0.15  # "≈": within 15 %
A100_EXTRA_SAVING = (0.096, 0.356)  # §7 (3): "on average 9.6-35.6% greater energy savings on A100"


def a(quant: str) -> ConfigKey:
    return ConfigKey(A100, M13, quant, 1)


def h(quant: str) -> ConfigKey:
    return ConfigKey(H100, M13, quant, 1)


def both(r: Reader, w: str = "sharegpt") -> list[str]:
    quants = [q for q in QUANTS if r.has(a(q), w) and r.has(h(q), w)]
    if FP16 not in quants:
        raise NotCheckable(f"13B FP16 is not profiled on both {A100} and {H100} for {w}")
    return quants


@check("a100-higher-latency", "§7 (1), Finding #4a",
       "A100 has higher latency than H100 for the same method, even with quantization (13B, one GPU)")
def a100_higher_latency(r: Reader) -> Outcome:
    higher = total = 0
    parts = []
    for w in WORKLOADS:
        for q in both(r, w):
            qps = 0.5 * r.saturation_qps(a(q), w)
            for metric in ("p90_ttft_s", "p90_tpot_s"):
                higher += r.at(a(q), w, qps, metric) > r.at(h(q), w, qps, metric)
                total += 1
        qps = 0.5 * r.saturation_qps(a(FP16), w)
        parts.append(f"{w} FP16 at {qps:.1f} req/s: TPOT A100 {ms(r.tpot_s(a(FP16), w, qps))} vs H100 "
                     f"{ms(r.tpot_s(h(FP16), w, qps))}")
    return Outcome(higher == total, f"A100 slower in {higher}/{total} (method, dataset, metric) cells at 50 % of the "
                   "A100 config's saturation; " + "; ".join(parts))


@check("h100-higher-saturation", "§7, Finding #4a",
       "H100 improves scalability: the same method saturates at a higher load on H100 than on A100")
def h100_higher_saturation(r: Reader) -> Outcome:
    higher = total = 0
    parts = []
    for w in WORKLOADS:
        ratios = {q: r.saturation_qps(h(q), w) / r.saturation_qps(a(q), w) for q in both(r, w)}
        higher += sum(x > 1 for x in ratios.values())
        total += len(ratios)
        parts.append(f"{w} H100/A100 {min(ratios.values()):.1f}-{max(ratios.values()):.1f}x")
    return Outcome(higher == total, f"H100 higher in {higher}/{total} (method, dataset) cells: " + "; ".join(parts))


@check("a100-quantized-below-h100-fp16", "§7 (1), Finding #4b",
       "Quantized 13B on A100 still saturates earlier than FP16 on H100: saturation depends on compute, not only memory")
def a100_saturates_earlier(r: Reader) -> Outcome:
    parts, ok = [], True
    for w in WORKLOADS:
        ref = r.saturation_qps(h(FP16), w)
        sat = {q: r.saturation_qps(a(q), w) for q in both(r, w) if q != FP16}
        top = max(sat, key=sat.get)
        ok &= sat[top] < ref
        parts.append(f"{w}: best A100 {top} {sat[top]:.2f} vs H100 FP16 {ref:.2f} req/s")
    return Outcome(ok, "; ".join(parts))


def _kv_outcome(r: Reader, ok: bool, evidence: str, keys: list[ConfigKey]) -> Outcome:
    built = all(r.kv_capacity_from_catalog(key) for key in keys)
    note = (f"the KV capacities are catalog.kv_capacity_tokens, whose RUNTIME_RESERVE_GB = {RUNTIME_RESERVE_GB:g} "
            "was derived from these §7 figures") if built else ""
    return Outcome(ok, evidence, note)


@check("kv-cache-memory", "§7 (2)",
       "KV-cache memory: 13B W4A16-INT on A100 ≈ 30 GB, about 2.5x FP16 13B on A100 (≈ 12 GB), still far below "
       "FP16 13B on H100 (≈ 53 GB)")
def kv_cache_memory(r: Reader) -> Outcome:
    keys = {"a100 w4a16-int": a("w4a16-int"), "a100 fp16": a(FP16), "h100 fp16": h(FP16)}
    gb = {name: r.kv_cache_gb(key) for name, key in keys.items()}
    ok = all(abs(gb[n] / KV_CACHE_GB[n] - 1) <= KV_CACHE_TOLERANCE for n in gb)
    ratio = gb["a100 w4a16-int"] / gb["a100 fp16"]
    return _kv_outcome(r, ok, ", ".join(f"{n} {gb[n]:.1f} GB (paper ≈ {KV_CACHE_GB[n]:g})" for n in gb)
                       + f"; W4A16/FP16 on A100 {ratio:.2f}x (paper ≈ 2.5x)", list(keys.values()))


@check("quant-relieves-memory-older-gpu", "§7 (2), Finding #4b",
       "Quantization relieves the memory-capacity bottleneck, especially on the older GPU")
def quant_relieves_memory(r: Reader) -> Outcome:
    keys = [a("w4a16-int"), a(FP16), h("w4a16-int"), h(FP16)]
    gain_a = r.kv_cache_gb(keys[0]) / r.kv_cache_gb(keys[1])
    gain_h = r.kv_cache_gb(keys[2]) / r.kv_cache_gb(keys[3])
    return _kv_outcome(r, gain_a > gain_h > 1, f"W4A16-INT over FP16 KV-cache memory: A100 {gain_a:.2f}x, "
                       f"H100 {gain_h:.2f}x", keys)


def _low_mid_energy(r: Reader, q: str, w: str) -> list[tuple[float, float, float]]:
    """(A100 energy, H100 energy, H100 FP16 energy) per output token at low to mid loads of the A100 config."""
    sat = r.saturation_qps(a(q), w)
    return [(r.energy_j(a(q), w, f * sat), r.energy_j(h(q), w, f * sat), r.energy_j(h(FP16), w, f * sat))
            for f in LOW_MID_FRACTIONS]


@check("a100-more-energy-efficient", "§7 (3), Finding #4a",
       "A100 is more energy-efficient than H100 at low to mid QPS, for the same method")
def a100_energy(r: Reader) -> Outcome:
    better = total = 0
    parts = []
    for w in WORKLOADS:
        for q in both(r, w):
            rows = _low_mid_energy(r, q, w)
            better += sum(ea < eh for ea, eh, _ in rows)
            total += len(rows)
        ea, eh, _ = _low_mid_energy(r, FP16, w)[0]
        parts.append(f"{w} FP16 at {LOW_MID_FRACTIONS[0]:.0%} of A100 saturation: A100 {ea:.3f} J vs H100 {eh:.3f} J")
    return Outcome(better == total, f"A100 lower in {better}/{total} (method, dataset, load) cells at "
                   f"{'/'.join(f'{f:.0%}' for f in LOW_MID_FRACTIONS)} of the A100 config's saturation; "
                   + "; ".join(parts))


@check("a100-extra-energy-saving", "§7 (3)",
       "Against FP16 on H100, the same method saves on average 9.6-35.6 % more energy on A100 than on H100")
def a100_extra_saving(r: Reader) -> Outcome:
    lo, hi = A100_EXTRA_SAVING
    extra = {}
    for q in both(r):
        if q == FP16:
            continue
        rows = _low_mid_energy(r, q, "sharegpt")
        extra[q] = float(np.mean([(eh - ea) / ef for ea, eh, ef in rows]))
    ok = all(lo <= v <= hi for v in extra.values())
    return Outcome(ok, "ShareGPT, mean over low to mid loads, percentage points of FP16-H100 energy: "
                   + ", ".join(f"{q} {100 * v:+.1f}" for q, v in extra.items())
                   + f" (paper: +{100 * lo:.1f} to +{100 * hi:.1f})")
