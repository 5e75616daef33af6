"""Kubernetes objects in the API's JSON form for the Kubernetes source's tests: one builder each."""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

from meshcore.model import CellConfig

CONFIG = CellConfig(
    name="alpha",
    id=1,
    pod_cidrs=[ip_network("10.1.0.0/16")],
    node_cidrs=[ip_network("192.168.1.0/24")],
)


def endpoint_slice(
    name: str,
    endpoints: list[dict[str, Any]],
    ports: list[dict[str, Any]] | None = None,
    *,
    service: str = "echo",
    namespace: str = "demo",
    address_type: str = "IPv4",
) -> dict[str, Any]:
    """A ``discovery.k8s.io/v1`` EndpointSlice of ``service`` (default port: http 8080/TCP)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}] if ports is None else ports,
    }
