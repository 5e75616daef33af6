"""The Kubernetes objects the connectivity suite's Kubernetes driver makes (pure builders).

Flow: a suite pod (``e2e.driver.PodSpec``) -> ``pod_object`` (a v1 Pod pinned to its node, with
the echo server's ports) and, once the runtime gave it an address, ``pod_status`` (its
``status.podIP``) and one ``endpoint_slice`` per (pod, service): a ``discovery.k8s.io/v1``
EndpointSlice of a selector-less Service, so it is published by whoever manages it -- label
``endpointslice.kubernetes.io/managed-by: e2e.cellmesh.io`` and ``kubernetes.io/service-name``,
``nodeName``, conditions ``ready``/``serving``/``terminating``. ``service_object`` checks a
Service manifest of the suite (``e2e.environment.service_manifest``) before it is applied. Every
object is labelled ``app.kubernetes.io/managed-by: e2e.cellmesh.io`` so what the driver made can
be found and removed. No IO.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import metadata
from typing import Any, Final

import yaml

from e2e.driver import PortSpec

__all__ = [
    "MANAGED_BY",
    "POD_LABEL",
    "SuiteObjectError",
    "endpoint_slice",
    "namespace_object",
    "pod_endpoint",
    "pod_object",
    "pod_status",
    "service_object",
    "slice_name",
    "slice_object",
]

MANAGED_BY: Final = "e2e.cellmesh.io"
POD_LABEL: Final = "e2e.cellmesh.io/pod"
_MANAGED: Final = {"app.kubernetes.io/managed-by": MANAGED_BY}
_MAX_NAME: Final = 253


class SuiteObjectError(ValueError):
    """A manifest the suite handed over is not a namespaced v1 Service; the message says why."""


def _image() -> str:
    try:
        version = metadata.version("cellmesh")
    except metadata.PackageNotFoundError:
        version = "latest"
    return f"ghcr.io/cellmesh/cellmesh:{version}"


def namespace_object(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": _MANAGED}}


def pod_object(
    *, namespace: str, cell: str, node: str, name: str, ports: Sequence[PortSpec]
) -> dict[str, Any]:
    """The v1 Pod of a suite pod: the echo server on its ports, pinned to ``node``."""
    command = ["python", "-m", "e2e.echo", "--cell", cell, "--node", node, "--pod", name]
    command += ["--listen", "0.0.0.0"]
    for port in sorted({p.port for p in ports}):
        command += ["--port", str(port)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {**_MANAGED, POD_LABEL: name}},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "echo",
                    "image": _image(),
                    "command": command,
                    "ports": [
                        {"name": p.name, "containerPort": p.port, "protocol": p.protocol}
                        for p in ports
                    ],
                }
            ],
        },
    }


def pod_status(*, namespace: str, name: str, address: str, ready: bool) -> dict[str, Any]:
    """The Pod's status as the runtime realised it (for the ``status`` subresource)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "status": {
            "phase": "Running",
            "podIP": address,
            "podIPs": [{"ip": address}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def slice_name(service: str, pod: str) -> str:
    """``<service>-<pod>``; shortened with a hash when longer than a name may be."""
    name = f"{service}-{pod}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: _MAX_NAME - 11]}-{digest}"


def slice_object(
    *,
    name: str,
    namespace: str,
    service: str,
    labels: dict[str, str],
    endpoints: list[dict[str, Any]],
    ports: list[dict[str, Any]],
) -> dict[str, Any]:
    """An IPv4 ``discovery.k8s.io/v1`` EndpointSlice of ``service`` (also the lab's demo slices)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**labels, "kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }


def pod_endpoint(
    *, address: str, node: str, pod_namespace: str, pod: str, ready: bool
) -> dict[str, Any]:
    """One endpoint of a slice: a pod's address, its node, and its readiness."""
    return {
        "addresses": [address],
        "conditions": {"ready": ready, "serving": ready, "terminating": False},
        "nodeName": node,
        "targetRef": {"kind": "Pod", "namespace": pod_namespace, "name": pod},
    }


def endpoint_slice(
    *,
    namespace: str,
    service: str,
    pod_namespace: str,
    pod: str,
    node: str,
    address: str,
    ports: Sequence[PortSpec],
    ready: bool,
) -> dict[str, Any]:
    """The EndpointSlice publishing ``pod`` (at ``address`` on ``node``) for ``service``."""
    return slice_object(
        name=slice_name(service, pod),
        namespace=namespace,
        service=service,
        labels={**_MANAGED, "endpointslice.kubernetes.io/managed-by": MANAGED_BY, POD_LABEL: pod},
        endpoints=[
            pod_endpoint(
                address=address, node=node, pod_namespace=pod_namespace, pod=pod, ready=ready
            )
        ],
        ports=[{"name": p.name, "port": p.port, "protocol": p.protocol} for p in ports],
    )


def service_object(manifest: str) -> dict[str, Any]:
    """The v1 Service in a suite manifest (JSON or YAML), labelled as the driver's."""
    try:
        doc = yaml.safe_load(manifest)
    except yaml.YAMLError as e:
        raise SuiteObjectError(f"the suite's Service manifest is not YAML/JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("apiVersion") != "v1" or doc.get("kind") != "Service":
        raise SuiteObjectError("the suite's manifest is not a v1 Service")
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name") or not meta.get("namespace"):
        raise SuiteObjectError("the suite's Service has no metadata.name or metadata.namespace")
    labels = meta.get("labels")
    labels = labels if isinstance(labels, dict) else {}
    return {**doc, "metadata": {**meta, "labels": {**labels, **_MANAGED}}}
