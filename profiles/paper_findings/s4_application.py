"""§4 (application level) and Table 2: latency, energy and quality of the quantized 34B on one H100.

The paper measures CodeLlama-34B on one H100 at each dataset's mid-range load (Table 2), the 70B at
TP4, and compares across sizes in §4.2. Latency is P90 TTFT / P90 TPOT read off the profile curves,
energy is per output token of the whole config, quality is the profile set's quality table.
"""

from __future__ import annotations

from profiles.catalog import GPUS, MAX_WEIGHT_FRACTION, MODELS, QUANTS, unsupported_reason
from profiles.paper_findings.common import (
    ACTIVATION, FP16, KV_PAIRS, MID_RANGE_QPS, NEGLIGIBLE, SIMILAR, TABLE2_TOLERANCE, TASK_OF, WEIGHT_ONLY, WORKLOADS, Outcome,
    check, ms, pct, quoted,
)
from profiles.paper_findings.data import A100, H100, NotCheckable, Reader
from profiles.schema import ConfigKey

M34, M13, M70 = "codellama-34b", "llama2-13b", "llama2-70b"
GENERALLY = 0.75  # "generally", "typically": at least three quarters of the cases
FEW = 0.20  # "few configurations": at most a fifth
QUANTIZED = tuple(q for q in QUANTS if q != FP16)


def k34(quant: str) -> ConfigKey:
    return ConfigKey(H100, M34, quant, 1)


def k13(quant: str) -> ConfigKey:
    return ConfigKey(H100, M13, quant, 1)


def k70(quant: str) -> ConfigKey:
    """§4: "the 70B model requires TP4, the minimum number of H100s for FP16 inference"."""
    return ConfigKey(H100, M70, quant, 4)


def lat(r: Reader, key: ConfigKey, workload: str) -> tuple[float, float]:
    q = MID_RANGE_QPS[workload]
    return r.ttft_s(key, workload, q), r.tpot_s(key, workload, q)


def energy(r: Reader, key: ConfigKey, workload: str) -> float:
    return r.energy_j(key, workload, MID_RANGE_QPS[workload])


def present(r: Reader, quants, workload: str = "sharegpt") -> list[str]:
    """The methods among ``quants`` with a 34B one-H100 curve; none is not checkable."""
    found = [q for q in quants if r.has(k34(q), workload)]
    if not found:
        raise NotCheckable(f"no 34B one-H100 curve on {workload} for {', '.join(quants)}")
    return found


# --- Table 2 ---------------------------------------------------------------------------------------

@check("table2-saturation", "§4, Table 2",
       "The mid-range loads 5 / 21 / 4 req/s (ShareGPT / HumanEval / NewsQA) are 50 % of the saturation of 13B "
       "W8A8-INT on one H100, i.e. that config saturates near 10 / 42 / 8 req/s")
def table2_saturation(r: Reader) -> Outcome:
    from profiles.findings import table2_comparison

    rows = table2_comparison(r.profiles, r)
    decisive = [row for row in rows if row.quant == "w8a8-int" and row.primary_slo]
    if len(decisive) < len(WORKLOADS):
        raise NotCheckable("13B W8A8-INT on one H100 lacks a saturation for some workload")
    ok = all(abs(row.ratio - 1) <= TABLE2_TOLERANCE for row in decisive)
    parts = [f"{row.workload} {row.saturation_qps:.2f} vs {row.paper_saturation_qps:.0f} req/s ({row.ratio:.2f}x)"
             for row in decisive]
    eight = [row.ratio for row in rows if QUANTS[row.quant].weight_bits == 8]
    return Outcome(ok, "13B W8A8-INT: " + "; ".join(parts)
                   + f"; all 8-bit methods {min(eight):.2f}-{max(eight):.2f}x the paper (table below)"
                   + f"; within {TABLE2_TOLERANCE:.0%} required")


@check("fp16-deployability", "§4, §7",
       "34B FP16 fits on one H100, 70B FP16 needs TP4 (the fewest H100s), 13B FP16 fits on one A100")
