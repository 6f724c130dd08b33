"""An example plug-in package for qfleet-sim: a policy and a router that live outside qfleet.

    python -m sim.main policy._target_=examples.my_policy.FewestGpus +policy.peak_windows=2
    python -m sim.main router._target_=examples.my_policy.MostFreeKv

Walk-through: README.md, "Write your own policy".
"""

from examples.my_policy.policy import FewestGpus
from examples.my_policy.router import MostFreeKv

__all__ = ["FewestGpus", "MostFreeKv"]
