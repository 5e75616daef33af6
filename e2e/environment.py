"""What the suite sets up in the mesh -- services, echo pods, client pods -- and takes down again.

Flow: a test asks the ``Environment`` for a service (``service``: a Kubernetes Service manifest
with the cellmesh/cilium annotations, applied to each cell through an admin ``MeshClient`` on
the meshapi the driver resolved, ``MeshAdmin``) and for backends (``backend``: ``driver.add_pod``
of an echo pod registered for that service); everything it creates is pushed on a cleanup stack,
test-scoped or suite-scoped, and ``cleanup`` removes it in reverse order, collecting errors
instead of raising.
All of it lives in one namespace (``cellmesh-test``) that belongs to the suite: services left in
it by an interrupted run are deleted before the first apply. VIPs come from 10.96.240.0/23:
cell A's in 10.96.240.x, cell B's in 10.96.241.x, one per service name.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, Protocol, TypeVar

from e2e.driver import AccessError, MeshDriver, Pod, PodSpec, PortSpec
from meshcore.client import MeshApiError, MeshClient
from meshcore.model import AFFINITY, GLOBAL, SHARED, Endpoint, Kind, Service
from meshcore.tls import TlsConfigError

__all__ = [
    "ECHO_PORT",
    "NAMESPACE",
    "SERVICE_PORT",
    "AdminError",
    "Environment",
    "MeshAdmin",
    "ServiceAdmin",
    "ServiceSpec",
    "service_manifest",
]

NAMESPACE = "cellmesh-test"
ECHO_PORT = 8080  # the echo pods listen here, TCP and UDP
SERVICE_PORT = 80  # every suite service: http 80/TCP and udp 80/UDP -> the pods' 8080
POD_PORTS = (PortSpec("http", ECHO_PORT, "TCP"), PortSpec("udp", ECHO_PORT, "UDP"))
VIP_BASE = IPv4Address("10.96.240.0")

T = TypeVar("T")


class AdminError(Exception):
    """A meshapi admin call failed; the message names the cell, its context and the cause."""


@dataclass(frozen=True)
class ServiceSpec:
    """One cell's view of a suite service; ``shared``/``affinity`` None: annotation left out."""

    global_: bool = True
    shared: bool | None = None
    affinity: str | None = None


def service_manifest(name: str, vip: str, spec: ServiceSpec | None = None) -> str:
    """A v1 Service manifest (JSON, which is YAML) for the suite's namespace; no spec: delete."""
    annotations: dict[str, str] = {}
    if spec is not None:
        if spec.global_:
            annotations[GLOBAL] = "true"
        if spec.shared is not None:
            annotations[SHARED] = "true" if spec.shared else "false"
        if spec.affinity is not None:
            annotations[AFFINITY] = spec.affinity
    doc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations},
        "spec": {
            "clusterIP": vip,
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "protocol": "TCP"},
                {"name": "udp", "port": SERVICE_PORT, "protocol": "UDP"},
            ],
        },
    }
    return json.dumps(doc, indent=2)


class ServiceAdmin(Protocol):
    """The admin operations the suite needs on a cell's meshapi."""

    def apply(self, cell: str, manifest: str) -> None: ...

    def delete(self, cell: str, manifest: str) -> None: ...

    def services(self, cell: str) -> list[Service]: ...

    def endpoints(self, cell: str) -> list[Endpoint]: ...


@dataclass
class MeshAdmin:
    """``ServiceAdmin`` over each cell's meshapi as the driver resolves it (``driver.meshapi``);
    one short event loop per call, so the suite itself stays synchronous like the driver."""

    driver: MeshDriver

    def _run(self, cell: str, call: Callable[[MeshClient], Coroutine[Any, Any, T]]) -> T:
        name = self.driver.context(cell)
        try:
            api = self.driver.meshapi(cell)
        except AccessError as e:
            raise AdminError(f"cell {cell!r}: context {name!r}: {e}") from e

        async def go() -> T:
            async with MeshClient(api.server, api.tls_dir, server_name=api.server_name) as client:
                return await call(client)

        try:
            return asyncio.run(go())
        except (MeshApiError, TlsConfigError) as e:
            raise AdminError(f"cell {cell!r} (context {name!r}, {api.server}): {e}") from e

    def apply(self, cell: str, manifest: str) -> None:
        self._run(cell, lambda c: c.apply_manifest(manifest, source="connectivity-suite"))

    def delete(self, cell: str, manifest: str) -> None:
        self._run(cell, lambda c: c.delete_manifest(manifest, source="connectivity-suite"))

    def services(self, cell: str) -> list[Service]:
        records, _ = self._run(cell, lambda c: c.list([Kind.SERVICE]))
        return [r for _, r in records if isinstance(r, Service) and r.namespace == NAMESPACE]

    def endpoints(self, cell: str) -> list[Endpoint]:
        records, _ = self._run(cell, lambda c: c.list([Kind.ENDPOINT]))
        return [r for _, r in records if isinstance(r, Endpoint) and r.namespace == NAMESPACE]


Undo = tuple[str, Callable[[], None]]  # what (for the error message), how