def fp16_deployability(r: Reader) -> Outcome:
    configs = set(r.profiles.configs())
    families = {(k.gpu, k.model) for k in configs}
    if not {(H100, M34), (H100, M70), (A100, M13)} <= families:
        raise NotCheckable("the profile set lacks H100 34B, H100 70B or A100 13B configs")
    want = {ConfigKey(H100, M34, FP16, 1): True, ConfigKey(H100, M70, FP16, 1): False,
            ConfigKey(H100, M70, FP16, 2): False, ConfigKey(H100, M70, FP16, 4): True,
            ConfigKey(A100, M13, FP16, 1): True}
    got = {k: k in configs for k in want}
    r.steps_used.update(k for k, v in got.items() if v)
    ok = got == want
    catalog = all((unsupported_reason(GPUS[k.gpu], MODELS[k.model], QUANTS[k.quant], k.tp) is None) == v
                  for k, v in got.items())
    note = (f"catalog.MAX_WEIGHT_FRACTION = {MAX_WEIGHT_FRACTION:.0%} was chosen between these statements (34B FP16 "
            "84.4 % of an H100, 70B FP16 at TP2 86.3 %, 13B FP16 65 % of an A100)") if catalog else ""
    return Outcome(ok, "; ".join(f"{k.label} {'present' if v else 'absent'}" for k, v in got.items()), note)


# --- §4.1 latency ----------------------------------------------------------------------------------

def _reductions(r: Reader, quants) -> list[tuple[str, str, str, float]]:
    out = []
    for w in WORKLOADS:
        f_ttft, f_tpot = lat(r, k34(FP16), w)
        for q in quants:
            ttft, tpot = lat(r, k34(q), w)
            out += [(q, w, "TTFT", 1 - ttft / f_ttft), (q, w, "TPOT", 1 - tpot / f_tpot)]
    return out


@check("quant-reduces-latency", "§4.1 latency (1)",
       "Weight-only and activation methods generally reduce P90 latency (34B, one H100, mid-range load), "
       "by up to 70 %")
def quant_reduces_latency(r: Reader) -> Outcome:
    red = _reductions(r, present(r, WEIGHT_ONLY + ACTIVATION))
    if not red:
        raise NotCheckable("no weight-only or activation 34B curves")
    lower = sum(x[3] > 0 for x in red)
    best = max(red, key=lambda x: x[3])
    ok = lower >= GENERALLY * len(red) and quoted(best[3], 0.70)
    return Outcome(ok, f"{lower}/{len(red)} (method, dataset, metric) cells below FP16; largest reduction "
                       f"{100 * best[3]:.0f} % ({best[0]} {best[1]} {best[2]}; paper: up to 70 %)")


@check("w4a8-best-latency", "§4.1 latency (1)",
       "Among weight-only and activation methods, W4A8 gives the best P90 TTFT and TPOT on every dataset")
def w4a8_best_latency(r: Reader) -> Outcome:
    parts, ok = [], True
    for w in WORKLOADS:
        cands = present(r, WEIGHT_ONLY + ACTIVATION, w)
        if "w4a8" not in cands:
            raise NotCheckable(f"no 34B W4A8 curve on {w}")
        ttft = {q: lat(r, k34(q), w)[0] for q in cands}
        tpot = {q: lat(r, k34(q), w)[1] for q in cands}
        bt, bp = min(ttft, key=ttft.get), min(tpot, key=tpot.get)
        ok &= bt == "w4a8" and bp == "w4a8"
        everyone = present(r, QUANTS, w)
        overall = min(everyone, key=lambda q: lat(r, k34(q), w)[0])
        parts.append(f"{w}: best TTFT {bt} {ms(ttft[bt])}, best TPOT {bp} {ms(tpot[bp])} (w4a8 {ms(ttft['w4a8'])} / "
                     f"{ms(tpot['w4a8'])}; best TTFT of all methods {overall})")
    return Outcome(ok, "; ".join(parts))


@check("w4a16-beats-w8a16", "§4.1 latency (2)",
       "Greater compression gives lower latency: W4A16-INT beats W8A16-INT on P90 TTFT and TPOT")
def w4a16_beats_w8a16(r: Reader) -> Outcome:
    cells = []
    for w in WORKLOADS:
        a, b = lat(r, k34("w4a16-int"), w), lat(r, k34("w8a16-int"), w)
        cells += [(w, "TTFT", a[0], b[0]), (w, "TPOT", a[1], b[1])]
    wins = sum(x[2] < x[3] for x in cells)
    return Outcome(wins >= GENERALLY * len(cells), f"W4A16-INT lower in {wins}/{len(cells)}: " + "; ".join(
        f"{w} {m} {ms(a)} vs {ms(b)}" for w, m, a, b in cells))


