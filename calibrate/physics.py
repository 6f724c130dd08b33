"""Hardware floors: no measured point or fitted step model may be faster than the GPU allows.

    python -m calibrate.physics --plan PLAN.json [--db RESULTS.sqlite] [--write]

Why: a real engine that looks faster than physics is not doing what we think. With identical prompts,
``transformers serve`` reused cached KV blocks and returned the first token of a 7,435-token prompt in 48 ms
on an H200, while 2 x 6.7e9 parameters x 7,435 tokens need at least ~100 ms at its dense bf16 peak.

Floors, from the catalog (``profiles.catalog``), for an entry's (gpu, model, quant, tp):

* **prefill**: a request's first token needs ``2 * (layer_params * computed_tokens + lm_head) / (peak FLOP/s * tp)``
  (the LM head once: engines compute logits of the last token only), at the GPU's dense peak in the precision
  the method's GEMMs compute in (``QuantMethod.activation``: FP16/BF16 for FP16 and weight-only methods, INT8
  or FP8 for activation methods), and no less than reading every weight once; attention FLOPs are left out,
  which only lowers the floor. ``computed_tokens`` is the prompt (``usage.prompt_tokens``) minus the tokens a plan
  shares on purpose (a shared-prefix replay's prefix); the prefix-caching probe's repeats are expected reuse
  and not checked;
* **decode**: every decode iteration reads all weights, so a request's mean time per output token is at
  least ``weight_bytes / (memory bandwidth * tp)``;
* **power**: a point's mean power (NVML energy over its window) is at least the idle power measured for that
  launch (less ``POWER_TOLERANCE`` for counter resolution).

A GPU or model the catalog does not know (the CPU stand-in) is ``unchecked`` with the reason, never passed.
Every finished point gets its verdict in the results database (``points.physics_json``); the export refuses
a profile whose points or fitted step model break a floor unless the plan accepts it with a stated reason
(``plan.physics``), and then records both in the manifest.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from calibrate.loadgen import RequestRecord
from profiles.catalog import lookup_gpu, lookup_model, lookup_quant, weight_bytes
from profiles.step_model import StepModel

POWER_TOLERANCE = 0.05  # mean power may read this far below idle (counter resolution, idle drift)
PROBE_PHASE = "prefix-probe"


@dataclass(frozen=True)
class Floors:
    """The hardware floors of one entry; ``reason`` says why there are none (``unchecked``)."""

    prefill_s_per_token: float = 0.0  # the layers' GEMM FLOPs per prompt token at peak
    prefill_fixed_s: float = 0.0  # the LM head's FLOPs, once per prefill (logits of the last token only)
    decode_iteration_s: float = 0.0  # reading every weight once
    source: str = ""
    reason: str = ""

    @property
    def known(self) -> bool:
        return not self.reason

    def prefill_s(self, tokens: int) -> float:
        """A prefill of ``tokens`` computes at least their FLOPs and reads every weight once."""
        return max(self.prefill_s_per_token * tokens + self.prefill_fixed_s, self.decode_iteration_s)


def floors_for(gpu: str, model: str, quant: str, tp: int) -> Floors:
    try:
        g, m, q = lookup_gpu(gpu), lookup_model(model), lookup_quant(quant)
    except (KeyError, ValueError) as exc:
        return Floors(reason=f"no catalog figures for {gpu}/{model}/{quant}: {exc}")
    peak = {"fp16": g.fp16_tflops, "int8": g.int8_tops, "fp8": g.fp8_tflops or g.int8_tops}[q.activation]
    peak_flops = peak * 1e12 * tp
    bandwidth = g.memory_bandwidth_gbps * 1e9 * tp
    layer_params = m.layers * m.params_per_layer
    lm_head = m.vocab * m.hidden
    return Floors(2.0 * layer_params / peak_flops, 2.0 * lm_head / peak_flops, weight_bytes(m, q) / bandwidth,
                  f"catalog: {g.name} {q.activation} dense peak {peak:.0f} TFLOP/s and {g.memory_bandwidth_gbps:.0f} "
                  f"GB/s per GPU x tp={tp}; {m.name} {layer_params / 1e9:.2f} G layer params (+ LM head once), "
                  f"{quant} weights {weight_bytes(m, q) / 1e9:.2f} GB")


@dataclass(frozen=True)
class PointVerdict:
    """What the floors say about one point (stored as ``points.physics_json``)."""

    status: str  # "ok", "violation" or "unchecked"
    checked_requests: int = 0
    ttft_violations: int = 0
    tpot_violations: int = 0
    worst_ttft_ratio: float = math.inf  # measured / floor, lowest over requests (< 1 breaks the floor)
    worst_tpot_ratio: float = math.inf
    power_violation: bool = False
    mean_power_w: float | None = None
    idle_w: float | None = None
    expected_reuse: int = 0  # requests that repeat a prompt on purpose (the probe's warm repeats): not checked
    examples: tuple[int, ...] = ()  # request indices that break a floor
    reason: str = ""

    def as_json(self) -> str:
        data = asdict(self)
        for key in ("worst_ttft_ratio", "worst_tpot_ratio"):
            data[key] = None if not math.isfinite(data[key]) else round(data[key], 4)
        return json.dumps(data)

    def describe(self) -> str:
        if self.status == "unchecked":
            return f"unchecked ({self.reason})"
        parts = []
        if self.ttft_violations:
            parts.append(f"{self.ttft_violations} first token(s) faster than the prefill floor (worst at "
                         f"{self.worst_ttft_ratio:.2f} x the floor)")
        if self.tpot_violations:
            parts.append(f"{self.tpot_violations} request(s) decoding faster than reading the weights allows "
                         f"(worst {self.worst_tpot_ratio:.2f} x)")
        if self.power_violation:
            parts.append(f"mean power {self.mean_power_w:.1f} W below idle {self.idle_w:.1f} W")
        return "; ".join(parts) or f"ok ({self.checked_requests} requests)"


def check_point(floors: Floors, phase: str, records: Sequence[RequestRecord], energy_j: float | None = None,
                window_s: float | None = None, idle_w: float | None = None,
                shared_tokens: Callable[[int], int] | None = None) -> PointVerdict:
    """The verdict of one point's requests against the floors. ``shared_tokens(index)``: prompt tokens a request
    shares with others on purpose (not charged to its prefill floor)."""
    if not floors.known:
        return PointVerdict("unchecked", reason=floors.reason)
    ok = [r for r in records if r.ok]
    expected = 0
    if phase == PROBE_PHASE:  # the repeats of one prompt are the probe's point: check only the cold sends
        from calibrate.prefix_probe import PROBE_ROLES
        ordered = sorted(records, key=lambda r: r.index)
        warm = {r.index for r, role in zip(ordered, PROBE_ROLES) if role == "same-warm"}
        expected = sum(1 for r in ok if r.index in warm)
        ok = [r for r in ok if r.index not in warm]
    ttft_bad = tpot_bad = 0
    worst_ttft = worst_tpot = math.inf
    examples: list[int] = []
    for r in ok:
        computed = max(r.prompt_tokens - (shared_tokens(r.index) if shared_tokens else 0), 1)
        floor_s = floors.prefill_s(computed)
        ratio = (r.first_token_s - r.send_s) / floor_s
        worst_ttft = min(worst_ttft, ratio)
        bad = ratio < 1.0
        ttft_bad += bad
        if r.completion_tokens >= 2 and floors.decode_iteration_s > 0:
            tpot = (r.finish_s - r.first_token_s) / (r.completion_tokens - 1)
            t_ratio = tpot / floors.decode_iteration_s
            worst_tpot = min(worst_tpot, t_ratio)
            if t_ratio < 1.0:
                tpot_bad += 1
                bad = True
        if bad and len(examples) < 8:
            examples.append(r.index)
    mean_w = None
    power_bad = False
    if energy_j is not None and window_s and window_s > 0 and math.isfinite(energy_j):
        mean_w = energy_j / window_s
        power_bad = idle_w is not None and mean_w < idle_w * (1.0 - POWER_TOLERANCE)
    status = "violation" if (ttft_bad or tpot_bad or power_bad) else "ok"
    return PointVerdict(status, len(ok), ttft_bad, tpot_bad, worst_ttft, worst_tpot, power_bad,
                        None if mean_w is None else round(mean_w, 2), idle_w, expected, tuple(examples))


def check_step_model(step: StepModel, floors: Floors, prompt_tokens: Sequence[int]) -> list[str]:
    """Where a fitted step model is faster than the floors (empty when it is not)."""
    if not floors.known:
        return []
    problems = []
    for L in sorted(set(int(x) for x in prompt_tokens)):
        t = step.iteration_s(1, L, 0.0, L, float(L * L))
        floor = floors.prefill_s(L)
        if t < floor:
            problems.append(f"prefill of {L} tokens takes {t * 1e3:.1f} ms in the step model, below the floor "
                            f"{floor * 1e3:.1f} ms")
    decode = step.iteration_s(1, 1, 0.0)
    if decode < floors.decode_iteration_s:
        problems.append(f"a decode iteration at batch 1 takes {decode * 1e3:.2f} ms in the step model, below the "
                        f"weight-read floor {floors.decode_iteration_s * 1e3:.2f} ms")
    if step.active_w and step.active_w < step.idle_w:
        problems.append(f"active power {step.active_w:.1f} W below idle {step.idle_w:.1f} W")
    return problems


# --- a whole results database ----------------------------------------------------------------------------


def _idle_w(info: dict, launch: int | None) -> float | None:
    value = info.get(f"idle_w/launch{launch}")
    return float(value) if isinstance(value, (int, float)) else None


def shared_prefix_tokens(plan, entry) -> dict[str, Callable[[int], int]]:
    """Per replay name that shares prefixes on purpose: request index -> its shared prefix tokens."""
    out = {}
    for spec in plan.replays_for(entry):
        if spec.shared_prefix is not None:
            from calibrate.replay import replay_prefixes
            table = {index: tokens for index, (_, tokens) in replay_prefixes(spec).items()}
            out[spec.name] = lambda index, table=table: table.get(index, 0)
    return out


def check_database(plan, db, write: bool = False) -> list[tuple[object, PointVerdict]]:
    """(stored point, verdict) for every finished point of the plan's entries; ``write`` stores the verdicts."""
    out = []
    for entry in plan.entries:
        floors = floors_for(entry.gpu, entry.model, entry.quant, entry.tp)
        info = db.info(entry.name)
        shared = shared_prefix_tokens(plan, entry)
        for p in db.points(entry=entry.name, status="done"):
            verdict = check_point(floors, p.key.phase, db.requests(p.id), p.energy_j, p.window_s,
                                  _idle_w(info, p.launch), shared.get(p.key.point_key))
            if write:
                db.set_physics(p.id, verdict.as_json())
            out.append((p, verdict))
    return out


