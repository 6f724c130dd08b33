"""The profiling plan: models x quant methods x TP x workloads on one GPU node, and how to measure them.

A plan comes from the ``qfleet-calibrate`` Hydra config (``experiments/calibrate_conf``) or from a JSON
file with the same keys (``plan_from_mapping``). ``validate_plan`` checks every entry before anything
is launched and raises one ``PlanError`` listing every problem, each naming the entry and the field:
an unknown quant method, a TP degree that does not divide the node's GPUs, a checkpoint that does not
exist, a workload nobody knows, and every (quant, GPU, TP) combination the chosen engine version
cannot run, with the reason.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from calibrate.search import DEFAULT_SWEEP_FRACTIONS, SearchSettings
from profiles.catalog import QUANTS
from profiles.profile_set import LatencySlo
from traces.workloads import UnknownWorkloadError, describe_workload

HUB_PREFIX = "hub:"


class PlanError(ValueError):
    """A plan that cannot run; the message names the entry and field of every problem."""


@dataclass(frozen=True)
class TrtllmOptions:
    """TensorRT-LLM specifics (``engine.kind: trtllm``)."""

    examples_dir: str = "/app/tensorrt_llm/examples"  # holds quantization/quantize.py (NGC release image)
    dtype: str = "float16"
    max_batch_size: int = 256
    max_num_tokens: int = 8192
    max_seq_len: int = 4096
    max_input_len: int = 4095
    kv_cache_free_gpu_memory_fraction: float = 0.9
    calib_size: int = 512
    awq_block_size: int = 128


@dataclass(frozen=True)
class EngineSpec:
    """How to launch, reach and drive the serving engine (the same for every entry of the plan)."""

    kind: str  # "openai" (generic OpenAI-compatible server) or "trtllm"
    version: str  # recorded in every measured row's provenance
    launch: tuple[str, ...] = ()  # generic: argv template, see calibrate.engines.generic
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port at each launch
    api: str = "completions"  # "completions" or "chat"
    path: str = "/v1/completions"
    health_path: str = "/health"
    request_model: str = "{checkpoint}"  # the "model" field of requests (template)
    request_extras: Mapping[str, Any] = field(default_factory=dict)
    json_string_fields: tuple[str, ...] = ()
    tokenizer: str | None = None  # a tokenizer path / hub id, "checkpoint", or None (word approximation)
    capacity_path: str | None = None  # GET path returning kv_capacity_tokens / max_batch / max_num_tokens
    capacity: Mapping[str, int] = field(default_factory=dict)  # known capacities (override discovery)
    capacity_source: str = ""  # where stated capacities / scheduling facts come from (engine docs, a formula)
    scheduling: Mapping[str, Any] = field(default_factory=dict)  # engine facts the simulator models, see below
    supported_quants: tuple[str, ...] | None = None  # generic: the methods its checkpoints carry
    env: Mapping[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 900.0
    token_timeout_s: float = 60.0
    request_timeout_s: float = 1800.0
    health_timeout_s: float = 10.0
    liveness_interval_s: float = 2.0
    max_restarts: int = 3
    warmup_requests: int = 2
    trtllm: TrtllmOptions = field(default_factory=TrtllmOptions)


@dataclass(frozen=True)
class PlanEntry:
    """One config to profile: a checkpoint served at one quant method and TP degree."""

    name: str
    model: str  # profile label, e.g. llama2-7b
    checkpoint: str  # an existing path, or "hub:<id>" for a hub model the engine downloads
    quant: str
    tp: int
    gpu: str  # profile label of the GPU type, e.g. h100-80gb
    workloads: tuple[str, ...]
    gpu_indices: tuple[int, ...] | None = None  # default: 0 .. tp-1
    launch_args: tuple[str, ...] = ()  # generic engines: flags added to this entry's launch (e.g. a quantization)
    capacity: Mapping[str, int] = field(default_factory=dict)  # stated capacities of this entry (over engine's)
    capacity_source: str = ""  # where this entry's stated capacities / scheduling facts come from
    scheduling: Mapping[str, Any] = field(default_factory=dict)  # this entry's engine facts (over engine's)

    @property
    def devices(self) -> tuple[int, ...]:
        return self.gpu_indices if self.gpu_indices is not None else tuple(range(self.tp))

    @property
    def checkpoint_ref(self) -> str:
        """What engines are given: the path, or the hub id without its prefix."""
        return self.checkpoint[len(HUB_PREFIX):] if self.checkpoint.startswith(HUB_PREFIX) else self.checkpoint


@dataclass(frozen=True)
class BurstSpec:
    burst_s: float = 60.0
    min_requests: int = 100
    max_requests: int = 2000
    seed: int = 0
    max_total_tokens: int = 4096


@dataclass(frozen=True)
class FitSpec:
    """Fixed-concurrency runs for the step-model fit (see calibrate.fit)."""

    enabled: bool = True
    prefill_input_tokens: tuple[int, ...] = (16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072)
    prefill_output_tokens: int = 4
    prefill_requests: int = 6
    decode_concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    decode_input_tokens: tuple[int, ...] = (128, 1024)
    decode_output_tokens: int = 64
    decode_rounds: int = 2
    # Mixed runs: ``c`` background clients decode (prompt ``mixed_background_input_tokens``, output
    # ``mixed_background_output_tokens``) while ``mixed_probes`` prompts of each ``mixed_input_tokens`` length arrive
    # one at a time, ``mixed_probe_gap_s`` apart: the background's token gaps time the mixed iterations.
    mixed_concurrency: tuple[int, ...] = ()
    mixed_input_tokens: tuple[int, ...] = ()
    mixed_background_input_tokens: int = 128
    mixed_background_output_tokens: int = 320
    mixed_probes: int = 16
    mixed_probe_gap_s: float = 0.45


@dataclass(frozen=True)
class EnergySpec:
    enabled: bool = True
    idle_s: float = 10.0


@dataclass(frozen=True)
class QualityFile:
    path: str
    model: str
    quant: str
    column: str | None = None  # OpenCompass: the model column to read


@dataclass(frozen=True)
class LmEvalRun:
    tasks: tuple[str, ...]
    num_concurrent: int = 8
    limit: int | None = None
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class QualitySpec:
    lm_eval_results: tuple[QualityFile, ...] = ()
    opencompass_csv: tuple[QualityFile, ...] = ()
    run_lm_eval: LmEvalRun | None = None
    reuse_from: str | None = None  # a profile set ("default" = the shipped one) whose rows fill the gaps


@dataclass(frozen=True)
class PhysicsSpec:
    """Whether the export may publish points or a fit that break the GPU's hardware floors (``calibrate.physics``):
    only with ``accept_violations`` and a stated ``reason``, recorded in the profile's manifest."""

    accept_violations: bool = False
    reason: str = ""


