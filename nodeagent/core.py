"""`AgentCore`: the node agent's decisions without IO (the h11 pattern). Pure.

Flow: the shell (`nodeagent.agent.Agent`) collects what happened since the last round — the
cells' record changes, as (cell, `Change`) pairs, and a `WatchFacts` per watched cell (what its
watcher shows: connected, streaming, synced, last batch, errors) — and calls
`step(changes, peer_events, now, wall=...)`. The core applies the changes to its `MeshView`,
evaluates every peer's state, rebuilds the touched services (`ServiceSelection` per service,
updated per endpoint otherwise) and returns a `StepResult`: the deltas for the desired LB state
(`apply_desired` lands them in a `DesiredLb`, whose dirty sets the reconciler takes), the
desired routes when nodes changed, the peers to start watching, to stop (disconnected, drained)
and to revoke (stale past the opt-in TTL, drained; a fresh watcher starts), and whether the
delete gate opens (every source synced once, or the sync timeout passed).

Peer states (`evaluate_peer`): `connecting` → `syncing` → `ready`; `stale` when the stream is
lost or the cell has shown no life for longer than the heartbeat timeout after its first sync.
Life is the newer of the last heartbeat record and the last batch the stream delivered: a long
listing is alive although its heartbeat is old. `revoked` after the stale TTL; `disconnected` once
its Peer record is gone. Time comes in as data (`now` monotonic, `wall` for the endpoints'
propagation stamps): no asyncio, no callbacks, no clock of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

import structlog

from meshcore.errors import ErrorClass
from meshcore.lbpolicy import (
    FrontendDelta,
    MergedBackend,
    MergedService,
    ServiceRef,
    ServiceSelection,
)
from meshcore.lbpolicy import merge_service as _merge_service
from meshcore.model.records import Frontend as RecordFrontend
from meshcore.watch.change import Change
from nodeagent.cellcache import Touched
from nodeagent.desired import DesiredLb, routes_for_nodes
from nodeagent.meshview import CellView, MeshView, PeerState, PeerTarget, peer_target

log = structlog.get_logger("nodeagent.core")

STAMP_HORIZON = 3600.0
"""Endpoint stamps older than this (seconds) are replays of old state, not propagation."""


@dataclass(frozen=True)
class CoreConfig:
    cell: str
    node: str
    stale_ttl: float | None = None  # opt-in: revoke a peer stale for this long
    sync_timeout: float = 60.0
    heartbeat_timeout: float = 30.0


# what the shell tells the core ------------------------------------------------------------


@dataclass(frozen=True)
class WatchFacts:
    """What one cell's watcher shows now (the shell reads it off the watcher every round).

    ``connected``: the cell's config was accepted and its stream runs; ``streaming``: listing or
    watching (a lost stream is neither); ``synced``: the first listing completed; the errors are
    the stream's last one and the connection failures so far (their count and the last).
    """

    cell: str
    connected: bool = False
    streaming: bool = False
    synced: bool = False
    last_batch_at: float | None = None
    revision: int = 0
    listings: int = 0
    bad_records: tuple[tuple[str, int], ...] = ()
    stream_error: str = ""
    stream_error_class: ErrorClass | None = None
    connect_errors: int = 0
    connect_error: str = ""
    connect_error_class: ErrorClass | None = None


# what the core tells the shell ------------------------------------------------------------


@dataclass(frozen=True)
class SetFrontends:
    """Replace what a service contributes (None: nothing, the service is gone here)."""

    ref: ServiceRef
    frontends: Sequence[tuple[RecordFrontend, Sequence[MergedBackend]]] | None


@dataclass(frozen=True)
class UpdateFrontend:
    """One frontend's selection changed by one endpoint."""

    ref: ServiceRef
    change: FrontendDelta


DesiredDelta = SetFrontends | UpdateFrontend


def apply_desired(desired: DesiredLb, deltas: Iterable[DesiredDelta]) -> None:
    """Land a step's deltas in the desired LB state (which marks its dirty keys)."""
    for delta in deltas:
        if isinstance(delta, SetFrontends):
            desired.set_frontends(delta.ref, delta.frontends)
        else:
            change = delta.change
            desired.update_frontend(delta.ref, change.frontend, change.added, change.removed)


@dataclass
class StepResult:
    desired: list[DesiredDelta] = field(default_factory=list)
    routes: dict[IPv4Network, IPv4Address] | None = None  # every other node, when nodes changed
    start: list[PeerTarget] = field(default_factory=list)  # watch these (fresh views)
    stop: list[str] = field(default_factory=list)  # disconnected: stop their watchers
    revoke: list[str] = field(default_factory=list)  # stop the old watcher, start a fresh one
    allow_deletes: bool = False  # the delete gate opens now
    stamps: list[float] = field(default_factory=list)  # wall times of the changed endpoints


