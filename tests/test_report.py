"""qfleet-report on tiny profile sets: the app writes every figure and one page holding every figure and every
finding; figures skip rows a set lacks and say so; bad inputs get one line and exit 2."""

from __future__ import annotations

import base64
import html
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

import experiments.report as report
from experiments.characterization import SelectionError
from findings_fixtures import Flat, synthetic_profiles
from profiles.findings import FAILS, HOLDS, check_findings, failures_first
from profiles.schema import ConfigKey

ROOT = Path(__file__).resolve().parent.parent
H100, A100 = "h100-80gb", "a100-40gb"
PNGS = ("fig7_load", "fig8_ranking", "s51_lengths", "fig9_tp", "fig10_hardware", "quality_energy", "dp_tp")


def tiny_curves() -> dict:
    c = {}
    for w in ("sharegpt", "humaneval", "newsqa"):  # §5: 34B on one H100
        c[(ConfigKey(H100, "codellama-34b", "fp16", 1), w)] = Flat(8.0, energy_j=0.5)
        c[(ConfigKey(H100, "codellama-34b", "w8a8-int", 1), w)] = Flat(12.0, energy_j=0.4)
        c[(ConfigKey(H100, "codellama-34b", "w4a8", 1), w)] = Flat(15.0, energy_j=0.3, ttft_s=0.08)
    for tp, sat in ((2, 3.0), (4, 5.0)):  # §6: 70B on H100 at two TP levels
        c[(ConfigKey(H100, "llama2-70b", "fp16", tp), "sharegpt")] = Flat(sat, energy_j=1.0 * tp)
        c[(ConfigKey(H100, "llama2-70b", "w8a8-fp", tp), "sharegpt")] = Flat(sat * 1.4, energy_j=0.7 * tp)
    for gpu, sat in ((A100, 4.0), (H100, 9.0)):  # §7: 13B on two GPUs; W8A8-FP only on the H100
        for w in ("sharegpt", "newsqa"):
            c[(ConfigKey(gpu, "llama2-13b", "fp16", 1), w)] = Flat(sat, energy_j=0.4)
            c[(ConfigKey(gpu, "llama2-13b", "w4a16-int", 1), w)] = Flat(sat * 1.3, energy_j=0.35)
    c[(ConfigKey(H100, "llama2-13b", "w8a8-fp", 1), "sharegpt")] = Flat(12.0, energy_j=0.3)
    return c


