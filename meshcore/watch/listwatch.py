"""`ListWatcher`: keeps a validated local copy of one cell's records in step with its meshapi."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import structlog

from meshcore.client import MeshApiError, PeerProtocolError, ResumeUnavailable
from meshcore.model import Kind, Record, RecordError, decode_record, kind_of_key, kind_prefix
from meshcore.wire import pb

log = structlog.get_logger("meshcore.watch")

# Backoff is data: delays in seconds, the last one repeats; jitter is added on top.
BACKOFF = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class WatchSource(Protocol):
    """The one method a ListWatcher needs from a meshapi client."""

    def watch(
        self, kinds: Iterable[Kind] = (), *, resume_revision: int = 0, resume_epoch: str = ""
    ) -> AsyncIterator[pb.WatchBatch]: ...


class WatchState(StrEnum):
    CONNECTING = "connecting"
    LISTING = "listing"
    WATCHING = "watching"
    BACKOFF = "backoff"


@dataclass(frozen=True, slots=True)
class Change:
    """A change of the local copy: `record` is None for a delete."""

    key: str
    kind: Kind
    record: Record | None
    revision: int


@dataclass
class WatchStats:
    batches: int = 0
    events: int = 0
    listings: int = 0
    relists: int = 0
    resumes: int = 0
    bad_records: Counter[str] = field(default_factory=Counter)
    last_error: str = ""
    last_error_class: str = ""


Validator = Callable[[str, Record], None]


class ListWatcher:
    """List, then watch; resume after a broken stream; relist with mark-and-sweep when told to."""

    def __init__(
        self,
        source: WatchSource,
        *,
        kinds: Iterable[Kind] = (),
        on_change: Callable[[Change], None] | None = None,
        on_synced: Callable[[], None] | None = None,
        validate: Validator | None = None,
        backoff: tuple[float, ...] = BACKOFF,
    ) -> None:
        self._source = source
        self._kinds = tuple(kinds)
        self._on_change = on_change
        self._on_synced = on_synced
        self._validate = validate
        self._backoff = backoff
        self.records: dict[str, Record] = {}
        self.revision = 0
        self.epoch = ""
        self.synced = asyncio.Event()
        self.state = WatchState.CONNECTING
        self.stats = WatchStats()
        self._stale: set[str] | None = None
        self._initial = True
        self._attempt = 0  # failures since the last synced batch (indexes the backoff)

    async def run(self) -> None:
        """Forever: stream; on failure back off and resume, or relist when the revision is gone."""
        while True:
            try:
                await self._stream_once()
            except ResumeUnavailable as e:
                self._note_error(e, "resume")
                log.info("Resume unavailable, relisting", error=str(e))
                self.revision, self.epoch = 0, ""
                self.stats.relists += 1
                continue
            except MeshApiError as e:
                self._note_error(e, e.code.lower() or "unavailable")
            self.state = WatchState.BACKOFF
            delay = self._backoff[min(self._attempt, len(self._backoff) - 1)]
            self._attempt += 1
            await asyncio.sleep(delay * (1 + random.random() / 2))

    def _note_error(self, e: Exception, cls: str) -> None:
        self.stats.last_error = str(e)
        self.stats.last_error_class = cls

    async def _stream_once(self) -> None:
        self.state = WatchState.CONNECTING
        self._initial = True
        listing = self.revision == 0
        if listing:
            self._stale = set(self.records)
            self.stats.listings += 1
        else:
            self.stats.resumes += 1
        async for batch in self._source.watch(
            self._kinds, resume_revision=self.revision, resume_epoch=self.epoch
        ):
            self.state = WatchState.LISTING if self._stale is not None else WatchState.WATCHING
            self._apply(batch)

    def _apply(self, batch: pb.WatchBatch) -> None:
        self.stats.batches += 1
        if batch.revision < 0:
            raise PeerProtocolError(f"negative revision {batch.revision}")
        for ev in batch.events:
            self.stats.events += 1
            if self._stale is not None:
                self._stale.discard(ev.key)
            if ev.type == pb.Event.DELETE:
                self._delete(ev.key, batch.revision)
            else:
                self._put(ev.key, ev.value, batch.revision)
        # The listing (or resume replay) counts only once complete: a stream broken half-way
        # must start that phase again, not resume from its middle.
        if not self._initial or batch.synced:
            self.revision = batch.revision
            self.epoch = batch.epoch
        if batch.synced:
            self._initial = False
            self._attempt = 0
            if self._stale is not None:
                # Canaries go first: a consumer that gates a kind's deletes on its canary sees
                # the canary vanish before any record of that kind does.
                synced = kind_prefix(Kind.SYNCED)
                for key in sorted(self._stale, key=lambda k: (not k.startswith(synced), k)):
                    self._delete(key, batch.revision)
                self._stale = None
            self.state = WatchState.WATCHING
            if not self.synced.is_set():
                self.synced.set()
                if self._on_synced is not None:
                    self._on_synced()

    def _put(self, key: str, value: bytes, revision: int) -> None:
        try:
            record = decode_record(key, value)
            if self._validate is not None:
                self._validate(key, record)
        except RecordError as e:
            self._count_bad(key, e.reason)
            return  # the key keeps its last good value
        if self.records.get(key) == record:
            return
        self.records[key] = record
        self._emit(Change(key, kind_of_key(key), record, revision))

    def _delete(self, key: str, revision: int) -> None:
        try:
            kind = kind_of_key(key)
        except RecordError as e:
            self._count_bad(key, e.reason)
            return
        if self.records.pop(key, None) is not None:
            self._emit(Change(key, kind, None, revision))

    def _count_bad(self, key: str, reason: str) -> None:
        try:
            label = str(kind_of_key(key))
        except RecordError:
            label = "unknown"
        self.stats.bad_records[label] += 1
        log.warning("Bad record dropped", key=key, reason=reason)

    def _emit(self, change: Change) -> None:
        if self._on_change is not None:
            self._on_change(change)
