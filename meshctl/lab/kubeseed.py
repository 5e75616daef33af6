"""The Kubernetes objects a lab with ``--source kubernetes`` puts into each cell's API double.

Pure: from the lab's state to the API's own JSON form, no IO (``kubeup`` applies them). Per cell:
the ``cellmesh`` Namespace and the meshapi Service ``cellmesh/cellmesh-meshapi`` (type
LoadBalancer, port ``grpc`` = the meshapi's lab port, ``status.loadBalancer.ingress[0].ip`` =
its lab address, so ``meshctl connect --kube-context`` finds it as on a cloud); every lab node
as a v1 Node (``InternalIP`` = its underlay address, ``spec.podCIDRs`` = its pod CIDR); the
demo Service ``demo/echo`` (ClusterIP ``DEMO_VIP``, annotated global) and one EndpointSlice per
node holding that node's echo pods (``kubernetes.io/service-name: echo``, ``nodeName``, ready
conditions) — what the endpointslice controller of a real cluster would publish. Also the
kubeconfig documents: one per cell (its context current) and the lab's combined one.
"""

from __future__ import annotations

from typing import Any, Final

from meshctl.kube.suiteobjects import pod_endpoint, slice_object
from meshctl.lab.state import CellState, LabState, NodeState
from meshctl.lab.topology import DEMO_SERVICE, ECHO_PORT

__all__ = [
    "DEMO_VIP",
    "FIELD_MANAGER",
    "MANAGED_BY",
    "MESHAPI_NAMESPACE",
    "MESHAPI_SERVICE",
    "MESHAPI_VIP",
    "cell_objects",
    "combined_kubeconfig",
    "demo_slice",
    "kubeconfig_document",
    "meshapi_service",
    "meshapi_service_status",
    "node_object",
]

FIELD_MANAGER: Final = "meshctl-lab"
MANAGED_BY: Final = "lab.cellmesh.io"  # endpointslice.kubernetes.io/managed-by of the lab's slices
MESHAPI_NAMESPACE: Final = "cellmesh"
MESHAPI_SERVICE: Final = "cellmesh-meshapi"
MESHAPI_VIP: Final = "10.96.0.2"  # the meshapi Service's ClusterIP (every Service has one)
DEMO_VIP: Final = "10.96.0.10"  # demo/echo's ClusterIP, the same in every cell
GLOBAL_ANNOTATION: Final = "service.cilium.io/global"
LAB_LABEL: Final = "lab.cellmesh.io/name"


def _meta(name: str, lab: str, namespace: str | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {LAB_LABEL: lab, **extra.pop("labels", {})}}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta | extra


def namespace_object(name: str, lab: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(name, lab)}


def node_object(lab: str, node: NodeState) -> dict[str, Any]:
    """A v1 Node as the kubelet and the node IPAM controller leave it."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": _meta(node.name, lab, labels={"kubernetes.io/hostname": node.name}),
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.address},
                {"type": "Hostname", "address": node.name},
            ]
        },
    }


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _host(address: str) -> str:
    return address.rpartition(":")[0].strip("[]")


def meshapi_service(lab: str, cell: CellState) -> dict[str, Any]:
    """``cellmesh/cellmesh-meshapi``: type LoadBalancer, its ``grpc`` port the lab's port."""
    port = _port(cell.meshapi)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(MESHAPI_SERVICE, lab, MESHAPI_NAMESPACE),
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": MESHAPI_VIP,
            "clusterIPs": [MESHAPI_VIP],
            "selector": {"app.kubernetes.io/name": MESHAPI_SERVICE},
            "ports": [{"name": "grpc", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def meshapi_service_status(lab: str, cell: CellState) -> dict[str, Any]:
    """The Service's status: the load balancer's ingress is the meshapi's lab address."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": MESHAPI_SERVICE, "namespace": MESHAPI_NAMESPACE},
        "status": {"loadBalancer": {"ingress": [{"ip": _host(cell.meshapi)}]}},
    }


def demo_service(lab: str) -> dict[str, Any]:
    namespace, name = DEMO_SERVICE
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, lab, namespace, annotations={GLOBAL_ANNOTATION: "true"}),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": DEMO_VIP,
            "clusterIPs": [DEMO_VIP],
            "ports": [
                {"name": "http", "port": ECHO_PORT, "targetPort": ECHO_PORT, "protocol": "TCP"},
                {"name": "udp", "port": ECHO_PORT, "targetPort": ECHO_PORT, "protocol": "UDP"},
            ],
        },
    }


def demo_slice(lab: str, node: NodeState) -> dict[str, Any] | None:
    """The EndpointSlice of demo/echo with the node's echo pods (None: the node has none)."""
    namespace, service = DEMO_SERVICE
    pods = [p for p in node.pods if DEMO_SERVICE in [tuple(s) for s in p.services] and p.ports]
    if not pods:
        return None
    ports = {(p.name, p.port, p.protocol) for pod in pods for p in pod.ports}
    meta = _meta(f"{service}-{node.name}", lab, namespace)
    return slice_object(
        name=meta["name"],
        namespace=namespace,
        service=service,
        labels={**meta["labels"], "endpointslice.kubernetes.io/managed-by": MANAGED_BY},
        endpoints=[
            pod_endpoint(
                address=pod.address,
                node=node.name,
                pod_namespace=namespace,
                pod=pod.name,
                ready=pod.ready,
            )
            for pod in pods
        ],
        ports=[
            {"name": name, "port": port, "protocol": protocol}
            for name, port, protocol in sorted(ports)
        ],
    )


def cell_objects(state: LabState, cell: CellState) -> list[dict[str, Any]]:
    """Every object of the cell, in an order the API accepts (namespaces first)."""
    lab = state.name
    objects = [
        namespace_object(MESHAPI_NAMESPACE, lab),
        namespace_object(DEMO_SERVICE[0], lab),
        meshapi_service(lab, cell),
        demo_service(lab),
    ]
    objects += [node_object(lab, node) for node in cell.nodes]
    objects += [s for node in cell.nodes if (s := demo_slice(lab, node)) is not None]
    return objects


# --- kubeconfig files ---------------------------------------------------------------------------


def _entries(cell: CellState) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    name = cell.context
    assert cell.kubeapi is not None, f"cell {cell.name} has no API double"
    return (
        {"name": name, "cluster": {"server": f"http://{cell.kubeapi}"}},
        # The double ignores credentials; the clients want a user entry all the same.
        {"name": name, "user": {"token": "lab"}},
        {"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}},
    )


def kubeconfig_document(cells: list[CellState], *, current: str) -> dict[str, Any]:
    """A kubeconfig with one context per cell, named as the cell's meshctl context."""
    entries = [_entries(cell) for cell in cells]
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [cluster for cluster, _, _ in entries],
        "users": [user for _, user, _ in entries],
        "contexts": [context for _, _, context in entries],
        "current-context": current,
    }


def combined_kubeconfig(state: LabState) -> dict[str, Any]:
    return kubeconfig_document(state.cells, current=state.cells[0].context)
