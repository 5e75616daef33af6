"""Who may do what on a cell's meshapi (pure).

Authentication is the client certificate (verified by TLS against the mesh trust bundle); this
module turns the caller's `MeshIdentity` into a decision:

- own cell, role admin/agent/meshapi: watch the full view; admin writes anything of its cell;
  an agent writes only its own node's records (node, endpoints on that node, its status).
- another cell, role agent/peer, listed in this cell's connected peers with ``export`` (every
  bidirectional peer; the source of a unicast connection in its destination): watch the export
  view (read-only).
- anything else is refused with a reason that names what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from certs import MeshIdentity, Role
from meshapi.views import Item, ViewName
from meshcore.model import (
    AgentStatus,
    Endpoint,
    Kind,
    Node,
    Peer,
    Record,
    kind_of_key,
    peer_key,
)


class Denied(Exception):
    """The caller is authenticated but not allowed; the message says why."""


# The admin may write agent status too: to remove the report of a node that is gone for good.
ADMIN_WRITABLE = frozenset(
    {Kind.SERVICE, Kind.ENDPOINT, Kind.NODE, Kind.PEER, Kind.IDENTITY, Kind.IP_IDENTITY, Kind.AGENT}
)
AGENT_WRITABLE = frozenset({Kind.NODE, Kind.ENDPOINT, Kind.AGENT})


@dataclass(frozen=True)
class CellPolicy:
    cell: str
    trust_domain: str

    def _check_domain(self, who: MeshIdentity) -> None:
        if who.trust_domain != self.trust_domain:
            raise Denied(
                f"trust domain {who.trust_domain!r} is not this mesh's ({self.trust_domain!r})"
            )

    def watch_view(self, who: MeshIdentity, full: Mapping[str, Item]) -> ViewName:
        """The view `who` may watch, or Denied."""
        self._check_domain(who)
        if who.cell == self.cell:
            if who.role in (Role.ADMIN, Role.AGENT, Role.MESHAPI):
                return ViewName.FULL
            raise Denied(f"role {who.role} of cell {who.cell} may not watch")
        if who.role not in (Role.AGENT, Role.PEER):
            raise Denied(f"role {who.role} of cell {who.cell} may not use cell {self.cell}")
        item = full.get(peer_key(self.cell, who.cell))
        if item is None:
            raise Denied(
                f"cell {who.cell} is not a connected peer of cell {self.cell} "
                f"(connect it with `meshctl connect`)"
            )
        if isinstance(item.record, Peer) and not item.record.export:
            raise Denied(
                f"cell {self.cell} watches cell {who.cell} but does not export to it "
                f"(unicast: connect {who.cell} to {self.cell} with `meshctl connect`)"
            )
        return ViewName.EXPORT

    def check_admin(self, who: MeshIdentity) -> None:
        """Listing and manifests: the cell's own admin."""
        self._check_domain(who)
        if who.cell != self.cell or who.role is not Role.ADMIN:
            raise Denied(f"{who.role} of cell {who.cell} is not an admin of cell {self.cell}")

    def check_write(
        self, who: MeshIdentity, key: str, record: Record | None, current: Item | None
    ) -> None:
        """May `who` put `record` at key (record None: delete key, currently `current`)?"""
        self._check_domain(who)
        if who.cell != self.cell:
            raise Denied(f"cell {who.cell} is a peer of cell {self.cell}: peers are read-only")
        kind = kind_of_key(key)
        if who.role is Role.ADMIN:
            if kind not in ADMIN_WRITABLE:
                raise Denied(f"{kind} records are written by meshapi itself, not by clients")
            return
        if who.role is not Role.AGENT or kind not in AGENT_WRITABLE:
            raise Denied(f"role {who.role} may not write {kind} records")
        if who.node is None:
            raise Denied("this agent certificate names no node (issue it with --node)")
        for rec in (record, current.record if current is not None else None):
            if rec is None:
                continue
            owner = _node_of(rec)
            if owner != who.node:
                raise Denied(
                    f"agent of node {who.node} may write only its own node's records, "
                    f"not {key} (node {owner or 'unset'})"
                )


def _node_of(record: Record) -> str:
    """The node a record belongs to, for the agent's own-node rule ("" when none)."""
    if isinstance(record, Node):
        return record.name
    if isinstance(record, Endpoint | AgentStatus):
        return record.node
    return ""