@dataclass
class CoreStats:
    merges: int = 0  # whole-service builds
    endpoint_updates: int = 0  # endpoint changes fed to a selection


# peer state -----------------------------------------------------------------------------


def observe(view: CellView, facts: WatchFacts) -> None:
    """Take what the cell's watcher shows into its view."""
    if facts.synced and not view.synced_once:
        view.synced_once = True
        log.info("Peer synced", peer=view.cell)
    view.connected = facts.connected
    view.streaming = facts.streaming
    view.last_batch_at = facts.last_batch_at
    view.revision = facts.revision
    view.listings = facts.listings
    view.bad_records = dict(facts.bad_records)
    if facts.connect_errors != view.connect_errors:
        view.connect_errors = facts.connect_errors
        view.last_error = facts.connect_error
        view.last_error_class = facts.connect_error_class
    if facts.stream_error:
        view.last_error = facts.stream_error
        view.last_error_class = facts.stream_error_class


def evaluate_peer(view: CellView, now: float, heartbeat_timeout: float) -> PeerState:
    """Derive a cell's state from its watcher, its sync and the age of its last sign of life."""
    if view.state is PeerState.DISCONNECTED:
        return view.state
    if view.state is PeerState.REVOKED and not view.synced_once:
        return view.state  # a revoked peer's fresh watcher: revoked until it synced again
    age = view.liveness_age(now)
    fresh = age is None or age <= heartbeat_timeout
    if not view.synced_once:
        state = PeerState.SYNCING if view.connected else PeerState.CONNECTING
    elif view.streaming and fresh:
        state = PeerState.READY
    else:
        state = PeerState.STALE
    if state is PeerState.STALE:
        if view.stale_since is None:
            view.stale_since = now
            log.warning("Peer stale, keeping its last-known-good state", peer=view.cell)
    else:
        view.stale_since = None
    view.state = state
    return state


# the core -------------------------------------------------------------------------------


