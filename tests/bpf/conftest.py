"""BPF fixtures: a private cgroup v2 directory, attachments, running a process in the cgroup.

The compiled object and the pinned loader instance are in tests/conftest.py (shared).
Every cgroup and pin a test makes is removed by the fixture's finalizer, also on failure.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")


@pytest.fixture
def cgroup() -> Iterator[Path]:
    path = CGROUP_ROOT / f"cellmesh-test-{uuid.uuid4().hex[:10]}"
    path.mkdir()
    try:
        yield path
    finally:
        # Processes a test moved in have exited; rmdir fails loudly if one is left.
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:
                procs = (path / "cgroup.procs").read_text().split()
                for pid in procs:
                    (CGROUP_ROOT / "cgroup.procs").write_text(pid)
        assert not path.exists(), f"{path} could not be removed"


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
