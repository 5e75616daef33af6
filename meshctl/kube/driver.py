"""`KubeDriver`: the connectivity suite's `e2e.driver.MeshDriver` over one kube context per cell.

Flow: the suite asks for a pod -> the driver creates the suite namespace (once per cell), a v1
Pod pinned to its node through the cell's API server (``KubeClient``), asks the `PodRuntime` to
realise it (network namespace, echo server: what an API server cannot do here) -> patches the
Pod's ``status.podIP`` -> publishes its endpoints as one EndpointSlice per (pod, service), as the
manager of the suite's selector-less Services -> the cell's meshapi (``--source kubernetes``)
turns them into endpoint records. Services go the same way (`KubeServiceAdmin`: server-side
apply of the suite's manifests); what the mesh made of them is read back from each cell's
meshapi (admin access by kube context, ``meshctl.kube.access``). ``set_ready`` rewrites the
slices' conditions, ``delete_pod`` removes slices, Pod and the runtime's pod; ``close`` removes
whatever is left and deletes the suite namespace in every cell.

The runtime also execs in pods and stops/starts control-plane parts. The lab's is
``meshctl.lab.kuberuntime.LabPodRuntime``; real clusters have none yet (exec would need the
pods' exec API and an image with the suite's client).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from e2e.driver import AccessError, ExecResult, MeshApiAccess, Pod, PodSpec, PortSpec
from e2e.environment import NAMESPACE, MeshAdmin
from meshcore.model import Endpoint, Service
from meshctl.contexts import ContextError
from meshctl.kube.access import KubeCellContext, kube_cell_context
from meshctl.kube.client import KubeClient, KubeError
from meshctl.kube.suiteobjects import (
    POD_LABEL,
    SuiteObjectError,
    endpoint_slice,
    namespace_object,
    pod_object,
    pod_status,
    service_object,
)

__all__ = ["FIELD_MANAGER", "KubeDriver", "KubeDriverError", "KubeServiceAdmin", "PodRuntime"]

FIELD_MANAGER = "e2e-cellmesh"


class KubeDriverError(RuntimeError):
    """A Kubernetes call of the driver failed; the message names the cell, context and object."""


class PodRuntime(Protocol):
    """What realises the driver's pods and runs the control plane where an API cannot."""

    def kube_context(self, cell: str) -> str: ...

    def kubeconfig(self) -> Path: ...

    def cells(self) -> list[str]: ...

    def nodes(self, cell: str) -> list[str]: ...

    def run_pod(self, cell: str, node: str, name: str, ports: Sequence[PortSpec]) -> str:
        """Start the pod's echo server on ``ports``; its IPv4 address."""
        ...

    def remove_pod(self, cell: str, node: str, name: str) -> None:
        """Stop and remove the pod; idempotent."""
        ...

    def exec(
        self, cell: str, node: str, pod: str, argv: Sequence[str], *, timeout: float = 30.0
    ) -> ExecResult: ...

    def python(self) -> str: ...

    def stop_meshapi(self, cell: str) -> None: ...

    def start_meshapi(self, cell: str) -> None: ...

    def restart_agent(self, cell: str, node: str) -> None: ...


@dataclass
class _PodRecord:
    spec: PodSpec
    address: str
    ready: bool


