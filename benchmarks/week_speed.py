"""A week-long trace on one machine: the shipped Azure 2023 traces tiled over 7 days under a diurnal rate
(peak 100 req/s), streamed through the four-pool case-study cluster.

    python benchmarks/week_speed.py [--policy slo_energy_optimal] [--days 7] [--out DIR] [overrides ...]

Prints wall time (trace generation, simulation, per-request Parquet written in row groups, summary and
figures all included), requests, simulated requests per wall-second, peak resident memory of the
process (``getrusage``), the most requests held in flight, and the run's headline results.
Targets (issue 6): under 10 minutes and under 4 GB on a 2-core machine.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_module

from sim.main import peak_rss_mb, run

TARGET_WALL_S = 600.0
TARGET_RSS_MB = 4096.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="slo_energy_optimal")
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--out", type=Path, default=None, help="keep the outputs here (default: a temp folder)")
    parser.add_argument("overrides", nargs="*", help="more qfleet-sim overrides, e.g. trace.peak_rate_qps=150")
    args = parser.parse_args()
    overrides = ["trace=azure_week", f"policy={args.policy}", f"trace.duration_s={args.days * 86400.0}",
                 "progress=false", *args.overrides]
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"qfleet-sim {' '.join(overrides)}")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        started = time.perf_counter()
        summary = run(cfg, out)
        wall_s = time.perf_counter() - started
        parquet = out / "requests.parquet"
        size_mb = parquet.stat().st_size / 2**20 if parquet.exists() else 0.0
    rss_mb = peak_rss_mb()
    n = summary["requests"]
    print(f"{'requests':<28}{n:>16,}")
    print(f"{'simulated span (days)':<28}{summary['duration_s'] / 86400:>16.2f}")
    print(f"{'wall time (s)':<28}{wall_s:>16.1f}   target < {TARGET_WALL_S:.0f}: {'ok' if wall_s < TARGET_WALL_S else 'MISSED'}")
    print(f"{'  of which simulate (s)':<28}{summary['wall_s']:>16.1f}")
    print(f"{'requests per wall-second':<28}{n / wall_s:>16,.0f}")
    print(f"{'peak RSS (MB)':<28}{rss_mb:>16,.0f}   target < {TARGET_RSS_MB:.0f}: {'ok' if rss_mb < TARGET_RSS_MB else 'MISSED'}")
    print(f"{'peak requests in flight':<28}{summary['peak_requests_in_flight']:>16,}")
    print(f"{'requests.parquet (MB)':<28}{size_mb:>16,.0f}")
    print(f"{'avg / peak GPUs':<28}{summary['avg_gpus']:>10.1f} / {summary['peak_gpus']}")
    print(f"{'SLO attainment (%)':<28}{100 * summary['slo_attainment']:>16.1f}")
    print(f"{'energy per output token (J)':<28}{summary['energy_per_output_token_j']:>16.3f}")
    print(f"{'reconfigurations':<28}{sum(summary['reconfigurations'].values()):>16,}")
    print(f"percentiles: {summary['percentiles']}")


if __name__ == "__main__":
    main()
