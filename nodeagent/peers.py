"""`PeerWatcher`: one per cell (the agent's own included) — connect, check, list-then-watch.

Per cell: open an mTLS channel with the agent's certificate, fetch the cell's config and check it
(`check_config`: name and id as connected, id unique, no pod or node CIDR overlapping), then run a
`ListWatcher` whose changes go to `on_change` (the agent queues them for its core; without one,
straight into the cell's `CellCache`, which validates every record and gates deletes on the sync
canaries). The watcher reconnects with capped exponential backoff and jitter, cut short by a TCP
probe as soon as the peer is back, and resumes from its last revision; a refused config is
retried the same way.

The watcher is the IO shell of one cell: `facts()` is what it shows now (connected, streaming,
synced, last batch, errors); the cell's records and peer state live in its `CellView`
(`nodeagent.meshview`), which `nodeagent.core` evaluates (`evaluate_peer`: connecting → syncing
→ ready, stale, revoked, disconnected). Error classes come with the errors
(`meshcore.errors.ErrorClass`), never from parsing their messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from meshcore.backoff import BACKOFF, backoff_delay, backoff_sleep
from meshcore.client import MeshClient
from meshcore.errors import LOST_CLASSES, ErrorClass, MeshApiError
from meshcore.model import CellConfig
from meshcore.watch.change import Change
from meshcore.watch.listwatch import ListWatcher, WatchSource, WatchState
from nodeagent.cellcache import CellCache
from nodeagent.core import WatchFacts, evaluate_peer, observe
from nodeagent.meshview import (
    DROPPED_STATES,
    CellStatus,
    CellView,
    ConfigRefused,
    PeerState,
    PeerTarget,
)

log = structlog.get_logger("nodeagent.peers")


__all__ = [
    "DROPPED_STATES",
    "ConfigRefused",
    "ErrorClass",
    "PeerState",
    "PeerTarget",
    "PeerWatcher",
]


class PeerWatcher:
    def __init__(
        self,
        target: PeerTarget,
        *,
        tls_dir: Path,
        check_config: Callable[[CellConfig], None],
        view: CellView | None = None,
        on_change: Callable[[Change], None] | None = None,
        local: bool = False,
        heartbeat_timeout: float = 30.0,
        backoff: tuple[float, ...] = BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.view = view if view is not None else CellView(target, local=local)
        self._tls_dir = tls_dir
        self._check_config = check_config
        self._on_change = on_change
        self._heartbeat_timeout = heartbeat_timeout
        self._backoff = backoff
        self._clock = clock
        self.watcher: ListWatcher | None = None
        self._synced = False
        self._connect_errors = 0
        self._connect_error = ""
        self._connect_error_class: ErrorClass | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: MeshClient | None = None

    # the cell's view (records and state), as the core last evaluated it ------------------

    @property
    def cell(self) -> str:
        return self.target.cell

    @property
    def local(self) -> bool:
        return self.view.local

    @property
    def cache(self) -> CellCache:
        return self.view.cache

    @property
    def state(self) -> PeerState:
        return self.view.state

    @property
    def synced_once(self) -> bool:
        return self.view.synced_once

    @property
    def stale_since(self) -> float | None:
        return self.view.stale_since

    @property
    def last_error(self) -> str:
        return self.view.last_error

    @last_error.setter
    def last_error(self, message: str) -> None:
        self.view.last_error = message

    @property
    def last_error_class(self) -> ErrorClass | None:
        return self.view.last_error_class

    # lifecycle --------------------------------------------------------------------------

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
                self.view.cache.config = info.config
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
        """The ListWatcher that feeds this cell's changes (on this watcher's clock)."""
        return ListWatcher(
            source,
            on_change=self._on_change or self._apply,
            on_synced=self._note_synced,
            validate=self.view.cache.validate,
            backoff=self._backoff,
            probe=probe,
            clock=self._clock,
        )

    def _apply(self, change: Change) -> None:
        """Without an agent: straight into the cell's view (a heartbeat noted at once)."""
        if self.view.apply(change).heartbeat:
            self.view.heartbeat_seen = self._clock()

    def _note_synced(self) -> None:
        self._synced = True

    def _error(self, message: str, cls: ErrorClass) -> None:
        if message != self._connect_error:
            log.warning("Peer connection failed", peer=self.cell, error=message, cls=str(cls))
        self._connect_errors += 1
        self._connect_error = message
        self._connect_error_class = cls

    # what the watcher shows -------------------------------------------------------------

    def facts(self) -> WatchFacts:
        """What this cell's watcher shows now, for the core."""
        watcher = self.watcher
        stats = watcher.stats if watcher is not None else None
        return WatchFacts(
            cell=self.cell,
            connected=watcher is not None,
            streaming=watcher is not None
            and watcher.state in (WatchState.WATCHING, WatchState.LISTING),
            synced=self._synced,
            last_batch_at=watcher.last_batch_at if watcher is not None else None,
            revision=watcher.revision if watcher is not None else 0,
            listings=stats.listings if stats is not None else 0,
            bad_records=tuple(sorted(stats.bad_records.items())) if stats is not None else (),
            stream_error=stats.last_error if stats is not None else "",
            stream_error_class=(
                ErrorClass(stats.last_error_class)
                if stats is not None and stats.last_error
                else None
            ),
            connect_errors=self._connect_errors,
            connect_error=self._connect_error,
            connect_error_class=self._connect_error_class,
        )

    def evaluate(self, now: float | None = None) -> PeerState:
        """Without an agent: take the facts into the view and derive the state."""
        observe(self.view, self.facts())
        now = self._clock() if now is None else now
        return evaluate_peer(self.view, now, self._heartbeat_timeout)

    def status(self, now: float) -> CellStatus:
        """The cell's status in plain values (the facts taken in first)."""
        observe(self.view, self.facts())
        return self.view.status(now)
