"""Build the shipped default profile set: step models, quality, and curves from the saturation search.

    python -m profiles.build_default [--out profiles/default] [--workers 2]
    python -m profiles.build_default --fit-domain-only    # (re)write only the fit-domain columns, in seconds
    python -m profiles.build_default --random-lengths-only  # (re)write only the random-length saturation rows

Step models come from a step-model source (TensorRT-LLM kernel tables by default, or ``--source
roofline`` for the analytic model); curves are produced by
running ``calibrate.search`` (the same saturation search and sweep that profile real engines) on the
simulated instance, for every workload and every SLO the case-study configuration uses.

Each kernel-composed row carries its fit domain (``profiles.fit_domain``): the longest prompt, decode
context and batch of the composed iterations its step model was fitted to
(``profiles.kernel_step_model.composition_domain``, a function of the grid and the row's KV capacity only),
so ``--fit-domain-only`` can add or refresh those columns without the slow rebuild and writes exactly what a
full build writes.

Every config also gets saturation points for the 16 random-length workloads ``random-<in>-<out>`` of the
paper's §5.1 / §8.1 (inputs 128-1,024 x outputs 64-512 tokens) under one SLO, ``RANDOM_LENGTH_SLO``: the
training data of the saturation predictor (``calibrate.predict``). They are saturation rows only (no
curves). ``--random-lengths-only`` recomposes the step models (seconds), checks them against the set's
``step_models.csv``, and replaces just these rows (and their ``workloads.csv`` rows and manifest entries),
computed by the same function as the full build, so the two write the same rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from tqdm import tqdm

from calibrate.search import SearchSettings, find_saturation, sweep, sweep_points
from calibrate.sim_probe import SimulatedProbe
from profiles.catalog import GPUS, MAX_WEIGHT_FRACTION, MODELS, QUANTS, TENSOR_PARALLEL_DEGREES, unsupported_reason
from profiles.engine_settings import PAPER_CASE_STUDY
from profiles.fit_domain import FIT_DOMAIN_COLUMNS, UNKNOWN_DOMAIN, FitDomain
from profiles.kernel_step_model import IterationComposer, composition_domain, kernel_step_model
from profiles.kernel_tables import GPU_SYSTEMS, SYSTEMS, KernelTables
from profiles.power_model import PowerModel, derive_power_model, fit_power_model
from profiles.profile_set import LatencySlo, ProfileSet, default_profile_path, write_profile_set
from profiles.quality import default_quality_table
from profiles.roofline import ROOFLINE_SOURCE, roofline_step_model
from profiles.schema import CURVE_METRICS, ConfigKey
from profiles.step_model import StepModel
from traces.workloads import RANDOM_LENGTH_PAIRS, describe_workload, random_workload, random_workload_pair, workload_lengths

PROBE_SEED = 0
PROBE_REQUESTS = 3000
# A loose SLO whose saturation bounds the sweep when a config cannot meet any task SLO.
CAPACITY_SLO = LatencySlo(ttft_s=10.0, tpot_s=0.5)
# The random-length workloads' SLO. The paper does not state the SLO of its random-input saturation points
# (§8.1, data source 3); we use its chat SLO (§8.3 chat-S: P90 TTFT 1 s, P90 TPOT 0.2 s), the tightest-TTFT
# SLO the default set already searches on a chat workload (ShareGPT). HumanEval's 0.15 s TTFT would leave
# 1,024-token prompts unservable on most large configs (saturation 0, no percentage error defined).
RANDOM_LENGTH_SLO = LatencySlo(ttft_s=1.0, tpot_s=0.2)
RANDOM_LENGTH_SLO_SOURCE = (
    "assumption: the qMeter paper does not state the SLO of its random-input saturation points (§8.1); its chat "
    "SLO (§8.3 chat-S, P90 TTFT 1 s / P90 TPOT 0.2 s) is used for every random-length workload")
RANDOM_LENGTH_WORKLOADS = tuple(random_workload(i, o) for i, o in RANDOM_LENGTH_PAIRS)
KERNEL_FIT_DOMAIN_SOURCE = (
    "derived: profiles.kernel_step_model.composition_domain: per row, the longest prompt (PROMPT_LENGTHS, up to "
    "4,096 tokens), the longest per-sequence decode KV length (DECODE_KV_LENGTHS, up to 2,048 tokens, where batch x "
    "length fits the row's KV capacity) and the most sequences in one iteration (DECODE_BATCHES up to 8,192 within "
    "the KV capacity, and the mixed iterations) of the composed iterations its step model was fitted to")
ROOFLINE_FIT_DOMAIN_SOURCE = "unknown: analytic roofline step models are not fitted to iterations (empty columns)"

# (config, step model, provenance, source, fit domain) of one step-model row
ConfigRow = tuple[ConfigKey, StepModel, str, str, FitDomain]


@dataclass(frozen=True, slots=True)
class ProfilingTarget:
    key: ConfigKey
    step: StepModel
    workloads: tuple[tuple[str, tuple[LatencySlo, ...]], ...]


def case_study_slos() -> dict[str, tuple[LatencySlo, ...]]:
    """Which SLOs to search per workload: those of the case-study pools (experiments/conf)."""
    conf = resources.files("experiments") / "conf"
    pools = OmegaConf.load(str(conf / "cluster" / "case_study.yaml")).pools
    slos = OmegaConf.load(str(conf / "slo" / "case_study.yaml")).tasks
    out: dict[str, list[LatencySlo]] = {}
    for task, pool in pools.items():
        slo = LatencySlo(float(slos[task].ttft_s), float(slos[task].tpot_s))
        out.setdefault(str(pool.workload), [])
        if slo not in out[str(pool.workload)]:
            out[str(pool.workload)].append(slo)
    return {w: tuple(s) for w, s in out.items()}


def roofline_configs(gpus: Iterable[str] = ("a100-40gb", "h100-80gb")) -> Iterable[ConfigRow]:
    for gpu in (GPUS[g] for g in gpus):
        for model in MODELS.values():
            for quant in QUANTS.values():
                for tp in TENSOR_PARALLEL_DEGREES:
                    if unsupported_reason(gpu, model, quant, tp) is None:
                        yield (ConfigKey(gpu.name, model.name, quant.name, tp),
                               roofline_step_model(gpu, model, quant, tp), "derived", ROOFLINE_SOURCE, UNKNOWN_DOMAIN)


def _power_models() -> dict[str, PowerModel]:
    """The NVML-fitted H100 power model and its spec-ratio derivations for the other GPUs."""
    h100_power = fit_power_model()
    return {name: h100_power if name == "h100-80gb" else derive_power_model(h100_power, GPUS["h100-80gb"], gpu)
            for name, gpu in GPUS.items()}


def compose_row(key: ConfigKey, tables: dict[str, KernelTables], power: dict,
                max_weight_fraction: float = MAX_WEIGHT_FRACTION) -> ConfigRow:
    """One config's step model composed from the kernel tables of its GPU's system, as the default set builds it."""
    gpu, model, quant = GPUS[key.gpu], MODELS[key.model], QUANTS[key.quant]
    system = GPU_SYSTEMS[key.gpu]
    comp = IterationComposer(tables[system], tables["a100_sxm"], tables["h100_sxm"], gpu, model, quant, key.tp,
                             max_weight_fraction)
    result = kernel_step_model(comp, power[key.gpu])
    source = result.source
    if result.clamped_lookups:
        source += f"; {result.clamped_lookups} kernel look-ups answered by flagged extrapolation"
    return key, result.step, result.provenance, source, result.domain


def compose_step_model(key: ConfigKey, max_weight_fraction: float = MAX_WEIGHT_FRACTION) -> StepModel:
    """A single config's kernel-composed step model (for configs outside a profile set, e.g. benchmarks)."""
    tables = {system: KernelTables.load(system, extrapolate=True) for system in SYSTEMS}
    return compose_row(key, tables, _power_models(), max_weight_fraction)[1]


