"""Profiling plans: loading, plan-time errors (before any launch), engine commands and capability tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import calibrate.main  # registers the schema  # noqa: F401
from calibrate.engines import make_handler
from calibrate.engines.base import render, LaunchTemplateError
from calibrate.engines.trtllm import RECIPES, TrtllmHandler, backend_flag
from calibrate.main import describe_plan, run
from calibrate.plan import PlanError, load_plan_file, plan_from_mapping, validate_plan
from profiles.catalog import QUANTS

CONF_DIR = str(Path(calibrate.main.__file__).resolve().parent.parent / "experiments" / "calibrate_conf")


def standin_plan(tmp_path: Path, **overrides) -> dict:
    step = tmp_path / "step.json"
    step.write_text("{}")
    plan = {
        "name": "p", "results_db": str(tmp_path / "r.sqlite"), "export_path": str(tmp_path / "profile"),
        "work_dir": str(tmp_path / "work"), "gpus_available": 4,
        "engine": {"kind": "openai", "version": "v1",
                   "launch": ["{python}", "-m", "calibrate.standin", "--port", "{port}", "--step-model", "{checkpoint}"]},
        "entries": [{"name": "a", "model": "m", "checkpoint": str(step), "quant": "fp16", "tp": 1, "gpu": "g",
                     "workloads": ["fixed-8-4"]}],
        "slos": [{"ttft_s": 1.0, "tpot_s": 0.1}],
    }
    plan.update(overrides)
    return plan


def entry(tmp_path, **fields):
    e = dict(standin_plan(tmp_path)["entries"][0])
    e.update(fields)
    return e


def test_json_plan_file_loads_and_validates(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(standin_plan(tmp_path)))
    plan = load_plan_file(path)
    validate_plan(plan, make_handler(plan.engine))
    assert plan.entries[0].devices == (0,) and plan.burst.burst_s == 60.0
    assert plan.engine.launch[0] == "{python}"


def test_bad_entries_are_all_named_before_any_launch(tmp_path):
    data = standin_plan(tmp_path, entries=[
        entry(tmp_path, name="bad-quant", quant="w9a9"),
        entry(tmp_path, name="bad-tp", tp=3),
        entry(tmp_path, name="no-ckpt", checkpoint=str(tmp_path / "missing")),
        entry(tmp_path, name="bad-workload", workloads=["nosuch"]),
        entry(tmp_path, name="too-wide", tp=8),
    ])
    plan = plan_from_mapping(data)
    with pytest.raises(PlanError) as info:
        validate_plan(plan, make_handler(plan.engine))
    text = str(info.value)
    assert "plan entry 'bad-quant' (entries[0]), field 'quant': unknown quant method 'w9a9'" in text
    assert "plan entry 'bad-tp' (entries[1]), field 'tp': tp=3 does not divide the node's gpus_available=4" in text
    assert "plan entry 'no-ckpt' (entries[2]), field 'checkpoint'" in text and "does not exist" in text
    assert "plan entry 'bad-workload' (entries[3]), field 'workloads': unknown workload 'nosuch'" in text
    assert "plan entry 'too-wide' (entries[4]), field 'tp': tp=8 does not divide" in text
    assert "cannot run (5 problem(s)); nothing was launched" in text


def test_run_refuses_a_bad_plan_before_touching_anything(tmp_path):
    data = standin_plan(tmp_path, entries=[entry(tmp_path, quant="int3")])
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    cfg = OmegaConf.create({"plan_file": str(path), "dry_run": False, "export": True, "plan": {}})
    with pytest.raises(PlanError, match="field 'quant'"):
        run(cfg, log=lambda line: None)
    assert not (tmp_path / "r.sqlite").exists() and not (tmp_path / "work").exists()


def test_unknown_plan_keys_fail_with_their_path(tmp_path):
    with pytest.raises(PlanError, match=r"plan.burst: unknown key\(s\) \['burst_ss'\]"):
        plan_from_mapping(standin_plan(tmp_path, burst={"burst_ss": 3}))
    bad = standin_plan(tmp_path)
    bad["entries"][0]["quantization"] = "fp16"
    with pytest.raises(PlanError, match=r"plan.entries\[0\] \('a'\): unknown key\(s\) \['quantization'\]"):
        plan_from_mapping(bad)
    with pytest.raises(PlanError, match="plan.search: search bounds"):
        plan_from_mapping(standin_plan(tmp_path, search={"min_qps": 5, "start_qps": 1}))


def test_generic_launch_template(tmp_path):
    data = standin_plan(tmp_path)
    data["engine"]["launch"] = ["serve", "{checkpoint}", "--port={port}", "--tp", "{tp}", "{{literal}}"]
    data["engine"]["env"] = {"HF_HOME": "{workdir}/hf"}
    plan = plan_from_mapping(data)
    handler = make_handler(plan.engine)
    spec = handler.launch_spec(plan.entries[0], 9001, Path("/w"))
    assert spec.argv == ("serve", plan.entries[0].checkpoint, "--port=9001", "--tp", "1", "{literal}")
    assert spec.env == {"CUDA_VISIBLE_DEVICES": "0", "HF_HOME": "/w/hf"}
    assert spec.health_url == "http://127.0.0.1:9001/health"
    data["entries"][0]["launch_args"] = ["--quantization", "bnb-4bit", "--tag={quant}"]
    spec = make_handler(plan_from_mapping(data).engine).launch_spec(plan_from_mapping(data).entries[0], 9001, Path("/w"))
    assert spec.argv[-3:] == ("--quantization", "bnb-4bit", f"--tag={plan.entries[0].quant}")
    with pytest.raises(LaunchTemplateError, match=r"unknown placeholder\(s\) \{nosuch\}"):
        render("--x={nosuch}", {"port": "1"})
    data["engine"]["launch"] = ["serve", "{modle}"]
    plan = plan_from_mapping(data)
    with pytest.raises(PlanError, match=r"plan.engine.launch \(entry 'a'\): unknown placeholder\(s\) \{modle\}"):
        validate_plan(plan, make_handler(plan.engine))


def test_generic_supported_quants_refuse_other_methods(tmp_path):
    data = standin_plan(tmp_path, entries=[entry(tmp_path, quant="w4a16-int")])
    data["engine"]["supported_quants"] = ["fp16"]
    plan = plan_from_mapping(data)
    with pytest.raises(PlanError, match=r"w4a16-int at tp=1 on g cannot run .* lists only \['fp16'\]"):
        validate_plan(plan, make_handler(plan.engine))


def test_hub_checkpoints_are_not_looked_up_locally(tmp_path):
    plan = plan_from_mapping(standin_plan(tmp_path, entries=[entry(tmp_path, checkpoint="hub:org/model")]))
    validate_plan(plan, make_handler(plan.engine))
    assert plan.entries[0].checkpoint_ref == "org/model"


# --- TensorRT-LLM ----------------------------------------------------------------------------------

def trt_plan(tmp_path, version="0.19.0", **entry_fields):
    e = {"name": "t", "model": "llama2-13b", "checkpoint": "hub:meta-llama/Llama-2-13b-hf", "quant": "w4a8kv8",
         "tp": 2, "gpu": "h100-80gb", "workloads": ["sharegpt"], "gpu_indices": [2, 3]}
    e.update(entry_fields)
    return plan_from_mapping({
        "name": "trt", "work_dir": str(tmp_path / "work"), "results_db": str(tmp_path / "r.sqlite"),
        "export_path": str(tmp_path / "p"), "gpus_available": 8,
        "engine": {"kind": "trtllm", "version": version, "trtllm": {"examples_dir": "/ex"}},
        "entries": [e], "slos": [{"ttft_s": 1.0, "tpot_s": 0.2}]})


def test_trtllm_commands_for_w4a8kv8(tmp_path):
    plan = trt_plan(tmp_path)
    validate_plan(plan, make_handler(plan.engine))
    spec = make_handler(plan.engine).launch_spec(plan.entries[0], 8123, tmp_path / "work")
    root = tmp_path / "work" / "t"
    quantize, build = spec.prepare
    assert quantize.argv == ("python", "/ex/quantization/quantize.py", "--model_dir", "meta-llama/Llama-2-13b-hf",
                             "--dtype", "float16", "--qformat", "w4a8_awq", "--kv_cache_dtype", "fp8",
                             "--awq_block_size", "128", "--calib_size", "512", "--tp_size", "2",
                             "--output_dir", str(root / "ckpt"))
    assert build.argv == ("trtllm-build", "--checkpoint_dir", str(root / "ckpt"), "--output_dir", str(root / "engine"),
                          "--gemm_plugin", "auto", "--max_batch_size", "256", "--max_num_tokens", "8192",
                          "--max_seq_len", "4096", "--max_input_len", "4095")
    assert spec.argv == ("trtllm-serve", str(root / "engine"), "--tokenizer", "meta-llama/Llama-2-13b-hf",
                         "--host", "127.0.0.1", "--port", "8123", "--tp_size", "2", "--max_batch_size", "256",
                         "--max_num_tokens", "8192", "--max_seq_len", "4096",
                         "--kv_cache_free_gpu_memory_fraction", "0.9",
                         "--extra_llm_api_options", str(root / "extra_llm_api_options.yaml"))
    assert spec.files[root / "extra_llm_api_options.yaml"] == "kv_cache_config:\n  enable_block_reuse: false\n"
    assert spec.env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert quantize.done_marker == root / "ckpt" / "config.json"


def test_trtllm_recipes_cover_every_method_with_real_formats():
    assert set(RECIPES) == set(QUANTS)
    formats = {q: (r.qformat, r.kv_cache_dtype, r.quant_algo, r.kv_cache_quant_algo) for q, r in RECIPES.items()}
    assert formats["fp16"] == ("full_prec", None, None, None)
    assert formats["w8a16-int"] == ("int8_wo", None, "W8A16", None)
    assert formats["w4a16-int"] == ("int4_awq", None, "W4A16_AWQ", None)
    assert formats["w8a8-int"] == ("int8_sq", None, "W8A8_SQ_PER_CHANNEL", None)
    assert formats["w8a8-fp"] == ("fp8", None, "FP8", None)
    assert formats["w4a8"] == ("w4a8_awq", None, "W4A8_AWQ", None)
    assert formats["w8a16kv8-int"] == ("int8_wo", "int8", "W8A16", "INT8")
    assert formats["w4a16kv8-int"] == ("int4_awq", "int8", "W4A16_AWQ", "INT8")
    assert formats["w8a8kv8-int"] == ("int8_sq", "int8", "W8A8_SQ_PER_CHANNEL", "INT8")
    assert formats["w8a8kv8-fp"] == ("fp8", "fp8", "FP8", "FP8")
    assert formats["w4a8kv8"] == ("w4a8_awq", "fp8", "W4A8_AWQ", "FP8")
    assert formats["w4a8kv4"][0] is None  # refused: no 4-bit KV cache in TensorRT-LLM


def test_trtllm_capability_table_at_plan_time(tmp_path):
    handler = TrtllmHandler(trt_plan(tmp_path).engine)
    h100 = dict(handler.capability_table("h100-80gb", 1, "llama2-13b"))
    assert [q for q, reason in h100.items() if reason is not None] == ["w4a8kv4"]
    a100 = dict(handler.capability_table("a100-40gb", 1, "llama2-13b"))
    refused = {q for q, reason in a100.items() if reason is not None}
    assert refused == {"w8a8-fp", "w4a8", "w8a8kv8-fp", "w4a8kv8", "w4a8kv4"}
    assert "needs FP8 tensor cores" in a100["w8a8-fp"] and "a100-40gb" in a100["w4a8kv8"]
    plan = trt_plan(tmp_path, quant="w4a8kv4")
    with pytest.raises(PlanError, match=r"plan entry 't' \(entries\[0\]\): w4a8kv4 at tp=2 on h100-80gb cannot run on "
                                        r"TensorRT-LLM 0.19.0: QServe W4A8KV4"):
        validate_plan(plan, make_handler(plan.engine))
    plan = trt_plan(tmp_path, quant="w8a8-fp", gpu="a100-40gb", tp=1, gpu_indices=None)
    with pytest.raises(PlanError, match="FP8 needs FP8 tensor cores"):
        validate_plan(plan, make_handler(plan.engine))
    plan = trt_plan(tmp_path, quant="fp16", model="llama2-70b", tp=1, gpu_indices=None)
    with pytest.raises(PlanError, match="needs .* GB of weights per GPU"):
        validate_plan(plan, make_handler(plan.engine))


def test_trtllm_versions(tmp_path):
    assert backend_flag("0.19.0") == ()
    assert backend_flag("1.0.0") == ("--backend", "tensorrt")
    assert backend_flag("1.2.0rc6") == ("--backend", "tensorrt")
    assert backend_flag("2.0.0") is None and backend_flag("nightly") is None
    plan = trt_plan(tmp_path, version="1.1.0")
    spec = make_handler(plan.engine).launch_spec(plan.entries[0], 8000, tmp_path)
    assert spec.argv[4:6] == ("--backend", "tensorrt")
    plan = trt_plan(tmp_path, version="2.1.0")
    with pytest.raises(PlanError, match="plan.engine.version: TensorRT-LLM '2.1.0' is not a version"):
        validate_plan(plan, make_handler(plan.engine))


# --- the Hydra app ---------------------------------------------------------------------------------

def composed(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_hydra_plans_compose_and_validate():
    for name in ("standin_demo", "transformers_h100", "trtllm_llama2_h100"):
        cfg = composed([f"plan={name}"])
        plan = plan_from_mapping(OmegaConf.to_container(cfg.plan, resolve=True))
        validate_plan(plan, make_handler(plan.engine))
    cfg = composed(["plan=transformers_h100"])
    assert "--cb-use-cuda-graph" in cfg.plan.engine.launch and cfg.plan.engine.json_string_fields == ["generation_config"]


def test_hydra_unknown_key_fails_at_once():
    with pytest.raises(ConfigCompositionException, match="burst_ss"):
        composed(["plan.burst.burst_ss=3"])
    with pytest.raises(ConfigCompositionException, match="nosuch"):
        composed(["nosuch=1"])


def test_dry_run_prints_commands_and_capabilities(tmp_path):
    cfg = composed(["plan=trtllm_llama2_h100", "dry_run=true", f"plan.work_dir={tmp_path}/w",
                    f"plan.results_db={tmp_path}/r.sqlite"])
    lines = []
    assert run(cfg, log=lines.append) == 0
    text = "\n".join(lines)
    assert "quantize: python /app/tensorrt_llm/examples/quantization/quantize.py" in text
    assert "--qformat int8_sq --kv_cache_dtype int8" in text
    assert "w4a8kv4        CANNOT RUN: QServe W4A8KV4" in text
    assert "dry run: nothing launched" in text and not (tmp_path / "r.sqlite").exists()
    plan = plan_from_mapping(OmegaConf.to_container(cfg.plan, resolve=True))
    assert len(describe_plan(plan, make_handler(plan.engine))) == len(lines) - 1


def test_quality_inputs_are_checked_at_plan_time(tmp_path):
    data = standin_plan(tmp_path, quality={
        "lm_eval_results": [{"path": str(tmp_path / "nope.json"), "model": "m", "quant": "fp17"}],
        "reuse_from": str(tmp_path / "no-set")})
    plan = plan_from_mapping(data)
    with pytest.raises(PlanError) as info:
        validate_plan(plan, make_handler(plan.engine))
    text = str(info.value)
    assert "plan.quality.lm_eval_results[0], field 'path'" in text and "field 'quant': unknown quant method 'fp17'" in text
    assert "plan.quality.reuse_from" in text
