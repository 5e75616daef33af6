"""The agent's status report: an `AgentStatus` record built from its watchers, and its publisher.

Flow: `Agent` (its `MeshView.status()`, readiness, maps) -> `build_status` (pure reading, no
IO) -> `StatusPublisher.run` writes it through the agent's own meshapi (an agent may write only its
own node's status) every `AGENT_STATUS_INTERVAL` seconds, and within `poll` seconds after a peer
state, sync or readiness change (`state_signature`). A failed write is logged and retried after
`retry` seconds; it never stops the agent. `meshctl status` reads the records.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from meshcore.model import (
    AGENT_STATUS_INTERVAL,
    MAX_ERROR_LENGTH,
    AgentStatus,
    PeerReport,
    Record,
)
from nodeagent.agent import Agent
from nodeagent.meshview import CellStatus

log = structlog.get_logger("nodeagent.report")

Signature = tuple[bool, tuple[tuple[str, str, bool], ...]]


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 3] + "..."


def peer_report(cell: CellStatus) -> PeerReport:
    """One watched cell as the agent sees it."""
    age = cell.heartbeat_age
    return PeerReport(
        cell=cell.cell,
        cell_id=cell.cell_id,
        local=cell.local,
        state=cell.state,
        synced=cell.synced,
        revision=cell.revision,
        counts=cell.counts,
        last_error=_cut(cell.last_error),
        error_class=cell.error_class,
        heartbeat_age=round(max(age, 0.0), 3) if age is not None else None,
    )


def build_status(agent: Agent, *, wall_clock: Callable[[], float] = time.time) -> AgentStatus:
    """The agent's report now: readiness, a `PeerReport` per watched cell, its map sizes."""
    ready, reason = agent.ready()
    return AgentStatus(
        cell=agent.config.cell,
        node=agent.config.node,
        updated_at=wall_clock(),
        ready=ready,
        reason=_cut(reason),
        peers=[peer_report(c) for c in agent.view.status(agent.now()).reported()],
        services=len(agent.maps.landed.services),
        backends=len(agent.maps.landed.backends),
        full_maps={f.map_name: f.parked for f in agent.reconciler.full_maps()},
    )


def state_signature(agent: Agent) -> Signature:
    """What, when it changes, is published at once: readiness, each cell's state and sync, and
    which maps are full."""
    ready, _ = agent.ready()
    reported = agent.view.status(agent.now()).reported()
    cells = tuple((c.cell, c.state, c.synced) for c in reported)
    full = tuple((f.map_name, "full", True) for f in agent.reconciler.full_maps())
    return ready, cells + full


class StatusWriter(Protocol):
    """What the publisher needs of `meshcore.client.MeshClient`."""

    async def write(
        self, *, puts: Sequence[Record] = (), deletes: Sequence[str] = (), timeout: float = 10.0
    ) -> int: ...


@dataclass
class PublisherStats:
    published: int = 0
    failures: int = 0
    last_error: str = ""


class StatusPublisher:
    """Publishes `build_status(agent)` periodically and promptly after a state change."""

    def __init__(
        self,
        agent: Agent,
        client: StatusWriter,
        *,
        interval: float = AGENT_STATUS_INTERVAL,
        poll: float = 0.2,
        retry: float = 1.0,
        write_timeout: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.agent = agent
        self.client = client
        self.interval = interval
        self.poll = poll
        self.retry = retry
        self.write_timeout = write_timeout
        self.stats = PublisherStats()
        self._clock = clock
        self._wall_clock = wall_clock

    async def publish(self) -> None:
        """Write the report once; raises what the client raises."""
        status = build_status(self.agent, wall_clock=self._wall_clock)
        await self.client.write(puts=[status], timeout=self.write_timeout)
        self.stats.published += 1

    async def run(self) -> None:
        published: Signature | None = None
        failing = False
        due = self._clock()
        while True:
            signature = state_signature(self.agent)
            changed = signature != published and not failing  # while failing: retry when due
            if changed or self._clock() >= due:
                try:
                    await self.publish()
                except Exception as e:  # never fatal: the next attempt may work
                    self._failed(e)
                    failing, due = True, self._clock() + self.retry
                else:
                    published, due = signature, self._clock() + self.interval
                    failing, self.stats.last_error = False, ""
                    continue  # a change during the write is picked up at once
            await asyncio.sleep(self.poll)

    def _failed(self, e: Exception) -> None:
        self.stats.failures += 1
        message = str(e) or type(e).__name__
        if message != self.stats.last_error:
            log.warning(
                "Status report not published, retrying",
                cell=self.agent.config.cell,
                node=self.agent.config.node,
                error=message,
            )
        self.stats.last_error = message
