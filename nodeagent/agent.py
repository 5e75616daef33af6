"""`Agent`: the node agent's asyncio shell around its pure core (`nodeagent.core.AgentCore`).

Flow: one `PeerWatcher` per cell (own cell first; the core says which peers to start, stop and
revoke) → their record changes are queued as (cell, `Change`) pairs → each round the loop hands
the queue and every watcher's `WatchFacts` to `core.step(changes, facts, now, wall=...)` → the
step's desired-state deltas land in the injected `DesiredLb` → the injected `Reconciler` writes
the dirty keys to `LbMaps` → the routes (every other node, own cell and peers) go to the
`RouteProgrammer`. The core owns the `MeshView` (every cell's records and peer state); status
and `/status` read `view.status()`.

Loop (`_loop`): woken by any change or a tick; each round steps the core, carries out its
decisions (watchers, delete gate), runs one reconcile pass, now and then a full repair pass, and
observes the propagation latency of the changes whose writes all landed.
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
from meshcore.lbpolicy import MergedService, ServiceRef, ServiceSelection
from meshcore.model import CellConfig
from meshcore.watch.change import Change
from meshcore.watch.listwatch import BACKOFF
from nodeagent.core import AgentCore, CoreConfig, StepResult, WatchFacts, apply_desired
from nodeagent.desired import DesiredLb
from nodeagent.meshview import CellView, MeshView, PeerTarget
from nodeagent.peers import PeerWatcher
from nodeagent.reconciler import Reconciler

log = structlog.get_logger("nodeagent.agent")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

ReconcilerFactory = Callable[[LbMaps, DesiredLb, Callable[[], float]], Reconciler]
"""Builds the agent's reconciler from its maps, its desired state and its clock."""


def default_reconciler(maps: LbMaps, desired: DesiredLb, clock: Callable[[], float]) -> Reconciler:
    return Reconciler(maps, desired, clock=clock)


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

    def core(self) -> CoreConfig:
        return CoreConfig(
            cell=self.cell,
            node=self.node,
            stale_ttl=self.stale_ttl,
            sync_timeout=self.sync_timeout,
            heartbeat_timeout=self.heartbeat_timeout,
        )


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
    rounds: int = 0
    propagation: Histogram = field(default_factory=Histogram)
    route_errors: int = 0
    last_route_error: str = ""
    merges: int = 0  # whole-service builds (the core's count, after each round)
    endpoint_updates: int = 0  # endpoint changes fed to a selection (likewise)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        maps: LbMaps,
        routes: RouteProgrammer | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        desired: DesiredLb | None = None,
        reconciler: ReconcilerFactory = default_reconciler,
        core: AgentCore | None = None,
    ) -> None:
        self.config = config
        self.maps = maps
        self.routes = routes
        self.desired = desired if desired is not None else DesiredLb()
        self.reconciler = reconciler(maps, self.desired, clock)
        own = PeerTarget(config.cell, None, config.meshapi, config.server_name)
        self.core = core if core is not None else AgentCore(config.core(), own)
        self.stats = AgentStats()
        self.watchers: dict[str, PeerWatcher] = {}
        self.gone: dict[str, PeerWatcher] = {}  # disconnected / revoked, for the tests' eyes
        self._clock = clock
        self._wall_clock = wall_clock
        self._wake = asyncio.Event()
        self._changes: list[tuple[PeerWatcher, Change]] = []
        self._pending_latency: list[float] = []
        self._last_repair = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self.own = self._watcher(self.core.view.own)

    @property
    def view(self) -> MeshView:
        """Every cell's records and peer state (read it; the core changes it)."""
        return self.core.view

    @property
    def selections(self) -> dict[ServiceRef, ServiceSelection]:
        return self.core.selections

    # lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._last_repair = self._clock()
        self.core.start(self._last_repair)
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

    def _watcher(self, view: CellView) -> PeerWatcher:
        target = view.target
        w: PeerWatcher

        def on_change(change: Change) -> None:
            self._changes.append((w, change))
            self._wake.set()

        w = PeerWatcher(
            target,
            view=view,
            tls_dir=self.config.tls_dir,
            check_config=lambda cfg: self._check_config(target, cfg),
            on_change=on_change,
            heartbeat_timeout=self.config.heartbeat_timeout,
            backoff=self.config.backoff,
            clock=self._clock,
        )
        return w

    def _check_config(self, target: PeerTarget, cfg: CellConfig) -> None:
        """At once, not through the queue: two cells connecting together must not both fit."""
        self.core.view.check_config(target, cfg)

    def _current(self, w: PeerWatcher) -> bool:
        return w is self.own or self.watchers.get(w.cell) is w

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
        """One pass: step the core, carry out its decisions, reconcile, routes."""
        self.stats.rounds += 1
        now = self._clock()
        queued, self._changes = self._changes, []
        # A stopped (disconnected, revoked) watcher's late changes are not the cell's anymore.
        changes = [(w.cell, change) for w, change in queued if self._current(w)]
        facts = [w.facts() for w in [self.own, *self.watchers.values()]]
        result = self.step(changes, facts, now)
        await self._carry_out(result)
        if result.allow_deletes:
            self.reconciler.allow_deletes()
        self.reconciler.sync()
        if now - self._last_repair >= self.config.repair_interval:
            self._last_repair = now
            self.reconciler.full_pass(reread=True)
        self._pending_latency.extend(result.stamps)
        self._observe_latency()
        if result.routes is not None and self.routes is not None:
            await self._sync_routes(result.routes)

    def step(
        self, changes: list[tuple[str, Change]], facts: list[WatchFacts], now: float
    ) -> StepResult:
        """The core's step, its desired-state deltas landed in the desired state."""
        result = self.core.step(changes, facts, now, wall=self._wall_clock())
        apply_desired(self.desired, result.desired)
        self.stats.merges = self.core.stats.merges
        self.stats.endpoint_updates = self.core.stats.endpoint_updates
        return result

    async def _carry_out(self, result: StepResult) -> None:
        for name in result.stop:
            w = self.watchers.pop(name)
            self.gone[name] = w
            await w.stop()
        for name in result.revoke:
            # A fresh watcher relists from scratch when the peer comes back.
            old = self.watchers[name]
            task = asyncio.create_task(old.stop(), name=f"stop-peer-{name}")
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
            self.gone[name] = old
            fresh = self._watcher(self.core.view.peers[name])
            self.watchers[name] = fresh
            fresh.start()
        for target in result.start:
            w = self._watcher(self.core.view.peers[target.cell])
            self.watchers[target.cell] = w
            self.gone.pop(target.cell, None)
            w.start()

    def explain(self, ref: ServiceRef) -> MergedService | None:
        """The full merge of ``ref`` as this agent sees it now, with a decision per endpoint."""
        return self.core.explain(ref)

    def _observe_latency(self) -> None:
        """Record timestamp -> map write, for changes whose writes all landed."""
        if not self._pending_latency or self.reconciler.pending:
            return
        now = self._wall_clock()
        for stamp in self._pending_latency:
            self.stats.propagation.observe(max(0.0, now - stamp))
        self._pending_latency.clear()

    async def _sync_routes(self, desired: Mapping[IPv4Network, IPv4Address]) -> None:
        assert self.routes is not None
        try:
            result = await asyncio.to_thread(self.routes.sync, desired)
        except Exception as e:
            self.stats.route_errors += 1
            self.stats.last_route_error = str(e)
            self.core.retry_routes()
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
        return self.core.ready(self._clock())
