"""What-if: the same Azure conversation trace with and without prefix caching (a simulated what-if, not a
measurement: the shipped traces record no prefixes, so the hit model ``trace.shared_prefix`` assumes them).

    python experiments/prefix_cache_whatif.py [--rate-qps 4] [--duration-s 1800] [--fraction 0.5] [--groups 8]
                                              [--tokens 1024] [--block-tokens 16]

Two parts. (1) The fleet: ``qfleet-sim trace=azure_conv`` with one chat-S pool under SLO-Energy-Optimal, the
cache off and on (the same trace, the same prefixes, the same plan: the policy sizes pools from profile
saturation points measured without a cache). (2) Capacity: the saturation QPS of one replica of the config the
policy chose, found with the qMeter search (``calibrate.search.find_saturation``) on the simulated instance,
Azure-conv lengths with the same hit model, cache off and on; DP = ceil(load / saturation) says what the
cache would save once the planner knew about it.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_module

import sim.main  # noqa: F401  (registers the config schema)
from calibrate.probe_stats import probe_result
from calibrate.search import ProbeResult, SearchSettings, find_saturation
from profiles.profile_set import LatencySlo
from profiles.schema import ConfigKey
from profiles.step_model import StepModel
from sim.config import build_run
from sim.instance import replay_single_instance
from sim.main import run
from sim.prefix_cache import PrefixCacheSettings
from sim.requests import RequestTable
from traces.azure import load_shipped_trace
from traces.shared_prefix import SharedPrefixSpec, add_shared_prefixes
from traces.trace import Trace


def fleet_overrides(args, cache_on: bool) -> list[str]:
    return [
        "trace=azure_conv", f"cluster={args.cluster}", f"trace.target_rate_qps={args.rate_qps}", f"trace.duration_s={args.duration_s}",
        "cluster.pools={chat-s:{model:llama2-13b,workload:sharegpt}}", "policy=slo_energy_optimal",
        f"trace.shared_prefix.fraction={args.fraction}", f"trace.shared_prefix.groups={args.groups}",
        f"trace.shared_prefix.tokens={args.tokens}", f"cluster.prefix_cache.enabled={str(cache_on).lower()}",
        f"cluster.prefix_cache.block_tokens={args.block_tokens}", "progress=false", "outputs.figures=false",
    ]


def replica_probe(step: StepModel, spec: SharedPrefixSpec, cache: PrefixCacheSettings | None, burst_s: float = 300.0,
                  max_requests: int = 4000):
    """A probe like ``calibrate.sim_probe.SimulatedProbe`` (common random numbers across loads), on Azure-conv
    lengths with shared prefixes, against one simulated instance with or without the cache."""
    conv = load_shipped_trace("conv")
    fits = (conv.input_tokens <= step.max_num_tokens) & (conv.input_tokens + conv.output_tokens <= step.kv_capacity_tokens)
    inp = conv.input_tokens[fits][:max_requests]
    out = conv.output_tokens[fits][:max_requests]
    gaps = np.random.default_rng(0).exponential(1.0, max_requests)
    base = Trace(np.cumsum(gaps), inp, out, np.zeros(max_requests, dtype=np.int64), ("chat-s",), "azure-conv")
    prefixed = add_shared_prefixes(base, spec, seed=0)

    def probe(qps: float) -> ProbeResult:
        n = int(min(max(qps * burst_s, 200), max_requests))
        arrival = prefixed.arrival_s[:n] / qps
        trace = Trace(arrival, inp[:n], out[:n], prefixed.task[:n], ("chat-s",), "probe",
                      prefixed.prefix_id[:n], prefixed.prefix_tokens[:n])
        table = RequestTable(trace)
        instance = replay_single_instance(step, table, cache)
        end = max(f for f in table.finish_s if f == f)
        busy_j, idle_j = instance.energy_j(end)
        return probe_result(qps, arrival, np.array(table.first_token_s), np.array(table.finish_s), out[:n],
                            busy_j + idle_j - step.idle_w * float(arrival[0]))

    return probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate-qps", type=float, default=4.0)
    parser.add_argument("--duration-s", type=float, default=1800.0)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--block-tokens", type=int, default=16)
    parser.add_argument("--cluster", default="case_study", help="cluster group option (GPU types)")
    args = parser.parse_args()

    print("(1) fleet: qfleet-sim " + " ".join(fleet_overrides(args, True)))
    print(f"{'cache':<6}{'P50 TTFT s':>11}{'P90 TTFT s':>11}{'P90 TPOT s':>11}{'avg GPUs':>9}{'J/token':>9}"
          f"{'latency SLO %':>14}{'hit rate':>9}{'cached %':>9}")
    summaries = {}
    for cache_on in (False, True):
        with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=fleet_overrides(args, cache_on))
        with tempfile.TemporaryDirectory() as tmp:
            summary = run(cfg, Path(tmp))
        summaries[cache_on] = summary
        task = summary["tasks"][0]
        hit = f"{task['prefix_hit_rate']:.2f}" if cache_on else "-"
        cached = f"{100 * task['cached_token_fraction']:.1f}" if cache_on else "-"
        print(f"{'on' if cache_on else 'off':<6}{task['p50_ttft_s']:>11.3f}{task['p90_ttft_s']:>11.3f}"
              f"{task['p90_tpot_s']:>11.4f}{summary['avg_gpus']:>9.2f}{summary['energy_per_output_token_j']:>9.4f}"
              f"{100 * summary['latency_slo_attainment']:>14.1f}{hit:>9}{cached:>9}")

    label = summaries[True]["tasks"][0]["configs"].split(";")[0]
    gpu, model, quant, tp = label.split("/")
    key = ConfigKey(gpu, model, quant, int(tp.removeprefix("tp")))
    spec = build_run(cfg)
    step = spec.profiles.step(key)
    slo = LatencySlo(1.0, 0.2)
    shared = SharedPrefixSpec(args.fraction, args.groups, args.tokens)
    print(f"\n(2) one replica of {label}, Azure-conv lengths, SLO P90 TTFT {slo.ttft_s} s / TPOT {slo.tpot_s} s")
    settings = SearchSettings(start_qps=1.0, rel_tol=0.02)
    for cache in (None, PrefixCacheSettings(args.block_tokens)):
        result = find_saturation(replica_probe(step, shared, cache), slo, settings)
        sat = result.saturation_qps
        dp = math.ceil(args.rate_qps / sat) if sat > 0 else float("nan")
        p = result.passing
        print(f"cache {'on ' if cache else 'off'}: saturation {sat:.3g} req/s ({len(result.probes)} probes), "
              f"energy/token there {p.energy_per_output_token_j:.4f} J; DP for {args.rate_qps:g} req/s = {dp} "
              f"({dp * key.tp} GPUs)")


if __name__ == "__main__":
    main()
