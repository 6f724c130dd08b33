"""Any OpenAI-compatible server, given its launch command and URL (vLLM, SGLang, ``transformers serve``,
the qfleet stand-in, ...).

``engine.launch`` is an argv template; these placeholders are filled per entry and launch:
``{host}``, ``{port}``, ``{model}``, ``{checkpoint}`` (the path, or the hub id of ``hub:<id>``), ``{tp}``,
``{quant}``, ``{gpu}``, ``{gpu_indices}`` (comma-separated), ``{entry}``, ``{python}`` (this interpreter)
and ``{workdir}``. ``CUDA_VISIBLE_DEVICES`` is set to the entry's GPUs unless the plan's ``env`` sets it.
Which quant methods the server can run is whatever its checkpoints carry: list them in
``engine.supported_quants`` to have other entries refused at plan time.
"""

from __future__ import annotations

from pathlib import Path

from calibrate.engines.base import HandlerBase, LaunchSpec, LaunchTemplateError, render, template_values
from calibrate.plan import Plan, PlanEntry


class GenericHandler(HandlerBase):
    name = "openai"

    def describe(self) -> str:
        return f"OpenAI-compatible server '{self.spec.version}'"

    def unsupported_reason(self, entry: PlanEntry) -> str | None:
        allowed = self.spec.supported_quants
        if allowed is not None and entry.quant not in allowed:
            return f"engine.supported_quants lists only {list(allowed)}"
        return None

    def plan_problems(self, plan: Plan) -> list[str]:
        if not self.spec.launch:
            return ["plan.engine.launch: the generic handler needs the server's launch command (argv list)"]
        problems = []
        for entry in plan.entries:
            try:
                self.launch_spec(entry, 8000, Path(plan.work_dir))
            except LaunchTemplateError as exc:
                problems.append(f"plan.engine.launch (entry '{entry.name}'): {exc}")
                break
        return problems

    def launch_spec(self, entry: PlanEntry, port: int, workdir: Path) -> LaunchSpec:
        values = template_values(entry, self.spec.host, port, workdir)
        argv = tuple(render(arg, values) for arg in (*self.spec.launch, *entry.launch_args))
        env = {"CUDA_VISIBLE_DEVICES": values["gpu_indices"], **{k: render(str(v), values) for k, v in self.spec.env.items()}}
        base = self.base_url(port)
        return LaunchSpec(argv=argv, base_url=base, health_url=base + self.spec.health_path, env=env)
