"""The things a config is made of: GPU types, model shapes and quantization methods.

Every figure here carries its source next to it, because profiles derived from this catalog
inherit its provenance. Peak figures in the characterization paper's Table 3 are quoted *with
sparsity*; dense peaks are half of them.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = "Shi & Ding, Systematic Characterization of LLM Quantization (qMeter)"
LLAMA2_PAPER = "Touvron et al. 2023, Llama 2: Open Foundation and Fine-Tuned Chat Models, arXiv:2307.09288"
CODELLAMA_PAPER = "Roziere et al. 2023, Code Llama: Open Foundation Models for Code, arXiv:2308.12950"


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """Peak figures of one GPU; dense peaks (no 2:4 sparsity)."""

    name: str
    memory_gb: float
    fp16_tflops: float
    int8_tops: float
    fp8_tflops: float | None  # None: no FP8 tensor cores (A100)
    memory_bandwidth_gbps: float
    tdp_w: float
    idle_w: float
    nvlink_gbps: float  # per-GPU NVLink bandwidth, one direction
    source: str


# Mean of the two idle windows measured with NVML on the lent H100 80GB HBM3 (2026-11-24,
# profiles/measured/h100_power/h100_power.csv).
H100_IDLE_W = 125.7

GPUS: dict[str, GpuSpec] = {
    "a100-40gb": GpuSpec(
        name="a100-40gb",
        memory_gb=40.0,
        fp16_tflops=624.0 / 2,
        int8_tops=1248.0 / 2,
        fp8_tflops=None,
        memory_bandwidth_gbps=1600.0,
        tdp_w=400.0,
        # derived: H100 idle measured with NVML (profiles/measured/h100_power/) scaled by TDP 400/700.
        idle_w=H100_IDLE_W * 400.0 / 700.0,
        nvlink_gbps=300.0,
        source=f"literature: {PAPER}, Table 3 (dense = half the sparse peak); NVLink 600 GB/s "
        "bidirectional (NVIDIA A100 datasheet); idle derived from H100 idle x 400/700",
    ),
    "a100-80gb": GpuSpec(
        name="a100-80gb",
        memory_gb=80.0,
        fp16_tflops=624.0 / 2,
        int8_tops=1248.0 / 2,
        fp8_tflops=None,
        memory_bandwidth_gbps=2039.0,
        tdp_w=400.0,
        # derived: H100 idle measured with NVML (profiles/measured/h100_power/) scaled by TDP 400/700.
        idle_w=H100_IDLE_W * 400.0 / 700.0,
        nvlink_gbps=300.0,
        source="literature: NVIDIA A100 datasheet, SXM4 80GB (80 GB HBM2e, 2,039 GB/s, 400 W; tensor peaks as the "
        f"40 GB part, {PAPER} Table 3, dense = half the sparse peak); NVLink 600 GB/s bidirectional; idle derived "
        "from H100 idle x 400/700",
    ),
    "h100-80gb": GpuSpec(
        name="h100-80gb",
        memory_gb=80.0,
        fp16_tflops=1979.0 / 2,
        int8_tops=3958.0 / 2,
        fp8_tflops=3958.0 / 2,
        memory_bandwidth_gbps=3350.0,
        tdp_w=700.0,
        idle_w=H100_IDLE_W,
        nvlink_gbps=450.0,
        source=f"literature: {PAPER}, Table 3 (dense = half the sparse peak); FP8 = INT8 peak and "
        "NVLink 900 GB/s bidirectional (NVIDIA H100 SXM datasheet); idle measured with NVML on an "
        "H100 80GB HBM3 (profiles/measured/h100_power/h100_power.csv, 2026-11-24)",
    ),
    "h200-141gb": GpuSpec(
        name="h200-141gb",
        memory_gb=141.0,
        fp16_tflops=1979.0 / 2,
        int8_tops=3958.0 / 2,
        fp8_tflops=3958.0 / 2,
        memory_bandwidth_gbps=4800.0,
        tdp_w=700.0,
        idle_w=H100_IDLE_W,
        nvlink_gbps=450.0,
        source="literature: NVIDIA H200 SXM datasheet (141 GB HBM3e, 4.8 TB/s, 700 W, same GH100 tensor "
        "cores as H100; dense = half the sparse peak); idle derived: the H100's NVML-measured idle "
        "(same die and TDP)",
    ),
}


@dataclass(frozen=True, slots=True)
class ModelShape:
    """Transformer shape; enough to count parameters, FLOPs and KV bytes."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    context_tokens: int
    source: str

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def params_per_layer(self) -> int:
        kv_width = self.kv_heads * self.head_dim
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * kv_width
        mlp = 3 * self.hidden * self.intermediate
        return attention + mlp

    @property
    def linear_params(self) -> int:
        """Parameters that take part in GEMMs per token: all layers plus the LM head."""
        return self.layers * self.params_per_layer + self.vocab * self.hidden

    @property
    def total_params(self) -> int:
        return self.layers * self.params_per_layer + 2 * self.vocab * self.hidden

    def kv_elements_per_token(self) -> int:
        """K and V elements per token over all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim


_HF = "HuggingFace config.json of the checkpoint"
MODELS: dict[str, ModelShape] = {
    "llama2-7b": ModelShape("llama2-7b", 32, 4096, 32, 32, 11008, 32000, 4096, f"literature: {LLAMA2_PAPER}; {_HF} meta-llama/Llama-2-7b-hf"),
    "llama2-13b": ModelShape("llama2-13b", 40, 5120, 40, 40, 13824, 32000, 4096, f"literature: {LLAMA2_PAPER}; {_HF} meta-llama/Llama-2-13b-hf"),
    "codellama-34b": ModelShape("codellama-34b", 48, 8192, 64, 8, 22016, 32000, 16384, f"literature: {CODELLAMA_PAPER}; {_HF} codellama/CodeLlama-34b-hf"),
    "llama2-70b": ModelShape("llama2-70b", 80, 8192, 64, 8, 28672, 32000, 4096, f"literature: {LLAMA2_PAPER}; {_HF} meta-llama/Llama-2-70b-hf"),
}


@dataclass(frozen=True, slots=True)
class QuantMethod:
    """One of the paper's 12 precision settings (Table 1 plus FP16)."""

    name: str
    weight_bits: int
    activation: str  # "fp16", "int8" or "fp8": the dtype the GEMMs compute in
    kv_bits: int
    needs_fp8: bool  # needs FP8 tensor cores (Hopper and later)
    family: str  # "fp16", "weight-only", "activation", "kv-compression"

    @property
    def weight_bytes_per_param(self) -> float:
        return self.weight_bits / 8.0

    @property
    def kv_bytes_per_element(self) -> float:
        return self.kv_bits / 8.0


