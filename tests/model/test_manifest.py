"""Kubernetes Service manifests -> Service records; every error names source and field path."""

from __future__ import annotations

import copy
from ipaddress import ip_address
from typing import Any

import pytest

from meshcore.model import (
    Affinity,
    ManifestError,
    is_service_manifest,
    load_manifests,
    service_from_manifest,
    service_ref_from_manifest,
)
from meshcore.model.manifest import check_annotation_values, load_documents
from meshcore.model.names import shown

BASE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {
        "name": "cart",
        "namespace": "shop",
        "annotations": {"service.cilium.io/global": "true", "service.cilium.io/affinity": "local"},
    },
    "spec": {
        "clusterIP": "10.96.0.10",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
    },
}


def doc(*, metadata: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """BASE with metadata fields and spec fields replaced (``None`` deletes a field)."""
    out = copy.deepcopy(BASE)
    for section, changes in (("metadata", metadata or {}), ("spec", spec)):
        for field, value in changes.items():
            if value is None:
                out[section].pop(field, None)
            else:
                out[section][field] = value
    return out


def frontends(manifest: dict[str, Any]) -> list[tuple[str, str, int, str]]:
    service = service_from_manifest(manifest, cell="east", source="svc.yaml")
    return [(f.name, str(f.vip), f.port, f.protocol) for f in service.frontends]


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        pytest.param(BASE, [("http", "10.96.0.10", 80, "TCP")], id="cluster-ip"),
        pytest.param(
            doc(
                clusterIPs=["10.96.0.10", "fd00:96::a"],
                ports=[
                    {"name": "http", "port": 80},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                ],
            ),
            [
                ("http", "10.96.0.10", 80, "TCP"),
                ("dns", "10.96.0.10", 53, "UDP"),
                ("http", "fd00:96::a", 80, "TCP"),
                ("dns", "fd00:96::a", 53, "UDP"),
            ],
            id="dual-stack-cluster-ips-times-ports",
        ),
        pytest.param(
            doc(clusterIP=None, clusterIPs=["fd00:96::a"]),
            [("http", "fd00:96::a", 80, "TCP")],
            id="cluster-ips-only",
        ),
        pytest.param(doc(clusterIP="None"), [], id="headless"),
        pytest.param(
            doc(clusterIP="None", clusterIPs=["None"], ports=None), [], id="headless-no-ports"
        ),
        pytest.param(doc(clusterIP=None), [], id="no-ip-allocated"),
        pytest.param(doc(clusterIP=""), [], id="empty-cluster-ip"),
        pytest.param(
            doc(type="ExternalName", externalName="db.example", clusterIP=None), [], id="external"
        ),
        pytest.param(
            doc(ports=[{"port": 443}]), [("", "10.96.0.10", 443, "TCP")], id="unnamed-single-port"
        ),
        pytest.param(
            doc(ports=[{"port": 53, "protocol": "UDP", "name": "dns"}]),
            [("dns", "10.96.0.10", 53, "UDP")],
            id="udp",
        ),
    ],
)
def test_frontends(manifest: dict[str, Any], expected: list[tuple[str, str, int, str]]) -> None:
    assert frontends(manifest) == expected


def test_service_fields() -> None:
    service = service_from_manifest(BASE, cell="east", source="svc.yaml")
    assert service.key() == "cellmesh/v1/services/east/shop/cart"
    assert (service.global_, service.shared, service.affinity) == (True, True, Affinity.LOCAL)
    assert service.warnings == []
    assert service.frontends[0].vip == ip_address("10.96.0.10")


