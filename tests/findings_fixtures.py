"""Small synthetic profile sets for the findings checks: each config's curve is flat up to its saturation.

A ``Flat`` curve has the same P90 TTFT, TPOT and energy per token at every load up to its saturation and
twenty times the latency beyond it, so a check's verdict on such a set can be read off by eye.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from conftest import make_step
from profiles.profile_set import ProfileSet, write_profile_set
from profiles.schema import CURVE_METRICS, ConfigKey

SLOS = {"sharegpt": (1.0, 0.2), "humaneval": (0.15, 0.2), "newsqa": (5.0, 0.2)}
GRID = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.25)  # curve points as fractions of the saturation
MEAN_OUTPUT_TOKENS = 200.0


@dataclass(frozen=True, slots=True)
class Flat:
    saturation_qps: float
    ttft_s: float = 0.05
    tpot_s: float = 0.02
    energy_j: float = 0.5


def synthetic_profiles(root: Path, curves: dict[tuple[ConfigKey, str], Flat],
                       quality: dict[tuple[str, str, str], float] | None = None, name: str = "synthetic") -> ProfileSet:
    step = make_step()
    tag = {"provenance": "assumption", "source": "test fixture"}
    keys = sorted({k for k, _ in curves})
    steps = [{"gpu": k.gpu, "model": k.model, "quant": k.quant, "tp": k.tp, **step.as_dict(), **tag} for k in keys]
    rows, sats = [], []
    for (k, workload), flat in curves.items():
        base = {"gpu": k.gpu, "model": k.model, "quant": k.quant, "tp": k.tp, "workload": workload}
        for fraction in GRID:
            qps = fraction * flat.saturation_qps
            slow = 1.0 if fraction <= 1.0 else 20.0
            tokens = qps * MEAN_OUTPUT_TOKENS
            row = {m: 0.0 for m in CURVE_METRICS}
            row.update(p90_ttft_s=flat.ttft_s * slow, p90_tpot_s=flat.tpot_s * slow, output_tokens_per_s=tokens,
                       energy_per_output_token_j=flat.energy_j, mean_power_w=flat.energy_j * tokens,
                       throughput_qps=qps)
            rows.append({**base, "qps": qps, **row, "n_requests": 100, **tag})
        slo = SLOS[workload]
        sats.append({**base, "slo_ttft_s": slo[0], "slo_tpot_s": slo[1], "saturation_qps": flat.saturation_qps,
                     "energy_per_output_token_j": flat.energy_j, "probes": 1, **tag})
    quality = quality or {("m", "fp16", "chat"): 50.0}
    tables = {
        "step_models": pd.DataFrame(steps), "curves": pd.DataFrame(rows), "saturation": pd.DataFrame(sats),
        "quality": pd.DataFrame([{"model": m, "quant": q, "task": t, "score": s, **tag}
                                 for (m, q, t), s in quality.items()]),
        "workloads": pd.DataFrame([{"workload": w, "mean_input_tokens": 300.0, "mean_output_tokens": MEAN_OUTPUT_TOKENS,
                                    **tag} for w in SLOS]),
    }
    return ProfileSet.load(write_profile_set(root / name, {"name": name}, tables))