@dataclass(frozen=True)
class PrefixProbeSpec:
    """The prefix-caching probe (``calibrate.prefix_probe``): one prompt cold and warm, at concurrency 1."""

    enabled: bool = True
    prompt_tokens: int = 1024


@dataclass(frozen=True)
class SharedPrefixSpec:
    """Prompts that share prefixes on purpose: a ``fraction`` of the requests starts with one of ``groups``
    shared prefixes of ``tokens`` tokens (at most the prompt's length - 1), drawn with ``seed``."""

    fraction: float
    groups: int
    tokens: int
    seed: int = 0


@dataclass(frozen=True)
class ReplaySpec:
    """Replay a slice of a real trace (Azure LLM trace format) against an entry's engine.

    The slice ``[start_s, start_s + duration_s)`` keeps its arrival pattern, compressed or stretched
    so its mean rate is ``rate_qps`` (the instance's capacity is the caller's to judge), and its
    lengths, clipped so input + output fit ``max_total_tokens``."""

    name: str
    trace: str  # "conv" / "code" (the shipped Azure 2023 traces) or a CSV path
    start_s: float
    duration_s: float
    rate_qps: float
    entries: tuple[str, ...] = ()  # empty: the plan's first entry
    max_total_tokens: int = 4096
    shared_prefix: SharedPrefixSpec | None = None  # None: every prompt distinct


