"""Step models grounded in measured TensorRT-LLM kernels: compose iterations, then fit ``StepModel``.

For a config (GPU, model, quant, TP) one engine iteration is composed from the kernel tables
(``profiles.kernel_tables``) as TensorRT-LLM runs a Llama layer, per layer:

* GEMMs QKV (n = (h + 2 kv_heads d) / TP, k = h), O (n = h, k = h / TP), fused gate+up
  (n = 2 i / TP, k = h), down (n = h, k = i / TP), all with m = tokens in the iteration;
* context attention per prompt (batch of equal prompts, isl = prompt length) and generation
  attention for the decoding batch (batch, KV length), with heads and KV heads sharded by TP;
* two all-reduces of the hidden state (bf16) for TP > 1;
* element-wise kernels (RMSNorm x2, residual adds, SiLU-mul, RoPE), not in the tables: roofline at
  80 % of the GPU's memory bandwidth (derived);

plus the LM head GEMM on the last token of each sequence (bf16) and a per-iteration engine overhead
(1 ms + 15 us per sequence, the roofline model's assumption). The profile's ``StepModel`` is then
fitted to composed times of decode, prefill and mixed iterations across the operating range, and the
fit error is kept with the result.

Where a method has no measured table on a GPU, a named rule derives it from the nearest measured
kernels (``RULES``); rows using any rule are labelled ``derived`` with the rules named, rows built
only from tables are ``measured-kernels`` with system, framework version and table names.
Energy terms come from the NVML power fit (``profiles.power_model``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from profiles.catalog import (
    MAX_WEIGHT_FRACTION,
    GpuSpec,
    ModelShape,
    QuantMethod,
    kv_bytes_per_token,
    kv_capacity_tokens,
    unsupported_reason,
    weight_bytes,
)
from profiles.fit_domain import FitDomain
from profiles.kernel_tables import KernelTables
from profiles.power_model import PowerModel
from profiles.engine_settings import PAPER_CASE_STUDY, EngineSettings
from profiles.roofline import BASE_OVERHEAD_S, MAX_NUM_TOKENS, PER_SEQ_S
from profiles.step_model import StepModel

ELEMENTWISE_BANDWIDTH_EFFICIENCY = 0.8
ELEMENTWISE_KERNELS_PER_LAYER = 6
ELEMENTWISE_LAUNCH_S = 2e-6

RULES = {
    "ratio-transfer": "weight-only / SmoothQuant GEMM on Hopper = Hopper bf16 GEMM x the A100-measured "
                      "(int8_wo|int4_wo|sq) / bf16 latency ratio at the same (m, n, k)",
    "w4a8-from-8bit": "W4A8 GEMM = the 8-bit-activation GEMM (fp8 on Hopper, SmoothQuant on Ampere) minus the "
                      "weight-streaming time INT4 weights save (8-bit minus INT4 weight-only latency at m=1), "
                      "never below the INT4 weight-only latency at m=1",
    "kv8-int-as-fp8": "INT8 KV-cache attention on Hopper = the measured FP8 KV-cache kernels (same byte width)",
    "kv8-ratio": "8-bit KV-cache attention on Ampere (no table) = bf16 attention x the H100-measured FP8/bf16 KV "
                 "attention latency ratio at the same (heads, kv heads, batch, length)",
    "kv4-as-kv8": "4-bit KV-cache attention (no table on any GPU) = the 8-bit KV-cache attention latency "
                  "(half the bytes, more dequantization work; assumption)",
    "elementwise-roofline": "element-wise kernels (norms, residuals, SiLU-mul, RoPE) at 80 % of memory bandwidth",
    "a100-80gb-kernels": "A100 kernel tables were measured on A100-SXM4-80GB (2.0 TB/s); capacity is modelled as the "
                         "paper's A100-40GB and latencies are not rescaled to its 1.6 TB/s",
}


@dataclass(frozen=True, slots=True)
class KernelChoice:
    """How a quant method's GEMMs and KV attention are looked up on one system."""

    gemm: str  # table dtype, or a rule name
    kv: str  # "bfloat16", "fp8", or a rule name
    rules: tuple[str, ...]


