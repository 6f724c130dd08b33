"""Where a simulation spends its time: the default case study under one policy, profiled with cProfile.

    python benchmarks/hotspots.py [--policy slo_energy_optimal] [--duration-s 3600] [--top 15]

The first step of any speed work (issue 6): it prints the functions with the most own time and the share
of the simulation each takes, so a change to the hot path starts from what dominates, not from a guess.
Profiling slows the run down (roughly 2x); the ratios between functions are what to read.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from hydra import compose, initialize_config_module

import sim.main  # noqa: F401  (registers the config schema)
from sim.cluster import simulate
from sim.config import build_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="slo_energy_optimal")
    parser.add_argument("--duration-s", type=float, default=3600.0)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"policy={args.policy}", f"trace.duration_s={args.duration_s}",
                                                       "progress=false"])
    spec = build_run(cfg)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    simulate(spec.trace, spec.tasks, spec.policy, spec.profiles, spec.settings)
    profiler.disable()
    wall_s = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    total_s = sum(row[2] for row in stats.stats.values())  # own time of every function
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[: args.top]
    print(f"{args.policy}: {len(spec.trace):,} requests, {wall_s:.2f} s under the profiler "
          f"({total_s:.2f} s of own time counted)")
    print(f"{'own s':>8}{'share':>8}{'calls':>12}  function")
    for (filename, line, name), (_, calls, own_s, _, _) in rows:
        where = "/".join(filename.rsplit("/", 2)[-2:])  # package/module.py
        print(f"{own_s:>8.2f}{100 * own_s / total_s:>7.1f}%{calls:>12,}  {name} ({where}:{line})")


if __name__ == "__main__":
    main()
