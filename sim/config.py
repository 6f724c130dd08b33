"""The main job's configuration: a structured schema (unknown keys fail in Hydra) and its translation
into the run's values, where every wrong value fails before any work with a message naming its key."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from profiles.engine_settings import (ENGINE_FIELDS, EngineOverrides, EngineSettings, EngineSettingsError, PRESETS,
                                     apply_engine_settings, check_engine_field, profile_kv_fraction)
from profiles.profile_set import LatencySlo, ProfileError, ProfileSet, default_profile_path
from sim.cluster import ClusterSettings
from sim.deployment import TaskSpec
from sim.plugins import PluginError, instantiate, load_plugin
from sim.policy_api import Policy
from sim.prefix_cache import PrefixCacheSettings
from sim.router import RouterSpec
from sim.scheduler_api import IterationScheduler, SchedulerSpec, engine_params
from traces.azure import load_azure_trace, load_shipped_trace
from traces.case_study import CASE_STUDY_TASKS, CaseStudyTraceSpec, build_case_study_trace
from traces.shared_prefix import SharedPrefixSpec, SharedPrefixStream, add_shared_prefixes
from traces.stream import WEEK_S, AzureWeekSpec, AzureWeekTrace, TraceStream
from traces.trace import Trace, TraceError
from traces.transform import scale_to_rate, slice_time, tile
from traces.workloads import LENGTH_READINGS, UnknownWorkloadError, workload_lengths, workload_spec


class ConfigError(ValueError):
    """A configuration value that cannot run; the message names the key."""


@dataclass
class SharedPrefixTaskConf:
    """One task's overrides of ``trace.shared_prefix`` (null: the shared value)."""

    fraction: Optional[float] = None
    groups: Optional[int] = None
    tokens: Optional[int] = None
    zipf_s: Optional[float] = None


@dataclass
class SharedPrefixConf:
    """The hit model for traces without prefix columns (``traces.shared_prefix``); fraction 0: off."""

    fraction: float = 0.0
    groups: int = 8
    tokens: int = 1024
    zipf_s: float = 0.0
    seed: Optional[int] = None  # null: the run's seed
    tasks: dict[str, SharedPrefixTaskConf] = field(default_factory=dict)


@dataclass
class TraceTaskConf:
    """One task of a case-study (or azure_week) trace: the workload its lengths come from, its share of arrivals."""

    workload: Optional[str] = None
    share: Optional[float] = None


@dataclass
class TraceConf:
    kind: str = "case_study"  # case_study | azure | azure_week
    total_rate_qps: float = 120.0
    duration_s: Optional[float] = 3600.0
    arrival: str = "poisson"
    cv: float = 1.0
    tasks: dict[str, TraceTaskConf] = field(default_factory=dict)  # task -> {workload, share}
    lengths: str = "rescaled"  # rescaled | raw: Azure lengths scaled to the workload's benchmark means, or not
    azure: Optional[str] = None  # conv | code (shipped) for kind=azure
    path: Optional[str] = None  # an Azure-format CSV instead of a shipped one
    task: str = "chat-s"
    target_rate_qps: Optional[float] = None
    diurnal_period_s: Optional[float] = None
    peak_rate_qps: float = 100.0  # azure_week: the diurnal rate's peak
    peak_to_trough: float = 2.0  # azure_week
    chunk_s: float = 3600.0  # azure_week: generated (and held) one chunk at a time
    shared_prefix: SharedPrefixConf = field(default_factory=SharedPrefixConf)


@dataclass
class EngineConf:
    """Engine settings (``profiles.engine_settings``): ``preset`` names one of its presets, null runs the step
    models as the profile set states them; a field set (not null) overrides the preset's or the step model's."""

    preset: Optional[str] = None
    max_batch: Optional[int] = None
    max_num_tokens: Optional[int] = None
    kv_cache_free_fraction: Optional[float] = None
    chunked_context: Optional[bool] = None
    # The batch scheduler: a shipped name (guaranteed_no_evict, max_utilization, vllm; sim.instance), or a plug-in
    # {_target_: package.module.Class, <its parameters>} (sim.scheduler_api); {_target_: null} or null: not set. The
    # default is a mapping so that ``engine.scheduler._target_=...`` works without Hydra's ``+``.
    scheduler: Any = field(default_factory=lambda: {"_target_": None})


@dataclass
class PoolConf:
    model: str = MISSING
    workload: str = MISSING
    engine: EngineConf = field(default_factory=EngineConf)  # this pool's overrides of the run's ``engine``