def _ttft_pairs(r: Reader, workload: str, fast, slow) -> tuple[int, int, str]:
    wins, total, parts = 0, 0, []
    for a in fast:
        for b in slow:
            ta, tb = lat(r, k34(a), workload)[0], lat(r, k34(b), workload)[0]
            wins += ta < tb
            total += 1
            parts.append(f"{a} {ms(ta)} vs {b} {ms(tb)}")
    return wins, total, f"{workload}: " + ", ".join(parts)


@check("activation-ttft-long-inputs", "§4.1 latency (2)",
       "On ShareGPT and NewsQA (long enough inputs) activation methods (W8A8-INT, W8A8-FP, W4A8) have lower P90 TTFT "
       "than weight-only methods")
def activation_ttft_long_inputs(r: Reader) -> Outcome:
    wins = total = 0
    parts = []
    for w in ("sharegpt", "newsqa"):
        a, t, p = _ttft_pairs(r, w, ACTIVATION, WEIGHT_ONLY)
        wins, total = wins + a, total + t
        parts.append(p)
    return Outcome(wins == total, f"activation lower in {wins}/{total} pairs; " + "; ".join(parts))


@check("humaneval-weight-only-ttft", "§4.1 latency (2)",
       "On HumanEval (short contexts) W8A16-INT and W4A16-INT have lower P90 TTFT than the activation methods")
def humaneval_weight_only_ttft(r: Reader) -> Outcome:
    wins, total, parts = _ttft_pairs(r, "humaneval", WEIGHT_ONLY, ACTIVATION)
    return Outcome(wins == total, f"weight-only lower in {wins}/{total} pairs; {parts}")


@check("quant-not-always-faster", "§4.1 latency (3)",
       "At moderate load quantization does not always reduce latency in online serving")
def quant_not_always_faster(r: Reader) -> Outcome:
    red = _reductions(r, present(r, QUANTIZED))
    worse = [x for x in red if x[3] <= 0]
    examples = ", ".join(f"{q} {w} {m} {pct(-x)}" for q, w, m, x in worse[:6])
    return Outcome(bool(worse), f"{len(worse)}/{len(red)} (method, dataset, metric) cells at or above FP16"
                   + (f": {examples}" if worse else f"; smallest reduction {100 * min(x[3] for x in red):.0f} %"))


@check("kv-compression-latency", "§4.1 latency (4)",
       "KV-cache compression is harmful: it increases P90 TTFT and TPOT over the same method without it, "
       "for every method")
def kv_compression_latency(r: Reader) -> Outcome:
    slower = total = 0
    parts = []
    for base, kv in KV_PAIRS:
        if not r.has(k34(kv), "sharegpt"):
            continue
        n = 0
        for w in WORKLOADS:
            (bt, bp), (kt, kp) = lat(r, k34(base), w), lat(r, k34(kv), w)
            n += (kt > bt) + (kp > bp)
        slower, total = slower + n, total + 2 * len(WORKLOADS)
        kt, kp = lat(r, k34(kv), "sharegpt")
        bt, bp = lat(r, k34(base), "sharegpt")
        parts.append(f"{kv} slower in {n}/{2 * len(WORKLOADS)} (ShareGPT TPOT {ms(kp)} vs {base} {ms(bp)})")
    if not total:
        raise NotCheckable("no 34B KV-compressed curves")
    return Outcome(slower >= GENERALLY * total, f"KV variant slower in {slower}/{total} (dataset, metric) cells: "
                   + "; ".join(parts))


@check("w4a8kv4-negligible-ttft", "§4.1 latency (4)",
       "W4A8KV4 shows negligible P90 TTFT gains over FP16 on ShareGPT and NewsQA")
def w4a8kv4_negligible_ttft(r: Reader) -> Outcome:
    gains = {w: 1 - lat(r, k34("w4a8kv4"), w)[0] / lat(r, k34(FP16), w)[0] for w in ("sharegpt", "newsqa")}
    return Outcome(all(g <= NEGLIGIBLE for g in gains.values()),
                   "; ".join(f"{w}: TTFT {100 * g:.0f} % below FP16" for w, g in gains.items())
                   + f" (negligible: at most {NEGLIGIBLE:.0%})")


@check("weight-only-kv-near-fp16", "§4.1 latency (4)",
       "For weight-only methods, KV-cache compression can push latency close to FP16")
def weight_only_kv_near_fp16(r: Reader) -> Outcome:
    cells = []
    for q in ("w8a16kv8-int", "w4a16kv8-int"):
        for w in WORKLOADS:
            (t, p), (ft, fp) = lat(r, k34(q), w), lat(r, k34(FP16), w)
            cells += [(q, w, "TTFT", t / ft), (q, w, "TPOT", p / fp)]
    close = [c for c in cells if c[3] >= 1 - NEGLIGIBLE]
    best = max(cells, key=lambda c: c[3])
    return Outcome(bool(close), f"{len(close)}/{len(cells)} cells within {NEGLIGIBLE:.0%} of FP16 or above; closest "
                   f"{best[0]} {best[1]} {best[2]} at {best[3]:.2f}x FP16")