def kernel_choice(system: str, quant: QuantMethod) -> KernelChoice:
    hopper = system in ("h100_sxm", "h200_sxm")
    rules: list[str] = []
    if quant.name in ("fp16",):
        gemm = "bfloat16"
    elif quant.name in ("w8a8-fp", "w8a8kv8-fp"):
        gemm = "fp8"
    elif quant.weight_bits == 8 and quant.activation == "fp16":
        gemm = "int8_wo"
    elif quant.weight_bits == 4 and quant.activation == "fp16":
        gemm = "int4_wo"
    elif quant.weight_bits == 8 and quant.activation == "int8":
        gemm = "sq"
    elif quant.weight_bits == 4:  # w4a8 (fp8 acts on Hopper), w4a8kv8, w4a8kv4 (int8 acts)
        gemm = "w4a8-fp8" if quant.activation == "fp8" else "w4a8-int8"
        rules.append("w4a8-from-8bit")
    else:
        raise ValueError(f"no kernel mapping for {quant.name}")
    if hopper and gemm in ("int8_wo", "int4_wo", "sq"):
        rules.append("ratio-transfer")
    if hopper and gemm == "w4a8-int8":
        rules.append("ratio-transfer")
    if quant.kv_bits == 16:
        kv = "bfloat16"
    elif quant.kv_bits == 8:
        if hopper:
            kv = "fp8"
            if quant.activation != "fp8":
                rules.append("kv8-int-as-fp8")
        else:
            kv = "kv8-ratio"
            rules.append("kv8-ratio")
    else:
        kv = "fp8" if hopper else "kv8-ratio"
        rules.append("kv4-as-kv8")
        if not hopper:
            rules.append("kv8-ratio")
    return KernelChoice(gemm, kv, tuple(rules))