@pytest.mark.parametrize(
    ("metadata", "namespace", "global_", "warnings"),
    [
        pytest.param({"namespace": None}, "default", True, 0, id="default-namespace"),
        pytest.param({"annotations": None}, "shop", False, 0, id="no-annotations"),
        pytest.param(
            {"annotations": {"service.cilium.io/global": "sure"}}, "shop", False, 1, id="warning"
        ),
    ],
)
def test_metadata(metadata: dict[str, Any], namespace: str, global_: bool, warnings: int) -> None:
    service = service_from_manifest(doc(metadata=metadata), cell="east")
    assert (service.namespace, service.global_, len(service.warnings)) == (
        namespace,
        global_,
        warnings,
    )


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        pytest.param(
            doc(ports=[{"name": "a", "port": 80}, {"name": "b", "port": 70000}]),
            "svc.yaml: spec.ports[1].port: 70000 is not a valid port (1-65535)",
            id="bad-port-with-path",
        ),
        pytest.param(
            doc(ports=[{"port": "80"}]),
            "svc.yaml: spec.ports[0].port: '80' is not a valid port (1-65535)",
            id="port-string",
        ),
        pytest.param(
            doc(ports=[{"port": True}]),
            "svc.yaml: spec.ports[0].port: True is not a valid port (1-65535)",
            id="port-bool",
        ),
        pytest.param(doc(ports=[{"name": "x"}]), "spec.ports[0].port: required", id="no-port"),
        pytest.param(
            doc(ports=[{"port": 80, "protocol": "SCTP"}]),
            "svc.yaml: spec.ports[0].protocol: SCTP is not supported (TCP or UDP)",
            id="sctp",
        ),
        pytest.param(
            doc(ports=[{"port": 80, "protocol": "tcp"}]),
            "spec.ports[0].protocol: 'tcp' is not a valid protocol (TCP or UDP)",
            id="lowercase-protocol",
        ),
        pytest.param(
            doc(ports=[{"port": 80, "name": "Web"}]),
            "spec.ports[0].name: 'Web' is not a valid DNS-1123 label",
            id="bad-port-name",
        ),
        pytest.param(
            doc(ports=[{"port": 80, "name": "a"}, {"port": 81}]),
            "spec.ports[1].name: required when a service has several ports",
            id="several-ports-need-names",
        ),
        pytest.param(
            doc(ports=[{"port": 80, "name": "a"}, {"port": 81, "name": "a"}]),
            "spec.ports[1].name: duplicate name 'a' (also spec.ports[0])",
            id="duplicate-port-name",
        ),
        pytest.param(
            doc(ports=[{"port": 80, "name": "a"}, {"port": 80, "name": "b"}]),
            "spec.ports[1]: duplicate port 80/TCP (also spec.ports[0])",
            id="duplicate-port",
        ),
        pytest.param(doc(ports=[80]), "spec.ports[0]: expected a mapping, got a number", id="int"),
        pytest.param(doc(ports={"port": 80}), "spec.ports: expected a list", id="ports-mapping"),
        pytest.param(doc(ports=None), "spec.ports: required", id="vip-without-ports"),
        pytest.param(
            doc(clusterIPs=["10.96.0.11"]),
            "spec.clusterIPs[0]: '10.96.0.11' must equal spec.clusterIP '10.96.0.10'",
            id="cluster-ips-disagree",
        ),
        pytest.param(
            doc(clusterIP=None, clusterIPs=["10.96.0.10", "10.96.0.300"]),
            "spec.clusterIPs[1]: '10.96.0.300' is not an IPv4 or IPv6 address",
            id="bad-second-cluster-ip",
        ),
        pytest.param(
            doc(clusterIP="10.96.0.1/32"),
            "spec.clusterIP: '10.96.0.1/32' is not an IPv4 or IPv6 address",
            id="cidr-as-cluster-ip",
        ),
        pytest.param(
            doc(clusterIP=None, clusterIPs=["10.96.0.10", "10.96.0.11"]),
            "spec.clusterIPs: a dual-stack service has one IPv4 and one IPv6 address",
            id="same-family-twice",
        ),
        pytest.param(
            doc(clusterIP=None, clusterIPs=["None", "10.96.0.1"]),
            "spec.clusterIPs: 'None' (headless) cannot be mixed",
            id="headless-mixed",
        ),
        pytest.param(doc(clusterIP=10), "spec.clusterIP: expected a string", id="ip-number"),
        pytest.param(
            doc(metadata={"name": None}), "svc.yaml: metadata.name: required", id="noname"
        ),
        pytest.param(
            doc(metadata={"name": "Cart"}),
            "metadata.name: 'Cart' is not a valid DNS-1123 label",
            id="bad-name",
        ),
        pytest.param(
            doc(metadata={"namespace": "n" * 64}), "metadata.namespace: 'nnn", id="bad-namespace"
        ),
        pytest.param(
            doc(metadata={"annotations": {"service.cilium.io/global": True}}),
            "metadata.annotations['service.cilium.io/global']: must be a string, got a boolean "
            '(quote it: "true")',
            id="unquoted-annotation",
        ),
        pytest.param(
            {**BASE, "kind": "Deployment"}, "svc.yaml: kind: expected 'Service'", id="kind"
        ),
        pytest.param(
            {**BASE, "apiVersion": "apps/v1"}, "apiVersion: expected 'v1', got 'apps/v1'", id="api"
        ),
        pytest.param({**BASE, "metadata": ["x"]}, "metadata: expected a mapping", id="metadata"),
        pytest.param({**BASE, "spec": "x"}, "spec: expected a mapping, got a string", id="spec"),
    ],
)
def test_manifest_errors(manifest: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError) as info:
        service_from_manifest(manifest, cell="east", source="svc.yaml")
    assert message in str(info.value)
    assert info.value.source == "svc.yaml"


