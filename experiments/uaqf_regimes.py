"""UAQF ranking shifts between deployment regimes (utility-aware paper §4.5) on qfleet's profiles.

    python -m experiments.uaqf_regimes [--profiles PATH] [--out FILE.md]

Two tables, each ranking configs by U = λs·S̃ − λq·QL̃ − λp·SP̃ (terms and their derivation: ``sim.uaqf``):

1. The paper's own setting, as near as our profiles come: Llama-2-7B and 13B on one A100-80GB (TP1, the paper's
   GPU), the paper's methods mapped to ours - FP16; RTN-8bit -> W8A16-INT; RTN-4bit, GPTQ, AWQ -> W4A16-INT (our
   profiles do not tell these three apart); SmoothQuant, ZeroQuant -> W8A8-INT - at a light load (1 req/s,
   the paper measured batch 1), ShareGPT lengths, chat-S SLO, no quality floor (the paper has none); ranked, as
   the paper does (its Step 4), over the quantized methods only, FP16 being the baseline.
2. The §8.3 case study (four tasks at their share of 120 req/s, A100-40GB + H100 pools, quality floors on):
   what the ``uaqf`` policy deploys per regime.

Regimes: latency-critical (0.6, 0.2, 0.2) is the paper's stated setting; the paper names an accuracy-critical
("β-dominant") regime without values - ours is (0.2, 0.6, 0.2); its third regime rewards memory reduction, which
§3.1's formula has no term for, so we weight §3.1's third term, stability, (0.2, 0.2, 0.6); and a balanced one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from profiles.profile_set import LatencySlo, ProfileSet, default_profile_path
from profiles.schema import ConfigKey
from sim.deployment import PlanContext, TaskSpec
from sim.planning import CachedProfiles
from sim.uaqf import STABILITY_METHOD, SPEEDUP_METHOD, UtilityAware, score, utility_terms
from traces.case_study import DEFAULT_MIX

REGIMES = (
    ("latency-critical (paper)", (0.6, 0.2, 0.2)),
    ("accuracy-critical", (0.2, 0.6, 0.2)),
    ("stability-critical", (0.2, 0.2, 0.6)),
    ("balanced", (1 / 3, 1 / 3, 1 / 3)),
)
PAPER_METHODS = {"fp16": "FP16", "w8a16-int": "RTN-8bit", "w4a16-int": "RTN-4bit/GPTQ/AWQ",
                 "w8a8-int": "SmoothQuant/ZeroQuant"}
CASE_STUDY = {  # task: (model, workload, TTFT s, TPOT s, quality floor) - experiments/conf/{cluster,slo}/case_study
    "chat-s": ("llama2-13b", "sharegpt", 1.0, 0.2, 55.0),
    "chat-r": ("llama2-70b", "sharegpt", 3.0, 0.2, 50.0),
    "code": ("codellama-34b", "humaneval", 0.15, 0.2, 35.0),
    "summarization": ("llama2-13b", "newsqa", 5.0, 0.2, 16.0),
}


def paper_setting(profiles) -> list[str]:
    lines = ["| model | method (ours) | S (x FP16) | QL (points) | SP (derived) | "
             + " | ".join(f"rank {name}" for name, _ in REGIMES) + " |",
             "|---" * (4 + len(REGIMES) + 1) + "|"]
    for model in ("llama2-7b", "llama2-13b"):
        task = TaskSpec("chat-s", model, "sharegpt", LatencySlo(1.0, 0.2), 0.0)
        keys = [ConfigKey("a100-80gb", model, q, 1) for q in PAPER_METHODS]
        terms = utility_terms(profiles, task, ("a100-80gb",), 1.0, 0.9, keys)
        quantized = [t for t in terms if t.key.quant != "fp16"]  # the paper ranks q in Q \ {fp16} (its Step 4)
        ranks = {}
        for name, weights in REGIMES:
            ranks[name] = {s.terms.key.quant: (i + 1, s.utility) for i, s in enumerate(score(quantized, *weights))}
        for t in terms:
            if t.key.quant == "fp16":
                cells = ["baseline"] * len(REGIMES)
            else:
                cells = [f"{ranks[name][t.key.quant][0]} ({ranks[name][t.key.quant][1]:+.2f})" for name, _ in REGIMES]
            lines.append(f"| {model} | {PAPER_METHODS[t.key.quant]} ({t.key.quant}) | {t.speedup:.2f} | "
                         f"{t.quality_loss:.2f} | {t.stability_penalty:.3f} | " + " | ".join(cells) + " |")
    return lines


def case_study(profiles) -> list[str]:
    mix = dict(DEFAULT_MIX)
    total = sum(mix.values())
    gpus = ("a100-40gb", "h100-80gb")
    lines = ["| task (load) | " + " | ".join(name for name, _ in REGIMES) + " |", "|---" * (len(REGIMES) + 1) + "|"]
    for name, (model, workload, ttft, tpot, floor) in CASE_STUDY.items():
        load = 120.0 * mix[name] / total
        task = TaskSpec(name, model, workload, LatencySlo(ttft, tpot), floor)
        ctx = PlanContext((task,), {name: load}, profiles, gpus, 0.0)
        cells = []
        for _, weights in REGIMES:
            best = UtilityAware(*weights).rank(ctx, task)[0]
            t = best.terms
            cells.append(f"{t.key.gpu} {t.key.quant} TP{t.key.tp} x{t.dp} (S {t.speedup:.2f}, QL {t.quality_loss:.2f}, "
                         f"SP {t.stability_penalty:.3f})")
        lines.append(f"| {name} ({load:.1f} req/s) | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default=str(default_profile_path()))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    profiles = CachedProfiles(ProfileSet.load(Path(args.profiles)))
    text = [f"Profiles: {args.profiles}", f"S: {SPEEDUP_METHOD}", f"SP: {STABILITY_METHOD}",
            "Weights (λs, λq, λp): " + "; ".join(f"{n} {tuple(round(w, 2) for w in ws)}" for n, ws in REGIMES), "",
            "1. Paper setting: A100-80GB, TP1, ShareGPT at 1 req/s, chat-S SLO, no quality floor; rank (U) among the "
            "quantized methods", "",
            *paper_setting(profiles), "",
            "2. Case study (uaqf policy, quality floors on): the config deployed per regime", "",
            *case_study(profiles)]
    out = "\n".join(text) + "\n"
    print(out)
    if args.out:
        Path(args.out).write_text(out)


if __name__ == "__main__":
    main()