class IterationComposer:
    """Composed iteration times for one config from kernel tables (seconds)."""

    def __init__(self, tables: KernelTables, ampere: KernelTables | None, hopper: KernelTables | None,
                 gpu: GpuSpec, model: ModelShape, quant: QuantMethod, tp: int,
                 max_weight_fraction: float = MAX_WEIGHT_FRACTION):
        reason = unsupported_reason(gpu, model, quant, tp, max_weight_fraction)
        if reason is not None:
            raise ValueError(reason)
        self.t = tables
        self.ampere = ampere  # for ratio transfer to Hopper
        self.hopper = hopper  # for the KV8 ratio on Ampere
        self.gpu, self.model, self.quant, self.tp = gpu, model, quant, tp
        choice = kernel_choice(tables.system, quant)
        if gpu.name == "a100-40gb":  # tables measured on the 80 GB part
            choice = KernelChoice(choice.gemm, choice.kv, choice.rules + ("a100-80gb-kernels",))
        self.choice = choice
        h, d = model.hidden, model.head_dim
        self.heads = model.heads // tp
        self.kv_heads = max(model.kv_heads // tp, 1)
        self.gemm_shapes = (
            ((model.heads + 2 * model.kv_heads) * d // tp, h),  # QKV
            (h, h // tp),  # O
            (2 * model.intermediate // tp, h),  # gate + up
            (h, model.intermediate // tp),  # down
        )

    # --- GEMMs ------------------------------------------------------------------------------------

    def _gemm(self, dtype: str, m: int, n: int, k: int) -> float:
        t = self.t
        if dtype in t.gemm:
            return t.gemm_s(dtype, m, n, k)
        if dtype in ("int8_wo", "int4_wo", "sq"):  # Hopper: ratio measured on Ampere
            ratio = self.ampere.gemm_s(dtype, m, n, k) / self.ampere.gemm_s("bfloat16", m, n, k)
            return t.gemm_s("bfloat16", m, n, k) * ratio
        if dtype in ("w4a8-fp8", "w4a8-int8"):
            eight = "fp8" if dtype == "w4a8-fp8" else "sq"
            full = self._gemm(eight, m, n, k)
            saved = self._gemm(eight, 1, n, k) - self._gemm("int4_wo", 1, n, k)
            return max(self._gemm("int4_wo", 1, n, k), full - max(saved, 0.0))
        raise KeyError(f"{t.system}: no GEMM for {dtype}")

    def linear_s(self, tokens: int) -> float:
        per_layer = sum(self._gemm(self.choice.gemm, tokens, n, k) for n, k in self.gemm_shapes)
        return self.model.layers * per_layer

    def lm_head_s(self, seqs: int) -> float:
        return self.t.gemm_s("bfloat16", seqs, self.model.vocab // self.tp, self.model.hidden)

    # --- attention --------------------------------------------------------------------------------

    def _kv_ratio(self, batch: int, length: int, phase: str) -> float:
        ref = self.hopper
        if phase == "generation":
            bf = ref.generation_attention_s(self.heads, self.kv_heads, "bfloat16", batch, length)
            f8 = ref.generation_attention_s(self.heads, self.kv_heads, "fp8", batch, length)
        else:
            bf = ref.context_attention_s(self.heads, self.kv_heads, "bfloat16", batch, length)
            f8 = ref.context_attention_s(self.heads, self.kv_heads, "fp8", batch, length)
        return f8 / bf

    def generation_attention_s(self, batch: int, kv_len: int) -> float:
        if batch == 0:
            return 0.0
        kv = self.choice.kv
        if kv == "kv8-ratio":
            t = self.t.generation_attention_s(self.heads, self.kv_heads, "bfloat16", batch, kv_len)
            t *= self._kv_ratio(batch, kv_len, "generation")
        else:
            t = self.t.generation_attention_s(self.heads, self.kv_heads, kv, batch, kv_len)
        return self.model.layers * t

    def context_attention_s(self, batch: int, isl: int) -> float:
        kv = self.choice.kv
        if kv == "kv8-ratio":
            t = self.t.context_attention_s(self.heads, self.kv_heads, "bfloat16", batch, isl)
            t *= self._kv_ratio(batch, isl, "context")
        else:
            t = self.t.context_attention_s(self.heads, self.kv_heads, kv, batch, isl)
        return self.model.layers * t

    # --- the rest ---------------------------------------------------------------------------------

    def allreduce_s(self, tokens: int) -> float:
        """Two all-reduces of the hidden state per layer. The custom all-reduce table is keyed by the message's
        element count (aiconfigurator's ``query_allreduce``: "count, not size in bytes"; its TensorRT-LLM backend
        asks for tokens x hidden), not by bytes."""
        return 2 * self.model.layers * self.t.allreduce_s(self.tp, tokens * self.model.hidden)

    def elementwise_s(self, tokens: int) -> float:
        h, i = self.model.hidden, self.model.intermediate // self.tp
        bytes_per_layer = tokens * 2.0 * (8 * h + 3 * i)
        bw = self.gpu.memory_bandwidth_gbps * 1e9 * ELEMENTWISE_BANDWIDTH_EFFICIENCY
        return self.model.layers * (bytes_per_layer / bw + ELEMENTWISE_KERNELS_PER_LAYER * ELEMENTWISE_LAUNCH_S)

    def iteration_s(self, decode_batch: int, kv_len: int, prompts: tuple[tuple[int, int], ...] = ()) -> float:
        """``decode_batch`` sequences at KV length ``kv_len`` plus prompts given as (count, length)."""
        tokens = decode_batch + sum(c * L for c, L in prompts)
        seqs = decode_batch + sum(c for c, _ in prompts)
        t = BASE_OVERHEAD_S + PER_SEQ_S * seqs
        t += self.linear_s(tokens) + self.lm_head_s(seqs) + self.allreduce_s(tokens) + self.elementwise_s(tokens)
        t += self.generation_attention_s(decode_batch, kv_len)
        t += sum(self.context_attention_s(c, L) for c, L in prompts)
        return t


# --- the fit ------------------------------------------------------------------------------------------

# Decode batches up to 8,192 sequences (as many as the KV capacity holds): trtllm-bench builds engines with
# max_batch_size up to 8,192, so a step model is fitted where engines run, not extrapolated from 256.
DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
DECODE_KV_LENGTHS = (128, 512, 1024, 2048)
PROMPT_LENGTHS = (16, 64, 128, 256, 512, 1024, 2048, 4096)
MIXED_ITERATIONS = ((16, 512, 512), (64, 512, 256), (32, 1024, 1024), (128, 512, 128))  # (batch, KV length, prompt)


@dataclass(frozen=True, slots=True)
class Observation:
    """One composed iteration and the StepModel features describing it."""

    n_seq: int
    n_tok: int
    kv_tokens: float
    prefill_tokens: int
    prefill_sq: float
    time_s: float


@dataclass(frozen=True, slots=True)
class GridIteration:
    """One iteration shape of the fit grid: ``decode_batch`` sequences decoding at KV length ``kv_len`` plus
    prompts given as (count, length)."""

    decode_batch: int
    kv_len: int
    prompts: tuple[tuple[int, int], ...] = ()

    @property
    def n_seq(self) -> int:
        return self.decode_batch + sum(c for c, _ in self.prompts)


def composition_grid(kv_capacity: int) -> list[GridIteration]:
    """The iterations a step model is fitted to: decode batches x KV lengths that fit the KV cache, one and
    four prompts of each length (four only within the token budget), and four mixed iterations."""
    grid = []
    for b in DECODE_BATCHES:
        for s in DECODE_KV_LENGTHS:
            if b * s <= kv_capacity:
                grid.append(GridIteration(b, s))
    for L in PROMPT_LENGTHS:
        grid.append(GridIteration(0, 0, ((1, L),)))
        if 4 * L <= MAX_NUM_TOKENS:
            grid.append(GridIteration(0, 0, ((4, L),)))
    for b, s, L in MIXED_ITERATIONS:
        if b * s + L <= kv_capacity:
            grid.append(GridIteration(b, s, ((1, L),)))
    return grid


def composition_domain(kv_capacity: int) -> FitDomain:
    """The fit domain of a step model fitted to ``composition_grid(kv_capacity)``: its longest prompt, its
    longest decode KV length per sequence (a request decodes at up to prompt + output tokens of context;
    prefill iterations decode nothing), and its largest number of sequences in one iteration. It depends on
    the config only through its KV capacity."""
    grid = composition_grid(kv_capacity)
    prompts = [L for g in grid for _, L in g.prompts]
    contexts = [g.kv_len for g in grid if g.decode_batch > 0]
    return FitDomain(max(prompts) if prompts else None, max(contexts) if contexts else None,
                     max((g.n_seq for g in grid), default=None))


def observations(comp: IterationComposer, kv_capacity: int) -> list[Observation]:
    obs = []
    for g in composition_grid(kv_capacity):
        b, s = g.decode_batch, g.kv_len
        prefill = sum(c * L for c, L in g.prompts)
        prefill_sq = sum(c * L * L for c, L in g.prompts) if g.prompts else 0.0
        time_s = comp.iteration_s(b, s, g.prompts) if g.prompts else comp.iteration_s(b, s)
        obs.append(Observation(g.n_seq, b + prefill, b * s, prefill, prefill_sq, time_s))
    return obs


TIME_PARAMS = ("overhead_s", "per_seq_s", "per_token_s", "weights_s", "flop_token_s", "per_kv_token_s",
               "per_prefill_token_s", "prefill_attn_s")


def _predict(x: np.ndarray, f: np.ndarray) -> np.ndarray:
    overhead, per_seq, per_token, weights, flop, per_kv, per_prefill, attn = x
    n_seq, n_tok, kv, pre, pre_sq = f.T
    return overhead + per_seq * n_seq + per_token * n_tok + np.maximum(weights, flop * n_tok) + per_kv * kv \
        + per_prefill * pre + attn * pre_sq


def fit_time_params(obs: list[Observation]) -> tuple[dict[str, float], float, float]:
    """Least squares on relative error; returns (params, MAPE, max APE) over the observations."""
    f = np.array([[o.n_seq, o.n_tok, o.kv_tokens, o.prefill_tokens, o.prefill_sq] for o in obs], dtype=float)
    y = np.array([o.time_s for o in obs])
    decode = f[f[:, 3] == 0]
    y_decode = y[f[:, 3] == 0]
    x0 = np.array([1e-3, 1e-5, 1e-7, float(y_decode.min()) if len(y_decode) else 1e-3,
                   float(np.median(y / np.maximum(f[:, 1], 1))), 1e-8, 1e-8, 1e-10])
    scale = np.maximum(np.abs(x0), 1e-12)
    res = least_squares(lambda z: (_predict(z * scale, f) - y) / y, x0 / scale, bounds=(0, np.inf), max_nfev=5000)
    params = res.x * scale
    ape = np.abs(_predict(params, f) - y) / y
    return dict(zip(TIME_PARAMS, map(float, params))), float(ape.mean()), float(ape.max())


@dataclass(frozen=True, slots=True)
class KernelStepModel:
    step: StepModel
    provenance: str
    source: str
    fit_mape: float
    fit_max_ape: float
    clamped_lookups: int
    domain: FitDomain  # the prompt, context and batch of the composed iterations the fit saw


def kernel_step_model(comp: IterationComposer, power: PowerModel,
                      settings: EngineSettings = PAPER_CASE_STUDY) -> KernelStepModel:
    """The config's step model under an engine's settings (limits, KV share of free memory, chunked context)."""
    gpu, model, quant, tp = comp.gpu, comp.model, comp.quant, comp.tp
    capacity = kv_capacity_tokens(gpu, model, quant, tp, settings.kv_cache_free_fraction)
    before = comp.t.clamped_lookups
    obs = observations(comp, capacity)
    params, mape, max_ape = fit_time_params(obs)
    clamped = comp.t.clamped_lookups - before
    dtype = {"fp16": "bf16", "int8": "int8", "fp8": "fp8"}[quant.activation]
    per_flop = power.joule_per_flop[dtype]
    step = StepModel(
        **params,
        idle_w=tp * power.idle_w,
        active_w=tp * max(power.static_w, power.idle_w),
        flop_token_j=2.0 * model.linear_params * per_flop,
        per_kv_token_j=kv_bytes_per_token(model, quant) * power.joule_per_byte,
        weights_j=weight_bytes(model, quant) * power.joule_per_byte,
        max_power_w=tp * power.power_limit_w,
        kv_capacity_tokens=capacity,
        max_batch=settings.max_batch,
        max_num_tokens=settings.max_num_tokens,
        chunked_context=int(settings.chunked_context),
    )
    tables = "gemm_perf, context_attention_perf, generation_attention_perf" + (", custom_allreduce_perf" if tp > 1 else "")
    rules = comp.choice.rules + ("elementwise-roofline",)
    kernel_rules = [r for r in comp.choice.rules if r != "a100-80gb-kernels"]
    provenance = "derived" if kernel_rules else "measured-kernels"
    source = (f"{comp.t.source(tables)}; composed per layer and fitted to StepModel "
              f"(MAPE {100 * mape:.1f} %, max {100 * max_ape:.1f} % over {len(obs)} iterations); "
              f"rules: {', '.join(rules)}; power: {power.source}")
    if provenance == "derived":
        source = "derived: " + source
    return KernelStepModel(step, provenance, source, mape, max_ape, clamped, composition_domain(capacity))

