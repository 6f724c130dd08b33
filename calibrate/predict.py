"""Saturation prediction (qMeter paper §8.1): XGBoost on a profile set's saturation points, against a
step model fitted on a few fixed-concurrency runs.

    python -m calibrate.predict [--profiles PATH] [--regime paper|full|both] [--seeds 0 1 2 3 4] [--workers 2]

**Data** (``saturation_dataset``): one row per (config, workload) of the set's ``saturation.csv`` at the
workload's tightest searched SLO (ShareGPT: chat-S 1 s / 0.2 s; HumanEval 0.15 / 0.2; NewsQA 5 / 0.2; the
random-length workloads 1 / 0.2); rows whose saturation is 0 (the SLO is never met) have no percentage error
and are left out, and counted. Features as the paper's: model size (billions of parameters), quantization
method, GPU type, TP, input length, output length (the workload's mean lengths from ``workloads.csv``; a
random-length workload's target pair). Target: saturation QPS.

**Regimes.** ``paper`` mimics the paper's three data sources: H100 named workloads (all methods, TP 1-8),
A100-40GB named workloads (TP 1-4, its 8 non-FP8 methods) and random-length workloads of CodeLlama-34B TP1 on
the H100 (12 methods x 16 pairs = 192 points, as the paper's). ``full`` is every row of the set (4 GPUs,
random-length workloads on every config).

**Split schemes** (``splits``), every one seeded:

1. random splits (8:2, and 9:1 on all data) of: all data; without HumanEval; H100 only; random-length
   workloads only; H100 only without HumanEval; MAPE averaged over the seeds;
2. unseen lengths: train on everything but the random-length rows with one input (or output) length, test on
   those rows, for each of the four lengths;
3. cross-GPU: train on the H100 (all) + A100 HumanEval and NewsQA, test on A100 ShareGPT (the paper's); the
   swap; the first with the random-length rows added; and (``full``) the H200 left out entirely.

**Predictors** (``PREDICTORS``): ``xgb`` (XGBoost on the raw target, as the paper), ``xgb-log`` (the same on
log QPS), and ``fit-runs``: no training set at all; per config, fit ``calibrate.fit``'s step model on 11
simulated fixed-concurrency runs of it (``calibrate.sim_fit_runs``: 5 single-client prefills, 6 closed-loop
decodes, iteration times jittered 3 %), then run the saturation search on the simulated instance built from
the fitted model, with the same probes, lengths, seed and SLO that produced the row. On the default profiles the
truth *is* a step model, so ``fit-runs`` gets the functional form for free; on a real engine its error is the
simulator's (the README's H200 calibration: 16 % off the measured saturation).
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from profiles.catalog import MODELS
from profiles.profile_set import LatencySlo, ProfileSet, default_profile_path
from profiles.schema import ConfigKey
from traces.workloads import random_workload_pair

FEATURES = ("model_size_b", "quant", "gpu", "tp", "input_tokens", "output_tokens")
CATEGORICAL = ("quant", "gpu")
PAPER_GPU, CROSS_GPU = "h100-80gb", "a100-40gb"  # the paper's two GPUs
PAPER_RANDOM_CONFIG = ("h100-80gb", "codellama-34b", 1)  # the paper's random-input data: 34B TP1 on the H100
INPUT_LENGTHS = (128, 256, 512, 1024)
OUTPUT_LENGTHS = (64, 128, 256, 512)

# --- data ------------------------------------------------------------------------------------------


def model_size_b(model: str) -> float:
    try:
        return round(MODELS[model].total_params / 1e9, 1)
    except KeyError:
        raise ValueError(f"model {model!r} is not in profiles.catalog.MODELS; its size is a feature") from None


def saturation_dataset(profiles: ProfileSet) -> tuple[pd.DataFrame, int]:
    """(one row per config and workload at the workload's tightest-TTFT searched SLO, rows dropped for 0 QPS)."""
    sat = profiles.saturation.copy()
    tight_ttft = sat.groupby("workload")["slo_ttft_s"].transform("min")
    sat = sat[np.isclose(sat["slo_ttft_s"], tight_ttft)]
    tight_tpot = sat.groupby("workload")["slo_tpot_s"].transform("min")
    sat = sat[np.isclose(sat["slo_tpot_s"], tight_tpot)]
    means = profiles.workloads.set_index("workload")
    inp, out, kind = [], [], []
    for w in sat["workload"]:
        pair = random_workload_pair(str(w))
        if pair is not None:
            inp.append(float(pair[0]))
            out.append(float(pair[1]))
            kind.append("random")
        else:
            if w not in means.index:
                raise ValueError(f"{profiles.path}/workloads.csv: no mean lengths for workload '{w}'")
            inp.append(float(means.loc[w, "mean_input_tokens"]))
            out.append(float(means.loc[w, "mean_output_tokens"]))
            kind.append("named")
    frame = pd.DataFrame({
        "gpu": sat["gpu"].astype(str).to_numpy(), "model": sat["model"].astype(str).to_numpy(),
        "quant": sat["quant"].astype(str).to_numpy(), "tp": sat["tp"].astype(int).to_numpy(),
        "workload": sat["workload"].astype(str).to_numpy(), "kind": kind,
        "model_size_b": [model_size_b(m) for m in sat["model"]], "input_tokens": inp, "output_tokens": out,
        "slo_ttft_s": sat["slo_ttft_s"].to_numpy(float), "slo_tpot_s": sat["slo_tpot_s"].to_numpy(float),
        "saturation_qps": sat["saturation_qps"].to_numpy(float),
    })
    zero = int((frame["saturation_qps"] <= 0).sum())
    return frame[frame["saturation_qps"] > 0].reset_index(drop=True), zero


def paper_regime(data: pd.DataFrame) -> pd.DataFrame:
    """The paper's three sources: H100 named workloads, A100 named workloads at TP <= 4, random-length rows of
    CodeLlama-34B TP1 on the H100."""
    named = data["kind"] == "named"
    h100 = named & (data["gpu"] == PAPER_GPU)
    a100 = named & (data["gpu"] == CROSS_GPU) & (data["tp"] <= 4)
    gpu, model, tp = PAPER_RANDOM_CONFIG
    rand = (data["kind"] == "random") & (data["gpu"] == gpu) & (data["model"] == model) & (data["tp"] == tp)
    return data[h100 | a100 | rand].reset_index(drop=True)


# --- split schemes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    scheme: str  # "random", "unseen-input", "unseen-output", "cross-gpu"
    name: str
    train: np.ndarray  # row indices
    test: np.ndarray
    seed: int | None = None
    paper: str = ""  # the paper's MAPE for this split, as it states it


RANDOM_SUBSETS: tuple[tuple[str, str, float, Callable[[pd.DataFrame], pd.Series]], ...] = (
    ("all data (8:2)", "31.1", 0.2, lambda d: d["gpu"].notna()),
    ("all data (9:1)", "33.0", 0.1, lambda d: d["gpu"].notna()),
    ("without HumanEval", "18.9", 0.2, lambda d: d["workload"] != "humaneval"),
    ("H100 only", "18.8", 0.2, lambda d: d["gpu"] == PAPER_GPU),
    ("random-length only", "16.2", 0.2, lambda d: d["kind"] == "random"),
    ("H100 only, without HumanEval", "14.9", 0.2, lambda d: (d["gpu"] == PAPER_GPU) & (d["workload"] != "humaneval")),
)


def random_splits(data: pd.DataFrame, seeds: Sequence[int]) -> list[Split]:
    out = []
    for name, paper, fraction, select in RANDOM_SUBSETS:
        rows = np.flatnonzero(select(data).to_numpy())
        if len(rows) < 10:  # nothing to split (e.g. a set without random-length rows)
            continue
        for seed in seeds:
            perm = np.random.default_rng(seed).permutation(rows)
            n_test = max(1, int(round(fraction * len(rows))))
            out.append(Split("random", name, np.sort(perm[n_test:]), np.sort(perm[:n_test]), seed, paper))
    return out


def unseen_length_splits(data: pd.DataFrame) -> list[Split]:
    """Train without the random-length rows of one input (output) length, test on them."""
    out = []
    rand = (data["kind"] == "random").to_numpy()
    for scheme, column, lengths, paper in (("unseen-input", "input_tokens", INPUT_LENGTHS, "34.9-85.3"),
                                           ("unseen-output", "output_tokens", OUTPUT_LENGTHS, "16.8-69.5")):
        for length in lengths:
            held = rand & np.isclose(data[column].to_numpy(), length)
            if held.any():
                out.append(Split(scheme, f"{column.split('_')[0]} {length}", np.flatnonzero(~held),
                                 np.flatnonzero(held), None, paper))
    return out


def cross_gpu_splits(data: pd.DataFrame) -> list[Split]:
    gpu, workload, kind = data["gpu"], data["workload"], data["kind"]
    named_other = (gpu != CROSS_GPU) & (kind == "named")
    a100 = (gpu == CROSS_GPU) & (kind == "named")
    test_share = a100 & (workload == "sharegpt")
    cases = [
        ("train other GPUs + A100 HumanEval/NewsQA, test A100 ShareGPT", named_other | (a100 & ~test_share),
         test_share, "73.1"),
        ("swap: train other GPUs + A100 ShareGPT, test A100 HumanEval/NewsQA", named_other | test_share,
         a100 & ~test_share, "no better (> 100 at worst)"),
        ("first + random-length rows in training", named_other | (a100 & ~test_share) | (kind == "random"),
         test_share, "no better"),
    ]
    if (gpu == "h200-141gb").any() and (gpu == PAPER_GPU).any():
        cases.append(("unseen GPU: train A100s + H100, test H200 (all rows)", gpu != "h200-141gb",
                      gpu == "h200-141gb", "-"))
    return [Split("cross-gpu", name, np.flatnonzero(train.to_numpy()), np.flatnonzero(test.to_numpy()), None, paper)
            for name, train, test, paper in cases if test.any() and train.any()]


def splits(data: pd.DataFrame, seeds: Sequence[int]) -> list[Split]:
    return random_splits(data, seeds) + unseen_length_splits(data) + cross_gpu_splits(data)


# --- predictors ---------------------------------------------------------------------------------------


def mape(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute percentage error, in percent."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    if len(true) == 0 or (true <= 0).any():
        raise ValueError("MAPE needs positive true values")
    return float(100.0 * np.mean(np.abs(pred - true) / true))


def encode(frame: pd.DataFrame, categories: dict[str, list[str]]) -> np.ndarray:
    """Numeric features plus one-hot columns of the categorical ones (fixed category lists: an unseen GPU
    gets all zeros)."""
    cols = [frame[c].to_numpy(float) for c in FEATURES if c not in CATEGORICAL]
    for c in CATEGORICAL:
        values = frame[c].to_numpy()
        cols += [(values == v).astype(float) for v in categories[c]]
    return np.column_stack(cols)


@dataclass(frozen=True, slots=True)
class XGBSettings:
    n_estimators: int = 400
    max_depth: int = 6
    learning_rate: float = 0.05
    subsample: float = 0.9
    log_target: bool = False
    n_jobs: int = 1


class XGBSaturationModel:
    """XGBoost regressor on the paper's features; ``seed`` makes it deterministic."""

    def __init__(self, settings: XGBSettings = XGBSettings(), seed: int = 0):
        self.settings, self.seed = settings, seed
        self.categories: dict[str, list[str]] = {}
        self.model = None

    def fit(self, frame: pd.DataFrame) -> "XGBSaturationModel":
        import xgboost

        s = self.settings
        self.categories = {c: sorted(frame[c].astype(str).unique()) for c in CATEGORICAL}
        y = frame["saturation_qps"].to_numpy(float)
        params = {"max_depth": s.max_depth, "eta": s.learning_rate, "subsample": s.subsample, "tree_method": "hist",
                  "seed": self.seed, "nthread": s.n_jobs, "objective": "reg:squarederror"}
        train = xgboost.DMatrix(encode(frame, self.categories), label=np.log(y) if s.log_target else y)
        self.model = xgboost.train(params, train, num_boost_round=s.n_estimators)
        return self

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("XGBSaturationModel.predict before fit")
        import xgboost

        raw = self.model.predict(xgboost.DMatrix(encode(frame, self.categories))).astype(float)
        return np.exp(raw) if self.settings.log_target else raw


@dataclass(frozen=True, slots=True)
class FitRunsSettings:
    """How the ``fit-runs`` predictor emulates a calibration: the jitter of the simulated runs and their seed,
    and the probes of the saturation search (those of ``profiles.build_default``)."""

    noise: float = 0.03
    seed: int = 0
    probe_requests: int = 3000
    probe_seed: int = 0


def fit_runs_predictions(profiles: ProfileSet, rows: pd.DataFrame, settings: FitRunsSettings = FitRunsSettings(),
                         workers: int = 1, progress: Callable[[Iterable], Iterable] = lambda it: it) -> np.ndarray:
    """Saturation of each row predicted from its config's step model fitted on simulated fit runs (one fit per
    config, shared by its rows); in ``rows`` order."""
    groups: dict[ConfigKey, list[int]] = {}
    for i, r in enumerate(rows.itertuples(index=False)):
        groups.setdefault(ConfigKey(r.gpu, r.model, r.quant, int(r.tp)), []).append(i)
    tasks = [(profiles.step(key), [(str(rows["workload"].iloc[i]), float(rows["slo_ttft_s"].iloc[i]),
                                    float(rows["slo_tpot_s"].iloc[i])) for i in idx], settings)
             for key, idx in groups.items()]
    out = np.full(len(rows), np.nan)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(progress(pool.map(_fit_runs_task, tasks, chunksize=4)))
    else:
        results = list(progress(map(_fit_runs_task, tasks)))
    for idx, values in zip(groups.values(), results):
        out[idx] = values
    return out


def fit_from_simulated_runs(step, settings: FitRunsSettings = FitRunsSettings()):
    """``calibrate.fit`` on the simulated fit runs of ``step``, with the capacities an engine reports."""
    from calibrate.fit import fit_step_model
    from calibrate.sim_fit_runs import simulated_fit_runs

    runs = simulated_fit_runs(step, seed=settings.seed, noise=settings.noise)
    reported = {"kv_capacity_tokens": step.kv_capacity_tokens, "max_batch": step.max_batch,
                "max_num_tokens": step.max_num_tokens}
    return fit_step_model(runs, reported)


def predicted_saturation(step, request_overhead_s: float, input_tokens: np.ndarray, output_tokens: np.ndarray,
                         slo: LatencySlo, burst_s: float = 120.0, min_requests: int = 200,
                         max_requests: int = 3000, seed: int = 0, search=None) -> float:
    """The saturation search on the simulated instance built from ``step`` (a fitted model)."""
    from calibrate.search import SearchSettings, find_saturation
    from calibrate.sim_probe import SimulatedProbe

    probe = SimulatedProbe(step, input_tokens, output_tokens, seed=seed, burst_s=burst_s, min_requests=min_requests,
                           max_requests=max_requests, request_overhead_s=request_overhead_s)
    settings = search if search is not None else SearchSettings(start_qps=1.0, min_qps=0.01)
    return find_saturation(probe, slo, settings).saturation_qps


def _fit_runs_task(task) -> list[float]:
    from traces.workloads import workload_lengths

    step, targets, settings = task
    fit = fit_from_simulated_runs(step, settings)
    values = []
    for workload, ttft, tpot in targets:
        inp, out = workload_lengths(workload).sample(settings.probe_requests,
                                                     np.random.default_rng(settings.probe_seed))
        values.append(predicted_saturation(fit.step, fit.request_overhead_s, inp, out, LatencySlo(ttft, tpot),
                                           max_requests=settings.probe_requests, seed=settings.probe_seed))
    return values


# --- evaluation -----------------------------------------------------------------------------------------

PREDICTORS = ("xgb", "xgb-log", "fit-runs")


@dataclass
class SplitResult:
    split: Split
    mape: dict[str, float] = field(default_factory=dict)


def evaluate(data: pd.DataFrame, split_list: Sequence[Split], fit_runs: np.ndarray | None = None,
             xgb: XGBSettings = XGBSettings()) -> list[SplitResult]:
    """MAPE of every predictor on every split's test rows. ``fit_runs``: the fit-runs predictions of ``data``'s rows
    (NaN where not computed: those rows are left out of its MAPE, which is then over the others)."""
    results = []
    y = data["saturation_qps"].to_numpy(float)
    for sp in split_list:
        train, test = data.iloc[sp.train], data.iloc[sp.test]
        res = SplitResult(sp)
        seed = sp.seed if sp.seed is not None else 0
        for name, settings in (("xgb", xgb), ("xgb-log", replace(xgb, log_target=True))):
            model = XGBSaturationModel(settings, seed).fit(train)
            res.mape[name] = mape(y[sp.test], model.predict(test))
        if fit_runs is not None:
            pred = fit_runs[sp.test]
            ok = np.isfinite(pred)
            if ok.any():
                res.mape["fit-runs"] = mape(y[sp.test][ok], pred[ok])
        results.append(res)
    return results


def summary_rows(results: Sequence[SplitResult]) -> list[dict]:
    """Random splits averaged over seeds (with the seeds' range); unseen-length splits one row per length plus
    their range; cross-GPU one row each."""
    rows: list[dict] = []
    order: list[tuple[str, str]] = []
    grouped: dict[tuple[str, str], list[SplitResult]] = {}
    for r in results:
        key = (r.split.scheme, r.split.name)
        if key not in grouped:
            order.append(key)
        grouped.setdefault(key, []).append(r)
    for scheme in ("random", "unseen-input", "unseen-output", "cross-gpu"):
        keys = [k for k in order if k[0] == scheme]
        for key in keys:
            group = grouped[key]
            row = {"scheme": scheme, "split": key[1], "paper": group[0].split.paper,
                   "train": int(np.mean([len(g.split.train) for g in group])),
                   "test": int(np.mean([len(g.split.test) for g in group])), "seeds": len(group)}
            for p in PREDICTORS:
                vals = [g.mape[p] for g in group if p in g.mape]
                if vals:
                    row[p] = float(np.mean(vals))
                    row[f"{p}_min"], row[f"{p}_max"] = float(np.min(vals)), float(np.max(vals))
            rows.append(row)
        if scheme.startswith("unseen") and keys:
            span = {"scheme": scheme, "split": "range over the four lengths", "paper": grouped[keys[0]][0].split.paper,
                    "train": "", "test": "", "seeds": ""}
            for p in PREDICTORS:
                vals = [grouped[k][0].mape[p] for k in keys if p in grouped[k][0].mape]
                if vals:
                    span[p] = f"{min(vals):.1f}-{max(vals):.1f}"
            rows.append(span)
    return rows


def markdown_table(rows: Sequence[dict], title: str) -> str:
    head = ("| scheme | split | paper MAPE % | XGBoost % | XGBoost, log target % | step model from fit runs % "
            "| train / test rows |")
    lines = [f"**{title}**", "", head, "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = []
        for p in PREDICTORS:
            v = r.get(p, "")
            if isinstance(v, float):
                cell = f"{v:.1f}"
                if r.get("seeds", 1) not in ("", 1) and f"{p}_min" in r:
                    cell += f" ({r[f'{p}_min']:.1f}-{r[f'{p}_max']:.1f})"
                cells.append(cell)
            else:
                cells.append(str(v) if v != "" else "-")
        size = f"{r['train']} / {r['test']}" if r["train"] != "" else ""
        lines.append(f"| {r['scheme']} | {r['split']} | {r['paper']} | " + " | ".join(cells) + f" | {size} |")
    return "\n".join(lines)


def run(profiles_path: Path, regimes: Sequence[str], seeds: Sequence[int], workers: int,
        fit_runs_sample: float, log: Callable[[str], None] = print,
        fit_runs: FitRunsSettings = FitRunsSettings()) -> dict[str, list[dict]]:
    from tqdm import tqdm

    profiles = ProfileSet.load(profiles_path)
    data_all, zero = saturation_dataset(profiles)
    log(f"{profiles_path}: {len(data_all)} saturation points (config x workload at the workload's tightest SLO); "
        f"{zero} with saturation 0 left out")
    out = {}
    for regime in regimes:
        t0 = time.perf_counter()
        data = paper_regime(data_all) if regime == "paper" else data_all
        split_list = splits(data, seeds)
        needed = np.zeros(len(data), bool)
        for sp in split_list:
            needed[sp.test] = True
        if regime != "paper" and fit_runs_sample < 1.0:  # a seeded sample of configs keeps the full regime quick
            configs = data[["gpu", "model", "quant", "tp"]].drop_duplicates()
            chosen = configs.sample(frac=fit_runs_sample, random_state=0)
            keep = data.merge(chosen.assign(_keep=True), how="left", on=["gpu", "model", "quant", "tp"])["_keep"]
            needed &= keep.fillna(False).to_numpy(bool)
        fit_pred = np.full(len(data), np.nan)
        if needed.any():
            idx = np.flatnonzero(needed)
            fit_pred[idx] = fit_runs_predictions(
                profiles, data.iloc[idx].reset_index(drop=True), fit_runs, workers=workers,
                progress=lambda it: tqdm(it, desc=f"fit-runs predictor ({regime})", unit="config", leave=False))
        t1 = time.perf_counter()
        results = evaluate(data, split_list, fit_pred)
        t2 = time.perf_counter()
        rows = summary_rows(results)
        sampled = "" if regime == "paper" or fit_runs_sample >= 1.0 else \
            f"; step model from fit runs on a seeded {fit_runs_sample:.0%} sample of the configs"
        log("")
        log(markdown_table(rows, f"regime '{regime}': {len(data)} points, seeds {list(seeds)}{sampled}; fit runs "
                                 f"jittered {fit_runs.noise:.0%} per iteration"))
        log(f"\n(regime '{regime}': fit-runs predictor {t1 - t0:.0f} s for {int(needed.sum())} points, "
            f"XGBoost {len(split_list)} splits x 2 models {t2 - t1:.0f} s)")
        out[regime] = rows
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=Path, default=default_profile_path())
    parser.add_argument("--regime", choices=("paper", "full", "both"), default="both")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--fit-runs-sample", type=float, default=0.1,
                        help="fraction of the configs (seeded) the fit-runs predictor runs on in the full regime")
    parser.add_argument("--fit-runs-noise", type=float, default=FitRunsSettings.noise,
                        help="log-normal jitter of each simulated fit-run iteration (0.03 = 3 %%)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the summary rows here")
    args = parser.parse_args(argv)
    if not 0 < args.fit_runs_sample <= 1:
        parser.error(f"--fit-runs-sample must be in (0, 1], got {args.fit_runs_sample}")
    start = time.perf_counter()
    regimes = ("paper", "full") if args.regime == "both" else (args.regime,)
    if args.fit_runs_noise < 0:
        parser.error(f"--fit-runs-noise must be >= 0, got {args.fit_runs_noise}")
    out = run(args.profiles, regimes, args.seeds, args.workers, args.fit_runs_sample,
              fit_runs=FitRunsSettings(noise=args.fit_runs_noise))
    if args.csv is not None:
        pd.DataFrame([{**r, "regime": k} for k, rows in out.items() for r in rows]).to_csv(args.csv, index=False)
    print(f"\ncalibrate.predict: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