# --- §4.1 energy -----------------------------------------------------------------------------------

def _savings(r: Reader, quants, workloads=WORKLOADS) -> dict[tuple[str, str], float]:
    out = {}
    for w in workloads:
        f = energy(r, k34(FP16), w)
        for q in quants:
            out[(q, w)] = 1 - energy(r, k34(q), w) / f
    return out


@check("quant-energy-up-to-30", "§4.1 energy (1)",
       "Quantization improves energy per token by up to 30 % (34B, one H100, mid-range load)")
def quant_energy_up_to_30(r: Reader) -> Outcome:
    s = _savings(r, present(r, QUANTIZED))
    (q, w), best = max(s.items(), key=lambda kv: kv[1])
    better = sum(v > 0 for v in s.values())
    return Outcome(quoted(best, 0.30), f"largest saving {100 * best:.0f} % ({q} {w}; paper: up to 30 %); "
                   f"{better}/{len(s)} (method, dataset) cells save energy")


@check("8bit-activation-minimal-energy", "§4.1 energy (1)",
       "8-bit activation methods (W8A8-INT, W8A8-FP) save little energy despite their lower latency")
def eight_bit_activation_minimal_energy(r: Reader) -> Outcome:
    s = _savings(r, present(r, ("w8a8-int", "w8a8-fp")))
    if not s:
        raise NotCheckable("no 34B 8-bit activation curves")
    ok = all(v <= NEGLIGIBLE for v in s.values())
    return Outcome(ok, "; ".join(f"{q} {w} {100 * v:.0f} %" for (q, w), v in s.items())
                   + f" energy saving vs FP16 (little: at most {NEGLIGIBLE:.0%})")


@check("4bit-larger-energy-savings", "§4.1 energy (2)",
       "4-bit methods save more energy than 8-bit methods")
def four_bit_larger_energy_savings(r: Reader) -> Outcome:
    quants = present(r, QUANTIZED)
    s = _savings(r, quants)
    parts, ok = [], True
    for w in WORKLOADS:
        four = [s[(q, w)] for q in quants if QUANTS[q].weight_bits == 4]
        eight = [s[(q, w)] for q in quants if QUANTS[q].weight_bits == 8]
        a, b = sum(four) / len(four), sum(eight) / len(eight)
        ok &= a > b
        parts.append(f"{w}: 4-bit mean {100 * a:.0f} %, 8-bit mean {100 * b:.0f} %")
    return Outcome(ok, "; ".join(parts))


@check("w4a8kv4-best-energy", "§4.1 energy (2)",
       "W4A8KV4 has the lowest energy per token")
def w4a8kv4_best_energy(r: Reader) -> Outcome:
    parts, ok = [], True
    for w in WORKLOADS:
        e = {q: energy(r, k34(q), w) for q in present(r, QUANTS, w)}
        best = min(e, key=e.get)
        ok &= best == "w4a8kv4"
        parts.append(f"{w}: best {best} {e[best]:.3f} J (w4a8kv4 {e.get('w4a8kv4', float('nan')):.3f} J, "
                     f"fp16 {e[FP16]:.3f} J)")
    return Outcome(ok, "; ".join(parts))


@check("humaneval-energy-above-fp16", "§4.1 energy (3)",
       "On HumanEval, W8A16-INT and W4A8 use more energy per token than FP16 despite lower latency")
def humaneval_energy_above_fp16(r: Reader) -> Outcome:
    f = energy(r, k34(FP16), "humaneval")
    e = {q: energy(r, k34(q), "humaneval") for q in ("w8a16-int", "w4a8")}
    return Outcome(all(v > f for v in e.values()), "; ".join(f"{q} {v:.3f} J" for q, v in e.items())
                   + f" vs FP16 {f:.3f} J")


@check("kv-compression-energy", "§4.1 energy (4)",
       "KV-cache compression generally increases energy per token, except W4A8KV4")
