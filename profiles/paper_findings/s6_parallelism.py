"""§6 (parallelism): Llama-2-70B on H100 at TP1/2/4/8, chatbot task (ShareGPT), against FP16 at TP4 and TP8.

70B FP16 needs TP4 (§4), so comparisons with FP16 are made at TP4 and TP8, each at a fraction of that
FP16 config's saturation; scaling within a method compares the same load across TP levels.
"""

from __future__ import annotations

from profiles.paper_findings.common import FP16, FRACTIONAL, KV_PAIRS, SIMILAR, Outcome, check, ms
from profiles.paper_findings.data import H100, NotCheckable, Reader
from profiles.paper_findings.s4_application import M70
from profiles.paper_findings.s5_workload import HIGH_LOAD_FRACTION
from profiles.schema import ConfigKey

W = "sharegpt"  # §6: "on the chatbot task"
GROUP_1 = ("w8a16-int", "w4a16-int")  # weight-only
GROUP_2 = ("w8a16kv8-int", "w4a16kv8-int")  # weight-only with KV-cache compression
GROUP_3 = ("w8a8-fp", "w8a8kv8-fp", "w8a8-int", "w8a8kv8-int", "w4a8")  # 8-bit activations, 8-bit weights or W4A8
GROUP_4 = ("w4a8kv8", "w4a8kv4")  # 4-bit weights, 8-bit activations, KV-cache compression
MID_FRACTION = 0.5
LOW_MID_FRACTION = 0.25
BELOW_SATURATION = (0.25, 0.5, 0.75)  # "under SLO": loads both configs sustain, short of the knee at saturation
TP4_TO_TP8_GAIN = (0.20, 0.35)  # §6 (5): "only increases the saturation point by 20-35%"


def k(quant: str, tp: int) -> ConfigKey:
    return ConfigKey(H100, M70, quant, tp)


def need(r: Reader, quant: str, tp: int) -> ConfigKey:
    key = k(quant, tp)
    if not r.has(key, W):
        raise NotCheckable(f"no curve for {key.label} on {W}")
    return key


def vs_fp16(r: Reader, quant: str, tp: int, fraction: float = MID_FRACTION) -> tuple[float, float, float]:
    """(TTFT, TPOT, energy) ratios of a method over FP16 at the same TP, at a fraction of FP16's saturation."""
    a, f = need(r, quant, tp), need(r, FP16, tp)
    qps = fraction * r.saturation_qps(f, W)
    return (r.ttft_s(a, W, qps) / r.ttft_s(f, W, qps), r.tpot_s(a, W, qps) / r.tpot_s(f, W, qps),
            r.energy_j(a, W, qps) / r.energy_j(f, W, qps))


def fmt(x: tuple[float, float, float]) -> str:
    return f"TTFT {x[0]:.2f}x, TPOT {x[1]:.2f}x, energy {x[2]:.2f}x"


@check("tp-weight-only-scaling", "§6 (1)",
       "Weight-only methods: TP2 -> TP8 consistently reduces TTFT and TPOT, but their gains over FP16 stay fractional")
def weight_only_scaling(r: Reader) -> Outcome:
    parts, ok = [], True
    for q in GROUP_1:
        qps = MID_FRACTION * r.saturation_qps(need(r, q, 2), W)
        ttft = [r.ttft_s(need(r, q, tp), W, qps) for tp in (2, 4, 8)]
        tpot = [r.tpot_s(need(r, q, tp), W, qps) for tp in (2, 4, 8)]
        falls = ttft[0] > ttft[1] > ttft[2] and tpot[0] > tpot[1] > tpot[2]
        gains = [1 - x for tp in (4, 8) for x in vs_fp16(r, q, tp)]
        ok &= falls and max(gains) < FRACTIONAL
        parts.append(f"{q} at {qps:.1f} req/s TP2/4/8 TTFT {'/'.join(ms(x) for x in ttft)}, TPOT "
                     f"{'/'.join(ms(x) for x in tpot)}; largest gain over FP16 at TP4/8 {100 * max(gains):.0f} %")
    return Outcome(ok, "; ".join(parts) + f" (fractional: under {FRACTIONAL:.0%})")


