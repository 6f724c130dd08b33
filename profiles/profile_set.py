"""Loading, validating, querying and writing profile sets (the folder format of ``profiles.schema``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from profiles.schema import (
    KEY_COLUMNS,
    OPTIONAL_TABLE_COLUMNS,
    PROVENANCE_KINDS,
    TABLE_FILES,
    ConfigKey,
)
from profiles.fit_domain import FIT_DOMAIN_COLUMNS, UNKNOWN_DOMAIN, FitDomain, FitDomainError
from profiles.step_model import StepModel, StepModelError

NUMERIC_EXCEPT = {"gpu", "model", "quant", "workload", "task", "provenance", "source"}
# Energy may be absent (no energy counter, or no passing probe): empty, never invented. A fit-domain cell is
# empty when the domain is unknown.
NULLABLE = {"mean_power_w", "energy_per_output_token_j", *FIT_DOMAIN_COLUMNS}


class ProfileError(ValueError):
    """A profile set that breaks the contract; the message names file, row and field."""


@dataclass(frozen=True, slots=True)
class LatencySlo:
    ttft_s: float
    tpot_s: float

    def met_by(self, p90_ttft_s: float, p90_tpot_s: float) -> bool:
        """TPOT is NaN when no request produced a second token: nothing to judge, so it passes."""
        return p90_ttft_s <= self.ttft_s and not p90_tpot_s > self.tpot_s


def default_profile_path() -> Path:
    return Path(str(resources.files("profiles") / "default"))


def _validate_table(frame: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ProfileError(f"{path}: missing column(s) {', '.join(missing)}")
    for col in columns:
        if col in NUMERIC_EXCEPT:
            continue
        raw = frame[col]
        values = pd.to_numeric(raw, errors="coerce")
        array = values.to_numpy(dtype=float, na_value=np.nan)
        if col in NULLABLE:
            bad = (values.isna() & raw.notna()) | np.isinf(array)
        else:
            bad = values.isna() | ~np.isfinite(array)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ProfileError(f"{path}: row {row + 2}, field '{col}': not a finite number ({frame[col].iloc[row]!r})")
    kinds = frame["provenance"].astype(str)
    bad_kind = ~kinds.isin(PROVENANCE_KINDS)
    if bad_kind.any():
        row = int(np.flatnonzero(bad_kind.to_numpy())[0])
        raise ProfileError(
            f"{path}: row {row + 2}, field 'provenance': {kinds.iloc[row]!r} is not one of {PROVENANCE_KINDS}"
        )
    source = frame["source"].fillna("").astype(str).str.strip()
    if (source == "").any():
        row = int(np.flatnonzero((source == "").to_numpy())[0])
        raise ProfileError(f"{path}: row {row + 2}, field 'source': empty; every number needs its provenance")


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ProfileError(f"{path}: file missing from the profile set"
                           + (" (a directory is there)" if path.is_dir() else ""))
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    except Exception as exc:  # truncated, empty or not the format: name the file, not the parser's internals
        kind = "Parquet" if path.suffix == ".parquet" else "CSV"
        why = "empty file" if path.stat().st_size == 0 else f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        raise ProfileError(f"{path}: not a readable {kind} table ({why}); expected the columns of "
                           f"profiles.schema.TABLE_FILES") from None


@dataclass(frozen=True)
class ProfileSet:
    """A validated profile set with the look-ups policies need."""

    path: Path
    manifest: dict
    step_models: pd.DataFrame
    curves: pd.DataFrame
    saturation: pd.DataFrame
    quality: pd.DataFrame
    workloads: pd.DataFrame
    _steps: dict = field(default_factory=dict, repr=False)
    _curve_index: dict = field(default_factory=dict, repr=False)
    _domains: dict = field(default_factory=dict, repr=False)
    _energy_curves: dict = field(default_factory=dict, init=False, repr=False)  # (key, workload) -> EnergyCurve
    _saturation_index: dict = field(default_factory=dict, init=False, repr=False)  # filled by the first look-up

    # --- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ProfileSet":
        root = Path(path)
        if not root.is_dir():
            raise ProfileError(f"{root}: profile set folder not found")
        manifest_path = root / "manifest.json"
        if not manifest_path.exists():
            raise ProfileError(f"{manifest_path}: file missing from the profile set")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ProfileError(f"{manifest_path}: not valid JSON ({exc})") from None
        tables = {}
        for name, (filename, columns) in TABLE_FILES.items():
            frame = _read(root / filename)
            optional = tuple(c for c in OPTIONAL_TABLE_COLUMNS.get(name, ()) if c in frame.columns)
            _validate_table(frame, root / filename, tuple(columns) + optional)
            if "tp" in columns:
                frame["tp"] = frame["tp"].astype(int)
            tables[name] = frame
        steps, domains = {}, {}
        step_path = root / TABLE_FILES["step_models"][0]
        for row_no, row in enumerate(tables["step_models"].to_dict("records")):
            key = ConfigKey(str(row["gpu"]), str(row["model"]), str(row["quant"]), int(row["tp"]))
            if key in steps:
                raise ProfileError(f"{step_path}: row {row_no + 2}: config {key.label} appears twice")
            try:
                steps[key] = StepModel.from_mapping(row, where=f"{step_path}: row {row_no + 2}")
                domains[key] = FitDomain.from_mapping(row, where=f"{step_path}: row {row_no + 2}")
            except (StepModelError, FitDomainError) as exc:
                raise ProfileError(str(exc)) from None
        curve_index = {}
        for (gpu, model, quant, tp, workload), group in tables["curves"].groupby(list(KEY_COLUMNS) + ["workload"]):
            key = ConfigKey(str(gpu), str(model), str(quant), int(tp))
            if key not in steps:
                raise ProfileError(f"{root / 'curves.parquet'}: curve for {key.label} has no step model")
            curve_index[(key, str(workload))] = group.sort_values("qps").reset_index(drop=True)
        return cls(root, manifest, tables["step_models"], tables["curves"], tables["saturation"],
                   tables["quality"], tables["workloads"], steps, curve_index, domains)

    # --- look-ups --------------------------------------------------------------------------------

    def configs(self) -> list[ConfigKey]:
        return sorted(self._steps)

    def step(self, key: ConfigKey) -> StepModel:
        try:
            return self._steps[key]
        except KeyError:
            raise ProfileError(f"{self.path}/step_models.csv: no row for config {key.label}") from None

    def fit_domain(self, key: ConfigKey) -> FitDomain:
        """The prompt, context and batch the config's step model was fitted on (unknown when not recorded)."""
        self.step(key)  # a config without a row is an error, not an unknown domain
        return self._domains.get(key, UNKNOWN_DOMAIN)

    def quality_score(self, model: str, quant: str, task: str) -> float:
        q = self.quality
        rows = q[(q["model"] == model) & (q["quant"] == quant) & (q["task"] == task)]
        if rows.empty:
            raise ProfileError(f"{self.path}/quality.csv: no row for model={model} quant={quant} task={task}")
        return float(rows["score"].iloc[0])

    def curve(self, key: ConfigKey, workload: str) -> pd.DataFrame:
        try:
            return self._curve_index[(key, workload)]
        except KeyError:
            raise ProfileError(f"{self.path}/curves.parquet: no curve for {key.label} on workload '{workload}'") from None

    def has_curve(self, key: ConfigKey, workload: str) -> bool:
        return (key, workload) in self._curve_index

    def saturation_qps(self, key: ConfigKey, workload: str, slo: LatencySlo) -> float:
        """Saturation under an SLO: the searched value when the SLO was searched, else read off the curve."""
        index = self._saturation_index
        if not index:  # one pass over the table instead of a filter per look-up (it holds ~12k rows)
            s = self.saturation
            for row in zip(s["gpu"], s["model"], s["quant"], s["tp"], s["workload"], s["slo_ttft_s"],
                           s["slo_tpot_s"], s["saturation_qps"]):
                index.setdefault((str(row[0]), str(row[1]), str(row[2]), int(row[3]), str(row[4])), []).append(
                    (float(row[5]), float(row[6]), float(row[7])))
            index.setdefault(None, [])  # marks an empty table as indexed
        for ttft, tpot, qps in index.get((key.gpu, key.model, key.quant, key.tp, workload), ()):
            # np.isclose(table value, SLO value), the first matching row, as a filter of the table would give
            if abs(ttft - slo.ttft_s) <= 1e-8 + 1e-5 * abs(slo.ttft_s) and \
                    abs(tpot - slo.tpot_s) <= 1e-8 + 1e-5 * abs(slo.tpot_s):
                return qps
        return saturation_from_curve(self.curve(key, workload), slo)

    def energy_per_token_j(self, key: ConfigKey, workload: str, qps: float) -> float:
        """Energy per output token of one replica at a load, interpolated on its curve.

        Above the curve's highest point there is no answer (an error, not a clamp). Below its lowest
        point the replica is mostly idle: power falls linearly towards ``idle_w`` with the load and
        tokens fall in proportion, which is what the curve's own low end does (``energy_per_token_at``)."""
        energy = self._energy_curves.get((key, workload))
        if energy is None:  # the arrays once per curve: policies ask at every re-plan, for every candidate
            energy = self._energy_curves[(key, workload)] = EnergyCurve.of(self.curve(key, workload),
                                                                             self.step(key).idle_w)
        top = float(energy.qps[-1])
        if qps > top * (1 + 1e-9):
            raise ProfileError(
                f"{self.path}/curves.parquet: {key.label} on '{workload}' is measured up to "
                f"{top:.3g} req/s; {qps:.3g} req/s is beyond the curve"
            )
        return float(energy_per_token_at(energy, np.array([qps]))[0])


