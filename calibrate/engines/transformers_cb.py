"""Capacities and scheduling facts of transformers' continuous batching (``transformers serve
--continuous-batching``), derived from its memory formula: the engine does not report them.

What the engine does (transformers 5.17.0, ``generation/continuous_batching``; defaults of
``ContinuousBatchingConfig`` and ``initialization.FALLBACK_DEFAULTS``):

* **KV cache**: paged, ``block_size`` = 256 tokens per block; ``num_blocks`` solved by
  ``PagedAttentionMemoryHandler`` so that the memory polynomial of its two activation peaks fits in
  ``(total - max(allocated, reserved)) * max_memory_percent`` of the GPU after the weights are loaded
  (``max_memory_percent`` = 0.9, or 0.8 when the generation config needs logits processors; greedy decoding
  with default settings needs none). Per peak, with ``M = max_batch_tokens`` and ``N`` cache tokens::

      memory(M, N) = coeff_m*M + coeff_n*N + coeff_mn*M*N + coeff_mm*M^2
      coeff_n  = delta_n + 2*layers*page*c + 8          page = head_dim * kv_heads, c = cache dtype bytes
      coeff_m  = delta_m + 7*4 + 4 + 8 + 8              (IO tensors: bulk input, output ids, write/read index)
      coeff_mn = coeff_mm = masks * a                   attention mask [M, N + M] (1 mask for sdpa, 0 for flash)
      lm_head peak:   delta_m = hidden*a + vocab*4,                 delta_n = 0
      attention peak: delta_m = a*(hidden + heads*head_dim + 2*page),  delta_n = 2*page*a

  ``M`` = min(8192, the VRAM bound at which one batch fills 10 % of the cache), then ``N`` solved linearly
  for each peak, the smaller kept, ``num_blocks = N // block_size``: ``kv_capacity_tokens = num_blocks *
  block_size``. Blocks are allocated on demand (a prompt takes ``len // 256 + 1`` blocks, decoding adds one
  every 256 tokens) and new prompts stop when fewer than 15 % of the blocks are free (FIFO scheduler's safety
  margin): the simulator's up-front reservation of input + output tokens is stricter, which the measured
  points never reach (at most 151 requests of 384 tokens, 58k of 114k tokens).
* **Batch**: ``max_requests_per_batch = min(1024, max_batch_tokens, num_blocks)`` (``max_batch``);
  ``max_batch_tokens`` is the per-iteration token budget (``max_num_tokens``); decoding requests take it first,
  prompts are chunked into what is left (FIFO scheduler).
* **Static shapes** (``--cb-use-cuda-graph``): an iteration's query tokens are padded to multiples of 64 and
  its KV read (the sum of the scheduled requests' cached tokens) to multiples of ``kv_padding_interval_size`` =
  16,384 tokens, capped at the cache size: attention costs steps of 16,384 tokens (``kv_pad_tokens``).
  With sdpa attention (the only one on the H100 without flash-attn) there is no decode fast path and no
  asynchronous batching: every iteration is a synchronous "varlen" step.
* **Host admission**: the batching loop runs in a thread of the server's Python process; it drains the request
  queue, runs the step, then emits every sequence's token (per-sequence host work). New requests are
  enqueued by the HTTP front-end in the same interpreter, so one that arrives during that host work is seen
  one iteration later (``host_admission``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int
    dtype_bytes: int = 2  # activations and KV cache (bf16)

    @property
    def page(self) -> int:
        return self.head_dim * self.kv_heads

    @property
    def linear_params(self) -> int:
        """Parameters of the decoder layers' linear layers (what 4-bit quantization compresses)."""
        attn = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.page * 2
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attn + mlp)

    @property
    def other_params(self) -> int:
        """Embedding, LM head (untied) and RMSNorm weights: kept in 16 bits by bitsandbytes."""
        return 2 * self.vocab * self.hidden + (2 * self.layers + 1) * self.hidden


LLAMA2_7B = ModelShape(hidden=4096, layers=32, heads=32, kv_heads=32, head_dim=128, vocab=32000, intermediate=11008)


def weights_bytes(shape: ModelShape, quant: str) -> int:
    """Bytes of the loaded weights: bf16, or bitsandbytes NF4 with double quantization (``transformers serve
    --quantization bnb-4bit``: 4-bit weights, one 8-bit absmax per 64 weights, one fp32 scale per 256 absmax;
    embedding, LM head and norms in bf16)."""
    if quant == "bf16":
        return 2 * (shape.linear_params + shape.other_params)
    if quant == "nf4":
        n = shape.linear_params
        blocks = math.ceil(n / 64)
        return n // 2 + blocks + 4 * math.ceil(blocks / 256) + 2 * shape.other_params
    raise ValueError(f"weights_bytes: unknown quant '{quant}' (bf16 or nf4)")


