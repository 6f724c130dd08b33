"""Every §4-§7 finding of the characterization paper, checked on a profile set, with the numbers behind it.

    python -m profiles.findings [--profiles profiles/default] [--out profiles/reports]

``check_findings(profiles)`` is the one implementation the reports use (``profiles.report_kernels``, and
any app that reports on a profile set): one ``Finding`` per statement of the paper, with a verdict,
the numbers, and which rows decided it and their provenance. A finding "holds by construction" when
the deciding numbers were set from the paper's own statement (the quality loss rule, the KV-cache
memory reserve), so it confirms nothing; "not checkable" when the profile set lacks what it needs.
The checks themselves live in ``profiles.paper_findings``, one module per paper section.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from profiles.catalog import QUANTS
from profiles.paper_findings import CHECKS
from profiles.paper_findings.common import (
    MID_RANGE_FRACTION, MID_RANGE_QPS, NEGLIGIBLE, QUOTE_TOLERANCE, SIMILAR, FRACTIONAL, TABLE2_TOLERANCE, WORKLOADS,
)
from profiles.paper_findings.data import H100, NotCheckable, Reader, Tables
from profiles.profile_set import ProfileError, ProfileSet, default_profile_path
from profiles.schema import ConfigKey

HOLDS = "holds"
FAILS = "does not hold"
BY_CONSTRUCTION = "holds by construction"
NOT_CHECKABLE = "not checkable"
VERDICTS = (FAILS, NOT_CHECKABLE, BY_CONSTRUCTION, HOLDS)  # report order: failures first


@dataclass(frozen=True, slots=True)
class Finding:
    """One statement of the paper and what the profile set says about it."""

    name: str  # stable id, e.g. "kv-compression-latency"
    section: str  # where the paper says it, e.g. "§4.1 latency (4)"
    statement: str
    verdict: str  # one of VERDICTS
    evidence: str  # the numbers
    provenance: str  # rows read and their provenance; for "holds by construction", why


@dataclass(frozen=True, slots=True)
class Table2Row:
    """qfleet's saturation of a 13B 8-bit config on one H100 beside the paper's (twice the Table 2 mid-range load)."""

    workload: str
    slo_ttft_s: float
    slo_tpot_s: float
    quant: str
    saturation_qps: float
    paper_saturation_qps: float
    ratio: float
    primary_slo: bool  # the workload's tightest SLO, the one the findings hold configs to


def check_findings(profiles: ProfileSet) -> list[Finding]:
    """Every finding, in the paper's order."""
    tables = Tables.of(profiles)
    out = []
    for c in CHECKS:
        reader = Reader(profiles, tables)
        try:
            outcome = c.run(reader)
        except (NotCheckable, ProfileError) as exc:
            out.append(Finding(c.name, c.section, c.statement, NOT_CHECKABLE, str(exc), reader.provenance_note()))
            continue
        except (KeyError, ValueError, ZeroDivisionError) as exc:  # a profile set missing part of what a check needs
            out.append(Finding(c.name, c.section, c.statement, NOT_CHECKABLE,
                               f"incomplete profile set: {type(exc).__name__} {exc}", reader.provenance_note()))
            continue
        verdict = (BY_CONSTRUCTION if outcome.construction else HOLDS) if outcome.holds else FAILS
        provenance = reader.provenance_note()
        if outcome.construction:
            provenance = f"{outcome.construction}; {provenance}"
        out.append(Finding(c.name, c.section, c.statement, verdict, outcome.evidence, provenance))
    return out


def failures_first(findings: list[Finding]) -> list[Finding]:
    """Does-not-hold first, then not checkable, by construction, holds; the paper's order within each."""
    return sorted(findings, key=lambda f: VERDICTS.index(f.verdict))


def verdict_counts(findings: list[Finding]) -> dict[str, int]:
    counts = Counter(f.verdict for f in findings)
    return {v: counts.get(v, 0) for v in VERDICTS}


def counts_line(findings: list[Finding]) -> str:
    c = verdict_counts(findings)
    return (f"{len(findings)} findings: {c[HOLDS]} hold, {c[FAILS]} do not hold, {c[BY_CONSTRUCTION]} hold by "
            f"construction, {c[NOT_CHECKABLE]} not checkable.")