def kernel_configs(gpus: Iterable[str] = tuple(GPU_SYSTEMS)) -> Iterable[ConfigRow]:
    """Step models composed from TensorRT-LLM kernel tables, power from the NVML fit (default set)."""
    tables = {system: KernelTables.load(system, extrapolate=True) for system in SYSTEMS}
    power = _power_models()
    for gpu_name in gpus:
        gpu = GPUS[gpu_name]
        for model in MODELS.values():
            for quant in QUANTS.values():
                for tp in TENSOR_PARALLEL_DEGREES:
                    if unsupported_reason(gpu, model, quant, tp) is None:
                        yield compose_row(ConfigKey(gpu.name, model.name, quant.name, tp), tables, power)


def _lengths(workload: str) -> tuple[np.ndarray, np.ndarray]:
    return workload_lengths(workload).sample(PROBE_REQUESTS, np.random.default_rng(PROBE_SEED))


def _saturation_row(key: ConfigKey, workload: str, slo: LatencySlo, result, extra: str = "") -> dict:
    energy = result.passing.energy_per_output_token_j if result.passing is not None else float("nan")
    return {
        "gpu": key.gpu, "model": key.model, "quant": key.quant, "tp": key.tp,
        "workload": workload, "slo_ttft_s": slo.ttft_s, "slo_tpot_s": slo.tpot_s,
        "saturation_qps": result.saturation_qps,
        "energy_per_output_token_j": energy,
        "probes": len(result.probes),
        "provenance": "derived",
        "source": (f"derived: calibrate.search.find_saturation (rel_tol 0.02) on the simulated instance "
                   f"(sim.instance) with this config's step model; Poisson bursts of 120 s, "
                   f"200-{PROBE_REQUESTS} requests, seed {PROBE_SEED}, {workload} lengths{extra}"),
    }


