"""qfleet side by side with Vidur (Microsoft's LLM inference simulator, PyPI ``vidur``) on one scenario:
one Llama-2-7B replica, TP1, the same request lengths (ShareGPT-aligned Azure pairs) and Poisson
arrivals at the same QPS, 2,000 and 20,000 requests.

    python benchmarks/vidur_compare.py [--vidur-python .bench/vidur/bin/python] [--requests 2000,20000]

Vidur runs in its own virtual environment, never as a project dependency:

    python3 -m venv .bench/vidur && .bench/vidur/bin/pip install vidur==0.0.26

Each simulator runs in a child process (so its peak resident memory is its own, from ``getrusage``);
the script prints wall time, peak memory, simulated requests per wall-second and the ratio, and both
simulators' P50/P90 TTFT and TPOT as a cross-check. When Vidur cannot run, it prints the exact command
and the error instead of a ratio.

The two latency models differ by design: Vidur predicts each operator's time (MLP, attention,
all-reduce) with random forests trained on its own GPU profiling of vLLM-style kernels and simulates
the vLLM scheduler (paged KV blocks, preemption); qfleet runs TensorRT-LLM in-flight batching with
the fitted step model of its profile set (``profiles/default``), guaranteed-no-evict admission and no
chunked prefill. Equal latencies are not expected; the same order of magnitude is.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GPU = "h100-80gb"  # qfleet's profile of the GPU Vidur calls "h100"
VIDUR_DEVICE = "h100"
MODEL = "llama2-7b"
VIDUR_MODEL = "meta-llama/Llama-2-7b-hf"
WORKLOAD = "sharegpt"
SEED = 0
GOAL_RATIO = 20.0


def scenario(n: int, qps: float, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poisson arrivals at ``qps`` and (input, output) lengths for ``n`` requests."""
    from traces.workloads import workload_lengths

    rng = np.random.default_rng(seed)
    arrival_s = np.cumsum(rng.exponential(1.0 / qps, n))
    arrival_s -= arrival_s[0]
    inp, out = workload_lengths(WORKLOAD).sample(n, rng)
    return arrival_s, inp, out


def default_qps() -> float:
    """70 % of the replica's saturation QPS for the ShareGPT workload under a 1 s / 0.2 s P90 SLO."""
    from profiles.profile_set import LatencySlo, ProfileSet, default_profile_path
    from profiles.schema import ConfigKey

    profiles = ProfileSet.load(default_profile_path())
    return 0.7 * profiles.saturation_qps(ConfigKey(GPU, MODEL, "fp16", 1), WORKLOAD, LatencySlo(1.0, 0.2))


def percentiles(values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    return {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90))} if values.size else {}


# --- qfleet, in a child process ----------------------------------------------------------------------


def qfleet_worker(n: int, qps: float) -> dict:
    """One replica of Llama-2-7B FP16 TP1, planned once, through the whole cluster path and metrics."""
    from profiles.profile_set import LatencySlo, ProfileSet, default_profile_path
    from profiles.schema import ConfigKey
    from sim.cluster import ClusterSettings, simulate
    from sim.deployment import PoolPlan, TaskSpec
    from sim.metrics import requests_frame, summarize
    from sim.policies import Policy
    from traces.trace import Trace

    key = ConfigKey(GPU, MODEL, "fp16", 1)

    class OneReplica(Policy):
        name = "one_replica"

        def plan_task(self, ctx, task):
            return PoolPlan(task.name, key, 1, ctx.load_qps[task.name], math.nan, math.nan, math.nan)

    arrival_s, inp, out = scenario(n, qps)
    started = time.perf_counter()
    profiles = ProfileSet.load(default_profile_path())
    trace = Trace(arrival_s, inp, out, np.zeros(n, dtype=np.int64), ("chat-s",), f"poisson {qps:g} req/s")
    task = TaskSpec("chat-s", MODEL, WORKLOAD, LatencySlo(1.0, 0.2), 0.0)
    result = simulate(trace, [task], OneReplica(), profiles,
                      ClusterSettings(gpu_types=(GPU,), replan_interval_s=None, drain_limit_s=1e9))
    frame = requests_frame(result)
    summarize(result, frame)
    wall_s = time.perf_counter() - started
    done = frame[frame.status == "finished"]
    return {"wall_s": wall_s, "finished": int(len(done)),
            "ttft_s": percentiles(done.ttft_s.to_numpy()), "tpot_s": percentiles(done.tpot_s.to_numpy())}


# --- running a child and measuring it ------------------------------------------------------------------