class AgentCore:
    """The agent's state and decisions; `step` is the one way in (besides `start`)."""

    def __init__(self, config: CoreConfig, own: PeerTarget) -> None:
        self.config = config
        self.view = MeshView(own)
        self.stats = CoreStats()
        self.selections: dict[ServiceRef, ServiceSelection] = {}
        self.deletes_allowed = False
        self._started = 0.0
        self._dirty: set[ServiceRef] = set()  # rebuild
        self._dirty_endpoints: set[tuple[str, ServiceRef, str]] = set()  # cell, ref, address
        self._nodes_dirty = False
        self._peers_dirty = False
        self._result = StepResult()

    def start(self, now: float) -> None:
        """The sync timeout runs from here."""
        self._started = now

    # the step ---------------------------------------------------------------------------

    def step(
        self,
        changes: Iterable[tuple[str, Change]] = (),
        peer_events: Iterable[WatchFacts] = (),
        now: float = 0.0,
        *,
        wall: float | None = None,
    ) -> StepResult:
        """Apply what happened, evaluate the peers, merge; what the shell is to do now.

        ``now`` is the agent's monotonic time; ``wall`` the wall-clock time the endpoints'
        `updated_at` stamps are compared with (None: no propagation stamps are kept).
        """
        self._result = result = StepResult()
        for cell, change in changes:
            self._touched(cell, self.view.apply(cell, change), now, wall)
        for facts in peer_events:
            view = self.view.cell(facts.cell)
            if view is not None:
                observe(view, facts)
        if self._peers_dirty:
            self._peers_dirty = False
            self._sync_peers()
        self._evaluate_peers(now)
        self.merge()
        if not self.deletes_allowed and self._all_synced_or_timeout(now):
            log.info("Every source synced (or sync timeout): deletes allowed")
            self.deletes_allowed = result.allow_deletes = True
        if self._nodes_dirty and self.deletes_allowed:
            # A route sync deletes what is not desired: it waits, like the maps, until every
            # source has listed its nodes once (or the sync timeout passed).
            self._nodes_dirty = False
            result.routes = routes_for_nodes(self.view.nodes(self.config.node))
        return result

    def retry_routes(self) -> None:
        """The shell could not program the routes: hand them out again at the next step."""
        self._nodes_dirty = True

    def _touched(self, cell: str, touched: Touched, now: float, wall: float | None) -> None:
        self._dirty |= touched.services
        self._dirty_endpoints.update((cell, ref, address) for ref, address in touched.endpoints)
        if touched.nodes:
            self._nodes_dirty = True
        if touched.peers and cell == self.config.cell:
            self._peers_dirty = True
        if touched.heartbeat:
            view = self.view.cell(cell)
            if view is not None:
                view.heartbeat_seen = now
        if touched.stamps and wall is not None:
            horizon = STAMP_HORIZON
            self._result.stamps.extend(t for t in touched.stamps if 0 < wall - t < horizon)

    # peers ------------------------------------------------------------------------------

    def _sync_peers(self) -> None:
        watched = self.view.watched_peers()
        for name, view in list(self.view.peers.items()):
            peer = watched.get(name)
            if peer is not None and peer_target(peer) == view.target:
                continue
            self._drop(name, PeerState.DISCONNECTED)
            self._result.stop.append(name)
            log.info("Peer disconnected, drained", peer=name)
        for name, peer in sorted(watched.items()):
            if name not in self.view.peers and name != self.config.cell:
                target = peer_target(peer)
                self.view.add_peer(target)
                self._result.start.append(target)
                log.info("Peer connected, watching", peer=name, address=peer.address)

    def _drop(self, name: str, state: PeerState) -> None:
        if state is PeerState.REVOKED:
            _, touched = self.view.revoke(name)
        else:
            _, touched = self.view.drop_peer(name, state)
        self._dirty |= touched.services
        self._nodes_dirty = True

    def _evaluate_peers(self, now: float) -> None:
        self._evaluate(self.view.own, now)
        ttl = self.config.stale_ttl
        for name, view in list(self.view.peers.items()):
            state = self._evaluate(view, now)
            stale_for = now - view.stale_since if view.stale_since is not None else 0.0
            if ttl is not None and state is PeerState.STALE and stale_for >= ttl:
                log.warning("Peer stale past its TTL: revoked", peer=name, ttl=ttl)
                self._drop(name, PeerState.REVOKED)
                self._result.revoke.append(name)

    def _evaluate(self, view: CellView, now: float) -> PeerState:
        before = view.state
        state = evaluate_peer(view, now, self.config.heartbeat_timeout)
        if state is not before:
            # A cell's backends are merged with its state (stale flag; a revoked cell is left
            # out until its fresh watcher synced), so its services are merged again.
            self._dirty |= self.view.refs(view)
        return state

    # the merge --------------------------------------------------------------------------

    def merge(self) -> None:
        """Rebuild the touched services and feed the changed endpoints to their selections."""
        if self.view.own.cache.config is None:
            return  # our own cell first; the dirty sets wait
        deltas = self._result.desired
        dirty, self._dirty = self._dirty, set()
        endpoints, self._dirty_endpoints = self._dirty_endpoints, set()
        for ref in dirty:
            selection = ServiceSelection.build(ref, self.view.sources(ref))
            self.stats.merges += 1
            if selection is None:
                self.selections.pop(ref, None)
                deltas.append(SetFrontends(ref, None))
            else:
                self.selections[ref] = selection
                deltas.append(SetFrontends(ref, selection.selected()))
        for cell, ref, address in endpoints:
            selection = self.selections.get(ref)
            view = self.view.cell(cell)
            if ref in dirty or selection is None or view is None:
                continue  # rebuilt above, no local service, or the cell is gone (drained)
            source = view.source(ref)
            if source is None:
                continue
            self.stats.endpoint_updates += 1
            endpoint = source.endpoints.get(address)
            deltas.extend(
                UpdateFrontend(ref, change)
                for change in selection.update(source, address, endpoint)
            )

    def explain(self, ref: ServiceRef) -> MergedService | None:
        """The full merge of ``ref`` as the agent sees it now, with a decision per endpoint."""
        return _merge_service(ref, self.view.sources(ref))

    # gates ------------------------------------------------------------------------------

    def _all_synced_or_timeout(self, now: float) -> bool:
        if now - self._started >= self.config.sync_timeout:
            return True
        if not self.view.own.synced_once or self._peers_dirty:
            return False
        return all(v.synced_once for v in self.view.peers.values())

    def ready(self, now: float) -> tuple[bool, str]:
        if not self.view.own.synced_once:
            return False, f"own cell {self.config.cell} not synced"
        timed_out = now - self._started >= self.config.sync_timeout
        for name, view in self.view.peers.items():
            # A peer that is down serves from its last-known-good state (stale) or not at all
            # (revoked); either way, there is nothing to wait for.
            if view.state in (PeerState.STALE, PeerState.REVOKED) or timed_out:
                continue
            if not view.synced_once:
                return False, f"peer {name} not synced ({view.state})"
        return True, "ready"
