"""Silicon-measured TensorRT-LLM kernel latencies (NVIDIA aiconfigurator-core), and lookups within them.

The PyPI package ``aiconfigurator-core`` (Apache-2.0, NVIDIA) ships Parquet tables of measured kernel
latencies per system. We keep the subset our configs need in ``profiles/kernel_tables/<system>/``
(extracted by ``python -m profiles.kernel_tables --wheel aiconfigurator_core-*.whl``) with the license:

* ``gemm.parquet``: (gemm_dtype, m, n, k) -> latency_ms
* ``context_attention.parquet``: (num_heads, num_kv_heads, kv_cache_dtype, batch_size, isl) -> latency_ms
* ``generation_attention.parquet``: (num_heads, num_kv_heads, kv_cache_dtype, batch_size, step) -> latency_ms
* ``allreduce.parquet``: (num_gpus, message_size in elements, bf16) -> latency_ms

Lookups interpolate linearly in log-log space between grid points. A query outside the grid raises
``OutOfGridError`` unless the caller asks for flagged extrapolation (clamping to the edge), in which
case the result says so; nothing is extrapolated silently.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd

SYSTEMS = {
    # system -> (wheel folder, framework version, our GPU name)
    "a100_sxm": ("a100_sxm", "1.0.0", "a100-40gb"),
    "h100_sxm": ("h100_sxm", "1.3.0rc20", "h100-80gb"),
    "h200_sxm": ("h200_sxm", "1.3.0rc20", "h200-141gb"),
}
# Which measured system's tables a GPU type runs on: the A100 tables were measured on A100-SXM4-80GB and serve
# both A100 parts (the 40 GB one by a named rule, profiles.kernel_step_model RULES["a100-80gb-kernels"]).
GPU_SYSTEMS = {"a100-40gb": "a100_sxm", "a100-80gb": "a100_sxm", "h100-80gb": "h100_sxm", "h200-141gb": "h200_sxm"}
GEMM_DTYPES = {"a100_sxm": ("bfloat16", "int8_wo", "int4_wo", "sq"), "h100_sxm": ("bfloat16", "fp8"),
               "h200_sxm": ("bfloat16", "fp8")}
HEAD_DIM = 128


class OutOfGridError(ValueError):
    """A lookup outside the measured grid of a kernel table."""


def tables_root() -> Path:
    return Path(str(resources.files("profiles") / "kernel_tables"))


# --- extraction from the wheel ----------------------------------------------------------------------

def _wheel_table(zf: zipfile.ZipFile, system: str, kind: str, version: str, name: str) -> pd.DataFrame:
    path = f"aiconfigurator_core/systems/data/{system}/{kind}/trtllm/{version}/{name}"
    with zf.open(path) as fh:
        return pd.read_parquet(fh)


def extract(wheel: Path, out: Path) -> None:
    """Copy the rows our configs need from the aiconfigurator-core wheel into ``out/<system>/``."""
    with zipfile.ZipFile(wheel) as zf:
        wheel_version = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA")).split("-")[1].removesuffix(".dist")
        for system, (folder, version, _) in SYSTEMS.items():
            target = out / system
            target.mkdir(parents=True, exist_ok=True)
            gemm = _wheel_table(zf, folder, "gemm", version, "gemm_perf.parquet")
            device = str(gemm["device"].iloc[0])
            gemm = gemm[gemm["gemm_dtype"].isin(GEMM_DTYPES[system])]
            gemm = gemm[["gemm_dtype", "m", "n", "k", "latency"]].rename(columns={"latency": "latency_ms"})
            tables = {"gemm": gemm}
            for phase, length in (("context", "isl"), ("generation", "step")):
                att = _wheel_table(zf, folder, "attention", version, f"{phase}_attention_perf.parquet")
                att = att[(att["head_dim"] == HEAD_DIM) & (att["window_size"] == 0) & (att["attn_dtype"] == "bfloat16")
                          & (att["beam_width"] == 1)]
                att = att[["num_heads", "num_key_value_heads", "kv_cache_dtype", "batch_size", length, "latency"]]
                tables[f"{phase}_attention"] = att.rename(columns={"latency": "latency_ms", "num_key_value_heads": "num_kv_heads"})
            comm = _wheel_table(zf, folder, "comm", version, "custom_allreduce_perf.parquet")
            tables["allreduce"] = comm[["num_gpus", "message_size", "latency"]].rename(columns={"latency": "latency_ms"})
            for name, frame in tables.items():
                tmp = target / f".{name}.parquet.tmp"
                frame.reset_index(drop=True).to_parquet(tmp, index=False)
                tmp.replace(target / f"{name}.parquet")
            meta = {
                "system": system,
                "device": device,
                "framework": "TensorRT-LLM",
                "framework_version": version,
                "source": f"aiconfigurator-core {wheel_version} (PyPI, Apache-2.0, NVIDIA), "
                          f"aiconfigurator_core/systems/data/{folder}/{{gemm,attention,comm}}/trtllm/{version}/",
                "rows": {name: int(len(frame)) for name, frame in tables.items()},
            }
            (target / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


# --- interpolation ------------------------------------------------------------------------------------

def _bracket(grid: list[float], x: float, what: str, extrapolate: bool) -> tuple[int, int, float, bool]:
    """Indices and log-space weight of the grid points around x; flags clamping."""
    if x < grid[0] or x > grid[-1]:
        if not extrapolate:
            raise OutOfGridError(f"{what}={x:g} is outside the measured grid [{grid[0]:g}, {grid[-1]:g}]")
        x = min(max(x, grid[0]), grid[-1])
        clamped = True
    else:
        clamped = False
    j = bisect.bisect_left(grid, x)
    if j < len(grid) and grid[j] == x:
        return j, j, 0.0, clamped
    lo, hi = j - 1, j
    w = (math.log(x) - math.log(grid[lo])) / (math.log(grid[hi]) - math.log(grid[lo]))
    return lo, hi, w, clamped


@dataclass(frozen=True)
class Grid:
    """A table of latency over named axes, with missing grid points allowed (filled from neighbours)."""

    axes: tuple[str, ...]
    values: dict = field(repr=False)  # tuple of axis values -> latency_ms
    grids: tuple[list[float], ...] = field(repr=False)
    name: str = ""

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, axes: tuple[str, ...], name: str) -> "Grid":
        frame = frame.groupby(list(axes), as_index=False)["latency_ms"].median()
        values = {tuple(float(v) for v in row[:-1]): float(row[-1]) for row in frame[list(axes) + ["latency_ms"]].itertuples(index=False)}
        grids = tuple(sorted(set(float(v) for v in frame[a])) for a in axes)
        return cls(axes, values, grids, name)

    def lookup(self, point: tuple[float, ...], extrapolate: bool = False) -> tuple[float, bool]:
        """Multilinear interpolation of log latency over log axes; (latency_ms, clamped)."""
        brackets = [
            _bracket(g, float(x), f"{self.name}.{a}", extrapolate) for g, x, a in zip(self.grids, point, self.axes)
        ]
        clamped = any(b[3] for b in brackets)
        total_w, acc = 0.0, 0.0
        for corner in range(1 << len(brackets)):
            w = 1.0
            key = []
            for d, (lo, hi, frac, _) in enumerate(brackets):
                up = (corner >> d) & 1
                w *= frac if up else (1.0 - frac)
                key.append(self.grids[d][hi if up else lo])
            if w == 0.0:
                continue
            value = self.values.get(tuple(key))
            if value is None:
                continue  # a hole in the measured grid: the other corners carry the weight
            total_w += w
            acc += w * math.log(value)
        if total_w < 0.5:
            raise OutOfGridError(f"{self.name}: too few measured neighbours around {dict(zip(self.axes, point))}")
        return math.exp(acc / total_w), clamped


@dataclass
class KernelTables:
    """One system's tables with look-ups. With ``extrapolate`` off, a query beyond the measured grid
    raises; with it on, it is answered from the nearest measured points and counted in
    ``clamped_lookups`` so the caller can say how many of its numbers rest on such answers."""

    system: str
    meta: dict
    gemm: dict[str, Grid]
    context: dict[tuple[int, int, str], Grid]
    generation: dict[tuple[int, int, str], Grid]
    allreduce: dict[int, Grid]
    extrapolate: bool = False
    clamped_lookups: int = 0

    @classmethod
    def load(cls, system: str, root: Path | None = None, extrapolate: bool = False) -> "KernelTables":
        base = (root or tables_root()) / system
        if not base.is_dir():
            raise FileNotFoundError(f"{base}: no kernel tables for system '{system}' (known: {', '.join(SYSTEMS)})")
        meta = json.loads((base / "meta.json").read_text())
        gemm_frame = pd.read_parquet(base / "gemm.parquet")
        gemm = {dt: Grid.from_frame(g, ("m", "n", "k"), f"{system}/gemm[{dt}]") for dt, g in gemm_frame.groupby("gemm_dtype")}
        context, generation = {}, {}
        for phase, length, store in (("context", "isl", context), ("generation", "step", generation)):
            frame = pd.read_parquet(base / f"{phase}_attention.parquet")
            for (h, kv, dt), g in frame.groupby(["num_heads", "num_kv_heads", "kv_cache_dtype"]):
                store[(int(h), int(kv), str(dt))] = Grid.from_frame(
                    g, ("batch_size", length), f"{system}/{phase}_attention[h={h},kv={kv},{dt}]")
        comm = pd.read_parquet(base / "allreduce.parquet")
        allreduce = {int(n): Grid.from_frame(g, ("message_size",), f"{system}/allreduce[{n} GPUs]")
                     for n, g in comm.groupby("num_gpus")}
        return cls(system, meta, gemm, context, generation, allreduce, extrapolate)

    def _get(self, grid: Grid, point: tuple[float, ...]) -> float:
        value, clamped = grid.lookup(point, self.extrapolate)
        self.clamped_lookups += int(clamped)
        return value / 1e3

    def gemm_s(self, dtype: str, m: float, n: float, k: float) -> float:
        if dtype not in self.gemm:
            raise KeyError(f"{self.system}: no GEMM table for dtype '{dtype}' (have {sorted(self.gemm)})")
        return self._get(self.gemm[dtype], (m, n, k))

    def _attention(self, store: dict, heads: int, kv_heads: int, kv_dtype: str, point: tuple[float, float], phase: str) -> float:
        """Exact (heads, kv heads) entry, or linear in heads between entries of the same group size."""
        if (heads, kv_heads, kv_dtype) in store:
            return self._get(store[(heads, kv_heads, kv_dtype)], point)
        group = heads // kv_heads
        same = sorted(h for (h, kv, dt) in store if dt == kv_dtype and kv * group == h)
        below = [h for h in same if h < heads]
        above = [h for h in same if h > heads]
        if not below or not above:
            raise OutOfGridError(f"{self.system}/{phase}_attention: no entries around heads={heads}, kv={kv_heads}, {kv_dtype}")
        h0, h1 = below[-1], above[0]
        t0 = self._get(store[(h0, h0 // group, kv_dtype)], point)
        t1 = self._get(store[(h1, h1 // group, kv_dtype)], point)
        return t0 + (t1 - t0) * (heads - h0) / (h1 - h0)

    def has_kv_dtype(self, kv_dtype: str) -> bool:
        return any(dt == kv_dtype for (_, _, dt) in self.generation)

    def context_attention_s(self, heads: int, kv_heads: int, kv_dtype: str, batch: int, isl: int) -> float:
        return self._attention(self.context, heads, kv_heads, kv_dtype, (batch, isl), "context")

    def generation_attention_s(self, heads: int, kv_heads: int, kv_dtype: str, batch: int, kv_len: int) -> float:
        """Decode attention; where the table has holes at large batch x length (collection ran out of
        memory) and flagged extrapolation is allowed, scale the largest measured batch linearly."""
        point = (batch, max(kv_len, 1))
        try:
            return self._attention(self.generation, heads, kv_heads, kv_dtype, point, "generation")
        except OutOfGridError:
            if not self.extrapolate:
                raise
        smaller = batch // 2
        while smaller >= 1:
            try:
                t = self._attention(self.generation, heads, kv_heads, kv_dtype, (smaller, point[1]), "generation")
            except OutOfGridError:
                smaller //= 2
                continue
            self.clamped_lookups += 1
            return t * batch / smaller
        raise OutOfGridError(f"{self.system}/generation_attention: nothing measured near heads={heads}, "
                             f"kv={kv_heads}, {kv_dtype}, length={kv_len}")

    def allreduce_s(self, gpus: int, message_elements: float) -> float:
        if gpus == 1:
            return 0.0
        if gpus not in self.allreduce:
            raise KeyError(f"{self.system}: no all-reduce table for {gpus} GPUs")
        return self._get(self.allreduce[gpus], (message_elements,))

    def source(self, table: str) -> str:
        return (f"measured-kernels: {self.meta['device']}, {self.meta['framework']} {self.meta['framework_version']}, "
                f"{table} ({self.meta['source']})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="extract kernel tables from the aiconfigurator-core wheel")
    parser.add_argument("--wheel", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=tables_root())
    args = parser.parse_args(argv)
    extract(args.wheel, args.out)
    print(f"wrote tables under {args.out}")


if __name__ == "__main__":
    main()


__all__ = ["GPU_SYSTEMS", "KernelTables", "OutOfGridError", "SYSTEMS", "extract"]