def kv_compression_energy(r: Reader) -> Outcome:
    higher = total = 0
    parts = []
    for base, kv in KV_PAIRS[:-1]:
        if not r.has(k34(kv), "sharegpt"):
            continue
        n = sum(energy(r, k34(kv), w) > energy(r, k34(base), w) for w in WORKLOADS)
        higher, total = higher + n, total + len(WORKLOADS)
        parts.append(f"{kv} {n}/{len(WORKLOADS)}")
    kv4 = [energy(r, k34("w4a8kv4"), w) < energy(r, k34("w4a8"), w) for w in WORKLOADS]
    ok = total > 0 and higher >= GENERALLY * total and all(kv4)
    return Outcome(ok, f"8-bit KV variant uses more energy than its base in {higher}/{total} (method, dataset) cells "
                   f"({', '.join(parts)}); W4A8KV4 below W4A8 in {sum(kv4)}/{len(kv4)} datasets")


# --- §4.1 quality ----------------------------------------------------------------------------------

def loss(r: Reader, model: str, quant: str, task: str) -> float:
    return 1 - r.quality(model, quant, task) / r.quality(model, FP16, task)


def _quality_outcome(r: Reader, ok: bool, evidence: str) -> Outcome:
    note = ("the quantized scores come from profiles.quality's qmeter-s4.1-loss-rule, whose factors were set "
            "from this §4.1 statement") if r.quality_rows_from_paper() else ""
    return Outcome(ok, evidence, note)


QUALITY_MODELS = (M13, M34, M70)
TASKS = ("chat-s", "chat-r", "code", "summarization")


@check("quality-13b-code-92pct", "§4.1 quality",
       "Quantization can cost up to 92 % of the 13B model's HumanEval pass rate")
def quality_13b_code_92pct(r: Reader) -> Outcome:
    losses = {q: loss(r, M13, q, "code") for q in QUANTIZED}
    q = max(losses, key=losses.get)
    return _quality_outcome(r, quoted(losses[q], 0.92), f"largest 13B code loss {100 * losses[q]:.1f} % ({q})")


@check("quality-preserving-methods", "§4.1 quality",
       "W8A16-INT, W8A8-FP and W8A8KV8-FP preserve quality, though they still lose 5-10 % on some tasks")
def quality_preserving_methods(r: Reader) -> Outcome:
    losses = {(m, q, t): loss(r, m, q, t) for m in QUALITY_MODELS for q in ("w8a16-int", "w8a8-fp", "w8a8kv8-fp")
              for t in TASKS}
    worst = max(losses, key=losses.get)
    ok = 0.05 <= losses[worst] <= 0.10 + 1e-9
    return _quality_outcome(r, ok, f"largest loss {100 * losses[worst]:.1f} % ({' '.join(worst)}) over 13B/34B/70B "
                               "and all tasks")


@check("quality-4bit-22pct", "§4.1 quality",
       "W4A16-INT and W4A8 lose up to 22 % on the larger models (34B, 70B)")
def quality_4bit_22pct(r: Reader) -> Outcome:
    losses = {(m, q, t): loss(r, m, q, t) for m in (M34, M70) for q in ("w4a16-int", "w4a8") for t in TASKS}
    worst = max(losses, key=losses.get)
    return _quality_outcome(r, quoted(losses[worst], 0.22),
                            f"largest loss {100 * losses[worst]:.1f} % ({' '.join(worst)})")


@check("quality-w8a8-int-worst", "§4.1 quality",
       "W8A8-INT suffers the most severe quality degradation")
def quality_w8a8_int_worst(r: Reader) -> Outcome:
    worst_cells, cells, beaten = 0, 0, []
    for m in QUALITY_MODELS:
        for t in TASKS:
            mine = loss(r, m, "w8a8-int", t)
            others = {q: loss(r, m, q, t) for q in QUANTIZED if q != "w8a8-int"}
            top = max(others, key=others.get)
            cells += 1
            if mine >= others[top] - 1e-12:
                worst_cells += 1
            else:
                beaten.append(f"{m} {t}: {top} {100 * others[top]:.0f} % > {100 * mine:.0f} %")
    return _quality_outcome(r, worst_cells == cells, f"W8A8-INT the (joint) worst in {worst_cells}/{cells} "
                            "(model, task) cells" + (f"; not in {', '.join(beaten)}" if beaten else ""))


@check("quality-kv-worsens", "§4.1 quality",
       "KV-cache compression typically worsens quality for weight-only methods, and for W4A8 on 34B")