def test_manifest_error_path_attribute() -> None:
    with pytest.raises(ManifestError) as info:
        service_from_manifest(doc(ports=[{"port": 0}]), cell="east", source="svc.yaml")
    assert (info.value.path, info.value.line) == ("spec.ports[0].port", None)


def test_bad_cell_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError, match="not a valid cell name"):
        service_from_manifest(BASE, cell="East")


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        pytest.param(BASE, ("shop", "cart"), id="namespaced"),
        pytest.param(doc(metadata={"namespace": None}), ("default", "cart"), id="default-ns"),
    ],
)
def test_service_ref(manifest: dict[str, Any], expected: tuple[str, str]) -> None:
    assert service_ref_from_manifest(manifest, source="svc.yaml") == expected


def test_is_service_manifest() -> None:
    assert is_service_manifest(BASE)
    assert not is_service_manifest({**BASE, "kind": "Deployment"})


MULTI = """\
# a comment-only first document
---
apiVersion: v1
kind: Service
metadata: {name: a}
---
---
apiVersion: v1
kind: Service
metadata: {name: b}
...
"""


@pytest.mark.parametrize(
    ("text", "names"),
    [
        pytest.param(MULTI, ["a", "b"], id="multi-document-skips-empty"),
        pytest.param("", [], id="empty-text"),
        pytest.param("kind: Service\nmetadata:\n  name: x\n", ["x"], id="single"),
    ],
)
def test_load_manifests(text: str, names: list[str]) -> None:
    docs = load_manifests(text, source="svc.yaml")
    assert [d["metadata"]["name"] for d in docs] == names


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        pytest.param(
            "kind: Service\n---\n- a\n- b\n",
            "svc.yaml: line 3: document 2 is a list, not a mapping",
            3,
            id="list-document",
        ),
        pytest.param(
            "just text\n", "svc.yaml: line 1: document 1 is a string, not a mapping", 1, id="str"
        ),
        pytest.param(
            "kind: Service\nmetadata:\n  name: x\n   bad: indent\n",
            "svc.yaml: line 4: invalid YAML: mapping values are not allowed here",
            4,
            id="yaml-syntax",
        ),
        pytest.param("a: [1, 2\nb: 3\n", "svc.yaml: line 2: invalid YAML", 2, id="unclosed-flow"),
        pytest.param(
            "a: !!python/object:os.system x\n",
            "svc.yaml: line 1: invalid YAML: could not determine a constructor",
            1,
            id="unsafe-tag",
        ),
    ],
)
def test_load_manifests_errors(text: str, message: str, line: int) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifests(text, source="svc.yaml")
    assert str(info.value).startswith(message)
    assert info.value.line == line


