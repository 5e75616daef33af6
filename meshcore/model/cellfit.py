"""The one rule for "two cells fit together in one mesh" (pure).

Two cells fit when their names differ, their ids differ, and none of their pod or node CIDRs
overlap (pod/pod, node/node, and pod/node both ways: a remote address must route to one cell
only). `find_cell_clash` says why two cells do not fit, or None; `find_peer_id_clash` finds a
cell's id among the Peer records of another cell (ids must be unique in the whole mesh). The
callers word the refusal: `meshctl connect`'s preflight names the flag to change, the agent
(`ownership.check_cells_distinct`) refuses the peer's config with a `RecordError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network

from meshcore.model.records import CellConfig, Peer

__all__ = ["CellClash", "ClashKind", "Network", "find_cell_clash", "find_peer_id_clash"]

Network = IPv4Network | IPv6Network


class ClashKind(StrEnum):
    """Why two cells do not fit."""

    NAME = "name"  # the same cell name
    ID = "id"  # the same cell id
    CIDR = "cidr"  # a pod or node CIDR of one overlaps a pod or node CIDR of the other


@dataclass(frozen=True, slots=True)
class CellClash:
    """The first reason two cells do not fit; for CIDR, which of each cell's CIDRs overlap.

    `mine_kind` / `theirs_kind` are "pod" or "node"; `mine` belongs to the first cell given to
    `find_cell_clash`, `theirs` to the second.
    """

    kind: ClashKind
    mine_kind: str = ""
    mine: Network | None = None
    theirs_kind: str = ""
    theirs: Network | None = None


def _overlap(mine: Iterable[Network], theirs: Iterable[Network]) -> tuple[Network, Network] | None:
    theirs = list(theirs)
    for m in mine:
        for t in theirs:
            if m.version == t.version and m.overlaps(t):
                return m, t
    return None


def find_cell_clash(config: CellConfig, other: CellConfig) -> CellClash | None:
    """Why ``config`` and ``other`` cannot be cells of one mesh, or None when they fit.

    Checked in this order: name, id, then CIDRs (pod/pod, node/node, pod/node, node/pod).
    """
    if config.name == other.name:
        return CellClash(ClashKind.NAME)
    if config.id == other.id:
        return CellClash(ClashKind.ID)
    pairs = (
        ("pod", config.pod_cidrs, "pod", other.pod_cidrs),
        ("node", config.node_cidrs, "node", other.node_cidrs),
        ("pod", config.pod_cidrs, "node", other.node_cidrs),
        ("node", config.node_cidrs, "pod", other.pod_cidrs),
    )
    for mine_kind, mine, theirs_kind, theirs in pairs:
        clash = _overlap(mine, theirs)
        if clash is not None:
            return CellClash(ClashKind.CIDR, mine_kind, clash[0], theirs_kind, clash[1])
    return None


def find_peer_id_clash(config: CellConfig, peers: Iterable[Peer]) -> Peer | None:
    """A Peer record (of some other cell) for a different cell with ``config``'s id, or None."""
    for peer in peers:
        if peer.name != config.name and peer.id == config.id:
            return peer
    return None