@dataclass(frozen=True)
class Plan:
    name: str
    entries: tuple[PlanEntry, ...]
    engine: EngineSpec
    slos: tuple[LatencySlo, ...]
    results_db: str
    export_path: str
    work_dir: str
    gpus_available: int = 1
    search: SearchSettings = field(default_factory=SearchSettings)
    sweep_fractions: tuple[float, ...] = DEFAULT_SWEEP_FRACTIONS
    burst: BurstSpec = field(default_factory=BurstSpec)
    fit: FitSpec = field(default_factory=FitSpec)
    energy: EnergySpec = field(default_factory=EnergySpec)
    quality: QualitySpec = field(default_factory=QualitySpec)
    max_attempts_per_point: int = 2
    replays: tuple[ReplaySpec, ...] = ()
    prefix_probe: PrefixProbeSpec = field(default_factory=PrefixProbeSpec)
    physics: PhysicsSpec = field(default_factory=PhysicsSpec)

    def replays_for(self, entry: PlanEntry) -> tuple[ReplaySpec, ...]:
        first = self.entries[0].name if self.entries else ""
        return tuple(r for r in self.replays if entry.name in (r.entries or (first,)))

    def entry(self, name: str) -> PlanEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(f"plan '{self.name}' has no entry '{name}'")

    def to_json(self) -> str:
        return json.dumps(_plain(self), indent=2, sort_keys=True)

    def entry_fingerprint(self, entry: PlanEntry) -> str:
        """Everything that shapes an entry's measurements (not the SLOs or search bounds: a burst at a
        QPS is the same measurement whatever it is judged against; not the stated capacities and scheduling
        facts either, see ``STATEMENT_FIELDS``). Version 2 of the fingerprint: ``legacy_entry_fingerprint``
        is version 1, which ``calibrate.db.ResultsDB`` migrates."""
        engine = {k: v for k, v in _plain(self.engine).items() if k not in STATEMENT_FIELDS}
        entry_data = {k: v for k, v in _plain(entry).items() if k not in STATEMENT_FIELDS}
        data = {"fingerprint": 2, "entry": entry_data, "engine": engine, "burst": _plain(self.burst),
                "fit": self._fit_fingerprint(), "energy": _plain(self.energy)}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def _fit_fingerprint(self) -> dict:
        """The fit settings that shape measurements: not the mixed runs, which only add points of their own."""
        return {k: v for k, v in _plain(self.fit).items() if not k.startswith("mixed_")}

    def legacy_entry_fingerprint(self, entry: PlanEntry, engine_capacity: Mapping | None = None) -> str:
        """Version 1 of the fingerprint (qfleet before stated capacities): it hashed ``engine.capacity`` (here
        the one the database's stored plan had, ``engine_capacity``) and knew no other statement field."""
        engine = {k: v for k, v in _plain(self.engine).items() if k not in STATEMENT_FIELDS}
        engine["capacity"] = _plain(dict(engine_capacity if engine_capacity is not None else self.engine.capacity))
        entry_data = {k: v for k, v in _plain(entry).items() if k not in STATEMENT_FIELDS}
        data = {"entry": entry_data, "engine": engine, "burst": _plain(self.burst),
                "fit": self._fit_fingerprint(), "energy": _plain(self.energy)}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def legacy_fingerprints(self, stored_plan: Mapping | None) -> dict[str, str]:
        """Version-1 fingerprints of every entry, with ``engine.capacity`` as the stored plan had it."""
        engine_capacity = None
        if isinstance(stored_plan, Mapping) and isinstance(stored_plan.get("engine"), Mapping):
            cap = stored_plan["engine"].get("capacity")
            engine_capacity = dict(cap) if isinstance(cap, Mapping) else None
        return {e.name: self.legacy_entry_fingerprint(e, engine_capacity) for e in self.entries}

    def stated_capacity(self, entry: PlanEntry) -> tuple[dict, str]:
        """The capacities and scheduling facts the plan states for an entry (the entry's over the engine's),
        merged into one mapping, and where they come from."""
        values = {**dict(self.engine.capacity), **dict(self.engine.scheduling), **dict(entry.capacity),
                  **dict(entry.scheduling)}
        sources = [s for s in (entry.capacity_source, self.engine.capacity_source) if s]
        return values, "; ".join(dict.fromkeys(sources))


