"""Engine settings: the scheduler limits an engine is launched with, as data instead of constants.

A step model describes how fast an engine's iterations run; how many sequences and tokens one iteration
may hold, how much of the free GPU memory becomes KV cache, and whether prompts may be split across
iterations are choices made when the engine is launched. TensorRT-LLM sets them per engine
(``max_batch_size``, ``max_num_tokens``, ``kv_cache_free_gpu_mem_fraction``, ``enable_chunked_context``), and
``trtllm-bench`` chooses them differently from ``trtllm-serve``. qfleet keeps them here, named, each with its
source, so a profile set says which settings its curves were produced under and a what-if study can change
them (``cluster.engine`` in ``qfleet-sim``).

KV capacity under a setting: ``fraction x (GPU memory - weight shard - runtime reserve)`` per GPU, summed over
the TP GPUs (``profiles.catalog.kv_capacity_tokens``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


class EngineSettingsError(ValueError):
    """Engine settings no engine can be launched with."""


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Scheduler limits of one engine launch."""

    name: str
    max_batch: int  # sequences in one iteration (TensorRT-LLM max_batch_size)
    max_num_tokens: int  # tokens in one iteration (prompt tokens; with chunked context, decode tokens too)
    kv_cache_free_fraction: float  # share of the memory left after weights and runtime that holds KV cache
    chunked_context: bool  # prompts longer than the iteration's remaining token budget run in chunks
    source: str

    def __post_init__(self) -> None:
        for field_name in ("max_batch", "max_num_tokens"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EngineSettingsError(f"engine settings '{self.name}': {field_name} must be a whole number >= 1, "
                                          f"got {value!r}")
        f = self.kv_cache_free_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or not 0.0 < f <= 1.0:
            raise EngineSettingsError(f"engine settings '{self.name}': kv_cache_free_fraction must be in (0, 1], "
                                      f"got {f!r}")
        if not isinstance(self.chunked_context, bool):
            raise EngineSettingsError(f"engine settings '{self.name}': chunked_context must be true or false, "
                                      f"got {self.chunked_context!r}")

    def with_overrides(self, **overrides) -> "EngineSettings":
        """These settings with some fields replaced (validated again); the name records the change."""
        unknown = set(overrides) - {"max_batch", "max_num_tokens", "kv_cache_free_fraction", "chunked_context"}
        if unknown:
            raise EngineSettingsError(f"engine settings have no field(s) {sorted(unknown)}; known: max_batch, "
                                      "max_num_tokens, kv_cache_free_fraction, chunked_context")
        if not overrides:
            return self
        label = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
        return replace(self, name=f"{self.name}[{label}]", source=f"{self.source}; overridden: {label}", **overrides)


_TRTLLM_BUILD_DEFAULTS = ("literature: TensorRT-LLM BuildConfig defaults (max_batch_size 2048, max_num_tokens 8192) "
                          "and trtllm-serve's kv_cache_free_gpu_mem_fraction 0.9; chunked context off by default")

# The settings the shipped default profile set is built under. The characterization paper does not state its
# engine limits; 256 sequences is an assumption (a common serving setting, and the largest batch the default step
# models are fitted to), the 8,192-token budget is TensorRT-LLM's default, and the fraction is 1.0 because the
# runtime reserve (profiles.catalog.RUNTIME_RESERVE_GB) was derived from the paper's own KV-space figures, which
# already include what the engine keeps back. The paper ran without chunked prefill (its §9, limitation 4).
PAPER_CASE_STUDY = EngineSettings(
    name="paper_case_study", max_batch=256, max_num_tokens=8192, kv_cache_free_fraction=1.0, chunked_context=False,
    source="assumption: max_batch 256 (not stated by the paper); literature: max_num_tokens 8192 (TensorRT-LLM "
           "default); derived: KV fraction 1.0 with the runtime reserve fitted to the paper's §7 KV-space figures; "
           "literature: no chunked prefill (paper §9, limitation 4)")

TRTLLM_SERVE = EngineSettings(
    name="trtllm_serve", max_batch=2048, max_num_tokens=8192, kv_cache_free_fraction=0.9, chunked_context=False,
    source=_TRTLLM_BUILD_DEFAULTS)

PRESETS: dict[str, EngineSettings] = {s.name: s for s in (PAPER_CASE_STUDY, TRTLLM_SERVE)}


def lookup_engine_settings(name: str) -> EngineSettings:
    try:
        return PRESETS[name]
    except KeyError:
        raise EngineSettingsError(f"unknown engine settings '{name}'; known: {', '.join(PRESETS)}") from None


__all__ = ["EngineSettings", "EngineSettingsError", "PAPER_CASE_STUDY", "PRESETS", "TRTLLM_SERVE",
           "lookup_engine_settings"]
