"""`StoreRecovery`: the async shell around `WipeRecovery` (meshapi.resync) in a running meshapi.

Flow: the watch cache notices a new store epoch (a wipe) -> `on_reset` here: remember what the
store held, re-assert meshapi's own records, withhold every other sync canary -> a loop feeds the
recovery core the keys present now and the time -> the writer queues each released kind's canary
behind every write queued so far. It also answers who stays authorized (peers lost with the
store) and the `recovery` part of /status and of the admin List.
"""

from __future__ import annotations

import asyncio
import time
from collections import ChainMap
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from meshapi.cache import WatchCache
from meshapi.resync import CANARY_KINDS, WipeRecovery
from meshapi.views import Item
from meshapi.writer import RecordWriter
from meshcore.model import Kind, encode_record

log = structlog.get_logger("meshapi.recovery")

STEP_INTERVAL = 0.1  # how often a withheld kind is re-evaluated (only while recovering)


class StoreRecovery:
    def __init__(
        self,
        *,
        cache: WatchCache,
        writer: RecordWriter,
        core: WipeRecovery,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.writer = writer
        self.core = core
        self._clock = clock
        self._wake = asyncio.Event()
        self._lost_logged: set[str] = set()
        self.steps = 0  # evaluations since start (tests wait on it)

    def mark_all_synced(self) -> None:
        """A store meshapi has no memory of (start-up): every kind is complete as it is (but
        the external ones: their source marks them)."""
        for kind in CANARY_KINDS:
            if kind not in self.core.external_kinds:
                self.writer.mark_synced(kind)

    def on_reset(self) -> None:
        """The store was wiped (cache callback, after its relist of the new store)."""
        before = {key: item.record for key, item in self.cache.before_reset.items()}
        self.core.reset(before, self._clock())
        self.writer.reassert_owned()
        log.warning(
            "Store wiped: canaries withheld until the sources re-listed",
            records=len(before),
            resync_grace=self.core.resync_grace,
            lost_state_grace=self.core.lost_state_grace,
        )
        self.step()
        self._wake.set()

    def step(self) -> None:
        self.steps += 1
        for kind, why in self.core.step(self.cache.full, self._clock()).items():
            self.writer.mark_synced(kind)
            log.info("Kind complete again, canary written", kind=str(kind), reason=str(why))
        for lost in self.core.lost():
            if lost.key not in self._lost_logged:
                self._lost_logged.add(lost.key)
                log.warning(
                    "Record lost with the store, restore it",
                    key=lost.key,
                    restore=lost.restore,
                    grace=self.core.lost_state_grace,
                )
        if not self.core.withheld:
            self._lost_logged.clear()

    async def run(self) -> None:
        while True:
            if not self.core.withheld:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(STEP_INTERVAL)
            self.step()

    def authorization_records(self) -> Mapping[str, Item]:
        """The cache's records plus the peers lost with the store while they are remembered:
        a wipe is not a revocation, the peer's agents keep reading this cell."""
        remembered = self.core.remembered_peers()
        if not remembered:
            return self.cache.full
        extra = {
            key: Item(key, Kind.PEER, encode_record(record), 0, record)
            for key, record in remembered.items()
        }
        return ChainMap(self.cache.full, extra)

    def status(self) -> dict[str, Any]:
        return self.core.status(self._clock())

    def lost_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for lost in self.core.lost():
            counts[str(lost.kind)] = counts.get(str(lost.kind), 0) + 1
        return counts