# What a plan *states* about an engine (its limits, its scheduling behaviour) rather than how it is measured:
# it selects which fit runs exist (each is stored under its own key) and how the simulator models the engine,
# but a stored point is the same measurement whatever is stated, so it is not part of the fingerprint.
STATEMENT_FIELDS = ("capacity", "capacity_source", "scheduling")
CAPACITY_KEYS = ("kv_capacity_tokens", "max_batch", "max_num_tokens")
# Engine facts the simulator models (profiles.step_model): the KV padding interval of static (CUDA-graph)
# shapes, whether admission waits for the host-side per-sequence work (a Python engine sharing its
# interpreter with the HTTP front-end), and the block size of its prefix cache (only whole blocks are reused;
# sim.prefix_cache), used where a plan replays prompts that share prefixes on purpose, and the token padding of
# CUDA-graph shapes (a new padded shape is captured once: StepModel.graph_capture_s, fitted from the first
# request of each prefill run).
SCHEDULING_KEYS = {"kv_pad_tokens": int, "host_admission": bool, "prefix_block_tokens": int,
                   "graph_q_pad_tokens": int}


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --- building a plan from a mapping (JSON file or Hydra config) --------------------------------------


def _take(data: Mapping, where: str, allowed: set[str]) -> dict:
    if not isinstance(data, Mapping):
        raise PlanError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise PlanError(f"{where}: unknown key(s) {unknown}; known: {sorted(allowed)}")
    return dict(data)


def _build(cls, data: Mapping | None, where: str, convert: dict[str, Any] | None = None):
    """A frozen dataclass from a mapping: unknown keys fail, lists become tuples."""
    data = {} if data is None else data
    names = {f.name for f in fields(cls)}
    values = _take(data, where, names)
    convert = convert or {}
    out = {}
    for key, value in values.items():
        if key in convert:
            out[key] = convert[key](value, f"{where}.{key}")
        elif isinstance(value, list):
            out[key] = tuple(value)
        else:
            out[key] = value
    try:
        return cls(**out)
    except TypeError as exc:
        raise PlanError(f"{where}: {exc}") from None


def _tuple_of(kind):
    def conv(value, where):
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            raise PlanError(f"{where}: expected a list, got {value!r}")
        return tuple(kind(v, f"{where}[{i}]") for i, v in enumerate(value))
    return conv


def _str(value, where):
    if not isinstance(value, str):
        raise PlanError(f"{where}: expected a string, got {value!r}")
    return value


def _int(value, where):
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"{where}: expected an integer, got {value!r}")
    return value


def _num(value, where):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PlanError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _mapping(value, where):
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PlanError(f"{where}: expected a mapping, got {value!r}")
    return dict(value)


PLAN_KEYS = {"name", "entries", "engine", "slos", "results_db", "export_path", "work_dir", "gpus_available",
             "search", "sweep_fractions", "burst", "fit", "energy", "quality", "max_attempts_per_point", "replays",
             "prefix_probe", "physics"}


