"""The pieces every findings check shares: its outcome, its registration, the paper's quoted loads.

A check is a function of a ``Reader`` that returns an ``Outcome`` (holds or not, and the numbers).
``check(...)`` registers it with the paper section and the statement it tests, in the paper's order.
Readings of vague words ("negligible", "similar", "fractional") are the named constants below, so a
reader of the report can see and dispute them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from profiles.paper_findings.data import Reader

# §4 / Table 2: the mid-range request rate per dataset (50 % of 13B W8A8-INT saturation on one H100).
MID_RANGE_QPS = {"sharegpt": 5.0, "humaneval": 21.0, "newsqa": 4.0}
MID_RANGE_FRACTION = 0.5  # §4: "50% of the saturation throughput of the 13B INT8 model on an H100"
WORKLOADS = ("sharegpt", "humaneval", "newsqa")
# §4.2: "chatbot quality is the arithmetic mean of chat-R benchmarks"; code is HumanEval, summarization NewsQA.
TASK_OF = {"sharegpt": "chat-r", "humaneval": "code", "newsqa": "summarization"}

# Readings of the paper's vague words (ours, not the paper's).
NEGLIGIBLE = 0.10  # "negligible", "marginal", "without penalty", "close to": within 10 %
SIMILAR = 0.25  # "similar latency", "comparable", "match": within 25 %
FRACTIONAL = 0.25  # "improvements remain fractional": under a quarter
QUOTE_TOLERANCE = 0.10  # "up to X %": the largest effect within 10 percentage points of X
TABLE2_TOLERANCE = 0.25  # a saturation within 25 % of the paper's (its own §8.1 predictor: 15-31 % MAPE)

FP16 = "fp16"
WEIGHT_ONLY = ("w8a16-int", "w4a16-int")
ACTIVATION = ("w8a8-int", "w8a8-fp", "w4a8")
KV_PAIRS = (("w8a16-int", "w8a16kv8-int"), ("w4a16-int", "w4a16kv8-int"), ("w8a8-int", "w8a8kv8-int"),
            ("w8a8-fp", "w8a8kv8-fp"), ("w4a8", "w4a8kv8"), ("w4a8", "w4a8kv4"))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a check found: whether the statement holds, the numbers, and why it holds by construction."""

    holds: bool
    evidence: str
    construction: str = ""  # non-empty: the deciding numbers were set from the paper's own statement


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    section: str
    statement: str
    run: Callable[[Reader], Outcome]


CHECKS: list[Check] = []


def check(name: str, section: str, statement: str) -> Callable[[Callable[[Reader], Outcome]], Callable]:
    """Register a check; checks are listed in the order their modules define them (the paper's order)."""

    def register(fn: Callable[[Reader], Outcome]) -> Callable[[Reader], Outcome]:
        if any(c.name == name for c in CHECKS):
            raise ValueError(f"finding '{name}' registered twice")
        CHECKS.append(Check(name, section, statement, fn))
        return fn

    return register


def ms(seconds: float) -> str:
    return f"{1e3 * seconds:.0f} ms" if seconds >= 0.1 else f"{1e3 * seconds:.1f} ms"


def pct(fraction: float) -> str:
    return f"{100 * fraction:+.0f} %"


def quoted(value: float, target: float, tolerance: float = QUOTE_TOLERANCE) -> bool:
    """An "up to X %" statement holds when the largest effect is within the tolerance of X."""
    return abs(value - target) <= tolerance
