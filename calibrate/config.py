"""The ``qfleet-calibrate`` configuration schema (structured, so a wrong key fails in Hydra at once).

The ``plan`` node holds a profiling plan with the keys of ``calibrate.plan.plan_from_mapping``; values are
checked there and by ``calibrate.plan.validate_plan`` before anything is launched. ``plan_file`` (a JSON
plan with the same keys) replaces the composed plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class TrtllmConf:
    examples_dir: str = "/app/tensorrt_llm/examples"
    dtype: str = "float16"
    max_batch_size: int = 256
    max_num_tokens: int = 8192
    max_seq_len: int = 4096
    max_input_len: int = 4095
    kv_cache_free_gpu_memory_fraction: float = 0.9
    calib_size: int = 512
    awq_block_size: int = 128


@dataclass
class EngineConf:
    kind: str = MISSING
    version: str = MISSING
    launch: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    api: str = "completions"
    path: str = "/v1/completions"
    health_path: str = "/health"
    request_model: str = "{checkpoint}"
    request_extras: dict[str, Any] = field(default_factory=dict)
    json_string_fields: list[str] = field(default_factory=list)
    tokenizer: Optional[str] = None
    capacity_path: Optional[str] = None
    capacity: dict[str, int] = field(default_factory=dict)
    capacity_source: str = ""
    scheduling: dict[str, Any] = field(default_factory=dict)
    supported_quants: Optional[list[str]] = None
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 900.0
    token_timeout_s: float = 60.0
    request_timeout_s: float = 1800.0
    health_timeout_s: float = 10.0
    liveness_interval_s: float = 2.0
    max_restarts: int = 3
    warmup_requests: int = 2
    trtllm: TrtllmConf = field(default_factory=TrtllmConf)


@dataclass
class EntryConf:
    name: str = MISSING
    model: str = MISSING
    checkpoint: str = MISSING
    quant: str = MISSING
    tp: int = 1
    gpu: str = MISSING
    workloads: list[str] = field(default_factory=list)
    gpu_indices: Optional[list[int]] = None
    launch_args: list[str] = field(default_factory=list)
    capacity: dict[str, int] = field(default_factory=dict)
    capacity_source: str = ""
    scheduling: dict[str, Any] = field(default_factory=dict)


@dataclass
class SloConf:
    ttft_s: float = MISSING
    tpot_s: float = MISSING


@dataclass
class SearchConf:
    start_qps: float = 1.0
    min_qps: float = 0.01
    max_qps: float = 10_000.0
    growth: float = 2.0
    rel_tol: float = 0.02
    max_probes: int = 40
    start: str = "fixed"  # "predicted": fit runs first, the search starts at the fitted model's simulated saturation
    predicted_growth: float = 1.05


@dataclass
class BurstConf:
    burst_s: float = 60.0
    min_requests: int = 100
    max_requests: int = 2000
    seed: int = 0
    max_total_tokens: int = 4096


@dataclass
class FitConf:
    enabled: bool = True
    prefill_input_tokens: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072])
    prefill_output_tokens: int = 4
    prefill_requests: int = 6
    decode_concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    decode_input_tokens: list[int] = field(default_factory=lambda: [128, 1024])
    decode_output_tokens: int = 64
    decode_rounds: int = 2
    mixed_concurrency: list[int] = field(default_factory=list)
    mixed_input_tokens: list[int] = field(default_factory=list)
    mixed_background_input_tokens: int = 128
    mixed_background_output_tokens: int = 320
    mixed_probes: int = 16
    mixed_probe_gap_s: float = 0.45


@dataclass
class EnergyConf:
    enabled: bool = True
    idle_s: float = 10.0


@dataclass
class QualityFileConf:
    path: str = MISSING
    model: str = MISSING
    quant: str = MISSING
    column: Optional[str] = None


@dataclass
class LmEvalConf:
    tasks: list[str] = field(default_factory=list)
    num_concurrent: int = 8
    limit: Optional[int] = None
    extra_args: list[str] = field(default_factory=list)


@dataclass
class QualityConf:
    lm_eval_results: list[QualityFileConf] = field(default_factory=list)
    opencompass_csv: list[QualityFileConf] = field(default_factory=list)
    run_lm_eval: Optional[LmEvalConf] = None
    reuse_from: Optional[str] = None


@dataclass
class PrefixProbeConf:
    enabled: bool = True
    prompt_tokens: int = 1024


@dataclass
class PhysicsConf:
    accept_violations: bool = False
    reason: str = ""


@dataclass
class PlanConf:
    name: str = MISSING
    entries: list[EntryConf] = field(default_factory=list)
    engine: EngineConf = field(default_factory=EngineConf)
    slos: list[SloConf] = field(default_factory=list)
    results_db: Optional[str] = None
    export_path: Optional[str] = None
    work_dir: Optional[str] = None
    gpus_available: int = 1
    search: SearchConf = field(default_factory=SearchConf)
    sweep_fractions: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0, 1.1, 1.25])
    burst: BurstConf = field(default_factory=BurstConf)
    fit: FitConf = field(default_factory=FitConf)
    energy: EnergyConf = field(default_factory=EnergyConf)
    quality: QualityConf = field(default_factory=QualityConf)
    max_attempts_per_point: int = 2
    prefix_probe: PrefixProbeConf = field(default_factory=PrefixProbeConf)
    physics: PhysicsConf = field(default_factory=PhysicsConf)


@dataclass
class CalibrateConf:
    plan: PlanConf = field(default_factory=PlanConf)
    plan_file: Optional[str] = None  # a JSON plan (same keys as `plan`); replaces the composed plan
    dry_run: bool = False  # validate and print what would run; launch nothing
    export: bool = True  # write the profile set after measuring
    # Export (and validate) from the results database only: no checkpoint, engine or GPU needed, nothing
    # measured, the database opened read-only (its entries' fingerprints must match the plan's).
    export_only: bool = False
    # Accept capacities the engine did not report and the plan does not state as the largest fit run (a lower
    # bound that caps the simulated instance); refused by default.
    export_lower_bounds: bool = False
