"""qfleet-report: the characterization paper's views and findings for one profile set (Hydra app).

    qfleet-report                                              # the shipped defaults
    qfleet-report profiles=profiles/measured/transformers_h200_distinct/profile
    qfleet-report load.model=llama2-13b hardware.quants=null dp_tp.gpus=[a100-40gb,h100-80gb] out=outputs/r
    python -m experiments.report ...                           # the same, from a checkout

Writes PNG figures, ``report.html`` (one self-contained page, images inlined), ``findings.md`` / ``findings.csv``
(``profiles.findings``) and the §8.2 DP/TP tables (``experiments.dp_tp``) into Hydra's output dir or ``out=``.
Every file is written to a temporary name and renamed into place; ``report.html`` is written last, so a page
that exists is complete. Figures come from ``experiments.characterization``: each is drawn only from rows the
profile set holds and its caption says which rows and their provenance. A bad input (a missing profile set, a
model, GPU or workload the set lacks, a value out of range) is one line on stderr and exit 2.
"""

from __future__ import annotations

import base64
import html
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from experiments import dp_tp
from experiments.characterization import (
    SelectionError, Selector, View, draw_hardware, draw_lengths, draw_load, draw_parallelism, draw_quality, draw_ranking,
)
from experiments.dp_tp import DpTpError, write_text
from profiles.findings import FAILS, HOLDS, BY_CONSTRUCTION, NOT_CHECKABLE, check_findings, counts_line, failures_first
from profiles.findings import write_findings
from profiles.profile_set import ProfileError, ProfileSet, default_profile_path


@dataclass
class FamilySel:
    model: Optional[str] = None
    gpu: Optional[str] = None
    tp: Optional[int] = None


@dataclass
class ParallelismSel:
    model: Optional[str] = None
    gpu: Optional[str] = None
    workload: Optional[str] = None
    quants: Optional[list[str]] = None


@dataclass
class HardwareSel:
    model: Optional[str] = None
    tp: Optional[int] = None
    gpus: Optional[list[str]] = None
    workload: Optional[str] = None
    quants: Optional[list[str]] = None


@dataclass
class QualitySel:
    gpus: Optional[list[str]] = None


@dataclass
class DpTpConf:
    tasks: str = "auto"
    gpus: Optional[list[str]] = None
    max_instances: float = 4.0
    points: int = 200


@dataclass
class ReportConf:
    profiles: Optional[str] = None
    out: Optional[str] = None
    slo: str = "case_study"
    cluster: str = "case_study"
    workloads: Optional[list[str]] = None
    dpi: int = 110
    load: FamilySel = field(default_factory=FamilySel)
    lengths: FamilySel = field(default_factory=FamilySel)
    parallelism: ParallelismSel = field(default_factory=ParallelismSel)
    hardware: HardwareSel = field(default_factory=HardwareSel)
    quality: QualitySel = field(default_factory=QualitySel)
    dp_tp: DpTpConf = field(default_factory=DpTpConf)


ConfigStore.instance().store(name="qfleet_report_schema", node=ReportConf)


class ReportError(ValueError):
    """A setting the report cannot use; the message names the key."""


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _check_ranges(cfg) -> None:
    if not 20 <= int(cfg.dpi) <= 600:
        raise ReportError(f"config key 'dpi': must be a whole number in [20, 600], got {cfg.dpi}")
    mi = float(cfg.dp_tp.max_instances)
    if not (mi > 0 and mi < 1e6):
        raise ReportError(f"config key 'dp_tp.max_instances': must be a finite number > 0, got {cfg.dp_tp.max_instances}")
    if not 2 <= int(cfg.dp_tp.points) <= 100_000:
        raise ReportError(f"config key 'dp_tp.points': must be a whole number in [2, 100000], got {cfg.dp_tp.points}")
    if cfg.dp_tp.tasks not in dp_tp.TASK_MODES:
        raise ReportError(f"config key 'dp_tp.tasks': must be one of {', '.join(dp_tp.TASK_MODES)}, got {cfg.dp_tp.tasks!r}")


