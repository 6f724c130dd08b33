"""GPU energy over a measured window from NVML's total-energy counter, plus an idle baseline.

``open_energy_meter(gpu_indices)`` opens the instance's GPUs through ``pynvml`` (nvidia-ml-py) and
sums ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since driver load) over them; a window's
energy is the difference of two readings. Without a GPU, without NVML, or when the counter is not
supported, it returns a ``NoEnergyMeter`` that says why and measures nothing: every energy figure is
then recorded as absent (None/NaN), never estimated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence


class EnergyMeter(Protocol):
    available: bool
    reason: str  # why energy is not measured ("" when it is)

    def read_j(self) -> float | None: ...

    def describe(self) -> dict: ...


@dataclass(frozen=True)
class NoEnergyMeter:
    reason: str
    available: bool = False

    def read_j(self) -> float | None:
        return None

    def describe(self) -> dict:
        return {"energy": "not measured", "reason": self.reason}


class NvmlEnergyMeter:
    """Sum of the total-energy counters of some GPUs."""

    available = True
    reason = ""

    def __init__(self, nvml: Any, indices: Sequence[int]):
        self._nvml = nvml
        self.indices = tuple(indices)
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in self.indices]
        self.read_j()  # fails here, not mid-run, when the counter is unsupported

    def read_j(self) -> float:
        return sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles) / 1000.0

    def gpu_names(self) -> list[str]:
        names = []
        for h in self._handles:
            name = self._nvml.nvmlDeviceGetName(h)
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return names

    def power_limit_w(self) -> float:
        return sum(self._nvml.nvmlDeviceGetEnforcedPowerLimit(h) for h in self._handles) / 1000.0

    def describe(self) -> dict:
        driver = self._nvml.nvmlSystemGetDriverVersion()
        return {"energy": "NVML nvmlDeviceGetTotalEnergyConsumption", "gpu_indices": list(self.indices),
                "gpus": self.gpu_names(), "power_limit_w": self.power_limit_w(),
                "driver": driver.decode() if isinstance(driver, bytes) else str(driver)}


def open_energy_meter(gpu_indices: Sequence[int], nvml: Any = None) -> EnergyMeter:
    """An NVML meter over ``gpu_indices``, or a NoEnergyMeter saying why there is none."""
    if not gpu_indices:
        return NoEnergyMeter("no GPU indices configured for this instance")
    if nvml is None:
        try:
            import pynvml as nvml  # nvidia-ml-py
        except ImportError:
            return NoEnergyMeter("pynvml (nvidia-ml-py) is not installed")
    try:
        nvml.nvmlInit()
        count = nvml.nvmlDeviceGetCount()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no GPU here
        return NoEnergyMeter(f"NVML unavailable ({type(exc).__name__}: {exc}); no GPU energy measured")
    missing = [i for i in gpu_indices if not 0 <= i < count]
    if missing:
        return NoEnergyMeter(f"GPU indices {missing} do not exist (NVML sees {count} GPU(s)); no energy measured")
    try:
        return NvmlEnergyMeter(nvml, gpu_indices)
    except Exception as exc:
        return NoEnergyMeter(f"NVML energy counter not supported on GPUs {list(gpu_indices)} "
                             f"({type(exc).__name__}: {exc})")


def idle_power_w(meter: EnergyMeter, seconds: float, sleep=time.sleep, clock=time.perf_counter) -> float | None:
    """Mean power of the instance's GPUs while idle for ``seconds``; None without a meter."""
    if not meter.available or seconds <= 0:
        return None
    e0, t0 = meter.read_j(), clock()
    sleep(seconds)
    e1, t1 = meter.read_j(), clock()
    return (e1 - e0) / (t1 - t0)