def plan_from_mapping(data: Mapping, base_dir: Path | None = None) -> Plan:
    """Build a plan from plain data (a JSON plan file or a resolved Hydra config)."""
    values = _take(data, "plan", PLAN_KEYS)
    for required in ("name", "entries", "engine", "slos"):
        if required not in values or values[required] in (None, "", []):
            raise PlanError(f"plan: key '{required}' is missing or empty")
    name = _str(values["name"], "plan.name")
    engine_data = dict(_take(values["engine"], "plan.engine", {f.name for f in fields(EngineSpec)}))
    trt = _build(TrtllmOptions, engine_data.pop("trtllm", None), "plan.engine.trtllm")
    engine = _build(EngineSpec, engine_data, "plan.engine", {
        "launch": _tuple_of(_str), "json_string_fields": _tuple_of(_str), "supported_quants": _tuple_of(_str),
        "request_extras": _mapping, "capacity": _mapping, "env": _mapping, "scheduling": _mapping,
    })
    engine = EngineSpec(**{**{f.name: getattr(engine, f.name) for f in fields(EngineSpec)}, "trtllm": trt})
    if not isinstance(values["entries"], (list, tuple)):
        raise PlanError("plan.entries: expected a list of entries")
    entries = tuple(
        _build(PlanEntry, e, f"plan.entries[{i}]" + (f" ('{e.get('name')}')" if isinstance(e, Mapping) else ""),
               {"workloads": _tuple_of(_str), "gpu_indices": _tuple_of(_int), "launch_args": _tuple_of(_str),
                "capacity": _mapping, "scheduling": _mapping})
        for i, e in enumerate(values["entries"]))
    slos = []
    for i, s in enumerate(values["slos"]):
        s = _take(s, f"plan.slos[{i}]", {"ttft_s", "tpot_s"})
        if "ttft_s" not in s or "tpot_s" not in s:
            raise PlanError(f"plan.slos[{i}]: needs ttft_s and tpot_s")
        slos.append(LatencySlo(_num(s["ttft_s"], f"plan.slos[{i}].ttft_s"), _num(s["tpot_s"], f"plan.slos[{i}].tpot_s")))
    search_data = _take(values.get("search") or {}, "plan.search", {f.name for f in fields(SearchSettings)})
    try:
        search = SearchSettings(**search_data)
    except (TypeError, ValueError) as exc:
        raise PlanError(f"plan.search: {exc}") from None
    quality_data = dict(_take(values.get("quality") or {}, "plan.quality", {f.name for f in fields(QualitySpec)}))
    quality = QualitySpec(
        lm_eval_results=tuple(_build(QualityFile, q, f"plan.quality.lm_eval_results[{i}]")
                              for i, q in enumerate(quality_data.get("lm_eval_results") or ())),
        opencompass_csv=tuple(_build(QualityFile, q, f"plan.quality.opencompass_csv[{i}]")
                              for i, q in enumerate(quality_data.get("opencompass_csv") or ())),
        run_lm_eval=(_build(LmEvalRun, quality_data["run_lm_eval"], "plan.quality.run_lm_eval",
                            {"tasks": _tuple_of(_str), "extra_args": _tuple_of(_str)})
                     if quality_data.get("run_lm_eval") else None),
        reuse_from=quality_data.get("reuse_from"),
    )
    base = base_dir or Path.cwd()
    entries = tuple(e if e.checkpoint.startswith(HUB_PREFIX) or not e.checkpoint
                    else PlanEntry(**{**{f.name: getattr(e, f.name) for f in fields(PlanEntry)},
                                      "checkpoint": str(_resolve(e.checkpoint, base))})
                    for e in entries)
    results_db = str(values.get("results_db") or f"outputs/calibrate/{name}/results.sqlite")
    export_path = str(values.get("export_path") or f"outputs/calibrate/{name}/profile")
    work_dir = str(values.get("work_dir") or f"outputs/calibrate/{name}/work")
    return Plan(
        name=name, entries=entries, engine=engine, slos=tuple(slos),
        results_db=str(_resolve(results_db, base)), export_path=str(_resolve(export_path, base)),
        work_dir=str(_resolve(work_dir, base)),
        gpus_available=_int(values.get("gpus_available", 1), "plan.gpus_available"),
        search=search,
        sweep_fractions=_tuple_of(_num)(values.get("sweep_fractions", list(DEFAULT_SWEEP_FRACTIONS)),
                                        "plan.sweep_fractions"),
        burst=_build(BurstSpec, values.get("burst"), "plan.burst"),
        fit=_build(FitSpec, values.get("fit"), "plan.fit",
                   {"prefill_input_tokens": _tuple_of(_int), "decode_concurrency": _tuple_of(_int),
                    "decode_input_tokens": _tuple_of(_int), "mixed_concurrency": _tuple_of(_int),
                    "mixed_input_tokens": _tuple_of(_int)}),
        energy=_build(EnergySpec, values.get("energy"), "plan.energy"),
        quality=quality,
        max_attempts_per_point=_int(values.get("max_attempts_per_point", 2), "plan.max_attempts_per_point"),
        replays=tuple(_build(ReplaySpec, r, f"plan.replays[{i}]", {"entries": _tuple_of(_str),
                                                                  "shared_prefix": _shared_prefix})
                      for i, r in enumerate(values.get("replays") or ())),
        prefix_probe=_build(PrefixProbeSpec, values.get("prefix_probe"), "plan.prefix_probe"),
        physics=_build(PhysicsSpec, values.get("physics"), "plan.physics"),
    )