def violations(checked: Sequence[tuple[object, PointVerdict]]) -> list[str]:
    return [f"{p.key.entry} {p.key.phase} {p.key.workload or '-'} {p.key.point_key}: {v.describe()}"
            for p, v in checked if v.status == "violation"]


def main(argv: list[str] | None = None) -> int:
    from calibrate.fidelity import open_plan_db

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True)
    parser.add_argument("--db", default=None)
    parser.add_argument("--write", action="store_true", help="store the verdicts in the results database")
    args = parser.parse_args(argv)
    plan, db = open_plan_db(args.plan, args.db, readonly=not args.write)
    with db:
        checked = check_database(plan, db, write=args.write)
    counts: dict[tuple[str, str], list[int]] = {}
    worst: dict[tuple[str, str], float] = {}
    for p, v in checked:
        key = (p.key.entry, p.key.phase)
        c = counts.setdefault(key, [0, 0, 0])
        c[0] += 1
        c[1] += v.status == "violation"
        c[2] += v.status == "unchecked"
        worst[key] = min(worst.get(key, math.inf), v.worst_ttft_ratio, v.worst_tpot_ratio)
    print(f"plan '{plan.name}', results {db.path}")
    print("| entry | phase | points | breaking a floor | unchecked | lowest measured / floor |")
    print("|---|---|---|---|---|---|")
    for (entry, phase), (n, bad, unchecked) in counts.items():
        w = worst[(entry, phase)]
        print(f"| {entry} | {phase} | {n} | {bad} | {unchecked} | {w:.2f} |" if math.isfinite(w)
              else f"| {entry} | {phase} | {n} | {bad} | {unchecked} | - |")
    for line in violations(checked):
        print(f"- {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
