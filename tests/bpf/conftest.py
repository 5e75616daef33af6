"""BPF fixtures: the compiled object, a private cgroup v2 directory, a pinned loader instance.

Every cgroup and pin a test makes is removed by the fixture's finalizer, also on failure.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpf.loader import SockLbLoader

REPO = Path(__file__).resolve().parents[2]
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")


@pytest.fixture(scope="session")
def sock_lb_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bpf") / "sock_lb.o"
    subprocess.run(
        ["clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu",
         "-c", str(REPO / "bpf" / "sock_lb.c"), "-o", str(out)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return out


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


@pytest.fixture
def instance() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def loader(sock_lb_object: Path, instance: str) -> Iterator[SockLbLoader]:
    ld = SockLbLoader(object_path=sock_lb_object, instance=instance)
    try:
        yield ld
    finally:
        ld.unpin()


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
