"""§5 (workload level): input/output lengths (§5.1) and load intensity (§5.2), quantized 34B on one H100.

§5.1 runs fixed-length requests the profile set has no curves for, so they are simulated here the way
the profile curves are made: a 2-minute Poisson burst at 5 req/s on each config's step model
(``calibrate.sim_probe``). §5.2 reads the profile curves and saturation table directly.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from profiles.catalog import QUANTS
from profiles.paper_findings.common import FP16, KV_PAIRS, WEIGHT_ONLY, WORKLOADS, Outcome, check, ms
from profiles.paper_findings.data import S51_INPUTS_TOKENS, S51_OUTPUTS_TOKENS, NotCheckable, Reader
from profiles.paper_findings.s4_application import GENERALLY, QUANTIZED, k34
from profiles.schema import ConfigKey

NEARLY_ALL = 0.8  # "nearly all": at least four in five
LOAD_POINTS = 40  # QPS grid for the energy-optimal-configuration scan (§5.2, Figure 8)
LOW_LOAD_FRACTION = 0.2  # "low QPS": a fifth of FP16's saturation
HIGH_LOAD_FRACTION = 0.9  # "high load", "near FP16's saturation"
NEAR_SATURATION_FRACTION = 0.8  # "near saturation": the top fifth of the range any method sustains


def sim(r: Reader, quant: str, input_tokens: int, output_tokens: int):
    key = k34(quant)
    if key not in set(r.profiles.configs()):
        raise NotCheckable(f"no step model for {key.label}")
    return r.simulate(key, input_tokens, output_tokens)


# --- §5.1 input/output lengths ---------------------------------------------------------------------

# §5.1 (1): the pairs where the paper saw weight-only TTFT degrade.
SHORT_OUTPUT_PAIRS = ((128, 64), (256, 64), (256, 128), (512, 64), (512, 128), (1024, 64))


@check("short-output-weight-only-ttft", "§5.1 (1), Finding #2a",
       "Short outputs hurt TTFT for some weight-only methods: their P90 TTFT exceeds FP16's at (input, output) = "
       "(128,64), (256,64/128), (512,64/128), (1024,64), 34B, one H100, 5 req/s")
def short_output_ttft(r: Reader) -> Outcome:
    hits, parts = 0, []
    for i, o in SHORT_OUTPUT_PAIRS:
        f = sim(r, FP16, i, o).p90_ttft_s
        worse = {q: sim(r, q, i, o).p90_ttft_s for q in WEIGHT_ONLY}
        hits += any(v > f for v in worse.values())
        parts.append(f"({i},{o}) fp16 {ms(f)}, " + ", ".join(f"{q} {ms(v)}" for q, v in worse.items()))
    return Outcome(hits >= len(SHORT_OUTPUT_PAIRS) / 2,
                   f"a weight-only method above FP16 in {hits}/{len(SHORT_OUTPUT_PAIRS)} listed pairs (at least half "
                   "required): " + "; ".join(parts))


@check("long-input-tpot", "§5.1 (2), Finding #2a",
       "Long inputs (512/1024 tokens) make P90 TPOT degrade for W4A8KV4, W8A16-INT, W4A16-INT and W8A16KV8-INT")
def long_input_tpot(r: Reader) -> Outcome:
    named = ("w4a8kv4", "w8a16-int", "w4a16-int", "w8a16kv8-int")
    parts, ok = [], True
    for q in named:
        ratios = {(i, o): sim(r, q, i, o).p90_tpot_s / sim(r, FP16, i, o).p90_tpot_s
                  for i in (512, 1024) for o in S51_OUTPUTS_TOKENS}
        worst = max(ratios, key=ratios.get)
        ok &= ratios[worst] > 1
        parts.append(f"{q} worst {ratios[worst]:.2f}x FP16 at {worst}")
    return Outcome(ok, "; ".join(parts))


@check("length-energy-crossover", "§5.1 (3)",
       "Quantization costs energy on short and medium input/output pairs and saves energy on long ones")
def length_energy_crossover(r: Reader) -> Outcome:
    def median_saving(pairs):
        out = []
        for i, o in pairs:
            f = sim(r, FP16, i, o).energy_per_output_token_j
            out += [1 - sim(r, q, i, o).energy_per_output_token_j / f for q in QUANTIZED if k34(q) in configs]
        if not out:
            raise NotCheckable("no quantized 34B one-H100 step model")
        return float(np.median(out))

    configs = set(r.profiles.configs())
    short = [(i, o) for i in S51_INPUTS_TOKENS for o in S51_OUTPUTS_TOKENS if i <= 256 and o <= 128]
    long = [(i, o) for i in S51_INPUTS_TOKENS for o in S51_OUTPUTS_TOKENS if i >= 512 and o >= 256]
    a, b = median_saving(short), median_saving(long)
    return Outcome(a < 0 < b, f"median energy saving vs FP16: {100 * a:+.0f} % on short/medium pairs (input <= 256, "
                   f"output <= 128), {100 * b:+.0f} % on long pairs (input >= 512, output >= 256)")


# --- §5.2 load intensity ---------------------------------------------------------------------------

def saturations(r: Reader, workload: str, key_of: Callable[[str], ConfigKey] = k34,
                require_fp16: bool = True) -> dict[str, float]:
    """Saturation of every method of a config family (default 34B on one H100) on a workload; FP16 and at least
    one other are needed unless ``require_fp16`` is off (a report drawing whatever a profile set holds)."""
    out = {q: r.saturation_qps(key_of(q), workload) for q in QUANTS if r.has(key_of(q), workload)}
    if require_fp16 and (FP16 not in out or len(out) < 2):
        raise NotCheckable(f"{workload}: 34B one-H100 saturation needs FP16 and a quantized method")
    if not out:
        raise NotCheckable(f"{workload}: no method of {key_of(FP16).gpu} {key_of(FP16).model} TP{key_of(FP16).tp} "
                           "has a curve")
    return out


@check("quant-extends-saturation", "§5.2",
       "Quantization pushes the saturation point above FP16's; on ShareGPT and NewsQA nearly all methods extend it")
def quant_extends_saturation(r: Reader) -> Outcome:
    parts, ok = [], True
    for w in ("sharegpt", "newsqa"):
        sat = saturations(r, w)
        later = sum(sat[q] > sat[FP16] for q in sat if q != FP16)
        ok &= later >= NEARLY_ALL * (len(sat) - 1)
        parts.append(f"{w}: {later}/{len(sat) - 1} above FP16 {sat[FP16]:.2f} req/s")
    return Outcome(ok, "; ".join(parts) + f" (SLO {r.slo('sharegpt').ttft_s:g} s / {r.slo('newsqa').ttft_s:g} s TTFT)")


@check("aggressive-quant-largest-saturation-gain", "§5.2",
       "More aggressive quantization extends saturation most (ShareGPT, NewsQA)")
def aggressive_gain(r: Reader) -> Outcome:
    parts, ok = [], True
    for w in ("sharegpt", "newsqa"):
        sat = saturations(r, w)
        four = np.mean([v for q, v in sat.items() if QUANTS[q].weight_bits == 4])
        eight = np.mean([v for q, v in sat.items() if QUANTS[q].weight_bits == 8])
        top = max(sat, key=sat.get)
        ok &= four > eight and QUANTS[top].weight_bits == 4
        parts.append(f"{w}: 4-bit mean {four:.2f}, 8-bit mean {eight:.2f} req/s, highest {top} {sat[top]:.2f}")
    return Outcome(ok, "; ".join(parts))


@check("humaneval-smaller-saturation-gain", "§5.2",
       "HumanEval shows smaller saturation gains: activation methods still help, KV-cache compression can offset it")
def humaneval_smaller_gain(r: Reader) -> Outcome:
    gain = {w: np.median([s / v[FP16] - 1 for q, s in v.items() if q != FP16])
            for w, v in ((w, saturations(r, w)) for w in WORKLOADS)}
    he = saturations(r, "humaneval")
    act = all(he[q] > he[FP16] for q in ("w8a8-int", "w8a8-fp", "w4a8") if q in he)
    offset = [f"{kv} {he[kv]:.1f} < {base} {he[base]:.1f}" for base, kv in KV_PAIRS if kv in he and he[kv] < he[base]]
    ok = gain["humaneval"] < min(gain["sharegpt"], gain["newsqa"]) and act and bool(offset)
    return Outcome(ok, "median saturation gain over FP16 " + ", ".join(f"{w} {100 * g:.0f} %" for w, g in gain.items())
                   + f"; activation methods above FP16 on HumanEval: {act}; KV variants below their base: "
                   + (", ".join(offset) if offset else "none"))


def _gap(r: Reader, w: str, fraction: float, metric: str) -> tuple[float, float]:
    """Median relative latency and energy reduction vs FP16 over the quantized methods, at a fraction of FP16's
    saturation."""
    qps = fraction * r.saturation_qps(k34(FP16), w)
    f_l, f_e = r.at(k34(FP16), w, qps, metric), r.energy_j(k34(FP16), w, qps)
    lat, en = [], []
    for q in QUANTIZED:
        if r.has(k34(q), w):
            lat.append(1 - r.at(k34(q), w, qps, metric) / f_l)
            en.append(1 - r.energy_j(k34(q), w, qps) / f_e)
    if not lat:
        raise NotCheckable(f"no quantized 34B one-H100 curve on {w}")
    return float(np.median(lat)), float(np.median(en))


@check("low-load-energy-before-latency", "§5.2 (1)",
       "At low QPS quantization brings modest latency gains but already noticeable energy savings")
def low_load(r: Reader) -> Outcome:
    parts, ok = [], True
    for w in WORKLOADS:
        l, e = _gap(r, w, LOW_LOAD_FRACTION, "p90_tpot_s")
        ok &= e > l
        parts.append(f"{w}: TPOT {100 * l:+.0f} %, energy {100 * e:+.0f} %")
    return Outcome(ok, f"median savings vs FP16 at {LOW_LOAD_FRACTION:.0%} of FP16's saturation: " + "; ".join(parts))


@check("latency-gain-grows-with-load", "§5.2 (2)",
       "As QPS increases quantization yields greater latency reductions")
def latency_gain_grows(r: Reader) -> Outcome:
    parts, ok = [], True
    for w in WORKLOADS:
        lo = _gap(r, w, LOW_LOAD_FRACTION, "p90_ttft_s")[0], _gap(r, w, LOW_LOAD_FRACTION, "p90_tpot_s")[0]
        hi = _gap(r, w, HIGH_LOAD_FRACTION, "p90_ttft_s")[0], _gap(r, w, HIGH_LOAD_FRACTION, "p90_tpot_s")[0]
        ok &= hi[0] > lo[0] and hi[1] > lo[1]
        parts.append(f"{w}: TTFT {100 * lo[0]:+.0f} -> {100 * hi[0]:+.0f} %, TPOT {100 * lo[1]:+.0f} -> "
                     f"{100 * hi[1]:+.0f} %")
    return Outcome(ok, f"median reduction vs FP16 from {LOW_LOAD_FRACTION:.0%} to {HIGH_LOAD_FRACTION:.0%} of FP16's "
                   "saturation: " + "; ".join(parts))


@check("energy-saving-grows-with-load", "§5.2 (2)",
       "Energy savings grow as load approaches FP16's saturation; at low QPS absolute and relative savings are smaller")
def energy_saving_grows(r: Reader) -> Outcome:
    parts, ok = [], True
    for w in WORKLOADS:
        best = []
        for fraction in (LOW_LOAD_FRACTION, HIGH_LOAD_FRACTION):
            qps = fraction * r.saturation_qps(k34(FP16), w)
            f = r.energy_j(k34(FP16), w, qps)
            e = min(r.energy_j(k34(q), w, qps) for q in saturations(r, w) if q != FP16)
            best.append((f - e, 1 - e / f))
        ok &= best[0][0] < best[1][0] and best[0][1] < best[1][1]
        parts.append(f"{w}: best saving {best[0][0]:.3f} J ({100 * best[0][1]:.0f} %) -> {best[1][0]:.3f} J "
                     f"({100 * best[1][1]:.0f} %)")
    return Outcome(ok, f"from {LOW_LOAD_FRACTION:.0%} to {HIGH_LOAD_FRACTION:.0%} of FP16's saturation: "
                   + "; ".join(parts))


@check("kv-compression-negates-gains-high-load", "§5.2 (3)",
       "Under high load KV-cache compression reduces or negates latency gains, particularly on HumanEval")
def kv_high_load(r: Reader) -> Outcome:
    counts = {}
    for w in WORKLOADS:
        qps = HIGH_LOAD_FRACTION * r.saturation_qps(k34(FP16), w)
        n = total = 0
        for base, kv in KV_PAIRS:
            if not r.has(k34(kv), w):
                continue
            for metric in ("p90_ttft_s", "p90_tpot_s"):
                n += r.at(k34(kv), w, qps, metric) > r.at(k34(base), w, qps, metric)
                total += 1
        counts[w] = (n, total)
    he = counts["humaneval"]
    ok = he[0] >= GENERALLY * he[1] and he[0] / he[1] >= max(n / t for n, t in counts.values())
    return Outcome(ok, f"KV variant slower than its base at {HIGH_LOAD_FRACTION:.0%} of FP16's saturation in "
                   + ", ".join(f"{w} {n}/{t}" for w, (n, t) in counts.items()) + " (method, metric) cells")


def optimal_by_load(r: Reader, w: str, key_of: Callable[[str], ConfigKey] = k34,
                    require_fp16: bool = True) -> list[tuple[float, str, float]]:
    """(QPS, energy-optimal SLO-meeting method, its energy saving vs FP16 or NaN) over the load range, for a config
    family (default 34B on one H100; ``experiments.characterization`` draws it for any family)."""
    sat = saturations(r, w, key_of, require_fp16)
    top = max(sat.values())
    out = []
    for qps in np.linspace(top / LOAD_POINTS, top, LOAD_POINTS):
        ok = [q for q, s in sat.items() if s >= qps - 1e-9]
        e = {q: r.energy_j(key_of(q), w, qps) for q in ok}
        best = min(e, key=e.get)
        saving = 1 - e[best] / e[FP16] if FP16 in e else float("nan")
        out.append((float(qps), best, saving))
    return out


@check("low-load-heavy-compression-optimal", "§5.2 shifts (1)",
       "At low to mid QPS heavily compressed methods (W4A8, W4A8KV8) are the energy-optimal SLO-meeting choice, saving "
       "20-50 % energy")
def low_load_optimal(r: Reader) -> Outcome:
    parts, ok = [], True
    for w in WORKLOADS:
        rows = [x for x in optimal_by_load(r, w) if x[2] == x[2]]  # FP16 still meets the SLO
        four = sum(QUANTS[q].weight_bits == 4 for _, q, _ in rows)
        savings = [s for *_, s in rows]
        median = float(np.median(savings))
        ok &= four >= GENERALLY * len(rows) and 0.20 <= median <= 0.50
        winners = sorted({q for _, q, _ in rows})
        parts.append(f"{w}: 4-bit optimal at {four}/{len(rows)} loads ({', '.join(winners)}), saving "
                     f"{100 * min(savings):.0f}-{100 * max(savings):.0f} % (median {100 * median:.0f} %)")
    return Outcome(ok, "up to FP16's saturation: " + "; ".join(parts))


@check("near-saturation-lighter-compression", "§5.2 shifts (2)",
       "Near saturation lighter compression (W8A8-INT, W8A8KV8-FP) becomes the energy-optimal SLO-meeting choice")
def near_saturation_lighter(r: Reader) -> Outcome:
    parts, ok = [], True
    for w in WORKLOADS:
        rows = optimal_by_load(r, w)
        top = rows[-1][0]
        near = [q for qps, q, _ in rows if qps >= NEAR_SATURATION_FRACTION * top]
        eight = sum(QUANTS[q].weight_bits == 8 for q in near)
        ok &= eight >= GENERALLY * len(near)
        sat = saturations(r, w)
        parts.append(f"{w}: 8-bit optimal at {eight}/{len(near)} loads >= {NEAR_SATURATION_FRACTION * top:.1f} req/s "
                     f"({', '.join(sorted(set(near)))}); saturation w8a8-int {sat.get('w8a8-int', float('nan')):.1f}, "
                     f"w8a8kv8-fp {sat.get('w8a8kv8-fp', float('nan')):.1f}, highest {max(sat, key=sat.get)} "
                     f"{max(sat.values()):.1f} req/s")
    return Outcome(ok, "; ".join(parts))


@check("optimal-config-shifts-with-load", "§5.2, Finding #2b",
       "No single configuration remains energy-optimal across QPS")
def optimal_shifts(r: Reader) -> Outcome:
    parts, ok = [], True
    for w in WORKLOADS:
        winners = [q for _, q, _ in optimal_by_load(r, w)]
        changes = sum(a != b for a, b in zip(winners, winners[1:]))
        ok &= changes > 0
        parts.append(f"{w}: {changes} transitions ({' -> '.join(dict.fromkeys(winners))})")
    return Outcome(ok, "; ".join(parts))
