"""Traces: the Azure LLM trace loader, shipped traces, synthetic arrivals and lengths, the §8.3 trace."""

from traces.azure import load_azure_trace, load_shipped_trace, shipped_trace_path
from traces.case_study import (
    CASE_STUDY_TASKS,
    TASK_WORKLOAD,
    CaseStudyTraceSpec,
    build_case_study_trace,
    build_workload_trace,
)
from traces.shared_prefix import SharedPrefixSpec, SharedPrefixStream, add_shared_prefixes
from traces.lengths import AlignedLengths, EmpiricalLengths, FixedLengths, LengthSampler
from traces.synthetic import diurnal_rate, gamma_arrivals, poisson_arrivals, time_varying_arrivals
from traces.trace import Trace, TraceError
from traces.transform import rescale_time, scale_to_rate, slice_time, tile
from traces.workloads import UnknownWorkloadError, describe_workload, workload_lengths, workload_names

__all__ = [
    "AlignedLengths",
    "CASE_STUDY_TASKS",
    "CaseStudyTraceSpec",
    "EmpiricalLengths",
    "FixedLengths",
    "LengthSampler",
    "SharedPrefixSpec",
    "SharedPrefixStream",
    "TASK_WORKLOAD",
    "Trace",
    "TraceError",
    "UnknownWorkloadError",
    "add_shared_prefixes",
    "build_case_study_trace",
    "build_workload_trace",
    "describe_workload",
    "diurnal_rate",
    "gamma_arrivals",
    "load_azure_trace",
    "load_shipped_trace",
    "poisson_arrivals",
    "rescale_time",
    "scale_to_rate",
    "shipped_trace_path",
    "slice_time",
    "tile",
    "time_varying_arrivals",
    "workload_lengths",
    "workload_names",
]
