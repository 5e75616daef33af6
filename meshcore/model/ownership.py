"""Checks of a record against the cell that serves it: a peer may only speak for itself.

``decode_record`` checks a record alone (fields in range, body matches key). A record from a peer
must also belong to that peer: its cell is the peer's name, its identities carry the peer's cell
id, and its addresses lie inside the peer's CIDRs (``CellConfig``). An agent runs
``check_peer_config`` once per connection and ``check_record_owner`` on every record it reads
from a peer, and drops (and counts) what fails; ``check_cells_distinct`` refuses a peer that does
not fit the rest of the mesh (the rule is ``cellfit``, shared with ``meshctl connect``). All
raise ``RecordError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from meshcore.model.cellfit import ClashKind, find_cell_clash
from meshcore.model.errors import RecordError
from meshcore.model.records import (
    CellConfig,
    Endpoint,
    Identity,
    IpIdentity,
    Node,
    Peer,
    Record,
    check_identity_cell,
)

__all__ = ["check_cells_distinct", "check_peer_config", "check_record_owner"]


def check_peer_config(config: CellConfig, peer: Peer) -> None:
    """The cell config a peer serves must carry the name and id it was connected with."""
    if config.name != peer.name:
        raise RecordError(
            config.key(), f"peer {peer.name!r} serves the config of cell {config.name!r}"
        )
    if config.id != peer.id:
        raise RecordError(
            config.key(), f"peer {peer.name!r} has id {config.id}, but was connected as {peer.id}"
        )


def check_cells_distinct(config: CellConfig, other: CellConfig) -> None:
    """Two cells of one mesh must fit (`cellfit.find_cell_clash`): distinct names and ids, pod
    and node CIDRs that do not overlap. The agent runs it for every connected peer."""
    clash = find_cell_clash(config, other)
    if clash is None:
        return
    if clash.kind is ClashKind.NAME:
        reason = f"cell name {config.name!r} is already used by another cell of the mesh"
    elif clash.kind is ClashKind.ID:
        reason = f"cell {config.name!r} has id {config.id}, already used by {other.name!r}"
    else:
        theirs = (
            str(clash.theirs)
            if clash.theirs_kind == clash.mine_kind
            else f"{clash.theirs_kind} CIDR {clash.theirs}"
        )
        reason = (
            f"cell {config.name!r} {clash.mine_kind} CIDR {clash.mine} overlaps {theirs} "
            f"of {other.name!r}"
        )
    raise RecordError(config.key(), reason)


def _inside(address: IPv4Address | IPv6Address, cidrs: Iterable[IPv4Network | IPv6Network]) -> bool:
    return any(address.version == cidr.version and address in cidr for cidr in cidrs)


def _within(network: IPv4Network | IPv6Network, cidrs: Iterable[IPv4Network | IPv6Network]) -> bool:
    return any(
        network.version == cidr.version and network.subnet_of(cidr)  # type: ignore[arg-type]
        for cidr in cidrs
    )


def check_record_owner(record: Record, config: CellConfig) -> None:
    """``record`` belongs to the cell described by ``config``.

    Endpoint and ip-identity addresses must lie in the cell's pod or node CIDRs (host-network
    pods use node addresses); node pod CIDRs in its pod CIDRs; node addresses in its node CIDRs
    when the cell declares any.
    """
    if record.cell != config.name:
        raise RecordError(
            record.key(), f"cell {config.name!r} serves a record of cell {record.cell!r}"
        )
    owned = [*config.pod_cidrs, *config.node_cidrs]
    if isinstance(record, CellConfig):
        if record.id != config.id:
            raise RecordError(record.key(), f"cell id {record.id} is not {config.id}")
    elif isinstance(record, Identity):
        check_identity_cell(record, config.id)
    elif isinstance(record, Endpoint):
        if not _inside(record.address, owned):
            raise RecordError(
                record.key(), f"endpoint address {record.address} is outside the cell's CIDRs"
            )
    elif isinstance(record, IpIdentity):
        if not _inside(record.ip, owned):
            raise RecordError(record.key(), f"ip {record.ip} is outside the cell's CIDRs")
    elif isinstance(record, Node):
        for cidr in record.pod_cidrs:
            if not _within(cidr, config.pod_cidrs):
                raise RecordError(
                    record.key(), f"node pod CIDR {cidr} is outside the cell's pod CIDRs"
                )
        if config.node_cidrs:
            for address in record.addresses:
                if not _inside(address, config.node_cidrs):
                    raise RecordError(
                        record.key(), f"node address {address} is outside the cell's node CIDRs"
                    )
