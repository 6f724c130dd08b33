"""The profile contract: which tables a profile set holds, their columns, and provenance labels.

A profile set is a folder::

    manifest.json       name, description, what produced it
    step_models.csv     one row per config: StepModel fields + provenance, source
    curves.parquet      one row per (config, workload, qps): latency percentiles, throughput, energy
    saturation.csv      one row per (config, workload, SLO): saturation QPS and energy/token there
    quality.csv         one row per (model, quant, task): score 0-100
    workloads.csv       one row per workload: mean lengths and where they come from

Every row of every table carries ``provenance`` (one of PROVENANCE_KINDS) and a non-empty ``source``
saying which engine/GPU/date/command measured it, which data and method derived it, or which
publication it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

from profiles.fit_domain import FIT_DOMAIN_COLUMNS
from profiles.step_model import CAPACITY_FIELDS, OPTIONAL_FIELDS, POWER_FIELDS, TIME_FIELDS

PROVENANCE_KINDS = ("measured", "measured-kernels", "derived", "literature", "assumption")


@dataclass(frozen=True, slots=True, order=True)
class ConfigKey:
    """One deployable unit: a model at a precision on ``tp`` GPUs of one type."""

    gpu: str
    model: str
    quant: str
    tp: int

    @property
    def label(self) -> str:
        return f"{self.gpu}/{self.model}/{self.quant}/tp{self.tp}"

    @classmethod
    def parse(cls, label: str) -> "ConfigKey":
        parts = label.split("/")
        if len(parts) != 4 or not parts[3].startswith("tp") or not parts[3][2:].isdigit():
            raise ValueError(f"config label {label!r} is not 'gpu/model/quant/tpN'")
        return cls(parts[0], parts[1], parts[2], int(parts[3][2:]))


KEY_COLUMNS = ("gpu", "model", "quant", "tp")
PROVENANCE_COLUMNS = ("provenance", "source")

STEP_MODEL_COLUMNS = KEY_COLUMNS + TIME_FIELDS + POWER_FIELDS + CAPACITY_FIELDS + PROVENANCE_COLUMNS
# Optional step-model columns (engine-shape behaviour, profiles.step_model.OPTIONAL_FIELDS): written when a
# table has them, validated when present, and read as their defaults (behaviour off) when absent; and the fit
# domain (profiles.fit_domain: largest prompt, context and batch the step model was fitted on; empty = unknown).
STEP_MODEL_OPTIONAL_COLUMNS = OPTIONAL_FIELDS + FIT_DOMAIN_COLUMNS

CURVE_METRICS = (
    "p50_ttft_s",
    "p90_ttft_s",
    "p99_ttft_s",
    "p50_tpot_s",
    "p90_tpot_s",
    "p99_tpot_s",
    "throughput_qps",
    "output_tokens_per_s",
    "mean_power_w",
    "energy_per_output_token_j",
)
CURVE_COLUMNS = KEY_COLUMNS + ("workload", "qps") + CURVE_METRICS + ("n_requests",) + PROVENANCE_COLUMNS

SATURATION_COLUMNS = (
    KEY_COLUMNS
    + ("workload", "slo_ttft_s", "slo_tpot_s", "saturation_qps", "energy_per_output_token_j", "probes")
    + PROVENANCE_COLUMNS
)

QUALITY_COLUMNS = ("model", "quant", "task", "score") + PROVENANCE_COLUMNS

WORKLOAD_COLUMNS = ("workload", "mean_input_tokens", "mean_output_tokens") + PROVENANCE_COLUMNS

TABLE_FILES = {
    "step_models": ("step_models.csv", STEP_MODEL_COLUMNS),
    "curves": ("curves.parquet", CURVE_COLUMNS),
    "saturation": ("saturation.csv", SATURATION_COLUMNS),
    "quality": ("quality.csv", QUALITY_COLUMNS),
    "workloads": ("workloads.csv", WORKLOAD_COLUMNS),
}
OPTIONAL_TABLE_COLUMNS = {"step_models": STEP_MODEL_OPTIONAL_COLUMNS}
