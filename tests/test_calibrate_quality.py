"""Quality import: lm-eval-harness results JSON and OpenCompass CSV into task scores; lm-eval against an endpoint."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from calibrate.quality_import import (QualityImportError, lm_eval_command, lm_eval_scores, opencompass_scores,
                                      run_lm_eval, task_rows)

LM_EVAL = {
    "results": {
        "hellaswag": {"acc,none": 0.57, "acc_norm,none": 0.76, "alias": "hellaswag"},
        "arc_challenge": {"acc,none": 0.43, "acc_norm,none": 0.46},
        "winogrande": {"acc,none": 0.69},
        "triviaqa": {"exact_match,remove_whitespace": 0.52},
        "mmlu": {"acc,none": 0.458},
        "humaneval": {"pass@1,create_test": 0.128},
    },
    "config": {"model": "local-completions", "model_args": "model=llama2-7b,base_url=http://x/v1/completions"},
    "lm_eval_version": "0.4.8",
}


def test_lm_eval_results_become_task_scores(tmp_path):
    path = tmp_path / "results_2026.json"
    path.write_text(json.dumps(LM_EVAL))
    scores, source = lm_eval_scores(path)
    assert scores["hellaswag"] == pytest.approx(76.0) and scores["humaneval"] == pytest.approx(12.8)
    assert source.startswith("measured: lm-evaluation-harness (0.4.8) results results_2026.json")
    rows, missing = task_rows(scores, "llama2-7b", "fp16", source)
    by_task = {r["task"]: r["score"] for r in rows}
    assert by_task == {"chat-s": pytest.approx((76 + 46 + 69 + 52) / 4), "code": pytest.approx(12.8)}
    assert missing == ["chat-r (needs bbh)", "summarization (needs rouge)"]
    assert all(r["model"] == "llama2-7b" and r["quant"] == "fp16" and "task = mean of" in r["source"] for r in rows)


def test_lm_eval_errors_name_the_file_and_field(tmp_path):
    with pytest.raises(QualityImportError, match="not found"):
        lm_eval_scores(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"config": {}}))
    with pytest.raises(QualityImportError, match=r"bad.json: no 'results' object"):
        lm_eval_scores(bad)
    bad.write_text(json.dumps({"results": {"mmlu": {"acc,none": float("nan")}}}).replace("NaN", "NaN"))
    with pytest.raises(QualityImportError, match=r"results.mmlu.'acc,none' is not finite"):
        lm_eval_scores(bad)


def test_opencompass_csv(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text("dataset,version,metric,mode,llama-2-7b,llama-2-13b\n"
                    "hellaswag,a6e128,accuracy,ppl,74.0,77.0\nARC-c,1e0de5,accuracy,ppl,45.0,48.0\n"
                    "winogrande,b36770,accuracy,ppl,68.0,71.0\ntriviaqa,2121ce,score,gen,52.0,60.0\n"
                    "bbh,-,naive_average,gen,33.0,38.0\nmmlu,-,naive_average,ppl,46.0,55.0\n"
                    "openai_humaneval,8e312c,humaneval_pass@1,gen,13.0,-\n")
    with pytest.raises(QualityImportError, match=r"2 model columns"):
        opencompass_scores(path)
    scores, source = opencompass_scores(path, "llama-2-13b")
    assert "humaneval" not in scores and scores["mmlu"] == 55.0
    rows, missing = task_rows(scores, "llama2-13b", "fp16", source)
    assert {r["task"]: r["score"] for r in rows} == {"chat-s": 64.0, "chat-r": 46.5}
    assert "code (needs humaneval)" in missing and "column 'llama-2-13b'" in rows[0]["source"]
    path.write_text("dataset,version,metric,mode,m\nmmlu,-,acc,ppl,oops\n")
    with pytest.raises(QualityImportError, match=r"row 2, field 'm': not a number \('oops'\)"):
        opencompass_scores(path)


def test_lm_eval_against_the_served_endpoint(tmp_path, monkeypatch):
    out = tmp_path / "lm"
    cmd = lm_eval_command("llama2-7b", "http://127.0.0.1:8000/v1/completions", ["hellaswag", "mmlu"], out,
                          "/ckpt", num_concurrent=4, limit=100)
    assert cmd == ["lm_eval", "--model", "local-completions", "--model_args",
                   "model=llama2-7b,base_url=http://127.0.0.1:8000/v1/completions,num_concurrent=4,max_retries=3,"
                   "tokenized_requests=False,tokenizer=/ckpt", "--tasks", "hellaswag,mmlu",
                   "--output_path", str(out), "--limit", "100"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "lm_eval"  # a stand-in lm_eval that writes a results file where lm-eval does
    fake.write_text("#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = --output_path ] && out=\"$2\"; shift; done\n"
                    "mkdir -p \"$out/llama2-7b\"\n"
                    f"cat > \"$out/llama2-7b/results_2026-01-01.json\" <<'X'\n{json.dumps(LM_EVAL)}\nX\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = run_lm_eval(cmd, out, tmp_path / "lm.log")
    assert result.name == "results_2026-01-01.json" and lm_eval_scores(result)[0]["mmlu"] == pytest.approx(45.8)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(QualityImportError, match=r"'lm_eval' is not installed \(pip install 'lm-eval\[api\]'\)"):
        run_lm_eval(cmd, out, tmp_path / "lm.log")
    assert Path(result).exists()
