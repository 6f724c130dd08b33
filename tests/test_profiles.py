"""The profile contract: the shipped set loads and covers what it must; broken sets get clear errors."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from profiles.catalog import GPUS, MODELS, QUANTS, TENSOR_PARALLEL_DEGREES, unsupported_reason
from profiles.profile_set import LatencySlo, ProfileError, ProfileSet, default_profile_path, saturation_from_curve
from profiles.schema import PROVENANCE_KINDS, ConfigKey


@pytest.fixture(scope="module")
def shipped() -> ProfileSet:
    return ProfileSet.load(default_profile_path())


def test_shipped_set_covers_every_deployable_config(shipped):
    expected = {
        ConfigKey(g, m, q, tp)
        for g in GPUS for m in MODELS for q in QUANTS for tp in TENSOR_PARALLEL_DEGREES
        if unsupported_reason(GPUS[g], MODELS[m], QUANTS[q], tp) is None
    }
    assert set(shipped.configs()) == expected
    assert not any(k.gpu == "a100-40gb" and QUANTS[k.quant].needs_fp8 for k in expected)
    assert ConfigKey("h100-80gb", "llama2-70b", "fp16", 2) not in expected  # 70B FP16 needs TP4 (paper §4)
    assert ConfigKey("h100-80gb", "llama2-70b", "fp16", 4) in expected
    assert len(shipped.quality) == len(MODELS) * len(QUANTS) * 4


def test_every_row_of_every_table_has_provenance(shipped):
    for frame in (shipped.step_models, shipped.curves, shipped.saturation, shipped.quality, shipped.workloads):
        assert frame["provenance"].isin(PROVENANCE_KINDS).all()
        assert (frame["source"].str.strip() != "").all()


def test_saturation_lookup_matches_curve(shipped):
    key = ConfigKey("h100-80gb", "llama2-13b", "fp16", 1)
    searched = shipped.saturation_qps(key, "sharegpt", LatencySlo(1.0, 0.2))
    from_curve = saturation_from_curve(shipped.curve(key, "sharegpt"), LatencySlo(1.0, 0.2))
    assert searched > 0
    assert from_curve == pytest.approx(searched, rel=0.15)
    # A looser SLO can only raise saturation.
    assert shipped.saturation_qps(key, "sharegpt", LatencySlo(3.0, 0.2)) >= searched


def test_quantization_extends_saturation_on_long_inputs(shipped):
    fp16 = ConfigKey("h100-80gb", "codellama-34b", "fp16", 1)
    w4a8 = ConfigKey("h100-80gb", "codellama-34b", "w4a8", 1)
    slo = LatencySlo(5.0, 0.2)
    assert shipped.saturation_qps(w4a8, "newsqa", slo) > shipped.saturation_qps(fp16, "newsqa", slo)


@pytest.fixture
def copy(tmp_path):
    target = tmp_path / "set"
    shutil.copytree(default_profile_path(), target)
    return target


def test_missing_column_names_file_and_column(copy):
    frame = pd.read_csv(copy / "quality.csv")
    frame.drop(columns=["score"]).to_csv(copy / "quality.csv", index=False)
    with pytest.raises(ProfileError, match=r"quality.csv: missing column\(s\) score"):
        ProfileSet.load(copy)


def test_nan_value_names_file_row_and_field(copy):
    frame = pd.read_csv(copy / "step_models.csv")
    frame["weights_s"] = frame["weights_s"].astype(object)
    frame.loc[4, "weights_s"] = "abc"
    frame.to_csv(copy / "step_models.csv", index=False)
    with pytest.raises(ProfileError, match=r"step_models.csv: row 6, field 'weights_s'"):
        ProfileSet.load(copy)


def test_missing_provenance_is_refused(copy):
    frame = pd.read_csv(copy / "saturation.csv")
    frame.loc[0, "provenance"] = "guess"
    frame.to_csv(copy / "saturation.csv", index=False)
    with pytest.raises(ProfileError, match=r"saturation.csv: row 2, field 'provenance'"):
        ProfileSet.load(copy)
    frame.loc[0, "provenance"] = "derived"
    frame.loc[3, "source"] = " "
    frame.to_csv(copy / "saturation.csv", index=False)
    with pytest.raises(ProfileError, match=r"saturation.csv: row 5, field 'source'"):
        ProfileSet.load(copy)


def test_negative_step_value_names_row(copy):
    frame = pd.read_csv(copy / "step_models.csv")
    frame.loc[0, "per_seq_s"] = -1.0
    frame.to_csv(copy / "step_models.csv", index=False)
    with pytest.raises(ProfileError, match=r"step_models.csv: row 2: step model field 'per_seq_s'"):
        ProfileSet.load(copy)


def test_missing_lookup_names_table(shipped):
    with pytest.raises(ProfileError, match="no row for config h100-80gb/llama2-7b/fp16/tp3"):
        shipped.step(ConfigKey("h100-80gb", "llama2-7b", "fp16", 3))
    with pytest.raises(ProfileError, match="no curve"):
        shipped.curve(ConfigKey("h100-80gb", "llama2-7b", "fp16", 1), "nosuch")


def test_energy_curve_lookup_never_clamps_silently(shipped):
    key = ConfigKey("h100-80gb", "llama2-13b", "fp16", 1)
    curve = shipped.curve(key, "sharegpt")
    top, low = float(curve.qps.iloc[-1]), float(curve.qps.iloc[0])
    with pytest.raises(ProfileError, match="beyond the curve"):
        shipped.energy_per_token_j(key, "sharegpt", top * 1.5)
    # Below the curve a mostly idle replica spends more per token, growing as the load falls.
    at_low = shipped.energy_per_token_j(key, "sharegpt", low)
    assert at_low == pytest.approx(float(curve.energy_per_output_token_j.iloc[0]), rel=1e-9)
    assert shipped.energy_per_token_j(key, "sharegpt", low / 10) > 5 * at_low


# --- the fit domain (profiles.fit_domain) ------------------------------------------------------------


def test_shipped_rows_carry_the_composition_grid_domain(shipped):
    from profiles.kernel_step_model import DECODE_KV_LENGTHS, PROMPT_LENGTHS, composition_domain

    key = ConfigKey("h100-80gb", "llama2-13b", "fp16", 1)
    domain = shipped.fit_domain(key)
    assert (domain.max_prompt_tokens, domain.max_context_tokens, domain.max_batch) == (4096, 2048, 256)
    assert domain.max_prompt_tokens == max(PROMPT_LENGTHS) and domain.max_context_tokens == max(DECODE_KV_LENGTHS)
    # every row's domain is the one its KV capacity allows on the grid (what build_default writes)
    for key in shipped.configs():
        assert shipped.fit_domain(key) == composition_domain(shipped.step(key).kv_capacity_tokens), key.label
    # a small KV cache leaves the large decode batches out of the grid
    assert composition_domain(20_000).max_batch == 128
    assert "composition_domain" in shipped.manifest["fit_domain"]


def test_missing_fit_domain_columns_load_as_unknown(copy):
    frame = pd.read_csv(copy / "step_models.csv")
    frame.drop(columns=["fit_max_prompt_tokens", "fit_max_context_tokens", "fit_max_batch"]).to_csv(
        copy / "step_models.csv", index=False)
    profiles = ProfileSet.load(copy)
    domain = profiles.fit_domain(profiles.configs()[0])
    assert not domain.known and domain.max_prompt_tokens is None and domain.max_batch is None


def test_empty_fit_domain_cell_is_unknown_for_that_field_only(copy):
    frame = pd.read_csv(copy / "step_models.csv")
    frame["fit_max_context_tokens"] = frame["fit_max_context_tokens"].astype(object)
    frame.loc[0, "fit_max_context_tokens"] = ""
    frame.to_csv(copy / "step_models.csv", index=False)
    profiles = ProfileSet.load(copy)
    key = ConfigKey(*frame.loc[0, ["gpu", "model", "quant"]], int(frame.loc[0, "tp"]))
    domain = profiles.fit_domain(key)
    assert domain.max_context_tokens is None and domain.max_prompt_tokens == 4096 and domain.known


@pytest.mark.parametrize("field, value, why", [
    ("fit_max_prompt_tokens", -5, "whole number >= 1"),
    ("fit_max_context_tokens", 100.5, "whole number >= 1"),
    ("fit_max_batch", 0, "whole number >= 1"),
    ("fit_max_batch", "many", "not a finite number"),
])
def test_bad_fit_domain_value_names_file_row_and_field(copy, field, value, why):
    frame = pd.read_csv(copy / "step_models.csv")
    frame[field] = frame[field].astype(object)
    frame.loc[3, field] = value
    frame.to_csv(copy / "step_models.csv", index=False)
    with pytest.raises(ProfileError, match=rf"step_models.csv: row 5, field '{field}'.*{why}"):
        ProfileSet.load(copy)


def test_fit_domain_columns_are_what_build_default_writes(copy):
    from profiles.build_default import roofline_configs, write_fit_domain

    shipped_csv = (default_profile_path() / "step_models.csv").read_bytes()
    frame = pd.read_csv(copy / "step_models.csv")
    frame.drop(columns=["fit_max_batch"]).to_csv(copy / "step_models.csv", index=False, float_format="%.10g")
    write_fit_domain(copy)  # adds the missing column back, exactly as shipped
    assert (copy / "step_models.csv").read_bytes() == shipped_csv
    key, step, provenance, source, domain = next(iter(roofline_configs()))
    assert not domain.known  # analytic rows have no fit domain