@dataclass
class PrefixCacheConf:
    """Every replica caches shared prompt prefixes (``sim.prefix_cache``)."""

    enabled: bool = False
    block_tokens: int = 16


@dataclass
class ClusterConf:
    gpu_types: list[str] = field(default_factory=lambda: ["a100-40gb", "h100-80gb"])
    pools: dict[str, PoolConf] = field(default_factory=dict)
    replan_interval_s: Optional[float] = 300.0
    load_estimate: str = "oracle"
    engine_start_s: float = 20.0
    load_gbps_per_gpu: float = 2.0
    max_queue: Optional[int] = None
    drain_limit_s: float = 3600.0
    prefix_cache: PrefixCacheConf = field(default_factory=PrefixCacheConf)
    fleet: Any = None  # GPUs per type every plan must fit in, e.g. {a100-40gb: 16}; null: unbounded


@dataclass
class ProfilesConf:
    path: Optional[str] = None


@dataclass
class SloTaskConf:
    ttft_s: float = MISSING
    tpot_s: float = MISSING
    quality_min: float = MISSING


@dataclass
class SloConf:
    tasks: dict[str, SloTaskConf] = field(default_factory=dict)


@dataclass
class OutputsConf:
    per_request: bool = True
    figures: bool = True
    streaming: Optional[bool] = None  # null: stream traces built in chunks (azure_week), hold others in memory


@dataclass
class SimConf:
    trace: TraceConf = field(default_factory=TraceConf)
    cluster: ClusterConf = field(default_factory=ClusterConf)
    # Plug-ins (sim.plugins): {_target_: an importable class, name: optional label, its parameters...}; open nodes,
    # checked against the class's constructor when the run is built.
    policy: Any = MISSING
    router: Any = MISSING
    profiles: ProfilesConf = field(default_factory=ProfilesConf)
    slo: SloConf = field(default_factory=SloConf)
    engine: EngineConf = field(default_factory=EngineConf)
    seed: int = 0
    progress: bool = True
    outputs: OutputsConf = field(default_factory=OutputsConf)


@dataclass(frozen=True)
class RunSpec:
    """Everything one simulation needs, validated. ``trace`` is a ``TraceStream`` for chunked traces."""

    trace: Trace | TraceStream
    tasks: tuple[TaskSpec, ...]
    policy: Policy
    profiles: ProfileSet
    settings: ClusterSettings
    policy_label: str = ""  # the run's label: policy.name, else the class's name


def _fail(key: str, why: str) -> ConfigError:
    return ConfigError(f"config key '{key}': {why}")


# --- ranges of every numeric setting, checked when the config is read ------------------------------

# Most requests a trace held in memory may have (~100 bytes each through the simulation: ~10 GB), and a
# streamed one (requests.parquet grows ~40 bytes per request: ~400 GB).
MAX_TRACE_REQUESTS = 100_000_000
MAX_STREAMED_REQUESTS = 10_000_000_000

# key -> (lower bound, lower bound included, upper bound or None, whole number, null allowed)
NUMERIC_RANGES: dict[str, tuple[float, bool, float | None, bool, bool]] = {
    "seed": (0, True, 2**63 - 1, True, False),
    "trace.total_rate_qps": (0, False, None, False, False),
    "trace.duration_s": (0, False, None, False, True),
    "trace.cv": (0, False, None, False, False),
    "trace.target_rate_qps": (0, False, None, False, True),
    "trace.diurnal_period_s": (0, False, None, False, True),
    "trace.peak_rate_qps": (0, False, None, False, False),
    "trace.peak_to_trough": (1, True, None, False, False),
    "trace.chunk_s": (0, False, None, False, False),
    "trace.shared_prefix.fraction": (0, True, 1, False, False),
    "trace.shared_prefix.groups": (1, True, None, True, False),
    "trace.shared_prefix.tokens": (1, True, None, True, False),
    "trace.shared_prefix.zipf_s": (0, True, None, False, False),
    "trace.shared_prefix.seed": (0, True, 2**63 - 1, True, True),
    "cluster.replan_interval_s": (0, False, None, False, True),
    "cluster.engine_start_s": (0, True, None, False, False),
    "cluster.load_gbps_per_gpu": (0, False, None, False, False),
    "cluster.max_queue": (1, True, None, True, True),
    "cluster.drain_limit_s": (0, True, None, False, False),
    "cluster.prefix_cache.block_tokens": (1, True, None, True, False),
}  # policy and router parameters: each plug-in class's ``param_ranges`` (sim.plugins)
PER_TASK_RANGES: dict[str, tuple[float, bool, float | None, bool, bool]] = {
    "ttft_s": (0, False, None, False, False),
    "tpot_s": (0, False, None, False, False),
    "quality_min": (0, True, 100, False, False),
}
SHARED_PREFIX_TASK_RANGES = {k.rsplit(".", 1)[1]: (*v[:4], True) for k, v in NUMERIC_RANGES.items()
                             if k.startswith("trace.shared_prefix.") and not k.endswith(".seed")}