@check("tp-weight-only-kv-degrades", "§6 (2), Finding #3a",
       "Weight-only methods with KV-cache compression degrade at higher TP: their latency and energy relative to FP16 "
       "get worse as TP grows, above FP16 at TP8")
def weight_only_kv_degrades(r: Reader) -> Outcome:
    parts, ok = [], True
    for q in GROUP_2:
        x4, x8 = vs_fp16(r, q, 4), vs_fp16(r, q, 8)
        ok &= max(x8) > 1 and max(x8) > max(x4)
        parts.append(f"{q} TP4 {fmt(x4)}; TP8 {fmt(x8)}")
    return Outcome(ok, "over FP16 at the same TP, 50 % of FP16's saturation: " + "; ".join(parts))


@check("tp-activation-reduces-latency-energy", "§6 (3)",
       "8-bit-activation methods (W8A8-FP/-INT with or without KV8, W4A8) reduce latency and energy versus FP16 at "
       "every TP level")
def activation_reduces(r: Reader) -> Outcome:
    cells, better, parts = 0, 0, []
    for q in GROUP_3:
        for tp in (4, 8):
            x = vs_fp16(r, q, tp)
            cells += 3
            better += sum(v < 1 for v in x)
            parts.append(f"{q} TP{tp} {fmt(x)}")
    return Outcome(better == cells, f"{better}/{cells} ratios below FP16: " + "; ".join(parts))


@check("tp-activation-scales-moderate", "§6, Finding #3a",
       "Activation quantization scales well under moderate TP: saturation grows more from TP2 to TP4 than from TP4 "
       "to TP8")
def activation_scales(r: Reader) -> Outcome:
    parts, ok = [], True
    for q in GROUP_3:
        s2, s4, s8 = (r.saturation_qps(need(r, q, tp), W) for tp in (2, 4, 8))
        ok &= s4 / s2 > s8 / s4 > 0
        parts.append(f"{q} {s2:.1f} / {s4:.1f} / {s8:.1f} req/s")
    return Outcome(ok, "saturation at TP2 / TP4 / TP8: " + "; ".join(parts))


@check("tp4-w8a8kv8-fp-matches-fp16-tp8", "§6 (3), Finding #3b",
       "W8A8KV8-FP at TP4 reaches latency comparable to FP16 at TP8 under the SLO, with half the GPUs")
def tp4_matches_tp8(r: Reader) -> Outcome:
    a, f = need(r, "w8a8kv8-fp", 4), need(r, FP16, 8)
    top = min(r.saturation_qps(a, W), r.saturation_qps(f, W))
    worst, parts = 0.0, []
    for fraction in BELOW_SATURATION:
        qps = fraction * top
        t, p = r.ttft_s(a, W, qps) / r.ttft_s(f, W, qps), r.tpot_s(a, W, qps) / r.tpot_s(f, W, qps)
        worst = max(worst, t, p)
        parts.append(f"{qps:.1f} req/s TTFT {t:.2f}x, TPOT {p:.2f}x")
    return Outcome(worst <= 1 + SIMILAR, "W8A8KV8-FP TP4 over FP16 TP8, at "
                   + "/".join(f"{f:.0%}" for f in BELOW_SATURATION) + f" of the lower saturation ({top:.1f} req/s): "
                   + "; ".join(parts) + f" (comparable: within {SIMILAR:.0%})")


@check("tp-4bit-kv-mixed", "§6 (4)",
       "W4A8KV8 and W4A8KV4: at low to mid QPS latency is often worse than FP16's, near FP16's saturation they gain "
       "latency, and their energy is consistently better")
