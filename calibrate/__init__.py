"""Profiling serving engines into profiles (qMeter, paper §3.1); the ``qfleet-calibrate`` app is ``calibrate.main``.

search (saturation search, sweep) · sim_probe (the same search on the simulated instance) · probe_stats ·
plan (profiling plans, plan-time validation) · engines (TensorRT-LLM, generic OpenAI-compatible) ·
supervisor (launch, health, restart) · standin (a real stand-in engine server) · prompts · arrivals ·
loadgen (streaming client) · energy (NVML) · db (results database) · coordinator (the profiling loop) ·
fit (step model) · validate (simulator replay of measurements) · quality_import · export (profile set).
"""
