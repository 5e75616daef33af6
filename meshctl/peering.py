"""What ``meshctl connect`` and ``disconnect`` write: the Peer records of a connection (pure).

Flow: both cells as fetched (`Cell`: context, config, current Peer records) and a mode ->
`desired_peers` (connect) or `undesired_peers` (disconnect) -> the records each cell must hold,
compared by the command with what it holds. A Peer record carries two directions: ``watch`` (the
cell's agents watch the peer) and ``export`` (the peer's agents may read the cell).

Modes, as Cilium's ``clustermesh connect --connection-mode``: bidirectional -- both directions
in both cells; unicast A -> B -- A's agents read B and B never reads A: A's record for B watches
and does not export, B's record for A only exports (a grant that B's meshapi checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshcore.model import CellConfig, Peer
from meshctl.contexts import Context

__all__ = [
    "BIDIRECTIONAL",
    "UNICAST",
    "Cell",
    "describe_peer",
    "desired_peer",
    "desired_peers",
    "undesired_peers",
]

BIDIRECTIONAL, UNICAST = "bidirectional", "unicast"


@dataclass
class Cell:
    """One side: its context, the config its meshapi serves, and its current Peer records."""

    ctx: Context
    config: CellConfig
    peers: dict[str, Peer] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name


def desired_peer(src: Cell, dst: Cell, *, watch: bool = True, export: bool = True) -> Peer:
    """``src``'s Peer record for ``dst``: its name and id, and where its meshapi listens.

    ``watch``: ``src``'s agents watch ``dst``; ``export``: ``dst``'s agents may read ``src``.
    """
    return Peer(
        cell=src.name,
        name=dst.name,
        id=dst.config.id,
        address=dst.ctx.server,
        tls_server_name=dst.ctx.server_name,
        watch=watch,
        export=export,
    )


def desired_peers(a: Cell, b: Cell, mode: str) -> list[tuple[Cell, Peer]]:
    """The Peer records a connection needs, in each cell.

    Bidirectional: each cell watches and exports to the other. Unicast (Cilium's meaning: A's
    agents read B, B never reads A): A's record watches B, B's record only admits A's agents.
    A direction that already exists is kept -- connect adds, ``disconnect`` removes.
    """
    if mode == BIDIRECTIONAL:
        return [(a, desired_peer(a, b)), (b, desired_peer(b, a))]
    ab, ba = a.peers.get(b.name), b.peers.get(a.name)
    return [
        (a, desired_peer(a, b, watch=True, export=ab is not None and ab.export)),
        (b, desired_peer(b, a, watch=ba is not None and ba.watch, export=True)),
    ]


def undesired_peers(a: Cell, b: Cell, mode: str) -> list[tuple[Cell, str, Peer | None]]:
    """What disconnecting needs: (cell, peer name, the record to keep or None to delete).

    Bidirectional removes both records; unicast removes A's watch of B and B's grant to A,
    keeping a record that still carries the other direction.
    """
    changes: list[tuple[Cell, str, Peer | None]] = []
    for src, dst in ((a, b), (b, a)):
        current = src.peers.get(dst.name)
        if current is None:
            continue
        # Unicast a -> b: a stops watching b, b stops exporting to a.
        watch = current.watch and src is b
        export = current.export and src is a
        if mode == BIDIRECTIONAL or not (watch or export):
            changes.append((src, dst.name, None))
        elif (watch, export) != (current.watch, current.export):
            kept = Peer.model_validate(current.model_dump() | {"watch": watch, "export": export})
            changes.append((src, dst.name, kept))
    return changes


def describe_peer(peer: Peer) -> str:
    """A peer record's directions, as ``connect`` and ``status`` show them."""
    if peer.watch and peer.export:
        return "bidirectional"
    if peer.watch:
        return f"unicast: {peer.cell} reads {peer.name}"
    return f"unicast: {peer.name} reads {peer.cell}"