def random_length_saturations(key: ConfigKey, step: StepModel) -> list[dict]:
    """Saturation rows of one config on the 16 random-length workloads under ``RANDOM_LENGTH_SLO``: the same
    search, probe, seed and request count as the case-study rows (start at 1 req/s, rel_tol 0.02)."""
    rows = []
    for workload in RANDOM_LENGTH_WORKLOADS:
        inp, out = _lengths(workload)
        probe = SimulatedProbe(step, inp, out, seed=PROBE_SEED, max_requests=PROBE_REQUESTS)
        result = find_saturation(probe, RANDOM_LENGTH_SLO, SearchSettings(start_qps=1.0, min_qps=0.01))
        rows.append(_saturation_row(key, workload, RANDOM_LENGTH_SLO, result,
                                    f" (uniform within +-25 % of the target pair); SLO: {RANDOM_LENGTH_SLO_SOURCE}"))
    return rows


def _random_length_task(item: tuple[ConfigKey, StepModel]) -> list[dict]:
    return random_length_saturations(*item)


def random_length_workload_rows() -> list[dict]:
    rows = []
    for workload in RANDOM_LENGTH_WORKLOADS:
        inp, outp = _lengths(workload)
        rows.append({"workload": workload, "mean_input_tokens": float(inp.mean()),
                     "mean_output_tokens": float(outp.mean()), "provenance": "derived",
                     "source": f"{describe_workload(workload)}; means of the {PROBE_REQUESTS} pairs used by the probes"})
    return rows


def random_length_manifest() -> dict:
    return {"workloads": list(RANDOM_LENGTH_WORKLOADS), "slo": [RANDOM_LENGTH_SLO.ttft_s, RANDOM_LENGTH_SLO.tpot_s],
            "slo_source": RANDOM_LENGTH_SLO_SOURCE, "tables": "saturation.csv and workloads.csv only (no curves)",
            "command": "python -m profiles.build_default --random-lengths-only"}


def profile_target(target: ProfilingTarget) -> tuple[list[dict], list[dict]]:
    """Saturation search per SLO and a sweep per workload, on the simulated instance."""
    curves: list[dict] = []
    saturations: list[dict] = []
    key = target.key
    base = {"gpu": key.gpu, "model": key.model, "quant": key.quant, "tp": key.tp}
    for workload, slos in target.workloads:
        inp, out = _lengths(workload)
        probe = SimulatedProbe(target.step, inp, out, seed=PROBE_SEED, max_requests=PROBE_REQUESTS)
        found = []
        for slo in slos:
            result = find_saturation(probe, slo, SearchSettings(start_qps=1.0, min_qps=0.01))
            found.append(result.saturation_qps)
            saturations.append(_saturation_row(key, workload, slo, result))
        top = max(found) if found else 0.0
        if top <= 0:
            top = find_saturation(probe, CAPACITY_SLO, SearchSettings(start_qps=1.0, min_qps=0.01)).saturation_qps
        if top <= 0:
            continue
        for point in sweep(probe, sweep_points(top)):
            curves.append({
                **base, "workload": workload, "qps": point.qps,
                **{m: getattr(point, m) for m in CURVE_METRICS}, "n_requests": point.n_requests,
                "provenance": "derived",
                "source": (f"derived: calibrate.search.sweep on the simulated instance with this config's step "
                           f"model; Poisson bursts of 120 s, 200-{PROBE_REQUESTS} requests, seed {PROBE_SEED}"),
            })
    return curves, saturations


