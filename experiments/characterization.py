"""The characterization paper's views (§5-§8) drawn from any profile set, only from the rows it holds.

Each ``draw_*`` function returns a ``View``: the PNG it wrote (or None and why it drew nothing) and a caption
that names the rows it was drawn from and their provenance (``experiments.provenance``). Selections (model,
GPU, TP, workloads) default to the paper's (34B on one H100 for §5, 70B on H100 for §6, 13B on one GPU for §7)
and fall back to what the set holds; a selection the set does not hold is a ``SelectionError``.
``experiments.report`` (the ``qfleet-report`` app) puts them on one page.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from profiles.catalog import QUANTS  # noqa: E402
from profiles.paper_findings.common import FP16  # noqa: E402
from profiles.paper_findings.data import (  # noqa: E402
    S51_INPUTS_TOKENS, S51_OUTPUTS_TOKENS, S51_QPS, S51_TRACE_S, NotCheckable, Reader,
)
from profiles.paper_findings.s5_workload import LOAD_POINTS, optimal_by_load  # noqa: E402
from profiles.paper_findings.s6_parallelism import GROUP_1, GROUP_2, GROUP_3, GROUP_4  # noqa: E402
from profiles.profile_set import LatencySlo, ProfileError, ProfileSet  # noqa: E402
from profiles.schema import ConfigKey  # noqa: E402
from experiments.provenance import STYLE_NOTE, ProvenanceIndex  # noqa: E402

PAPER_WORKLOADS = ("sharegpt", "humaneval", "newsqa")
PAPER_LOAD = ("h100-80gb", "codellama-34b", 1)  # §5: quantized 34B on one H100
PAPER_TP = ("h100-80gb", "llama2-70b", "sharegpt")  # §6: 70B on H100, chatbot task
PAPER_HW = ("llama2-13b", 1, "sharegpt")  # §7: 13B on one GPU
QUANT_ORDER = tuple(QUANTS)
TP_MARKER = {1: "o", 2: "s", 4: "^", 8: "D"}
QUANT_MARKER = dict(zip(QUANT_ORDER, ("o", "s", "^", "v", "D", "P", "X", "<", ">", "p", "h", "*")))
METRICS = (("p90_ttft_s", "P90 TTFT (ms)", 1e3), ("p90_tpot_s", "P90 TPOT (ms)", 1e3),
           ("energy_per_output_token_j", "energy / output token (J)", 1.0))


class SelectionError(ValueError):
    """A configured model, GPU, TP or workload that the profile set does not hold; names the key."""


@dataclass(frozen=True, slots=True)
class View:
    name: str  # file stem and HTML anchor
    title: str
    png: Path | None
    caption: str  # what is drawn, which rows, their provenance; or why nothing was drawn


def quant_colour(quant: str):
    cmap = plt.get_cmap("tab20")
    return cmap(QUANT_ORDER.index(quant) % 20) if quant in QUANT_ORDER else "0.3"


def save(fig, path: Path, dpi: int) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# --- selections ----------------------------------------------------------------------------------

class Selector:
    """What a profile set holds, and the checks that turn a configured selection into one it holds."""

    def __init__(self, profiles: ProfileSet):
        self.profiles = profiles
        self.configs = profiles.configs()
        self.models = sorted({k.model for k in self.configs})
        self.gpus = sorted({k.gpu for k in self.configs})
        self.tps = sorted({k.tp for k in self.configs})
        self.workloads = sorted(profiles.curves["workload"].astype(str).unique())
        self.curve_keys = {(k, w) for k in self.configs for w in self.workloads if profiles.has_curve(k, w)}

    def check(self, key: str, value, choices) -> None:
        if value is not None and value not in choices:
            raise SelectionError(f"config key '{key}': {value!r} is not in the profile set {self.profiles.path} "
                                 f"(it has: {', '.join(map(str, choices))})")

    def check_all(self, key: str, values, choices) -> None:
        for v in values or ():
            self.check(key, v, choices)

    def workload_list(self, key: str, wanted) -> list[str]:
        """Configured workloads (each must exist), else the paper's three that exist, else every workload."""
        if wanted:
            self.check_all(key, wanted, self.workloads)
            return list(wanted)
        paper = [w for w in PAPER_WORKLOADS if w in self.workloads]
        return paper or list(self.workloads)

    def family(self, prefix: str, paper: tuple[str, str, int], gpu=None, model=None, tp=None,
               workloads: list[str] | None = None) -> tuple[str, str, int, str]:
        """(gpu, model, tp, note): the paper's family if it matches the selection and has curves, else the one
        with the most methods with curves."""
        self.check(f"{prefix}.gpu", gpu, self.gpus)
        self.check(f"{prefix}.model", model, self.models)
        self.check(f"{prefix}.tp", tp, self.tps)
        counts: Counter = Counter()
        for k, w in self.curve_keys:
            if workloads is not None and w not in workloads:
                continue
            if (gpu is None or k.gpu == gpu) and (model is None or k.model == model) and (tp is None or k.tp == tp):
                counts[(k.gpu, k.model, k.tp)] += 1
        if not counts:
            raise SelectionError(f"config keys '{prefix}.*': no config with curves matches gpu={gpu}, model={model}, "
                                 f"tp={tp} in {self.profiles.path}")
        if paper in counts:
            return (*paper, "")
        best = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        return (*best, f"the paper's {paper[1]} on {paper[0]} TP{paper[2]} is not in this profile set or selection; "
                       f"showing the family with the most curves. ")


