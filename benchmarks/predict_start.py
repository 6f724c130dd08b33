"""Probes per saturation point with and without a predicted start, on the stand-in engine (a CPU-only server).

    python benchmarks/predict_start.py [--out DIR] [--rel-tol 0.02]

Runs ``qfleet-calibrate`` twice on the same plan: ``search.start = fixed`` (start at 1 req/s, double until the
SLO breaks, bisect) and ``search.start = predicted`` (the fit runs first; each search starts at the saturation that
the same search finds on the simulated instance built from the fitted step model, ``calibrate.predict``, and
steps by 5 % before widening). Both plans measure the same fit runs and sweep; only the search differs. Prints,
per workload and SLO, the probes and saturation of each run, the prediction, and the "true" saturation (the
fixed-start search on the simulated instance with the stand-in's own step model); then totals and wall times.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from calibrate.arrivals import BurstPlan
from calibrate.db import ResultsDB
from calibrate.main import run as calibrate_run
from calibrate.plan import plan_from_mapping
from calibrate.search import SearchSettings, find_saturation
from calibrate.sim_probe import SimulatedProbe
from profiles.profile_set import LatencySlo
from profiles.step_model import StepModel

# the stand-in's step model of tests/test_calibrate_run.py: decode iterations of 12-25 ms, kink at 150 tokens
STEP = dict(overhead_s=0.003, per_seq_s=0.0, per_token_s=5e-5, weights_s=0.009, flop_token_s=6e-5,
            per_kv_token_s=5e-7, per_prefill_token_s=3e-5, prefill_attn_s=1e-8, idle_w=0.0, active_w=0.0,
            flop_token_j=0.0, per_kv_token_j=0.0, weights_j=0.0, max_power_w=0.0, kv_capacity_tokens=32000,
            max_batch=32, max_num_tokens=2048)
WORKLOADS = ("fixed-128-24", "random-256-64")
SLOS = ({"ttft_s": 0.25, "tpot_s": 0.05}, {"ttft_s": 1.0, "tpot_s": 0.08})
BURST = {"burst_s": 3.0, "min_requests": 40, "max_requests": 300, "seed": 0}
# "a few fixed-concurrency runs": 5 prefill lengths, 3 batch sizes at 2 prompt lengths
FIT = {"prefill_input_tokens": [16, 64, 256, 1024, 2040], "prefill_output_tokens": 4, "prefill_requests": 3,
       "decode_concurrency": [1, 8, 32], "decode_input_tokens": [64, 512], "decode_output_tokens": 32,
       "decode_rounds": 2}


def plan(tmp: Path, start: str, rel_tol: float) -> dict:
    step_path = tmp / "standin-step.json"
    step_path.write_text(json.dumps(STEP))
    return {
        "name": f"predict-start-{start}", "results_db": str(tmp / f"results-{start}.sqlite"),
        "export_path": str(tmp / f"profile-{start}"), "work_dir": str(tmp / f"work-{start}"),
        "engine": {"kind": "openai", "version": "qfleet-standin (benchmark)",
                   "launch": ["{python}", "-m", "calibrate.standin", "--host", "{host}", "--port", "{port}",
                              "--step-model", "{checkpoint}", "--model-name", "{model}"],
                   "request_model": "{model}", "request_extras": {"ignore_eos": True, "min_tokens": "{output_tokens}"},
                   "capacity_path": "/standin/config", "ready_timeout_s": 30, "token_timeout_s": 4,
                   "liveness_interval_s": 0.25, "warmup_requests": 1},
        "entries": [{"name": "standin-fp16", "model": "standin-m", "checkpoint": str(step_path), "quant": "fp16",
                     "tp": 1, "gpu": "standin-cpu", "workloads": list(WORKLOADS)}],
        "slos": list(SLOS), "burst": BURST, "sweep_fractions": [1.0], "fit": FIT,
        "search": {"start_qps": 1.0, "rel_tol": rel_tol, "min_qps": 0.05, "max_qps": 1000.0, "start": start},
        "energy": {"enabled": False}, "prefix_probe": {"enabled": False},
    }


def true_saturation(workload: str, slo: dict, rel_tol: float) -> float:
    b = BURST
    bp = BurstPlan.for_workload(workload, b["seed"], b["burst_s"], b["min_requests"], b["max_requests"], 4096)
    probe = SimulatedProbe(StepModel(**STEP), bp.input_tokens, bp.output_tokens, seed=b["seed"], burst_s=b["burst_s"],
                           min_requests=b["min_requests"], max_requests=b["max_requests"])
    return find_saturation(probe, LatencySlo(**slo), SearchSettings(start_qps=1.0, rel_tol=rel_tol,
                                                                    min_qps=0.05)).saturation_qps


def calibrate(tmp: Path, start: str, rel_tol: float) -> tuple[dict, float, int]:
    data = plan(tmp, start, rel_tol)
    plan_file = tmp / f"plan-{start}.json"
    plan_file.write_text(json.dumps(data))
    cfg = OmegaConf.create({"plan_file": str(plan_file), "dry_run": False, "export": True, "plan": {}})
    lines: list[str] = []
    t0 = time.perf_counter()
    code = calibrate_run(cfg, log=lines.append, command=f"qfleet-calibrate plan_file={plan_file}")
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"qfleet-calibrate ({start}) exited {code}:\n" + "\n".join(lines[-20:]))
    p = plan_from_mapping(data)
    with ResultsDB(p.results_db, p.name) as db:
        sat = {(s["workload"], s["slo_ttft_s"], s["slo_tpot_s"]): s for s in db.saturations("standin-fp16")}
        info = db.info("standin-fp16")
        points = len(db.points(status="done"))
    for key, s in sat.items():
        pred = info.get(f"predicted_saturation/{key[0]}/{key[1]:g}/{key[2]:g}")
        s["predicted_qps"] = pred["saturation_qps"] if pred else None
    return sat, wall, points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="keep the databases here (default: a temp folder)")
    parser.add_argument("--rel-tol", type=float, default=0.02)
    args = parser.parse_args()
    tmp = args.out or Path(tempfile.mkdtemp(prefix="qfleet-predict-start-"))
    tmp.mkdir(parents=True, exist_ok=True)
    fixed, wall_fixed, points_fixed = calibrate(tmp, "fixed", args.rel_tol)
    predicted, wall_pred, points_pred = calibrate(tmp, "predicted", args.rel_tol)
    print(f"stand-in engine, workloads {', '.join(WORKLOADS)}, {len(SLOS)} SLOs, bursts of {BURST['burst_s']:g} s, "
          f"rel_tol {args.rel_tol}; databases in {tmp}")
    print("")
    print("| workload | SLO P90 TTFT / TPOT s | true req/s | fixed start: probes | saturation | predicted start: "
          "prediction | probes | saturation |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    total_f = total_p = 0
    for key in sorted(fixed):
        f, p = fixed[key], predicted[key]
        truth = true_saturation(key[0], {"ttft_s": key[1], "tpot_s": key[2]}, args.rel_tol)
        total_f += f["probes"]
        total_p += p["probes"]
        pred = f"{p['predicted_qps']:.2f}" if p["predicted_qps"] is not None else "-"
        print(f"| {key[0]} | {key[1]:g} / {key[2]:g} | {truth:.2f} | {f['probes']} | {f['saturation_qps']:.2f} | "
              f"{pred} | {p['probes']} | {p['saturation_qps']:.2f} |")
    n = len(fixed)
    print("")
    print(f"search probes: fixed start {total_f} ({total_f / n:.1f} per point), predicted start {total_p} "
          f"({total_p / n:.1f} per point): {100 * (1 - total_p / total_f):.0f} % fewer")
    print(f"points measured (search + fit runs + sweep): fixed {points_fixed}, predicted {points_pred}")
    print(f"wall: fixed {wall_fixed:.0f} s, predicted {wall_pred:.0f} s")


if __name__ == "__main__":
    main()
