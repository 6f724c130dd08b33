"""qfleet side by side with Vidur (Microsoft's LLM inference simulator, PyPI ``vidur``) on one scenario:
one Llama-2-7B replica, TP1, the same requests (ShareGPT-aligned Azure length pairs, Poisson arrivals at
the same QPS: Vidur replays qfleet's exact arrival times and lengths), 2,000 and 20,000 requests.

    python benchmarks/vidur_compare.py --vidur-data .bench/vidur-data/a100-llama2-7b \
        [--vidur-python .bench/vidur/bin/python] [--gpu a100] [--requests 2000,20000]

Vidur runs in its own virtual environment, never as a project dependency:

    python3 -m venv .bench/vidur && .bench/vidur/bin/pip install vidur==0.0.26

Offline data. Every PyPI release of Vidur from 0.0.9 on fetches its GPU profiling data at start with
``huggingface_hub.snapshot_download`` (datasets ``project-vajra/dev-staging-meta-llama-llama-3-8b-h100``
and ``project-vajra/dev-staging-h100-dgx`` by default; ``{cache_dir}/profiling_data/{compute,network}/``)
and first tries pre-trained predictions from ``project-vajra/predictions-...``. Without the hub it stops
with ``LocalEntryNotFoundError``. ``--vidur-data DIR`` avoids the network: DIR holds Vidur's own compute
profiling CSVs for Llama-2-7B on one GPU (``mlp.csv`` and ``attention.csv`` with Vidur's column names, as
in microsoft/vidur ``data/profiling/compute/<gpu>/meta-llama/Llama-2-7b-hf/``); the script lays them out
as a pre-populated HuggingFace cache under ``DIR/.vidur_cache`` (with a stub network dataset: Vidur reads
all_reduce/send_recv only for TP > 1 or PP > 1), points Vidur's ``--random_forrest_..._profiling_dataset``
and ``..._cache_dir`` options at it and runs it with ``HF_HUB_OFFLINE=1``. Vidur then trains its random
forests from those CSVs once (minutes; cached in DIR/.vidur_cache) and every later run reuses them. A
warm-up run of 50 requests does that training before anything is timed; its time is printed apart.
Fetching the CSVs is a manual step (they are third-party data: never commit them).

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
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# --gpu: (qfleet's profile, Vidur's device, Vidur's node/network SKU). qfleet has no A100-80GB profile:
# its a100-40gb one is fitted to A100-SXM4-80GB kernel timings (TensorRT-LLM) with 40 GB of KV memory.
GPUS = {"a100": ("a100-40gb", "a100", "a100_dgx"), "h100": ("h100-80gb", "h100", "h100_dgx")}
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


def default_qps(gpu: str) -> float:
    """70 % of the replica's saturation QPS for the ShareGPT workload under a 1 s / 0.2 s P90 SLO."""
    from profiles.profile_set import LatencySlo, ProfileSet, default_profile_path
    from profiles.schema import ConfigKey

    profiles = ProfileSet.load(default_profile_path())
    return 0.7 * profiles.saturation_qps(ConfigKey(gpu, MODEL, "fp16", 1), WORKLOAD, LatencySlo(1.0, 0.2))


def percentiles(values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    return {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90))} if values.size else {}


# --- qfleet, in a child process ----------------------------------------------------------------------


def qfleet_worker(n: int, qps: float, gpu: str) -> dict:
    """One replica of Llama-2-7B FP16 TP1, planned once, through the whole cluster path and metrics."""
    from profiles.profile_set import LatencySlo, ProfileSet, default_profile_path
    from profiles.schema import ConfigKey
    from sim.cluster import ClusterSettings, simulate
    from sim.deployment import PoolPlan, TaskSpec
    from sim.metrics import requests_frame, summarize
    from sim.policies import Policy
    from traces.trace import Trace

    key = ConfigKey(gpu, MODEL, "fp16", 1)

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
                      ClusterSettings(gpu_types=(gpu,), replan_interval_s=None, drain_limit_s=1e9))
    frame = requests_frame(result)
    summarize(result, frame)
    wall_s = time.perf_counter() - started
    done = frame[frame.status == "finished"]
    return {"wall_s": wall_s, "finished": int(len(done)),
            "ttft_s": percentiles(done.ttft_s.to_numpy()), "tpot_s": percentiles(done.tpot_s.to_numpy())}


