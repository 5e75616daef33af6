"""`MeshView`: every watched cell's records and peer state, as the node agent knows them. Pure.

Flow: the agent's core applies each cell's changes (`apply(cell, change) -> Touched`) to that
cell's `CellView` (its `CellCache` and its peer state) → `sources(ref)` is what every cell
contributes to a service (`meshcore.lbpolicy.cell_source`), `nodes()` every other node (routes),
`status()` the plain values `/status`, `/metrics` and the `AgentStatus` report show.

Cells: `own` (the agent's cell), `peers` (the cells it watches now) and `gone` (disconnected or
revoked since: drained, kept for the status report). `cells()` is the own cell and the watched
peers, in that order. The peer states are set by `nodeagent.core` (with the time passed in);
nothing here does IO, keeps a clock or calls back.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from meshcore.errors import ErrorClass
from meshcore.lbpolicy import CellSource, ServiceRef, cell_source
from meshcore.model import CellConfig, CellId, Node, Peer, RecordError, check_cells_distinct
from meshcore.watch.change import Change
from nodeagent.cellcache import CellCache, Touched

__all__ = [
    "DROPPED_STATES",
    "CellStatus",
    "CellView",
    "ConfigRefused",
    "MeshStatus",
    "MeshView",
    "PeerState",
    "PeerTarget",
]


class PeerState(StrEnum):
    CONNECTING = "connecting"
    SYNCING = "syncing"
    READY = "ready"
    STALE = "stale"
    REVOKED = "revoked"
    DISCONNECTED = "disconnected"


DROPPED_STATES: frozenset[str] = frozenset({PeerState.REVOKED, PeerState.DISCONNECTED})
"""States whose cell contributes nothing to any merge (its cache is drained)."""


class ConfigRefused(Exception):
    """The cell's config does not fit the mesh (wrong name or id, overlapping CIDRs)."""

    error_class = ErrorClass.CONFIG


@dataclass(frozen=True)
class PeerTarget:
    """Where and what a cell is: from the `--meshapi` flag (own) or a Peer record."""

    cell: str
    cell_id: CellId | None  # None: the agent's own cell (its id is learned from its config)
    address: str
    server_name: str | None = None


def peer_target(peer: Peer) -> PeerTarget:
    return PeerTarget(peer.name, peer.id, peer.address, peer.tls_server_name)


@dataclass(frozen=True)
class CellStatus:
    """One cell as the agent sees it, in plain values (ages in seconds on the agent's clock)."""

    cell: str
    cell_id: CellId | None
    local: bool
    address: str
    state: str
    synced: bool
    revision: int
    counts: dict[str, int]
    last_error: str
    error_class: str  # "" without an error class
    heartbeat_age: float | None  # unrounded, may be negative on a skewed clock
    synced_kinds: list[str]
    held_deletes: int
    bad_records: dict[str, int]
    listings: int
    applied: int  # changes applied to the cell's cache


@dataclass(frozen=True)
class MeshStatus:
    """The own cell, the watched peers and the peers gone since, as `CellStatus` values."""

    own: CellStatus
    peers: dict[str, CellStatus]  # watched now, by cell (in the order they were added)
    gone: dict[str, CellStatus]  # disconnected / revoked since, by cell

    def watched(self) -> list[CellStatus]:
        """The own cell and every watched peer (what the metrics show)."""
        return [self.own, *self.peers.values()]

    def reported(self) -> list[CellStatus]:
        """The own cell, every watched peer, and the peers gone since, sorted by cell."""
        cells = dict(self.gone)
        cells.update(self.peers)
        cells[self.own.cell] = self.own
        return [cells[cell] for cell in sorted(cells)]


