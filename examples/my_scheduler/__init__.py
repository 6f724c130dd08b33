"""An example plug-in batch scheduler for qfleet-sim that lives outside qfleet (``sim.scheduler_api``).

    python -m sim.main engine.scheduler._target_=examples.my_scheduler.ShortestPromptFirst \
        +engine.scheduler.prefill_budget_tokens=2048 +engine.scheduler.max_wait_s=5

Walk-through: README.md, "Write your own scheduler".
"""

from examples.my_scheduler.scheduler import ShortestPromptFirst

__all__ = ["ShortestPromptFirst"]
