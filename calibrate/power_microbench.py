"""Measure GPU power with NVML's energy counter while running kernels of known work.

    python -m calibrate.power_microbench --out power.csv [--seconds 2.5] [--device 0]

Each row is one kernel held busy for a window: GEMMs of several shapes in bf16, fp8 and int8 (from
memory-bound skinny shapes to compute-bound squares) and memory-bound copies, plus idle windows.
Energy comes from ``nvmlDeviceGetTotalEnergyConsumption`` (mJ) read before and after the window,
after a warm-up; achieved FLOP/s and bytes/s are computed from the kernel's nominal work, so a
power model ``P = f(compute intensity, memory intensity)`` can be fitted to the rows
(``profiles.power_model``). Needs PyTorch with CUDA and nvidia-ml-py; without a GPU it stops and
says so, it never writes a figure it did not measure.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

FIELDS = (
    "kernel", "dtype", "m", "n", "k", "bytes_per_call", "flops_per_call", "calls", "seconds", "energy_j",
    "mean_power_w", "achieved_tflops", "achieved_gbps", "error",
)


@dataclass(frozen=True, slots=True)
class Measurement:
    kernel: str
    dtype: str
    m: int
    n: int
    k: int
    bytes_per_call: float
    flops_per_call: float
    calls: int
    seconds: float
    energy_j: float
    mean_power_w: float
    achieved_tflops: float
    achieved_gbps: float
    error: str = ""


def _energy_j(pynvml, handle) -> float:
    return pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0


def _window(torch, pynvml, handle, fn, seconds: float) -> tuple[int, float, float]:
    """Run fn back to back for about ``seconds`` after a warm-up; (calls, wall s, joules)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    # Calibrate how many calls fill the window, so the energy reading brackets only kernel time.
    t0 = time.perf_counter()
    calls = 0
    while time.perf_counter() - t0 < 0.3:
        fn()
        calls += 1
        if calls % 16 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    per_call = (time.perf_counter() - t0) / calls
    target = max(int(seconds / per_call), 1)
    torch.cuda.synchronize()
    e0 = _energy_j(pynvml, handle)
    t0 = time.perf_counter()
    for i in range(target):
        fn()
        if i % 64 == 63:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    e1 = _energy_j(pynvml, handle)
    return target, wall, e1 - e0


def _gemm_cases(torch, device):
    """(kernel, dtype, m, n, k, fn) for bf16 / fp8 / int8 GEMMs from skinny to square."""
    shapes = [(m, 8192, 8192) for m in (1, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192)]
    shapes += [(s, s, s) for s in (1024, 2048, 4096)]
    cases = []
    for m, n, k in shapes:
        a = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        b = torch.randn(k, n, device=device, dtype=torch.bfloat16)
        cases.append(("gemm", "bf16", m, n, k, (lambda a=a, b=b: torch.matmul(a, b)), 2, 2))
        if hasattr(torch, "float8_e4m3fn") and hasattr(torch, "_scaled_mm"):
            mm = max(m, 16)
            a8 = torch.randn(mm, k, device=device).to(torch.float8_e4m3fn)
            b8 = torch.randn(n, k, device=device).to(torch.float8_e4m3fn).t()  # column-major
            one = torch.tensor(1.0, device=device)
            cases.append(("gemm", "fp8", mm, n, k,
                          (lambda a8=a8, b8=b8, one=one: torch._scaled_mm(a8, b8, one, one, out_dtype=torch.bfloat16)), 1, 2))
        if hasattr(torch, "_int_mm"):
            mi = max(m, 32)
            ai = torch.randint(-8, 8, (mi, k), device=device, dtype=torch.int8)
            bi = torch.randint(-8, 8, (k, n), device=device, dtype=torch.int8)
            cases.append(("gemm", "int8", mi, n, k, (lambda ai=ai, bi=bi: torch._int_mm(ai, bi)), 1, 4))
    return cases


def measure(seconds: float, device_index: int) -> tuple[list[Measurement], dict]:
    try:
        import pynvml
        import torch
    except ImportError as exc:
        raise SystemExit(f"power_microbench needs torch and nvidia-ml-py: {exc}") from None
    if not torch.cuda.is_available():
        raise SystemExit("power_microbench: no CUDA GPU here; nothing measured, nothing written")
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
    device = torch.device("cuda", device_index)
    info = {
        "gpu": pynvml.nvmlDeviceGetName(handle),
        "driver": pynvml.nvmlSystemGetDriverVersion(),
        "power_limit_w": pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "command": " ".join([os.path.basename(sys.executable), "-m", "calibrate.power_microbench", *sys.argv[1:]]),
    }
    rows: list[Measurement] = []

    def record(kernel, dtype, m, n, k, fn, bytes_per_call, flops_per_call):
        try:
            calls, wall, joules = _window(torch, pynvml, handle, fn, seconds)
            rows.append(Measurement(kernel, dtype, m, n, k, bytes_per_call, flops_per_call, calls, wall, joules,
                                    joules / wall, flops_per_call * calls / wall / 1e12,
                                    bytes_per_call * calls / wall / 1e9))
        except Exception as exc:  # one kernel's failure must not lose the others' measurements
            rows.append(Measurement(kernel, dtype, m, n, k, bytes_per_call, flops_per_call, 0, 0.0, float("nan"),
                                    float("nan"), float("nan"), float("nan"), f"{type(exc).__name__}: {exc}"[:200]))
        print(rows[-1], flush=True)

    def idle(label: str) -> None:
        torch.cuda.synchronize()
        time.sleep(1.0)
        e0, t0 = _energy_j(pynvml, handle), time.perf_counter()
        time.sleep(max(seconds * 2, 4.0))
        wall, joules = time.perf_counter() - t0, _energy_j(pynvml, handle) - e0
        rows.append(Measurement(label, "none", 0, 0, 0, 0.0, 0.0, 0, wall, joules, joules / wall, 0.0, 0.0))
        print(rows[-1], flush=True)

    idle("idle")
    for kernel, dtype, m, n, k, fn, in_bytes, out_bytes in _gemm_cases(torch, device):
        traffic = in_bytes * (m * k + k * n) + out_bytes * m * n
        record(kernel, dtype, m, n, k, fn, float(traffic), 2.0 * m * n * k)
    for size_mb in (64, 256, 1024, 4096):
        elems = size_mb * 2**20 // 2
        x = torch.empty(elems, device=device, dtype=torch.bfloat16)
        y = torch.empty_like(x)
        record("copy", "bf16", elems, 0, 0, (lambda x=x, y=y: y.copy_(x)), 2.0 * x.numel() * 2, 0.0)
        del x, y
    idle("idle_after")
    pynvml.nvmlShutdown()
    return rows, info


def write_csv(rows: list[Measurement], info: dict, out: Path) -> None:
    """CSV with the provenance as leading comment lines; temp file then rename."""
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w", newline="") as fh:
        for key in sorted(info):
            fh.write(f"# {key}: {info[key]}\n")
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=2.5)
    parser.add_argument("--device", type=int, default=0)
    args = parser.parse_args(argv)
    rows, info = measure(args.seconds, args.device)
    write_csv(rows, info, args.out)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