def tightest_slo(r: Reader, workload: str) -> LatencySlo | None:
    try:
        return r.slo(workload)
    except NotCheckable:
        return None


# --- §5.2, Figure 7: latency and energy against load ----------------------------------------------

def draw_load(profiles: ProfileSet, sel: Selector, out: Path, gpu=None, model=None, tp=None, workloads=None,
              dpi: int = 110) -> View:
    title = "Load influence (§5.2, Fig. 7): P90 TTFT, P90 TPOT and energy per token against load"
    ws = sel.workload_list("workloads", workloads)
    g, m, t, note = sel.family("load", PAPER_LOAD, gpu, model, tp, ws)
    ws = [w for w in ws if any(profiles.has_curve(ConfigKey(g, m, q, t), w) for q in QUANT_ORDER)]
    r, index = Reader(profiles), ProvenanceIndex(profiles)
    fig, axes = plt.subplots(3, len(ws), figsize=(4.6 * len(ws), 9.5), squeeze=False)
    used = []
    for col, w in enumerate(ws):
        slo = tightest_slo(r, w)
        for q in QUANT_ORDER:
            key = ConfigKey(g, m, q, t)
            if not profiles.has_curve(key, w):
                continue
            used.append((key, w))
            c = profiles.curve(key, w)
            for row, (metric, label, scale) in enumerate(METRICS):
                axes[row][col].plot(c["qps"], c[metric] * scale, ls=index.style(key), marker=".", ms=3,
                                    color=quant_colour(q), label=q)
        for row, (metric, label, _) in enumerate(METRICS):
            ax = axes[row][col]
            if slo is not None and metric != "energy_per_output_token_j":
                limit = slo.ttft_s if metric == "p90_ttft_s" else slo.tpot_s
                ax.axhline(1e3 * limit, color="k", ls="--", lw=1, label="SLO")
            ax.set_yscale("log")
            ax.set_ylabel(label)
            ax.set_xlabel("load (req/s)")
            if row == 0:
                ax.set_title(f"{w}" + (f" (SLO {slo.ttft_s:g} s / {slo.tpot_s:g} s)" if slo else ""), fontsize=9)
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"{m} on {g} TP{t}", fontsize=10)
    fig.tight_layout()
    png = save(fig, out / "fig7_load.png", dpi)
    caption = (f"{note}{m} on {g} TP{t}, {len({k for k, _ in used})} methods x {len(ws)} workloads; black dashed: "
               f"the workload's tightest searched SLO. {STYLE_NOTE}. Rows: {index.describe(curves=used)}.")
    return View("fig7_load", title, png, caption)


# --- §5.2, Figure 8: energy-efficiency ranking and transition points ------------------------------

