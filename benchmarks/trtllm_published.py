"""qfleet against NVIDIA's published TensorRT-LLM throughput (perf-overview, v0.13.0): the standing comparison.

    python benchmarks/trtllm_published.py [--profiles profiles/default] [--out benchmarks/results/trtllm_published]

NVIDIA measured these rows with ``trtllm-bench throughput``: every request queued at once, fixed input and output
lengths, in-flight batching with the GUARANTEED_NO_EVICT scheduler, engines built by ``trtllm-bench build`` with
per-model limits (``benchmarks/data/trtllm_v0.13.0_perf_overview.md`` has the source, version and settings).
qfleet reproduces each row with one replica of the matching config under the same engine settings
(``TRTLLM_BENCH_V013``): the row's request count, all arriving at t = 0, output tokens over the last finish time.

Which rows may tune the model: only A100 and H100 rows (``FIT_GPUS``); the H200 rows are a held-out check,
reported and never used to choose anything. The report says which is which.

Step models: the shipped default profile set's row when the config is in it, else composed from the kernel
tables exactly as ``profiles.build_default`` would (``a100-80gb`` rows, configs outside the default grid). A row
whose config qfleet does not deploy (``profiles.catalog.unsupported_reason``) is listed as not modelled, with the
reason, and left out of every median.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from profiles.catalog import (  # noqa: E402
    GPUS, MAX_WEIGHT_FRACTION, MODELS, QUANTS, engine_weight_fraction, kv_capacity_tokens, unsupported_reason)
from profiles.engine_settings import EngineSettings  # noqa: E402
from profiles.profile_set import ProfileSet, default_profile_path  # noqa: E402
from profiles.schema import ConfigKey  # noqa: E402
from profiles.step_model import StepModel  # noqa: E402
from sim.instance import replay_single_instance  # noqa: E402
from sim.requests import FINISHED, RequestTable  # noqa: E402
from traces.trace import Trace  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "trtllm_v0.13.0_perf_overview.csv"
COLUMNS = ("hf_model", "model", "gpu", "precision", "tp", "input_tokens", "output_tokens", "output_tokens_per_s")
# trtllm-bench --quantization FP8 quantizes weights, activations and the KV cache to FP8 (perf-overview, "Engine
# Building": "If you specify FP8 quantization, the KV cache will automatically be set to FP8 as well").
PRECISION_TO_QUANT = {"fp8": "w8a8kv8-fp", "fp16": "fp16"}
FIT_GPUS = ("a100-80gb", "h100-80gb")  # rows that may tune the model; h200-141gb rows are held out
HELD_OUT_GPUS = ("h200-141gb",)
# Requests per length pair, as the perf-overview's dataset table states.
NUM_REQUESTS = {(128, 128): 30000, (128, 2048): 3000, (128, 4096): 1500, (2048, 128): 3000, (2048, 2048): 1500,
                (5000, 500): 1500, (1000, 1000): 3000, (500, 2000): 3000, (20000, 2000): 1000}

TRTLLM_BENCH_SOURCE = (
    "literature: trtllm-bench build's benchmark_config.yml (NVIDIA/TensorRT-LLM tensorrt_llm/bench/build, the "
    "v0.12-0.13 benchmark flow; max_batch_size / max_num_tokens per model, TP and max sequence length); "
    "literature: trtllm-bench throughput --kv_cache_free_gpu_mem_fraction default 0.90; inferred: chunked context "
    "on (the published 70B TP2 rows run 5,000-token prompts on an engine whose max_num_tokens is 2,048)")
# (model, tp, max sequence length or None for 'general') -> (max_batch, max_num_tokens)
_BENCH_LIMITS = {
    ("llama2-7b", 1, None): (4096, 8192),
    ("llama2-70b", 2, None): (2048, 2048),
    ("llama2-70b", 4, None): (4096, 8192),
    ("llama2-70b", 4, 4224): (256, 8192),
    ("llama2-70b", 8, None): (8192, 16384),
    ("llama2-70b", 8, 2176): (1024, 16384),
}
# trtllm-bench has no entry for Llama-2-70B TP1: TensorRT-LLM's BuildConfig defaults (assumption: what it fell back to)
_BUILD_DEFAULT_LIMITS = (2048, 8192)
BENCH_KV_FRACTION = 0.90


class PublishedDataError(ValueError):
    """A published-rows file that cannot be read; the message names file, row and field."""


def bench_settings(model: str, tp: int, input_tokens: int, output_tokens: int) -> EngineSettings:
    """The engine limits trtllm-bench built this row's engine with."""
    seq = input_tokens + output_tokens
    limits = _BENCH_LIMITS.get((model, tp, seq)) or _BENCH_LIMITS.get((model, tp, None))
    source = TRTLLM_BENCH_SOURCE
    if limits is None:
        limits = _BUILD_DEFAULT_LIMITS
        source += f"; assumption: {model} TP{tp} has no benchmark_config.yml entry, BuildConfig defaults used"
    return EngineSettings(name=f"trtllm_bench_v0.13[{model},tp{tp},seq{seq}]", max_batch=limits[0],
                          max_num_tokens=limits[1], kv_cache_free_fraction=BENCH_KV_FRACTION, chunked_context=True,
                          source=source)


