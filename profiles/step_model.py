"""The step model: time and energy of one engine iteration, the part of a profile the simulator runs on.

One iteration processes ``n_seq`` sequences and ``n_tok`` tokens: every decoding sequence contributes
one token, every newly admitted request its whole prompt (without chunked context), or, with
``chunked_context = 1``, every prefilling sequence the chunk of its prompt computed in the iteration (a chunk
over positions ``[o, o + c)`` adds ``c`` prefill tokens and ``(o + c)^2 - o^2`` to ``sum(L^2)``; semantics in
``sim.instance``). Its time is a roofline
with additive overheads::

    t = overhead_s + per_seq_s*n_seq + per_token_s*n_tok + max(weights_s, flop_token_s*n_tok)
        + per_kv_token_s*kv_tokens + per_prefill_token_s*prefill_tokens + prefill_attn_s*sum(L^2)
        + per_padded_kv_token_s*padded(kv_tokens) + mixed_overhead_s*[prompts and decodes together]

``max(weights_s, flop_token_s*n_tok)`` is the linear layers: bound by streaming the weights once
(small batches) or by tensor-core throughput (large prefills). ``kv_tokens`` is the KV cache the
decoding sequences read. ``padded(kv) = min(max(1, ceil(kv / kv_pad_tokens)) * kv_pad_tokens,
kv_capacity_tokens)`` is the KV an engine with static (CUDA-graph) shapes actually processes: it pads
the iteration's KV read up to a multiple of ``kv_pad_tokens`` (transformers' continuous batching pads to
16,384 tokens), so attention costs steps, not a slope. ``kv_pad_tokens = 0`` (the default) turns the
term off; the two padding fields are optional in a profile (absent means 0), so older profile sets load
unchanged. ``admission_lead_per_seq_s`` (optional, default 0) is not part of the iteration time: it moves
the instance's admission decision ahead of the iteration's end (``sim.instance``).

Energy is static power for the duration plus dynamic energy per unit of work, capped at the power limit::

    e = min(max_power_w*t, active_w*t + flop_token_j*n_tok + per_kv_token_j*kv_tokens + weights_j)

Both are linear in ``kv_tokens`` for a fixed batch (piecewise linear, constant padding per piece, when
``kv_pad_tokens > 0``), which is what lets the simulator jump over a stretch of decode iterations in
closed form instead of spending an event per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

TIME_FIELDS = (
    "overhead_s",
    "per_seq_s",
    "per_token_s",
    "weights_s",
    "flop_token_s",
    "per_kv_token_s",
    "per_prefill_token_s",
    "prefill_attn_s",
)
POWER_FIELDS = ("idle_w", "active_w", "flop_token_j", "per_kv_token_j", "weights_j", "max_power_w")
CAPACITY_FIELDS = ("kv_capacity_tokens", "max_batch", "max_num_tokens")
# Optional engine-shape fields (absent from a profile: the default, which turns the behaviour off).
OPTIONAL_FIELDS = ("kv_pad_tokens", "per_padded_kv_token_s", "admission_lead_per_seq_s", "mixed_overhead_s",
                   "graph_q_pad_tokens", "graph_capture_s", "chunked_context", "scheduler")
OPTIONAL_DEFAULTS = {"kv_pad_tokens": 0, "per_padded_kv_token_s": 0.0, "admission_lead_per_seq_s": 0.0,
                     "mixed_overhead_s": 0.0, "graph_q_pad_tokens": 0, "graph_capture_s": 0.0, "chunked_context": 0,
                     "scheduler": 0}
INTEGER_FIELDS = CAPACITY_FIELDS + ("kv_pad_tokens", "graph_q_pad_tokens", "chunked_context", "scheduler")
# The engine's batch scheduler (``StepModel.scheduler``), by code; semantics in sim.instance.
SCHEDULERS = ("guaranteed_no_evict", "max_utilization", "vllm")


class StepModelError(ValueError):
    """A step model with a value that cannot describe an engine."""


@dataclass(frozen=True, slots=True)
class StepModel:
    """Per-iteration time and energy of one instance (all of its TP GPUs together)."""

    overhead_s: float
    per_seq_s: float
    per_token_s: float
    weights_s: float
    flop_token_s: float
    per_kv_token_s: float
    per_prefill_token_s: float
    prefill_attn_s: float
    idle_w: float
    active_w: float
    flop_token_j: float
    per_kv_token_j: float
    weights_j: float
    max_power_w: float
    kv_capacity_tokens: int
    max_batch: int
    max_num_tokens: int
    kv_pad_tokens: int = 0
    per_padded_kv_token_s: float = 0.0
    # The instance's admission decision precedes an iteration's end by this much per sequence of the
    # iteration (a Python engine's host work, during which its front-end cannot enqueue); see sim.instance.
    admission_lead_per_seq_s: float = 0.0
    # Extra time of an iteration that runs prompts and decode steps together (a mixed batch): an engine whose
    # single-prompt prefill takes a faster path than a mixed batch (masks, other kernels) pays it; 0 = additive.
    mixed_overhead_s: float = 0.0
    # CUDA-graph capture: an engine with static shapes pads an iteration's tokens to multiples of
    # ``graph_q_pad_tokens`` (and its KV read to ``kv_pad_tokens``) and captures a graph the first time a padded
    # shape is seen, which costs ``graph_capture_s`` once per replica and shape (0: no capture modelled).
    graph_q_pad_tokens: int = 0
    graph_capture_s: float = 0.0
    # 1: TensorRT-LLM's chunked context (``enable_chunked_context``): the token budget ``max_num_tokens`` covers the
    # iteration's decode tokens and prompt chunks, and a prompt longer than what is left runs in chunks over several
    # iterations (sim.instance); 0: a prompt is prefilled whole in one iteration and must fit the budget.
    chunked_context: int = 0
    # The batch scheduler, an index into SCHEDULERS: 0 TensorRT-LLM GUARANTEED_NO_EVICT (whole KV reserved at
    # admission), 1 TensorRT-LLM MAX_UTILIZATION (KV on demand, pauses the newest requests when it runs out),
    # 2 vLLM (prefills first, block KV on demand, preemption by recomputation); see sim.instance.
    scheduler: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise StepModelError(f"step model field '{f.name}' must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise StepModelError(f"step model field '{f.name}' must be finite and >= 0, got {value!r}")
        for name in CAPACITY_FIELDS:
            if int(getattr(self, name)) < 1:
                raise StepModelError(f"step model field '{name}' must be >= 1, got {getattr(self, name)!r}")
        if self.active_w < self.idle_w:
            raise StepModelError(f"step model active_w={self.active_w} is below idle_w={self.idle_w}")
        if self.max_power_w < self.active_w:
            raise StepModelError(f"step model max_power_w={self.max_power_w} is below active_w={self.active_w}")
        if self.overhead_s + self.weights_s + self.per_padded_kv_token_s * min(self.kv_pad_tokens,
                                                                              self.kv_capacity_tokens) <= 0:
            raise StepModelError("step model iterations take no time: overhead_s + weights_s must be > 0")
        if self.chunked_context not in (0, 1):
            raise StepModelError(f"step model field 'chunked_context' must be 0 or 1, got {self.chunked_context!r}")
        if self.chunked_context and self.max_num_tokens < self.max_batch:
            raise StepModelError(f"step model field 'max_num_tokens' must be >= max_batch ({self.max_batch}) with "
                                 f"chunked context (decode tokens count against it), got {self.max_num_tokens!r}")
        if self.scheduler not in range(len(SCHEDULERS)):
            raise StepModelError(f"step model field 'scheduler' must be 0..{len(SCHEDULERS) - 1} "
                                 f"({', '.join(SCHEDULERS)}), got {self.scheduler!r}")
        if self.scheduler and self.chunked_context:
            raise StepModelError(f"chunked_context runs only with the guaranteed_no_evict scheduler, not "
                                 f"{SCHEDULERS[self.scheduler]}")
        if self.kv_pad_tokens != int(self.kv_pad_tokens):
            raise StepModelError(f"step model field 'kv_pad_tokens' must be a whole number, got {self.kv_pad_tokens!r}")

    # --- padding ---------------------------------------------------------------------------------

    def graph_shape(self, n_tok: int, kv_tokens: float) -> tuple[int, float]:
        """The padded (tokens, KV) shape of an iteration, the key of its captured CUDA graph."""
        q = self.graph_q_pad_tokens
        return (-(-n_tok // q) if q > 0 else n_tok, self.padded_kv(kv_tokens))

    def padded_kv(self, kv_tokens: float) -> float:
        """The KV tokens an iteration processes once padded to the engine's static shapes (0 without padding)."""
        pad = self.kv_pad_tokens
        if pad <= 0:
            return 0.0
        buckets = math.ceil(kv_tokens / pad) if kv_tokens > 0 else 1
        padded = (buckets if buckets > 1 else 1) * pad
        cap = self.kv_capacity_tokens
        return float(padded if padded < cap else cap)

    # --- one iteration -------------------------------------------------------------------------

    def iteration_s(
        self, n_seq: int, n_tok: int, kv_tokens: float, prefill_tokens: int = 0, prefill_sq_tokens: float = 0.0
    ) -> float:
        linear = self.flop_token_s * n_tok
        if linear < self.weights_s:
            linear = self.weights_s
        return (
            self.overhead_s
            + self.per_seq_s * n_seq
            + self.per_token_s * n_tok
            + linear
            + self.per_kv_token_s * kv_tokens
            + self.per_prefill_token_s * prefill_tokens
            + self.prefill_attn_s * prefill_sq_tokens
            + (self.per_padded_kv_token_s * self.padded_kv(kv_tokens) if self.kv_pad_tokens > 0 else 0.0)
            + (self.mixed_overhead_s if prefill_tokens and n_tok > prefill_tokens else 0.0)
        )

    def iteration_j(self, duration_s: float, n_tok: int, kv_tokens: float) -> float:
        work_j = (
            self.active_w * duration_s
            + self.flop_token_j * n_tok
            + self.per_kv_token_j * kv_tokens
            + self.weights_j
        )
        cap_j = self.max_power_w * duration_s
        return work_j if work_j < cap_j else cap_j

    # --- a stretch of decode-only iterations with a fixed batch ----------------------------------
    # Iteration j (0-based) of a stretch with batch b starting at kv0 reads kv0 + j*b KV tokens.

    def decode_fixed_s(self, batch: int) -> float:
        """The part of a decode iteration's time that does not depend on the KV cache."""
        linear = self.flop_token_s * batch
        if linear < self.weights_s:
            linear = self.weights_s
        return self.overhead_s + (self.per_seq_s + self.per_token_s) * batch + linear

    def _pad_pieces(self, batch: int, kv0: float, iterations: int):
        """Split a stretch into pieces of constant padded KV: (first j, end j, padded KV) with j in [0, k)."""
        cap = self.kv_capacity_tokens
        j = 0
        while j < iterations:
            x = kv0 + j * batch
            padded = self.padded_kv(x)
            if padded >= cap or batch <= 0:
                end = iterations
            else:
                # the last j whose KV still rounds up to `padded`: kv0 + j*batch <= padded
                end = min(iterations, int(math.floor((padded - kv0) / batch)) + 1)
                while end > j + 1 and self.padded_kv(kv0 + (end - 1) * batch) > padded:
                    end -= 1
                while end < iterations and self.padded_kv(kv0 + end * batch) <= padded:
                    end += 1
                end = max(end, j + 1)
            yield j, end, padded
            j = end

    def _over_pad_pieces(self, stretch, batch: int, kv0: float, iterations: int) -> float:
        """Sum ``stretch`` (time or energy) over the pieces of constant padding: within one, the padded KV is a
        constant extra time per iteration, so each piece is a closed-form series again."""
        total = 0.0
        for j0, j1, padded in self._pad_pieces(batch, kv0, iterations):
            total += stretch(batch, kv0 + j0 * batch, j1 - j0, self.per_padded_kv_token_s * padded, True)
        return total

    def decode_stretch_s(self, batch: int, kv0: float, iterations: int, _extra_s: float = 0.0,
                         _piece: bool = False) -> float:
        """Time of ``iterations`` decode iterations: an arithmetic series in closed form (with KV padding, one
        series per piece of constant padding)."""
        if self.kv_pad_tokens > 0 and not _piece:
            return self._over_pad_pieces(self.decode_stretch_s, batch, kv0, iterations)
        k = iterations
        fixed = self.decode_fixed_s(batch)
        if _extra_s:
            fixed += _extra_s
        return k * (fixed + self.per_kv_token_s * kv0) + (
            self.per_kv_token_s * batch * (k * (k - 1) / 2.0)
        )

    def decode_iterations_until(self, batch: int, kv0: float, elapsed_s: float) -> int:
        """Smallest k >= 0 whose stretch time is >= elapsed_s: the boundary at or after a moment."""
        if elapsed_s <= 0.0:
            return 0
        if self.kv_pad_tokens > 0:
            # Iteration times only grow along a stretch, so the stretch time is increasing in k: bisect.
            first = self.decode_stretch_s(batch, kv0, 1)
            if first >= elapsed_s:
                return 1
            lo, hi = 1, max(2, int(math.ceil(elapsed_s / first)) + 1)
            while self.decode_stretch_s(batch, kv0, hi) < elapsed_s:
                lo, hi = hi, 2 * hi
            while hi - lo > 1:  # invariant: stretch(lo) < elapsed <= stretch(hi)
                mid = (lo + hi) // 2
                if self.decode_stretch_s(batch, kv0, mid) < elapsed_s:
                    lo = mid
                else:
                    hi = mid
            return hi
        alpha = self.decode_fixed_s(batch) + self.per_kv_token_s * kv0
        beta = self.per_kv_token_s * batch / 2.0
        if beta > 0.0:
            b = alpha - beta
            k = math.ceil((-b + math.sqrt(b * b + 4.0 * beta * elapsed_s)) / (2.0 * beta))
        else:
            k = math.ceil(elapsed_s / alpha)
        k = max(k, 1)
        # The root is exact up to rounding; step to the true boundary.
        while k > 1 and self.decode_stretch_s(batch, kv0, k - 1) >= elapsed_s:
            k -= 1
        while self.decode_stretch_s(batch, kv0, k) < elapsed_s:
            k += 1
        return k

    def decode_stretch_j(self, batch: int, kv0: float, iterations: int, _extra_s: float = 0.0,
                         _piece: bool = False) -> float:
        """Energy of a decode stretch; each iteration is min(work, cap), both linear in j (per piece of
        constant padding with KV padding)."""
        k = iterations
        if k <= 0:
            return 0.0
        if self.kv_pad_tokens > 0 and not _piece:
            return self._over_pad_pieces(self.decode_stretch_j, batch, kv0, iterations)
        fixed_s = self.decode_fixed_s(batch)
        if _extra_s:
            fixed_s += _extra_s
        c = self.per_kv_token_s
        # work_j(x) = u0 + u1*x, cap_j(x) = c0 + c1*x with x = kv tokens read.
        u0 = self.active_w * fixed_s + self.flop_token_j * batch + self.weights_j
        u1 = self.active_w * c + self.per_kv_token_j
        c0 = self.max_power_w * fixed_s
        c1 = self.max_power_w * c

        def series(a0: float, a1: float, j0: int, j1: int) -> float:
            # sum over j in [j0, j1) of a0 + a1*(kv0 + j*batch)
            n = j1 - j0
            if n <= 0:
                return 0.0
            return n * (a0 + a1 * kv0) + a1 * batch * ((j0 + j1 - 1) * n / 2.0)

        work_first = u0 + u1 * kv0 <= c0 + c1 * kv0
        xk = kv0 + (k - 1) * batch
        work_last = u0 + u1 * xk <= c0 + c1 * xk
        if work_first and work_last:
            return series(u0, u1, 0, k)
        if not work_first and not work_last:
            return series(c0, c1, 0, k)
        # One crossing inside the stretch: find the first j where the other line is lower.
        lo, hi = 0, k - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            x = kv0 + mid * batch
            if (u0 + u1 * x <= c0 + c1 * x) == work_first:
                lo = mid
            else:
                hi = mid
        first, second = ((u0, u1), (c0, c1)) if work_first else ((c0, c1), (u0, u1))
        return series(*first, 0, hi) + series(*second, hi, k)

    # --- capacity --------------------------------------------------------------------------------

    def fits(self, input_tokens: int, output_tokens: int) -> bool:
        """Whether one request could ever run on an empty instance (with chunked context a prompt of any length
        runs, in chunks; without, it must fit one iteration's token budget)."""
        return input_tokens + output_tokens <= self.kv_capacity_tokens and (
            self.chunked_context == 1 or input_tokens <= self.max_num_tokens)

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_mapping(cls, values: dict, where: str = "step model") -> "StepModel":
        """Build from a row (CSV/Parquet); a missing or bad field names where it came from."""
        kwargs = {}
        for f in fields(cls):
            if f.name not in values or (f.name in OPTIONAL_FIELDS and _blank(values[f.name])):
                if f.name in OPTIONAL_FIELDS:
                    continue  # an older profile without the optional engine-shape fields: defaults
                raise StepModelError(f"{where}: missing field '{f.name}'")
            raw = values[f.name]
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise StepModelError(f"{where}: field '{f.name}' is not a number: {raw!r}") from None
            if f.name in INTEGER_FIELDS:
                if not math.isfinite(value) or value != int(value):
                    raise StepModelError(f"{where}: field '{f.name}' must be a whole number, got {raw!r}")
                value = int(value)
            kwargs[f.name] = value
        try:
            return cls(**kwargs)
        except StepModelError as exc:
            raise StepModelError(f"{where}: {exc}") from None


def _blank(value) -> bool:
    """An empty cell (None, NaN or "") of an optional column."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str)
                                                                                  and not value.strip())
