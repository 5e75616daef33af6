"""`PeerWatcher`: one per cell (the agent's own included) — connect, check, list-then-watch.

Per cell: open an mTLS channel with the agent's certificate, fetch the cell's config and check it
(`check_config`: name and id as connected, id unique, no pod or node CIDR overlapping), then run a
`ListWatcher` into the cell's `CellCache` (which validates every record and gates deletes on the
sync canaries). The watcher reconnects with capped exponential backoff and jitter, cut short by
a TCP probe as soon as the peer is back, and resumes from its last revision; a refused config is
retried the same way.

States: `connecting` → `syncing` → `ready`; `stale` when the stream is lost or the peer has shown
no life for longer than the heartbeat timeout after the first sync (the cache keeps its
last-known-good state). Life is the newer of the last heartbeat record and the last batch the
stream delivered: a long listing is alive although its heartbeat is old. `revoked` after the
opt-in stale TTL (cache drained); `disconnected` once stopped by a disconnect (drained).
`evaluate(now)` derives the state; the agent calls it on every tick. Error classes come with the
errors (`meshcore.errors.ErrorClass`), never from parsing their messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import structlog

from meshcore.backoff import BACKOFF, backoff_delay, backoff_sleep
from meshcore.client import MeshClient
from meshcore.errors import LOST_CLASSES, ErrorClass, MeshApiError
from meshcore.model import CellConfig
from meshcore.watch.listwatch import ListWatcher, WatchSource, WatchState
from nodeagent.cellcache import CellCache

log = structlog.get_logger("nodeagent.peers")


class PeerState(StrEnum):
    CONNECTING = "connecting"
    SYNCING = "syncing"
    READY = "ready"
    STALE = "stale"
    REVOKED = "revoked"
    DISCONNECTED = "disconnected"


DROPPED_STATES: frozenset[str] = frozenset({PeerState.REVOKED, PeerState.DISCONNECTED})
"""States whose cell contributes nothing to any merge (its cache is drained)."""


__all__ = [
    "DROPPED_STATES",
    "ConfigRefused",
    "ErrorClass",
    "PeerState",
    "PeerTarget",
    "PeerWatcher",
]


class ConfigRefused(Exception):
    """The cell's config does not fit the mesh (wrong name or id, overlapping CIDRs)."""

    error_class = ErrorClass.CONFIG


@dataclass(frozen=True)
class PeerTarget:
    """Where and what a cell is: from the `--meshapi` flag (own) or a Peer record."""

    cell: str
    cell_id: int | None  # None: the agent's own cell (its id is learned from its config)
    address: str
    server_name: str | None = None


class PeerWatcher:
    def __init__(
        self,
        target: PeerTarget,
        *,
        tls_dir: Path,
        cache: CellCache,
        check_config: Callable[[CellConfig], None],
        local: bool = False,
        heartbeat_timeout: float = 30.0,
        backoff: tuple[float, ...] = BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.cache = cache
        self.local = local
        self._tls_dir = tls_dir
        self._check_config = check_config
        self._heartbeat_timeout = heartbeat_timeout
        self._backoff = backoff
        self._clock = clock
        self.state = PeerState.CONNECTING
        self.watcher: ListWatcher | None = None
        self.last_error = ""
        self.last_error_class: ErrorClass | None = None
        self.synced_once = False
        self.stale_since: float | None = None
        self.heartbeat_seen: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: MeshClient | None = None

    @property
    def cell(self) -> str:
        return self.target.cell

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"peer-{self.cell}")

    async def stop(self) -> None:
        """Stop watching (the cache is left as it is: stop is not remove)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _run(self) -> None:
        attempt, woke = 0, False
        while True:
            client = MeshClient(
                self.target.address, self._tls_dir, server_name=self.target.server_name
            )
            self._client = client
            try:
                info = await client.get_cell()
                self._check_config(info.config)
                self.cache.config = info.config
                break
            except (ConfigRefused, MeshApiError) as e:
                self._error(str(e), e.error_class)
                lost = e.error_class in LOST_CLASSES  # a probe can tell when it is back
            await client.close()
            self._client = None
            delay = backoff_delay(self._backoff, attempt)
            attempt += 1
            probe = client.reachable if lost else None
            if await backoff_sleep(delay, probe=probe, seen_down=not woke):
                attempt, woke = 0, True  # the peer is back: short delays again
        log.info("Peer config accepted", peer=self.cell, cell_id=info.config.id)
        self.watcher = self.make_watcher(client, probe=client.reachable)
        await self.watcher.run()

    def make_watcher(
        self, source: WatchSource, *, probe: Callable[[], Awaitable[bool]] | None = None
    ) -> ListWatcher:
        """The ListWatcher that feeds this cell's cache (on this watcher's clock)."""
        return ListWatcher(
            source,
            on_change=self.cache.apply,
            on_synced=self._synced,
            validate=self.cache.validate,
            backoff=self._backoff,
            probe=probe,
            clock=self._clock,
        )

    def _synced(self) -> None:
        self.synced_once = True
        log.info("Peer synced", peer=self.cell)

    def _error(self, message: str, cls: ErrorClass) -> None:
        if message != self.last_error:
            log.warning("Peer connection failed", peer=self.cell, error=message, cls=str(cls))
        self.last_error = message
        self.last_error_class = cls

    def note_heartbeat(self) -> None:
        self.heartbeat_seen = self._clock()

    def heartbeat_age(self, now: float | None = None) -> float | None:
        if self.heartbeat_seen is None:
            return None
        return (self._clock() if now is None else now) - self.heartbeat_seen

    def liveness_age(self, now: float) -> float | None:
        """Seconds since the peer last showed life: a heartbeat, or any batch its stream
        delivered (a listing that takes longer than the heartbeat timeout is alive)."""
        seen = [self.heartbeat_seen]
        if self.watcher is not None:
            seen.append(self.watcher.last_batch_at)
        times = [t for t in seen if t is not None]
        return now - max(times) if times else None

    def evaluate(self, now: float | None = None) -> PeerState:
        """Derive the state from the watcher, the sync and the heartbeat age."""
        if self.state is PeerState.DISCONNECTED:
            return self.state
        if self.state is PeerState.REVOKED and not self.synced_once:
            return self.state  # a revoked peer's fresh watcher: revoked until it synced again
        now = self._clock() if now is None else now
        watcher = self.watcher
        if watcher is not None and watcher.stats.last_error:
            self.last_error = watcher.stats.last_error
            self.last_error_class = ErrorClass(watcher.stats.last_error_class)
        # Connected and delivering: watching, or (re)listing with batches arriving.
        streaming = watcher is not None and watcher.state in (
            WatchState.WATCHING,
            WatchState.LISTING,
        )
        age = self.liveness_age(now)
        fresh = age is None or age <= self._heartbeat_timeout
        if not self.synced_once:
            state = PeerState.SYNCING if watcher is not None else PeerState.CONNECTING
        elif streaming and fresh:
            state = PeerState.READY
        else:
            state = PeerState.STALE
        if state is PeerState.STALE:
            if self.stale_since is None:
                self.stale_since = now
                log.warning("Peer stale, keeping its last-known-good state", peer=self.cell)
        else:
            self.stale_since = None
        self.state = state
        return state

    def mark(self, state: PeerState) -> None:
        """Terminal states set by the agent (revoked, disconnected)."""
        self.state = state