def four_bit_kv_mixed(r: Reader) -> Outcome:
    worse_low = cells_low = better_high = cells_high = energy_better = energy_cells = 0
    parts = []
    for q in GROUP_4:
        for tp in (4, 8):
            lo, hi = vs_fp16(r, q, tp, LOW_MID_FRACTION), vs_fp16(r, q, tp, HIGH_LOAD_FRACTION)
            worse_low += (lo[0] > 1) + (lo[1] > 1)
            better_high += (hi[0] < 1) + (hi[1] < 1)
            energy_better += (lo[2] < 1) + (hi[2] < 1)
            cells_low, cells_high, energy_cells = cells_low + 2, cells_high + 2, energy_cells + 2
            parts.append(f"{q} TP{tp} low {fmt(lo)}, high {fmt(hi)}")
    ok = worse_low >= cells_low / 2 and better_high == cells_high and energy_better == energy_cells
    return Outcome(ok, f"latency worse than FP16 at {LOW_MID_FRACTION:.0%} of its saturation in {worse_low}/{cells_low}, "
                   f"better at {HIGH_LOAD_FRACTION:.0%} in {better_high}/{cells_high}, energy better in "
                   f"{energy_better}/{energy_cells}: " + "; ".join(parts))


@check("tp4-to-tp8-saturation-gain", "§6 (5)",
       "For 8-bit-activation methods with KV compression (groups 3 and 4), doubling GPUs from TP4 to TP8 raises "
       "saturation by only 20-35 %")
def tp4_to_tp8_gain(r: Reader) -> Outcome:
    lo, hi = TP4_TO_TP8_GAIN
    gains = {q: r.saturation_qps(need(r, q, 8), W) / r.saturation_qps(need(r, q, 4), W) - 1 for q in GROUP_3 + GROUP_4}
    ok = all(lo <= g <= hi for g in gains.values())
    return Outcome(ok, "TP8 over TP4 saturation: " + ", ".join(f"{q} {100 * g:+.0f} %" for q, g in gains.items())
                   + f" (paper: +{100 * lo:.0f} to +{100 * hi:.0f} %; SLO {r.slo(W).ttft_s:g} s TTFT)")


@check("tp4-to-tp8-energy-worse", "§6 (5)",
       "Going from TP4 to TP8 makes energy per token worse for groups 3 and 4")
def tp4_to_tp8_energy(r: Reader) -> Outcome:
    worse, parts = 0, []
    for q in GROUP_3 + GROUP_4:
        a, b = need(r, q, 4), need(r, q, 8)
        qps = MID_FRACTION * r.saturation_qps(a, W)
        e4, e8 = r.energy_j(a, W, qps), r.energy_j(b, W, qps)
        worse += e8 > e4
        parts.append(f"{q} {e4:.3f} -> {e8:.3f} J")
    n = len(GROUP_3 + GROUP_4)
    return Outcome(worse == n, f"TP8 uses more energy per token in {worse}/{n} at 50 % of TP4's saturation: "
                   + "; ".join(parts))


@check("kv-compression-high-tp-latency", "§6, Finding #3c",
       "KV-cache compression can undermine latency at higher TP")
def kv_high_tp(r: Reader) -> Outcome:
    cases, parts = [], []
    for base, kv in KV_PAIRS:
        tps = [tp for tp in (1, 2, 4, 8) if r.has(k(base, tp), W) and r.has(k(kv, tp), W)]
        if len(tps) < 2:
            continue
        ratio = {}
        for tp in (tps[0], tps[-1]):
            qps = 0.5 * r.saturation_qps(k(base, tp), W)
            ratio[tp] = r.tpot_s(k(kv, tp), W, qps) / r.tpot_s(k(base, tp), W, qps)
        if ratio[tps[-1]] > 1 and ratio[tps[-1]] > ratio[tps[0]]:
            cases.append(kv)
        parts.append(f"{kv}/{base} TPOT TP{tps[0]} {ratio[tps[0]]:.2f}x -> TP{tps[-1]} {ratio[tps[-1]]:.2f}x")
    if not parts:
        raise NotCheckable("no 70B KV pair at two TP levels")
    return Outcome(bool(cases), f"{len(cases)} pair(s) slower than their base at the highest TP and worse than at the "
                   "lowest: " + "; ".join(parts))
