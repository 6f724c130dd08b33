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
* ``admission_lead_per_seq_s = per_seq_s`` when the plan states ``host_admission`` (a Python engine whose
  front-end waits for the loop's per-sequence host work; no extra parameter is fitted);
* ``per_padded_kv_token_s`` only when the engine pads its KV read to static shapes (``kv_pad_tokens`` stated
  in the plan, e.g. transformers' CUDA-graph padding of 16,384 tokens) and some decode run reads more than
  one padding bucket; the padding interval itself is an engine fact, not fitted;
* capacities stated in the plan (derived from the engine's documented limits, with their source), else
  reported by the engine, else the largest sustained run: a lower bound, flagged in ``StepFit.lower_bounds``
  (the export refuses to turn one into a hard cap of the simulated instance unless the plan asks for it).
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
    lower_bounds: tuple[str, ...] = ()  # capacity fields that are only the largest sustained fit run


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
        if run.kind == "mixed":
            obs += mixed_observations(run)
            continue
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


MIXED_WARMUP_PROBES = 4  # a mixed run's first probes meet batch shapes the engine has not seen (CUDA-graph capture)
MIXED_MATCH_S = 0.005  # a background token this close to a probe's first token ended the same iteration


def mixed_observations(run: FitRun) -> list[Observation]:
    """Mixed iterations of a mixed run: a probe prompt (2 output tokens) is prefilled in one iteration with the
    background's decode steps; its first token and the background's token of that iteration arrive together, and
    the background's gap before that token is the iteration (median over background requests). Probes whose first
    token came in the same iteration were prefilled together, probes making their second token decoded in it.
    The first ``MIXED_WARMUP_PROBES`` probes are left out (first-use costs of new shapes)."""
    background = [r for r in run.records if _usable(r, run.output_tokens)]
    probes = sorted((r for r in run.records if r.ok and r.output_tokens == 2), key=lambda r: r.send_s)
    obs: list[Observation] = []
    if not background:
        return obs
    times = [np.asarray(r.token_times_s) for r in background]
    seen: list[float] = []
    for probe in probes[MIXED_WARMUP_PROBES:]:
        first = probe.first_token_s
        if any(abs(first - t) <= MIXED_MATCH_S for t in seen):
            continue  # an iteration already observed
        seen.append(first)
        gaps, kv = [], 0.0
        for r, t in zip(background, times):
            j = int(np.argmin(np.abs(t - first)))
            if j >= 1 and abs(t[j] - first) <= MIXED_MATCH_S:
                gaps.append(t[j] - t[j - 1])
                kv += r.prompt_tokens + j
        if len(gaps) * 2 < len(background):  # the background was not all decoding in that iteration
            continue
        prefilled = [q for q in probes if abs(q.first_token_s - first) <= MIXED_MATCH_S]
        decoding = [q for q in probes if len(q.token_times_s) > 1 and abs(q.token_times_s[1] - first) <= MIXED_MATCH_S]
        B = len(background)
        decoders = B + len(decoding)
        prefill = sum(q.prompt_tokens for q in prefilled)
        kv_all = kv * B / len(gaps) + sum(q.prompt_tokens + 1 for q in decoding)
        obs.append(Observation("mixed", decoders + len(prefilled), decoders + prefill, kv_all, prefill,
                               float(sum(q.prompt_tokens ** 2 for q in prefilled)), float(np.median(gaps)),
                               run.label))
    return obs


@dataclass(frozen=True)
class KvPadding:
    """The engine's KV padding (static shapes): interval in tokens (0: none) and the cap (its KV capacity)."""

    tokens: int = 0
    cap_tokens: float = math.inf

    def padded(self, kv_tokens: float) -> float:
        if self.tokens <= 0:
            return 0.0
        buckets = max(1, math.ceil(kv_tokens / self.tokens)) if kv_tokens > 0 else 1
        return float(min(buckets * self.tokens, self.cap_tokens))


NO_PADDING = KvPadding()


def _design(obs: Sequence[Observation], kink: float, padding: KvPadding = NO_PADDING) -> np.ndarray:
    """Columns: overhead, weights, K (per-request constant of a prefill: per_seq_s + request overhead),
    P (prefill slope: per_token_s + per_prefill_token_s), prefill_attn, a (decode slope: per_seq_s +
    per_token_s), per_kv_token, per_padded_kv_token (all zero without padding), and, when there are mixed
    observations, M (what a mixed iteration costs beyond the sum of its parts: ``mixed_overhead_s`` plus the new
    sequence's ``per_seq_s``)."""
    mixed = any(o.group == "mixed" for o in obs)
    rows = []
    for o in obs:
        weights_coef = max(1.0, o.n_tok / kink) if math.isfinite(kink) else 1.0
        padded = padding.padded(o.kv_tokens)
        if o.group == "prefill":
            row = [1.0, weights_coef, 1.0, o.prefill_tokens, o.prefill_sq_tokens, 0.0, 0.0, padded]
        elif o.group == "mixed":
            decoders = o.n_tok - o.prefill_tokens
            row = [1.0, weights_coef, 0.0, o.prefill_tokens, o.prefill_sq_tokens, decoders, o.kv_tokens, padded]
        else:
            row = [1.0, weights_coef, 0.0, 0.0, 0.0, o.n_seq, o.kv_tokens, padded]
        rows.append(row + ([1.0 if o.group == "mixed" else 0.0] if mixed else []))
    return np.array(rows, dtype=float)


def _solve(obs: Sequence[Observation], kink: float, padding: KvPadding = NO_PADDING) -> tuple[np.ndarray, float]:
    """NNLS on relative errors (each observation group weighing the same); returns (parameters, loss)."""
    A = _design(obs, kink, padding)
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


def fit_time_model(obs: Sequence[Observation], kink_grid: int = 120,
                   padding: KvPadding = NO_PADDING) -> tuple[np.ndarray, float | None, list[str]]:
    """Best parameters over kink candidates; returns (x, kink or None, notes).

    With KV padding, the padded-KV column is kept only when some decode observation reads more than one
    padding bucket (otherwise it is the same constant for every observation, not separable from
    ``weights_s``), and it is then fitted together with the linear KV slope."""
    pad_notes = []
    if padding.tokens > 0:
        buckets = {padding.padded(o.kv_tokens) for o in obs}
        if len(buckets) < 2:
            pad_notes.append(f"KV padding of {padding.tokens} tokens stated, but every fit observation reads one "
                             f"bucket: per_padded_kv_token_s fixed at 0 (the bucket's cost is in weights_s)")
            padding = NO_PADDING
        else:
            pad_notes.append(f"KV padded to multiples of {padding.tokens} tokens (engine fact stated in the plan); "
                             f"fit observations span {len(buckets)} padding buckets")
    x, kink, notes = _fit_time_model(obs, kink_grid, padding)
    return x, kink, notes + pad_notes


def _fit_time_model(obs: Sequence[Observation], kink_grid: int, padding: KvPadding
                    ) -> tuple[np.ndarray, float | None, list[str]]:
    groups = {o.group for o in obs}
    if not {"prefill", "decode"} <= groups:
        raise ValueError(f"the fit needs both prefill and decode observations, got {sorted(groups)}")
    prefill_L = sorted({o.prefill_tokens for o in obs if o.group == "prefill"})
    if len(prefill_L) < 3:
        raise ValueError(f"the fit needs prefill runs at 3 or more prompt lengths, got {prefill_L}")
    x_none, rss_none = _solve(obs, math.inf, padding)
    lo, hi = prefill_L[0], prefill_L[-1]
    best = (x_none, rss_none, math.inf)
    grid = np.geomspace(lo, hi, kink_grid)
    rss_grid = [_solve(obs, float(k), padding)[1] for k in grid]
    i = int(np.argmin(rss_grid))
    if rss_grid[i] < rss_none:
        # refine between the grid neighbours of the best kink
        lo_k, hi_k = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        res = minimize_scalar(lambda lk: _solve(obs, math.exp(lk), padding)[1],
                              bounds=(math.log(lo_k), math.log(hi_k)), method="bounded", options={"xatol": 1e-6})
        kink = math.exp(res.x) if res.fun < rss_grid[i] else float(grid[i])
        x, rss = _solve(obs, kink, padding)
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
    overhead, weights, K, P, attn, a, per_kv, per_padded = (float(v) for v in x[:8])
    mixed = float(x[8]) if len(x) > 8 else 0.0
    notes = []
    per_token = min(a, P)
    per_seq = a - per_token
    eps = K - per_seq
    if per_seq > K:
        # K (per_seq_s + the request overhead) is an intercept of a few microseconds under prefills of
        # milliseconds: measurement jitter moves it more than the slopes, which span the whole prompt range.
        # Capping per_seq_s at K would raise the prefill slope to the decode slope (tens of ms off at long
        # prompts); keeping both slopes costs at most per_seq_s - K per request.
        notes.append(f"the decode slope exceeds the prefill slope by more than the per-request constant "
                     f"({per_seq:.3g} s > {K:.3g} s): both slopes kept, request_overhead_s = 0 (a prefill's "
                     f"per-request cost is {(per_seq - K) * 1e6:.1f} us above the fitted constant)")
        eps = 0.0
    fields = {"overhead_s": overhead, "weights_s": weights, "per_seq_s": per_seq, "per_token_s": per_token,
              "per_prefill_token_s": max(P - per_token, 0.0), "prefill_attn_s": attn, "per_kv_token_s": per_kv,
              "per_padded_kv_token_s": per_padded}
    if len(x) > 8:  # mixed runs measured: M = per_seq_s + mixed_overhead_s
        fields["mixed_overhead_s"] = max(mixed - per_seq, 0.0)
        notes.append(f"mixed iterations (prompts prefilled while others decode) cost {mixed * 1e3:.2f} ms beyond the "
                     f"sum of their prefill and decode parts, measured by the mixed fit runs: mixed_overhead_s = "
                     f"{fields['mixed_overhead_s'] * 1e3:.2f} ms")
    return fields, eps, notes


def _step_from(x: np.ndarray, kink: float | None, power: dict, capacity: dict,
               kv_pad_tokens: int = 0) -> tuple[StepModel, float, list[str]]:
    fields, eps, notes = split_slopes(x)
    if kv_pad_tokens <= 0:
        fields["per_padded_kv_token_s"] = 0.0
    step = StepModel(flop_token_s=(fields["weights_s"] / kink) if kink else 0.0, **fields, **power, **capacity,
                     kv_pad_tokens=int(kv_pad_tokens) if fields["per_padded_kv_token_s"] > 0 else 0)
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


CAPACITY_KEYS = ("kv_capacity_tokens", "max_batch", "max_num_tokens")


def capacity_from(runs: Sequence[FitRun], reported: dict, stated: dict | None = None,
                  stated_source: str = "") -> tuple[dict, str]:
    """Capacities stated in the plan, else reported by the engine, else the largest sustained run (lower bounds).

    Returns (capacities, a text naming each field's source); ``lower_bound_fields`` says which fields fell
    through to the lower bound."""
    done = [r for r in runs if r.records and all(rec.ok for rec in r.records)]
    sustained = {
        "kv_capacity_tokens": max((r.concurrency * (r.input_tokens + r.output_tokens) for r in done), default=1),
        "max_batch": max((r.concurrency for r in done), default=1),
        "max_num_tokens": max((r.input_tokens for r in done), default=1),
    }
    stated = stated or {}
    out, sources, from_plan = {}, [], []
    for key, value in sustained.items():
        if stated.get(key):
            out[key] = int(stated[key])
            from_plan.append(f"{key} = {out[key]}")
        elif reported.get(key):
            out[key] = int(reported[key])
            sources.append(f"{key} reported by the engine")
        else:
            out[key] = int(value)
            sources.append(f"{key} = largest sustained in the fit runs (a lower bound)")
    if from_plan:  # the plan's source once, after the fields it covers
        sources.insert(0, f"{', '.join(from_plan)} stated in the plan "
                          f"({stated_source or 'no capacity_source given'})")
    return out, "; ".join(sources)


def lower_bound_fields(reported: dict, stated: dict | None = None) -> tuple[str, ...]:
    """Capacity fields neither stated in the plan nor reported by the engine."""
    stated = stated or {}
    return tuple(k for k in CAPACITY_KEYS if not stated.get(k) and not reported.get(k))


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


def in_flight_s(records: Sequence[RequestRecord]) -> float:
    """Seconds during which at least one request was in flight (union of send..last-token intervals)."""
    spans = sorted((r.send_s, r.finish_s) for r in records if r.ok)
    total, end = 0.0, -math.inf
    for a, b in spans:
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def fit_power(step: StepModel, runs: Sequence[FitRun], idle_w: float, power_limit_w: float) -> tuple[dict, float]:
    """Power fields from run energies (NNLS); returns (fields, MAPE % of run energy)."""
    rows, targets, energies = [], [], []
    for run in runs:
        if run.energy_j is None or run.window_s is None or not run.records or not any(r.ok for r in run.records):
            continue
        f = run_features(step, run)
        # The engine is not idle while a request is in flight: where the run took longer than its replay
        # through the time model (CUDA-graph captures the first time a batch shape is seen, host hiccups),
        # the GPU drew active power, not idle power, for the difference.
        f[0] = max(f[0], in_flight_s(run.records))
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


def graph_capture_s(runs: Sequence[FitRun]) -> tuple[float, str]:
    """What capturing a CUDA graph costs: each prefill run's first request meets a new padded shape, its later
    ones replay the graph; the median over runs of (first TTFT - lower quartile of the others)."""
    extra = []
    for run in runs:
        if run.kind != "prefill":
            continue
        recs = sorted((r for r in run.records if r.ok), key=lambda r: r.send_s)
        if len(recs) >= 3:
            rest = float(np.percentile([r.first_token_s - r.send_s for r in recs[1:]], 25))
            extra.append(recs[0].first_token_s - recs[0].send_s - rest)
    if not extra:
        return 0.0, "graph capture stated but no prefill run has 3 requests: graph_capture_s = 0"
    value = max(float(np.median(extra)), 0.0)
    return value, (f"CUDA-graph capture (padded shapes stated in the plan): graph_capture_s = {value * 1e3:.1f} ms, "
                   f"the median over {len(extra)} prefill runs of the first request's extra TTFT")


def fit_step_model(runs: Sequence[FitRun], reported_capacity: dict | None = None, idle_w: float | None = None,
                   power_limit_w: float | None = None, stated_capacity: dict | None = None,
                   capacity_source: str = "") -> StepFit:
    """The step model of one entry from its fit runs.

    ``stated_capacity`` (from the plan: ``kv_capacity_tokens``, ``max_batch``, ``max_num_tokens``, and the
    scheduling facts ``kv_pad_tokens`` and ``host_admission``) overrides what the engine reported;
    ``capacity_source`` says where the stated values come from."""
    stated = dict(stated_capacity or {})
    obs = observations(runs)
    capacity, cap_source = capacity_from(runs, reported_capacity or {}, stated, capacity_source)
    kv_pad = int(stated.get("kv_pad_tokens") or (reported_capacity or {}).get("kv_pad_tokens") or 0)
    x, kink, notes = fit_time_model(obs, padding=KvPadding(kv_pad, capacity["kv_capacity_tokens"])
                                    if kv_pad > 0 else NO_PADDING)
    step, eps, split_notes = _step_from(x, kink, ZERO_POWER, capacity, kv_pad)
    notes += split_notes
    if stated.get("host_admission"):
        # The per-sequence cost of an iteration is the engine's host work (token emission, scheduling); a
        # request that arrives during it is seen one boundary later (sim.instance).
        step = StepModel(**{**step.as_dict(), "admission_lead_per_seq_s": step.per_seq_s})
        notes.append(f"host admission (engine fact stated in the plan): admission_lead_per_seq_s = per_seq_s = "
                     f"{step.per_seq_s * 1e3:.3f} ms")
    q_pad = int(stated.get("graph_q_pad_tokens") or 0)
    if q_pad > 0:
        capture_s, capture_note = graph_capture_s(runs)
        step = StepModel(**{**step.as_dict(), "graph_q_pad_tokens": q_pad, "graph_capture_s": capture_s})
        notes.append(capture_note)
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
    return StepFit(step, eps, kink, len(obs), _mape(step, eps, obs), tuple(notes), power_mape, cap_source,
                   lower_bounds=lower_bound_fields(reported_capacity or {}, stated))