@dataclass
class Environment:
    """The suite's resources in cells A and B, with test- and suite-scoped cleanup."""

    driver: MeshDriver
    admin: ServiceAdmin
    cell_a: str
    cell_b: str
    _suite_undo: list[Undo] = field(default_factory=list)
    _test_undo: list[Undo] = field(default_factory=list)
    _vips: dict[str, int] = field(default_factory=dict)
    _swept: set[str] = field(default_factory=set)
    _clients: dict[str, Pod] = field(default_factory=dict)
    _pods: dict[tuple[str, str], Pod] = field(default_factory=dict)

    @property
    def cells(self) -> tuple[str, str]:
        return (self.cell_a, self.cell_b)

    def vip(self, cell: str, name: str) -> str:
        """The service's VIP in ``cell``: distinct per cell and per service name."""
        index = self._vips.setdefault(name, len(self._vips) + 10)
        side = self.cells.index(cell)
        return str(VIP_BASE + side * 256 + index)

    def _sweep(self, cell: str) -> None:
        """Delete services an interrupted earlier run left in the suite's namespace."""
        if cell in self._swept:
            return
        for old in self.admin.services(cell):
            vip = str(old.frontends[0].vip) if old.frontends else "10.96.240.1"
            self.admin.delete(cell, service_manifest(old.name, vip))
        self._swept.add(cell)

    def service(self, name: str, specs: dict[str, ServiceSpec]) -> dict[str, str]:
        """Apply service ``name`` to each cell in ``specs`` (test-scoped); its VIP per cell."""
        vips: dict[str, str] = {}
        for cell, spec in specs.items():
            self._sweep(cell)
            vip = vips[cell] = self.vip(cell, name)
            self.admin.apply(cell, service_manifest(name, vip, spec))
            self._test_undo.append(
                (f"delete service {NAMESPACE}/{name} in {cell}", self._deleter(cell, name, vip))
            )
        return vips

    def _deleter(self, cell: str, name: str, vip: str) -> Callable[[], None]:
        return lambda: self.admin.delete(cell, service_manifest(name, vip))

    def update_service(self, cell: str, name: str, spec: ServiceSpec) -> None:
        """Re-apply a service created by ``service`` with other flags."""
        self.admin.apply(cell, service_manifest(name, self.vip(cell, name), spec))

    def _add_pod(self, spec: PodSpec, undo: list[Undo]) -> Pod:
        # A pod of that name may be left from an interrupted run: delete_pod is idempotent.
        self.driver.delete_pod(spec.cell, spec.node, spec.name)
        pod = self.driver.add_pod(spec)
        undo.append(
            (
                f"delete pod {spec.cell}/{spec.node}/{spec.name}",
                lambda: self.driver.delete_pod(spec.cell, spec.node, spec.name),
            )
        )
        return pod

    def backend(
        self, cell: str, name: str, service: str, *, node: str | None = None, ready: bool = True
    ) -> Pod:
        """An echo pod in ``cell`` (first node by default) that backs ``service`` (test-scoped)."""
        spec = PodSpec(
            cell=cell,
            node=node or self.driver.nodes(cell)[0],
            name=name,
            services=[(NAMESPACE, service)],
            ports=POD_PORTS,
            ready=ready,
        )
        return self._add_pod(spec, self._test_undo)

    def client(self, cell: str) -> Pod:
        """The client pod of ``cell`` on its first node (suite-scoped, backs no service)."""
        if cell not in self._clients:
            node = self.driver.nodes(cell)[0]
            spec = PodSpec(cell, node, f"client-{self.cells.index(cell)}", [], POD_PORTS)
            self._clients[cell] = self._add_pod(spec, self._suite_undo)
        return self._clients[cell]

    def target(self, cell: str, node: str, name: str) -> Pod:
        """A plain echo pod (suite-scoped, backs no service), for pod-to-pod tests."""
        key = (cell, name)
        if key not in self._pods:
            spec = PodSpec(cell, node, name, [], POD_PORTS)
            self._pods[key] = self._add_pod(spec, self._suite_undo)
        return self._pods[key]

    def delete_backend(self, pod: Pod) -> None:
        """Delete a backend now (its cleanup entry stays: deleting twice is fine)."""
        self.driver.delete_pod(pod.cell, pod.node, pod.name)

    def on_cleanup(self, what: str, undo: Callable[[], None]) -> None:
        """Run ``undo`` when the current test ends, before its other cleanup (LIFO)."""
        self._test_undo.append((what, undo))

    def registered(self, pod: Pod, service: str) -> Endpoint | None:
        """The pod's endpoint record for ``service`` in its cell's meshapi, if there is one."""
        for endpoint in self.admin.endpoints(pod.cell):
            if endpoint.service == service and str(endpoint.address) == pod.address:
                return endpoint
        return None

    @staticmethod
    def _unwind(stack: list[Undo]) -> list[str]:
        errors = []
        while stack:
            what, undo = stack.pop()
            try:
                undo()
            except Exception as e:  # keep going: everything else must still be removed
                errors.append(f"{what}: {e}")
        return errors

    def end_test(self) -> list[str]:
        """Remove what the test created; the errors, if any."""
        return self._unwind(self._test_undo)

    def end_suite(self) -> list[str]:
        """Remove the suite-scoped pods (and anything a test left); the errors, if any."""
        errors = self._unwind(self._test_undo) + self._unwind(self._suite_undo)
        self._clients.clear()
        self._pods.clear()
        return errors
