"""GPU power as a function of compute and memory intensity, fitted to NVML measurements.

    P = min(power_limit_w, static_w + sum_dtype joule_per_flop[dtype] * FLOP/s + joule_per_byte * byte/s)

``static_w`` is what a busy GPU draws beyond doing work (clocks up, SMs resident); the two dynamic
terms are energy per operation. Fitted by least squares on the rows of ``calibrate.power_microbench``
(``profiles/measured/h100_power/``), with the cap applied inside the model so power-limited rows
constrain the fit only from below. Energy of an engine iteration is then ``static_w * t +
e_flop * FLOPs + e_byte * bytes``, which is the ``StepModel`` energy form.

Other GPUs are derived from the H100 fit by spec ratios: static and idle power scale with TDP,
energy per FLOP with TDP / peak FLOP/s, energy per byte with TDP / memory bandwidth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from profiles.catalog import GpuSpec

DTYPES = ("bf16", "fp8", "int8")


@dataclass(frozen=True, slots=True)
class PowerModel:
    gpu: str
    idle_w: float
    static_w: float
    joule_per_flop: dict  # dtype -> J per FLOP (per op for int8)
    joule_per_byte: float
    power_limit_w: float
    mape: float  # fit error on the measured rows (NaN for derived models)
    provenance: str
    source: str

    def power_w(self, flops_per_s: dict[str, float], bytes_per_s: float) -> float:
        dynamic = sum(self.joule_per_flop[d] * f for d, f in flops_per_s.items()) + self.joule_per_byte * bytes_per_s
        return min(self.power_limit_w, self.static_w + dynamic)


def measured_power_csv() -> Path:
    return Path(str(resources.files("profiles") / "measured" / "h100_power" / "h100_power.csv"))


def read_measurements(path: Path) -> tuple[pd.DataFrame, dict]:
    """Rows and the provenance header (``# key: value`` lines) of a power_microbench CSV."""
    header = {}
    with path.open() as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            key, _, value = line[1:].partition(":")
            header[key.strip()] = value.strip()
    frame = pd.read_csv(path, comment="#")
    missing = {"kernel", "dtype", "mean_power_w", "achieved_tflops", "achieved_gbps"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    return frame, header


def fit_power_model(path: Path | None = None) -> PowerModel:
    path = path or measured_power_csv()
    frame, header = read_measurements(path)
    frame = frame[frame["error"].isna() | (frame["error"] == "")] if "error" in frame else frame
    idle = frame[frame["kernel"].str.startswith("idle")]
    work = frame[~frame["kernel"].str.startswith("idle")].copy()
    if idle.empty or work.empty:
        raise ValueError(f"{path}: needs idle rows and kernel rows to fit a power model")
    limit = float(header.get("power_limit_w", "nan"))
    if not math.isfinite(limit):
        raise ValueError(f"{path}: header line '# power_limit_w:' missing")
    flops = {d: np.where(work["dtype"] == d, work["achieved_tflops"] * 1e12, 0.0) for d in DTYPES}
    byte_rate = work["achieved_gbps"].to_numpy() * 1e9
    measured = work["mean_power_w"].to_numpy()
    scale_f, scale_b = 1e-15, 1e-12  # fit in units of W per (PFLOP/s) and W per (TB/s)

    def model(x):
        static, e_bf16, e_fp8, e_int8, e_byte = x
        p = static + (e_bf16 * flops["bf16"] + e_fp8 * flops["fp8"] + e_int8 * flops["int8"]) * scale_f + e_byte * byte_rate * scale_b
        return np.minimum(p, limit)

    fit = least_squares(lambda x: (model(x) - measured) / measured, x0=[200, 300, 150, 500, 80],
                        bounds=([0, 0, 0, 0, 0], [limit, 5000, 5000, 5000, 500]))
    static, e_bf16, e_fp8, e_int8, e_byte = fit.x
    mape = float(np.mean(np.abs(model(fit.x) - measured) / measured))
    # The int8 rows come from torch._int_mm, which reached ~130 TOPS (7 % of the dense INT8 peak): its
    # energy per op describes that kernel, not TensorRT-LLM's INT8 GEMMs. INT8 and FP8 run on the same
    # 8-bit tensor-core datapath at the same peak, so INT8 takes the FP8 energy per op.
    return PowerModel(
        gpu="h100-80gb",
        idle_w=float(idle["mean_power_w"].mean()),
        static_w=float(static),
        joule_per_flop={"bf16": e_bf16 * scale_f, "fp8": e_fp8 * scale_f, "int8": e_fp8 * scale_f},
        joule_per_byte=float(e_byte * scale_b),
        power_limit_w=limit,
        mape=mape,
        provenance="measured",
        source=(f"measured: NVML energy counter on {header.get('gpu', '?')}, driver {header.get('driver', '?')}, "
                f"{header.get('date', '?')}, command '{header.get('command', '?')}' ({path.name}); "
                f"fitted by profiles/power_model.py, MAPE {100 * mape:.1f} %; INT8 energy per op = FP8's "
                f"(the measured torch._int_mm reference kernel, {e_int8 * scale_f * 1e12:.2f} pJ/op at ~130 TOPS, "
                f"is not representative of TensorRT-LLM INT8 GEMMs)"),
    )


def derive_power_model(reference: PowerModel, ref_gpu: GpuSpec, gpu: GpuSpec) -> PowerModel:
    """Scale a fitted model to another GPU by spec ratios (TDP, peak FLOP/s, memory bandwidth)."""
    tdp = gpu.tdp_w / ref_gpu.tdp_w
    peaks = {
        "bf16": (gpu.fp16_tflops, ref_gpu.fp16_tflops),
        "int8": (gpu.int8_tops, ref_gpu.int8_tops),
        "fp8": (gpu.fp8_tflops or gpu.int8_tops, ref_gpu.fp8_tflops or ref_gpu.int8_tops),
    }
    per_flop = {d: reference.joule_per_flop[d] * tdp * ref_peak / peak for d, (peak, ref_peak) in peaks.items()}
    per_byte = reference.joule_per_byte * tdp * ref_gpu.memory_bandwidth_gbps / gpu.memory_bandwidth_gbps
    return PowerModel(
        gpu=gpu.name,
        idle_w=reference.idle_w * tdp,
        static_w=reference.static_w * tdp,
        joule_per_flop=per_flop,
        joule_per_byte=per_byte,
        power_limit_w=gpu.tdp_w,
        mape=math.nan,
        provenance="derived",
        source=(f"derived: the {reference.gpu} power fit scaled to {gpu.name} by spec ratios (idle and static by "
                f"TDP {gpu.tdp_w:g}/{ref_gpu.tdp_w:g} W, energy per FLOP by TDP/peak, per byte by TDP/bandwidth)"),
    )