def quality_kv_worsens(r: Reader) -> Outcome:
    cells = [(m, base, kv, t) for m in QUALITY_MODELS for base, kv in KV_PAIRS[:2] for t in TASKS]
    cells += [(M34, "w4a8", "w4a8kv8", t) for t in TASKS]
    worse = sum(r.quality(m, kv, t) < r.quality(m, base, t) for m, base, kv, t in cells)
    return _quality_outcome(r, worse >= GENERALLY * len(cells),
                            f"KV variant scores lower in {worse}/{len(cells)} (model, method, task) cells")


@check("quality-task-difficulty", "§4.1 quality",
       "Quality losses are smaller on simple QA (chat-S) and summarization than on coding and reasoning (chat-R)")
def quality_task_difficulty(r: Reader) -> Outcome:
    mean = {t: sum(loss(r, m, q, t) for m in QUALITY_MODELS for q in QUANTIZED) / (len(QUALITY_MODELS) * len(QUANTIZED))
            for t in TASKS}
    ok = max(mean["chat-s"], mean["summarization"]) < min(mean["code"], mean["chat-r"])
    return _quality_outcome(r, ok, "mean loss " + ", ".join(f"{t} {100 * v:.1f} %" for t, v in mean.items()))


@check("quality-math-severe", "§4.1 quality",
       "Quality losses are severe on math (chat-M: GSM8K, GPQA)")
def quality_math_severe(r: Reader) -> Outcome:
    if not r.has_task("chat-m"):
        raise NotCheckable("the quality table has no chat-M (math) task")
    a = sum(loss(r, m, q, "chat-m") for m in QUALITY_MODELS for q in QUANTIZED)
    b = sum(loss(r, m, q, "chat-s") for m in QUALITY_MODELS for q in QUANTIZED)
    return _quality_outcome(r, a > b, f"summed loss chat-M {a:.2f} vs chat-S {b:.2f}")


@check("quality-size-sensitivity", "§4.1 quality",
       "Smaller models are more vulnerable: quality loss is widespread on 13B, moderate on 34B chat but severe on "
       "its code, smallest on 70B")
def quality_size_sensitivity(r: Reader) -> Outcome:
    mean = {m: sum(loss(r, m, q, t) for q in QUANTIZED for t in TASKS) / (len(QUANTIZED) * len(TASKS))
            for m in QUALITY_MODELS}
    by34 = {t: sum(loss(r, M34, q, t) for q in QUANTIZED) / len(QUANTIZED) for t in TASKS}
    ok = mean[M13] > mean[M34] > mean[M70] and by34["code"] > max(by34["chat-s"], by34["chat-r"])
    return _quality_outcome(r, ok, "mean loss " + ", ".join(f"{m} {100 * v:.1f} %" for m, v in mean.items())
                            + "; 34B by task " + ", ".join(f"{t} {100 * v:.1f} %" for t, v in by34.items()))


@check("quality-70b-robust", "§4.1 quality",
       "On 70B chat-S stays nearly lossless and code and reasoning lose at most 22 %, except W8A8-INT")
def quality_70b_robust(r: Reader) -> Outcome:
    others = [q for q in QUANTIZED if q != "w8a8-int"]
    chat = {q: loss(r, M70, q, "chat-s") for q in others}
    hard = {(q, t): loss(r, M70, q, t) for q in others for t in ("code", "chat-r")}
    qc = max(chat, key=chat.get)
    qh = max(hard, key=hard.get)
    ok = chat[qc] <= NEGLIGIBLE and hard[qh] <= 0.22 + 1e-9
    return _quality_outcome(r, ok, f"70B chat-S largest loss {100 * chat[qc]:.1f} % ({qc}); code/chat-R largest "
                            f"{100 * hard[qh]:.1f} % ({' '.join(qh)})")


# --- §4.2 trade-offs -------------------------------------------------------------------------------

def _versus(r: Reader, a: ConfigKey, b: ConfigKey, w: str) -> tuple[float, float, float]:
    """(TTFT ratio, TPOT ratio, energy ratio) of a over b at the dataset's mid-range load."""
    (at, ap), (bt, bp) = lat(r, a, w), lat(r, b, w)
    return at / bt, ap / bp, energy(r, a, w) / energy(r, b, w)


def _ratios(x: tuple[float, float, float]) -> str:
    return f"TTFT {x[0]:.2f}x, TPOT {x[1]:.2f}x, energy {x[2]:.2f}x"


@check("70b-quant-vs-34b-fp16", "§4.2 latency vs energy",
       "70B W4A8 and W4A8KV4 (TP4) have latency similar to 34B FP16 with lower energy per token, on chat and code")
