"""Analytic (roofline) step models for configs nobody has measured yet.

For a config (GPU, model, quant, TP) the iteration time terms of ``StepModel`` are derived from model
shapes and GPU peak figures (``profiles.catalog``):

* ``weights_s``    = weight bytes per GPU / (memory bandwidth x weight-streaming efficiency)
* ``flop_token_s`` = 2 x linear parameters per GPU / (dense peak of the GEMM dtype x GEMM efficiency)
* ``per_kv_token_s`` = KV bytes per token per GPU / (bandwidth x attention efficiency)
* ``prefill_attn_s`` = 2 x hidden x layers / TP / (FP16 peak x 0.5) per squared prompt token (causal)
* ``per_token_s``  = two ring all-reduces per layer of the token's hidden state over NVLink (TP > 1)
* ``overhead_s``   = 1 ms + 10 us per layer (+ 8 us per layer for KV-cache (de)quantization kernels)
                     + 2 all-reduce latencies per layer (TP > 1)

Power per GPU: ``idle_w`` from the catalog; ``active_w`` = idle + 15 % of (TDP - idle) while iterating;
dynamic energy per FLOP and per byte chosen so that a GPU saturating its tensor cores draws 85 % of
TDP and one saturating memory bandwidth draws 70 % of TDP; capped at TP x TDP.

The efficiency factors per quant method (``QUANT_EFFICIENCY``) are assumptions, chosen so the
characterization paper's qualitative findings hold: weight-only methods dequantize inside the GEMM
mainloop, which is cheap when streaming weights dominates (small batches: W4A16 beats W8A16 beats FP16)
but costly in the compute-bound regime (prefill, large batches: short-output TTFT suffers, and at the
case study's loads a weight-only pool needs more GPUs than FP16, paper §8.3); activation methods run
INT8/FP8 tensor cores; W4A8 is the fastest; KV-cache compression slows attention and adds per-layer
kernels. Every derived row says so in its ``source``.
"""

from __future__ import annotations

from dataclasses import dataclass

from profiles.catalog import (
    GpuSpec,
    ModelShape,
    QuantMethod,
    kv_bytes_per_token,
    kv_capacity_tokens,
    unsupported_reason,
    weight_bytes,
)
from profiles.step_model import StepModel

# Engine settings (assumption: TensorRT-LLM serving defaults commonly used with trtllm-serve).
MAX_BATCH = 256
MAX_NUM_TOKENS = 8192

BASE_OVERHEAD_S = 1.0e-3
PER_LAYER_OVERHEAD_S = 10e-6
KV_QUANT_PER_LAYER_S = 8e-6
PER_SEQ_S = 15e-6
ALLREDUCE_LATENCY_S = {"a100-40gb": 8e-6, "h100-80gb": 6e-6, "h200-141gb": 6e-6}
NVLINK_EFFICIENCY = 0.7
ATTENTION_PREFILL_EFFICIENCY = 0.5
ACTIVE_FRACTION = 0.15
COMPUTE_POWER_FRACTION = 0.85
MEMORY_POWER_FRACTION = 0.70
REFERENCE_MEMORY_EFFICIENCY = 0.8


@dataclass(frozen=True, slots=True)
class QuantEfficiency:
    """Achieved fraction of peak for one quant method's kernels (assumptions, see module doc)."""

    gemm: float  # of the GEMM dtype's dense peak, compute-bound regime
    weight_stream: float  # of memory bandwidth, reading weights in the memory-bound regime
    kv_attention: float  # of memory bandwidth, decode attention reading the KV cache


QUANT_EFFICIENCY: dict[str, QuantEfficiency] = {
    "fp16": QuantEfficiency(0.70, 0.80, 0.60),
    "w8a16-int": QuantEfficiency(0.40, 0.75, 0.60),
    "w4a16-int": QuantEfficiency(0.32, 0.65, 0.60),
    "w8a8-int": QuantEfficiency(0.55, 0.80, 0.60),
    "w8a8-fp": QuantEfficiency(0.60, 0.80, 0.60),
    "w4a8": QuantEfficiency(0.62, 0.72, 0.60),
    "w4a8kv4": QuantEfficiency(0.40, 0.70, 0.22),
    "w8a16kv8-int": QuantEfficiency(0.40, 0.75, 0.30),
    "w4a16kv8-int": QuantEfficiency(0.32, 0.65, 0.30),
    "w8a8kv8-int": QuantEfficiency(0.55, 0.80, 0.30),
    "w8a8kv8-fp": QuantEfficiency(0.60, 0.80, 0.30),
    "w4a8kv8": QuantEfficiency(0.62, 0.72, 0.30),
}


