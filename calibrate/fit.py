"""Fit the step model (``profiles.step_model.StepModel``) to client-side measurements of fixed-concurrency runs.

The runs (``plan.fit``) are closed loops of B clients, every request with the same prompt length and a
pinned output length, so they carry iteration-level observables:

* **decode runs** (B clients, prompt L, output O): the gap between a request's tokens k-1 and k is one
  iteration. In the middle half of the output every client is decoding (requests start and finish
  together, within an iteration), so ``(t[b] - t[a]) / (b - a)`` over a stretch of that half (median over
  the run's requests) is a decode-only iteration with ``n_seq = n_tok = B`` reading ``kv = B * (L + k)``
  KV tokens at the stretch's mean position k (token-delivery jitter cancels in the difference);
* **prefill runs** (one client, prompt L): the engine is idle when a request arrives, so its TTFT is one
  iteration that prefills L tokens alone (``n_seq = 1, n_tok = prefill = L, sum(L^2) = L^2, kv = 0``),
  plus a per-request latency outside the engine's iterations (HTTP, tokenization) fitted as
  ``request_overhead_s``; their later tokens are decode observations with B = 1.

The iteration time is linear in the parameters once the kink ``L* = weights_s / flop_token_s`` of
``max(weights_s, flop_token_s * n_tok)`` is fixed, so the fit scans ``L*`` over a grid (and "no kink") and
solves a non-negative least-squares problem on relative errors at each, keeping the best.

What the runs identify, and what is fixed (reported in ``StepFit.notes``):

* ``overhead_s + weights_s`` (the decode constant), the decode slope in B (``per_seq_s + per_token_s``),
  ``per_kv_token_s`` (decode slope in KV tokens), the prefill slope in L (``per_token_s + per_prefill_token_s``),
  ``prefill_attn_s`` (curvature in L), and a per-request constant of a prefill (``per_seq_s`` plus the
  request's latency outside engine iterations: HTTP, tokenization);
* ``flop_token_s`` and the split between ``overhead_s`` and ``weights_s`` only when the prefill lengths span
  the compute-bound kink; otherwise ``flop_token_s = 0`` and ``overhead_s = 0`` (all of the constant in
  ``weights_s``), which predicts the measured range identically;
* ``per_seq_s``/``per_token_s``/``per_prefill_token_s`` from the two slopes: every iteration costs
  ``decode slope * decoding sequences + prefill slope * prompt tokens + per_seq_s * new sequences``, and
  ``per_seq_s`` is taken as small as the data allow (``per_token_s`` = the smaller slope); what is left of the
  per-request constant is ``request_overhead_s`` (reported; the validation replays delay arrivals by it);
* power (``idle_w`` from the idle baseline; ``active_w``, ``flop_token_j``, ``per_kv_token_j``, ``weights_j`` by
  non-negative least squares on each run's NVML energy, with the run's iteration sums from replaying it
  through the fitted time model; ``max_power_w`` from NVML's power limit) only when energy was measured;
  otherwise every power field is 0 and the note says so;
* capacities from the engine when it reports them, else the largest sustained run (lower bounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.optimize import minimize_scalar, nnls

from calibrate.loadgen import RequestRecord
from profiles.step_model import StepModel
from sim.reference import replay_instance

@dataclass(frozen=True)
class FitRun:
    """One fixed-concurrency run as measured (requests in send order)."""

    kind: str  # "prefill" or "decode"
    concurrency: int
    input_tokens: int
    output_tokens: int
    records: tuple[RequestRecord, ...]
    energy_j: float | None = None
    window_s: float | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}-c{self.concurrency}-in{self.input_tokens}-out{self.output_tokens}"


@dataclass(frozen=True)
class Observation:
    group: str  # "decode" or "prefill"
    n_seq: int
    n_tok: int
    kv_tokens: float
    prefill_tokens: int
    prefill_sq_tokens: float
    seconds: float
    run: str


@dataclass(frozen=True)
class StepFit:
    step: StepModel
    request_overhead_s: float
    kink_tokens: float | None  # L* = weights_s / flop_token_s when identified
    observations: int
    mape_pct: dict[str, float]  # per observation group: mean |predicted - measured| / measured
    notes: tuple[str, ...]
    power_mape_pct: float | None = None
    capacity_source: str = ""
    extra: dict = field(default_factory=dict)


def _usable(record: RequestRecord, output_tokens: int) -> bool:
    """A request whose every token arrived as its own chunk (so gaps are iterations)."""
    return record.ok and record.completion_tokens == output_tokens and len(record.token_times_s) == output_tokens


def observations(runs: Sequence[FitRun], window: tuple[float, float] = (0.25, 0.75),
                 segments: int = 4) -> list[Observation]:
    """Iteration-level observations of the fit runs.

    Decode: the window of token positions is cut into ``segments`` stretches (a, b]; for each request
    ``(t[b] - t[a]) / (b - a)`` is the mean iteration time over the stretch (token-delivery jitter cancels
    in the difference), read at the stretch's mean KV position; the median over the run's requests is
    one observation. Prefill: the median TTFT of the run.
    """
    obs: list[Observation] = []
    for run in runs:
        good = [r for r in run.records if _usable(r, run.output_tokens)]
        if not good:
            continue
        L, O = run.input_tokens, run.output_tokens
        if run.kind == "prefill":
            # lower quartile: host scheduling hiccups only ever add time to a TTFT
            ttft = float(np.percentile([r.first_token_s - r.send_s for r in good], 25))
            obs.append(Observation("prefill", 1, L, 0.0, L, float(L * L), ttft, run.label))
            bounds = [0, O - 1] if O >= 2 else []
            batch = 1
        else:
            lo = max(1, int(math.ceil(window[0] * (O - 1))))
            hi = max(lo + 1, min(O - 1, int(math.floor(window[1] * (O - 1)))))
            bounds = sorted({int(round(b)) for b in np.linspace(lo, hi, min(segments, hi - lo) + 1)})
            batch = run.concurrency
        times = np.array([r.token_times_s for r in good])
        for a, b in zip(bounds[:-1], bounds[1:]):
            per_request = (times[:, b] - times[:, a]) / (b - a)  # iterations making tokens a+1 .. b
            mean_position = (a + 1 + b) / 2.0  # they read L + k KV tokens per sequence, k = a+1 .. b
            obs.append(Observation("decode", batch, batch, float(batch * (L + mean_position)), 0, 0.0,
                                   float(np.median(per_request)), run.label))
    return obs


def _design(obs: Sequence[Observation], kink: float) -> np.ndarray:
    """Columns: overhead, weights, K (per-request constant of a prefill: per_seq_s + request overhead),
    P (prefill slope: per_token_s + per_prefill_token_s), prefill_attn, a (decode slope: per_seq_s +
    per_token_s), per_kv_token."""
    rows = []
    for o in obs:
        weights_coef = max(1.0, o.n_tok / kink) if math.isfinite(kink) else 1.0
        if o.group == "prefill":
            rows.append([1.0, weights_coef, 1.0, o.prefill_tokens, o.prefill_sq_tokens, 0.0, 0.0])
        else:
            rows.append([1.0, weights_coef, 0.0, 0.0, 0.0, o.n_seq, o.kv_tokens])
    return np.array(rows, dtype=float)


def _solve(obs: Sequence[Observation], kink: float) -> tuple[np.ndarray, float]:
    """NNLS on relative errors (each observation group weighing the same); returns (parameters, loss)."""
    A = _design(obs, kink)
    y = np.array([o.seconds for o in obs])
    groups = np.array([o.group for o in obs])
    w = 1.0 / y  # relative errors
    for g in set(groups):
        w[groups == g] /= math.sqrt((groups == g).sum())
    scale = np.maximum(np.abs(A).max(axis=0), 1e-300)  # column scaling for a well-conditioned NNLS
    x, _ = nnls(A * w[:, None] / scale, y * w, maxiter=50 * A.shape[1])
    x = x / scale
    resid = (A @ x - y) * w
    return x, float(resid @ resid)


def fit_time_model(obs: Sequence[Observation], kink_grid: int = 120) -> tuple[np.ndarray, float | None, list[str]]:
    """Best parameters over kink candidates; returns (x, kink or None, notes)."""
    groups = {o.group for o in obs}
    if groups != {"prefill", "decode"}:
        raise ValueError(f"the fit needs both prefill and decode observations, got {sorted(groups)}")
    prefill_L = sorted({o.prefill_tokens for o in obs if o.group == "prefill"})
    if len(prefill_L) < 3:
        raise ValueError(f"the fit needs prefill runs at 3 or more prompt lengths, got {prefill_L}")
    x_none, rss_none = _solve(obs, math.inf)
    lo, hi = prefill_L[0], prefill_L[-1]
    best = (x_none, rss_none, math.inf)
    grid = np.geomspace(lo, hi, kink_grid)
    rss_grid = [_solve(obs, float(k))[1] for k in grid]
    i = int(np.argmin(rss_grid))
    if rss_grid[i] < rss_none:
        # refine between the grid neighbours of the best kink
        lo_k, hi_k = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        res = minimize_scalar(lambda lk: _solve(obs, math.exp(lk))[1], bounds=(math.log(lo_k), math.log(hi_k)),
                              method="bounded", options={"xatol": 1e-6})
        kink = math.exp(res.x) if res.fun < rss_grid[i] else float(grid[i])
        x, rss = _solve(obs, kink)
        best = (x, rss, kink)
    notes = ["per_seq_s, per_token_s and per_prefill_token_s are seen only as the decode slope (per_seq_s + "
             "per_token_s), the prefill slope (per_token_s + per_prefill_token_s) and a per-request constant "
             "shared with the request overhead; the split keeps per_seq_s as small as the data allow "
             "(per_token_s = min of the two slopes)"]
    x, rss, kink = best
    below = sum(1 for L in prefill_L if L < 0.9 * kink)
    above = sum(1 for L in prefill_L if L > 1.1 * kink)
    improves = rss < 0.8 * rss_none
    if math.isfinite(kink) and below >= 1 and above >= 2 and improves and x[1] > 0:
        return x, kink, notes
    notes.append(f"no compute-bound prefill identified up to {hi} prompt tokens: flop_token_s fixed at 0 and "
                 f"overhead_s at 0 (the iteration constant is all in weights_s); extend fit.prefill_input_tokens "
                 f"past the kink to identify them")
    x = x_none.copy()
    x[1] += x[0]
    x[0] = 0.0
    return x, None, notes


def split_slopes(x: np.ndarray) -> tuple[dict[str, float], float, list[str]]:
    """Time fields from the identified combinations; returns (fields, request_overhead_s, notes).

    In any iteration, ``per_seq_s*n_seq + per_token_s*n_tok + per_prefill_token_s*prefill`` equals
    ``a*decoding + P*prompt_tokens + per_seq_s*new_sequences``: only ``a``, ``P`` and the per-new-sequence
    cost are seen, and that last one only together with the request overhead outside the engine (K). The
    split taken is the smallest ``per_seq_s`` the data allow: ``per_token_s = min(a, P)``.
    """
    overhead, weights, K, P, attn, a, per_kv = (float(v) for v in x)
    notes = []
    per_token = min(a, P)
    per_seq = a - per_token
    if per_seq > K:
        notes.append(f"the decode slope exceeds the prefill slope by more than the per-request constant "
                     f"({per_seq:.3g} s > {K:.3g} s): per_seq_s capped at {K:.3g} s")
        per_seq, per_token = K, a - K
    fields = {"overhead_s": overhead, "weights_s": weights, "per_seq_s": per_seq, "per_token_s": per_token,
              "per_prefill_token_s": max(P - per_token, 0.0), "prefill_attn_s": attn, "per_kv_token_s": per_kv}
    return fields, K - per_seq, notes


def _step_from(x: np.ndarray, kink: float | None, power: dict, capacity: dict) -> tuple[StepModel, float, list[str]]:
    fields, eps, notes = split_slopes(x)
    step = StepModel(flop_token_s=(fields["weights_s"] / kink) if kink else 0.0, **fields, **power, **capacity)
    return step, eps, notes


def _mape(step: StepModel, eps: float, obs: Sequence[Observation]) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for o in obs:
        pred = step.iteration_s(o.n_seq, o.n_tok, o.kv_tokens, o.prefill_tokens, o.prefill_sq_tokens)
        if o.group == "prefill":
            pred += eps
        out.setdefault(o.group, []).append(abs(pred - o.seconds) / o.seconds)
    return {g: 100.0 * float(np.mean(v)) for g, v in out.items()}


ZERO_POWER = {"idle_w": 0.0, "active_w": 0.0, "flop_token_j": 0.0, "per_kv_token_j": 0.0, "weights_j": 0.0,
              "max_power_w": 0.0}


def capacity_from(runs: Sequence[FitRun], reported: dict) -> tuple[dict, str]:
    """Capacities the engine reported, else the largest sustained run (lower bounds)."""
    done = [r for r in runs if r.records and all(rec.ok for rec in r.records)]
    sustained = {
        "kv_capacity_tokens": max((r.concurrency * (r.input_tokens + r.output_tokens) for r in done), default=1),
        "max_batch": max((r.concurrency for r in done), default=1),
        "max_num_tokens": max((r.input_tokens for r in done), default=1),
    }
    out, sources = {}, []
    for key, value in sustained.items():
        if reported.get(key):
            out[key] = int(reported[key])
            sources.append(f"{key} reported by the engine")
        else:
            out[key] = int(value)
            sources.append(f"{key} = largest sustained in the fit runs (a lower bound)")
    return out, "; ".join(sources)


def _unit_power(name: str) -> dict:
    values = dict(ZERO_POWER)
    values["max_power_w"] = 1e12
    if name == "active_w":
        values["active_w"] = 1.0
    else:
        values[name] = 1.0
    return values


def run_features(step: StepModel, run: FitRun) -> np.ndarray:
    """[busy seconds, sum n_tok, sum kv tokens, iterations] of a run replayed through the time model."""
    recs = [r for r in run.records if r.ok]
    arrival = np.array([r.send_s for r in recs]) - min(r.send_s for r in recs)
    inp = np.array([r.prompt_tokens for r in recs], dtype=np.int64)
    out = np.array([r.completion_tokens for r in recs], dtype=np.int64)
    order = np.argsort(arrival, kind="stable")
    arrival, inp, out = arrival[order], inp[order], out[order]
    feats = []
    for name in ("active_w", "flop_token_j", "per_kv_token_j", "weights_j"):
        unit = StepModel(**{**step.as_dict(), **_unit_power(name)})
        feats.append(replay_instance(unit, arrival, inp, out).busy_j)
    return np.array(feats)


def fit_power(step: StepModel, runs: Sequence[FitRun], idle_w: float, power_limit_w: float) -> tuple[dict, float]:
    """Power fields from run energies (NNLS); returns (fields, MAPE % of run energy)."""
    rows, targets, energies = [], [], []
    for run in runs:
        if run.energy_j is None or run.window_s is None or not run.records or not any(r.ok for r in run.records):
            continue
        f = run_features(step, run)
        busy = f[0]
        # E = idle*(window - busy) + active*busy + ... = idle*window + (active - idle)*busy + ...
        rows.append(f)
        targets.append(run.energy_j - idle_w * run.window_s)
        energies.append(run.energy_j)
    if len(rows) < 4:
        raise ValueError(f"the power fit needs energy from at least 4 fit runs, got {len(rows)}")
    A, b = np.array(rows), np.array(targets)
    w = 1.0 / np.array(energies)
    scale = np.maximum(A.max(axis=0), 1e-300)
    x, _ = nnls(A * w[:, None] / scale, b * w)
    delta_active, flop_j, kv_j, weights_j = x / scale
    active = idle_w + delta_active
    fields = {"idle_w": idle_w, "active_w": active, "flop_token_j": flop_j, "per_kv_token_j": kv_j,
              "weights_j": weights_j, "max_power_w": max(power_limit_w, active)}
    pred = A @ (x / scale) + idle_w * np.array([r.window_s for r in runs if r.energy_j is not None
                                                 and r.window_s is not None and r.records
                                                 and any(q.ok for q in r.records)])
    mape = 100.0 * float(np.mean(np.abs(pred - np.array(energies)) / np.array(energies)))
    return {k: float(v) for k, v in fields.items()}, mape


def fit_step_model(runs: Sequence[FitRun], reported_capacity: dict | None = None, idle_w: float | None = None,
                   power_limit_w: float | None = None) -> StepFit:
    obs = observations(runs)
    x, kink, notes = fit_time_model(obs)
    capacity, cap_source = capacity_from(runs, reported_capacity or {})
    step, eps, split_notes = _step_from(x, kink, ZERO_POWER, capacity)
    notes += split_notes
    power_mape = None
    energy_runs = [r for r in runs if r.energy_j is not None]
    if idle_w is not None and energy_runs:
        power, power_mape = fit_power(step, runs, idle_w, power_limit_w or 0.0)
        step = StepModel(**{**step.as_dict(), **power})
        notes.append("power fitted to NVML energy of the fit runs (idle_w from the idle baseline, max_power_w from "
                     "NVML's enforced power limit)")
    else:
        notes.append("no GPU energy measured: every power field is 0 (not a measurement); energy figures of "
                     "this config in the simulator are meaningless")
    notes.append(f"request_overhead_s = {eps * 1e3:.2f} ms per request outside engine iterations (HTTP, "
                 f"tokenization): reported, not part of the step model")
    notes.append(f"capacity: {cap_source}")
    return StepFit(step, eps, kink, len(obs), _mape(step, eps, obs), tuple(notes), power_mape, cap_source)