def check_selections(cfg, sel: Selector) -> None:
    """Every model, GPU, TP, workload and method named in the config exists in the profile set: checked before
    any work, so a typo costs one line, not a half-written report."""
    from profiles.catalog import QUANTS

    sel.check_all("workloads", _plain(cfg.workloads), sel.workloads)
    for part in ("load", "lengths", "parallelism", "hardware"):
        c = cfg[part]
        for name, choices in (("model", sel.models), ("gpu", sel.gpus), ("tp", sel.tps), ("workload", sel.workloads)):
            if name in c:
                sel.check(f"{part}.{name}", c[name], choices)
        if "gpus" in c:
            sel.check_all(f"{part}.gpus", _plain(c.gpus), sel.gpus)
        if "quants" in c:
            sel.check_all(f"{part}.quants", _plain(c.quants), tuple(QUANTS))
    sel.check_all("quality.gpus", _plain(cfg.quality.gpus), sel.gpus)
    sel.check_all("dp_tp.gpus", _plain(cfg.dp_tp.gpus), sel.gpus)


def load_profiles(path: str | None) -> ProfileSet:
    root = Path(path) if path else default_profile_path()
    if not root.exists():
        raise ReportError(f"config key 'profiles': {root}: profile set folder not found")
    return ProfileSet.load(root)