def _coefficients(shape: ModelShape, peak: str, masks: int = 1) -> tuple[int, int, int, int]:
    a = c = shape.dtype_bytes
    page = shape.page
    if peak == "lm_head":
        delta_m, delta_n = shape.hidden * a + shape.vocab * 4, 0
    else:
        delta_m, delta_n = a * (shape.hidden + shape.heads * shape.head_dim + 2 * page), 2 * page * a
    coeff_n = delta_n + 2 * shape.layers * page * c + 8
    coeff_m = delta_m + 7 * 4 + 1 * 4 + 0 + 8 + 8  # no block table: max_blocks_per_request = 0 with sdpa
    coeff_mn = coeff_mm = masks * a
    return coeff_m, coeff_n, coeff_mn, coeff_mm


def cb_capacity(total_memory_bytes: int, loaded_bytes: int, shape: ModelShape, max_memory_percent: float = 0.9,
                block_size: int = 256, default_max_batch_tokens: int = 8192, max_requests_fallback: int = 1024,
                kv_padding_interval: int = 64 * 256) -> dict:
    """The capacities transformers' continuous batching gives itself, from its memory formula.

    ``loaded_bytes`` is what torch holds when the cache is sized (the weights). Returns the plan's capacity
    keys, the scheduling facts, and the intermediate numbers."""
    available = int((total_memory_bytes - loaded_bytes) * max_memory_percent)
    peaks = [_coefficients(shape, p) for p in ("lm_head", "attention")]
    # VRAM bound on M: each batch may fill 10 % of the cache (quadratic in N with M = 0.1 N), smallest peak
    m_frac = 0.1
    bounds = []
    for cm, cn, cmn, cmm in peaks:
        qa, qb, qc = cmn * m_frac + cmm * m_frac**2, cn + cm * m_frac, -available
        n = (-qb + math.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)
        bounds.append(int(math.floor(n) * m_frac))
    max_batch_tokens = max(min(default_max_batch_tokens, min(bounds)), 256)
    pages = min(math.floor((available - cm * max_batch_tokens - cmm * max_batch_tokens**2)
                           / (cn + cmn * max_batch_tokens)) for cm, cn, cmn, cmm in peaks)
    num_blocks = pages // block_size
    kv_capacity = num_blocks * block_size
    return {
        "kv_capacity_tokens": kv_capacity,
        "max_batch": min(max_requests_fallback, max_batch_tokens, num_blocks),
        "max_num_tokens": max_batch_tokens,
        "kv_pad_tokens": kv_padding_interval,
        "num_blocks": num_blocks,
        "available_bytes": available,
    }


def source_text(total_memory_bytes: int, loaded_bytes: int, quant: str, result: dict,
                max_memory_percent: float = 0.9) -> str:
    """The ``capacity_source`` of a plan entry: derived, with the formula and its inputs."""
    return (f"derived (calibrate.engines.transformers_cb.cb_capacity, transformers 5.17.0 "
            f"PagedAttentionMemoryHandler defaults): GPU {total_memory_bytes / GIB:.2f} GiB (torch's total in the "
            f"engine's OOM report) minus {quant} weights {loaded_bytes / GIB:.2f} GiB, x max_memory_percent "
            f"{max_memory_percent} (greedy decoding: no logits processors) = {result['available_bytes'] / GIB:.2f} "
            f"GiB; max_batch_tokens = min(8192, VRAM bound) = {result['max_num_tokens']}; num_blocks = "
            f"{result['num_blocks']} of 256 tokens (attention peak binds: N = (avail - coeff_m*M - coeff_mm*M^2) / "
            f"(coeff_n + coeff_mn*M)); max_requests_per_batch = min(1024, {result['max_num_tokens']}, "
            f"{result['num_blocks']}); CUDA-graph KV padding interval 64 blocks x 256 = 16384 tokens; host "
            f"admission: the batching loop shares the server's Python interpreter")


# The lent H100 (profiles/measured/transformers_h100): torch's total in the engine's OOM report. The report of
# the FP16 run (78.23 GiB allocated: 12.55 weights + 56.25 KV cache of 448 + 2 blocks + 1.88 attention mask
# [8192, 114688 + 8192] + 7.27 CUDA graphs + 0.28 other) matches max_memory_percent 0.9, not 0.8 (71.5 GiB).
H100_TOTAL_BYTES = int(79.18 * GIB)


def plan_statements(total_memory_bytes: int = H100_TOTAL_BYTES, shape: ModelShape = LLAMA2_7B) -> dict:
    """The ``capacity``/``capacity_source``/``scheduling`` of the bf16 and NF4 entries of
    ``experiments/real_engine/plan_h100.json``."""
    out = {}
    for quant in ("bf16", "nf4"):
        loaded = weights_bytes(shape, quant)
        result = cb_capacity(total_memory_bytes, loaded, shape)
        out[quant] = {
            "capacity": {k: result[k] for k in ("kv_capacity_tokens", "max_batch", "max_num_tokens")},
            "capacity_source": source_text(total_memory_bytes, loaded, quant, result),
            "scheduling": {"kv_pad_tokens": result["kv_pad_tokens"], "host_admission": True},
        }
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(plan_statements(), indent=2))
