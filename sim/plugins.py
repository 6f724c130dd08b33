"""Plug-ins chosen by Hydra ``_target_``: import the class, check it implements its interface, bind its parameters.

A config node such as ``policy: {_target_: sim.policies.SloEnergyOptimal, name: slo_energy_optimal, headroom: 0.9}``
names an importable class (``_target_``), an optional label (``name``) and the class's keyword arguments (every
other key). Each failure is one line naming the key: a target that does not import, is not a class, does not
implement the interface (``required``: methods it must have; an abstract class is refused), a parameter the class
does not take, a parameter it needs and did not get, and a constructor that refuses its values.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

RESERVED = ("_target_", "name")  # not constructor arguments


class PluginError(ValueError):
    """A plug-in that cannot be used; ``key`` is the config key to name, the message says why."""

    def __init__(self, key: str, why: str):
        super().__init__(f"config key '{key}': {why}")
        self.key = key
        self.why = why


@dataclass(frozen=True)
class Plugin:
    """A loaded plug-in: the class, its constructor arguments and its label."""

    cls: type
    params: dict[str, Any]
    label: str
    target: str

    def make(self) -> Any:
        return self.cls(**self.params)

    def factory(self) -> Callable[[], Any]:
        cls, params = self.cls, dict(self.params)
        return lambda: cls(**params)


def import_target(target: str, key: str) -> Any:
    """The object ``target`` ('package.module.Attr') names; PluginError when it does not import.

    Packages are imported from the installed ones and from the current directory (``python -m`` puts it on the
    path; a console script does not, so it is appended when the package is not found elsewhere)."""
    try:
        return _import_target(target, key)
    except PluginError:
        cwd = os.getcwd()
        if cwd in sys.path or "" in sys.path or not isinstance(target, str):
            raise
        top = target.split(".")[0]
        if not (os.path.isdir(os.path.join(cwd, top)) or os.path.isfile(os.path.join(cwd, top + ".py"))):
            raise
        sys.path.append(cwd)
        return _import_target(target, key)


def _import_target(target: str, key: str) -> Any:
    if not isinstance(target, str) or not target.strip():
        raise PluginError(key, f"must name an importable class ('package.module.Class'), got {target!r}")
    parts = target.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise PluginError(key, f"{target!r} is not a dotted path 'package.module.Class'")
    module = None
    error: BaseException | None = None
    for split in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:split])
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # only "this very module is missing" means: try a shorter prefix; a missing import inside it is a bug
            if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
                error = exc
                continue
            raise PluginError(key, f"cannot import '{target}': importing module '{name}' failed: "
                                   f"ModuleNotFoundError: {exc}") from None
        except Exception as exc:  # the module exists but raised while importing
            raise PluginError(key, f"cannot import '{target}': importing module '{name}' failed: "
                                   f"{type(exc).__name__}: {_one_line(exc)}") from None
        obj: Any = module
        for attr in parts[split:]:
            if not hasattr(obj, attr):
                if error is not None:  # a longer module path was not found: say that, not "no attribute"
                    raise PluginError(key, f"cannot import '{target}': {error}")
                raise PluginError(key, f"cannot import '{target}': module '{name}' has no attribute "
                                       f"'{'.'.join(parts[split:])}'")
            obj = getattr(obj, attr)
        return obj
    raise PluginError(key, f"cannot import '{target}': {error} (run from the directory that holds the package, or "
                           f"install it)")


def load_plugin(node: Mapping[str, Any], group: str, interface: str, required: tuple[str, ...],
                check_param: Callable[[str, Any, tuple], None] | None = None) -> Plugin:
    """Import and check the class ``node['_target_']`` names and bind the node's other keys to its constructor.

    ``group``: the config key of the node ('policy', 'router'); ``interface``: how the interface is named in
    messages; ``required``: its methods; ``check_param(key, value, rule)``: checks a parameter the class lists in
    ``param_ranges``. The class is not instantiated here (``Plugin.make``)."""
    target = node.get("_target_")
    if target is None:
        raise PluginError(f"{group}._target_", f"missing: name the {group} class, e.g. "
                                               f"{group}._target_=my_package.module.MyClass")
    obj = import_target(target, f"{group}._target_")
    if not inspect.isclass(obj):
        raise PluginError(f"{group}._target_", f"'{target}' is a {type(obj).__name__}, not a class implementing "
                                               f"{interface}")
    missing = [m for m in required if not callable(getattr(obj, m, None))]
    if missing:
        raise PluginError(f"{group}._target_", f"'{target}' does not implement {interface}: no method "
                                               f"{', '.join(missing)}")
    if inspect.isabstract(obj):
        abstract = sorted(getattr(obj, "__abstractmethods__", ()))
        raise PluginError(f"{group}._target_", f"'{target}' does not implement {interface}: abstract method(s) "
                                               f"{', '.join(abstract)} not defined")
    declared = getattr(obj, "name", None)
    declared = declared if isinstance(declared, str) and declared else None
    label = node.get("name")
    if label is not None:
        label = str(label)
        if declared is not None and label != declared:
            raise PluginError(f"{group}.name", f"'{label}' is not the name of {target} ('{declared}'); the name only "
                                               f"labels the run, {group}._target_ (or {group}=<option>) chooses the "
                                               f"{group}")
    else:
        label = declared or obj.__name__
    params = {k: v for k, v in node.items() if k not in RESERVED}
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        accepted = [p for p in signature.parameters.values()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
        names = [p.name for p in accepted]
        taken = f"{target} takes {', '.join(names)}" if names else f"{target} takes no parameters"
        for key, value in params.items():
            if key not in names and not takes_any:
                raise PluginError(f"{group}.{key}", f"{group} '{label}' does not use it ({taken}); remove it, "
                                                    f"got {value!r}")
        for p in accepted:
            if p.default is p.empty and p.name not in params:
                raise PluginError(f"{group}.{p.name}", f"missing: {target} needs it ({taken}); set "
                                                       f"+{group}.{p.name}=...")
    ranges = getattr(obj, "param_ranges", None) or {}
    if check_param is not None:
        for key, rule in ranges.items():
            if key in params:
                check_param(f"{group}.{key}", params[key], rule)
    return Plugin(obj, params, label, str(target))


def instantiate(plugin: Plugin, group: str) -> Any:
    """``plugin.make()``, with a constructor's ValueError or TypeError as one line naming the group."""
    try:
        return plugin.make()
    except (ValueError, TypeError) as exc:
        raise PluginError(group, f"{plugin.target} refused its parameters {plugin.params}: "
                                 f"{type(exc).__name__}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