@dataclass
class CellView:
    """One cell: its records (`cache`) and its peer state, as the core last evaluated it."""

    target: PeerTarget
    local: bool = False
    cache: CellCache = field(init=False)
    state: PeerState = PeerState.CONNECTING
    synced_once: bool = False
    stale_since: float | None = None
    heartbeat_seen: float | None = None  # when a heartbeat record last arrived
    # What the cell's watcher last showed (`nodeagent.core.WatchFacts`):
    connected: bool = False  # its config was accepted and its stream runs
    streaming: bool = False  # listing or watching (delivering)
    last_batch_at: float | None = None
    revision: int = 0
    listings: int = 0
    bad_records: dict[str, int] = field(default_factory=dict)
    connect_errors: int = 0  # connection failures seen so far (their count, not their text)
    last_error: str = ""
    last_error_class: ErrorClass | None = None

    def __post_init__(self) -> None:
        self.cache = CellCache(self.target.cell)

    @property
    def cell(self) -> str:
        return self.target.cell

    def apply(self, change: Change) -> Touched:
        return self.cache.apply(change)

    def heartbeat_age(self, now: float) -> float | None:
        return None if self.heartbeat_seen is None else now - self.heartbeat_seen

    def liveness_age(self, now: float) -> float | None:
        """Seconds since the cell last showed life: a heartbeat, or any batch its stream
        delivered (a listing that takes longer than the heartbeat timeout is alive)."""
        times = [t for t in (self.heartbeat_seen, self.last_batch_at) if t is not None]
        return now - max(times) if times else None

    def source(self, ref: ServiceRef) -> CellSource | None:
        """What this cell contributes to ``ref`` now; None while it contributes nothing."""
        cfg = self.cache.config
        return cell_source(
            cell=self.cell,
            cell_id=cfg.id if cfg is not None else None,
            local=self.local,
            state=self.state,
            service=self.cache.services.get(ref),
            endpoints=self.cache.endpoints.get(ref, {}),
        )

    def status(self, now: float) -> CellStatus:
        config = self.cache.config
        return CellStatus(
            cell=self.cell,
            cell_id=config.id if config is not None else self.target.cell_id,
            local=self.local,
            address=self.target.address,
            state=self.state.value,
            synced=self.synced_once,
            revision=self.revision,
            counts=self.cache.kind_counts(),
            last_error=self.last_error,
            error_class=self.last_error_class.value if self.last_error_class else "",
            heartbeat_age=self.heartbeat_age(now),
            synced_kinds=sorted(str(k) for k in self.cache.synced_kinds),
            held_deletes=self.cache.held_deletes,
            bad_records=dict(self.bad_records),
            listings=self.listings,
            applied=self.cache.stats.applied,
        )


class MeshView:
    """Every cell the agent knows: its own, the watched peers, and the peers gone since."""

    def __init__(self, own: PeerTarget) -> None:
        self.own = CellView(own, local=True)
        self.peers: dict[str, CellView] = {}
        self.gone: dict[str, CellView] = {}

    def cells(self) -> list[CellView]:
        """The own cell, then every watched peer."""
        return [self.own, *self.peers.values()]

    def cell(self, name: str) -> CellView | None:
        return self.own if name == self.own.cell else self.peers.get(name)

    # changes ----------------------------------------------------------------------------

    def apply(self, cell: str, change: Change) -> Touched:
        """Apply one change of a current cell; what it touched (nothing for an unknown cell)."""
        view = self.cell(cell)
        return view.apply(change) if view is not None else Touched()

    def check_config(self, target: PeerTarget, cfg: CellConfig) -> None:
        """A cell's config must match how it was connected and fit the rest of the mesh."""
        if cfg.name != target.cell:
            raise ConfigRefused(f"{target.address} serves cell {cfg.name!r}, not {target.cell!r}")
        if target.cell_id is not None and cfg.id != target.cell_id:
            raise ConfigRefused(
                f"cell {cfg.name!r} has id {cfg.id}, but was connected with id {target.cell_id}"
            )
        for view in self.cells():
            if view.cell != target.cell and view.cache.config is not None:
                try:
                    check_cells_distinct(cfg, view.cache.config)
                except RecordError as e:
                    raise ConfigRefused(e.reason) from e

    # peers ------------------------------------------------------------------------------

    def watched_peers(self) -> dict[str, Peer]:
        """The peers this cell watches (a unicast peer that reads us is not watched back)."""
        return {name: p for name, p in self.own.cache.peers.items() if p.watch}

    def add_peer(self, target: PeerTarget) -> CellView:
        view = CellView(target)
        self.peers[target.cell] = view
        self.gone.pop(target.cell, None)
        return view

    def drop_peer(self, name: str, state: PeerState) -> tuple[CellView, Touched]:
        """Drain a watched peer (disconnected / revoked) and keep it among the gone."""
        view = self.peers.pop(name)
        view.state = state
        touched = view.cache.drain()
        self.gone[name] = view
        return view, touched

    def revoke(self, name: str) -> tuple[CellView, Touched]:
        """Drain ``name`` as revoked; a fresh view (revoked until it synced again) replaces it."""
        old, touched = self.drop_peer(name, PeerState.REVOKED)
        fresh = self.add_peer(old.target)
        fresh.state = PeerState.REVOKED
        self.gone[name] = old
        return fresh, touched

    # reading ----------------------------------------------------------------------------

    def sources(self, ref: ServiceRef) -> dict[str, CellSource]:
        """What every cell contributes to ``ref`` now, by cell."""
        sources = {}
        for view in self.cells():
            source = view.source(ref)
            if source is not None:
                sources[view.cell] = source
        return sources

    def nodes(self, own_node: str) -> Iterator[Node]:
        """Every other node, of this cell and of the peers (this node's own CIDR is local)."""
        for view in self.cells():
            for node in view.cache.nodes.values():
                if not (view is self.own and node.name == own_node):
                    yield node

    def refs(self, view: CellView) -> set[ServiceRef]:
        """The services a cell has records of."""
        return set(view.cache.services) | set(view.cache.endpoints)

    def status(self, now: float) -> MeshStatus:
        return MeshStatus(
            own=self.own.status(now),
            peers={name: v.status(now) for name, v in self.peers.items()},
            gone={name: v.status(now) for name, v in sorted(self.gone.items())},
        )