# --- aliases, bounded echoes, strict annotation values (issue 11, #9) ----------------------------


def laughs(levels: int, width: int = 9) -> str:
    lines = ["l0: &l0 [" + ",".join(['"lol"'] * width) + "]"]
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join([*lines, f"kind: *l{levels - 1}", ""])


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        pytest.param(
            laughs(9),
            "svc.yaml: line 1: document 1: YAML aliases expand it to more than 100000 nodes",
            1,
            id="billion-laughs",
        ),
        pytest.param(
            "kind: Service\n---\n" + laughs(6),
            "svc.yaml: line 3: document 2: YAML aliases expand",
            3,
            id="second-document",
        ),
        pytest.param(
            "a: &a [1, *a]\n",
            "svc.yaml: line 1: document 1: an alias refers to its own anchor",
            1,
            id="recursive-alias",
        ),
        pytest.param(
            "a: &a {b: *a}\n",
            "svc.yaml: line 1: document 1: an alias refers to its own anchor",
            1,
            id="recursive-mapping",
        ),
    ],
)
def test_aliases_that_expand_beyond_the_bound_are_refused(
    text: str, message: str, line: int
) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifests(text, source="svc.yaml")
    assert str(info.value).startswith(message)
    assert info.value.line == line


def test_aliases_within_the_bound_are_fine() -> None:
    text = "ports: &p [{name: http, port: 80}]\nother: *p\nmore: [*p, *p, *p]\n"
    [doc] = load_manifests(text, source="svc.yaml")
    assert doc["more"] == [doc["ports"]] * 3
    assert len(load_manifests(laughs(4), source="svc.yaml")) == 1  # 2 * 9**4 strings: fine


def test_an_integer_past_the_digit_limit_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError, match=r"svc\.yaml: invalid YAML: Exceeds the limit"):
        load_manifests("port: " + "1" * 5000 + "\n", source="svc.yaml")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("x" * 10_000_000, id="long-string"),
        pytest.param(["a" * 1000] * 100_000, id="long-list"),
        pytest.param({str(i): "v" * 1000 for i in range(10_000)}, id="big-mapping"),
        pytest.param(10**5000, id="huge-int"),
    ],
)
def test_shown_is_bounded_for_any_value(value: object) -> None:
    assert len(shown(value)) <= 64
    assert len(shown(value, 200)) <= 200


def test_shown_does_not_expand_shared_values() -> None:
    value: list[Any] = ["lol"] * 9
    for _ in range(8):
        value = [value] * 9  # 9**9 strings if walked whole
    assert shown(value).startswith("[[[[...], [...]")
    assert len(shown(value)) <= 64


def test_unknown_annotation_values_name_the_document_key_value_and_allowed() -> None:
    text = (
        "kind: ConfigMap\n---\napiVersion: v1\nkind: Service\n"
        "metadata:\n  name: echo\n  annotations:\n"
        "    service.cilium.io/global: 'True '\n"  # accepted: trimmed, case-insensitive
        "    service.cilium.io/affinity: nearest\n"
    )
    _, doc = load_documents(text, source="svc.yaml")
    with pytest.raises(ManifestError) as info:
        check_annotation_values(doc, source="svc.yaml")
    assert str(info.value) == (
        "svc.yaml: line 3: document 2 (Service default/echo): "
        "metadata.annotations['service.cilium.io/affinity']: unknown value 'nearest' "
        "(allowed: 'local', 'remote', 'none')"
    )
    fine = load_documents(text.replace("nearest", "remote"), source="svc.yaml")[1]
    check_annotation_values(fine, source="svc.yaml")
