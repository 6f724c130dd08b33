"""A small hand-made profile set whose right answers can be read off by eye."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from conftest import make_step
from profiles.profile_set import ProfileSet, write_profile_set
from profiles.schema import CURVE_METRICS

SLO = (1.0, 0.2)
# config -> (saturation qps, energy per token J at each curve point qps 1..10 (index q-1)), quality
HAND = {
    ("g1", "m", "fp16", 1): (4.0, [0.30] * 10),
    ("g1", "m", "fp16", 2): (9.0, [0.40, 0.35, 0.30, 0.25, 0.22, 0.20, 0.18, 0.16, 0.15, 0.15]),
    ("g2", "m", "fp16", 1): (6.0, [0.20] * 10),
    ("g1", "m", "w8a16-int", 1): (5.0, [0.26] * 10),
    ("g1", "m", "w8a8kv8-int", 1): (8.0, [0.10] * 10),
    ("g2", "m", "w4a16-int", 1): (7.0, [0.15] * 10),
}
QUALITY = {"fp16": 60.0, "w8a16-int": 59.0, "w4a16-int": 57.0, "w8a8kv8-int": 50.48}


def hand_made_profiles(root: Path) -> ProfileSet:
    step = make_step()
    steps, curves, sats, quality = [], [], [], []
    for (gpu, model, quant, tp), (sat, energy) in HAND.items():
        base = {"gpu": gpu, "model": model, "quant": quant, "tp": tp}
        steps.append({**base, **step.as_dict(), "provenance": "assumption", "source": "test fixture"})
        for q in range(1, 11):
            ok = q <= sat
            row = {m: 0.0 for m in CURVE_METRICS}
            row.update(p90_ttft_s=0.5 if ok else 5.0, p90_tpot_s=0.05, energy_per_output_token_j=energy[q - 1])
            curves.append({**base, "workload": "w", "qps": float(q), **row, "n_requests": 100,
                           "provenance": "assumption", "source": "test fixture"})
        sats.append({**base, "workload": "w", "slo_ttft_s": SLO[0], "slo_tpot_s": SLO[1], "saturation_qps": sat,
                     "energy_per_output_token_j": energy[int(sat) - 1], "probes": 1,
                     "provenance": "assumption", "source": "test fixture"})
    for quant, score in QUALITY.items():
        quality.append({"model": "m", "quant": quant, "task": "chat", "score": score,
                        "provenance": "assumption", "source": "test fixture"})
    tables = {
        "step_models": pd.DataFrame(steps), "curves": pd.DataFrame(curves), "saturation": pd.DataFrame(sats),
        "quality": pd.DataFrame(quality),
        "workloads": pd.DataFrame([{"workload": "w", "mean_input_tokens": 300.0, "mean_output_tokens": 200.0,
                                    "provenance": "assumption", "source": "test fixture"}]),
    }
    return ProfileSet.load(write_profile_set(root / "hand", {"name": "hand"}, tables))


# --- §8.2 DP/TP: energy per token idle_w / (qps x tokens) + active J per token, so a second replica costs idle power
DP_TP_TOKENS = 200.0  # output tokens per request
DP_TP_QPS = (0.5, 1, 2, 4, 6, 8, 10, 12, 15, 20, 25)  # curve points (req/s)
# config -> (idle W, active J per output token, saturation req/s, quality)
DP_TP_HAND = {
    ("g1", "m", "fp16", 1): (100.0, 0.05, 10.0, 60.0),  # A: cheapest up to its saturation
    ("g2", "m", "fp16", 1): (150.0, 0.06, 20.0, 60.0),  # B: one replica covers 10-20 req/s
    ("g1", "m", "w4a16-int", 1): (100.0, 0.01, 10.0, 40.0),  # cheapest of all, but below the quality floor 50
    ("g1", "m", "w8a8-int", 2): (200.0, 0.04, 12.0, 55.0),  # TP2: never cheapest
}


def dp_tp_energy_j(config: tuple, qps: float) -> float:
    idle, active, _, _ = DP_TP_HAND[config]
    return idle / (qps * DP_TP_TOKENS) + active


def dp_tp_profiles(root: Path) -> ProfileSet:
    steps, curves, sats, quality = [], [], [], []
    tag = {"provenance": "assumption", "source": "test fixture"}
    for config, (idle, active, sat, score) in DP_TP_HAND.items():
        gpu, model, quant, tp = config
        base = {"gpu": gpu, "model": model, "quant": quant, "tp": tp}
        steps.append({**base, **make_step(idle_w=idle, active_w=idle + 50.0).as_dict(), **tag})
        for q in DP_TP_QPS:
            tokens = q * DP_TP_TOKENS
            row = {m: 0.0 for m in CURVE_METRICS}
            row.update(p90_ttft_s=0.5 if q <= sat else 5.0, p90_tpot_s=0.05, throughput_qps=q,
                       output_tokens_per_s=tokens, mean_power_w=idle + active * tokens,
                       energy_per_output_token_j=dp_tp_energy_j(config, q))
            curves.append({**base, "workload": "w", "qps": float(q), **row, "n_requests": 100, **tag})
        sats.append({**base, "workload": "w", "slo_ttft_s": SLO[0], "slo_tpot_s": SLO[1], "saturation_qps": sat,
                     "energy_per_output_token_j": dp_tp_energy_j(config, sat), "probes": 1, **tag})
        quality.append({"model": model, "quant": quant, "task": "t", "score": score, **tag})
    tables = {
        "step_models": pd.DataFrame(steps), "curves": pd.DataFrame(curves), "saturation": pd.DataFrame(sats),
        "quality": pd.DataFrame(quality).drop_duplicates(["model", "quant", "task"]),
        "workloads": pd.DataFrame([{"workload": "w", "mean_input_tokens": 300.0, "mean_output_tokens": DP_TP_TOKENS,
                                    **tag}]),
    }
    return ProfileSet.load(write_profile_set(root / "dp_tp", {"name": "dp_tp"}, tables))