def gemm_peak_flops(gpu: GpuSpec, quant: QuantMethod) -> float:
    if quant.activation == "fp8":
        if gpu.fp8_tflops is None:
            raise ValueError(f"{quant.name} needs FP8 tensor cores, which {gpu.name} lacks")
        return gpu.fp8_tflops * 1e12
    if quant.activation == "int8":
        return gpu.int8_tops * 1e12
    return gpu.fp16_tflops * 1e12


def roofline_step_model(gpu: GpuSpec, model: ModelShape, quant: QuantMethod, tp: int) -> StepModel:
    reason = unsupported_reason(gpu, model, quant, tp)
    if reason is not None:
        raise ValueError(reason)
    eff = QUANT_EFFICIENCY[quant.name]
    bandwidth = gpu.memory_bandwidth_gbps * 1e9
    peak = gemm_peak_flops(gpu, quant)

    weights_s = weight_bytes(model, quant) / tp / (bandwidth * eff.weight_stream)
    flop_token_s = 2.0 * model.linear_params / tp / (peak * eff.gemm)
    per_kv_token_s = kv_bytes_per_token(model, quant) / tp / (bandwidth * eff.kv_attention)
    prefill_attn_s = 2.0 * model.hidden * model.layers / tp / (gpu.fp16_tflops * 1e12 * ATTENTION_PREFILL_EFFICIENCY)
    overhead_s = BASE_OVERHEAD_S + PER_LAYER_OVERHEAD_S * model.layers
    if quant.kv_bits < 16:
        overhead_s += KV_QUANT_PER_LAYER_S * model.layers
    per_token_s = 0.0
    if tp > 1:
        overhead_s += 2 * model.layers * ALLREDUCE_LATENCY_S[gpu.name]
        ring_bytes = model.hidden * 2.0 * 2.0 * (tp - 1) / tp
        per_token_s = 2 * model.layers * ring_bytes / (gpu.nvlink_gbps * 1e9 * NVLINK_EFFICIENCY)
    # KV written once per prompt token (the decode token's write is inside per_kv_token_s's read).
    per_prefill_token_s = kv_bytes_per_token(model, quant) / tp / bandwidth

    active_per_gpu_w = gpu.idle_w + ACTIVE_FRACTION * (gpu.tdp_w - gpu.idle_w)
    joule_per_flop = (COMPUTE_POWER_FRACTION * gpu.tdp_w - active_per_gpu_w) / (peak * eff.gemm)
    joule_per_byte = (MEMORY_POWER_FRACTION * gpu.tdp_w - active_per_gpu_w) / (bandwidth * REFERENCE_MEMORY_EFFICIENCY)

    return StepModel(
        overhead_s=overhead_s,
        per_seq_s=PER_SEQ_S,
        per_token_s=per_token_s,
        weights_s=weights_s,
        flop_token_s=flop_token_s,
        per_kv_token_s=per_kv_token_s,
        per_prefill_token_s=per_prefill_token_s,
        prefill_attn_s=prefill_attn_s,
        idle_w=tp * gpu.idle_w,
        active_w=tp * active_per_gpu_w,
        flop_token_j=2.0 * model.linear_params * joule_per_flop,
        per_kv_token_j=kv_bytes_per_token(model, quant) * joule_per_byte,
        weights_j=weight_bytes(model, quant) * joule_per_byte,
        max_power_w=tp * gpu.tdp_w,
        kv_capacity_tokens=kv_capacity_tokens(gpu, model, quant, tp),
        max_batch=MAX_BATCH,
        max_num_tokens=MAX_NUM_TOKENS,
    )


ROOFLINE_SOURCE = (
    "derived: roofline model (profiles/roofline.py) from model shapes and GPU peak figures "
    "(profiles/catalog.py); kernel efficiencies and engine overheads are assumptions (QUANT_EFFICIENCY)"
)