# Which trace settings each trace.kind reads; any other one set away from its default is an error.
TRACE_KEYS_USED = {
    "case_study": {"total_rate_qps", "duration_s", "arrival", "cv", "tasks", "lengths", "diurnal_period_s"},
    "azure": {"azure", "path", "task", "target_rate_qps", "duration_s"},
    "azure_week": {"duration_s", "peak_rate_qps", "peak_to_trough", "diurnal_period_s", "tasks", "lengths",
                   "chunk_s"},
}


def _range_text(lo: float, lo_in: bool, hi: float | None, whole: bool, nullable: bool) -> str:
    kind = "a whole number" if whole else "a finite number"
    bound = f">= {lo:g}" if lo_in else f"> {lo:g}"
    if hi is not None and hi < 2**62:
        bound = f"in [{lo:g}, {hi:g}]" if lo_in else f"in ({lo:g}, {hi:g}]"
    return f"{kind} {bound}" + (" or null" if nullable else "")


def check_number(key: str, value: Any, rule: tuple[float, bool, float | None, bool, bool]) -> None:
    """Raise ConfigError unless ``value`` is a finite number in the rule's range (or null where allowed)."""
    lo, lo_in, hi, whole, nullable = rule
    if value is None:
        if nullable:
            return
        raise _fail(key, f"must be {_range_text(*rule)}, got null")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        x = float(value)
        ok = math.isfinite(x) and (x >= lo if lo_in else x > lo) and (hi is None or x <= hi)
        if ok and whole:
            ok = x == int(x)
    if not ok:
        raise _fail(key, f"must be {_range_text(*rule)}, got {value!r}")


