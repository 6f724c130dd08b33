"""Does the engine reuse cached prefixes? The same prompt cold, then warm, against distinct prompts.

Engines that keep KV blocks of earlier requests (vLLM's automatic prefix caching, TensorRT-LLM's KV
reuse, transformers' block sharing) skip the prefill of a prefix they have seen. That is an engine
feature the simulator models (``sim.prefix_cache``), and a trap for calibration (identical prompts
measure the cache). The probe is one closed-loop point at concurrency 1:

    distinct D1 (pays first-use costs of the shape), A, A, A (the same prompt twice more), distinct D2

``A``'s first TTFT and ``D2``'s are cold prefills of the same length; ``A``'s repeats are warm. The engine
reuses prefixes when the warm TTFT is below ``REUSE_RATIO`` of the cold one.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

from calibrate.loadgen import RequestRecord

REUSE_RATIO = 0.6  # warm / cold TTFT below this: the prefill was (mostly) skipped
PROBE_OUTPUT_TOKENS = 4
# Request order of the probe; "same" requests repeat one prompt.
PROBE_ROLES = ("distinct-warmup", "same-cold", "same-warm", "same-warm", "distinct-cold")


@dataclass(frozen=True)
class PrefixCaching:
    """The probe's verdict for one engine, as stored with the results and exported in the manifest."""

    detected: bool
    prompt_tokens: int
    cold_ttft_s: float
    warm_ttft_s: float
    ratio: float  # warm / cold
    source: str

    def as_dict(self) -> dict:
        return {"detected": self.detected, "prompt_tokens": self.prompt_tokens, "cold_ttft_s": self.cold_ttft_s,
                "warm_ttft_s": self.warm_ttft_s, "warm_over_cold": self.ratio, "source": self.source}


def probe_prompts(prompt_tokens: int) -> list[tuple[str, int]]:
    """(role, prompt index offset) of each probe request: the same index for the repeated prompt."""
    indices = {"distinct-warmup": 0, "same-cold": 1, "same-warm": 1, "distinct-cold": 2}
    return [(role, indices[role]) for role in PROBE_ROLES]


def prefix_verdict(records: Sequence[RequestRecord], prompt_tokens: int, where: str) -> PrefixCaching:
    """The verdict from the probe's records (in ``PROBE_ROLES`` order)."""
    if len(records) != len(PROBE_ROLES) or not all(r.ok for r in records):
        errors = [r.error for r in records if not r.ok]
        raise ValueError(f"{where}: the prefix-caching probe needs {len(PROBE_ROLES)} finished requests, got "
                         f"{len(records)} ({len(errors)} failed{': ' + errors[0] if errors else ''})")
    ttft = [r.first_token_s - r.send_s for r in records]
    cold = statistics.median([t for t, role in zip(ttft, PROBE_ROLES) if role in ("same-cold", "distinct-cold")])
    warm = statistics.median([t for t, role in zip(ttft, PROBE_ROLES) if role == "same-warm"])
    ratio = warm / cold if cold > 0 else float("nan")
    detected = bool(ratio < REUSE_RATIO)
    source = (f"measured: {where}, {prompt_tokens}-token prompt at concurrency 1: cold TTFT {cold * 1e3:.1f} ms "
              f"(median of the first send and a distinct prompt), warm {warm * 1e3:.1f} ms (median of two repeats); "
              f"warm/cold {ratio:.2f} {'<' if detected else '>='} {REUSE_RATIO}: "
              f"{'the engine reuses cached prefixes' if detected else 'no prefix reuse seen'}")
    return PrefixCaching(detected, prompt_tokens, round(cold, 6), round(warm, 6), round(ratio, 4), source)