# --- the page ------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,sans-serif;max-width:1500px;margin:1em auto;padding:0 1em;color:#222}
img{max-width:100%;border:1px solid #ddd} figure{margin:0 0 2em 0} figcaption{font-size:.9em;color:#444}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0 1.5em 0} td,th{border:1px solid #ccc;padding:3px 6px;
vertical-align:top} th{background:#f3f3f3} .v-fails{background:#fde2e2} .v-nc{background:#eee}
.v-bc{background:#fff4d6} .v-holds{background:#e2f5e2} .skip{color:#a00}
"""
VERDICT_CLASS = {FAILS: "v-fails", NOT_CHECKABLE: "v-nc", BY_CONSTRUCTION: "v-bc", HOLDS: "v-holds"}


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _view_html(v: View) -> str:
    body = _img(v.png) if v.png is not None else '<p class="skip">Not drawn.</p>'
    return (f'<section id="{v.name}"><h2>{html.escape(v.title)}</h2><figure>{body}'
            f"<figcaption>{html.escape(v.caption)}</figcaption></figure></section>")


def _table(frame, columns: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    rows = []
    for rec in frame.to_dict("records"):
        cells = []
        for col, _ in columns:
            v = rec[col]
            cells.append(f"<td>{html.escape(f'{v:.3g}' if isinstance(v, float) else str(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _dp_tp_html(results, view: View, tasks_from: str, provenance: str) -> str:
    seg = dp_tp.segments_frame(results)
    parts = [f'<section id="dp_tp"><h2>{html.escape(view.title)}</h2>',
             f"<p>Tasks: {html.escape(tasks_from)}. DP = ceil(x / x<sub>s</sub>) per config, the load spread evenly; "
             f"the optimum is the (quant, GPU, TP, DP) with the least energy per output token. "
             f"<b>Energy counted</b>: {html.escape(dp_tp.ENERGY_COUNTED)}</p>",
             f"<figure>{_img(view.png) if view.png else '<p class=skip>Not drawn.</p>'}"
             f"<figcaption>{html.escape(view.caption)} Rows: {html.escape(provenance)}.</figcaption></figure>"]
    for r in results:
        t = r.task
        floor = f", quality floor {t.quality_min:g}" if t.quality_min is not None else ", no quality floor"
        parts.append(f"<h3>{html.escape(t.name)}: {html.escape(t.model)} on {html.escape(t.workload)}, SLO "
                     f"{t.slo.ttft_s:g} s / {t.slo.tpot_s:g} s{floor}</h3>")
        excl = "; ".join(f"{n} {why}" for why, n in r.excluded.items())
        parts.append(f"<p>{len(r.candidates)} configs qualify{html.escape(f' (excluded: {excl})' if excl else '')}.</p>")
        if r.note:
            parts.append(f"<p class=skip>{html.escape(r.note)}</p>")
            continue
        s = seg[seg["task"] == t.name].copy()
        s["config"] = s["gpu"] + " " + s["quant"] + " TP" + s["tp"].astype(str)
        s["load"] = s["from_qps"].map(lambda v: f"{v:.3g}") + "-" + s["to_qps"].map(lambda v: f"{v:.3g}")
        s["energy"] = s["energy_min_j"].map(lambda v: f"{v:.3g}") + "-" + s["energy_max_j"].map(lambda v: f"{v:.3g}")
        s["margin"] = s["margin_vs_second_min_pct"].map(lambda v: f"{v:.1f}") + "-" + s["margin_vs_second_max_pct"].map(
            lambda v: f"{v:.1f} %")
        s["saving"] = s["saving_vs_fp16_min_pct"].map(lambda v: f"{v:.1f}") + "-" + s["saving_vs_fp16_max_pct"].map(
            lambda v: f"{v:.1f} %")
        parts.append(_table(s, [("load", "load (req/s)"), ("config", "optimal config"), ("dp", "DP"), ("gpus", "GPUs"),
                                ("energy", "J / output token"), ("margin", "margin over next best"),
                                ("second_at_end", "next best at the range's end"), ("saving", "saving vs best FP16"),
                                ("fp16_at_end", "best FP16 at the end")]))
        if r.switches:
            parts.append("<p>Switch points: " + html.escape("; ".join(
                f"{sw.load_qps:.4g} req/s {sw.before} -> {sw.after} ({sw.why})" for sw in r.switches)) + ".</p>")
    parts.append("</section>")
    return "".join(parts)


def _findings_html(findings) -> str:
    rows = []
    for f in failures_first(findings):
        rows.append(f'<tr class="{VERDICT_CLASS.get(f.verdict, "")}"><td>{html.escape(f.section)}</td>'
                    f"<td>{html.escape(f.statement)}</td><td><b>{html.escape(f.verdict)}</b></td>"
                    f"<td>{html.escape(f.evidence)}</td><td>{html.escape(f.provenance)}</td></tr>")
    return ('<section id="findings"><h2>The paper\'s §4-§7 findings on this profile set</h2>'
            f"<p>{html.escape(counts_line(findings))} Failures first (profiles.findings.check_findings). "
            "'holds by construction': the deciding numbers were set from the paper's own statement.</p>"
            "<table><tr><th>section</th><th>finding</th><th>verdict</th><th>numbers</th><th>rows used</th></tr>"
            + "".join(rows) + "</table></section>")


def page(profiles: ProfileSet, views: list[View], dp_html: str, findings, timings: dict[str, float],
         command: str) -> str:
    name = profiles.manifest.get("name", profiles.path.name)
    desc = profiles.manifest.get("description", "")
    toc = "".join(f'<li><a href="#{v.name}">{html.escape(v.title)}</a>{"" if v.png else " (not drawn)"}</li>'
                  for v in views)
    toc += '<li><a href="#dp_tp">Energy-optimal DP/TP (§8.2)</a></li><li><a href="#findings">Findings</a></li>'
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>qfleet characterization report: {html.escape(str(name))}</title><style>{CSS}</style></head><body>"
            f"<h1>Characterization report: {html.escape(str(name))}</h1>"
            f"<p>Profile set <code>{html.escape(str(profiles.path))}</code>"
            + (f": {html.escape(str(desc).rstrip('.'))}" if desc else "")
            + f". {len(profiles.configs())} configs. Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by "
            f"<code>{html.escape(command)}</code>. {html.escape(counts_line(findings))}</p>"
            "<p>Provenance kinds: measured (an engine on a GPU), measured-kernels (composed from measured kernel "
            "latencies), derived (computed from other rows by a named method; every curve of a shipped set is a "
            "search on the simulated instance), literature, assumption. Each caption names the rows drawn and the "
            "provenance of the step models beneath them.</p>"
            f"<ul>{toc}</ul>" + "".join(_view_html(v) for v in views) + dp_html + _findings_html(findings)
            + f"<p><small>Time per part: {html.escape(timing)}.</small></p></body></html>")


# --- the job -------------------------------------------------------------------------------------

def build_report(cfg, out: Path, command: str = "qfleet-report", log=print) -> dict:
    """Every figure, table and the page for one composed config; returns the paths and timings."""
    _check_ranges(cfg)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    profiles = load_profiles(cfg.profiles)
    sel = Selector(profiles)
    out.mkdir(parents=True, exist_ok=True)
    workloads = _plain(cfg.workloads)
    dpi = int(cfg.dpi)
    check_selections(cfg, sel)
    tasks, tasks_from = dp_tp.resolve_tasks(profiles, str(cfg.dp_tp.tasks), str(cfg.slo), str(cfg.cluster))
    timings["load"] = time.perf_counter() - started

    views: list[View] = []

    def step(name: str, fn, *args, **kwargs) -> None:
        t0 = time.perf_counter()
        v = fn(profiles, sel, out, *args, dpi=dpi, **kwargs)
        timings[name] = time.perf_counter() - t0
        views.append(v)
        log(f"[report] {v.name}: {'drawn' if v.png else 'not drawn'} ({timings[name]:.1f} s)")

    step("fig7", draw_load, cfg.load.gpu, cfg.load.model, cfg.load.tp, workloads)
    step("fig8", draw_ranking, cfg.load.gpu, cfg.load.model, cfg.load.tp, workloads)
    step("s5.1", draw_lengths, cfg.lengths.gpu, cfg.lengths.model, cfg.lengths.tp)
    step("fig9", draw_parallelism, cfg.parallelism.gpu, cfg.parallelism.model, cfg.parallelism.workload,
         _plain(cfg.parallelism.quants))
    step("fig10", draw_hardware, cfg.hardware.model, cfg.hardware.tp, _plain(cfg.hardware.gpus), cfg.hardware.workload,
         _plain(cfg.hardware.quants))
    step("quality", draw_quality, dp_tp.case_study_tasks(str(cfg.slo), str(cfg.cluster)), _plain(cfg.quality.gpus))

    t0 = time.perf_counter()
    gpus = _plain(cfg.dp_tp.gpus)
    results = dp_tp.plan(profiles, tasks, gpus, float(cfg.dp_tp.max_instances), int(cfg.dp_tp.points))
    provenance = dp_tp.rows_used(profiles, results)
    paths = dp_tp.write_outputs(results, profiles, out, tasks_from, gpus, float(cfg.dp_tp.max_instances), provenance)
    dp_view = View("dp_tp", "Energy-optimal (quant, GPU, TP, DP) per task and load (§8.2)", paths.get("figure"),
                   "Left: energy per output token of the optimum (colour = winning config), of the next-best other "
                   "config and of the best FP16 deployment, each at its own DP; grey verticals: switch points. "
                   "Middle: saving of the optimum against the best FP16 and its margin over the next best. Right: "
                   "GPUs provisioned (DP x TP).")
    timings["dp_tp"] = time.perf_counter() - t0
    log(f"[report] dp_tp: {len(results)} tasks ({timings['dp_tp']:.1f} s)")

    t0 = time.perf_counter()
    findings = check_findings(profiles)
    write_findings(profiles, out, findings)
    timings["findings"] = time.perf_counter() - t0
    log(f"[report] findings: {counts_line(findings)} ({timings['findings']:.1f} s)")

    timings["total"] = time.perf_counter() - started
    text = page(profiles, views, _dp_tp_html(results, dp_view, tasks_from, provenance), findings, timings, command)
    write_text(out / "report.html", text)
    pngs = [v.png for v in views if v.png] + ([paths["figure"]] if "figure" in paths else [])
    return {"out": out, "html": out / "report.html", "pngs": pngs, "views": views, "findings": findings,
            "dp_tp": results, "timings": timings}


@hydra.main(version_base="1.3", config_path="report_conf", config_name="config")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out) if cfg.out else Path(HydraConfig.get().runtime.output_dir)
    command = " ".join(["qfleet-report", *HydraConfig.get().overrides.task])
    try:
        done = build_report(cfg, out, command)
    except (ReportError, SelectionError, DpTpError, ProfileError) as exc:
        print(f"qfleet-report: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"[report] {len(done['pngs'])} figures, {len(done['findings'])} findings; "
          f"{done['html']} ({done['timings']['total']:.1f} s)")


if __name__ == "__main__":
    main()
