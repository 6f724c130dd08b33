"""Closed forms of the step model against explicit sums, and clear errors on bad values."""

from __future__ import annotations

import pytest

from conftest import make_step
from profiles.step_model import StepModel, StepModelError


@pytest.mark.parametrize("batch,kv0,k", [(1, 0, 1), (7, 1234, 55), (64, 30000, 400)])
def test_stretch_sums_equal_iteration_sums(step, batch, kv0, k):
    times = [step.iteration_s(batch, batch, kv0 + j * batch) for j in range(k)]
    energy = [step.iteration_j(t, batch, kv0 + j * batch) for j, t in enumerate(times)]
    assert step.decode_stretch_s(batch, kv0, k) == pytest.approx(sum(times), rel=1e-12)
    assert step.decode_stretch_j(batch, kv0, k) == pytest.approx(sum(energy), rel=1e-12)


def test_stretch_energy_with_cap_crossing_inside():
    # Work energy grows faster with KV than the cap does: the cap binds only late in the stretch.
    step = make_step(max_power_w=420.0, per_kv_token_j=1e-4)
    batch, kv0, k = 16, 1000, 300
    times = [step.iteration_s(batch, batch, kv0 + j * batch) for j in range(k)]
    energy = [step.iteration_j(t, batch, kv0 + j * batch) for j, t in enumerate(times)]
    capped = [abs(e - 420.0 * t) < 1e-12 for e, t in zip(energy, times)]
    assert any(capped) and not all(capped)
    assert step.decode_stretch_j(batch, kv0, k) == pytest.approx(sum(energy), rel=1e-12)


def test_iterations_until_is_the_first_boundary_at_or_after(step):
    batch, kv0 = 9, 4000
    for elapsed in (1e-6, 0.01, 0.0999, 0.5, 3.0):
        k = step.decode_iterations_until(batch, kv0, elapsed)
        assert step.decode_stretch_s(batch, kv0, k) >= elapsed
        assert k == 1 or step.decode_stretch_s(batch, kv0, k - 1) < elapsed
    assert step.decode_iterations_until(batch, kv0, 0.0) == 0


@pytest.mark.parametrize("field,value", [("weights_s", -1.0), ("idle_w", float("nan")), ("max_batch", 0),
                                         ("kv_capacity_tokens", float("inf"))])
def test_bad_values_are_named(field, value):
    with pytest.raises(StepModelError, match=field):
        make_step(**{field: value})


def test_from_mapping_names_where_and_field(step):
    row = step.as_dict()
    row["per_seq_s"] = "fast"
    with pytest.raises(StepModelError, match=r"file.csv: row 3: field 'per_seq_s'"):
        StepModel.from_mapping(row, where="file.csv: row 3")
    del row["per_seq_s"]
    with pytest.raises(StepModelError, match="missing field 'per_seq_s'"):
        StepModel.from_mapping(row, where="file.csv: row 3")


PADDED = dict(kv_pad_tokens=1024, per_padded_kv_token_s=3e-6)


@pytest.mark.parametrize("batch,kv0,k", [(1, 0, 1), (7, 1000, 300), (64, 30000, 400), (5, 1024, 2000)])
def test_padded_stretch_sums_equal_iteration_sums(batch, kv0, k):
    step = make_step(**PADDED, max_power_w=420.0, per_kv_token_j=1e-4)
    times = [step.iteration_s(batch, batch, kv0 + j * batch) for j in range(k)]
    energy = [step.iteration_j(t, batch, kv0 + j * batch) for j, t in enumerate(times)]
    assert step.decode_stretch_s(batch, kv0, k) == pytest.approx(sum(times), rel=1e-12)
    assert step.decode_stretch_j(batch, kv0, k) == pytest.approx(sum(energy), rel=1e-12)


def test_padding_is_a_staircase_capped_at_the_cache():
    step = make_step(**PADDED, kv_capacity_tokens=2500)
    assert [step.padded_kv(x) for x in (0, 1, 1024, 1025, 2048, 2049, 99999)] == [1024, 1024, 1024, 2048, 2048,
                                                                                  2500, 2500]
    base = make_step(kv_capacity_tokens=2500)
    assert step.iteration_s(3, 3, 1500) - base.iteration_s(3, 3, 1500) == pytest.approx(3e-6 * 2048)
    assert make_step().padded_kv(5000) == 0.0  # off by default


def test_padded_iterations_until_is_the_first_boundary_at_or_after():
    step = make_step(**PADDED)
    batch, kv0 = 9, 900
    for elapsed in (1e-6, 0.01, 0.0999, 0.5, 3.0, 30.0):
        k = step.decode_iterations_until(batch, kv0, elapsed)
        assert step.decode_stretch_s(batch, kv0, k) >= elapsed
        assert k == 1 or step.decode_stretch_s(batch, kv0, k - 1) < elapsed


def test_optional_fields_may_be_absent_or_empty(step):
    row = step.as_dict()
    for name in ("kv_pad_tokens", "per_padded_kv_token_s", "admission_lead_per_seq_s"):
        del row[name]
    assert StepModel.from_mapping(row) == step
    row.update(kv_pad_tokens=float("nan"), per_padded_kv_token_s="", admission_lead_per_seq_s=None)
    assert StepModel.from_mapping(row) == step
    row.update(kv_pad_tokens=16384.5)
    with pytest.raises(StepModelError, match="kv_pad_tokens"):
        StepModel.from_mapping(row)
