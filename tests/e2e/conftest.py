"""Fixtures for the connectivity suite's unit tests: an echo server on loopback, a fake mesh.

``echo_server`` runs ``python -m e2e.echo`` as a subprocess on 127.0.0.1 (a free port, TCP and
UDP) and ends it by its pid. ``FakeDriver`` and ``FakeAdmin`` implement only what the runner and
the environment call, and record it; they carry no traffic.
"""

from __future__ import annotations

import selectors
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from e2e.driver import ExecResult, Pod, PodSpec
from meshcore.localetcd import free_loopback_port
from meshcore.model import Endpoint, Service
from tests.conftest import REPO


@dataclass(frozen=True)
class EchoServer:
    port: int
    line: str  # what it answers, without the newline


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    port = free_loopback_port()
    argv = [
        sys.executable,
        "-m",
        "e2e.echo",
        "--cell",
        "alpha",
        "--node",
        "a1",
        "--pod",
        "echo-1",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=10), "the echo server did not print 'ready' within 10s"
        assert proc.stdout.readline() == b"ready\n"
        yield EchoServer(port, "alpha a1 echo-1")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class FakeDriver:
    """Cells alpha (nodes a1, a2) and beta (b1); records pod and control-plane calls."""

    topology: dict[str, list[str]] = field(
        default_factory=lambda: {"alpha": ["a1", "a2"], "beta": ["b1"]}
    )
    calls: list[str] = field(default_factory=list)
    pods: dict[tuple[str, str], Pod] = field(default_factory=dict)

    def cells(self) -> list[str]:
        return list(self.topology)

    def nodes(self, cell: str) -> list[str]:
        return self.topology[cell]

    def context(self, cell: str) -> str:
        return f"lab-{cell}"

    def config_path(self) -> str:
        return "/nonexistent/meshctl.json"

    def add_pod(self, spec: PodSpec) -> Pod:
        self.calls.append(f"add {spec.cell}/{spec.name}")
        pod = Pod(spec.cell, spec.node, spec.name, f"10.0.0.{len(self.pods) + 2}")
        self.pods[spec.cell, spec.name] = pod
        return pod

    def set_ready(self, cell: str, node: str, name: str, ready: bool) -> None:
        self.calls.append(f"ready {cell}/{name} {ready}")

    def delete_pod(self, cell: str, node: str, name: str) -> None:
        if self.pods.pop((cell, name), None) is not None:
            self.calls.append(f"delete {cell}/{name}")

    def exec(
        self, cell: str, node: str, pod: str, argv: Sequence[str], *, timeout: float = 30.0
    ) -> ExecResult:
        return ExecResult(0, '{"replies": {}, "failures": 0, "errors": {}}\n', "")

    def python(self) -> str:
        return sys.executable

    def stop_meshapi(self, cell: str) -> None:
        self.calls.append(f"stop-meshapi {cell}")

    def start_meshapi(self, cell: str) -> None:
        self.calls.append(f"start-meshapi {cell}")

    def restart_agent(self, cell: str, node: str) -> None:
        self.calls.append(f"restart-agent {cell}/{node}")


@dataclass
class FakeAdmin:
    """Records applied and deleted manifests; lists nothing."""

    applied: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)

    def apply(self, cell: str, manifest: str) -> None:
        self.applied.append((cell, manifest))

    def delete(self, cell: str, manifest: str) -> None:
        self.deleted.append((cell, manifest))

    def services(self, cell: str) -> list[Service]:
        return []

    def endpoints(self, cell: str) -> list[Endpoint]:
        return []