def seventy_quant_vs_34b_fp16(r: Reader) -> Outcome:
    parts, ok = [], True
    for q in ("w4a8", "w4a8kv4"):
        for w in ("sharegpt", "humaneval"):
            x = _versus(r, k70(q), k34(FP16), w)
            ok &= x[0] <= 1 + SIMILAR and x[1] <= 1 + SIMILAR and x[2] < 1
            parts.append(f"{q} {w}: {_ratios(x)}")
    return Outcome(ok, "70B TP4 over 34B FP16 TP1: " + "; ".join(parts) + f" (similar: within {SIMILAR:.0%})")


@check("34b-quant-vs-13b-fp16", "§4.2 latency vs energy",
       "34B W4A8KV4 and W8A8-INT on code, and 34B W4A8 on summarization, have lower latency and energy than 13B FP16")
def thirty_four_quant_vs_13b_fp16(r: Reader) -> Outcome:
    parts, ok = [], True
    for q, w in (("w4a8kv4", "humaneval"), ("w8a8-int", "humaneval"), ("w4a8", "newsqa")):
        x = _versus(r, k34(q), k13(FP16), w)
        ok &= max(x) < 1
        parts.append(f"{q} {w}: {_ratios(x)}")
    return Outcome(ok, "34B over 13B FP16: " + "; ".join(parts))


def _cross(r: Reader, big: ConfigKey, w: str) -> tuple[float, float, float, float]:
    """(TTFT ratio, TPOT ratio, energy ratio, quality difference) of a larger quantized model over 13B FP16."""
    x = _versus(r, big, k13(FP16), w)
    return x + (r.quality(big.model, big.quant, TASK_OF[w]) - r.quality(M13, FP16, TASK_OF[w]),)


@check("chat-34b-w4a8-vs-13b-fp16", "§4.2 quality vs latency/energy",
       "On chat, 34B W4A8 has higher quality and lower latency than 13B FP16 with negligible energy overhead")
def chat_34b_w4a8(r: Reader) -> Outcome:
    x = _cross(r, k34("w4a8"), "sharegpt")
    ok = x[3] > 0 and x[0] < 1 and x[2] <= 1 + NEGLIGIBLE
    return Outcome(ok, f"{_ratios(x[:3])}, chat-R quality {x[3]:+.1f} points")


@check("chat-70b-w4a8-vs-13b-fp16", "§4.2 quality vs latency/energy",
       "On chat, 70B W4A8 (TP4) improves energy and quality over 13B FP16 with only a marginal latency increase")
def chat_70b_w4a8(r: Reader) -> Outcome:
    x = _cross(r, k70("w4a8"), "sharegpt")
    ok = x[3] > 0 and x[2] < 1 and x[0] <= 1 + NEGLIGIBLE
    return Outcome(ok, f"{_ratios(x[:3])}, chat-R quality {x[3]:+.1f} points (marginal: within {NEGLIGIBLE:.0%})")


@check("code-34b-vs-13b-fp16", "§4.2 quality vs latency/energy",
       "On code, 34B W4A16-INT, W8A8-INT and W4A8KV4 beat 13B FP16 on quality and latency without extra energy")
def code_34b(r: Reader) -> Outcome:
    parts, ok = [], True
    for q in ("w4a16-int", "w8a8-int", "w4a8kv4"):
        x = _cross(r, k34(q), "humaneval")
        ok &= x[3] > 0 and x[0] < 1 and x[2] <= 1 + NEGLIGIBLE
        parts.append(f"{q}: {_ratios(x[:3])}, code {x[3]:+.1f} points")
    return Outcome(ok, "; ".join(parts))


@check("codellama-code-beats-70b", "§4.2, Finding #1c",
       "CodeLlama-34B outperforms even the 70B models on coding")
def codellama_code(r: Reader) -> Outcome:
    cells = [(q, r.quality(M34, q, "code"), r.quality(M70, q, "code")) for q in QUANTS]
    wins = sum(a > b for _, a, b in cells)
    return Outcome(wins == len(cells), f"34B above 70B in {wins}/{len(cells)} methods (FP16 {cells[0][1]:.1f} vs "
                   f"{cells[0][2]:.1f})")


@check("codellama-summarization-below-13b", "§4.2, Finding #1c",
       "CodeLlama-34B's summarization quality falls slightly below 13B's")
def codellama_summarization(r: Reader) -> Outcome:
    a, b = r.quality(M34, FP16, "summarization"), r.quality(M13, FP16, "summarization")
    note = ("both FP16 summarization scores are assumptions whose order was set from this §4.2 statement"
            if r.quality_rows_from_paper(include_fp16=True) else "")
    return Outcome(b * (1 - NEGLIGIBLE) <= a < b, f"34B {a:.1f} vs 13B {b:.1f}", note)


