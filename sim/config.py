"""The main job's configuration: a structured schema (unknown keys fail in Hydra) and its translation
into the run's values, where every wrong value fails before any work with a message naming its key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from profiles.engine_settings import (ENGINE_FIELDS, EngineOverrides, EngineSettings, EngineSettingsError, PRESETS,
                                     apply_engine_settings, check_engine_field, profile_kv_fraction)
from profiles.profile_set import LatencySlo, ProfileError, ProfileSet, default_profile_path
from sim.cluster import ClusterSettings
from sim.deployment import TaskSpec
from sim.policies import Policy, make_policy
from sim.prefix_cache import PrefixCacheSettings
from sim.router import ROUTERS
from traces.azure import load_azure_trace, load_shipped_trace
from traces.case_study import DEFAULT_MIX, CaseStudyTraceSpec, build_case_study_trace
from traces.shared_prefix import SharedPrefixSpec, SharedPrefixStream, add_shared_prefixes
from traces.stream import WEEK_S, AzureWeekSpec, AzureWeekTrace, TraceStream
from traces.trace import Trace, TraceError
from traces.transform import scale_to_rate, slice_time, tile
from traces.workloads import UnknownWorkloadError, workload_lengths


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
class TraceConf:
    kind: str = "case_study"  # case_study | azure | azure_week
    total_rate_qps: float = 120.0
    duration_s: Optional[float] = 3600.0
    arrival: str = "poisson"
    cv: float = 1.0
    mix: dict[str, float] = field(default_factory=dict)
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


@dataclass
class PolicyConf:
    name: str = MISSING
    headroom: float = 1.0


@dataclass
class RouterConf:
    name: str = MISSING


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
    policy: PolicyConf = field(default_factory=PolicyConf)
    router: RouterConf = field(default_factory=RouterConf)
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


def _fail(key: str, why: str) -> ConfigError:
    return ConfigError(f"config key '{key}': {why}")


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
        try:
            spec = AzureWeekSpec(
                duration_s=float(t.duration_s) if t.duration_s is not None else WEEK_S,
                peak_rate_qps=float(t.peak_rate_qps),
                peak_to_trough=float(t.peak_to_trough),
                period_s=float(t.diurnal_period_s) if t.diurnal_period_s is not None else 86_400.0,
                mix=dict(t.mix) if t.mix else DEFAULT_MIX,
                seed=int(seed),
                chunk_s=float(t.chunk_s),
            )
        except ValueError as exc:
            raise _fail("trace", str(exc).replace("AzureWeekSpec.", "trace.")) from None
        return AzureWeekTrace(spec)
    if t.kind == "case_study":
        try:
            spec = CaseStudyTraceSpec(
                total_rate_qps=float(t.total_rate_qps),
                duration_s=float(t.duration_s) if t.duration_s is not None else 3600.0,
                mix=dict(t.mix) if t.mix else CaseStudyTraceSpec().mix,
                arrival=str(t.arrival),
                cv=float(t.cv),
                seed=int(seed),
                diurnal_period_s=t.diurnal_period_s,
            )
        except ValueError as exc:
            raise _fail("trace", str(exc).replace("CaseStudyTraceSpec.", "trace.")) from None
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
            raise ConfigError(str(exc)) from None
        if t.target_rate_qps is not None:
            if t.target_rate_qps <= 0:
                raise _fail("trace.target_rate_qps", f"must be > 0, got {t.target_rate_qps}")
            trace = scale_to_rate(trace, float(t.target_rate_qps))
        if t.duration_s is not None:
            if t.duration_s <= 0:
                raise _fail("trace.duration_s", f"must be > 0, got {t.duration_s}")
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
            if value is None:
                continue
            if name == "kv_cache_free_fraction" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            try:
                values[name] = check_engine_field(name, value)
            except EngineSettingsError as exc:
                raise _fail(f"{where}.{name}", str(exc).removeprefix(f"{name} ")) from None
    if preset is not None:
        if str(preset) not in PRESETS:
            raise _fail(preset_key, f"'{preset}' is not one of {sorted(PRESETS)} (null: the profile's own settings)")
        return PRESETS[str(preset)].with_overrides(**values)
    return EngineOverrides(**values) if values else None


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
                 and any(pool_engine.get(k) is not None for k in ("preset",) + ENGINE_FIELDS) else "engine")
        for key in profiles.configs():
            if key.model != task.model:
                continue
            try:
                apply_engine_settings(profiles.step(key), task.engine, fraction)
            except EngineSettingsError as exc:
                raise _fail(where, f"{task.engine.name} on {key.label}: {exc}") from None


def build_run(cfg: Any) -> RunSpec:
    """Validate the whole configuration and build the run's values, or raise ConfigError."""
    if cfg.router.name not in ROUTERS:
        raise _fail("router.name", f"'{cfg.router.name}' is not one of {sorted(ROUTERS)}")
    try:
        policy = make_policy(str(cfg.policy.name), float(cfg.policy.headroom))
    except ValueError as exc:
        raise _fail("policy", str(exc)) from None
    c = cfg.cluster
    try:
        settings = ClusterSettings(
            gpu_types=tuple(str(g) for g in c.gpu_types),
            router=str(cfg.router.name),
            replan_interval_s=c.replan_interval_s,
            load_estimate=str(c.load_estimate),
            engine_start_s=float(c.engine_start_s),
            load_gbps_per_gpu=float(c.load_gbps_per_gpu),
            max_queue=c.max_queue,
            drain_limit_s=float(c.drain_limit_s),
            prefix_cache=(PrefixCacheSettings(block_tokens=c.prefix_cache.block_tokens)
                          if c.prefix_cache.enabled else None),
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
    check_engines(cfg, tasks, profiles)
    for gpu in settings.gpu_types:
        if gpu not in known_gpus:
            raise _fail("cluster.gpu_types", f"'{gpu}' has no profile in {path} (profiled: {sorted(known_gpus)})")
    trace = build_trace(cfg.trace, int(cfg.seed))
    names = {t.name for t in tasks}
    extra = [n for n in trace.task_names if n not in names]
    if extra:
        raise _fail("cluster.pools", f"the trace has task(s) {extra} with no pool")
    return RunSpec(trace, tasks, policy, profiles, settings)