def draw_ranking(profiles: ProfileSet, sel: Selector, out: Path, gpu=None, model=None, tp=None, workloads=None,
                 dpi: int = 110) -> View:
    title = "Energy-efficiency ranking against load (§5.2, Fig. 8), SLO-violating methods greyed"
    ws = sel.workload_list("workloads", workloads)
    g, m, t, note = sel.family("load", PAPER_LOAD, gpu, model, tp, ws)
    r, index = Reader(profiles), ProvenanceIndex(profiles)
    key_of = lambda q: ConfigKey(g, m, q, t)  # noqa: E731
    drawn = []
    for w in ws:
        try:
            rows = optimal_by_load(r, w, key_of, require_fp16=False)
        except NotCheckable:
            continue
        if rows and rows[-1][0] > 0:
            drawn.append((w, rows))
    if not drawn:
        return View("fig8_ranking", title, None, f"not drawn: no method of {m} on {g} TP{t} has a saturation row or "
                    f"curve with an SLO for {', '.join(ws)}.")
    fig, axes = plt.subplots(2, len(drawn), figsize=(5.2 * len(drawn), 8), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    used, transitions_text = [], []
    for col, (w, rows) in enumerate(drawn):
        slo = r.slo(w)
        quants = [q for q in QUANT_ORDER if profiles.has_curve(key_of(q), w)]
        sat = {q: r.saturation_qps(key_of(q), w, slo) for q in quants}
        loads = np.array([x for x, _, _ in rows])
        energy = np.full((len(quants), len(loads)), np.nan)
        for i, q in enumerate(quants):
            used.append((key_of(q), w))
            for j, x in enumerate(loads):
                try:
                    energy[i, j] = profiles.energy_per_token_j(key_of(q), w, float(x))
                except ProfileError:  # beyond the method's curve
                    pass
        ranks = np.full_like(energy, np.nan)
        for j in range(len(loads)):
            ok = np.flatnonzero(np.isfinite(energy[:, j]))
            ranks[ok[np.argsort(energy[ok, j])], j] = np.arange(1, len(ok) + 1)
        ax = axes[0][col]
        for i, q in enumerate(quants):
            meets = loads <= sat[q] + 1e-9
            ax.plot(loads, np.where(meets, ranks[i], np.nan), color=quant_colour(q), marker="o", ms=3, lw=1.2, label=q)
            ax.plot(loads, np.where(~meets, ranks[i], np.nan), color="0.8", marker="o", ms=3, lw=1.0, zorder=0)
        best = [q for _, q, _ in rows]
        changes = [j for j in range(1, len(best)) if best[j] != best[j - 1]]
        for j in changes:
            ax.axvline(loads[j], color="k", lw=0.6, ls=":")
        ax.set_ylim(len(quants) + 0.5, 0.5)
        ax.set_ylabel("rank by energy / output token (1 = least)")
        ax.set_title(f"{w}, SLO {slo.ttft_s:g} s / {slo.tpot_s:g} s", fontsize=9)
        ax = axes[1][col]
        e_best = np.array([energy[quants.index(q), j] for j, q in enumerate(best)])
        saving = np.array([s for _, _, s in rows])
        fp16 = e_best / (1 - saving)
        ax.plot(loads, e_best, color="0.5", lw=0.8, label="best SLO-meeting energy (J), dot = its method")
        ax.scatter(loads, e_best, c=[quant_colour(q) for q in best], s=14, zorder=3)
        ax.plot(loads, fp16 - e_best, color="tab:orange", label="saving vs FP16 (J)")
        ax.set_yscale("log")
        ax.set_xlabel("load (req/s)")
        ax.set_ylabel("J / output token")
        ax2 = ax.twinx()
        ax2.plot(loads, 100 * saving, color="tab:green", ls="--", label="saving vs FP16 (%)")
        ax2.set_ylabel("saving vs FP16 (%)")
        for j in changes:
            ax.axvline(loads[j], color="k", lw=0.6, ls=":")
        ax.legend(fontsize=6, loc="upper left")
        ax2.legend(fontsize=6, loc="upper right")
        pts = [f"{loads[0]:.3g} req/s {best[0]}"] + [
            f"{loads[j]:.3g} req/s {best[j]} ({e_best[j]:.3f} J"
            + (f", {100 * saving[j]:.0f} % below FP16" if np.isfinite(saving[j]) else ", FP16 misses the SLO") + ")"
            for j in changes]
        transitions_text.append(f"{w}: " + " -> ".join(pts))
    axes[0][0].legend(fontsize=6, ncol=2, loc="lower right")
    fig.suptitle(f"{m} on {g} TP{t}", fontsize=10)
    fig.tight_layout()
    png = save(fig, out / "fig8_ranking.png", dpi)
    caption = (f"{note}{m} on {g} TP{t}; {LOAD_POINTS} loads up to the highest saturation of any method "
               "(profiles.paper_findings.s5_workload.optimal_by_load, the grid the §5.2 findings use); a method is "
               "greyed where the load exceeds its saturation under the workload's tightest searched SLO; dotted: "
               f"transition points. Transitions: {'; '.join(transitions_text)}. Rows: {index.describe(curves=used)}.")
    return View("fig8_ranking", title, png, caption)


# --- §5.1: input and output lengths ---------------------------------------------------------------

def draw_lengths(profiles: ProfileSet, sel: Selector, out: Path, gpu=None, model=None, tp=None,
                 dpi: int = 110) -> View:
    title = "Input/output length influence (§5.1): 16 length pairs simulated on each config's step model"
    sel.check("lengths.gpu", gpu, sel.gpus)
    sel.check("lengths.model", model, sel.models)
    sel.check("lengths.tp", tp, sel.tps)
    families = Counter((k.gpu, k.model, k.tp) for k in sel.configs
                       if (gpu is None or k.gpu == gpu) and (model is None or k.model == model)
                       and (tp is None or k.tp == tp))
    if not families:
        raise SelectionError(f"config keys 'lengths.*': no step model matches gpu={gpu}, model={model}, tp={tp}")
    if PAPER_LOAD in families:
        (g, m, t), note = PAPER_LOAD, ""
    else:
        (g, m, t), note = sorted(families.items(), key=lambda kv: (-kv[1], kv[0]))[0][0], (
            "the paper's codellama-34b on h100-80gb TP1 is not in this profile set or selection; ")
    r, index = Reader(profiles), ProvenanceIndex(profiles)
    quants = [q for q in QUANT_ORDER if ConfigKey(g, m, q, t) in set(sel.configs)]
    pairs = [(i, o) for i in S51_INPUTS_TOKENS for o in S51_OUTPUTS_TOKENS]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.8))
    results = {q: [r.simulate(ConfigKey(g, m, q, t), i, o) for i, o in pairs] for q in quants}
    x = np.arange(len(pairs))
    for q in quants:
        key = ConfigKey(g, m, q, t)
        vals = results[q]
        axes[0].plot(x, [1e3 * v.p90_ttft_s for v in vals], ls=index.style(key), marker="o", ms=3,
                     color=quant_colour(q), label=q)
        axes[1].plot(x, [1e3 * v.p90_tpot_s for v in vals], ls=index.style(key), marker="o", ms=3, color=quant_colour(q))
        axes[2].plot(x, [v.energy_per_output_token_j for v in vals], ls=index.style(key), marker="o", ms=3,
                     color=quant_colour(q))
        if FP16 in results and q != FP16:
            axes[3].plot(x, [100 * (1 - v.energy_per_output_token_j / f.energy_per_output_token_j)
                             for v, f in zip(vals, results[FP16])], ls=index.style(key), marker="o", ms=3,
                         color=quant_colour(q))
    labels = [f"{i}/{o}" for i, o in pairs]
    for ax, ylabel in zip(axes, ("P90 TTFT (ms)", "P90 TPOT (ms)", "J / output token", "energy saving vs FP16 (%)")):
        ax.set_xticks(x, labels, rotation=90, fontsize=7)
        ax.set_xlabel("input / output tokens")
        ax.set_ylabel(ylabel)
        if ax is not axes[3]:
            ax.set_yscale("log")
    axes[3].axhline(0, color="k", lw=0.8)
    if FP16 not in results:
        axes[3].set_title("no FP16 step model: no saving drawn", fontsize=8)
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"{m} on {g} TP{t}, {S51_QPS:g} req/s", fontsize=10)
    fig.tight_layout()
    png = save(fig, out / "s51_lengths.png", dpi)
    caption = (f"{note}{m} on {g} TP{t}: the 16 pairs of {'/'.join(map(str, S51_INPUTS_TOKENS))} input x "
               f"{'/'.join(map(str, S51_OUTPUTS_TOKENS))} output tokens have no profile curves, so each is a "
               f"{S51_TRACE_S:g} s Poisson burst at {S51_QPS:g} req/s simulated on the config's step model "
               "(Reader.simulate, the helper the §5.1 findings use). A pair whose TTFT runs to seconds overloads "
               f"the config at {S51_QPS:g} req/s. {STYLE_NOTE}. Rows: "
               f"{index.describe(simulated=[ConfigKey(g, m, q, t) for q in quants])}.")
    return View("s51_lengths", title, png, caption)


