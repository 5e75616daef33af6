"""Record validation: names, ids, addresses, ports; identity bit encoding; immutability."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from meshcore.model import (
    Affinity,
    CellConfig,
    Endpoint,
    Heartbeat,
    Identity,
    IpIdentity,
    Kind,
    Node,
    Peer,
    RecordError,
    Service,
    SyncCanary,
    check_identity_cell,
    identity_cell_id,
    make_identity_id,
)

CELL = {"name": "east", "id": 7, "pod_cidrs": ["10.7.0.0/16"]}
HEARTBEAT = {"cell": "east", "timestamp": 1.5, "sequence": 0}
PEER = {"cell": "east", "name": "west", "id": 9, "address": "10.0.0.1:2379"}
NODE = {"cell": "east", "name": "n1", "addresses": ["192.168.0.1"]}
SERVICE = {
    "cell": "east",
    "namespace": "shop",
    "name": "cart",
    "frontends": [{"vip": "10.96.0.1", "port": 80}],
    "global": True,
    "shared": True,
    "affinity": "none",
}
ENDPOINT = {
    "cell": "east",
    "namespace": "shop",
    "service": "cart",
    "address": "10.7.0.5",
    "ports": [{"port": 8080}],
}
IDENTITY = {"cell": "east", "id": 7 << 16 | 300, "labels": {"k8s:app": "cart"}}
IP_IDENTITY = {"cell": "east", "ip": "10.7.0.5", "identity": 1}
CANARY = {"cell": "east", "kind": "endpoints", "timestamp": 0}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


@pytest.mark.parametrize(
    ("model", "data"),
    [
        pytest.param(CellConfig, with_(CELL, name="a"), id="cell-name-one-char"),
        pytest.param(CellConfig, with_(CELL, name="a" * 32), id="cell-name-32-chars"),
        pytest.param(CellConfig, with_(CELL, name="0-east-1"), id="cell-name-digits-dash"),
        pytest.param(CellConfig, with_(CELL, id=1), id="cell-id-1"),
        pytest.param(CellConfig, with_(CELL, id=255), id="cell-id-255"),
        pytest.param(CellConfig, with_(CELL, pod_cidrs=["fd00::/64"]), id="cell-v6-cidr"),
        pytest.param(Peer, with_(PEER, address="[fd00::1]:443"), id="peer-v6-address"),
        pytest.param(Peer, with_(PEER, address="api.west.example:1"), id="peer-dns-port-1"),
        pytest.param(Peer, with_(PEER, address="API.West:65535"), id="peer-dns-mixed-case"),
        pytest.param(Peer, with_(PEER, tls_server_name="meshapi.west"), id="peer-server-name"),
        pytest.param(Node, with_(NODE, name="ip-10-0-0-1.ec2.internal"), id="node-subdomain"),
        pytest.param(Node, with_(NODE, name="n" * 253), id="node-name-253"),
        pytest.param(Service, with_(SERVICE, frontends=[]), id="service-headless"),
        pytest.param(Service, with_(SERVICE, namespace="n" * 63), id="namespace-63"),
        pytest.param(Endpoint, with_(ENDPOINT, node=""), id="endpoint-unknown-node"),
        pytest.param(Endpoint, with_(ENDPOINT, address="fd00::5"), id="endpoint-v6"),
        pytest.param(Identity, with_(IDENTITY, id=2**24 - 1), id="identity-max"),
        pytest.param(Identity, with_(IDENTITY, labels={}), id="identity-no-labels"),
        pytest.param(SyncCanary, with_(CANARY, kind="cells"), id="canary-cells"),
    ],
)
def test_valid(model: type[BaseModel], data: dict[str, Any]) -> None:
    model.model_validate(data)
    model.model_validate(data, strict=False)


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        pytest.param(CellConfig, with_(CELL, name="East"), "not a valid cell name", id="upper"),
        pytest.param(CellConfig, with_(CELL, name="a" * 33), "not a valid cell name", id="33"),
        pytest.param(CellConfig, with_(CELL, name="-east"), "not a valid cell name", id="lead-"),
        pytest.param(CellConfig, with_(CELL, name="east-"), "not a valid cell name", id="trail-"),
        pytest.param(CellConfig, with_(CELL, name="ea_st"), "not a valid cell name", id="under"),
        pytest.param(CellConfig, with_(CELL, name=""), "not a valid cell name", id="empty-name"),
        pytest.param(CellConfig, with_(CELL, name="east\n"), "not a valid cell name", id="nl"),
        pytest.param(CellConfig, with_(CELL, id=0), "greater than or equal to 1", id="id-0"),
        pytest.param(CellConfig, with_(CELL, id=256), "less than or equal to 255", id="id-256"),
        pytest.param(CellConfig, with_(CELL, pod_cidrs=[]), "at least 1", id="no-pod-cidrs"),
        pytest.param(CellConfig, with_(CELL, pod_cidrs=["10.7.0.1/16"]), "host bits", id="host"),
        pytest.param(CellConfig, with_(CELL, pod_cidrs=["10.7.0.0/33"]), "not a valid", id="/33"),
        pytest.param(CellConfig, with_(CELL, capabilities=[""]), "at least 1", id="empty-cap"),
        pytest.param(Heartbeat, with_(HEARTBEAT, sequence=-1), "greater than", id="hb-seq"),
        pytest.param(Heartbeat, with_(HEARTBEAT, timestamp=-1.0), "greater than", id="hb-neg"),
        pytest.param(Heartbeat, with_(HEARTBEAT, timestamp=float("inf")), "finite", id="hb-inf"),
        pytest.param(Peer, with_(PEER, name="east"), "its own peer", id="peer-self"),
        pytest.param(Peer, with_(PEER, id=0), "greater than or equal to 1", id="peer-id-0"),
        pytest.param(Peer, with_(PEER, address="10.0.0.1"), "host:port", id="peer-no-port"),
        pytest.param(Peer, with_(PEER, address="10.0.0.1:0"), "host:port", id="peer-port-0"),
        pytest.param(Peer, with_(PEER, address="h:70000"), "host:port", id="peer-port-70000"),
        pytest.param(Peer, with_(PEER, address="h:+80"), "host:port", id="peer-port-sign"),
        pytest.param(Peer, with_(PEER, address=":80"), "not a host name", id="peer-no-host"),
        pytest.param(Peer, with_(PEER, address="fd00::1:80"), "write IPv6 as", id="peer-bare-v6"),
        pytest.param(Peer, with_(PEER, address="[zz::1]:80"), "not an IPv6", id="peer-bad-v6"),
        pytest.param(Peer, with_(PEER, address="a b:80"), "not a host name", id="peer-space"),
        pytest.param(Peer, with_(PEER, tls_server_name="A B"), "subdomain", id="peer-sni"),
        pytest.param(Node, with_(NODE, addresses=[]), "at least 1", id="node-no-address"),
        pytest.param(Node, with_(NODE, addresses=["300.0.0.1"]), "not an IPv4", id="node-bad-ip"),
        pytest.param(Node, with_(NODE, addresses=[167772161]), "must be a string", id="ip-int"),
        pytest.param(Node, with_(NODE, addresses=["fe80::1%eth0"]), "zone id", id="node-zone"),
        pytest.param(Node, with_(NODE, name="Node1"), "subdomain", id="node-upper"),
        pytest.param(Node, with_(NODE, name="n" * 254), "subdomain", id="node-254"),
        pytest.param(Service, with_(SERVICE, namespace="n" * 64), "DNS-1123 label", id="ns-64"),
        pytest.param(Service, with_(SERVICE, name="my_svc"), "DNS-1123 label", id="svc-under"),
        pytest.param(
            Service,
            with_(SERVICE, frontends=[{"vip": "10.96.0.1", "port": 0}]),
            "greater than or equal to 1",
            id="frontend-port-0",
        ),
        pytest.param(
            Service,
            with_(SERVICE, frontends=[{"vip": "10.96.0.1", "port": 80, "protocol": "SCTP"}]),
            "'TCP' or 'UDP'",
            id="frontend-sctp",
        ),
        pytest.param(
            Service,
            with_(SERVICE, frontends=[{"vip": "10.96.0.1", "port": 80, "name": "Http"}]),
            "DNS-1123 label",
            id="frontend-port-name",
        ),
        pytest.param(
            Service,
            with_(SERVICE, frontends=[{"vip": "10.96.0.1", "port": 80}] * 2),
            "duplicate frontend 10.96.0.1:80/TCP",
            id="frontend-duplicate",
        ),
        pytest.param(Service, with_(SERVICE, affinity="closest"), "'local'", id="affinity"),
        pytest.param(Endpoint, with_(ENDPOINT, ports=[]), "at least 1", id="ep-no-ports"),
        pytest.param(
            Endpoint, with_(ENDPOINT, ports=[{"port": 65536}]), "less than", id="ep-port-65536"
        ),
        pytest.param(
            Endpoint,
            with_(ENDPOINT, ports=[{"port": 80}, {"port": 80, "name": "x"}]),
            "duplicate port 80/TCP",
            id="ep-duplicate-port",
        ),
        pytest.param(Endpoint, with_(ENDPOINT, node="Node_1"), "subdomain", id="ep-node"),
        pytest.param(Endpoint, with_(ENDPOINT, updated_at=-1), "greater than", id="ep-updated"),
        pytest.param(Endpoint, with_(ENDPOINT, address="10.7.0.0/24"), "not an IPv4", id="ep-net"),
        pytest.param(Identity, with_(IDENTITY, id=0), "greater than or equal to 1", id="id-0"),
        pytest.param(Identity, with_(IDENTITY, id=2**24), "less than or equal", id="id-2**24"),
        pytest.param(Identity, with_(IDENTITY, labels={"": "x"}), "at least 1", id="label-key"),
        pytest.param(IpIdentity, with_(IP_IDENTITY, identity=0), "greater than", id="ipid-0"),
        pytest.param(SyncCanary, with_(CANARY, kind="synced"), "itself", id="canary-synced"),
        pytest.param(SyncCanary, with_(CANARY, kind="pods"), "Input should be", id="canary-kind"),
    ],
)
def test_invalid(model: type[BaseModel], data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        model.model_validate(data)


@pytest.mark.parametrize(
    ("global_", "shared", "exported"),
    [
        pytest.param(True, True, True, id="global-shared"),
        pytest.param(True, False, False, id="global-not-shared"),
        pytest.param(False, True, False, id="local-shared"),
        pytest.param(False, False, False, id="local"),
    ],
)
def test_service_exported(global_: bool, shared: bool, exported: bool) -> None:
    service = Service.model_validate(with_(SERVICE, **{"global": global_, "shared": shared}))
    assert service.exported is exported


def test_service_global_by_alias_and_by_name() -> None:
    by_alias = Service.model_validate(SERVICE)
    by_name = Service(
        cell="east",
        namespace="shop",
        name="cart",
        frontends=[{"vip": "10.96.0.1", "port": 80}],
        global_=True,
        shared=True,
        affinity=Affinity.NONE,
    )
    assert by_alias == by_name
    assert by_name.model_dump()["global"] is True


def test_records_are_frozen_and_ignore_extra_fields() -> None:
    node = Node.model_validate(with_(NODE, zone="eu-1", future={"x": 1}))
    assert not hasattr(node, "zone")
    with pytest.raises(ValidationError, match="frozen"):
        node.name = "other"  # type: ignore[misc]


def test_cell_config_cell_is_its_name() -> None:
    assert CellConfig.model_validate(CELL).cell == "east"


@pytest.mark.parametrize(
    ("cell_id", "local_id", "expected"),
    [
        pytest.param(1, 1, 0x01_0001, id="smallest"),
        pytest.param(7, 300, 0x07_012C, id="typical"),
        pytest.param(255, 0xFFFF, 0xFF_FFFF, id="largest"),
    ],
)
def test_identity_encoding(cell_id: int, local_id: int, expected: int) -> None:
    identity_id = make_identity_id(cell_id, local_id)
    assert identity_id == expected
    assert identity_cell_id(identity_id) == cell_id
    assert identity_id & 0xFFFF == local_id


@pytest.mark.parametrize(
    ("cell_id", "local_id", "message"),
    [
        pytest.param(0, 1, "cell id 0", id="cell-0"),
        pytest.param(256, 1, "cell id 256", id="cell-256"),
        pytest.param(1, 0, "local identity 0", id="local-0"),
        pytest.param(1, 0x10000, "local identity 65536", id="local-too-big"),
    ],
)
def test_identity_encoding_rejects(cell_id: int, local_id: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_identity_id(cell_id, local_id)


@pytest.mark.parametrize(
    ("identity_id", "cell_id", "ok"),
    [
        pytest.param(make_identity_id(7, 300), 7, True, id="own-cell"),
        pytest.param(make_identity_id(8, 300), 7, False, id="other-cell"),
        pytest.param(2, 7, False, id="reserved-world"),
    ],
)
def test_check_identity_cell(identity_id: int, cell_id: int, ok: bool) -> None:
    identity = Identity.model_validate(with_(IDENTITY, id=identity_id))
    if ok:
        check_identity_cell(identity, cell_id)
    else:
        with pytest.raises(RecordError, match=f"has id {cell_id}") as info:
            check_identity_cell(identity, cell_id)
        assert info.value.key == identity.key()


def test_every_kind_has_a_record_type() -> None:
    from meshcore.model import RECORD_TYPES

    assert set(RECORD_TYPES) == set(Kind)
