"""Kubernetes object JSON -> records (meshapi.kubeobjects): pure, table-driven."""

from __future__ import annotations

import copy
import json
from ipaddress import ip_address, ip_network
from typing import Any

import pytest

from meshapi.kubeobjects import (
    PEERS_CONFIGMAP,
    KubeObjectError,
    endpoints_from_slices,
    namespace_is_global,
    node_record,
    parse_endpoint_slice,
    peers_configmap,
    peers_from_configmap,
    service_record,
)
from meshcore.model import Affinity, Endpoint, EndpointPort, Peer
from tests.meshapi.kube_objects import CONFIG, endpoint_slice


def svc(
    name: str = "echo", annotations: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}
    body.update(spec)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "demo", "annotations": annotations or {}},
        "spec": body,
    }


eps = endpoint_slice


def node(name: str = "n1", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": spec or {"podCIDRs": ["10.1.1.0/24"]},
        "status": {
            "addresses": [
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": "192.168.1.11"},
                {"type": "ExternalIP", "address": "203.0.113.5"},
            ]
        },
    }


def endpoints_of(*slices: dict[str, Any]) -> dict[str, Endpoint]:
    parsed = [parse_endpoint_slice(s, config=CONFIG) for s in slices]
    return endpoints_from_slices([p for p in parsed if p is not None], cell="alpha")


# ---- Services and Namespaces ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "namespace_global", "expected"),
    [
        pytest.param({}, False, (False, False), id="plain"),
        pytest.param({"service.cilium.io/global": "true"}, False, (True, True), id="global"),
        pytest.param({"io.cilium/global-service": "true"}, False, (True, True), id="legacy"),
        pytest.param({}, True, (True, True), id="namespace-global"),
        pytest.param(
            {"service.cilium.io/global": "false"}, True, (False, False), id="own-annotation-wins"
        ),
        pytest.param(
            {"io.cilium/global-service": "false"}, True, (False, False), id="own-legacy-wins"
        ),
        pytest.param(
            {"service.cilium.io/shared": "false"}, True, (True, False), id="namespace-not-shared"
        ),
    ],
)
def test_service_global_default(
    annotations: dict[str, str], namespace_global: bool, expected: tuple[bool, bool]
) -> None:
    record = service_record(
        svc(annotations=annotations), config=CONFIG, namespace_global=namespace_global
    )
    assert (record.global_, record.shared) == expected
    assert record.key() == "cellmesh/v1/services/alpha/demo/echo"


def test_service_fields() -> None:
    record = service_record(
        svc(
            annotations={"service.cilium.io/global": "true", "service.cilium.io/affinity": "local"},
            clusterIPs=["10.96.0.10", "fd00::10"],
            ports=[{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}],
            type="ClusterIP",
        ),
        config=CONFIG,
    )
    assert record.affinity is Affinity.LOCAL
    assert {(str(f.vip), f.port, f.protocol, f.name) for f in record.frontends} == {
        ("10.96.0.10", 80, "TCP", "http"),
        ("10.96.0.10", 53, "UDP", "dns"),
        ("fd00::10", 80, "TCP", "http"),
        ("fd00::10", 53, "UDP", "dns"),
    }


def test_headless_service_has_no_frontends() -> None:
    record = service_record(svc(clusterIP="None"), config=CONFIG)
    assert record.frontends == []


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        pytest.param(
            lambda o: o["spec"].update(clusterIP="10.96.0.300"), "spec.clusterIP", id="bad-ip"
        ),
        pytest.param(
            lambda o: o["spec"]["ports"][0].update(port=0), "spec.ports[0].port", id="port-0"
        ),
        pytest.param(lambda o: o["metadata"].pop("namespace"), "metadata.namespace", id="no-ns"),
        pytest.param(lambda o: o["metadata"].update(name="Echo"), "metadata.name", id="bad-name"),
        pytest.param(lambda o: o.update(spec=[1]), "spec", id="spec-list"),
    ],
)
def test_malformed_service(mutate: Any, field: str) -> None:
    obj = svc()
    mutate(obj)
    with pytest.raises(KubeObjectError) as e:
        service_record(obj, config=CONFIG)
    assert e.value.kind == "Service"
    assert e.value.field == field
    assert str(e.value).startswith("Service ")
    assert field in str(e.value)


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        pytest.param({"clustermesh.cilium.io/global": "true"}, True, id="true"),
        pytest.param({"clustermesh.cilium.io/global": "True "}, True, id="case"),
        pytest.param({"clustermesh.cilium.io/global": "false"}, False, id="false"),
        pytest.param({}, False, id="absent"),
        pytest.param(None, False, id="no-annotations"),
    ],
)
def test_namespace_is_global(annotations: dict[str, str] | None, expected: bool) -> None:
    obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}
    if annotations is not None:
        obj["metadata"]["annotations"] = annotations  # type: ignore[index]
    assert namespace_is_global(obj) is expected