def load_published(path: Path = DATA) -> pd.DataFrame:
    """The published rows, validated: every field present and in range, names known to the catalog."""
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise PublishedDataError(f"{path}: cannot read published rows: {exc}") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise PublishedDataError(f"{path}: missing column(s) {', '.join(missing)}")
    for i, row in frame.iterrows():
        where = f"{path}: row {i + 2}"
        if row["model"] not in MODELS:
            raise PublishedDataError(f"{where}, field 'model': unknown model {row['model']!r}")
        if row["gpu"] not in GPUS:
            raise PublishedDataError(f"{where}, field 'gpu': unknown GPU {row['gpu']!r}")
        if row["precision"] not in PRECISION_TO_QUANT:
            raise PublishedDataError(f"{where}, field 'precision': {row['precision']!r} is not one of "
                                     f"{', '.join(PRECISION_TO_QUANT)}")
        for field_name in ("tp", "input_tokens", "output_tokens", "output_tokens_per_s"):
            value = pd.to_numeric(row[field_name], errors="coerce")
            if not (isinstance(value, (int, float, np.number)) and math.isfinite(value) and value > 0):
                raise PublishedDataError(f"{where}, field '{field_name}': must be a positive number, "
                                         f"got {row[field_name]!r}")
        if (int(row["input_tokens"]), int(row["output_tokens"])) not in NUM_REQUESTS:
            raise PublishedDataError(f"{where}: length pair {row['input_tokens']}/{row['output_tokens']} has no "
                                     "request count in the perf-overview's dataset table")
    return frame


def apply_settings(step: StepModel, key: ConfigKey, settings: EngineSettings) -> StepModel:
    """The step model under an engine's limits; KV capacity from the catalog at the settings' memory fraction."""
    capacity = kv_capacity_tokens(GPUS[key.gpu], MODELS[key.model], QUANTS[key.quant], key.tp,
                                  settings.kv_cache_free_fraction)
    return replace(step, max_batch=settings.max_batch, max_num_tokens=settings.max_num_tokens,
                   kv_capacity_tokens=capacity, chunked_context=int(settings.chunked_context))


def offline_throughput(step: StepModel, input_tokens: int, output_tokens: int, requests: int) -> tuple[float, int]:
    """trtllm-bench's offline scenario on one replica: (output tokens/s over the last finish, rejected requests)."""
    n = int(requests)
    trace = Trace(np.zeros(n), np.full(n, input_tokens, dtype=np.int64), np.full(n, output_tokens, dtype=np.int64),
                  np.zeros(n, dtype=np.int64), ("bench",), "trtllm-bench offline")
    table = RequestTable(trace)
    replay_single_instance(step, table)
    finished = [f for f, status in zip(table.finish_s, table.status) if status == FINISHED]
    rejected = n - len(finished)
    if not finished:
        return 0.0, rejected
    return len(finished) * output_tokens / max(finished), rejected