@check("summarization-no-larger-quantized-wins", "§4.2 quality vs latency/energy",
       "On summarization no quantized larger model improves quality over 13B FP16 without a latency or energy penalty")
def summarization_no_win(r: Reader) -> Outcome:
    wins, total = [], 0
    for big in [k34(q) for q in QUANTIZED] + [k70(q) for q in QUANTIZED]:
        if not r.has(big, "newsqa"):
            continue
        x = _cross(r, big, "newsqa")
        total += 1
        if x[3] > 0 and x[0] <= 1 and x[1] <= 1 and x[2] <= 1:
            wins.append(f"{big.model} {big.quant} ({_ratios(x[:3])}, {x[3]:+.1f} points)")
    if not total:
        raise NotCheckable("no quantized 34B/70B NewsQA curves")
    return Outcome(not wins, f"{len(wins)}/{total} quantized 34B/70B configs beat 13B FP16 on quality, latency "
                   "and energy at once" + (": " + "; ".join(wins[:4]) if wins else ""))


@check("no-method-dominates", "§4.2, Finding #1a",
       "No single quantization method dominates latency, energy and quality")
def no_method_dominates(r: Reader) -> Outcome:
    parts, ok = [], True
    for w in WORKLOADS:
        quants = present(r, QUANTS, w)
        score = {q: (lat(r, k34(q), w)[0], energy(r, k34(q), w), -r.quality(M34, q, TASK_OF[w])) for q in quants}
        dominant = [q for q in quants if all(all(a <= b for a, b in zip(score[q], score[o])) for o in quants)]
        ok &= not dominant
        parts.append(f"{w}: {dominant[0] + ' dominates' if dominant else 'none dominates'} (fastest "
                     f"{min(quants, key=lambda q: score[q][0])}, most efficient {min(quants, key=lambda q: score[q][1])}, "
                     f"best quality {min(quants, key=lambda q: score[q][2])})")
    return Outcome(ok, "; ".join(parts))


@check("larger-quantized-match-smaller-fp16", "§4.2, Finding #1b",
       "Quantized larger models can match or beat smaller FP16 models: better energy at similar latency, or better "
       "quality and latency without a major energy penalty")
def larger_match_smaller(r: Reader) -> Outcome:
    cases, total = [], 0
    for small, bigs in ((k13(FP16), [k34(q) for q in QUANTIZED]), (k34(FP16), [k70(q) for q in QUANTIZED])):
        for big in bigs:
            for w in WORKLOADS:
                if not (r.has(big, w) and r.has(small, w)):
                    continue
                total += 1
                x = _versus(r, big, small, w)
                dq = r.quality(big.model, big.quant, TASK_OF[w]) - r.quality(small.model, FP16, TASK_OF[w])
                if (x[2] < 1 and max(x[:2]) <= 1 + SIMILAR) or (dq > 0 and x[0] < 1 and x[2] <= 1 + NEGLIGIBLE):
                    cases.append(f"{big.model} {big.quant} {w}")
    if not total:
        raise NotCheckable("no larger quantized config beside a smaller FP16 one")
    return Outcome(bool(cases), f"{len(cases)}/{total} (larger quantized config, dataset) cases: "
                   + ", ".join(cases[:8]) + (" ..." if len(cases) > 8 else ""))


@check("few-improve-all-metrics", "§4.2, Finding #1d",
       "Few configurations improve latency, energy and quality at once: quality gains come at a latency or energy cost")
def few_improve_all(r: Reader) -> Outcome:
    all3, total = [], 0
    for w in WORKLOADS:
        for q in present(r, QUANTIZED, w):
            x = _versus(r, k34(q), k34(FP16), w)
            dq = r.quality(M34, q, TASK_OF[w]) - r.quality(M34, FP16, TASK_OF[w])
            total += 1
            if x[0] < 1 and x[2] < 1 and dq >= 0:
                all3.append(f"{q} {w}")
    ok = len(all3) <= FEW * total
    note = ("no quantized score can exceed FP16 under the qmeter-s4.1-loss-rule, so quality decides"
            if r.quality_rows_from_paper() and not all3 else "")
    return Outcome(ok, f"{len(all3)}/{total} 34B (method, dataset) cells beat FP16 on TTFT, energy and quality"
                   + (": " + ", ".join(all3) if all3 else ""), note)
