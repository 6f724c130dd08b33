"""Check the prompts a plan will send before any point is measured.

A calibration is only as good as what the server computed. Three ways prompts silently go wrong:
they are mostly unknown or special tokens (a vocabulary that does not hold the words we send: every
request then sends the same ``<unk> <unk> ...``), their token count is not what the plan meant, or two
requests share a long token prefix the workload did not ask for (an engine that caches KV blocks then
skips most of the prefill). Each is a ``PromptError`` naming the tokenizer, the request and the figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from calibrate.prompts import PromptBuilder, PromptError

MAX_UNUSABLE_FRACTION = 0.05  # of a prompt's tokens that are unknown or special
MAX_UNINTENDED_SHARED_TOKENS = 32  # longest common token prefix of two requests not meant to share one


@dataclass(frozen=True)
class PromptSample:
    """One prompt a plan will send, with what it is meant to be."""

    label: str  # where it is sent, e.g. "fit prefill-c1-in2048 request 0"
    text: str
    intended_tokens: int
    prefix_group: int | None = None  # requests of one group share their first ``prefix_tokens`` on purpose
    prefix_tokens: int = 0


@dataclass(frozen=True)
class PromptCheck:
    """What the check found over a plan's sampled prompts (stored with the results)."""

    method: str
    samples: int
    worst_unusable_fraction: float
    worst_count_error_tokens: int
    longest_unintended_shared_tokens: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"method": self.method, "samples": self.samples,
                "worst_unusable_fraction": self.worst_unusable_fraction,
                "worst_count_error_tokens": self.worst_count_error_tokens,
                "longest_unintended_shared_tokens": self.longest_unintended_shared_tokens,
                "problems": list(self.problems)}


def _tokens(builder: PromptBuilder, text: str) -> list:
    return builder.view.encode(text) if builder.view is not None else text.split()


def _common_prefix(a: Sequence, b: Sequence) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def check_prompts(builder: PromptBuilder, samples: Sequence[PromptSample],
                  max_unusable_fraction: float = MAX_UNUSABLE_FRACTION,
                  max_shared_tokens: int = MAX_UNINTENDED_SHARED_TOKENS) -> PromptCheck:
    """Every problem of the sampled prompts; ``raise_if_bad`` turns them into one error."""
    bad_ids = builder.unusable_ids()
    problems: list[str] = []
    worst_unusable, worst_count = 0.0, 0
    encoded = []
    for s in samples:
        toks = _tokens(builder, s.text)
        encoded.append(toks)
        if not toks:
            problems.append(f"{s.label}: the prompt encodes to no token at all")
            continue
        if bad_ids:
            unusable = sum(1 for t in toks if t in bad_ids) / len(toks)
            worst_unusable = max(worst_unusable, unusable)
            if unusable > max_unusable_fraction:
                problems.append(f"{s.label}: {100 * unusable:.0f} % of its {len(toks)} tokens are unknown or special "
                                f"(at most {100 * max_unusable_fraction:.0f} % allowed): the server would get "
                                f"near-identical prompts")
        error = abs(len(toks) - s.intended_tokens)
        worst_count = max(worst_count, error)
        if error > max(1, s.intended_tokens // 100):
            problems.append(f"{s.label}: encodes to {len(toks)} tokens, meant {s.intended_tokens}")
    # The longest common prefix of any two sequences is found between neighbours in sorted order.
    order = sorted(range(len(samples)), key=lambda i: tuple(encoded[i][:max_shared_tokens + 64]))
    longest = 0
    reported = 0
    for a, b in zip(order[:-1], order[1:]):
        shared = _common_prefix(encoded[a], encoded[b])
        sa, sb = samples[a], samples[b]
        if sa.prefix_group is not None and sa.prefix_group == sb.prefix_group:
            allowed = min(sa.prefix_tokens, sb.prefix_tokens)
            shared -= allowed
        longest = max(longest, shared)
        if shared > max_shared_tokens and reported < 5:
            reported += 1
            problems.append(f"{sa.label} and {sb.label} share their first {shared} tokens beyond any prefix the "
                            f"workload asks for (at most {max_shared_tokens} allowed): an engine that caches "
                            f"prefixes would skip their prefill")
    return PromptCheck(builder.method, len(samples), round(worst_unusable, 4), worst_count, longest, tuple(problems))


def raise_if_bad(check: PromptCheck, tokenizer_name: str) -> None:
    if check.problems:
        raise PromptError(f"prompts built with {tokenizer_name} cannot be sent ({len(check.problems)} problem(s) in "
                          f"{check.samples} sampled prompts); nothing was measured:\n  - "
                          + "\n  - ".join(check.problems[:12]))
