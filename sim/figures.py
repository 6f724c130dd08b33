"""The plots people look at after a run: GPUs over time per pool, latency CDFs per task, and energy
per token per policy across a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sim.cluster import RunResult, gpus_over_time  # noqa: E402
from sim.deployment import TaskSpec  # noqa: E402


def _save(fig, path: Path) -> Path:
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_gpus_over_time(result: RunResult, path: Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    total_t, total_g = gpus_over_time(result)
    for spec in result.tasks:
        t, g = gpus_over_time(result, spec.name)
        ax.step(t / 60.0, g, where="post", label=spec.name)
    ax.step(total_t / 60.0, total_g, where="post", color="black", linewidth=2, label="cluster")
    ax.set_xlabel("time (min)")
    ax.set_ylabel("GPUs allocated")
    ax.set_title(title or "GPUs over time per pool")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


CDF_POINTS = 1000  # a CDF drawn through this many quantiles looks the same as one through every value


def empirical_cdf(values: np.ndarray, points: int = CDF_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(sorted values, cumulative fraction), thinned to ``points`` evenly spaced ranks."""
    values = np.sort(values[np.isfinite(values)])
    n = values.size
    if n == 0:
        return values, values
    ranks = np.unique(np.linspace(0, n - 1, min(points, n)).round().astype(np.int64))
    return values[ranks], (ranks + 1) / n


def plot_latency_cdfs(result: RunResult, frame: pd.DataFrame, path: Path, title: str = "") -> Path:
    curves = {}
    for spec in result.tasks:
        rows = frame["task"] == spec.name
        curves[spec.name] = {metric: empirical_cdf(frame.loc[rows, metric].to_numpy(dtype=float))
                             for metric in ("ttft_s", "tpot_s")}
    return plot_latency_cdf_curves(result.tasks, curves, path, title)


def plot_latency_cdf_curves(tasks: Sequence[TaskSpec], curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
                            path: Path, title: str = "") -> Path:
    """Per task, TTFT and TPOT CDFs given as (values, cumulative fraction), with the SLOs dotted."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for metric, ax in (("ttft_s", axes[0]), ("tpot_s", axes[1])):
        for i, spec in enumerate(tasks):
            values, fraction = curves.get(spec.name, {}).get(metric, (np.array([]), np.array([])))
            if values.size == 0:
                continue
            color = f"C{i}"
            ax.plot(values, fraction, color=color, label=spec.name)
            ax.axvline(getattr(spec.slo, metric), color=color, linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"{metric[:-2].upper()} (s); dotted: SLO")
        ax.set_ylabel("fraction of requests")
        ax.axhline(0.9, color="grey", linewidth=0.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "Latency CDFs per task")
    return _save(fig, path)


def plot_policy_comparison(rows: Sequence[dict], path: Path) -> Path:
    """Energy per output token (with and without idle), per input + output token, and average GPUs per policy."""
    names = [r.get("run", r["policy"]) for r in rows]
    x = np.arange(len(rows))
    fig, (ax_e, ax_g) = plt.subplots(1, 2, figsize=(11, 4))
    ax_e.bar(x - 0.27, [r["energy_per_output_token_j"] for r in rows], 0.27, label="per output token, incl. idle")
    ax_e.bar(x, [r["energy_per_output_token_busy_j"] for r in rows], 0.27, label="per output token, busy only")
    ax_e.bar(x + 0.27, [r.get("energy_per_token_in_out_j", np.nan) for r in rows], 0.27,
             label="per input+output token, incl. idle")
    ax_e.set_ylabel("energy per token (J)")
    ax_g.bar(x, [r["avg_gpus"] for r in rows], 0.5, color="C2")
    ax_g.set_ylabel("average GPUs")
    for ax in (ax_e, ax_g):
        ax.set_xticks(x, names, rotation=15)
        ax.grid(alpha=0.3, axis="y")
    for i, r in enumerate(rows):
        ax_g.annotate(f"SLO {100 * r['slo_attainment']:.1f} %", (i, r["avg_gpus"]), ha="center", va="bottom", fontsize=8)
    ax_e.legend(fontsize=8)
    fig.suptitle("Policies on the same trace")
    return _save(fig, path)
