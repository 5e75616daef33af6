"""A peer may only speak for itself: cell, cell id, and addresses inside its CIDRs."""

from __future__ import annotations

import re

import pytest

from meshcore.model import (
    CellConfig,
    Endpoint,
    EndpointPort,
    Identity,
    IpIdentity,
    Kind,
    Node,
    Peer,
    Record,
    RecordError,
    check_cells_distinct,
    check_peer_config,
    check_record_owner,
    make_identity_id,
)
from tests.model.samples import CELL_CONFIG as EAST
from tests.model.samples import SAMPLES

NO_NODE_CIDRS = CellConfig(name="east", id=7, pod_cidrs=["10.7.0.0/16"])


def endpoint(address: str) -> Endpoint:
    return Endpoint(
        cell="east", namespace="shop", service="cart", address=address, ports=[EndpointPort(port=1)]
    )


@pytest.mark.parametrize("kind", list(Kind), ids=[k.value for k in Kind])
def test_own_samples_pass(kind: Kind) -> None:
    check_record_owner(SAMPLES[kind], EAST)


@pytest.mark.parametrize(
    ("record", "config", "reason"),
    [
        pytest.param(
            CellConfig(name="west", id=7, pod_cidrs=["10.7.0.0/16"]),
            EAST,
            "serves a record of cell 'west'",
            id="other-cell-config",
        ),
        pytest.param(
            CellConfig(name="east", id=8, pod_cidrs=["10.7.0.0/16"]),
            EAST,
            "cell id 8 is not 7",
            id="other-cell-id",
        ),
        pytest.param(
            Peer(cell="west", name="east", id=7, address="h:1"),
            EAST,
            "record of cell 'west'",
            id="foreign-peer",
        ),
        pytest.param(
            Identity(cell="east", id=make_identity_id(8, 1), labels={}),
            EAST,
            "carries cell id 8",
            id="identity-of-other-cell",
        ),
        pytest.param(endpoint("10.8.0.1"), EAST, "outside the cell's CIDRs", id="endpoint-out"),
        pytest.param(endpoint("fd00:8::1"), EAST, "outside", id="endpoint-v6-out"),
        pytest.param(
            IpIdentity(cell="east", ip="172.16.0.1", identity=1), EAST, "outside", id="ip-out"
        ),
        pytest.param(
            Node(cell="east", name="n", addresses=["192.168.7.1"], pod_cidrs=["10.0.0.0/8"]),
            EAST,
            "node pod CIDR 10.0.0.0/8 is outside",
            id="node-pod-cidr-too-wide",
        ),
        pytest.param(
            Node(cell="east", name="n", addresses=["192.168.8.1"]),
            EAST,
            "node address 192.168.8.1 is outside",
            id="node-address-out",
        ),
    ],
)
def test_foreign_records_rejected(record: Record, config: CellConfig, reason: str) -> None:
    with pytest.raises(RecordError, match=reason) as info:
        check_record_owner(record, config)
    assert info.value.key == record.key()


@pytest.mark.parametrize(
    ("record", "config"),
    [
        pytest.param(endpoint("192.168.7.20"), EAST, id="host-network-endpoint"),
        pytest.param(endpoint("10.7.255.255"), EAST, id="endpoint-edge-of-cidr"),
        pytest.param(
            Node(cell="east", name="n", addresses=["203.0.113.1"]),
            NO_NODE_CIDRS,
            id="node-address-unchecked-without-node-cidrs",
        ),
    ],
)
def test_own_records_accepted(record: Record, config: CellConfig) -> None:
    check_record_owner(record, config)


@pytest.mark.parametrize(
    ("peer", "reason"),
    [
        pytest.param(Peer(cell="west", name="east", id=7, address="h:1"), None, id="match"),
        pytest.param(
            Peer(cell="west", name="north", id=7, address="h:1"),
            "serves the config of cell 'east'",
            id="other-name",
        ),
        pytest.param(
            Peer(cell="west", name="east", id=9, address="h:1"),
            "has id 7, but was connected as 9",
            id="other-id",
        ),
    ],
)
def test_check_peer_config(peer: Peer, reason: str | None) -> None:
    if reason is None:
        check_peer_config(EAST, peer)
    else:
        with pytest.raises(RecordError, match=reason):
            check_peer_config(EAST, peer)


@pytest.mark.parametrize(
    ("other", "reason"),
    [
        pytest.param(
            CellConfig(name="west", id=8, pod_cidrs=["10.8.0.0/16", "fd00:8::/48"]), None, id="ok"
        ),
        pytest.param(
            CellConfig(name="west", id=7, pod_cidrs=["10.8.0.0/16"]),
            "cell 'east' has id 7, already used by 'west'",
            id="same-id",
        ),
        pytest.param(
            CellConfig(name="west", id=8, pod_cidrs=["10.7.128.0/17"]),
            "cell 'east' pod CIDR 10.7.0.0/16 overlaps 10.7.128.0/17 of 'west'",
            id="overlapping-pod-cidr",
        ),
    ],
)
def test_check_cells_distinct(other: CellConfig, reason: str | None) -> None:
    if reason is None:
        check_cells_distinct(NO_NODE_CIDRS, other)
    else:
        with pytest.raises(RecordError, match=re.escape(reason)):
            check_cells_distinct(NO_NODE_CIDRS, other)