@dataclass
class KubeDriver:
    """The suite's driver over ``runtime``'s cells, each reached by its kube context.

    ``config_path``: meshctl's contexts file, next to which ``meshctl install`` put the admin
    certificates (``<dir>/kube/<context>/admin``).
    """

    runtime: PodRuntime
    config_path: Path
    namespace: str = NAMESPACE
    _clients: dict[str, KubeClient] = field(default_factory=dict)
    _access: dict[str, KubeCellContext] = field(default_factory=dict)
    _namespaces: set[tuple[str, str]] = field(default_factory=set)
    _pods: dict[tuple[str, str, str], _PodRecord] = field(default_factory=dict)

    # --- the cells ----------------------------------------------------------------------------

    def cells(self) -> list[str]:
        return self.runtime.cells()

    def nodes(self, cell: str) -> list[str]:
        return self.runtime.nodes(cell)

    def context(self, cell: str) -> str:
        return self.runtime.kube_context(cell)

    def meshapi(self, cell: str) -> MeshApiAccess:
        """The cell's meshapi from its Service (resolved once; again after a meshapi restart)."""
        ctx = self._access.get(cell)
        if ctx is None:
            try:
                ctx = kube_cell_context(
                    self.context(cell),
                    config_path=self.config_path,
                    kubeconfig=self.runtime.kubeconfig(),
                )
            except ContextError as e:
                raise AccessError(str(e)) from e
            self._access[cell] = ctx
        return MeshApiAccess(ctx.server, ctx.tls_dir, ctx.server_name)

    def python(self) -> str:
        return self.runtime.python()

    def service_admin(self) -> KubeServiceAdmin:
        """The suite's ``ServiceAdmin``: Services into the clusters, reads from meshapi."""
        return KubeServiceAdmin(self)

    def client(self, cell: str) -> KubeClient:
        found = self._clients.get(cell)
        if found is None:
            try:
                found = KubeClient.from_context(
                    self.context(cell), kubeconfig=self.runtime.kubeconfig()
                )
            except KubeError as e:
                raise KubeDriverError(f"cell {cell!r}: {e}") from e
            self._clients[cell] = found
        return found

    def call(self, cell: str, what: str, fn: Callable[[KubeClient], object]) -> None:
        """``fn`` on the cell's client; a ``KubeError`` becomes a ``KubeDriverError``."""
        try:
            fn(self.client(cell))
        except KubeError as e:
            raise KubeDriverError(f"cell {cell!r}: {what}: {e}") from e

    def ensure_namespace(self, cell: str, namespace: str) -> None:
        """Create (apply) ``namespace`` in the cell once; the driver's own is deleted by close."""
        if (cell, namespace) in self._namespaces:
            return
        self.apply(cell, namespace_object(namespace), f"create namespace {namespace}")
        self._namespaces.add((cell, namespace))

    def apply(self, cell: str, obj: dict[str, Any], what: str, *, status: bool = False) -> None:
        """Server-side apply ``obj`` (its ``status`` subresource with ``status``) in the cell."""

        def go(c: KubeClient) -> object:
            if status:
                return c.apply_status(obj, field_manager=FIELD_MANAGER)
            return c.apply(obj, field_manager=FIELD_MANAGER)

        self.call(cell, what, go)

    def delete(self, cell: str, api_version: str, kind: str, name: str, namespace: str) -> None:
        """Delete the object in the cell (absent is fine)."""
        what = f"delete {kind} {namespace}/{name}"
        self.call(cell, what, lambda c: c.delete(api_version, kind, name, namespace))

    # --- pods ---------------------------------------------------------------------------------

    def add_pod(self, spec: PodSpec) -> Pod:
        ns = self.namespace
        self.ensure_namespace(spec.cell, ns)
        for svc_ns, _ in spec.services:
            self.ensure_namespace(spec.cell, svc_ns)
        obj = pod_object(
            namespace=ns, cell=spec.cell, node=spec.node, name=spec.name, ports=spec.ports
        )
        self.apply(spec.cell, obj, f"create pod {ns}/{spec.name}")
        try:
            address = self.runtime.run_pod(spec.cell, spec.node, spec.name, spec.ports)
        except BaseException:
            self.delete(spec.cell, "v1", "Pod", spec.name, ns)
            raise
        record = _PodRecord(spec, address, spec.ready)
        self._pods[spec.cell, spec.node, spec.name] = record
        status = pod_status(namespace=ns, name=spec.name, address=address, ready=spec.ready)
        self.apply(spec.cell, status, f"set the status of pod {ns}/{spec.name}", status=True)
        self._publish(record)
        return Pod(cell=spec.cell, node=spec.node, name=spec.name, address=address)

    def _publish(self, record: _PodRecord) -> None:
        spec = record.spec
        for svc_ns, service in spec.services:
            obj = endpoint_slice(
                namespace=svc_ns,
                service=service,
                pod_namespace=self.namespace,
                pod=spec.name,
                node=spec.node,
                address=record.address,
                ports=spec.ports,
                ready=record.ready,
            )
            self.apply(spec.cell, obj, f"publish the endpoints of {svc_ns}/{service}")

    def set_ready(self, cell: str, node: str, name: str, ready: bool) -> None:
        record = self._pods.get((cell, node, name))
        if record is None:
            raise KubeDriverError(f"no pod {cell}/{node}/{name} made by this driver")
        record.ready = ready
        self._publish(record)
        status = pod_status(
            namespace=self.namespace, name=name, address=record.address, ready=ready
        )
        self.apply(cell, status, f"set the status of pod {self.namespace}/{name}", status=True)

    def delete_pod(self, cell: str, node: str, name: str) -> None:
        """Slices first (the mesh drops the backend), then the Pod, then the runtime's pod."""
        record = self._pods.get((cell, node, name))
        namespaces = {svc_ns for svc_ns, _ in record.spec.services} if record else set()
        namespaces.add(self.namespace)

        def delete(c: KubeClient) -> None:
            for ns in sorted(namespaces):
                for item in c.list(
                    "discovery.k8s.io/v1", "EndpointSlice", ns, label_selector=f"{POD_LABEL}={name}"
                ):
                    c.delete("discovery.k8s.io/v1", "EndpointSlice", item["metadata"]["name"], ns)
            c.delete("v1", "Pod", name, self.namespace)

        # Also without a record: a pod left by an interrupted run goes the same way.
        self.call(cell, f"delete pod {self.namespace}/{name}", delete)
        self.runtime.remove_pod(cell, node, name)
        self._pods.pop((cell, node, name), None)

    def exec(
        self, cell: str, node: str, pod: str, argv: Sequence[str], *, timeout: float = 30.0
    ) -> ExecResult:
        return self.runtime.exec(cell, node, pod, argv, timeout=timeout)

    # --- control plane ------------------------------------------------------------------------

    def stop_meshapi(self, cell: str) -> None:
        self.runtime.stop_meshapi(cell)

    def start_meshapi(self, cell: str) -> None:
        self.runtime.start_meshapi(cell)
        self._access.pop(cell, None)

    def restart_agent(self, cell: str, node: str) -> None:
        self.runtime.restart_agent(cell, node)

    # --- the end ------------------------------------------------------------------------------

    def close(self) -> list[str]:
        """Remove every pod left and the suite namespace in every cell; the errors, if any."""
        errors: list[str] = []
        for cell, node, name in list(self._pods):
            try:
                self.delete_pod(cell, node, name)
            except Exception as e:  # keep going: everything else must still be removed
                errors.append(f"delete pod {cell}/{node}/{name}: {e}")
        for cell in sorted({cell for cell, _ in self._namespaces}):
            try:
                what = f"delete namespace {self.namespace}"
                self.call(cell, what, lambda c: c.delete("v1", "Namespace", self.namespace))
            except KubeDriverError as e:
                errors.append(str(e))
        self._namespaces.clear()
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        return errors


@dataclass
class KubeServiceAdmin:
    """``e2e.environment.ServiceAdmin`` for Kubernetes cells: the suite's Services are applied
    to the cluster (server-side apply, the namespace first); services and endpoints are read
    back from the cell's meshapi -- what the mesh made of them."""

    driver: KubeDriver

    def apply(self, cell: str, manifest: str) -> None:
        try:
            obj = service_object(manifest)
        except SuiteObjectError as e:
            raise KubeDriverError(f"cell {cell!r}: {e}") from e
        namespace = obj["metadata"]["namespace"]
        self.driver.ensure_namespace(cell, namespace)
        self.driver.apply(cell, obj, f"apply service {namespace}/{obj['metadata']['name']}")

    def delete(self, cell: str, manifest: str) -> None:
        try:
            obj = service_object(manifest)
        except SuiteObjectError as e:
            raise KubeDriverError(f"cell {cell!r}: {e}") from e
        meta = obj["metadata"]
        self.driver.delete(cell, "v1", "Service", meta["name"], meta["namespace"])

    def services(self, cell: str) -> list[Service]:
        return MeshAdmin(self.driver).services(cell)

    def endpoints(self, cell: str) -> list[Endpoint]:
        return MeshAdmin(self.driver).endpoints(cell)
