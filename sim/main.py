"""qfleet-sim: the main job (Hydra app). Groups: trace, cluster, policy, router, profiles, slo.

    qfleet-sim                                   # the §8.3 case study under FP16-Only
    qfleet-sim -m policy=fp16_only,quality_first,energy_first
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tqdm import tqdm

from sim.cluster import simulate
from sim.config import ConfigError, SimConf, build_run
from sim.metrics import requests_frame, summarize
from sim.report import comparison_rows, format_comparison, write_run

ConfigStore.instance().store(name="qfleet_schema", node=SimConf)


def run(cfg: DictConfig, out_dir: Path) -> dict:
    """One simulation from a composed config; returns the summary (also written under out_dir)."""
    spec = build_run(cfg)
    label = spec.policy.name
    bar = None
    if cfg.progress:
        bar = tqdm(total=round(spec.trace.duration_s), desc=f"{label}", unit="sim-s", file=sys.stderr,
                   mininterval=1.0, leave=False)

    def progress(now_s: float) -> None:
        bar.update(round(now_s) - bar.n)

    started = time.perf_counter()
    result = simulate(spec.trace, spec.tasks, spec.policy, spec.profiles, spec.settings,
                      progress if bar is not None else None)
    wall_s = time.perf_counter() - started
    if bar is not None:
        bar.close()
    frame = requests_frame(result)
    summary = summarize(result, frame)
    summary["wall_s"] = wall_s
    summary["trace"] = spec.trace.source
    summary["profiles"] = str(spec.profiles.path)
    write_run(out_dir, label, result, frame, summary, cfg.outputs.per_request, cfg.outputs.figures)
    print(f"[{label}] {len(spec.trace):,} requests simulated in {wall_s:.1f} s wall "
          f"({len(spec.trace) / max(wall_s, 1e-9):,.0f} req/s); outputs in {out_dir}")
    return {"policy": label, **summary}


@hydra.main(version_base="1.3", config_path="../experiments/conf", config_name="config")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = run(cfg, out_dir)
    except ConfigError as exc:
        print(f"qfleet-sim: {exc}", file=sys.stderr)
        sys.exit(2)
    if HydraConfig.get().mode.name == "RUN":
        print(format_comparison(comparison_rows([summary])))


if __name__ == "__main__":
    main()