def table2_comparison(profiles: ProfileSet, reader: Reader | None = None) -> list[Table2Row]:
    """13B 8-bit methods on one H100: saturation per workload and searched SLO, over the paper's Table 2 figure."""
    r = reader or Reader(profiles)
    rows = []
    for w in WORKLOADS:
        paper = MID_RANGE_QPS[w] / MID_RANGE_FRACTION
        try:
            slos = r.slos(w)
        except NotCheckable:
            continue
        for slo in slos:
            for q in QUANTS:
                key = ConfigKey(H100, "llama2-13b", q, 1)
                if QUANTS[q].weight_bits != 8 or not r.has(key, w):
                    continue
                sat = r.saturation_qps(key, w, slo)
                rows.append(Table2Row(w, slo.ttft_s, slo.tpot_s, q, sat, paper, sat / paper, slo == slos[0]))
    return rows


# --- rendering -------------------------------------------------------------------------------------

def shown_path(path: Path) -> str:
    """A profile set's path relative to the working directory when it is under it (reports are committed)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def findings_table(findings: list[Finding], provenance: bool = True) -> list[str]:
    head = "| section | finding | verdict | numbers |" + (" rows used |" if provenance else "")
    lines = [head, "|---|---|---|---|" + ("---|" if provenance else "")]
    for f in failures_first(findings):
        cells = [f.section, f.statement, f"**{f.verdict}**", f.evidence] + ([f.provenance] if provenance else [])
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def table2_table(rows: list[Table2Row]) -> list[str]:
    lines = ["| workload | SLO P90 TTFT / TPOT | method | qfleet saturation (req/s) | paper (2 x Table 2 mid-range) | "
             "ratio |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.workload} | {row.slo_ttft_s:g} s / {row.slo_tpot_s:g} s | {row.quant} | "
                     f"{row.saturation_qps:.2f} | {row.paper_saturation_qps:g} | {row.ratio:.2f}x |")
    return lines


def readings() -> list[str]:
    """The thresholds that turn the paper's vague words into verdicts (ours, not the paper's)."""
    return [f"- 'negligible', 'marginal', 'without penalty': within {NEGLIGIBLE:.0%}; 'similar', 'comparable': "
            f"within {SIMILAR:.0%}; 'fractional': under {FRACTIONAL:.0%}; 'up to X %': the largest effect within "
            f"{100 * QUOTE_TOLERANCE:.0f} points of X; Table 2: within {TABLE2_TOLERANCE:.0%} of the paper's "
            "saturation; 'generally', 'typically': three quarters of the cases.",
            "- Loads: §4 uses the paper's own mid-range rates (Table 2: " + ", ".join(
                f"{w} {q:g} req/s" for w, q in MID_RANGE_QPS.items()) + "); §5.2-§7 use fractions of the profile "
            "set's own saturation; saturations use each workload's tightest searched SLO.",
            "- §5.1 length pairs have no profile curves: they are simulated on each config's step model "
            "(2-minute Poisson burst at 5 req/s, seed 0, `calibrate.sim_probe`)."]


def findings_markdown(profiles: ProfileSet, findings: list[Finding], table2: list[Table2Row]) -> str:
    lines = [f"# The characterization paper's §4-§7 findings on `{profiles.path.name}`", "",
             f"Profile set: `{shown_path(profiles.path)}`. Regenerate: `python -m profiles.report_kernels` (or "
             "`python -m profiles.findings`). Implementation: `profiles/findings.py`, checks in "
             "`profiles/paper_findings/`.", "", counts_line(findings), "",
             "Failures first. 'holds by construction' means the deciding numbers were set from the paper's own "
             "statement, so the check confirms nothing.", ""]
    lines += findings_table(findings)
    lines += ["", "## Table 2: saturation of 13B 8-bit methods on one H100", "",
              "The paper's mid-range load is 50 % of the saturation of 13B W8A8-INT on one H100 (5 / 21 / 4 req/s), "
              "so that config saturates near 10 / 42 / 8 req/s there.", ""]
    lines += table2_table(table2)
    lines += ["", "## How the paper's words are read", ""] + readings()
    return "\n".join(lines) + "\n"


def findings_csv(findings: list[Finding]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[f.name for f in fields(Finding)])
    writer.writeheader()
    for f in failures_first(findings):
        writer.writerow(asdict(f))
    return buf.getvalue()


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_findings(profiles: ProfileSet, out: Path, findings: list[Finding] | None = None) -> list[Finding]:
    """Write ``findings.md`` and ``findings.csv`` into ``out``; returns the findings."""
    findings = check_findings(profiles) if findings is None else findings
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "findings.md", findings_markdown(profiles, findings, table2_comparison(profiles)))
    _write(out / "findings.csv", findings_csv(findings))
    return findings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=Path, default=default_profile_path())
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "reports")
    args = parser.parse_args(argv)
    findings = write_findings(ProfileSet.load(args.profiles), args.out)
    print(counts_line(findings))


if __name__ == "__main__":
    main()
