"""A stream that delivers data is alive: a listing longer than the heartbeat timeout never makes
the peer stale, while an idle stream whose heartbeat is old still does.

The PeerWatcher runs on an injected clock; its ListWatcher reads a scripted `WatchSource` (the
narrow interface the watcher uses) that replays real wire batches of real, encoded records, so
the test decides when each batch arrives and what time it is then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from ipaddress import ip_network
from pathlib import Path

from meshcore.model import CellConfig, Heartbeat, Kind, Record, encode_record
from meshcore.wire import pb
from nodeagent.peers import PeerState, PeerTarget, PeerWatcher
from tests.conftest import wait_for
from tests.meshapi.helpers import endpoint

HEARTBEAT_TIMEOUT = 30.0


class ScriptedSource:
    """Serves one watch whose batches the test puts in `batches`, one at a time."""

    def __init__(self) -> None:
        self.batches: asyncio.Queue[pb.WatchBatch] = asyncio.Queue()

    async def watch(
        self, kinds: Iterable[Kind] = (), *, resume_revision: int = 0, resume_epoch: str = ""
    ) -> AsyncIterator[pb.WatchBatch]:
        while True:
            yield await self.batches.get()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def batch(records: Iterable[Record], *, revision: int, synced: bool = False) -> pb.WatchBatch:
    msg = pb.WatchBatch(revision=revision, synced=synced, epoch="e1")
    for r in records:
        msg.events.add(type=pb.Event.PUT, key=r.key(), value=encode_record(r))
    return msg


def heartbeat(sequence: int) -> Heartbeat:
    return Heartbeat(cell="beta", timestamp=1_700_000_000.0 + sequence, sequence=sequence)


async def test_long_listing_is_alive_and_idle_stream_goes_stale() -> None:
    clock = Clock()
    # Without an agent, the watcher applies its changes to its cell's view itself and notes a
    # heartbeat on its clock.
    w = PeerWatcher(
        PeerTarget(cell="beta", cell_id=2, address="127.0.0.1:1"),
        tls_dir=Path("/nonexistent"),
        check_config=lambda cfg: None,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        clock=clock,
    )
    cache = w.cache
    cache.config = CellConfig(name="beta", id=2, pod_cidrs=[ip_network("10.2.0.0/16")])
    source = ScriptedSource()
    w.watcher = w.make_watcher(source)
    task = asyncio.create_task(w.watcher.run())
    states: list[PeerState] = []

    async def deliver(b: pb.WatchBatch) -> None:
        assert w.watcher is not None
        before = w.watcher.stats.batches
        await source.batches.put(b)
        await wait_for(lambda: w.watcher is not None and w.watcher.stats.batches > before)

    try:
        # The listing: the heartbeat comes first, then 200 endpoints in 5 batches, 10 s apart
        # (50 s in all, longer than the 30 s heartbeat timeout).
        await deliver(batch([heartbeat(0)], revision=10))
        states.append(w.evaluate())
        for i in range(5):
            clock.now += 10.0
            records = [endpoint("beta", n) for n in range(i * 40, i * 40 + 40)]
            await deliver(batch(records, revision=10, synced=i == 4))
            states.append(w.evaluate())
        assert w.synced_once
        assert len(cache.endpoints) > 0
        # Live, but quiet: heartbeats every 10 s keep it ready.
        for seq in range(1, 4):
            clock.now += 10.0
            await deliver(batch([heartbeat(seq)], revision=10 + seq))
            states.append(w.evaluate())
        assert PeerState.STALE not in states, states
        assert states[-1] is PeerState.READY

        # An idle stream: nothing at all for longer than the timeout -> stale.
        clock.now += HEARTBEAT_TIMEOUT + 1.0
        assert w.evaluate() is PeerState.STALE
        # Any batch brings it back.
        await deliver(batch([heartbeat(9)], revision=20))
        assert w.evaluate() is PeerState.READY
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