def measured(cmd: list[str], cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd``; return it with its wall time and its own peak RSS (MB), measured by a wrapper
    process whose only child it is."""
    wrapper = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
               "p = subprocess.run(sys.argv[1:]); w = time.perf_counter() - t; "
               "print(json.dumps({'rc': p.returncode, 'wall_s': w, "
               "'rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, cwd=cwd)
    stats = json.loads(done.stderr.strip().splitlines()[-1])
    done = subprocess.CompletedProcess(cmd, stats["rc"], done.stdout, "\n".join(done.stderr.splitlines()[:-1]))
    return done, stats["wall_s"], stats["rss_kb"] / 1024.0


def run_qfleet(n: int, qps: float) -> dict:
    done, wall_s, rss_mb = measured([sys.executable, __file__, "--qfleet-worker", str(n), "--qps", repr(qps)])
    if done.returncode != 0:
        raise RuntimeError(f"qfleet worker failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result | {"process_wall_s": wall_s, "rss_mb": rss_mb}


def vidur_command(python: str, lengths_csv: Path, out_dir: Path, n: int, qps: float) -> list[str]:
    return [
        python, "-m", "vidur.main",
        "--replica_config_device", VIDUR_DEVICE,
        "--replica_config_model_name", VIDUR_MODEL,
        "--cluster_config_num_replicas", "1",
        "--replica_config_tensor_parallel_size", "1",
        "--replica_config_num_pipeline_stages", "1",
        "--request_generator_config_type", "synthetic",
        "--synthetic_request_generator_config_num_requests", str(n),
        "--length_generator_config_type", "trace",
        "--trace_request_length_generator_config_trace_file", str(lengths_csv),
        "--trace_request_length_generator_config_max_tokens", "4096",
        "--interval_generator_config_type", "poisson",
        "--poisson_request_interval_generator_config_qps", repr(qps),
        "--replica_scheduler_config_type", "vllm",
        "--metrics_config_output_dir", str(out_dir),
        "--no-metrics_config_write_json_trace",
        "--no-metrics_config_enable_chrome_trace",
        "--no-metrics_config_store_plots",
    ]


def run_vidur(python: str, n: int, qps: float, work: Path) -> dict:
    _, inp, out = scenario(n, qps)
    lengths = work / f"lengths_{n}.csv"
    lengths.write_text("num_prefill_tokens,num_decode_tokens\n" + "".join(f"{a},{b}\n" for a, b in zip(inp, out)))
    out_dir = work / f"vidur_{n}"
    cmd = vidur_command(python, lengths, out_dir, n, qps)
    if not Path(python).exists():
        return {"error": f"no Vidur environment at {python} (create it as the module notes say)", "command": cmd}
    done, wall_s, rss_mb = measured(cmd, cwd=work)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
        error = raised[-1] if raised else (lines[-1] if lines else f"exit {done.returncode}")
        return {"error": error, "command": cmd, "log_tail": lines[-4:]}
    import pandas as pd

    metrics = sorted(out_dir.rglob("request_metrics.csv"))
    if not metrics:
        return {"error": f"Vidur finished but wrote no request_metrics.csv under {out_dir}", "command": cmd}
    frame = pd.read_csv(metrics[-1])
    return {"wall_s": wall_s, "rss_mb": rss_mb, "finished": int(len(frame)),
            "ttft_s": percentiles(frame["prefill_e2e_time"].to_numpy(dtype=float)),
            "tpot_s": percentiles(frame["decode_time_execution_plus_preemption_normalized"].to_numpy(dtype=float))}


def _fmt_pct(p: dict) -> str:
    return f"{p['p50']:.4f} / {p['p90']:.4f}" if p else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vidur-python", default=str(Path(".bench/vidur/bin/python")))
    parser.add_argument("--requests", default="2000,20000")
    parser.add_argument("--qps", type=float, default=None, help="default: 70 %% of qfleet's saturation QPS")
    parser.add_argument("--qfleet-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.qfleet_worker is not None:
        print(json.dumps(qfleet_worker(args.qfleet_worker, args.qps)))
        return
    qps = args.qps or default_qps()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"scenario: 1 x Llama-2-7B, TP1, {GPU} (Vidur: {VIDUR_DEVICE}), {WORKLOAD} lengths, Poisson {qps:.2f} req/s")
    vidur_python = str(Path(args.vidur_python).absolute())
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.requests.split(",")):
            q = run_qfleet(n, qps)
            v = run_vidur(vidur_python, n, qps, Path(tmp))
            print(f"\n--- {n:,} requests ---")
            print(f"{'':<10}{'wall s':>10}{'peak RSS MB':>13}{'sim req/s':>12}   {'TTFT P50 / P90 s':>20}   {'TPOT P50 / P90 s':>20}")
            print(f"{'qfleet':<10}{q['process_wall_s']:>10.2f}{q['rss_mb']:>13,.0f}{n / q['process_wall_s']:>12,.0f}   "
                  f"{_fmt_pct(q['ttft_s']):>20}   {_fmt_pct(q['tpot_s']):>20}")
            print(f"{'':<10}(in-process: simulate + metrics {q['wall_s']:.2f} s)")
            if "error" in v:
                print(f"{'Vidur':<10} did not run: {v['error']}")
                print(f"{'':<10} command: {shlex.join(v['command'])}")
                for line in v.get("log_tail", []):
                    print(f"{'':<10} | {line}")
                continue
            ratio = (n / q["process_wall_s"]) / (n / v["wall_s"])
            print(f"{'Vidur':<10}{v['wall_s']:>10.2f}{v['rss_mb']:>13,.0f}{n / v['wall_s']:>12,.0f}   "
                  f"{_fmt_pct(v['ttft_s']):>20}   {_fmt_pct(v['tpot_s']):>20}")
            print(f"qfleet / Vidur simulated requests per second: {ratio:.1f}x (goal >= {GOAL_RATIO:g}x); "
                  f"memory {v['rss_mb'] / q['rss_mb']:.1f}x less")


if __name__ == "__main__":
    main()
