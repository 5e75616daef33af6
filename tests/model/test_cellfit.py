"""One rule for "two cells fit in one mesh" (`meshcore.model.cellfit`), used by the agent.

The agent's check (`check_cells_distinct`) is the full rule now: distinct names and ids, and no
overlap between any pod or node CIDR of one cell and any pod or node CIDR of the other -- the
same rule `meshctl connect` applies in its preflight (tests/meshctl/test_cells_fit_rule.py).
"""

from __future__ import annotations

import re
from ipaddress import ip_network

import pytest

from meshcore.model import (
    CellClash,
    CellConfig,
    ClashKind,
    Peer,
    RecordError,
    check_cells_distinct,
    find_cell_clash,
    find_peer_id_clash,
)

EAST = CellConfig(name="east", id=7, pod_cidrs=["10.7.0.0/16"], node_cidrs=["192.168.7.0/24"])


def west(**fields: object) -> CellConfig:
    body: dict[str, object] = {
        "name": "west",
        "id": 8,
        "pod_cidrs": ["10.8.0.0/16", "fd00:8::/48"],
        "node_cidrs": ["192.168.8.0/24"],
    }
    return CellConfig.model_validate(body | fields)


def cidr_clash(mine_kind: str, mine: str, theirs_kind: str, theirs: str) -> CellClash:
    return CellClash(ClashKind.CIDR, mine_kind, ip_network(mine), theirs_kind, ip_network(theirs))


CLASHES: dict[str, tuple[dict[str, object], CellClash | None]] = {
    "fits": ({}, None),
    "same-name": ({"name": "east", "id": 9}, CellClash(ClashKind.NAME)),
    "same-id": ({"id": 7}, CellClash(ClashKind.ID)),
    "pod-pod": (
        {"pod_cidrs": ["10.7.128.0/17"]},
        cidr_clash("pod", "10.7.0.0/16", "pod", "10.7.128.0/17"),
    ),
    "node-node": (
        {"node_cidrs": ["192.168.7.128/25"]},
        cidr_clash("node", "192.168.7.0/24", "node", "192.168.7.128/25"),
    ),
    "pod-node": (
        {"node_cidrs": ["10.7.1.0/24"]},
        cidr_clash("pod", "10.7.0.0/16", "node", "10.7.1.0/24"),
    ),
    "node-pod": (
        {"pod_cidrs": ["192.168.0.0/16"]},
        cidr_clash("node", "192.168.7.0/24", "pod", "192.168.0.0/16"),
    ),
    "other-family": ({"pod_cidrs": ["fd00:7::/48"]}, None),
}


@pytest.mark.parametrize("case", list(CLASHES))
def test_find_cell_clash(case: str) -> None:
    fields, clash = CLASHES[case]
    assert find_cell_clash(EAST, west(**fields)) == clash


REASONS = {
    "node-node": "cell 'east' node CIDR 192.168.7.0/24 overlaps 192.168.7.128/25 of 'west'",
    "pod-node": "cell 'east' pod CIDR 10.7.0.0/16 overlaps node CIDR 10.7.1.0/24 of 'west'",
    "node-pod": "cell 'east' node CIDR 192.168.7.0/24 overlaps pod CIDR 192.168.0.0/16 of 'west'",
    "same-name": "cell name 'east' is already used by another cell of the mesh",
}


@pytest.mark.parametrize("case", list(REASONS))
def test_the_agent_refuses_what_the_preflight_refuses(case: str) -> None:
    """Before the one rule, the agent checked ids and pod CIDRs only and let these through."""
    with pytest.raises(RecordError, match=re.escape(REASONS[case])):
        check_cells_distinct(EAST, west(**CLASHES[case][0]))


def test_find_peer_id_clash() -> None:
    peers = [
        Peer(cell="north", name="east", id=7, address="h:1"),  # east itself: no clash
        Peer(cell="north", name="south", id=9, address="h:2"),
    ]
    assert find_peer_id_clash(EAST, peers) is None
    clash = find_peer_id_clash(west(id=9), peers)
    assert clash is not None
    assert clash.name == "south"
