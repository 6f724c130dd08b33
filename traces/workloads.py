"""The named workloads of DESIGN.md: length distributions built from the shipped Azure traces.

``sharegpt``, ``humaneval`` and ``newsqa`` resample Azure 2023 (input, output) pairs and scale them
to the benchmark datasets' mean lengths (qMeter paper Table 2), as the paper's §8.3 does;
``azure-conv`` / ``azure-code`` are the raw pairs; ``fixed-<in>-<out>`` is a constant shape;
``random-<in>-<out>`` draws lengths uniformly within +-25 % of a target pair (the paper's synthetic
random-input workloads, §8.1; ``RANDOM_LENGTH_PAIRS`` are the 16 pairs of its §5.1).
The *length reading* (``LENGTH_READINGS``) says how the benchmark-aligned workloads use their Azure pairs:
``rescaled`` (the default, as above) or ``raw`` (the same pairs unscaled, clipped to the same context).
The Azure traces are loaded once per process (``traces.azure.load_shipped_trace`` is cached).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from traces.azure import load_shipped_trace
from traces.lengths import AlignedLengths, EmpiricalLengths, FixedLengths, LengthSampler, UniformLengths

DEFAULT_MAX_TOTAL_TOKENS = 4096  # Llama-2 context length: input + output must fit

# How a benchmark-aligned workload (sharegpt, humaneval, newsqa) reads the Azure pairs it resamples:
# ``rescaled`` scales them to the benchmark's mean lengths (qMeter §8.3 "aligning them with benchmarking
# datasets"); ``raw`` keeps the Azure lengths (only the task's choice of Azure trace, conv or code, is aligned).
# Both clip input + output to ``max_total_tokens``. Workloads without benchmark means read the same either way.
LENGTH_READINGS = ("rescaled", "raw")


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """Where a named workload's lengths come from. Means ``None`` = raw Azure pairs."""

    name: str
    azure_kind: str
    mean_input_tokens: float | None
    mean_output_tokens: float | None
    mid_range_qps: float | None  # paper Table 2's mid-range request rate (literature), if any
    provenance: str


_TABLE2 = "qMeter paper Table 2"
WORKLOADS: dict[str, WorkloadSpec] = {
    spec.name: spec
    for spec in (
        WorkloadSpec(
            "sharegpt", "conv", 331, 231, 5.0,
            f"derived: Azure LLM conv trace 2023 pairs scaled to ShareGPT means 331/231 ({_TABLE2})",
        ),
        WorkloadSpec(
            "humaneval", "code", 193, 67, 21.0,
            f"derived: Azure LLM code trace 2023 pairs scaled to HumanEval means 193/67 ({_TABLE2})",
        ),
        WorkloadSpec(
            "newsqa", "conv", 806, 200, 4.0,
            f"derived: Azure LLM conv trace 2023 pairs scaled to NewsQA means 806/200 ({_TABLE2})",
        ),
        WorkloadSpec(
            "azure-conv", "conv", None, None, None,
            "measured: Azure LLM conv trace 2023 (Azure/AzurePublicDataset, CC-BY-4.0), raw pairs",
        ),
        WorkloadSpec(
            "azure-code", "code", None, None, None,
            "measured: Azure LLM code trace 2023 (Azure/AzurePublicDataset, CC-BY-4.0), raw pairs",
        ),
    )
}
_FIXED = re.compile(r"fixed-(\d+)-(\d+)")
FIXED_PATTERN = "fixed-<in>-<out>"
_RANDOM = re.compile(r"random-(\d+)-(\d+)")
RANDOM_PATTERN = "random-<in>-<out>"
# assumption: the paper does not state how widely its random-input lengths vary; +-25 % keeps the longest pair
# (up to 1,280 + 640 tokens) inside the 2,048-token decode context the default step models were fitted to
RANDOM_RANGE_RATIO = 0.25
# qMeter paper §5.1: short/medium/long inputs 128/(256, 512)/1024 tokens, outputs 64/(128, 256)/512 tokens
RANDOM_INPUT_LENGTHS = (128, 256, 512, 1024)
RANDOM_OUTPUT_LENGTHS = (64, 128, 256, 512)
RANDOM_LENGTH_PAIRS = tuple((i, o) for i in RANDOM_INPUT_LENGTHS for o in RANDOM_OUTPUT_LENGTHS)


