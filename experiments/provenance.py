"""Which profile rows a figure or table was drawn from, and their provenance, in one caption line.

A curve row is usually ``derived`` (a search on the simulated instance) while the step model beneath it is
``measured``, ``measured-kernels`` or ``derived``; captions say both, so a reader knows how much of a line
rests on measurements.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from profiles.profile_set import ProfileSet
from profiles.schema import ConfigKey

# Line styles of the figures by the provenance of the step model beneath a line.
LINESTYLE = {"measured": "-", "measured-kernels": "-", "derived": "--", "literature": ":", "assumption": ":"}
STYLE_NOTE = "line style by the step model beneath: solid measured / measured-kernels, dashed derived, dotted assumption"


def count_text(kinds: Counter) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))


class ProvenanceIndex:
    """Provenance of every step-model row, curve and quality row of a profile set, built once."""

    def __init__(self, profiles: ProfileSet):
        m = profiles.step_models
        self.steps = {ConfigKey(str(r.gpu), str(r.model), str(r.quant), int(r.tp)): str(r.provenance)
                      for r in m[["gpu", "model", "quant", "tp", "provenance"]].itertuples(index=False)}
        c = profiles.curves.drop_duplicates(["gpu", "model", "quant", "tp", "workload"])
        self.curves = {(ConfigKey(str(r.gpu), str(r.model), str(r.quant), int(r.tp)), str(r.workload)): str(r.provenance)
                       for r in c[["gpu", "model", "quant", "tp", "workload", "provenance"]].itertuples(index=False)}
        q = profiles.quality
        self.quality = {(str(r.model), str(r.quant), str(r.task)): str(r.provenance)
                        for r in q[["model", "quant", "task", "provenance"]].itertuples(index=False)}

    def step(self, key: ConfigKey) -> str:
        return self.steps.get(key, "missing")

    def style(self, key: ConfigKey) -> str:
        return LINESTYLE.get(self.step(key), "-")

    def describe(self, curves: Iterable[tuple[ConfigKey, str]] = (), simulated: Iterable[ConfigKey] = (),
                 quality: Iterable[tuple[str, str, str]] = ()) -> str:
        """'curves: 36 (36 derived); step models beneath: 12 measured-kernels, 24 derived; quality rows: ...'."""
        curves, simulated, quality = sorted(set(curves)), sorted(set(simulated)), sorted(set(quality))
        parts = []
        if curves:
            parts.append(f"curves: {len(curves)} ({count_text(Counter(self.curves.get(c, 'missing') for c in curves))})")
        if simulated:
            parts.append(f"simulated on {len(simulated)} step models (no profile rows)")
        keys = {k for k, _ in curves} | set(simulated)
        if keys:
            parts.append(f"step models beneath: {count_text(Counter(self.step(k) for k in keys))}")
        if quality:
            parts.append(f"quality rows: {len(quality)} ({count_text(Counter(self.quality.get(q, 'missing') for q in quality))})")
        return "; ".join(parts) if parts else "no rows"
