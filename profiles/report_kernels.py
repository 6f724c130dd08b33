"""Compare kernel-table step models with roofline ones, and check every §4-§7 finding of the paper.

    python -m profiles.report_kernels [--profiles profiles/default] [--out profiles/reports]

Writes ``kernel_vs_roofline.md`` (summary tables, then every finding with its numbers and verdict,
failures first), ``kernel_vs_roofline.csv`` (every config: decode and prefill iteration times under both
models), figures ``kernel_vs_roofline.png`` and ``power_fit.png``, and the findings on their own as
``findings.md`` / ``findings.csv`` (``profiles.findings``, the one implementation of the check).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from profiles.catalog import GPUS, MODELS, QUANTS  # noqa: E402
from profiles.findings import (  # noqa: E402
    FAILS, Finding, counts_line, findings_table, shown_path, table2_comparison, table2_table,
    write_findings,
)
from profiles.power_model import DTYPES, fit_power_model, measured_power_csv, read_measurements  # noqa: E402
from profiles.profile_set import ProfileSet, default_profile_path  # noqa: E402
from profiles.roofline import roofline_step_model  # noqa: E402

POINTS = {  # name -> (decode batch, KV tokens per sequence, prompt length)
    "decode_b1_s512": (1, 512, 0),
    "decode_b64_s512": (64, 512, 0),
    "decode_b256_s512": (256, 512, 0),
    "prefill_512": (0, 0, 512),
    "prefill_2048": (0, 0, 2048),
}


def iteration_s(step, batch: int, kv_len: int, prompt: int) -> float:
    if prompt:
        return step.iteration_s(1, prompt, 0, prompt, prompt * prompt)
    return step.iteration_s(batch, batch, batch * kv_len)


def compare_step_models(profiles: ProfileSet) -> pd.DataFrame:
    rows = []
    for key in profiles.configs():
        kernel = profiles.step(key)
        prov = profiles.step_models
        row_prov = prov[(prov.gpu == key.gpu) & (prov.model == key.model) & (prov.quant == key.quant) & (prov.tp == key.tp)]
        row = {"config": key.label, "gpu": key.gpu, "model": key.model, "quant": key.quant, "tp": key.tp,
               "provenance": row_prov["provenance"].iloc[0]}
        try:
            roof = roofline_step_model(GPUS[key.gpu], MODELS[key.model], QUANTS[key.quant], key.tp)
        except (KeyError, ValueError):
            roof = None
        for name, (b, s, L) in POINTS.items():
            if b * s > kernel.kv_capacity_tokens:
                continue
            row[f"{name}_kernel_ms"] = 1e3 * iteration_s(kernel, b, s, L)
            if roof is not None:
                row[f"{name}_roofline_ms"] = 1e3 * iteration_s(roof, b, s, L)
        rows.append(row)
    return pd.DataFrame(rows)


def explanations() -> list[tuple[tuple[str, ...], str]]:
    """Why findings fail on kernel-table profiles: (finding names, the measured kernel ratios behind them)."""
    from profiles.kernel_tables import KernelTables

    h100 = KernelTables.load("h100_sxm")
    a100 = KernelTables.load("a100_sxm")
    heads, kv = 64, 8  # CodeLlama-34B at TP1
    kv_ratios = [h100.generation_attention_s(heads, kv, "fp8", b, s) / h100.generation_attention_s(heads, kv, "bfloat16", b, s)
                 for b in (8, 32, 64) for s in (255, 511, 1023)]
    wo = [a100.gemm_s(dt, 1024, n, k) / a100.gemm_s("bfloat16", 1024, n, k)
          for dt in ("int8_wo", "int4_wo") for n, k in ((8192, 8192), (22016, 8192), (8192, 16384))]
    kv_text = (f"TensorRT-LLM 1.3.0rc20's measured FP8-KV generation attention runs at {min(kv_ratios):.2f}-"
               f"{max(kv_ratios):.2f}x the bf16-KV latency for the 34B shape (half the bytes, no visible dequantization "
               "cost), and INT8/INT4 KV are derived from it; the paper measured TensorRT-LLM v0.19, whose KV-cache "
               "compression paths were slower. The KV-compressed methods therefore come out faster, not slower")
    wo_text = (f"the A100-measured weight-only GEMMs (TensorRT-LLM 1.0.0) run at {min(wo):.2f}-{max(wo):.2f}x the bf16 "
               "latency at m=1024 for the 34B shapes, i.e. about as fast as FP16 in the compute-bound regime, and the "
               "Hopper weight-only kernels are derived from that ratio; the dequantization overhead the paper saw "
               "in v0.19 is not in these kernels")
    kv_names = ("kv-compression-latency", "kv-compression-energy", "w4a8kv4-negligible-ttft",
                "kv-compression-negates-gains-high-load", "kv-compression-high-tp-latency", "tp-weight-only-kv-degrades")
    return [(kv_names, kv_text), (("short-output-weight-only-ttft",), wo_text)]


def findings_section(profiles: ProfileSet, found: list[Finding]) -> list[str]:
    """The report's findings section: every finding, failures first, then the Table 2 saturation comparison."""
    lines = ["## The paper's §4-§7 findings on these profiles", "", counts_line(found), "",
             "Failures first; 'holds by construction': the deciding numbers were set from the paper's own statement. "
             "Rows used and their provenance, and how vague words are read: `findings.md` / `findings.csv` "
             "(`profiles/findings.py`).", ""]
    lines += findings_table(found, provenance=False)
    failing = {f.name for f in found if f.verdict == FAILS}
    reasons = [([n for n in names if n in failing], text) for names, text in explanations()]
    reasons = [(names, text) for names, text in reasons if names]
    if reasons:
        lines += ["", "Why some fail on kernel-table profiles:", ""]
        lines += ["- " + ", ".join(f"`{n}`" for n in names) + f": {text}." for names, text in reasons]
    lines += ["", "### Table 2: saturation of 13B 8-bit methods on one H100 (paper: 2 x the mid-range load)", ""]
    lines += table2_table(table2_comparison(profiles))
    return lines


