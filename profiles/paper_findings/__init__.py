"""The characterization paper's §4-§7 findings as checks on a profile set (public API: ``profiles.findings``).

Importing this package registers every check, section by section, in the paper's order.
"""

from profiles.paper_findings import s4_application, s5_workload, s6_parallelism, s7_hardware  # noqa: F401
from profiles.paper_findings.common import CHECKS

__all__ = ["CHECKS"]