@dataclass(frozen=True, slots=True)
class EnergyCurve:
    """The arrays of one curve that energy per token at any load is computed from."""

    qps: np.ndarray
    energy_per_output_token_j: np.ndarray
    mean_power_w: float  # at the lowest point
    output_tokens_per_s: float  # at the lowest point
    idle_w: float

    @classmethod
    def of(cls, curve: pd.DataFrame, idle_w: float) -> "EnergyCurve":
        return cls(curve["qps"].to_numpy(dtype=float), curve["energy_per_output_token_j"].to_numpy(dtype=float),
                   float(curve["mean_power_w"].iloc[0]), float(curve["output_tokens_per_s"].iloc[0]), float(idle_w))


def energy_per_token_at(curve: EnergyCurve, qps: np.ndarray) -> np.ndarray:
    """Energy per output token at each load (vectorised ``ProfileSet.energy_per_token_j``; NaN above the curve)."""
    qps = np.asarray(qps, dtype=float)
    q0 = float(curve.qps[0])
    out = np.interp(qps, curve.qps, curve.energy_per_output_token_j)
    low = qps < q0
    if low.any():
        load = np.maximum(qps[low], 1e-9) / q0
        out[low] = (curve.idle_w + (curve.mean_power_w - curve.idle_w) * load) / (curve.output_tokens_per_s * load)
    out[qps > curve.qps[-1] * (1 + 1e-9)] = np.nan
    return out