def random_workload(input_tokens: int, output_tokens: int) -> str:
    """The name of the random-length workload around one (input, output) target pair."""
    return f"random-{int(input_tokens)}-{int(output_tokens)}"


def random_workload_pair(name: str) -> tuple[int, int] | None:
    """The (input, output) targets of a ``random-<in>-<out>`` name, or None for any other workload."""
    match = _RANDOM.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


class UnknownWorkloadError(KeyError):
    """A workload name that is neither a named workload nor ``fixed-<in>-<out>`` / ``random-<in>-<out>``."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def workload_names() -> tuple[str, ...]:
    """The known names (plus the ``fixed-<in>-<out>`` and ``random-<in>-<out>`` patterns)."""
    return (*WORKLOADS, FIXED_PATTERN, RANDOM_PATTERN)


def workload_lengths(name: str, max_total_tokens: int = DEFAULT_MAX_TOTAL_TOKENS,
                     lengths: str = "rescaled") -> LengthSampler:
    """The length sampler of a named workload; ``sampler.describe()`` gives its provenance.

    ``max_total_tokens`` bounds input + output of the aligned workloads (they are clipped) and of
    fixed shapes (an error); the raw ``azure-*`` pairs are returned unclipped (prompts up to
    ~14k tokens), so the simulator rejects what a model's context cannot hold. ``lengths`` (one of
    ``LENGTH_READINGS``): ``raw`` gives an aligned workload its Azure pairs unscaled (scale 1), clipped
    as the rescaled ones, drawn with the same random numbers (same pairs, other scale).
    """
    if lengths not in LENGTH_READINGS:
        raise ValueError(f"length reading {lengths!r} is not one of {', '.join(LENGTH_READINGS)}")
    fixed = _fixed_shape(name)
    if fixed is not None:
        if sum(fixed) > max_total_tokens:
            raise ValueError(f"workload {name!r}: {fixed[0]} + {fixed[1]} tokens exceed max_total_tokens={max_total_tokens}")
        return FixedLengths(*fixed)
    pair = random_workload_pair(name)
    if pair is not None:
        sampler = UniformLengths(*pair, range_ratio=RANDOM_RANGE_RATIO)
        if sampler.max_total_tokens > max_total_tokens:
            raise ValueError(f"workload {name!r}: up to {sampler.max_total_tokens} tokens per request exceed "
                             f"max_total_tokens={max_total_tokens}")
        return sampler
    spec = workload_spec(name)
    trace = load_shipped_trace(spec.azure_kind)
    if spec.mean_input_tokens is None or spec.mean_output_tokens is None:
        return EmpiricalLengths.from_trace(trace, provenance=spec.provenance)
    base = EmpiricalLengths.from_trace(trace, provenance=f"Azure LLM {spec.azure_kind} trace 2023 pairs")
    if lengths == "raw":
        return AlignedLengths(  # scale exactly 1: the Azure lengths, clipped to the context
            base=base,
            mean_input_tokens=base.mean_input_tokens,
            mean_output_tokens=base.mean_output_tokens,
            max_total_tokens=max_total_tokens,
            provenance=(f"measured: Azure LLM {spec.azure_kind} trace 2023 (Azure/AzurePublicDataset, CC-BY-4.0), "
                        f"raw pairs for {name} (not rescaled to its benchmark means); input+output <= "
                        f"{max_total_tokens}"),
        )
    return AlignedLengths(
        base=base,
        mean_input_tokens=spec.mean_input_tokens,
        mean_output_tokens=spec.mean_output_tokens,
        max_total_tokens=max_total_tokens,
        provenance=f"{spec.provenance}; input+output <= {max_total_tokens}",
    )


def workload_spec(name: str) -> WorkloadSpec:
    """The spec of a named (non-fixed) workload."""
    spec = WORKLOADS.get(name)
    if spec is None:
        raise UnknownWorkloadError(f"unknown workload {name!r}; known: {', '.join(workload_names())}")
    return spec


def describe_workload(name: str) -> str:
    """Provenance line of a workload, without loading any trace."""
    fixed = _fixed_shape(name)
    if fixed is not None:
        return FixedLengths(*fixed).describe()
    pair = random_workload_pair(name)
    if pair is not None:
        return UniformLengths(*pair, range_ratio=RANDOM_RANGE_RATIO).describe()
    return workload_spec(name).provenance


def _fixed_shape(name: str) -> tuple[int, int] | None:
    match = _FIXED.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None
