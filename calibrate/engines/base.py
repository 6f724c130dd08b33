"""What every engine handler provides: how to launch an entry's server, reach it, and drive it.

A handler turns a plan entry into a ``LaunchSpec`` (the argv, environment and files of the server,
plus one-time preparation steps such as quantizing a checkpoint and building an engine), says at plan
time which (quant, GPU, TP) combinations its engine version cannot run, and builds the ``Endpoint``
the load generator targets. Process supervision (readiness, liveness, restart) is the same for every
engine and lives in ``calibrate.supervisor``.
"""

from __future__ import annotations

import json
import string
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from calibrate.loadgen import Endpoint
from calibrate.plan import EngineSpec, Plan, PlanEntry


class LaunchTemplateError(ValueError):
    """A launch template with a placeholder nobody fills."""


@dataclass(frozen=True)
class PrepareStep:
    """A one-time step before the first launch (quantize, build); skipped once ``done_marker`` exists."""

    name: str
    argv: tuple[str, ...]
    done_marker: Path
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchSpec:
    argv: tuple[str, ...]
    base_url: str
    health_url: str
    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[Path, str] = field(default_factory=dict)  # written before launch
    prepare: tuple[PrepareStep, ...] = ()


PLACEHOLDERS = ("host", "port", "model", "checkpoint", "tp", "quant", "gpu", "entry", "python", "workdir",
                "gpu_indices")


def template_values(entry: PlanEntry, host: str, port: int, workdir: Path) -> dict[str, str]:
    return {
        "host": host, "port": str(port), "model": entry.model, "checkpoint": entry.checkpoint_ref,
        "tp": str(entry.tp), "quant": entry.quant, "gpu": entry.gpu, "entry": entry.name,
        "python": sys.executable, "workdir": str(workdir), "gpu_indices": ",".join(map(str, entry.devices)),
    }


def render(template: str, values: Mapping[str, str]) -> str:
    """``str.format`` with named placeholders only; an unknown one is an error naming it."""
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    unknown = [n for n in names if n not in values]
    if unknown:
        raise LaunchTemplateError(f"unknown placeholder(s) {{{', '.join(unknown)}}} in {template!r}; "
                                  f"known: {', '.join(PLACEHOLDERS)} (write literal braces as '{{{{' and '}}}}')")
    return template.format_map(dict(values))


class HandlerBase:
    """Shared parts: endpoint construction and capacity discovery."""

    def __init__(self, spec: EngineSpec):
        self.spec = spec

    @property
    def version(self) -> str:
        return self.spec.version

    def endpoint(self, entry: PlanEntry, base_url: str) -> Endpoint:
        spec = self.spec
        values = template_values(entry, spec.host, 0, Path("."))
        return Endpoint(base_url=base_url, path=spec.path, api=spec.api,
                        model=render(spec.request_model, values), extras=dict(spec.request_extras),
                        json_string_fields=tuple(spec.json_string_fields), token_timeout_s=spec.token_timeout_s,
                        request_timeout_s=spec.request_timeout_s)

    def base_url(self, port: int) -> str:
        return f"http://{self.spec.host}:{port}"

    def known_capacity(self, entry: PlanEntry) -> dict[str, int]:
        """Capacities the plan states: the engine's, overridden by the entry's own."""
        return {k: int(v) for k, v in {**dict(self.spec.capacity), **dict(entry.capacity)}.items()}

    def discover_capacity(self, entry: PlanEntry, base_url: str) -> dict[str, int]:
        """Capacities the running engine reports at ``capacity_path`` (keys kv_capacity_tokens, max_batch,
        max_num_tokens), overridden by the plan's ``capacity``; {} when neither says anything."""
        found: dict[str, int] = {}
        if self.spec.capacity_path:
            data = _get_json(base_url + self.spec.capacity_path, self.spec.health_timeout_s)
            if isinstance(data, dict):
                for key in ("kv_capacity_tokens", "max_batch", "max_num_tokens"):
                    if isinstance(data.get(key), int) and not isinstance(data.get(key), bool):
                        found[key] = int(data[key])
        found.update(self.known_capacity(entry))
        return found

    def plan_problems(self, plan: Plan) -> list[str]:
        return []


def _get_json(url: str, timeout_s: float):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            return json.loads(resp.read().decode())
    except (OSError, ValueError):
        return None