def _shared_prefix(value, where):
    if value is None:
        return None
    return _build(SharedPrefixSpec, value, where)


def shown_path(path: str | Path) -> str:
    """A path as written into committed reports and manifests: relative to the working directory when inside it
    (the repository root, where the commands run), so the files do not name the machine they were made on."""
    p = Path(path).resolve()
    cwd = Path.cwd().resolve()
    return str(p.relative_to(cwd)) if p.is_relative_to(cwd) else str(p)


def _resolve(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p)


def load_plan_file(path: str | Path) -> Plan:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise PlanError(f"plan file {p} not found") from None
    except IsADirectoryError:
        raise PlanError(f"plan file {p} is a directory; give a JSON plan file (plan_file=path/to/plan.json)") from None
    except (UnicodeDecodeError, PermissionError) as exc:
        raise PlanError(f"plan file {p}: cannot be read as JSON text ({exc})") from None
    except json.JSONDecodeError as exc:
        raise PlanError(f"plan file {p}: not valid JSON ({exc})") from None
    return plan_from_mapping(data, base_dir=Path.cwd())


# --- validation ------------------------------------------------------------------------------------


def _statement_problems(where: str, capacity: Mapping, scheduling: Mapping, source: str) -> list[str]:
    problems = []
    for key, value in capacity.items():
        if key not in CAPACITY_KEYS:
            problems.append(f"{where}, field 'capacity': unknown key '{key}'; known: {', '.join(CAPACITY_KEYS)}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{where}, field 'capacity.{key}': must be a whole number >= 1, got {value!r}")
    for key, value in scheduling.items():
        kind = SCHEDULING_KEYS.get(key)
        if kind is None:
            problems.append(f"{where}, field 'scheduling': unknown key '{key}'; known: {', '.join(SCHEDULING_KEYS)}")
        elif kind is bool and not isinstance(value, bool):
            problems.append(f"{where}, field 'scheduling.{key}': must be true or false, got {value!r}")
        elif kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            problems.append(f"{where}, field 'scheduling.{key}': must be a whole number >= 0, got {value!r}")
    if (capacity or scheduling) and not str(source).strip():
        problems.append(f"{where}, field 'capacity_source': capacities or scheduling facts are stated without "
                        f"saying where they come from (engine report, documentation, a formula)")
    return problems


