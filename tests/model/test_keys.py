"""Key paths: builders, kind detection, splitting, and the endpoint -> service mapping."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import ip_address

import pytest

from meshcore.model import (
    PREFIX,
    Kind,
    RecordError,
    cell_key,
    endpoint_key,
    endpoint_service_key,
    heartbeat_key,
    identity_key,
    ip_identity_key,
    kind_of_key,
    kind_prefix,
    node_key,
    parse_key,
    peer_key,
    service_endpoints_prefix,
    service_key,
    synced_key,
)


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        pytest.param(cell_key("east"), "cellmesh/v1/cells/east", id="cell"),
        pytest.param(heartbeat_key("east"), "cellmesh/v1/heartbeat/east", id="heartbeat"),
        pytest.param(peer_key("east", "west"), "cellmesh/v1/peers/east/west", id="peer"),
        pytest.param(node_key("east", "n1.x"), "cellmesh/v1/nodes/east/n1.x", id="node"),
        pytest.param(
            service_key("east", "shop", "cart"), "cellmesh/v1/services/east/shop/cart", id="service"
        ),
        pytest.param(
            endpoint_key("east", "shop", "cart", "10.0.0.1"),
            "cellmesh/v1/endpoints/east/shop/cart/10.0.0.1",
            id="endpoint-v4",
        ),
        pytest.param(
            endpoint_key("east", "shop", "cart", "FD00:0:0::0001"),
            "cellmesh/v1/endpoints/east/shop/cart/fd00::1",
            id="endpoint-v6-canonical",
        ),
        pytest.param(
            endpoint_key("east", "shop", "cart", ip_address("fd00::1")),
            "cellmesh/v1/endpoints/east/shop/cart/fd00::1",
            id="endpoint-address-object",
        ),
        pytest.param(identity_key("east", 458_796), "cellmesh/v1/identities/east/458796", id="id"),
        pytest.param(
            ip_identity_key("east", "10.0.0.9"), "cellmesh/v1/ipidentities/east/10.0.0.9", id="ip"
        ),
        pytest.param(
            synced_key("east", Kind.ENDPOINT), "cellmesh/v1/synced/east/endpoints", id="synced"
        ),
        pytest.param(
            service_endpoints_prefix("east", "shop", "cart"),
            "cellmesh/v1/endpoints/east/shop/cart/",
            id="service-endpoints-prefix",
        ),
    ],
)
def test_key_builders(built: str, expected: str) -> None:
    assert built == expected


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        pytest.param(lambda: cell_key(""), "cell ''", id="empty-cell"),
        pytest.param(lambda: peer_key("east", "a/b"), "peer 'a/b'", id="slash-in-peer"),
        pytest.param(lambda: service_key("east", "", "x"), "namespace ''", id="empty-namespace"),
        pytest.param(
            lambda: endpoint_key("east", "shop", "cart", "10.0.0.300"),
            "not an IP address",
            id="bad-address",
        ),
    ],
)
def test_key_builders_reject_bad_segments(build: Callable[[], str], reason: str) -> None:
    with pytest.raises(RecordError, match=reason):
        build()


@pytest.mark.parametrize("kind", list(Kind), ids=[k.name.lower() for k in Kind])
def test_kind_prefix_and_kind_of_key(kind: Kind) -> None:
    prefix = kind_prefix(kind)
    assert prefix == f"{PREFIX}{kind.value}/"
    assert kind_of_key(prefix + "east") is kind


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        pytest.param("", "does not start with", id="empty"),
        pytest.param("cellmesh/v2/cells/east", "does not start with", id="other-version"),
        pytest.param("cellmesh/v1/pods/east/x", "unknown record kind 'pods'", id="unknown-kind"),
        pytest.param("cellmesh/v1/cells", "no cells record", id="kind-only"),
        pytest.param("cellmesh/v1/cells/", "no cells record", id="kind-slash-only"),
    ],
)
def test_kind_of_key_rejects(key: str, reason: str) -> None:
    with pytest.raises(RecordError, match=reason) as info:
        kind_of_key(key)
    assert info.value.key == key
    assert str(info.value).startswith(f"bad record at {key}: ")


@pytest.mark.parametrize(
    ("key", "kind", "cell", "rest"),
    [
        pytest.param("cellmesh/v1/cells/east", Kind.CELL, "east", (), id="cell"),
        pytest.param(
            "cellmesh/v1/endpoints/east/shop/cart/fd00::1",
            Kind.ENDPOINT,
            "east",
            ("shop", "cart", "fd00::1"),
            id="endpoint",
        ),
        pytest.param(
            "cellmesh/v1/synced/east/services", Kind.SYNCED, "east", ("services",), id="synced"
        ),
    ],
)
def test_parse_key(key: str, kind: Kind, cell: str, rest: tuple[str, ...]) -> None:
    parts = parse_key(key)
    assert (parts.kind, parts.cell, parts.rest) == (kind, cell, rest)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        pytest.param("cellmesh/v1/cells/east/extra", "has the form", id="too-many"),
        pytest.param("cellmesh/v1/services/east/shop", "has the form", id="too-few"),
        pytest.param("cellmesh/v1/services/east//cart", "empty namespace", id="empty-segment"),
    ],
)
def test_parse_key_rejects(key: str, reason: str) -> None:
    with pytest.raises(RecordError, match=reason):
        parse_key(key)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param(
            "cellmesh/v1/endpoints/east/shop/cart/10.0.0.1",
            "cellmesh/v1/services/east/shop/cart",
            id="v4",
        ),
        pytest.param(
            "cellmesh/v1/endpoints/east/shop/cart/fd00::1",
            "cellmesh/v1/services/east/shop/cart",
            id="v6",
        ),
    ],
)
def test_endpoint_service_key(key: str, expected: str) -> None:
    assert endpoint_service_key(key) == expected


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("cellmesh/v1/services/east/shop/cart", id="service-key"),
        pytest.param("cellmesh/v1/endpoints/east/shop/cart/", id="no-address"),
        pytest.param("cellmesh/v1/endpoints/east/shop/10.0.0.1", id="no-service"),
        pytest.param("cellmesh/v1/endpoints/east/shop/cart/x/10.0.0.1", id="too-deep"),
        pytest.param("cellmesh/v1/endpoints/east//cart/10.0.0.1", id="empty-namespace"),
    ],
)
def test_endpoint_service_key_rejects(key: str) -> None:
    with pytest.raises(RecordError):
        endpoint_service_key(key)


def test_record_error_message_cuts_long_keys() -> None:
    error = RecordError("k" * 1000, "too long")
    assert error.key == "k" * 1000
    assert len(str(error)) < 300
    assert str(error).endswith("...: too long")
