"""The capacity-planning figure of a sweep: GPUs and energy per output token against load, one line
per policy, one column per GPU mix, solid for the case-study SLOs and dashed for the tight ones; a
filled marker where every task met its SLO (at least 90 % of its requests within the P90 latency
targets, served by a config meeting its quality floor), a cross where some task did not, and the
runs that found no feasible plan listed under the figure.

    python -m experiments.capacity_sweep_plot outputs/sweeps/capacity     # reads runs.parquet, tasks.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from sim.report import CompareCallback, sweep_failures  # noqa: E402

LOAD = "override.trace.total_rate_qps"
CLUSTER = "override.cluster"
SLO = "override.slo"
SLO_MET = 0.9  # a task meets its P90 SLOs when at least 90 % of its requests do
POLICY_ORDER = ("fp16_only", "quality_first", "energy_first", "slo_energy_optimal")


def capacity_table(sweep_dir: Path) -> pd.DataFrame:
    """One row per run: load, policy, GPU mix, SLO set, average GPUs, J/token, and whether every task met its SLO."""
    runs = pd.read_parquet(sweep_dir / "runs.parquet")
    tasks = pd.read_parquet(sweep_dir / "tasks.parquet")
    met = tasks.groupby("run").apply(
        lambda t: bool(((t["slo_attainment"] >= SLO_MET) | (t["requests"] == 0)).all()), include_groups=False)
    table = runs.assign(slo_met=runs["run"].map(met).fillna(False).astype(bool))
    for column, default in ((CLUSTER, "case_study"), (SLO, "case_study")):
        if column not in table:
            table[column] = default
    table[LOAD] = table[LOAD].astype(float)
    return table


def plot_capacity(table: pd.DataFrame, path: Path, failures: list[dict] | None = None) -> Path:
    clusters = sorted(table[CLUSTER].unique())
    policies = [p for p in POLICY_ORDER if p in set(table["policy"])] + sorted(set(table["policy"]) - set(POLICY_ORDER))
    slos = sorted(table[SLO].unique())
    styles = {slo: ("-" if i == 0 else "--" if i == 1 else ":") for i, slo in enumerate(slos)}
    fig, axes = plt.subplots(2, len(clusters), figsize=(5.2 * len(clusters), 8.2), sharex=True, squeeze=False)
    for col, cluster in enumerate(clusters):
        for row, (metric, label) in enumerate((("avg_gpus", "GPUs (time average)"),
                                               ("energy_per_output_token_j", "energy per output token (J)"))):
            ax = axes[row][col]
            for i, policy in enumerate(policies):
                for slo in slos:
                    part = table[(table[CLUSTER] == cluster) & (table["policy"] == policy) & (table[SLO] == slo)]
                    part = part.sort_values(LOAD)
                    if part.empty:
                        continue
                    color = f"C{i}"
                    ax.plot(part[LOAD], part[metric], styles[slo], color=color, linewidth=2)
                    ok = part["slo_met"].to_numpy()
                    ax.scatter(part[LOAD][ok], part[metric][ok], color=color, s=45, zorder=3)
                    ax.scatter(part[LOAD][~ok], part[metric][~ok], color=color, marker="x", s=70, linewidths=2, zorder=3)
            ax.set_xscale("log", base=2)
            loads = sorted(table[LOAD].unique())
            ax.set_xticks(loads, [f"{x:g}" for x in loads])
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"GPU mix: {cluster}", fontsize=13)
            else:
                ax.set_xlabel("load (req/s)", fontsize=12)
            if col == 0:
                ax.set_ylabel(label, fontsize=12)
    handles = [plt.Line2D([], [], color=f"C{i}", linewidth=2, label=p) for i, p in enumerate(policies)]
    handles += [plt.Line2D([], [], color="black", linestyle=styles[s], label=f"SLO set: {s}") for s in slos]
    handles += [plt.Line2D([], [], color="black", marker="o", linestyle="", label="every task meets its SLO"),
                plt.Line2D([], [], color="black", marker="x", linestyle="", label="some task misses its SLO")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=10, frameon=False)
    fig.suptitle("Capacity plan: GPUs and energy per token vs load, per policy and GPU mix", fontsize=15)
    note = ""
    if failures:
        names = sorted({f["run"] for f in failures})
        note = f"no feasible plan ({len(names)} runs): " + "; ".join(names[:6]) + (" ..." if len(names) > 6 else "")
    fig.text(0.5, 0.065, note, ha="center", fontsize=8, color="dimgrey")
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_sweep(sweep_dir: Path) -> Path | None:
    if not (sweep_dir / "runs.parquet").exists():
        return None
    return plot_capacity(capacity_table(sweep_dir), sweep_dir / "capacity.png", sweep_failures(sweep_dir))


class CapacitySweepCallback(CompareCallback):
    """The comparison and merged tables of ``CompareCallback``, then capacity.png."""

    def on_multirun_end(self, config, **kwargs) -> None:
        super().on_multirun_end(config, **kwargs)
        path = plot_sweep(Path(config.hydra.sweep.dir))
        if path is not None:
            print(f"Capacity figure: {path.resolve()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args()
    path = plot_sweep(args.sweep_dir)
    if path is None:
        raise SystemExit(f"{args.sweep_dir}: no runs.parquet (run the sweep first)")
    print(path)


if __name__ == "__main__":
    main()