class StepModels:
    """Step models per config: the profile set's row when it has one, else composed from kernel tables."""

    def __init__(self, profiles: ProfileSet | None):
        self.profiles = profiles
        self._known = set(profiles.configs()) if profiles is not None else set()
        self._composed: dict[ConfigKey, StepModel] = {}

    def get(self, key: ConfigKey) -> tuple[StepModel, str]:
        if key in self._known:
            return self.profiles.step(key), "profile set"
        if key not in self._composed:
            from profiles.build_default import compose_step_model
            self._composed[key] = compose_step_model(key, engine_weight_fraction(GPUS[key.gpu]))
        return self._composed[key], "composed (not in the profile set)"


def compare(published: pd.DataFrame, profiles: ProfileSet | None) -> pd.DataFrame:
    """Every published row beside qfleet's figure (``profiles`` None: compose every step model afresh)."""
    models = StepModels(profiles)
    rows = []
    for _, row in published.iterrows():
        quant = PRECISION_TO_QUANT[row["precision"]]
        key = ConfigKey(row["gpu"], row["model"], quant, int(row["tp"]))
        isl, osl = int(row["input_tokens"]), int(row["output_tokens"])
        out = {**{c: row[c] for c in COLUMNS}, "quant": quant,
               "split": "held-out" if row["gpu"] in HELD_OUT_GPUS else "fit"}
        gpu = GPUS[key.gpu]
        reason = unsupported_reason(gpu, MODELS[key.model], QUANTS[key.quant], key.tp, engine_weight_fraction(gpu))
        if reason is not None:
            rows.append({**out, "status": "not modelled", "note": reason})
            continue
        # TensorRT-LLM loaded configs qfleet's planning rule (MAX_WEIGHT_FRACTION) would not deploy: compared too,
        # flagged, since their KV cache is a few GB
        planning = unsupported_reason(gpu, MODELS[key.model], QUANTS[key.quant], key.tp, MAX_WEIGHT_FRACTION)
        out["note"] = "outside qfleet's planning rule: " + planning if planning else ""
        settings = bench_settings(key.model, key.tp, isl, osl)
        base, origin = models.get(key)
        step = apply_settings(base, key, settings)
        qfleet, rejected = offline_throughput(step, isl, osl, NUM_REQUESTS[(isl, osl)])
        rows.append({**out, "status": "rejected" if rejected else "ok", "step_model": origin,
                     "max_batch": step.max_batch, "max_num_tokens": step.max_num_tokens,
                     "kv_capacity_tokens": step.kv_capacity_tokens, "qfleet_output_tokens_per_s": qfleet,
                     "ratio": qfleet / float(row["output_tokens_per_s"]), "rejected": rejected,
                     "note": "; ".join(n for n in (out["note"], f"{rejected} requests rejected" if rejected else "") if n)})
    return pd.DataFrame(rows)


