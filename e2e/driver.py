"""`MeshDriver`: what the connectivity suite needs of a mesh, whatever runs it.

The suite (``e2e.suite``) creates its own workloads ("pods" running the echo server), runs client
commands inside pods, reaches each cell's meshapi as an admin (``meshapi``: an address and a TLS
directory the driver resolved, e.g. from a meshctl context), and — for the disruptive tests —
stops and starts control-plane parts. The CLI builds the driver and hands it to the suite: the
local lab implements this (``meshctl.lab.LabDriver``), and so does the Kubernetes driver
(``meshctl.kube.driver.KubeDriver``, a kube context per cell). The suite never imports the CLI.
Pure interface: no IO here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class PortSpec:
    """A port a pod serves for a service (the echo server listens on it, TCP and UDP)."""

    name: str
    port: int
    protocol: str = "TCP"  # "TCP" or "UDP"


@dataclass(frozen=True)
class PodSpec:
    """A pod to create: where, its name, and the services (namespace/name) it is a backend of."""

    cell: str
    node: str
    name: str
    services: Sequence[tuple[str, str]]  # (namespace, service) pairs; may be empty
    ports: Sequence[PortSpec]
    ready: bool = True


@dataclass(frozen=True)
class Pod:
    cell: str
    node: str
    name: str
    address: str  # IPv4, inside the cell's pod CIDR


@dataclass(frozen=True)
class ExecResult:
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class MeshApiAccess:
    """How an admin reaches a cell's meshapi: a resolved context (address, TLS directory)."""

    server: str  # host:port
    tls_dir: Path  # ca.crt, tls.crt, tls.key of an admin certificate
    server_name: str | None = None  # TLS name to verify instead of the server's host


class AccessError(Exception):
    """The driver cannot say how to reach a cell's meshapi; the message names the cause."""


class MeshDriver(Protocol):
    def cells(self) -> list[str]:
        """The cells, in a stable order."""
        ...

    def nodes(self, cell: str) -> list[str]:
        """The nodes of a cell, in a stable order."""
        ...

    def context(self, cell: str) -> str:
        """The name of the cell's context (admin access to its meshapi), for options/messages."""
        ...

    def meshapi(self, cell: str) -> MeshApiAccess:
        """Admin access to the cell's meshapi, resolved now; AccessError naming the cause."""
        ...

    def add_pod(self, spec: PodSpec) -> Pod:
        """Create the pod, start its echo server, register its endpoints; returns at once
        (registration propagates asynchronously; the suite waits on what it observes)."""
        ...

    def set_ready(self, cell: str, node: str, name: str, ready: bool) -> None:
        """Mark the pod's endpoints ready / not ready (the pod keeps running)."""
        ...

    def delete_pod(self, cell: str, node: str, name: str) -> None:
        """Deregister the pod's endpoints, stop its echo server, remove it. Idempotent."""
        ...

    def exec(
        self, cell: str, node: str, pod: str, argv: Sequence[str], *, timeout: float = 30.0
    ) -> ExecResult:
        """Run argv inside the pod (its network namespace and its node's cgroup)."""
        ...

    def python(self) -> str:
        """A Python interpreter usable inside pods that can import `e2e` (for the client)."""
        ...

    def stop_meshapi(self, cell: str) -> None:
        """Stop the cell's meshapi (its etcd and the agents keep running)."""
        ...

    def start_meshapi(self, cell: str) -> None:
        """Start the cell's meshapi again on the same address; returns once it serves."""
        ...

    def restart_agent(self, cell: str, node: str) -> None:
        """Stop the node's agent and start it again (the datapath stays pinned)."""
        ...