# ---- EndpointSlices ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        pytest.param({}, (True, True, False), id="all-nil"),
        pytest.param(None, (True, True, False), id="no-conditions"),
        pytest.param({"ready": False}, (False, False, False), id="serving-follows-ready"),
        pytest.param({"ready": None, "serving": None}, (True, True, False), id="explicit-null"),
        pytest.param(
            {"ready": False, "serving": True, "terminating": True},
            (False, True, True),
            id="terminating-serving",
        ),
        pytest.param({"ready": True, "serving": False}, (True, False, False), id="not-serving"),
        pytest.param({"terminating": None}, (True, True, False), id="terminating-nil"),
    ],
)
def test_condition_nil_semantics(
    conditions: dict[str, Any] | None, expected: tuple[bool, bool, bool]
) -> None:
    entry: dict[str, Any] = {"addresses": ["10.1.1.5"], "nodeName": "n1"}
    if conditions is not None:
        entry["conditions"] = conditions
    (record,) = endpoints_of(eps("echo-a", [entry])).values()
    assert (record.ready, record.serving, record.terminating) == expected
    assert record.node == "n1"


def test_three_slices_merge_into_one_backend_set() -> None:
    a = eps("echo-a", [{"addresses": ["10.1.1.5"]}, {"addresses": ["10.1.1.6"], "nodeName": "n2"}])
    b = eps(
        "echo-b",
        [{"addresses": ["10.1.2.5"], "conditions": {"ready": False}}, {"addresses": ["10.1.1.5"]}],
        [{"name": "metrics", "port": 9090, "protocol": "TCP"}],
    )
    c = eps(
        "echo-c", [{"addresses": ["10.1.3.5"]}], [{"name": "dns", "port": 53, "protocol": "UDP"}]
    )
    records = endpoints_of(c, a, b)
    assert sorted(str(r.address) for r in records.values()) == [
        "10.1.1.5",
        "10.1.1.6",
        "10.1.2.5",
        "10.1.3.5",
    ]
    by_address = {str(r.address): r for r in records.values()}
    assert by_address["10.1.1.5"].ports == [
        EndpointPort(name="http", port=8080),
        EndpointPort(name="metrics", port=9090),
    ]
    assert by_address["10.1.3.5"].ports == [EndpointPort(name="dns", port=53, protocol="UDP")]
    assert by_address["10.1.2.5"].ready is False
    assert by_address["10.1.1.6"].node == "n2"
    assert all(k.startswith("cellmesh/v1/endpoints/alpha/demo/echo/") for k in records)
    assert endpoints_of(a, b, c) == records  # order of arrival does not matter


@pytest.mark.parametrize(
    "slice_",
    [
        pytest.param(eps("x", [{"addresses": ["fd00::1"]}], address_type="IPv6"), id="ipv6"),
        pytest.param(eps("x", [{"addresses": ["a.example"]}], address_type="FQDN"), id="fqdn"),
        pytest.param(
            {
                **eps("x", [{"addresses": ["10.1.1.5"]}]),
                "metadata": {"name": "x", "namespace": "demo"},
            },
            id="no-service-label",
        ),
    ],
)
def test_unused_slices_are_skipped_not_errors(slice_: dict[str, Any]) -> None:
    assert parse_endpoint_slice(slice_, config=CONFIG) is None


def test_slice_without_ports_gives_no_records() -> None:
    assert endpoints_of(eps("x", [{"addresses": ["10.1.1.5"]}], [])) == {}


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        pytest.param(
            lambda o: o["endpoints"][0].update(addresses=["10.9.1.5"]),
            "endpoints[0].addresses[0]",
            id="outside-cidrs",
        ),
        pytest.param(
            lambda o: o["endpoints"][0].update(addresses=["10.1.1.500"]),
            "endpoints[0].addresses[0]",
            id="bad-address",
        ),
        pytest.param(
            lambda o: o["endpoints"][0].update(addresses=["fd00::5"]),
            "endpoints[0].addresses[0]",
            id="ipv6-in-ipv4-slice",
        ),
        pytest.param(
            lambda o: o["endpoints"][0].update(conditions={"ready": "yes"}),
            "endpoints[0].conditions.ready",
            id="condition-not-bool",
        ),
        pytest.param(
            lambda o: o["endpoints"][0].update(nodeName="N_1"), "endpoints[0].nodeName", id="node"
        ),
        pytest.param(lambda o: o["ports"][0].update(port=70000), "ports[0].port", id="port"),
        pytest.param(
            lambda o: o["ports"][0].update(protocol="SCTP"), "ports[0].protocol", id="sctp"
        ),
        pytest.param(
            lambda o: o["ports"].append({"name": "again", "port": 8080}), "ports[1]", id="dup-port"
        ),
        pytest.param(lambda o: o.update(endpoints={"a": 1}), "endpoints", id="endpoints-map"),
        pytest.param(
            lambda o: o["metadata"]["labels"].update({"kubernetes.io/service-name": "Bad_Name"}),
            "metadata.labels['kubernetes.io/service-name']",
            id="bad-service-label",
        ),
        pytest.param(
            lambda o: o["endpoints"].append({"addresses": ["10.1.1.5"]}),
            "endpoints[1]",
            id="dup-address",
        ),
    ],
)
def test_malformed_slice(mutate: Any, field: str) -> None:
    obj = eps("echo-a", [{"addresses": ["10.1.1.5"]}])
    mutate(obj)
    with pytest.raises(KubeObjectError) as e:
        parse_endpoint_slice(obj, config=CONFIG)
    assert (e.value.kind, e.value.ref, e.value.field) == ("EndpointSlice", "demo/echo-a", field)