def plan_problems(plan: Plan, handler, launch_checks: bool = True) -> list[str]:
    """Every reason the plan cannot run, each naming its entry and field (empty when it can).

    ``launch_checks=False`` leaves out what only launching needs (checkpoints and quality files that exist on
    this machine, the engine handler's own launch checks): for exporting or validating from a results
    database measured elsewhere."""
    problems: list[str] = []
    if not plan.entries:
        problems.append("plan.entries: names no entry")
    if plan.gpus_available < 1:
        problems.append(f"plan.gpus_available: must be >= 1, got {plan.gpus_available}")
    if plan.max_attempts_per_point < 1:
        problems.append(f"plan.max_attempts_per_point: must be >= 1, got {plan.max_attempts_per_point}")
    for i, slo in enumerate(plan.slos):
        if not (slo.ttft_s > 0 and slo.tpot_s > 0):
            problems.append(f"plan.slos[{i}]: ttft_s and tpot_s must be > 0, got {slo}")
    entry_names = {e.name for e in plan.entries}
    for i, r in enumerate(plan.replays):
        where = f"plan.replays[{i}] ('{r.name}')"
        if not (r.duration_s > 0 and r.start_s >= 0 and r.rate_qps > 0 and r.max_total_tokens >= 2):
            problems.append(f"{where}: need start_s >= 0, duration_s > 0, rate_qps > 0, max_total_tokens >= 2")
        if r.trace not in ("conv", "code") and not Path(r.trace).exists():
            problems.append(f"{where}, field 'trace': '{r.trace}' is neither 'conv', 'code' nor an existing CSV")
        sp = r.shared_prefix
        if sp is not None and not (0.0 < sp.fraction <= 1.0 and sp.groups >= 1 and sp.tokens >= 1):
            problems.append(f"{where}, field 'shared_prefix': need 0 < fraction <= 1, groups >= 1, tokens >= 1; "
                            f"got {sp}")
        for name in r.entries:
            if name not in entry_names:
                problems.append(f"{where}, field 'entries': no entry named '{name}'")
    if plan.search.start == "predicted" and not plan.fit.enabled:
        problems.append("plan.search.start: 'predicted' starts each search at the saturation predicted from the fit "
                        "runs, but plan.fit.enabled is false; enable the fit or use start 'fixed'")
    bad_fracs = [f for f in plan.sweep_fractions if not f > 0]
    if not plan.sweep_fractions or bad_fracs:
        problems.append(f"plan.sweep_fractions: needs positive fractions of saturation, got {list(plan.sweep_fractions)}")
    b = plan.burst
    if not (b.burst_s > 0 and 1 <= b.min_requests <= b.max_requests and b.max_total_tokens >= 2):
        problems.append(f"plan.burst: need burst_s > 0, 1 <= min_requests <= max_requests, max_total_tokens >= 2; got {b}")
    if plan.physics.accept_violations and not str(plan.physics.reason).strip():
        problems.append("plan.physics.reason: accept_violations is true but no reason is stated; say why points "
                        "faster than the GPU allows may be published (it is recorded in the profile's manifest)")
    pp = plan.prefix_probe
    if pp.enabled and not 2 <= pp.prompt_tokens <= plan.burst.max_total_tokens - 4:
        problems.append(f"plan.prefix_probe.prompt_tokens: must be in 2..{plan.burst.max_total_tokens - 4} "
                        f"(plan.burst.max_total_tokens - 4), got {pp.prompt_tokens}")
    f = plan.fit
    if f.enabled:
        if not f.prefill_input_tokens or min(f.prefill_input_tokens) < 1 or f.prefill_output_tokens < 2:
            problems.append("plan.fit: prefill_input_tokens must be positive and prefill_output_tokens >= 2")
        if not f.decode_concurrency or min(f.decode_concurrency) < 1 or f.decode_output_tokens < 8:
            problems.append("plan.fit: decode_concurrency must be positive and decode_output_tokens >= 8")
        if not f.decode_input_tokens or min(f.decode_input_tokens) < 1 or f.decode_rounds < 1 or f.prefill_requests < 1:
            problems.append("plan.fit: decode_input_tokens, decode_rounds and prefill_requests must be positive")
        if f.mixed_concurrency and (min(f.mixed_concurrency) < 1 or not f.mixed_input_tokens
                                    or min(f.mixed_input_tokens) < 1 or f.mixed_probes < 5
                                    or not f.mixed_probe_gap_s > 0 or f.mixed_background_input_tokens < 1
                                    or f.mixed_background_output_tokens < 16):
            problems.append("plan.fit: mixed runs need positive mixed_concurrency and mixed_input_tokens, mixed_probes "
                            ">= 5, mixed_probe_gap_s > 0, mixed_background_input_tokens >= 1 and "
                            "mixed_background_output_tokens >= 16")
    e = plan.engine
    if not str(e.version).strip():
        problems.append("plan.engine.version: empty; measured provenance needs the engine version")
    if e.api not in ("completions", "chat"):
        problems.append(f"plan.engine.api: '{e.api}' is not one of ['completions', 'chat']")
    for key in ("path", "health_path"):
        if not str(getattr(e, key)).startswith("/"):
            problems.append(f"plan.engine.{key}: must start with '/', got {getattr(e, key)!r}")
    for key in ("ready_timeout_s", "token_timeout_s", "request_timeout_s", "health_timeout_s", "liveness_interval_s"):
        if not getattr(e, key) > 0:
            problems.append(f"plan.engine.{key}: must be > 0, got {getattr(e, key)}")
    bad_fields = [k for k in e.json_string_fields if k not in e.request_extras]
    if bad_fields:
        problems.append(f"plan.engine.json_string_fields: {bad_fields} are not keys of request_extras")
    problems += _statement_problems("plan.engine", e.capacity, e.scheduling, e.capacity_source)
    seen: set[str] = set()
    for i, entry in enumerate(plan.entries):
        where = f"plan entry '{entry.name}' (entries[{i}])"
        if not entry.name or entry.name in seen:
            problems.append(f"{where}, field 'name': empty or duplicated")
        seen.add(entry.name)
        for key in ("model", "gpu"):
            if not str(getattr(entry, key)).strip():
                problems.append(f"{where}, field '{key}': empty")
        if entry.quant not in QUANTS:
            problems.append(f"{where}, field 'quant': unknown quant method '{entry.quant}'; known: {', '.join(QUANTS)}")
        if entry.tp < 1:
            problems.append(f"{where}, field 'tp': must be >= 1, got {entry.tp}")
        elif entry.tp > plan.gpus_available or plan.gpus_available % entry.tp != 0:
            problems.append(f"{where}, field 'tp': tp={entry.tp} does not divide the node's "
                            f"gpus_available={plan.gpus_available}")
        if entry.gpu_indices is not None:
            if len(entry.gpu_indices) != entry.tp:
                problems.append(f"{where}, field 'gpu_indices': {list(entry.gpu_indices)} must name tp={entry.tp} GPUs")
            elif any(not 0 <= g < plan.gpus_available for g in entry.gpu_indices) or len(set(entry.gpu_indices)) != entry.tp:
                problems.append(f"{where}, field 'gpu_indices': {list(entry.gpu_indices)} must be distinct GPUs in "
                                f"0..{plan.gpus_available - 1}")
        problems += _statement_problems(where, entry.capacity, entry.scheduling,
                                        entry.capacity_source or e.capacity_source)
        if entry.checkpoint.startswith(HUB_PREFIX):
            if not entry.checkpoint[len(HUB_PREFIX):].strip():
                problems.append(f"{where}, field 'checkpoint': '{entry.checkpoint}' names no hub id")
        elif not entry.checkpoint:
            problems.append(f"{where}, field 'checkpoint': empty")
        elif launch_checks and not Path(entry.checkpoint).expanduser().exists():
            problems.append(f"{where}, field 'checkpoint': '{entry.checkpoint}' does not exist "
                            f"(give an existing path, or 'hub:<id>' for a model the engine downloads)")
        if not entry.workloads:
            problems.append(f"{where}, field 'workloads': names no workload")
        for w in entry.workloads:
            try:
                describe_workload(w)
            except UnknownWorkloadError as exc:
                problems.append(f"{where}, field 'workloads': {exc}")
        if entry.quant in QUANTS and entry.tp >= 1:
            reason = handler.unsupported_reason(entry)
            if reason is not None:
                problems.append(f"{where}: {entry.quant} at tp={entry.tp} on {entry.gpu} cannot run on "
                                f"{handler.describe()}: {reason}")
    for key in ("lm_eval_results", "opencompass_csv"):
        for i, q in enumerate(getattr(plan.quality, key)):
            if launch_checks and not Path(q.path).expanduser().exists():
                problems.append(f"plan.quality.{key}[{i}], field 'path': '{q.path}' does not exist")
            if q.quant not in QUANTS:
                problems.append(f"plan.quality.{key}[{i}], field 'quant': unknown quant method '{q.quant}'")
    if plan.quality.reuse_from not in (None, "default") and not Path(plan.quality.reuse_from).is_dir():
        problems.append(f"plan.quality.reuse_from: '{plan.quality.reuse_from}' is not a profile set folder "
                        f"(or 'default')")
    if plan.quality.run_lm_eval is not None and not plan.quality.run_lm_eval.tasks:
        problems.append("plan.quality.run_lm_eval.tasks: names no task")
    if launch_checks:
        problems += handler.plan_problems(plan)
    return problems


def validate_plan(plan: Plan, handler, launch_checks: bool = True) -> None:
    problems = plan_problems(plan, handler, launch_checks)
    if problems:
        what = "cannot run" if launch_checks else "cannot be exported"
        raise PlanError(f"plan '{plan.name}' {what} ({len(problems)} problem(s)); nothing was launched:\n  - "
                        + "\n  - ".join(problems))