def plot_comparison(frame: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, point in zip(axes, ("decode_b64_s512", "prefill_512")):
        for i, gpu in enumerate(sorted(frame.gpu.unique())):
            rows = frame[(frame.gpu == gpu)].dropna(subset=[f"{point}_roofline_ms", f"{point}_kernel_ms"])
            ax.scatter(rows[f"{point}_roofline_ms"], rows[f"{point}_kernel_ms"], s=10, label=gpu, color=f"C{i}")
        lim = [frame[[f"{point}_roofline_ms", f"{point}_kernel_ms"]].min().min() * 0.8,
               frame[[f"{point}_roofline_ms", f"{point}_kernel_ms"]].max().max() * 1.2]
        ax.plot(lim, lim, "k--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("roofline step model (ms)")
        ax.set_ylabel("kernel-table step model (ms)")
        ax.set_title(point.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Iteration time per config: kernel tables vs roofline")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_power_fit(path: Path) -> None:
    model = fit_power_model()
    frame, header = read_measurements(measured_power_csv())
    work = frame[~frame.kernel.str.startswith("idle")]
    predicted = []
    for r in work.itertuples():
        flops = {d: 0.0 for d in DTYPES}
        if r.kernel == "gemm":
            flops[r.dtype] = r.achieved_tflops * 1e12
        predicted.append(model.power_w(flops, r.achieved_gbps * 1e9))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for i, (dtype, rows) in enumerate(work.assign(pred=predicted).groupby("dtype")):
        ax.scatter(rows.mean_power_w, rows.pred, label=f"{dtype}", color=f"C{i}")
    ax.plot([100, 750], [100, 750], "k--", linewidth=0.8)
    ax.set_xlabel("measured mean power (W, NVML)")
    ax.set_ylabel("power model (W)")
    ax.set_title(f"{header.get('gpu')} power fit, MAPE {100 * model.mape:.1f} %")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_report(profiles: ProfileSet, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    frame = compare_step_models(profiles)
    frame.to_csv(out / ".kernel_vs_roofline.csv.tmp", index=False, float_format="%.4g")
    os.replace(out / ".kernel_vs_roofline.csv.tmp", out / "kernel_vs_roofline.csv")
    plot_comparison(frame, out / "kernel_vs_roofline.png")
    plot_power_fit(out / "power_fit.png")
    power = fit_power_model()
    lines = ["# Default profiles: TensorRT-LLM kernel tables vs the roofline model", "",
             f"Profile set: `{shown_path(profiles.path)}` ({len(frame)} configs). Regenerate: `python -m profiles.report_kernels`.", "",
             "## Provenance of the step models", ""]
    counts = frame.groupby(["gpu", "provenance"]).size().unstack(fill_value=0)
    lines += ["| gpu | " + " | ".join(counts.columns) + " |", "|---|" + "---|" * len(counts.columns)]
    lines += [f"| {gpu} | " + " | ".join(str(v) for v in row) + " |" for gpu, row in counts.iterrows()]
    lines += ["", "`measured-kernels`: every kernel looked up in a measured table; `derived`: at least one named rule "
              "(see `profiles/kernel_step_model.py` RULES; the rules are named in each row's `source`).", "",
              "## Kernel-table / roofline iteration-time ratio (median over configs)", ""]
    ratio_cols = []
    for name in POINTS:
        if f"{name}_roofline_ms" in frame:
            frame[f"{name}_ratio"] = frame[f"{name}_kernel_ms"] / frame[f"{name}_roofline_ms"]
            ratio_cols.append(f"{name}_ratio")
    table = frame.groupby(["gpu", "quant"])[ratio_cols].median()
    lines += ["| gpu | quant | " + " | ".join(c.replace("_ratio", "") for c in ratio_cols) + " |",
              "|---|---|" + "---|" * len(ratio_cols)]
    for (gpu, quant), row in table.iterrows():
        lines.append(f"| {gpu} | {quant} | " + " | ".join("n/a" if pd.isna(v) else f"{v:.2f}" for v in row) + " |")
    lines += ["", "Per-config times: `kernel_vs_roofline.csv`; scatter: `kernel_vs_roofline.png` (H200 has no roofline "
              "counterpart).", "", "## Power model (NVML, H100)", "",
              f"Static {power.static_w:.0f} W while busy, idle {power.idle_w:.0f} W, {power.joule_per_flop['bf16'] * 1e12:.2f} pJ per "
              f"bf16 FLOP, {power.joule_per_flop['fp8'] * 1e12:.2f} pJ per fp8 FLOP, {power.joule_per_byte * 1e12:.0f} pJ per byte "
              f"of DRAM traffic, capped at {power.power_limit_w:.0f} W; MAPE {100 * power.mape:.1f} % on the measured rows "
              "(`power_fit.png`). A100 and H200 power is scaled from this fit by spec ratios (derived).", ""]
    found = write_findings(profiles, out)
    lines += findings_section(profiles, found)
    text = "\n".join(lines) + "\n"
    path = out / "kernel_vs_roofline.md"
    tmp = out / ".kernel_vs_roofline.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=Path, default=default_profile_path())
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "reports")
    args = parser.parse_args(argv)
    path = write_report(ProfileSet.load(args.profiles), args.out)
    print(path.read_text())


if __name__ == "__main__":
    main()