# --- §6, Figure 9: tensor parallelism ------------------------------------------------------------

def draw_parallelism(profiles: ProfileSet, sel: Selector, out: Path, gpu=None, model=None, workload=None,
                     quants=None, dpi: int = 110) -> View:
    title = "Tensor-parallelism influence (§6, Fig. 9)"
    sel.check("parallelism.gpu", gpu, sel.gpus)
    sel.check("parallelism.model", model, sel.models)
    sel.check("parallelism.workload", workload, sel.workloads)
    sel.check_all("parallelism.quants", quants, QUANT_ORDER)
    tps: dict[tuple[str, str, str], set] = {}
    for k, w in sel.curve_keys:
        if (gpu is None or k.gpu == gpu) and (model is None or k.model == model) and (workload is None or w == workload):
            tps.setdefault((k.gpu, k.model, w), set()).add(k.tp)
    multi = {f: v for f, v in tps.items() if len(v) >= 2}
    if not multi:
        return View("fig9_tp", title, None, "not drawn: no model has curves at two or more TP levels on one GPU and "
                    f"workload (selection gpu={gpu}, model={model}, workload={workload}).")
    if PAPER_TP in multi:
        (g, m, w), note = PAPER_TP, ""
    else:
        (g, m, w) = sorted(multi, key=lambda f: (-len(multi[f]), f))[0]
        note = "the paper's llama2-70b on h100-80gb (sharegpt) is not in this profile set or selection; "
    levels = sorted(multi[(g, m, w)])
    if quants:
        chosen = [q for q in quants if any(profiles.has_curve(ConfigKey(g, m, q, t), w) for t in levels)]
    else:  # FP16 and the first method of each of the paper's four trend groups that has curves
        chosen = [q for q in (FP16,) if any(profiles.has_curve(ConfigKey(g, m, q, t), w) for t in levels)]
        for group in (GROUP_1, GROUP_2, GROUP_3, GROUP_4):
            found = [q for q in group if any(profiles.has_curve(ConfigKey(g, m, q, t), w) for t in levels)]
            if found:
                chosen.append(found[0])
    index = ProvenanceIndex(profiles)
    r = Reader(profiles)
    slo = tightest_slo(r, w)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    used = []
    for q in chosen:
        for t in levels:
            key = ConfigKey(g, m, q, t)
            if not profiles.has_curve(key, w):
                continue
            used.append((key, w))
            c = profiles.curve(key, w)
            for ax, (metric, label, scale) in zip(axes, METRICS):
                ax.plot(c["qps"], c[metric] * scale, ls=index.style(key), marker=TP_MARKER.get(t, "o"), ms=4,
                        color=quant_colour(q), label=f"{q} TP{t}")
    for ax, (metric, label, _) in zip(axes, METRICS):
        if slo is not None and metric != "energy_per_output_token_j":
            ax.axhline(1e3 * (slo.ttft_s if metric == "p90_ttft_s" else slo.tpot_s), color="k", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel("load (req/s)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"{m} on {g}, {w}: colour = method, marker = TP", fontsize=10)
    fig.tight_layout()
    png = save(fig, out / "fig9_tp.png", dpi)
    caption = (f"{note}{m} on {g}, workload {w}, TP {'/'.join(map(str, levels))}; methods: {', '.join(chosen)} "
               "(FP16 and the first profiled method of each of the paper's trend groups 1-4 unless "
               f"parallelism.quants is set). Energy is per output token of the whole config (all its TP GPUs). "
               f"{STYLE_NOTE}. Rows: {index.describe(curves=used)}.")
    return View("fig9_tp", title, png, caption)


# --- §7, Figure 10: hardware ---------------------------------------------------------------------

def draw_hardware(profiles: ProfileSet, sel: Selector, out: Path, model=None, tp=None, gpus=None, workload=None,
                  quants=None, dpi: int = 110) -> View:
    title = "Hardware influence (§7, Fig. 10): the same model and methods on each GPU"
    sel.check("hardware.model", model, sel.models)
    sel.check("hardware.tp", tp, sel.tps)
    sel.check_all("hardware.gpus", gpus, sel.gpus)
    sel.check("hardware.workload", workload, sel.workloads)
    sel.check_all("hardware.quants", quants, QUANT_ORDER)
    per: dict[tuple[str, int, str], set] = {}
    for k, w in sel.curve_keys:
        if ((model is None or k.model == model) and (tp is None or k.tp == tp) and (gpus is None or k.gpu in gpus)
                and (workload is None or w == workload) and (quants is None or k.quant in quants)):
            per.setdefault((k.model, k.tp, w), set()).add(k.gpu)
    multi = {f: v for f, v in per.items() if len(v) >= 2}
    if not multi:
        return View("fig10_hardware", title, None, "not drawn: no model has curves on two or more GPU types at one "
                    f"TP and workload (selection model={model}, tp={tp}, gpus={gpus}, workload={workload}).")
    if PAPER_HW in multi:
        (m, t, w), note = PAPER_HW, ""
    else:
        (m, t, w) = sorted(multi, key=lambda f: (-len(multi[f]), f))[0]
        note = "the paper's llama2-13b TP1 (sharegpt) is not in this profile set or selection; "
    gpu_list = sorted(multi[(m, t, w)])
    index, r = ProvenanceIndex(profiles), Reader(profiles)
    slo = tightest_slo(r, w)
    qs = [q for q in (quants or QUANT_ORDER) if any(profiles.has_curve(ConfigKey(g, m, q, t), w) for g in gpu_list)]
    # the paper draws within the weaker GPU's saturation range: the least, over GPUs, of the largest saturation
    limit = None
    if slo is not None:
        tops = []
        for g in gpu_list:
            sats = [r.saturation_qps(ConfigKey(g, m, q, t), w, slo) for q in qs
                    if profiles.has_curve(ConfigKey(g, m, q, t), w)]
            if sats:
                tops.append(max(sats))
        limit = 1.1 * min(tops) if tops and min(tops) > 0 else None
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    used = []
    for gi, g in enumerate(gpu_list):
        for q in qs:
            key = ConfigKey(g, m, q, t)
            if not profiles.has_curve(key, w):
                continue
            used.append((key, w))
            c = profiles.curve(key, w)
            if limit is not None:
                c = c[c["qps"] <= limit]
            for ax, (metric, label, scale) in zip(axes, METRICS):
                ax.plot(c["qps"], c[metric] * scale, ls=index.style(key), marker=QUANT_MARKER.get(q, "o"), ms=4,
                        color=cmap(gi % 10), lw=1, label=f"{g} {q}")
    for ax, (metric, label, _) in zip(axes, METRICS):
        if slo is not None and metric != "energy_per_output_token_j":
            ax.axhline(1e3 * (slo.ttft_s if metric == "p90_ttft_s" else slo.tpot_s), color="k", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("load (req/s)")
        ax.set_ylabel(label)
    axes[2].legend(fontsize=5, ncol=2)
    fig.suptitle(f"{m} TP{t}, {w}: colour = GPU, marker = method", fontsize=10)
    fig.tight_layout()
    png = save(fig, out / "fig10_hardware.png", dpi)
    missing = [f"{q} on {g}" for g in gpu_list for q in qs if not profiles.has_curve(ConfigKey(g, m, q, t), w)]
    caption = (f"{note}{m} TP{t}, workload {w}, GPUs {', '.join(gpu_list)}; methods {', '.join(qs)}"
               + (f" (not profiled: {', '.join(missing)})" if missing else "")
               + (f"; loads up to {limit:.3g} req/s, 1.1 x the weakest GPU's highest saturation (the paper draws "
                  "within the A100's range)" if limit else "")
               + f". {STYLE_NOTE}. Rows: {index.describe(curves=used)}.")
    return View("fig10_hardware", title, png, caption)


# --- quality against energy ----------------------------------------------------------------------

def draw_quality(profiles: ProfileSet, sel: Selector, out: Path, tasks, gpus=None, dpi: int = 110) -> View:
    """Quality score of each method against its energy per token at saturation, per task (``tasks``: DpTpTask-like
    objects with name, model, workload, slo, quality_min)."""
    from sim.deployment import TaskSpec
    from sim.planning import energy_at_saturation

    title = "Quality against energy per token at saturation, per task (§8.3 trade-off)"
    sel.check_all("quality.gpus", gpus, sel.gpus)
    index, r = ProvenanceIndex(profiles), Reader(profiles)
    q = profiles.quality
    panels = []
    for task in tasks:
        rows = q[q["task"] == task.name]
        models = [task.model] if task.model in set(rows["model"]) else sorted(set(rows["model"]) & set(sel.models))
        for m in models:
            workload, slo, how = task.workload, task.slo, ""
            if not any(k.model == m and profiles.has_curve(k, workload) for k in sel.configs):
                found = sorted({w for k, w in sel.curve_keys if k.model == m})
                found = [w for w in found if tightest_slo(r, w) is not None]
                if not found:
                    continue
                workload, slo = found[0], tightest_slo(r, found[0])
                how = f" (no {task.workload} curves: {workload} at its tightest searched SLO)"
            points = []
            for k in sel.configs:
                if k.model != m or (gpus is not None and k.gpu not in gpus) or not profiles.has_curve(k, workload):
                    continue
                if (m, k.quant, task.name) not in index.quality:
                    continue
                spec = TaskSpec(task.name, m, workload, slo, task.quality_min or 0.0)
                e = energy_at_saturation(profiles, spec, k)
                if np.isfinite(e):
                    points.append((k, e, profiles.quality_score(m, k.quant, task.name)))
            # per (gpu, quant): the TP with the least energy at saturation
            best: dict[tuple[str, str], tuple] = {}
            for k, e, score in points:
                if (k.gpu, k.quant) not in best or e < best[(k.gpu, k.quant)][1]:
                    best[(k.gpu, k.quant)] = (k, e, score)
            if best:
                panels.append((task, m, workload, slo, how, list(best.values())))
    if not panels:
        return View("quality_energy", title, None, "not drawn: no task has quality rows for a model with curves and "
                    "a searched SLO.")
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.5 * ncols, 4.8 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    cmap = plt.get_cmap("tab10")
    gpu_list = sorted({k.gpu for *_, pts in panels for k, _, _ in pts})
    used_q, used_c, notes = [], [], []
    for ax, (task, m, w, slo, how, pts) in zip(axes.flat, panels):
        cheapest = {}
        for k, e, score in pts:
            if k.quant not in cheapest or e < cheapest[k.quant][1]:
                cheapest[k.quant] = (k, e, score)
        for k, e, score in pts:
            prov = index.quality.get((m, k.quant, task.name), "missing")
            used_q.append((m, k.quant, task.name))
            used_c.append((k, w))
            colour = cmap(gpu_list.index(k.gpu) % 10)
            ax.scatter(e, score, marker=QUANT_MARKER.get(k.quant, "o"), s=40,
                       facecolors=colour if prov != "assumption" else "none", edgecolors=colour)
            if cheapest[k.quant][0] == k:  # one label per method, at its cheapest GPU
                ax.annotate(k.quant, (e, score), fontsize=6, xytext=(-4, 3), textcoords="offset points", ha="right")
        if task.quality_min:
            ax.axhline(task.quality_min, color="k", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("J / output token at saturation")
        ax.set_ylabel(f"quality score ({task.name})")
        ax.set_title(f"{task.name}: {m}, {w}, SLO {slo.ttft_s:g} s / {slo.tpot_s:g} s"
                     + (f", floor {task.quality_min:g}" if task.quality_min else ""), fontsize=8)
        if how:
            notes.append(f"{task.name}{how}")
    handles = [plt.Line2D([], [], color=cmap(i % 10), marker="o", ls="", label=g) for i, g in enumerate(gpu_list)]
    handles.append(plt.Line2D([], [], color="0.3", marker="o", ls="", mfc="none", label="quality: assumption"))
    axes.flat[0].legend(handles=handles, fontsize=6)
    fig.tight_layout()
    png = save(fig, out / "quality_energy.png", dpi)
    caption = ("Per task, each (GPU, method) at the TP with the least energy per output token at its saturation under "
               "the task's SLO (sim.planning.energy_at_saturation, Energy-First's measure); colour = GPU, marker = "
               "method (labelled once, at its cheapest point); hollow markers: quality rows that are assumptions (the loss rule), filled: literature or "
               "derived; dashed: the task's quality floor"
               + (f". {'; '.join(notes)}" if notes else "")
               + f". Rows: {index.describe(curves=used_c, quality=used_q)}.")
    return View("quality_energy", title, png, caption)


__all__ = ["View", "Selector", "SelectionError", "draw_load", "draw_ranking", "draw_lengths", "draw_parallelism",
           "draw_hardware", "draw_quality"]
