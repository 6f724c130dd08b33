"""Quality scores from benchmark suites into the profile's quality table (score 0-100 per model, quant, task).

* ``lm_eval_scores``: an lm-evaluation-harness results JSON (``{"results": {"hellaswag": {"acc_norm,none": 0.76,
  ...}, ...}}``); the metric read per benchmark is in ``BENCHMARKS``, fractions are scaled to 0-100.
* ``opencompass_scores``: an OpenCompass summary CSV (``dataset,version,metric,mode,<model>...``), already 0-100.
* ``task_rows`` averages benchmarks into qfleet's tasks as ``profiles/quality.py`` defines them: ``chat-s`` =
  mean of HellaSwag, ARC-Challenge, Winogrande, TriviaQA; ``chat-r`` = mean of BBH and MMLU; ``code`` =
  HumanEval pass@1; ``summarization`` = ROUGE on a summarization set. A task is produced only when all of
  its benchmarks are present; the others are listed as missing.
* ``lm_eval_command`` / ``run_lm_eval`` run lm-eval against the served endpoint (``local-completions``
  model type; loglikelihood tasks need an engine that returns prompt logprobs with ``echo``).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

# benchmark -> (lm-eval result keys to try, OpenCompass dataset names)
BENCHMARKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "hellaswag": (("acc_norm,none", "acc,none"), ("hellaswag",)),
    "arc_challenge": (("acc_norm,none", "acc,none"), ("ARC-c", "arc_challenge", "ARC_c")),
    "winogrande": (("acc,none",), ("winogrande",)),
    "triviaqa": (("exact_match,remove_whitespace", "exact_match,none"), ("triviaqa",)),
    "bbh": (("exact_match,get-answer", "exact_match,none", "acc,none"), ("bbh",)),
    "mmlu": (("acc,none",), ("mmlu",)),
    "humaneval": (("pass@1,create_test", "pass@1,none", "pass_at_1,none"), ("openai_humaneval", "humaneval")),
    "rouge": (("rougeL,none", "rouge1,none"), ("newsqa", "rouge")),
}
TASKS: dict[str, tuple[str, ...]] = {
    "chat-s": ("hellaswag", "arc_challenge", "winogrande", "triviaqa"),
    "chat-r": ("bbh", "mmlu"),
    "code": ("humaneval",),
    "summarization": ("rouge",),
}


class QualityImportError(ValueError):
    """A results file that cannot be read; names the file and field."""


def lm_eval_scores(path: str | Path) -> tuple[dict[str, float], str]:
    """Benchmark -> score 0-100 from an lm-eval results JSON, and a provenance string."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise QualityImportError(f"{p}: lm-eval results file not found") from None
    except json.JSONDecodeError as exc:
        raise QualityImportError(f"{p}: not valid JSON ({exc})") from None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict):
        raise QualityImportError(f"{p}: no 'results' object (is this an lm-eval results JSON?)")
    scores = {}
    used = []
    for bench, (keys, _) in BENCHMARKS.items():
        entry = results.get(bench)
        if not isinstance(entry, dict):
            continue
        for key in keys:
            value = entry.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(value):
                    raise QualityImportError(f"{p}: results.{bench}.'{key}' is not finite")
                scores[bench] = float(value) * (100.0 if value <= 1.0 else 1.0)
                used.append(f"{bench} {key}")
                break
    version = data.get("lm_eval_version") or data.get("git_hash") or "unknown version"
    model_args = (data.get("config") or {}).get("model_args", "") if isinstance(data.get("config"), dict) else ""
    source = f"measured: lm-evaluation-harness ({version}) results {p.name}: {', '.join(used)}"
    if model_args:
        source += f"; model_args {str(model_args)[:160]}"
    return scores, source


def opencompass_scores(path: str | Path, column: str | None = None) -> tuple[dict[str, float], str]:
    p = Path(path)
    try:
        with p.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise QualityImportError(f"{p}: OpenCompass CSV not found") from None
    if not rows:
        raise QualityImportError(f"{p}: empty CSV")
    fixed = {"dataset", "version", "metric", "mode"}
    missing = fixed - set(rows[0])
    if missing:
        raise QualityImportError(f"{p}: missing column(s) {sorted(missing)} of an OpenCompass summary")
    models = [c for c in rows[0] if c not in fixed]
    if column is None:
        if len(models) != 1:
            raise QualityImportError(f"{p}: {len(models)} model columns {models}; name one in the plan's 'column'")
        column = models[0]
    elif column not in models:
        raise QualityImportError(f"{p}: no model column '{column}' (columns: {models})")
    names = {name.lower(): bench for bench, (_, oc) in BENCHMARKS.items() for name in oc}
    scores = {}
    for i, row in enumerate(rows):
        bench = names.get(str(row["dataset"]).lower())
        if bench is None:
            continue
        raw = row[column]
        try:
            value = float(raw)
        except (TypeError, ValueError):
            if raw in ("-", ""):
                continue
            raise QualityImportError(f"{p}: row {i + 2}, field '{column}': not a number ({raw!r})") from None
        scores[bench] = value
    return scores, f"measured: OpenCompass summary {p.name}, column '{column}'"


def task_rows(scores: dict[str, float], model: str, quant: str, source: str) -> tuple[list[dict], list[str]]:
    rows, missing = [], []
    for task, benches in TASKS.items():
        absent = [b for b in benches if b not in scores]
        if absent:
            missing.append(f"{task} (needs {', '.join(absent)})")
            continue
        score = sum(scores[b] for b in benches) / len(benches)
        rows.append({"model": model, "quant": quant, "task": task, "score": round(score, 4),
                     "source": f"{source}; task = mean of {', '.join(benches)}"})
    return rows, missing


def lm_eval_command(model: str, completions_url: str, tasks: Sequence[str], output_path: Path, tokenizer: str | None,
                    num_concurrent: int = 8, limit: int | None = None, extra: Sequence[str] = ()) -> list[str]:
    """lm-eval against an OpenAI-compatible completions endpoint (``pip install lm-eval[api]``)."""
    args = [f"model={model}", f"base_url={completions_url}", f"num_concurrent={num_concurrent}", "max_retries=3",
            "tokenized_requests=False"]
    if tokenizer:
        args.append(f"tokenizer={tokenizer}")
    cmd = ["lm_eval", "--model", "local-completions", "--model_args", ",".join(args), "--tasks", ",".join(tasks),
           "--output_path", str(output_path)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    return cmd + list(extra)


def run_lm_eval(cmd: list[str], output_path: Path, log_path: Path) -> Path:
    """Run lm-eval and return the results JSON it wrote (newest ``results_*.json`` under output_path)."""
    if shutil.which(cmd[0]) is None:
        raise QualityImportError(f"'{cmd[0]}' is not installed (pip install 'lm-eval[api]'); cannot run {' '.join(cmd)}")
    output_path.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise QualityImportError(f"lm-eval failed (exit {code}); log {log_path}")
    found = sorted(output_path.rglob("results*.json"), key=lambda q: q.stat().st_mtime)
    if not found:
        raise QualityImportError(f"lm-eval wrote no results*.json under {output_path}; log {log_path}")
    return found[-1]