# ---- Nodes ---------------------------------------------------------------------------------


def test_node_record() -> None:
    record = node_record(node(), config=CONFIG)
    assert record.name == "n1"
    assert record.addresses == [ip_address("192.168.1.11")]
    assert record.pod_cidrs == [ip_network("10.1.1.0/24")]


def test_node_pod_cidr_singular_and_dual_stack() -> None:
    assert node_record(node(podCIDR="10.1.2.0/24"), config=CONFIG).pod_cidrs == [
        ip_network("10.1.2.0/24")
    ]
    obj = node(podCIDRs=["10.1.3.0/24", "fd00:1::/64"])
    obj["status"]["addresses"].append({"type": "InternalIP", "address": "fd00::11"})
    record = node_record(obj, config=CONFIG)  # an IPv4-only cell keeps the IPv4 half
    assert record.pod_cidrs == [ip_network("10.1.3.0/24")]
    assert record.addresses == [ip_address("192.168.1.11")]
    assert node_record(node(name="n2", podCIDRs=[]), config=CONFIG).pod_cidrs == []


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        pytest.param(lambda o: o["spec"].update(podCIDRs=["10.9.0.0/24"]), "", id="cidr-outside"),
        pytest.param(
            lambda o: o["spec"].update(podCIDRs=["10.1.1.1/24"]), "spec.podCIDRs[0]", id="host-bits"
        ),
        pytest.param(lambda o: o["status"].update(addresses=[]), "status.addresses", id="no-ip"),
        pytest.param(
            lambda o: o["status"]["addresses"][1].update(address="192.168.9.1"), "", id="ip-outside"
        ),
        pytest.param(
            lambda o: o["status"]["addresses"][1].update(address=7),
            "status.addresses[1].address",
            id="ip-number",
        ),
        pytest.param(lambda o: o["metadata"].pop("name"), "metadata.name", id="no-name"),
    ],
)
def test_malformed_node(mutate: Any, field: str) -> None:
    obj = node()
    mutate(obj)
    with pytest.raises(KubeObjectError) as e:
        node_record(obj, config=CONFIG)
    assert (e.value.kind, e.value.field) == ("Node", field)


# ---- Peers ---------------------------------------------------------------------------------


def test_peers_configmap_round_trip() -> None:
    peers = [
        Peer(cell="alpha", name="beta", id=2, address="10.0.0.2:7443"),
        Peer(
            cell="alpha",
            name="gamma",
            id=3,
            address="mesh.gamma.example:443",
            tls_server_name="meshapi.gamma",
            export=False,
        ),
    ]
    cm = peers_configmap("cellmesh", "alpha", peers)
    assert cm["metadata"]["name"] == PEERS_CONFIGMAP == "cellmesh-peers"
    assert json.loads(cm["data"]["beta"]) == {
        "id": 2,
        "address": "10.0.0.2:7443",
        "tls_server_name": None,
        "watch": True,
        "export": True,
    }
    assert peers_from_configmap(cm, config=CONFIG) == peers
    with pytest.raises(ValueError, match="peer of cell 'alpha', not 'beta'"):
        peers_configmap("cellmesh", "beta", peers)


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        pytest.param("{", "data['beta']", id="not-json"),
        pytest.param("[1]", "data['beta']", id="not-object"),
        pytest.param('{"id": 2}', "data['beta'].address", id="no-address"),
        pytest.param('{"id": 1, "address": "h:1"}', "data['beta'].id", id="own-id"),
        pytest.param('{"id": 2, "address": "h:1", "colour": 1}', "data['beta']", id="unknown"),
        pytest.param('{"id": 2, "address": "h:99999"}', "data['beta'].address", id="bad-port"),
    ],
)
def test_malformed_peers_configmap(entry: str, field: str) -> None:
    cm = peers_configmap("cellmesh", "alpha", [])
    cm = copy.deepcopy(cm)
    cm["data"] = {"beta": entry}
    with pytest.raises(KubeObjectError) as e:
        peers_from_configmap(cm, config=CONFIG)
    assert (e.value.kind, e.value.ref, e.value.field) == (
        "ConfigMap",
        "cellmesh/cellmesh-peers",
        field,
    )