def _at(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def validate_settings(cfg: Any) -> None:
    """Every numeric setting finite and in range, every setting used by the component it configures; raises
    ConfigError naming the first key that is not."""
    for key, rule in NUMERIC_RANGES.items():
        check_number(key, _at(cfg, key), rule)
    for name, task_slo in cfg.slo.tasks.items():
        for field_name, rule in PER_TASK_RANGES.items():
            check_number(f"slo.tasks.{name}.{field_name}", task_slo[field_name], rule)
    for name, override in cfg.trace.shared_prefix.tasks.items():
        for field_name, rule in SHARED_PREFIX_TASK_RANGES.items():
            check_number(f"trace.shared_prefix.tasks.{name}.{field_name}", override[field_name], rule)
    _check_trace_tasks(cfg.trace)
    _check_trace_keys(cfg.trace)
    _check_trace_size(cfg)


def _check_trace_keys(t: Any) -> None:
    kind = str(t.kind)
    used = TRACE_KEYS_USED.get(kind)
    if used is None:
        raise _fail("trace.kind", f"'{kind}' is not one of {sorted(TRACE_KEYS_USED)}")
    defaults = TraceConf()
    for name in TraceConf.__dataclass_fields__:
        if name in ("kind", "shared_prefix") or name in used:
            continue
        value = t[name]
        value = {k: dict(v) for k, v in value.items()} if name == "tasks" and value is not None else value
        if value != getattr(defaults, name):
            users = sorted(k for k, keys in TRACE_KEYS_USED.items() if name in keys)
            raise _fail(f"trace.{name}", f"not used by trace.kind={kind} (it applies to kind {', '.join(users)}); "
                                         f"remove it, got {value!r}")
    if kind == "case_study":
        if str(t.arrival) != "gamma" and float(t.cv) != defaults.cv:
            raise _fail("trace.cv", f"only trace.arrival=gamma uses it (arrival is '{t.arrival}'); got {t.cv!r}")
        if str(t.arrival) != "diurnal" and t.diurnal_period_s is not None:
            raise _fail("trace.diurnal_period_s", f"only trace.arrival=diurnal uses it (arrival is '{t.arrival}'); "
                                                  f"got {t.diurnal_period_s!r}")


def _check_trace_tasks(t: Any) -> None:
    """``trace.tasks`` (task -> workload, share) and ``trace.lengths`` of the kinds that read them."""
    kind = str(t.kind)
    if "tasks" not in TRACE_KEYS_USED.get(kind, ()):
        return
    if str(t.lengths) not in LENGTH_READINGS:
        raise _fail("trace.lengths", f"'{t.lengths}' is not one of {list(LENGTH_READINGS)} (rescaled: Azure lengths "
                                     f"scaled to each workload's benchmark means; raw: as recorded)")
    if not t.tasks:
        raise _fail("trace.tasks", f"names no task (give each of {list(CASE_STUDY_TASKS)} a workload and a share, "
                                   f"e.g. trace.tasks.chat-s={{workload:sharegpt,share:0.56}})")
    for name, task in t.tasks.items():
        if name not in CASE_STUDY_TASKS:
            raise _fail(f"trace.tasks.{name}", f"unknown task '{name}' (known: {list(CASE_STUDY_TASKS)})")
        if task is None:
            raise _fail(f"trace.tasks.{name}", "is null; give it a workload and a share (or remove it with "
                                               f"~trace.tasks.{name})")
        check_number(f"trace.tasks.{name}.share", task.share, (0, False, 1, False, False))
        workload = task.workload
        if workload is None or not isinstance(workload, str) or not workload:
            raise _fail(f"trace.tasks.{name}.workload", f"must name a workload, got {workload!r}")
        try:
            if kind == "azure_week":
                workload_spec(workload)  # tiles the Azure traces: only Azure-derived workloads
            else:
                workload_lengths(workload, lengths=str(t.lengths))
        except UnknownWorkloadError as exc:
            extra = " (azure_week tiles the Azure traces: fixed shapes cannot serve it)" if kind == "azure_week" else ""
            raise _fail(f"trace.tasks.{name}.workload", f"{exc}{extra}") from None
        except ValueError as exc:
            raise _fail(f"trace.tasks.{name}.workload", str(exc)) from None
    total = sum(float(task.share) for task in t.tasks.values())
    if abs(total - 1.0) > 1e-6:
        raise _fail("trace.tasks", f"shares must sum to 1, got {total:g} "
                                   f"({', '.join(f'{n}={float(v.share):g}' for n, v in t.tasks.items())})")


def _trace_tasks(t: Any) -> tuple[dict[str, float], tuple[tuple[str, str], ...]]:
    """``trace.tasks`` as the spec's mix (task -> share) and workloads ((task, workload) pairs), in config order."""
    mix = {str(name): float(task.share) for name, task in t.tasks.items()}
    workloads = tuple((str(name), str(task.workload)) for name, task in t.tasks.items())
    return mix, workloads


def _spec_error(text: str, prefix: str) -> ConfigError:
    """A trace spec's ValueError as a config error naming the key (the spec's ``mix``/``workloads``: trace.tasks)."""
    if text.startswith(prefix):
        field_name, _, why = text.removeprefix(prefix).partition(" ")
        field_name = field_name.rstrip(":")
        key = "trace.tasks" if field_name in ("mix", "workloads") else f"trace.{field_name}"
        return _fail(key, why)
    return _fail("trace", text)


def _check_trace_size(cfg: Any) -> None:
    """Refuse a trace that would need more requests than memory (or disk, streamed) can hold."""
    t = cfg.trace
    kind = str(t.kind)
    if kind == "case_study":
        duration = float(t.duration_s) if t.duration_s is not None else 3600.0
        expected, keys = float(t.total_rate_qps) * duration, "trace.total_rate_qps x trace.duration_s"
        limit = MAX_TRACE_REQUESTS
    elif kind == "azure_week":
        duration = float(t.duration_s) if t.duration_s is not None else WEEK_S
        chunk = float(t.peak_rate_qps) * min(float(t.chunk_s), duration)
        if chunk > MAX_TRACE_REQUESTS:
            raise _fail("trace.chunk_s", f"a chunk of {t.chunk_s:g} s at up to {t.peak_rate_qps:g} req/s holds "
                                         f"~{chunk:.3g} requests in memory, more than {MAX_TRACE_REQUESTS:.0e}; "
                                         f"lower trace.chunk_s or trace.peak_rate_qps")
        expected, keys = float(t.peak_rate_qps) * duration, "trace.peak_rate_qps x trace.duration_s"
        limit = MAX_STREAMED_REQUESTS
    else:
        if t.target_rate_qps is None or t.duration_s is None:
            return  # the recorded trace's own size, or a scaled one (scaling keeps the count)
        expected, keys = float(t.target_rate_qps) * float(t.duration_s), "trace.target_rate_qps x trace.duration_s"
        limit = MAX_TRACE_REQUESTS
    if expected > limit:
        raise _fail(keys.split(" x ")[0], f"{keys} = ~{expected:.3g} requests, more than the {limit:.0e} a run may "
                                          f"hold; lower the rate or the duration")


def build_trace(cfg: Any, seed: int) -> Trace | TraceStream:
    """The configured trace, with shared prefixes drawn by ``trace.shared_prefix`` when it is on."""
    trace = _build_base_trace(cfg, seed)
    prefix = cfg.get("shared_prefix")
    specs = shared_prefix_specs(prefix, trace.task_names) if prefix is not None else None
    if specs is None:
        return trace
    prefix_seed = int(prefix.seed) if prefix.seed is not None else int(seed)
    try:
        if isinstance(trace, Trace):
            return add_shared_prefixes(trace, specs, prefix_seed)
        return SharedPrefixStream(trace, specs, prefix_seed)
    except ValueError as exc:
        raise _fail("trace.shared_prefix", str(exc)) from None


def shared_prefix_specs(cfg: Any, task_names: tuple[str, ...]) -> dict[str, SharedPrefixSpec] | None:
    """Per task of the trace, its validated hit model; None when no task gets a shared prefix."""
    unknown = sorted(set(cfg.tasks) - set(task_names))
    if unknown:
        raise _fail(f"trace.shared_prefix.tasks.{unknown[0]}",
                    f"task '{unknown[0]}' is not in the trace (tasks: {list(task_names)})")
    shared = {name: cfg[name] for name in ("fraction", "groups", "tokens", "zipf_s")}
    specs = {}
    for name in task_names:
        override = cfg.tasks.get(name)
        values = dict(shared)
        where = {key: f"trace.shared_prefix.{key}" for key in values}
        if override is not None:
            for key in values:
                if override[key] is not None:
                    values[key] = override[key]
                    where[key] = f"trace.shared_prefix.tasks.{name}.{key}"
        try:
            specs[name] = SharedPrefixSpec(float(values["fraction"]), values["groups"], values["tokens"],
                                           float(values["zipf_s"]))
        except ValueError as exc:
            key = str(exc).split(" ")[0].removeprefix("SharedPrefixSpec.")
            raise _fail(where.get(key, "trace.shared_prefix"), str(exc).split(" ", 1)[1]) from None
    if cfg.seed is not None and (isinstance(cfg.seed, bool) or int(cfg.seed) < 0):
        raise _fail("trace.shared_prefix.seed", f"must be a whole number >= 0 or null, got {cfg.seed}")
    return specs if any(spec.fraction > 0 for spec in specs.values()) else None


def _build_base_trace(cfg: Any, seed: int) -> Trace | TraceStream:
    t = cfg
    if t.kind == "azure_week":
        _check_trace_tasks(t)
        mix, workloads = _trace_tasks(t)
        try:
            spec = AzureWeekSpec(
                duration_s=float(t.duration_s) if t.duration_s is not None else WEEK_S,
                peak_rate_qps=float(t.peak_rate_qps),
                peak_to_trough=float(t.peak_to_trough),
                period_s=float(t.diurnal_period_s) if t.diurnal_period_s is not None else 86_400.0,
                mix=mix,
                seed=int(seed),
                chunk_s=float(t.chunk_s),
                workloads=workloads,
                lengths=str(t.lengths),
            )
        except ValueError as exc:
            raise _spec_error(str(exc), "AzureWeekSpec.") from None
        return AzureWeekTrace(spec)
    if t.kind == "case_study":
        _check_trace_tasks(t)
        mix, workloads = _trace_tasks(t)
        try:
            spec = CaseStudyTraceSpec(
                total_rate_qps=float(t.total_rate_qps),
                duration_s=float(t.duration_s) if t.duration_s is not None else 3600.0,
                mix=mix,
                arrival=str(t.arrival),
                cv=float(t.cv),
                seed=int(seed),
                diurnal_period_s=t.diurnal_period_s,
                workloads=workloads,
                lengths=str(t.lengths),
            )
        except ValueError as exc:
            raise _spec_error(str(exc), "CaseStudyTraceSpec.") from None
        return build_case_study_trace(spec)
    if t.kind == "azure":
        try:
            if t.path:
                trace = load_azure_trace(Path(t.path), task_name=t.task)
            elif t.azure in ("conv", "code"):
                shipped = load_shipped_trace(t.azure)
                trace = dataclasses.replace(shipped, task_names=(t.task,))
            else:
                raise _fail("trace.azure", f"'{t.azure}' is not one of ['conv', 'code'] (or set trace.path)")
        except TraceError as exc:
            raise (_fail("trace.path", str(exc)) if t.path else ConfigError(str(exc))) from None
        where = f"trace {t.path}" if t.path else f"shipped trace '{t.azure}'"
        span = f"{len(trace)} request(s) spanning {trace.duration_s:g} s"
        if t.target_rate_qps is not None:
            check_number("trace.target_rate_qps", t.target_rate_qps, NUMERIC_RANGES["trace.target_rate_qps"])
            if trace.duration_s <= 0:
                raise _fail("trace.target_rate_qps", f"{where} has {span}: a rate needs >= 2 requests at different "
                                                     f"times; set trace.target_rate_qps=null")
            trace = scale_to_rate(trace, float(t.target_rate_qps))
        if t.duration_s is not None:
            check_number("trace.duration_s", t.duration_s, NUMERIC_RANGES["trace.duration_s"])
            if len(trace) < 2 or trace.duration_s <= 0:
                raise _fail("trace.duration_s", f"{where} has {span}: only a trace of >= 2 requests at different "
                                                f"times can be tiled to a duration; set trace.duration_s=null")
            period_s = trace.duration_s * len(trace) / (len(trace) - 1)
            expected = len(trace) * float(t.duration_s) / period_s
            if expected > MAX_TRACE_REQUESTS:
                raise _fail("trace.duration_s", f"tiling {where} ({span}) to {t.duration_s:g} s gives ~{expected:.3g} "
                                                f"requests, more than the {MAX_TRACE_REQUESTS:.0e} a run may hold")
            trace = slice_time(tile(trace, float(t.duration_s)), 0.0, float(t.duration_s))
        return trace
    raise _fail("trace.kind", f"'{t.kind}' is not one of ['case_study', 'azure', 'azure_week']")


def build_engine(run_engine: Any, pool_engine: Any, pool: str) -> EngineSettings | EngineOverrides | None:
    """One pool's engine settings: the pool's preset, else the run's (``engine.preset``; null: the profile's own),
    with the run's fields set, then the pool's, on top. None when nothing is set (the profile's step models)."""
    preset_key, preset = "engine.preset", run_engine.get("preset") if run_engine is not None else None
    if pool_engine is not None and pool_engine.get("preset") is not None:
        preset_key, preset = f"cluster.pools.{pool}.engine.preset", pool_engine.preset
    values = {}
    for where, node in (("engine", run_engine), (f"cluster.pools.{pool}.engine", pool_engine)):
        if node is None:
            continue
        for name in ENGINE_FIELDS:
            value = node.get(name)
            if name == "scheduler":
                value = build_scheduler(value, f"{where}.scheduler")
            if value is None:
                continue
            if name == "kv_cache_free_fraction" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            try:
                values[name] = check_engine_field(name, value)
            except EngineSettingsError as exc:
                hint = (f" (or a plug-in: {where}.scheduler._target_=package.module.Class)" if name == "scheduler"
                        else "")
                raise _fail(f"{where}.{name}", str(exc).removeprefix(f"{name} ") + hint) from None
    if preset is not None:
        if str(preset) not in PRESETS:
            raise _fail(preset_key, f"'{preset}' is not one of {sorted(PRESETS)} (null: the profile's own settings)")
        return PRESETS[str(preset)].with_overrides(**values)
    return EngineOverrides(**values) if values else None


SCHEDULER_INTERFACE = "the scheduler interface (sim.scheduler_api.IterationScheduler: schedule(view) -> Decision)"


def build_scheduler(node: Any, key: str) -> str | SchedulerSpec | None:
    """The ``scheduler`` engine setting at ``key``: None when not set (null, or ``{_target_: null}`` alone), a name as
    written (checked with the other engine fields), or the plug-in its ``_target_`` names: imported, checked against
    ``sim.scheduler_api.IterationScheduler``, its parameters bound and one instance made, each failure one line
    naming the key (``<key>._target_``, ``<key>.<parameter>``, ``<key>``)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if node is None or not isinstance(node, dict):
        return node
    if node.get("_target_") is None and set(node) <= {"_target_"}:
        return None
    try:
        plugin = load_plugin(node, key, SCHEDULER_INTERFACE, ("schedule",), check_number)
        if not issubclass(plugin.cls, IterationScheduler):
            raise PluginError(f"{key}._target_", f"'{plugin.target}' does not implement {SCHEDULER_INTERFACE}: "
                                                 f"subclass sim.scheduler_api.IterationScheduler")
        made = instantiate(plugin, key)
        try:
            engine_params(made)
        except ValueError as exc:
            raise PluginError(key, f"{plugin.target}: {exc}") from None
    except PluginError as exc:
        raise ConfigError(str(exc)) from None
    return SchedulerSpec(plugin.target, plugin.label, plugin.cls, tuple(plugin.params.items()))


def engine_field_set(node: Any, name: str) -> bool:
    """Whether an engine node sets field ``name`` (a scheduler of ``{_target_: null}`` alone is not set)."""
    value = node.get(name)
    if name == "scheduler" and isinstance(value, (dict, DictConfig)):
        return value.get("_target_") is not None or len(value) > 1
    return value is not None


def build_tasks(cfg: Any) -> tuple[TaskSpec, ...]:
    pools = cfg.cluster.pools
    slos = cfg.slo.tasks
    if not pools:
        raise _fail("cluster.pools", "names no pool")
    tasks = []
    for name, pool in pools.items():
        if name not in slos:
            raise _fail(f"slo.tasks.{name}", f"missing: pool '{name}' has no SLO (SLOs given for {sorted(slos)})")
        slo = slos[name]
        for key in ("ttft_s", "tpot_s"):
            if not float(slo[key]) > 0:
                raise _fail(f"slo.tasks.{name}.{key}", f"must be > 0, got {slo[key]}")
        if not 0 <= float(slo.quality_min) <= 100:
            raise _fail(f"slo.tasks.{name}.quality_min", f"must be in [0, 100], got {slo.quality_min}")
        try:
            workload_lengths(pool.workload)
        except UnknownWorkloadError as exc:
            raise _fail(f"cluster.pools.{name}.workload", str(exc)) from None
        engine = build_engine(cfg.get("engine"), pool.get("engine"), name)
        tasks.append(TaskSpec(name, str(pool.model), str(pool.workload),
                              LatencySlo(float(slo.ttft_s), float(slo.tpot_s)), float(slo.quality_min), engine))
    return tuple(tasks)


def check_engines(cfg: Any, tasks: tuple[TaskSpec, ...], profiles: ProfileSet) -> None:
    """Every pool's engine settings applied to every profiled config of its model, so a combination that
    describes no engine (e.g. chunked context with max_num_tokens below max_batch) fails now, naming the key."""
    engines = [t for t in tasks if t.engine is not None]
    if not engines:
        return
    try:
        fraction = profile_kv_fraction(profiles.manifest, str(profiles.path / "manifest.json"))
    except EngineSettingsError as exc:
        raise _fail("profiles.path", str(exc)) from None
    for task in engines:
        pool_engine = cfg.cluster.pools[task.name].get("engine")
        where = (f"cluster.pools.{task.name}.engine" if pool_engine is not None
                 and any(engine_field_set(pool_engine, k) for k in ("preset",) + ENGINE_FIELDS) else "engine")
        for key in profiles.configs():
            if key.model != task.model:
                continue
            try:
                apply_engine_settings(profiles.step(key), task.engine, fraction)
            except EngineSettingsError as exc:
                raise _fail(where, f"{task.engine.name} on {key.label}: {exc}") from None


def build_run(cfg: Any) -> RunSpec:
    """Validate the whole configuration and build the run's values, or raise ConfigError."""
    validate_settings(cfg)
    policy, policy_label = build_policy(cfg.get("policy"))
    router = build_router(cfg.get("router"))
    c = cfg.cluster
    try:
        settings = ClusterSettings(
            gpu_types=tuple(str(g) for g in c.gpu_types),
            router=router,
            replan_interval_s=c.replan_interval_s,
            load_estimate=str(c.load_estimate),
            engine_start_s=float(c.engine_start_s),
            load_gbps_per_gpu=float(c.load_gbps_per_gpu),
            max_queue=c.max_queue,
            drain_limit_s=float(c.drain_limit_s),
            prefix_cache=(PrefixCacheSettings(block_tokens=c.prefix_cache.block_tokens)
                          if c.prefix_cache.enabled else None),
            fleet=_fleet(c.get("fleet")),
        )
    except ValueError as exc:
        raise ConfigError(f"config key {exc}") from None
    path = Path(cfg.profiles.path) if cfg.profiles.path else default_profile_path()
    try:
        profiles = ProfileSet.load(path)
    except ProfileError as exc:
        raise _fail("profiles.path", str(exc)) from None
    tasks = build_tasks(cfg)
    known_models = {k.model for k in profiles.configs()}
    known_gpus = {k.gpu for k in profiles.configs()}
    for task in tasks:
        if task.model not in known_models:
            raise _fail(f"cluster.pools.{task.name}.model", f"'{task.model}' has no profile in {path} (profiled: {sorted(known_models)})")
        curves = profiles.curves
        workloads = sorted(str(w) for w in curves.loc[curves["model"] == task.model, "workload"].unique())
        if task.workload not in workloads:
            raise _fail(f"cluster.pools.{task.name}.workload",
                        f"'{task.workload}' has no curves for {task.model} in {path} (profiled workloads of "
                        f"{task.model}: {workloads})")
    check_engines(cfg, tasks, profiles)
    if settings.prefix_cache is not None:
        for task in tasks:
            scheduler = task.engine.fields().get("scheduler") if task.engine is not None else None
            if scheduler not in (None, "guaranteed_no_evict"):
                raise _fail("cluster.prefix_cache.enabled", f"prefix caching runs only with the guaranteed_no_evict "
                                                            f"scheduler; pool '{task.name}' runs {scheduler}")
    for gpu in settings.gpu_types:
        if gpu not in known_gpus:
            raise _fail("cluster.gpu_types", f"'{gpu}' has no profile in {path} (profiled: {sorted(known_gpus)})")
    trace = build_trace(cfg.trace, int(cfg.seed))
    names = {t.name for t in tasks}
    extra = [n for n in trace.task_names if n not in names]
    if extra:
        raise _fail("cluster.pools", f"the trace has task(s) {extra} with no pool")
    return RunSpec(trace, tasks, policy, profiles, settings, policy_label)


def _fleet(node: Any) -> tuple[tuple[str, int], ...] | None:
    """``cluster.fleet`` as ((GPU type, whole GPUs), ...); None when unset. Values are checked by ClusterSettings."""
    if node is None:
        return None
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict) or not node:
        raise ConfigError(f"config key cluster.fleet must map GPU types to whole GPUs, e.g. "
                          f"{{a100-40gb: 16, h100-80gb: 8}}, got {node!r}")
    out = []
    for gpu, count in node.items():
        if isinstance(count, float) and count.is_integer():
            count = int(count)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"config key cluster.fleet.{gpu} must be a whole number of GPUs >= 0, got {count!r}")
        out.append((str(gpu), count))
    return tuple(out)