def build(
    out: Path,
    configs: Iterable[ConfigRow],
    workers: int,
    name: str,
    description: str,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
    fit_domain_source: str = KERNEL_FIT_DOMAIN_SOURCE,
) -> Path:
    slos = case_study_slos()
    workloads = tuple((w, s) for w, s in sorted(slos.items()))
    step_rows, targets = [], []
    for key, step, provenance, source, domain in configs:
        step_rows.append({"gpu": key.gpu, "model": key.model, "quant": key.quant, "tp": key.tp,
                          **step.as_dict(), **domain.as_columns(), "provenance": provenance, "source": source})
        targets.append(ProfilingTarget(key, step, workloads))
    curves: list[dict] = []
    saturations: list[dict] = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for c, s in progress(pool.map(profile_target, targets, chunksize=2)):
                curves += c
                saturations += s
    else:
        for c, s in progress(map(profile_target, targets)):
            curves += c
            saturations += s
    # random-length rows after all case-study rows, in config order: what --random-lengths-only appends
    saturations += _random_length_rows([(t.key, t.step) for t in targets], workers, progress)
    workload_rows = []
    for workload, _ in workloads:
        inp, outp = _lengths(workload)
        workload_rows.append({"workload": workload, "mean_input_tokens": float(inp.mean()),
                              "mean_output_tokens": float(outp.mean()), "provenance": "derived",
                              "source": f"{describe_workload(workload)}; means of the {PROBE_REQUESTS} pairs used by the probes"})
    workload_rows += random_length_workload_rows()
    manifest = {
        "name": name,
        "description": description,
        "created": dt.date.today().isoformat(),
        "command": "python -m profiles.build_default",
        "configs": len(step_rows),
        "fit_domain": fit_domain_source,
        "workloads": {w: [[s.ttft_s, s.tpot_s] for s in sl] for w, sl in workloads},
        "random_length_workloads": random_length_manifest(),
        # the engine limits every step model and curve of this set was produced under (profiles.engine_settings)
        "engine_settings": {"name": PAPER_CASE_STUDY.name, "max_batch": PAPER_CASE_STUDY.max_batch,
                            "max_num_tokens": PAPER_CASE_STUDY.max_num_tokens,
                            "kv_cache_free_fraction": PAPER_CASE_STUDY.kv_cache_free_fraction,
                            "chunked_context": PAPER_CASE_STUDY.chunked_context, "source": PAPER_CASE_STUDY.source},
    }
    tables = {
        "step_models": pd.DataFrame(step_rows),
        "curves": pd.DataFrame(curves),
        "saturation": pd.DataFrame(saturations),
        "quality": default_quality_table(),
        "workloads": pd.DataFrame(workload_rows),
    }
    return write_profile_set(out, manifest, tables)


def write_fit_domain(path: Path) -> Path:
    """Add (or refresh) the fit-domain columns of a kernel-composed set's ``step_models.csv`` in place, from
    each row's KV capacity, exactly as ``build`` writes them; every other cell is left as it was."""
    csv = path / "step_models.csv"
    frame = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    domains = [composition_domain(int(c)) for c in frame["kv_capacity_tokens"]]
    for column in FIT_DOMAIN_COLUMNS:
        frame[column] = [d.as_columns()[column] for d in domains]
    # last, where write_profile_set puts optional columns
    frame = frame[[c for c in frame.columns if c not in FIT_DOMAIN_COLUMNS] + list(FIT_DOMAIN_COLUMNS)]
    tmp = csv.with_name(f".{csv.name}.tmp")
    frame.to_csv(tmp, index=False, float_format="%.10g")
    os.replace(tmp, csv)
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["fit_domain"] = KERNEL_FIT_DOMAIN_SOURCE
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    ProfileSet.load(path)  # still a valid set
    return csv


def _random_length_rows(items: list[tuple[ConfigKey, StepModel]], workers: int,
                        progress: Callable[[Iterable], Iterable]) -> list[dict]:
    rows: list[dict] = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for r in progress(pool.map(_random_length_task, items, chunksize=4)):
                rows += r
    else:
        for r in progress(map(_random_length_task, items)):
            rows += r
    return rows


def _same_step_rows(path: Path, configs: list[ConfigRow]) -> None:
    """The recomposed step models must be those of the set (as written, to %.10g), or the rows would not be the
    full build's."""
    frame = pd.read_csv(path / "step_models.csv", keep_default_na=False, na_values=[""])
    if len(frame) != len(configs):
        raise SystemExit(f"{path / 'step_models.csv'}: {len(frame)} rows, the build composes {len(configs)}; "
                         f"run the full build")
    for row_no, (row, (key, step, *_)) in enumerate(zip(frame.to_dict("records"), configs)):
        if (row["gpu"], row["model"], row["quant"], int(row["tp"])) != (key.gpu, key.model, key.quant, key.tp):
            raise SystemExit(f"{path / 'step_models.csv'}: row {row_no + 2} is not {key.label}; run the full build")
        for name, value in step.as_dict().items():
            if float(f"{float(value):.10g}") != float(row[name]):
                raise SystemExit(f"{path / 'step_models.csv'}: row {row_no + 2} ({key.label}) field '{name}' is "
                                 f"{row[name]!r}, the build composes {value!r}; run the full build")


