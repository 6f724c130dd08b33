"""Engine handlers: TensorRT-LLM (``trtllm``) and any OpenAI-compatible server (``openai``)."""

from __future__ import annotations

from calibrate.engines.generic import GenericHandler
from calibrate.engines.trtllm import TrtllmHandler
from calibrate.plan import EngineSpec, PlanError

HANDLERS = {"openai": GenericHandler, "trtllm": TrtllmHandler}


def make_handler(spec: EngineSpec):
    try:
        return HANDLERS[spec.kind](spec)
    except KeyError:
        raise PlanError(f"plan.engine.kind: '{spec.kind}' is not one of {sorted(HANDLERS)}") from None