def _plugin_node(node: Any, group: str) -> dict:
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if node is None or node == "???":
        raise _fail(group, f"missing: choose one with {group}=<option> or {group}._target_=package.module.Class")
    if not isinstance(node, dict):
        raise _fail(group, f"must be a mapping with _target_ (an importable class) and its parameters, got {node!r}")
    return node


def build_policy(node: Any) -> tuple[Policy, str]:
    """The policy the ``policy`` node names (``_target_`` and its parameters; ``sim.policy_api``), and its label."""
    try:
        plugin = load_plugin(_plugin_node(node, "policy"), "policy", "the policy interface (sim.policy_api.Policy: "
                             "plan(ctx) -> Deployment)", ("plan",), check_number)
        policy = instantiate(plugin, "policy")
    except PluginError as exc:
        raise ConfigError(str(exc)) from None
    if not (getattr(policy, "name", "") or ""):
        try:
            policy.name = plugin.label  # how messages name it
        except AttributeError:
            pass
    return policy, plugin.label


def build_router(node: Any) -> RouterSpec:
    """A factory of the router the ``router`` node names (one router per pool; ``sim.router_api``). One router is
    made here, so a constructor that refuses its parameters fails now."""
    try:
        plugin = load_plugin(_plugin_node(node, "router"), "router", "the router interface (sim.router_api.Router: "
                             "pick(replicas, now_s) -> replica or None)", ("pick",), check_number)
        instantiate(plugin, "router")
    except PluginError as exc:
        raise ConfigError(str(exc)) from None
    return plugin.factory()


def plugin_label(node: Any) -> str:
    """A plug-in node's label for file names (Hydra resolver ``qfleet_label``): ``name``, else the class's ``name``,
    else its class name; never fails (a bad node is reported when the run is built)."""
    try:
        if node.get("name"):
            return str(node.get("name"))
        target = str(node.get("_target_"))
        try:
            from sim.plugins import import_target
            declared = getattr(import_target(target, "_target_"), "name", None)
            if isinstance(declared, str) and declared:
                return declared
        except Exception:
            pass
        return target.rsplit(".", 1)[-1] or "plugin"
    except Exception:
        return "plugin"
