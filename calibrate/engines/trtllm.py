"""TensorRT-LLM: quantize a Hugging Face checkpoint with ModelOpt, build a TensorRT engine, serve it.

For each entry (all commands verified against TensorRT-LLM's sources; the paper used v0.19.0):

1. ``python <examples>/quantization/quantize.py --model_dir <ckpt> --dtype float16 --qformat <q>
   [--kv_cache_dtype int8|fp8] [--awq_block_size 128] --calib_size 512 --tp_size <tp> --output_dir <work>/ckpt``
   (ModelOpt post-training quantization; ``--qformat full_prec`` for FP16),
2. ``trtllm-build --checkpoint_dir <work>/ckpt --output_dir <work>/engine --gemm_plugin auto
   --max_batch_size B --max_num_tokens T --max_seq_len S --max_input_len I``,
3. ``trtllm-serve <work>/engine --tokenizer <ckpt> --host H --port P --tp_size <tp>
   --kv_cache_free_gpu_memory_fraction F --extra_llm_api_options <work>/extra_llm_api_options.yaml``
   (plus ``--backend tensorrt`` from 1.0 on, where PyTorch became the default backend).

Steps 1-2 run once per entry (skipped when their output exists), so a restart after a crash only
relaunches ``trtllm-serve``. The extra options file turns KV-cache block reuse off, so no request is
served from another's cached prefix.

The paper's 12 precisions map to ModelOpt formats and TensorRT-LLM ``QuantAlgo`` values (``RECIPES``).
W4A8KV4 (QServe) cannot run: TensorRT-LLM runs QServe's W4A8 GEMM only from DeepCompressor checkpoints
through the legacy ``convert_checkpoint.py --use_qserve`` path, and its KV cache can be quantized to
INT8 or FP8 only, never 4 bits. FP8 activations (W8A8-FP, W4A8 AWQ and their KV8 variants) need FP8
tensor cores (Ada/Hopper), so they cannot run on A100.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from calibrate.engines.base import HandlerBase, LaunchSpec, PrepareStep, _get_json
from calibrate.plan import Plan, PlanEntry
from profiles.catalog import GPUS, MODELS, QUANTS, unsupported_reason

# Versions whose command lines were checked: family -> (min version, max version exclusive, serve backend flag)
VERSION_FAMILIES: tuple[tuple[tuple[int, int], tuple[int, int], tuple[str, ...]], ...] = (
    ((0, 19), (0, 20), ()),  # TensorRT engine path is trtllm-serve's default
    ((1, 0), (1, 3), ("--backend", "tensorrt")),  # PyTorch default; the TensorRT backend is chosen explicitly
)


@dataclass(frozen=True, slots=True)
class TrtllmRecipe:
    quant: str
    qformat: str | None  # ModelOpt quantize.py --qformat; None: cannot run
    kv_cache_dtype: str | None  # quantize.py --kv_cache_dtype
    quant_algo: str | None  # TensorRT-LLM QuantAlgo the checkpoint carries
    kv_cache_quant_algo: str | None
    needs_fp8: bool
    note: str = ""


RECIPES: dict[str, TrtllmRecipe] = {r.quant: r for r in (
    TrtllmRecipe("fp16", "full_prec", None, None, None, False, "no quantization (FP16 weights and activations)"),
    TrtllmRecipe("w8a16-int", "int8_wo", None, "W8A16", None, False, "INT8 weight-only, per channel"),
    TrtllmRecipe("w4a16-int", "int4_awq", None, "W4A16_AWQ", None, False, "INT4 AWQ weight-only, group 128"),
    TrtllmRecipe("w8a8-int", "int8_sq", None, "W8A8_SQ_PER_CHANNEL", None, False, "SmoothQuant W8A8"),
    TrtllmRecipe("w8a8-fp", "fp8", None, "FP8", None, True, "FP8 per-tensor weights and activations"),
    TrtllmRecipe("w4a8", "w4a8_awq", None, "W4A8_AWQ", None, True, "INT4 AWQ weights, FP8 activations"),
    TrtllmRecipe("w4a8kv4", None, None, "W4A8_QSERVE_PER_GROUP", None, False,
                 "QServe W4A8KV4: TensorRT-LLM quantizes the KV cache to INT8 or FP8 only (no 4-bit KV cache), "
                 "and runs QServe's W4A8 GEMM only from DeepCompressor checkpoints via convert_checkpoint.py "
                 "--use_qserve"),
    TrtllmRecipe("w8a16kv8-int", "int8_wo", "int8", "W8A16", "INT8", False, "INT8 weight-only + INT8 KV cache"),
    TrtllmRecipe("w4a16kv8-int", "int4_awq", "int8", "W4A16_AWQ", "INT8", False, "INT4 AWQ + INT8 KV cache"),
    TrtllmRecipe("w8a8kv8-int", "int8_sq", "int8", "W8A8_SQ_PER_CHANNEL", "INT8", False, "SmoothQuant + INT8 KV cache"),
    TrtllmRecipe("w8a8kv8-fp", "fp8", "fp8", "FP8", "FP8", True, "FP8 + FP8 KV cache"),
    TrtllmRecipe("w4a8kv8", "w4a8_awq", "fp8", "W4A8_AWQ", "FP8", True, "W4A8 AWQ + FP8 KV cache"),
)}
assert set(RECIPES) == set(QUANTS), "every quant method of the catalog needs a TensorRT-LLM recipe"

EXTRA_LLM_API_OPTIONS = "kv_cache_config:\n  enable_block_reuse: false\n"


def parse_version(text: str) -> tuple[int, int] | None:
    parts = text.strip().lstrip("v").split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def backend_flag(version: str) -> tuple[str, ...] | None:
    """The serve backend flag for a version, or None when this handler does not know the version."""
    v = parse_version(version)
    if v is None:
        return None
    for lo, hi, flag in VERSION_FAMILIES:
        if lo <= v < hi:
            return flag
    return None


class TrtllmHandler(HandlerBase):
    name = "trtllm"

    def describe(self) -> str:
        return f"TensorRT-LLM {self.spec.version}"

    def plan_problems(self, plan: Plan) -> list[str]:
        if backend_flag(self.spec.version) is None:
            known = ", ".join(f"{lo[0]}.{lo[1]} <= v < {hi[0]}.{hi[1]}" for lo, hi, _ in VERSION_FAMILIES)
            return [f"plan.engine.version: TensorRT-LLM '{self.spec.version}' is not a version whose command lines "
                    f"this handler knows ({known}); later versions removed the TensorRT engine backend"]
        return []

    def unsupported_reason(self, entry: PlanEntry) -> str | None:
        recipe = RECIPES[entry.quant]
        if recipe.qformat is None:
            return recipe.note
        gpu = GPUS.get(entry.gpu)
        if gpu is None:
            return (f"unknown GPU type '{entry.gpu}' (known: {', '.join(GPUS)}); the FP8 and memory checks need "
                    f"its specification in profiles/catalog.py")
        if recipe.needs_fp8 and gpu.fp8_tflops is None:
            return f"{recipe.quant_algo} needs FP8 tensor cores (Ada/Hopper), which {gpu.name} lacks"
        model = MODELS.get(entry.model)
        if model is not None:
            return unsupported_reason(gpu, model, QUANTS[entry.quant], entry.tp)
        return None

    def capability_table(self, gpu: str, tp: int, model: str) -> list[tuple[str, str | None]]:
        """(quant, reason it cannot run or None) for every method: what ``qfleet-calibrate`` prints."""
        out = []
        for quant in QUANTS:
            probe = PlanEntry(name="capability", model=model, checkpoint="hub:capability", quant=quant, tp=tp,
                              gpu=gpu, workloads=("sharegpt",))
            out.append((quant, self.unsupported_reason(probe)))
        return out

    def launch_spec(self, entry: PlanEntry, port: int, workdir: Path) -> LaunchSpec:
        recipe = RECIPES[entry.quant]
        if recipe.qformat is None:
            raise ValueError(f"entry '{entry.name}': {recipe.note}")
        opt = self.spec.trtllm
        root = workdir / entry.name
        ckpt_dir, engine_dir = root / "ckpt", root / "engine"
        quantize = [
            "python", str(Path(opt.examples_dir) / "quantization" / "quantize.py"),
            "--model_dir", entry.checkpoint_ref, "--dtype", opt.dtype, "--qformat", recipe.qformat,
        ]
        if recipe.kv_cache_dtype is not None:
            quantize += ["--kv_cache_dtype", recipe.kv_cache_dtype]
        if recipe.qformat in ("int4_awq", "w4a8_awq"):
            quantize += ["--awq_block_size", str(opt.awq_block_size)]
        quantize += ["--calib_size", str(opt.calib_size), "--tp_size", str(entry.tp), "--output_dir", str(ckpt_dir)]
        build = [
            "trtllm-build", "--checkpoint_dir", str(ckpt_dir), "--output_dir", str(engine_dir), "--gemm_plugin", "auto",
            "--max_batch_size", str(opt.max_batch_size), "--max_num_tokens", str(opt.max_num_tokens),
            "--max_seq_len", str(opt.max_seq_len), "--max_input_len", str(opt.max_input_len),
        ]
        extra = root / "extra_llm_api_options.yaml"
        serve = [
            "trtllm-serve", str(engine_dir), "--tokenizer", entry.checkpoint_ref,
            *(backend_flag(self.spec.version) or ()),
            "--host", self.spec.host, "--port", str(port), "--tp_size", str(entry.tp),
            "--max_batch_size", str(opt.max_batch_size), "--max_num_tokens", str(opt.max_num_tokens),
            "--max_seq_len", str(opt.max_seq_len),
            "--kv_cache_free_gpu_memory_fraction", str(opt.kv_cache_free_gpu_memory_fraction),
            "--extra_llm_api_options", str(extra),
        ]
        env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, entry.devices)), **dict(self.spec.env)}
        base = self.base_url(port)
        return LaunchSpec(
            argv=tuple(serve), base_url=base, health_url=base + self.spec.health_path, env=env,
            files={extra: EXTRA_LLM_API_OPTIONS},
            prepare=(PrepareStep("quantize", tuple(quantize), ckpt_dir / "config.json", env),
                     PrepareStep("build", tuple(build), engine_dir / "config.json", env)),
        )

    def discover_capacity(self, entry: PlanEntry, base_url: str) -> dict[str, int]:
        """KV capacity from trtllm-serve's ``/metrics`` iteration stats (kvCacheStats.maxNumBlocks x
        tokensPerBlock, present once the engine has run iterations); batch and token limits as built."""
        found: dict[str, int] = {}
        stats = _get_json(base_url + "/metrics", self.spec.health_timeout_s)
        if isinstance(stats, list):
            for snap in reversed(stats):
                kv = snap.get("kvCacheStats") if isinstance(snap, dict) else None
                if isinstance(kv, dict) and kv.get("maxNumBlocks") and kv.get("tokensPerBlock"):
                    found["kv_capacity_tokens"] = int(kv["maxNumBlocks"]) * int(kv["tokensPerBlock"])
                    break
        found.update(self.known_capacity(entry))
        return found

    def known_capacity(self, entry: PlanEntry) -> dict[str, int]:
        """max_batch and max_num_tokens are what the engine was built with."""
        opt = self.spec.trtllm
        return {"max_batch": opt.max_batch_size, "max_num_tokens": opt.max_num_tokens, **super().known_capacity(entry)}