def summarize(result: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Median ratio and median |ratio - 1| per group, over the rows qfleet ran."""
    ran = result[result["status"] == "ok"].copy()
    ran["abs_error"] = (ran["ratio"] - 1.0).abs()
    ran["lengths"] = ran["input_tokens"].astype(str) + "/" + ran["output_tokens"].astype(str)
    out = {}
    for name, by in (("split", ["split"]), ("gpu", ["gpu", "precision"]), ("tp", ["split", "tp"]),
                     ("lengths", ["lengths"]), ("model", ["model"])):
        g = ran.groupby(by)
        out[name] = pd.DataFrame({"rows": g.size(), "median_ratio": g["ratio"].median(),
                                  "median_abs_error": g["abs_error"].median(), "worst_ratio": g["ratio"].min(),
                                  "best_ratio": g["ratio"].max()}).reset_index()
    return out


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    value: float
    limit: str
    met: bool


def targets(result: pd.DataFrame) -> list[Target]:
    """The issue's targets: median |ratio - 1| <= 10 % held out and overall, no TP median below 0.85, and no row
    rejected (prompts longer than one iteration's budget run in chunks)."""
    ran = result[result["status"] == "ok"]
    held = ran[ran["split"] == "held-out"]
    out = []
    for name, part in (("held-out (H200) median |ratio - 1|", held), ("overall median |ratio - 1|", ran)):
        err = float((part["ratio"] - 1.0).abs().median()) if len(part) else math.nan
        out.append(Target(name, err, "<= 0.10", err <= 0.10))
    tp_medians = ran.groupby("tp")["ratio"].median()
    worst_tp = int(tp_medians.idxmin()) if len(tp_medians) else 0
    out.append(Target(f"lowest TP median ratio (TP{worst_tp})", float(tp_medians.min()), ">= 0.85",
                      float(tp_medians.min()) >= 0.85))
    rejected = int((result["status"] == "rejected").sum())
    out.append(Target("rows with rejected requests", rejected, "== 0", rejected == 0))
    return out


def _table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in frame.iterrows():
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(result: pd.DataFrame, profiles_path: Path | str) -> str:
    summary = summarize(result)
    lines = ["# qfleet vs NVIDIA's published TensorRT-LLM throughput (perf-overview v0.13.0)", "",
             f"Step models: `{profiles_path}`. Regenerate: `python benchmarks/trtllm_published.py`.",
             "Rows: `benchmarks/data/trtllm_v0.13.0_perf_overview.csv` (source and settings beside it). "
             "Ratio = qfleet / published output tokens per second. Fit rows (A100, H100) may tune the model; "
             "held-out rows (H200) never do.", "", "## Targets (misses first)", "",
             "| target | value | limit | met |", "|---|---|---|---|"]
    for t in sorted(targets(result), key=lambda t: t.met):
        lines.append(f"| {t.name} | {t.value:.3f} | {t.limit} | {'yes' if t.met else '**no**'} |")
    for name, title in (("split", "By split"), ("gpu", "By GPU and precision"), ("tp", "By split and TP"),
                        ("lengths", "By length pair (input/output)"), ("model", "By model")):
        lines += ["", f"## {title}", "", _table(summary[name])]
    not_run = result[result["status"] != "ok"]
    lines += ["", f"## Rows not compared ({len(not_run)})", ""]
    for _, r in not_run.iterrows():
        lines.append(f"- {r['model']} {r['gpu']} {r['precision']} TP{r['tp']} {r['input_tokens']}/{r['output_tokens']}:"
                     f" {r['status']} ({r['note']})")
    worst = result[result["status"] == "ok"].assign(err=lambda f: (f["ratio"] - 1).abs()).nlargest(10, "err")
    lines += ["", "## Largest errors", "",
              _table(worst[["split", "model", "gpu", "precision", "tp", "input_tokens", "output_tokens",
                            "output_tokens_per_s", "qfleet_output_tokens_per_s", "ratio"]])]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=Path, default=default_profile_path())
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "trtllm_published")
    parser.add_argument("--compose", action="store_true",
                        help="compose every step model from the kernel tables now instead of reading the profile set "
                             "(what a rebuilt default set would hold)")
    args = parser.parse_args(argv)
    try:
        published = load_published(args.data)
    except PublishedDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = compare(published, None if args.compose else ProfileSet.load(args.profiles))
    text = report(result, "composed from the kernel tables (--compose)" if args.compose else args.profiles)
    _write_atomic(args.out / "report.md", text)
    _write_atomic(args.out / "rows.csv", result.to_csv(index=False))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