def write_random_lengths(path: Path, workers: int, configs: list[ConfigRow] | None = None,
                         progress: Callable[[Iterable], Iterable] = lambda it: it) -> Path:
    """Replace (or add) the random-length saturation rows of a set in place, as ``build`` writes them: every
    other row of ``saturation.csv`` and ``workloads.csv`` is left as it was; curves and step models are not
    touched. ``configs`` defaults to the kernel-composed default configs, checked against the set's step models."""
    if configs is None:
        configs = list(kernel_configs())
        _same_step_rows(path, configs)
    rows = _random_length_rows([(key, step) for key, step, *_ in configs], workers, progress)
    csv = path / "saturation.csv"
    frame = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    keep = frame[frame["workload"].map(lambda w: random_workload_pair(str(w)) is None)]
    new = pd.concat([keep, pd.DataFrame(rows, columns=frame.columns)], ignore_index=True)
    wcsv = path / "workloads.csv"
    wframe = pd.read_csv(wcsv, keep_default_na=False, na_values=[""])
    wkeep = wframe[wframe["workload"].map(lambda w: random_workload_pair(str(w)) is None)]
    wnew = pd.concat([wkeep, pd.DataFrame(random_length_workload_rows(), columns=wframe.columns)], ignore_index=True)
    for target, table in ((csv, new), (wcsv, wnew)):
        tmp = target.with_name(f".{target.name}.tmp")
        table.to_csv(tmp, index=False, float_format="%.10g")
        os.replace(tmp, target)
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["random_length_workloads"] = random_length_manifest()
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    ProfileSet.load(path)  # still a valid set
    return csv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_profile_path())
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--source", choices=("kernels", "roofline"), default="kernels")
    parser.add_argument("--fit-domain-only", action="store_true",
                        help="only add/refresh the fit-domain columns of the kernel-composed set at --out")
    parser.add_argument("--random-lengths-only", action="store_true",
                        help="only add/refresh the random-length saturation rows of the kernel-composed set at --out")
    args = parser.parse_args(argv)
    if args.fit_domain_only:
        print(f"wrote {write_fit_domain(args.out)}")
        return
    if args.random_lengths_only:
        import time
        start = time.perf_counter()
        configs = list(kernel_configs())
        _same_step_rows(args.out, configs)
        csv = write_random_lengths(args.out, args.workers, configs, progress=lambda it: tqdm(
            it, total=len(configs), desc="random-length saturation", unit="config"))
        print(f"wrote {len(configs) * len(RANDOM_LENGTH_WORKLOADS)} random-length rows to {csv} "
              f"in {time.perf_counter() - start:.0f} s")
        return
    fit_domain_source = KERNEL_FIT_DOMAIN_SOURCE
    if args.source == "kernels":
        configs = list(kernel_configs())
        description = (
            "Step models composed from silicon-measured TensorRT-LLM kernel tables (aiconfigurator-core: "
            "A100-SXM TRT-LLM 1.0.0, H100/H200-SXM TRT-LLM 1.3.0rc20) and fitted to StepModel; methods without "
            "tables derived by named rules; power from NVML measurements on an H100 (A100/H200 scaled by spec "
            "ratios). A100-40GB, A100-80GB, H100-80GB, H200-141GB; Llama-2 7B/13B/70B, CodeLlama-34B; FP16 + 11 methods; "
            "TP 1/2/4/8. Curves from the saturation search and sweep on the simulated instance; quality from "
            "literature and labelled assumptions.")
    else:
        configs = list(roofline_configs())
        fit_domain_source = ROOFLINE_FIT_DOMAIN_SOURCE
        description = (
            "Roofline-derived step models (profiles/roofline.py) for A100-40GB and H100-80GB, Llama-2 7B/13B/70B "
            "and CodeLlama-34B, FP16 and 11 quantization methods, TP 1/2/4/8; curves from the saturation search "
            "and sweep on the simulated instance; quality from literature and labelled assumptions.")
    path = build(
        args.out, configs, args.workers, "default", description,
        progress=lambda it: tqdm(it, total=len(configs), desc="profiling configs", unit="config"),
        fit_domain_source=fit_domain_source,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
