"""NVML energy: counter windows and idle baseline through a fake NVML; no GPU means no figure at all."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calibrate.energy import NoEnergyMeter, NvmlEnergyMeter, idle_power_w, open_energy_meter
from calibrate.probe_stats import probe_result


class FakeNvml:
    """Two GPUs whose energy counters (mJ) advance when ``advance`` is called."""

    def __init__(self, count=2, fail_init=False, unsupported=False):
        self.count = count
        self.fail_init = fail_init
        self.unsupported = unsupported
        self.mj = [1_000_000, 5_000_000, 0, 0][:count]

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if self.unsupported:
            raise RuntimeError("Not Supported")
        return self.mj[h]

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700_000

    def nvmlSystemGetDriverVersion(self):
        return "580.159.04"

    def advance(self, joules_per_gpu):
        self.mj = [m + int(joules_per_gpu * 1000) for m in self.mj]


def test_meter_sums_the_instance_gpus():
    nvml = FakeNvml()
    meter = open_energy_meter([0, 1], nvml)
    assert isinstance(meter, NvmlEnergyMeter) and meter.available and meter.reason == ""
    e0 = meter.read_j()
    nvml.advance(250.0)
    assert meter.read_j() - e0 == pytest.approx(500.0)
    info = meter.describe()
    assert info["gpus"] == ["NVIDIA H100 80GB HBM3"] * 2 and info["power_limit_w"] == 1400.0


def test_idle_baseline_is_mean_power_over_the_window():
    nvml = FakeNvml(count=1)
    meter = open_energy_meter([0], nvml)
    clock = iter([10.0, 12.0])
    assert idle_power_w(meter, 2.0, sleep=lambda s: nvml.advance(220.0), clock=lambda: next(clock)) == 110.0


def test_without_nvml_nothing_is_measured_and_it_says_why():
    for meter in (open_energy_meter([0], FakeNvml(fail_init=True)), open_energy_meter([3], FakeNvml(count=2)),
                  open_energy_meter([0], FakeNvml(unsupported=True)), open_energy_meter([], FakeNvml())):
        assert isinstance(meter, NoEnergyMeter) and not meter.available and meter.read_j() is None
        assert meter.reason
    assert "NVML unavailable" in open_energy_meter([0], FakeNvml(fail_init=True)).reason
    assert "do not exist (NVML sees 2 GPU(s))" in open_energy_meter([3], FakeNvml()).reason
    assert idle_power_w(NoEnergyMeter("none"), 5.0) is None
    real = open_energy_meter([0])  # this host: a GPU meter or a stated reason, never a guess
    assert real.available or "NVML" in real.reason or "pynvml" in real.reason


def test_probe_without_energy_records_nan_not_a_number():
    r = probe_result(2.0, np.array([0.0, 0.5]), np.array([0.1, 0.6]), np.array([0.5, 1.0]), np.array([5, 5]), None)
    assert math.isnan(r.mean_power_w) and math.isnan(r.energy_per_output_token_j)
    r = probe_result(2.0, np.array([0.0, 0.5]), np.array([0.1, 0.6]), np.array([0.5, 1.0]), np.array([5, 5]), 100.0)
    assert r.energy_per_output_token_j == pytest.approx(10.0) and r.mean_power_w == pytest.approx(100.0)