# --- running a child and measuring it ------------------------------------------------------------------


def measured(cmd: list[str], cwd: Path | None = None,
             env: dict | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd``; return it with its wall time and its own peak RSS (MB), measured by a wrapper
    process whose only child it is."""
    wrapper = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
               "p = subprocess.run(sys.argv[1:]); w = time.perf_counter() - t; "
               "print(json.dumps({'rc': p.returncode, 'wall_s': w, "
               "'rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, cwd=cwd, env=env)
    stats = json.loads(done.stderr.strip().splitlines()[-1])
    done = subprocess.CompletedProcess(cmd, stats["rc"], done.stdout, "\n".join(done.stderr.splitlines()[:-1]))
    return done, stats["wall_s"], stats["rss_kb"] / 1024.0


def run_qfleet(n: int, qps: float, gpu: str) -> dict:
    done, wall_s, rss_mb = measured([sys.executable, __file__, "--qfleet-worker", str(n), "--qps", repr(qps),
                                     "--gpu", next(k for k, v in GPUS.items() if v[0] == gpu)])
    if done.returncode != 0:
        raise RuntimeError(f"qfleet worker failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result | {"process_wall_s": wall_s, "rss_mb": rss_mb}


# --- Vidur, offline, in a child process ----------------------------------------------------------------

VIDUR_TRACE_DATE = "2000-01-01"  # trace replay selects rows by date; any constant works
VIDUR_PREDICTOR = "--random_forrest_execution_time_predictor_config_"
NETWORK_COLUMNS = "size,num_workers,devices_per_node,collective,time_stats.all_reduce.median,time_stats.send_recv.median\n"


def _hf_dataset(cache: Path, repo_id: str, files: dict[str, Path | str], config: dict) -> None:
    """Lay ``files`` out as the HuggingFace cache holds a downloaded dataset ``repo_id`` under ``cache``
    (``datasets--org--name/refs/main`` naming a snapshot folder), so that ``snapshot_download`` with
    ``HF_HUB_OFFLINE=1`` returns that folder instead of asking the hub."""
    import lzma

    org, name = repo_id.split("/")
    base = cache / f"datasets--{org}--{name}"
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = base / "snapshots" / revision
    if snapshot.exists():
        shutil.rmtree(snapshot)
    snapshot.mkdir(parents=True)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(revision)
    (snapshot / "config.json").write_text(json.dumps(config))
    for target, source in files.items():
        data = source.read_bytes() if isinstance(source, Path) else source.encode()
        if isinstance(source, Path) and source.suffix == ".xz":
            data = lzma.decompress(data)
        (snapshot / target).write_bytes(lzma.compress(data))


def prepare_vidur_data(data_dir: Path, device: str, network: str) -> tuple[Path, str, str]:
    """Vidur's offline inputs from ``data_dir``: returns its cache folder and the compute and network
    dataset ids to pass it. The compute id carries a hash of the CSVs, so changed data never reuses
    predictors that Vidur trained and cached from older data."""
    found = {}
    for name in ("mlp", "attention"):
        paths = [data_dir / f"{name}.csv", data_dir / f"{name}.csv.xz"]
        path = next((p for p in paths if p.exists()), None)
        if path is None:
            raise FileNotFoundError(f"{data_dir} has no {name}.csv: fetch Vidur's profiling CSVs (see the README)")
        found[name] = path
    digest = hashlib.sha1(b"".join(p.read_bytes() for p in found.values())).hexdigest()[:10]
    cache = (data_dir / ".vidur_cache").absolute()
    compute_id = f"local/vidur-{device}-llama-2-7b-{digest}"
    network_id = f"local/vidur-{network.replace('_', '-')}-stub"
    _hf_dataset(cache / "profiling_data" / "compute", compute_id,
                {f"{k}.csv.xz": v for k, v in found.items()}, {"model": VIDUR_MODEL, "device_sku": device})
    network_files = {f"{k}.csv.xz": (data_dir / f"{k}.csv" if (data_dir / f"{k}.csv").exists() else NETWORK_COLUMNS)
                     for k in ("all_reduce", "send_recv")}
    _hf_dataset(cache / "profiling_data" / "network", network_id, network_files, {"sku": network})
    return cache, compute_id, network_id


def vidur_command(python: str, trace_csv: Path, out_dir: Path, device: str, network: str,
                  cache: Path | None, compute_id: str | None, network_id: str | None) -> list[str]:
    cmd = [
        python, "-m", "vidur.main",
        "--replica_config_device", device,
        "--replica_config_network_device", network,
        "--replica_config_model_name", VIDUR_MODEL,
        "--cluster_config_num_replicas", "1",
        "--replica_config_tensor_parallel_size", "1",
        "--replica_config_num_pipeline_stages", "1",
        "--request_generator_config_type", "trace_replay",
        "--trace_request_generator_config_trace_file", str(trace_csv),
        "--trace_request_generator_config_date", VIDUR_TRACE_DATE,
        "--trace_request_generator_config_prefill_scale_factor", "1",
        "--trace_request_generator_config_decode_scale_factor", "1",
        "--trace_request_generator_config_time_scale_factor", "1",
        "--trace_request_generator_config_max_tokens", "4096",
        "--replica_scheduler_config_type", "vllm",
        "--metrics_config_output_dir", str(out_dir),
        "--no-metrics_config_write_json_trace",
        "--no-metrics_config_enable_chrome_trace",
        "--no-metrics_config_store_plots",
        # Llama-2-7B's context is 4,096 tokens: predict up to it (0.0.26 defaults to 2M tokens at a 256-token
        # KV granularity, which takes far longer to train and load); 64 is the original Vidur's granularity.
        VIDUR_PREDICTOR + "prediction_max_tokens_per_request", "4096",
        VIDUR_PREDICTOR + "kv_cache_prediction_granularity", "64",
    ]
    if cache is not None:
        cmd += [VIDUR_PREDICTOR + "model_profiling_dataset", compute_id,
                VIDUR_PREDICTOR + "network_profiling_dataset", network_id,
                VIDUR_PREDICTOR + "cache_dir", str(cache)]
    return cmd


def write_vidur_trace(path: Path, arrival_s: np.ndarray, inp: np.ndarray, out: np.ndarray) -> None:
    """qfleet's exact requests in the CSV layout Vidur's trace_replay generator reads."""
    path.write_text("Date,Time,PromptTokenCount,CompletionTokenCount\n" + "".join(
        f"{VIDUR_TRACE_DATE},{t!r},{a},{b}\n" for t, a, b in zip(arrival_s.tolist(), inp.tolist(), out.tolist())))


def run_vidur(python: str, n: int, qps: float, work: Path, gpu: tuple[str, str, str],
              data: tuple[Path, str, str] | None) -> dict:
    arrival_s, inp, out = scenario(n, qps)
    trace = work / f"trace_{n}.csv"
    write_vidur_trace(trace, arrival_s, inp, out)
    out_dir = work / f"vidur_{n}"
    cmd = vidur_command(python, trace, out_dir, gpu[1], gpu[2], *(data or (None, None, None)))
    if not Path(python).exists():
        return {"error": f"no Vidur environment at {python} (create it as the module notes say)", "command": cmd}
    env = os.environ | {"HF_HUB_OFFLINE": "1"} if data is not None else None
    done, wall_s, rss_mb = measured(cmd, cwd=work, env=env)
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
    return {"wall_s": wall_s, "rss_mb": rss_mb, "finished": int(len(frame)), "command": cmd,
            "restarts": int(frame["request_num_restarts"].sum()) if "request_num_restarts" in frame else 0,
            "ttft_s": percentiles(frame["prefill_e2e_time"].to_numpy(dtype=float)),
            "tpot_s": percentiles(frame["decode_time_execution_plus_preemption_normalized"].to_numpy(dtype=float))}


def _fmt_pct(p: dict) -> str:
    return f"{p['p50']:.4f} / {p['p90']:.4f}" if p else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vidur-python", default=str(Path(".bench/vidur/bin/python")))
    parser.add_argument("--vidur-data", type=Path, default=None,
                        help="folder with Vidur's mlp.csv and attention.csv for Llama-2-7B on --gpu; "
                             "without it Vidur tries the HuggingFace hub")
    parser.add_argument("--gpu", choices=sorted(GPUS), default="a100",
                        help="a100: qfleet a100-40gb vs Vidur a100; h100: qfleet h100-80gb vs Vidur h100")
    parser.add_argument("--requests", default="2000,20000")
    parser.add_argument("--qps", type=float, default=None, help="default: 70 %% of qfleet's saturation QPS")
    parser.add_argument("--qfleet-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    gpu = GPUS[args.gpu]
    if args.qfleet_worker is not None:
        print(json.dumps(qfleet_worker(args.qfleet_worker, args.qps, gpu[0])))
        return
    qps = args.qps or default_qps(gpu[0])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"scenario: 1 x Llama-2-7B, TP1, qfleet {gpu[0]} / Vidur {gpu[1]}, {WORKLOAD} lengths, "
          f"Poisson {qps:.2f} req/s (Vidur replays the same arrivals and lengths)")
    vidur_python = str(Path(args.vidur_python).absolute())
    data = None
    if args.vidur_data is not None:
        named = [g for g in GPUS if g in args.vidur_data.name.lower()]
        if named and args.gpu not in named:
            parser.error(f"{args.vidur_data} looks like {named[0]} data; pass --gpu {named[0]}")
        data = prepare_vidur_data(args.vidur_data.absolute(), gpu[1], gpu[2])
        print(f"Vidur data: {args.vidur_data} -> offline HuggingFace cache {data[0]} ({data[1]})")
    with tempfile.TemporaryDirectory() as tmp:
        if data is not None and Path(vidur_python).exists():
            warm = run_vidur(vidur_python, 50, qps, Path(tmp), gpu, data)
            if "error" in warm:
                print(f"Vidur warm-up failed: {warm['error']}")
            else:
                print(f"Vidur warm-up (50 requests; trains and caches its predictors on a cold cache): "
                      f"{warm['wall_s']:.1f} s")
        for n in (int(x) for x in args.requests.split(",")):
            q = run_qfleet(n, qps, gpu[0])
            v = run_vidur(vidur_python, n, qps, Path(tmp), gpu, data)
            print(f"\n--- {n:,} requests ---")
            print(f"{'':<10}{'wall s':>10}{'peak RSS MB':>13}{'sim req/s':>12}   {'TTFT P50 / P90 s':>20}   {'TPOT P50 / P90 s':>20}")
            print(f"{'qfleet':<10}{q['process_wall_s']:>10.2f}{q['rss_mb']:>13,.0f}{n / q['process_wall_s']:>12,.0f}   "
                  f"{_fmt_pct(q['ttft_s']):>20}   {_fmt_pct(q['tpot_s']):>20}")
            print(f"{'':<10}(in-process: simulate + metrics {q['wall_s']:.2f} s; {q['finished']:,} finished)")
            if "error" in v:
                print(f"{'Vidur':<10} did not run: {v['error']}")
                print(f"{'':<10} command: {shlex.join(v['command'])}")
                for line in v.get("log_tail", []):
                    print(f"{'':<10} | {line}")
                continue
            ratio = (n / q["process_wall_s"]) / (n / v["wall_s"])
            print(f"{'Vidur':<10}{v['wall_s']:>10.2f}{v['rss_mb']:>13,.0f}{n / v['wall_s']:>12,.0f}   "
                  f"{_fmt_pct(v['ttft_s']):>20}   {_fmt_pct(v['tpot_s']):>20}")
            print(f"{'':<10}({v['finished']:,} finished, {v['restarts']:,} preemption restarts)")
            print(f"qfleet / Vidur simulated requests per second: {ratio:.1f}x (goal >= {GOAL_RATIO:g}x); "
                  f"peak memory {v['rss_mb'] / q['rss_mb']:.1f}x less")


if __name__ == "__main__":
    main()
