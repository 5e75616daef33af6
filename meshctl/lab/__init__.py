"""``meshctl lab``: a complete local mesh on one Linux host, and its `LabDriver` for the e2e suite.

Flow: ``commands`` (click) → ``topology`` (pure: names, addresses) → ``state`` (the state file,
written before anything is made) → ``up`` (PKI, ``netns``, ``procs``, ``pods``) or ``down``
(recorded + swept objects) or ``status``; ``driver.LabDriver`` edits a running lab's pods and
restarts its control plane. See docs/lab.md.
"""

from meshctl.lab.commands import lab_group
from meshctl.lab.driver import LabDriver

__all__ = ["LabDriver", "lab_group"]
