"""BPF helpers: the programs attached to a cgroup, running a process in a cgroup.

The compiled object, the pinned loader instance and the private `cgroup` fixture are in
tests/conftest.py (shared with the nodeagent tests).
Every cgroup and pin a test makes is removed by the fixture's finalizer, also on failure.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def attachments(cgroup: Path) -> list[str]:
    """`bpftool cgroup show` of one cgroup: one line per attached program (attach type first)."""
    out = subprocess.run(
        ["bpftool", "cgroup", "show", str(cgroup)], check=True, capture_output=True, text=True
    ).stdout
    return [ln.split()[1] for ln in out.splitlines()[1:] if ln.strip()]


def run_in_cgroup(cgroup: Path, args: list[str], *, timeout: float = 20) -> str:
    def enter() -> None:
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    return subprocess.run(
        args, preexec_fn=enter, check=True, capture_output=True, text=True, timeout=timeout
    ).stdout
