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

Running a profile set's step models under other settings (``apply_engine_settings``): ``max_batch`` and
``max_num_tokens`` replace the step model's, ``chunked_context`` sets its flag, ``scheduler`` its batch scheduler
(``guaranteed_no_evict``, the default and what every preset runs; ``max_utilization``; ``vllm``: sim.instance; or a
plug-in chosen by ``_target_``, ``sim.scheduler_api``, which the replicas get from the settings while the step model
keeps its own code), and ``kv_cache_free_fraction``
scales its ``kv_capacity_tokens`` by (new fraction / the fraction the profile set was built under), the latter
read from the set's manifest key ``engine_settings.kv_cache_free_fraction`` (absent: 1.0). The iteration times
are not refitted: the same kernels run, only the scheduler's limits change. What the settings do not change
are the profile set's curves and saturation figures, which were measured or simulated under the set's own
settings: policies plan from those (``sim.planning``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

from profiles.step_model import SCHEDULERS, StepModel, StepModelError


class EngineSettingsError(ValueError):
    """Engine settings no engine can be launched with."""


ENGINE_FIELDS = ("max_batch", "max_num_tokens", "kv_cache_free_fraction", "chunked_context", "scheduler")


def check_engine_field(name: str, value):
    """``value`` if it is valid for engine-settings field ``name``; else EngineSettingsError with a one-line reason
    (``"<field> must be ..., got ..."``)."""
    if name in ("max_batch", "max_num_tokens"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EngineSettingsError(f"{name} must be a whole number >= 1, got {value!r}")
    elif name == "kv_cache_free_fraction":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0.0 < value <= 1.0:
            raise EngineSettingsError(f"{name} must be in (0, 1], got {value!r}")
    elif name == "chunked_context":
        if not isinstance(value, bool):
            raise EngineSettingsError(f"{name} must be true or false, got {value!r}")
    elif name == "scheduler":
        if isinstance(value, str):
            if value not in SCHEDULERS:
                raise EngineSettingsError(f"{name} must be one of {', '.join(SCHEDULERS)}, got {value!r}")
        elif not is_scheduler_plugin(value):
            raise EngineSettingsError(f"{name} must be one of {', '.join(SCHEDULERS)} or a scheduler plug-in "
                                      f"(sim.scheduler_api.SchedulerSpec), got {value!r}")
    else:
        raise EngineSettingsError(f"engine settings have no field '{name}'; known: {', '.join(ENGINE_FIELDS)}")
    return value


def is_scheduler_plugin(value) -> bool:
    """Whether ``value`` is a scheduler chosen by ``_target_`` (``sim.scheduler_api.SchedulerSpec``: a ``target``
    and a ``make()``), not a shipped name. Duck-typed: this module does not import the simulator."""
    return isinstance(getattr(value, "target", None), str) and callable(getattr(value, "make", None))


def _shown(value) -> str:
    """A field value in a settings label: a plug-in scheduler by its target."""
    return value.target if is_scheduler_plugin(value) else str(value)


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Scheduler limits of one engine launch."""

    name: str
    max_batch: int  # sequences in one iteration (TensorRT-LLM max_batch_size)
    max_num_tokens: int  # tokens in one iteration (prompt tokens; with chunked context, decode tokens too)
    kv_cache_free_fraction: float  # share of the memory left after weights and runtime that holds KV cache
    chunked_context: bool  # prompts longer than the iteration's remaining token budget run in chunks
    source: str
    # the batch scheduler: a name of profiles.step_model.SCHEDULERS (sim.instance), or a plug-in chosen by _target_
    # (sim.scheduler_api.SchedulerSpec)
    scheduler: Any = "guaranteed_no_evict"

    def __post_init__(self) -> None:
        for field_name in ENGINE_FIELDS:
            try:
                check_engine_field(field_name, getattr(self, field_name))
            except EngineSettingsError as exc:
                raise EngineSettingsError(f"engine settings '{self.name}': {exc}") from None

    def fields(self) -> dict:
        """The settings, by name."""
        return {name: getattr(self, name) for name in ENGINE_FIELDS}

    def with_overrides(self, **overrides) -> "EngineSettings":
        """These settings with some fields replaced (validated again); the name records the change."""
        unknown = set(overrides) - set(ENGINE_FIELDS)
        if unknown:
            raise EngineSettingsError(f"engine settings have no field(s) {sorted(unknown)}; known: "
                                      f"{', '.join(ENGINE_FIELDS)}")
        if not overrides:
            return self
        label = ",".join(f"{k}={_shown(v)}" for k, v in sorted(overrides.items()))
        return replace(self, name=f"{self.name}[{label}]", source=f"{self.source}; overridden: {label}", **overrides)


@dataclass(frozen=True, slots=True)
class EngineOverrides:
    """Some settings over the profile set's own: a field left None keeps what the step model states."""

    max_batch: int | None = None
    max_num_tokens: int | None = None
    kv_cache_free_fraction: float | None = None
    chunked_context: bool | None = None
    scheduler: Any = None  # a shipped name or a plug-in (sim.scheduler_api.SchedulerSpec)

    def __post_init__(self) -> None:
        for name, value in self.fields().items():
            try:
                check_engine_field(name, value)
            except EngineSettingsError as exc:
                raise EngineSettingsError(f"engine settings 'profile': {exc}") from None

    def fields(self) -> dict:
        """The fields set (not None), by name."""
        return {name: getattr(self, name) for name in ENGINE_FIELDS if getattr(self, name) is not None}

    @property
    def name(self) -> str:
        label = ",".join(f"{k}={_shown(v)}" for k, v in sorted(self.fields().items()))
        return f"profile[{label}]" if label else "profile"


def profile_kv_fraction(manifest: Mapping, where: str = "profile set") -> float:
    """The KV free-memory fraction a profile set's step models were built under: its manifest's
    ``engine_settings.kv_cache_free_fraction`` (absent: 1.0)."""
    block = manifest.get("engine_settings")
    if block is None:
        return 1.0
    if not isinstance(block, Mapping):
        raise EngineSettingsError(f"{where}: manifest key 'engine_settings' must be a mapping, got {block!r}")
    value = block.get("kv_cache_free_fraction", 1.0)
    try:
        return float(check_engine_field("kv_cache_free_fraction", value))
    except EngineSettingsError as exc:
        raise EngineSettingsError(f"{where}: manifest key 'engine_settings.kv_cache_free_fraction': "
                                  f"{str(exc).removeprefix('kv_cache_free_fraction ')}") from None


def apply_engine_settings(step: StepModel, settings: EngineSettings | EngineOverrides | None,
                          profile_fraction: float = 1.0) -> StepModel:
    """``step`` (built under a KV fraction of ``profile_fraction``) run under ``settings``: max_batch and
    max_num_tokens replaced, chunked_context and the scheduler set, kv_capacity_tokens scaled by the ratio of the fractions (rounded
    down). None, or overrides that set nothing, return ``step`` itself. Raises EngineSettingsError (one line, naming
    the field) when the result describes no engine."""
    if settings is None:
        return step
    values = settings.fields()
    if not values:
        return step
    changes: dict = {}
    if "max_batch" in values:
        changes["max_batch"] = values["max_batch"]
    if "max_num_tokens" in values:
        changes["max_num_tokens"] = values["max_num_tokens"]
    if "chunked_context" in values:
        changes["chunked_context"] = 1 if values["chunked_context"] else 0
    plugin = None
    if "scheduler" in values:
        if is_scheduler_plugin(values["scheduler"]):
            plugin = values["scheduler"]  # the replicas get it (sim.pool); the step model keeps its own code
        else:
            changes["scheduler"] = SCHEDULERS.index(values["scheduler"])
    if "kv_cache_free_fraction" in values:
        scale = values["kv_cache_free_fraction"] / check_engine_field("kv_cache_free_fraction", profile_fraction)
        if scale != 1.0:
            kv = math.floor(step.kv_capacity_tokens * scale)
            if kv < 1:
                raise EngineSettingsError(f"kv_cache_free_fraction {values['kv_cache_free_fraction']} leaves no KV "
                                          f"cache ({step.kv_capacity_tokens} tokens x {scale:.4g})")
            changes["kv_capacity_tokens"] = kv
    try:
        result = replace(step, **changes)
    except StepModelError as exc:
        raise EngineSettingsError(str(exc).replace("step model field ", "")) from None
    if plugin is not None and result.chunked_context:
        raise EngineSettingsError(f"chunked_context runs only with the guaranteed_no_evict scheduler, not "
                                  f"{plugin.target}")
    return result


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


__all__ = ["ENGINE_FIELDS", "EngineOverrides", "EngineSettings", "EngineSettingsError", "PAPER_CASE_STUDY", "PRESETS",
           "TRTLLM_SERVE", "apply_engine_settings", "check_engine_field", "is_scheduler_plugin",
           "lookup_engine_settings", "profile_kv_fraction"]
