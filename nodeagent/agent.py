"""`Agent`: wires the node agent's stages (orchestration only; the logic lives in the stages).

Flow: own-cell `PeerWatcher` → its `CellCache` lists the connected peers → one `PeerWatcher` per
peer, started and stopped live → caches report touched services, endpoints and nodes → a
`ServiceSelection` per service, rebuilt on a service or cell-state change and updated per endpoint
otherwise → `DesiredLb` → `Reconciler` → `LbMaps`; every other node (own cell and peers) → routes.

Loop (`_loop`): woken by any change or a tick; each round evaluates peer states (stale,
revoked), rebuilds the touched services, feeds the changed endpoints to their selections (O(1)
each), runs one reconcile pass, releases the delete gate once every source has synced (or the
sync timeout passed), and now and then runs a full repair pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Protocol

import structlog

from bpf.lbmaps import LbMaps
from meshcore.lbpolicy import (
    CellSource,
    MergedService,
    ServiceRef,
    ServiceSelection,
    cell_source,
    merge_service,
)
from meshcore.model import CellConfig, Peer, RecordError, check_cells_distinct
from meshcore.watch.listwatch import BACKOFF
from nodeagent.cellcache import CellCache, Touched
from nodeagent.desired import DesiredLb, routes_for_nodes
from nodeagent.peers import ConfigRefused, PeerState, PeerTarget, PeerWatcher
from nodeagent.reconciler import Reconciler

log = structlog.get_logger("nodeagent.agent")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RouteSyncResult(Protocol):
    @property
    def errors(self) -> Mapping[IPv4Network, str]: ...


class RouteProgrammer(Protocol):
    """What the agent needs of `nodeagent.routes.RouteTable`."""

    def sync(self, desired: Mapping[IPv4Network, IPv4Address]) -> RouteSyncResult: ...


@dataclass(frozen=True)
class AgentConfig:
    cell: str
    node: str
    meshapi: str
    tls_dir: Path
    server_name: str | None = None
    stale_ttl: float | None = None  # opt-in: revoke a peer stale for this long
    sync_timeout: float = 60.0
    heartbeat_timeout: float = 30.0
    repair_interval: float = 300.0  # full pass re-reading the maps
    tick: float = 0.5
    backoff: tuple[float, ...] = BACKOFF  # reconnect delays per peer, the last one repeats


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    samples: int = 0

    def observe(self, value: float) -> None:
        i = next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))
        self.counts[i] += 1
        self.total += value
        self.samples += 1


@dataclass
class AgentStats:
    merges: int = 0  # whole-service builds
    endpoint_updates: int = 0  # endpoint changes fed to a selection
    rounds: int = 0
    propagation: Histogram = field(default_factory=Histogram)
    route_errors: int = 0
    last_route_error: str = ""


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        maps: LbMaps,
        routes: RouteProgrammer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.maps = maps
        self.routes = routes
        self.desired = DesiredLb()
        self.reconciler = Reconciler(maps, self.desired, clock=clock)
        self.stats = AgentStats()
        self.selections: dict[ServiceRef, ServiceSelection] = {}
        self.watchers: dict[str, PeerWatcher] = {}
        self.gone: dict[str, PeerWatcher] = {}  # disconnected / revoked, for /status
        self._clock = clock
        self._wake = asyncio.Event()
        self._dirty: set[ServiceRef] = set()  # rebuild
        self._dirty_endpoints: set[tuple[str, ServiceRef, str]] = set()  # cell, ref, address
        self._nodes_dirty = False
        self._peers_dirty = False
        self._pending_latency: list[float] = []
        self._started = 0.0
        self._last_repair = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self.own = self._watcher(PeerTarget(config.cell, None, config.meshapi, config.server_name))

    # lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._started = self._last_repair = self._clock()
        self.reconciler.restore()
        self.own.start()
        self._task = asyncio.create_task(self._loop(), name="agent-loop")

    async def stop(self) -> None:
        """Stop watching; the maps and routes stay (stop is not remove)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for w in [self.own, *self.watchers.values()]:
            await w.stop()
        if self._stopping:  # revoked watchers still being stopped
            await asyncio.gather(*self._stopping, return_exceptions=True)

    def _watcher(self, target: PeerTarget) -> PeerWatcher:
        local = target.cell_id is None
        cache = CellCache(target.cell, on_touch=self._touched)
        return PeerWatcher(
            target,
            tls_dir=self.config.tls_dir,
            cache=cache,
            check_config=lambda cfg: self._check_config(target, cfg),
            local=local,
            heartbeat_timeout=self.config.heartbeat_timeout,
            backoff=self.config.backoff,
            clock=self._clock,
        )

    # inputs -----------------------------------------------------------------------------

    def _touched(self, cell: str, touched: Touched) -> None:
        self._dirty |= touched.services
        self._dirty_endpoints.update((cell, ref, address) for ref, address in touched.endpoints)
        if touched.nodes:
            self._nodes_dirty = True
        if touched.peers and cell == self.config.cell:
            self._peers_dirty = True
        if touched.heartbeat:
            w = self.own if cell == self.config.cell else self.watchers.get(cell)
            if w is not None:
                w.note_heartbeat()
        if touched.stamps:
            now = time.time()
            # Stamps older than an hour are replays of old state, not propagation.
            self._pending_latency.extend(t for t in touched.stamps if 0 < now - t < 3600)
        self._wake.set()

    def _check_config(self, target: PeerTarget, cfg: CellConfig) -> None:
        """A cell's config must match how it was connected and fit the rest of the mesh."""
        if cfg.name != target.cell:
            raise ConfigRefused(f"{target.address} serves cell {cfg.name!r}, not {target.cell!r}")
        if target.cell_id is not None and cfg.id != target.cell_id:
            raise ConfigRefused(
                f"cell {cfg.name!r} has id {cfg.id}, but was connected with id {target.cell_id}"
            )
        for w in [self.own, *self.watchers.values()]:
            if w.cell != target.cell and w.cache.config is not None:
                try:
                    check_cells_distinct(cfg, w.cache.config)
                except RecordError as e:
                    raise ConfigRefused(e.reason) from e

    # the loop ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that arrives just as
            # the event fires, and stop() would then wait for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.tick):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.round()
            except Exception:  # a bug must not stop the datapath's upkeep; log it loudly
                log.exception("Agent round failed")

    async def round(self) -> None:
        """One pass: peers, states, merge, reconcile, routes, gates."""
        self.stats.rounds += 1
        now = self._clock()
        if self._peers_dirty:
            self._peers_dirty = False
            await self._sync_peers()
        self._evaluate_peers(now)
        self._merge_dirty()
        if self.reconciler.deletes_allowed is False and self._all_synced_or_timeout(now):
            log.info("Every source synced (or sync timeout): deletes allowed")
            self.reconciler.allow_deletes()
        self.reconciler.sync()
        if now - self._last_repair >= self.config.repair_interval:
            self._last_repair = now
            self.reconciler.full_pass(reread=True)
        self._observe_latency()
        if self._nodes_dirty and self.routes is not None:
            self._nodes_dirty = False
            await self._sync_routes()

    async def _sync_peers(self) -> None:
        # Only the peers this cell watches: a unicast peer that reads us is not watched back.
        peers = {name: p for name, p in self.own.cache.peers.items() if p.watch}
        for name, w in list(self.watchers.items()):
            peer = peers.get(name)
            target = _target(peer) if peer else None
            if target == w.target:
                continue
            await w.stop()
            del self.watchers[name]
            self._drain(w, PeerState.DISCONNECTED)
            log.info("Peer disconnected, drained", peer=name)
        for name, peer in sorted(peers.items()):
            if name not in self.watchers and name != self.config.cell:
                w = self._watcher(_target(peer))
                self.watchers[name] = w
                self.gone.pop(name, None)
                w.start()
                log.info("Peer connected, watching", peer=name, address=peer.address)

    def _drain(self, w: PeerWatcher, state: PeerState) -> None:
        w.mark(state)
        w.cache.drain()
        self.gone[w.cell] = w
        self._nodes_dirty = True

    def _evaluate_peers(self, now: float) -> None:
        self._evaluate(self.own, now)
        ttl = self.config.stale_ttl
        for name, w in list(self.watchers.items()):
            state = self._evaluate(w, now)
            stale_for = now - w.stale_since if w.stale_since is not None else 0.0
            if ttl is not None and state is PeerState.STALE and stale_for >= ttl:
                log.warning("Peer stale past its TTL: revoked", peer=name, ttl=ttl)
                self._revoke(name, w)

    def _evaluate(self, w: PeerWatcher, now: float) -> PeerState:
        before = w.state
        state = w.evaluate(now)
        if state is not before:
            # A cell's backends are merged with its state (stale flag; a revoked cell is left
            # out until its fresh watcher synced), so its services are merged again.
            self._dirty |= w.cache.services.keys() | w.cache.endpoints.keys()
        return state

    def _revoke(self, name: str, w: PeerWatcher) -> None:
        # A fresh watcher relists from scratch when the peer comes back.
        task = asyncio.create_task(w.stop(), name=f"stop-peer-{name}")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        self._drain(w, PeerState.REVOKED)
        fresh = self._watcher(w.target)
        fresh.mark(PeerState.REVOKED)
        self.watchers[name] = fresh
        fresh.start()

    def _source(self, w: PeerWatcher, ref: ServiceRef) -> CellSource | None:
        """What ``w``'s cell contributes to ``ref`` now; None while it contributes nothing."""
        cfg = w.cache.config
        return cell_source(
            cell=w.cell,
            cell_id=cfg.id if cfg is not None else None,
            local=w.local,
            state=w.state,
            service=w.cache.services.get(ref),
            endpoints=w.cache.endpoints.get(ref, {}),
        )

    def _sources(self, ref: ServiceRef) -> dict[str, CellSource]:
        sources = {}
        for w in [self.own, *self.watchers.values()]:
            source = self._source(w, ref)
            if source is not None:
                sources[w.cell] = source
        return sources

    def explain(self, ref: ServiceRef) -> MergedService | None:
        """The full merge of ``ref`` as this agent sees it now, with a decision per endpoint."""
        return merge_service(ref, self._sources(ref))

    def _merge_dirty(self) -> None:
        if self.own.cache.config is None:
            return  # our own cell first; the dirty sets wait
        dirty, self._dirty = self._dirty, set()
        endpoints, self._dirty_endpoints = self._dirty_endpoints, set()
        for ref in dirty:
            selection = ServiceSelection.build(ref, self._sources(ref))
            self.stats.merges += 1
            if selection is None:
                self.selections.pop(ref, None)
                self.desired.set_frontends(ref, None)
            else:
                self.selections[ref] = selection
                self.desired.set_frontends(ref, selection.selected())
        for cell, ref, address in endpoints:
            selection = self.selections.get(ref)
            w = self.own if cell == self.config.cell else self.watchers.get(cell)
            if ref in dirty or selection is None or w is None:
                continue  # rebuilt above, no local service, or the cell is gone (drained)
            source = self._source(w, ref)
            if source is None:
                continue
            self.stats.endpoint_updates += 1
            endpoint = source.endpoints.get(address)
            for delta in selection.update(source, address, endpoint):
                self.desired.update_frontend(ref, delta.frontend, delta.added, delta.removed)

    def _observe_latency(self) -> None:
        """Record timestamp -> map write, for changes whose writes all landed."""
        if not self._pending_latency or self.reconciler.pending:
            return
        now = time.time()
        for stamp in self._pending_latency:
            self.stats.propagation.observe(max(0.0, now - stamp))
        self._pending_latency.clear()

    def _all_synced_or_timeout(self, now: float) -> bool:
        if now - self._started >= self.config.sync_timeout:
            return True
        if not self.own.synced_once or self._peers_dirty:
            return False
        return all(w.synced_once for w in self.watchers.values())

    async def _sync_routes(self) -> None:
        if not self.reconciler.deletes_allowed:
            # A route sync deletes what is not desired: wait, like the maps, until every
            # source has listed its nodes once (or the sync timeout passed).
            self._nodes_dirty = True
            return
        # Every other node, of this cell and of the peers (direct node routes): this node's
        # own pod CIDR is on its own links.
        desired = routes_for_nodes(
            n
            for w in [self.own, *self.watchers.values()]
            for n in w.cache.nodes.values()
            if not (w is self.own and n.name == self.config.node)
        )
        assert self.routes is not None
        try:
            result = await asyncio.to_thread(self.routes.sync, desired)
        except Exception as e:
            self.stats.route_errors += 1
            self.stats.last_route_error = str(e)
            self._nodes_dirty = True
            log.warning("Route sync failed", error=str(e))
            return
        errors = result.errors
        if errors:
            self.stats.route_errors += len(errors)
            self.stats.last_route_error = "; ".join(f"{k}: {v}" for k, v in errors.items())

    def now(self) -> float:
        """The agent's clock (monotonic; injected in tests)."""
        return self._clock()

    # readiness --------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if not self.own.synced_once:
            return False, f"own cell {self.config.cell} not synced"
        timed_out = self._clock() - self._started >= self.config.sync_timeout
        for name, w in self.watchers.items():
            # A peer that is down serves from its last-known-good state (stale) or not at all
            # (revoked); either way, there is nothing to wait for.
            if w.state in (PeerState.STALE, PeerState.REVOKED) or timed_out:
                continue
            if not w.synced_once:
                return False, f"peer {name} not synced ({w.state})"
        return True, "ready"


def _target(peer: Peer) -> PeerTarget:
    return PeerTarget(peer.name, peer.id, peer.address, peer.tls_server_name)