QUALITY = {("llama2-13b", "fp16", "chat-s"): 60.0, ("llama2-13b", "w4a16-int", "chat-s"): 56.0,
           ("llama2-13b", "w8a8-fp", "chat-s"): 59.0, ("llama2-70b", "fp16", "chat-r"): 60.0,
           ("llama2-70b", "w8a8-fp", "chat-r"): 58.0, ("codellama-34b", "fp16", "code"): 45.0,
           ("codellama-34b", "w8a8-int", "code"): 44.0, ("codellama-34b", "w4a8", "code"): 40.0,
           ("llama2-13b", "fp16", "summarization"): 20.0, ("llama2-13b", "w4a16-int", "summarization"): 19.0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synthetic_profiles(tmp_path_factory.mktemp("tiny"), tiny_curves(), QUALITY, name="tiny")


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    """One config, one workload: only the §5 views have anything to draw."""
    curves = {(ConfigKey(H100, "codellama-34b", "fp16", 1), "sharegpt"): Flat(8.0)}
    return synthetic_profiles(tmp_path_factory.mktemp("sparse"), curves, {("codellama-34b", "fp16", "code"): 45.0},
                              name="sparse")


def composed(overrides: list[str]):
    with initialize_config_module(config_module="experiments.report_conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def run_report(profiles, out: Path, *overrides: str) -> dict:
    return report.build_report(composed([f"profiles={profiles.path}", "dp_tp.points=40", *overrides]), out,
                               log=lambda _: None)


def test_the_app_writes_every_figure_and_a_page_with_every_figure_and_finding(tiny, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "experiments.report", f"profiles={tiny.path}", f"out={out}",
                           "dp_tp.points=40", f"hydra.run.dir={tmp_path / 'hydra'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    page = (out / "report.html").read_text()
    for name in PNGS:
        png = out / f"{name}.png"
        assert png.stat().st_size > 1000, name
        assert base64.b64encode(png.read_bytes()).decode() in page, f"{name} is not inlined"
    assert "Not drawn" not in page and 'src="http' not in page
    for f in check_findings(tiny):
        assert html.escape(f.statement) in page, f.name
    ordered = failures_first(check_findings(tiny))
    assert ordered[0].verdict == FAILS and page.index(html.escape(ordered[0].statement)) < page.index(
        html.escape(next(f for f in ordered if f.verdict == HOLDS).statement))
    for name in ("findings.md", "findings.csv", "dp_tp.csv", "dp_tp_segments.csv", "dp_tp.md"):
        assert (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    assert "[report] 7 figures" in done.stdout


def test_captions_name_the_rows_and_their_provenance(tiny, tmp_path):
    views = {v.name: v for v in run_report(tiny, tmp_path)["views"]}
    assert "codellama-34b on h100-80gb TP1, 3 methods x 3 workloads" in views["fig7_load"].caption
    assert "curves: 9 (9 assumption); step models beneath: 3 assumption" in views["fig7_load"].caption
    assert "simulated on 3 step models (no profile rows)" in views["s51_lengths"].caption
    assert "TP 2/4; methods: fp16, w8a8-fp" in views["fig9_tp"].caption
    # W8A8-FP exists on the H100 only: drawn there, and the A100 row is named as absent
    assert "GPUs a100-40gb, h100-80gb" in views["fig10_hardware"].caption
    assert "not profiled: w8a8-fp on a100-40gb" in views["fig10_hardware"].caption
    assert "quality rows: 10 (10 assumption)" in views["quality_energy"].caption


def test_figures_skip_what_a_profile_set_lacks(sparse, tmp_path):
    done = run_report(sparse, tmp_path)
    views = {v.name: v for v in done["views"]}
    assert views["fig7_load"].png is not None and "1 methods x 1 workloads" in views["fig7_load"].caption
    assert "curves: 1 (1 assumption)" in views["fig7_load"].caption
    assert views["fig9_tp"].png is None and "two or more TP levels" in views["fig9_tp"].caption
    assert views["fig10_hardware"].png is None and "two or more GPU types" in views["fig10_hardware"].caption
    assert not (tmp_path / "fig9_tp.png").exists() and not (tmp_path / "fig10_hardware.png").exists()
    page = done["html"].read_text()
    assert page.count("Not drawn.") == 2 and "two or more TP levels" in page
    # the §8.2 section falls back to one task per (model, workload) and plans the one config
    assert [r.task.name for r in done["dp_tp"]] == ["sharegpt/codellama-34b"]
    assert len(done["pngs"]) == 5


@pytest.mark.parametrize("override,message", [
    ("load.model=llama2-99b", "config key 'load.model': 'llama2-99b' is not in the profile set"),
    ("hardware.gpus=[b200]", "config key 'hardware.gpus': 'b200' is not in the profile set"),
    ("workloads=[azure-conv]", "config key 'workloads': 'azure-conv' is not in the profile set"),
    ("dp_tp.tasks=everything", "config key 'dp_tp.tasks': must be one of auto, case_study, workloads"),
    ("dp_tp.max_instances=0", "config key 'dp_tp.max_instances': must be a finite number > 0"),
])
def test_bad_selections_get_one_line(tiny, tmp_path, override, message):
    with pytest.raises((SelectionError, report.ReportError)) as err:
        run_report(tiny, tmp_path, override)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "report.html").exists()


def test_the_command_line_prints_one_line_and_exits_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "experiments.report", f"profiles={tmp_path / 'none'}",
                           f"out={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'hydra'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"qfleet-report: config key 'profiles': {tmp_path / 'none'}: profile set folder not found"]