def saturation_from_curve(curve: pd.DataFrame, slo: LatencySlo) -> float:
    """Highest QPS whose P90 TTFT and TPOT meet the SLO, interpolating between sweep points."""
    qps = curve["qps"].to_numpy()
    ok = (curve["p90_ttft_s"].to_numpy() <= slo.ttft_s) & (curve["p90_tpot_s"].to_numpy() <= slo.tpot_s)
    if not ok[0]:
        return 0.0
    last_ok = int(np.argmin(ok)) - 1 if not ok.all() else len(ok) - 1
    if last_ok == len(ok) - 1:
        return float(qps[-1])
    lo, hi = last_ok, last_ok + 1
    # Interpolate where the binding metric crosses its SLO.
    fractions = []
    for metric, limit in (("p90_ttft_s", slo.ttft_s), ("p90_tpot_s", slo.tpot_s)):
        a, b = float(curve[metric].iloc[lo]), float(curve[metric].iloc[hi])
        if b > limit:
            fractions.append((limit - a) / (b - a) if b != a else 0.0)
    frac = min(fractions) if fractions else 0.0
    return float(qps[lo] + max(0.0, min(1.0, frac)) * (qps[hi] - qps[lo]))


def write_profile_set(path: str | os.PathLike, manifest: dict, tables: dict[str, pd.DataFrame]) -> Path:
    """Write all tables to a temporary folder, validate it by loading, then move it into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)
    try:
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for name, (filename, columns) in TABLE_FILES.items():
            optional = [c for c in OPTIONAL_TABLE_COLUMNS.get(name, ()) if c in tables[name].columns]
            frame = tables[name].loc[:, list(columns) + optional]
            if filename.endswith(".parquet"):
                frame.to_parquet(tmp / filename, index=False)
            else:
                frame.to_csv(tmp / filename, index=False, float_format="%.10g")
        ProfileSet.load(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target