QUANTS: dict[str, QuantMethod] = {
    q.name: q
    for q in (
        QuantMethod("fp16", 16, "fp16", 16, False, "fp16"),
        QuantMethod("w8a16-int", 8, "fp16", 16, False, "weight-only"),
        QuantMethod("w4a16-int", 4, "fp16", 16, False, "weight-only"),
        QuantMethod("w8a8-int", 8, "int8", 16, False, "activation"),
        QuantMethod("w8a8-fp", 8, "fp8", 16, True, "activation"),
        # TensorRT-LLM's W4A8 AWQ runs INT4 weights with FP8 activations: Hopper only.
        QuantMethod("w4a8", 4, "fp8", 16, True, "activation"),
        # QServe's W4A8KV4 computes in INT8 and runs on Ampere.
        QuantMethod("w4a8kv4", 4, "int8", 4, False, "kv-compression"),
        QuantMethod("w8a16kv8-int", 8, "fp16", 8, False, "kv-compression"),
        QuantMethod("w4a16kv8-int", 4, "fp16", 8, False, "kv-compression"),
        QuantMethod("w8a8kv8-int", 8, "int8", 8, False, "kv-compression"),
        QuantMethod("w8a8kv8-fp", 8, "fp8", 8, True, "kv-compression"),
        QuantMethod("w4a8kv8", 4, "fp8", 8, True, "kv-compression"),
    )
}

TENSOR_PARALLEL_DEGREES: tuple[int, ...] = (1, 2, 4, 8)

# Fraction of one GPU's memory the weight shard may take for a config to count as deployable.
# Assumption, bracketed by the paper's statements: CodeLlama-34B FP16 runs on one H100 (§4: 67.5 GB,
# 84.4 %) while Llama-2-70B FP16 needs TP4 on H100 (§4: 69 GB per GPU at TP2, 86.3 %); Llama-2-13B
# FP16 runs on one A100-40GB (§7: 65 %).
MAX_WEIGHT_FRACTION = 0.85
# Memory per GPU kept for activations, CUDA context and workspaces. Derived from the paper's §7
# figures for KV-cache space: 13B FP16 on A100 ~12 GB, 13B W4A16 on A100 ~30 GB, 13B FP16 on H100
# ~53 GB, i.e. memory - weights - about 2 GB.
RUNTIME_RESERVE_GB = 2.0


def weight_bytes(model: ModelShape, quant: QuantMethod) -> float:
    """Bytes of all weights: linear layers at the method's width, embeddings and LM head in FP16."""
    layer_bytes = model.layers * model.params_per_layer * quant.weight_bytes_per_param
    return layer_bytes + 2 * model.vocab * model.hidden * 2.0


def kv_bytes_per_token(model: ModelShape, quant: QuantMethod) -> float:
    return model.kv_elements_per_token() * quant.kv_bytes_per_element


def engine_weight_fraction(gpu: GpuSpec) -> float:
    """The largest weight share an engine can load at all: all memory but the runtime reserve (no KV room left)."""
    return (gpu.memory_gb - RUNTIME_RESERVE_GB) / gpu.memory_gb


def unsupported_reason(gpu: GpuSpec, model: ModelShape, quant: QuantMethod, tp: int,
                       max_weight_fraction: float = MAX_WEIGHT_FRACTION) -> str | None:
    """Why a config cannot be deployed, or None when it can. ``max_weight_fraction`` is the planning rule
    (``MAX_WEIGHT_FRACTION``); a benchmark reproducing an engine that did run passes ``engine_weight_fraction``."""
    if tp not in TENSOR_PARALLEL_DEGREES:
        return f"tp={tp} is not one of {TENSOR_PARALLEL_DEGREES}"
    if quant.needs_fp8 and gpu.fp8_tflops is None:
        return f"{quant.name} needs FP8 tensor cores, which {gpu.name} lacks"
    if model.kv_heads % tp != 0 and tp % model.kv_heads != 0:
        return f"tp={tp} does not divide {model.name}'s {model.kv_heads} KV heads"
    per_gpu_gb = weight_bytes(model, quant) / tp / 1e9
    if per_gpu_gb > max_weight_fraction * gpu.memory_gb:
        return (
            f"{model.name} {quant.name} needs {per_gpu_gb:.1f} GB of weights per GPU at tp={tp}, "
            f"over {max_weight_fraction:.0%} of {gpu.name}'s {gpu.memory_gb:.0f} GB"
        )
    return None


def kv_capacity_tokens(gpu: GpuSpec, model: ModelShape, quant: QuantMethod, tp: int,
                       kv_cache_free_fraction: float = 1.0) -> int:
    """KV-cache tokens an instance holds: the engine's share (``kv_cache_free_fraction``, see
    ``profiles.engine_settings``) of the memory left after weights and runtime, over all TP GPUs / bytes per token."""
    free_gb = gpu.memory_gb - weight_bytes(model, quant) / tp / 1e9 - RUNTIME_RESERVE_GB
    return int(max(free_gb, 0.0) * kv_cache_free_fraction * 1e9 * tp / kv_bytes_per_token(model, quant))


def lookup_gpu(name: str) -> GpuSpec:
    try:
        return GPUS[name]
    except KeyError:
        raise KeyError(f"unknown GPU '{name}'; known: {', '.join(GPUS)}") from None


def lookup_model(name: str) -> ModelShape:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model '{name}'; known: {', '.join(MODELS)}") from None


def lookup_quant(name: str) -> QuantMethod:
    try:
        return QUANTS[name]
    except KeyError:
        raise KeyError(f"unknown quant '{name}'; known: {', '.join(QUANTS)}") from None
