"""`ListWatcher`: keeps a validated local copy of one cell's records in step with its meshapi.

List, then watch; after a broken stream, back off (`meshcore.backoff`: short first delays,
cut short by a probe when the peer comes back) and resume from the last revision; relist with
mark-and-sweep when the peer says the revision is gone, or when resuming keeps failing although
the peer answers (RESUME_FAILURE_LIMIT times in a row). `last_batch_at` (on the injected clock)
is when the stream last delivered anything: a stream that delivers is alive, heartbeat or not.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import structlog

from meshcore.backoff import BACKOFF, Probe, backoff_delay, backoff_sleep
from meshcore.errors import (
    LOST_CLASSES,
    ErrorClass,
    MeshApiError,
    PeerProtocolError,
    ResumeUnavailable,
)
from meshcore.model import Kind, Record, RecordError, decode_record, kind_of_key, kind_prefix
from meshcore.watch.change import Change
from meshcore.wire import pb

__all__ = ["BACKOFF", "RESUME_FAILURE_LIMIT", "Change", "ListWatcher", "WatchSource", "WatchState"]

log = structlog.get_logger("meshcore.watch")

RESUME_FAILURE_LIMIT = 3
"""Resumes in a row that the peer answered with an error (not a lost connection) before the
watcher gives up on its revision and relists, as if the peer had said the revision is gone."""
RESUME_FALLBACK_CLASSES = frozenset({ErrorClass.SERVER, ErrorClass.PROTOCOL})
"""Failures a relist may cure (not a lost connection, not a refused certificate or right)."""


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


@dataclass
class WatchStats:
    batches: int = 0
    events: int = 0
    listings: int = 0
    relists: int = 0
    resumes: int = 0
    resume_fallbacks: int = 0
    probe_wakeups: int = 0  # waits cut short because the peer was reachable again
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
        probe: Probe | None = None,
        clock: Callable[[], float] = time.monotonic,
        resume_failure_limit: int = RESUME_FAILURE_LIMIT,
    ) -> None:
        self._source = source
        self._kinds = tuple(kinds)
        self._on_change = on_change
        self._on_synced = on_synced
        self._validate = validate
        self._backoff = backoff
        self._probe = probe
        self._clock = clock
        self._resume_failure_limit = resume_failure_limit
        self.records: dict[str, Record] = {}
        self.revision = 0
        self.epoch = ""
        self.synced = asyncio.Event()
        self.state = WatchState.CONNECTING
        self.stats = WatchStats()
        self._stale: set[str] | None = None
        self._initial = True
        self._attempt = 0  # failures since the last synced batch (indexes the backoff)
        self._resume_failures = 0  # resumes in a row that the peer answered with an error
        self._received = False  # the current stream delivered a batch
        self._woke_in_vain = False  # a probe cut a wait short and no stream has worked since
        self.last_batch_at: float | None = None

    async def run(self) -> None:
        """Forever: stream; on failure back off and resume, or relist when the revision is gone."""
        while True:
            lost = False  # the peer could not be reached (a probe can tell when it is back)
            try:
                await self._stream_once()
            except ResumeUnavailable as e:
                self._note_error(e)
                log.info("Resume unavailable, relisting", error=str(e))
                self._relist()
                continue
            except MeshApiError as e:
                self._note_error(e)
                if self._resume_keeps_failing(e):
                    log.warning(
                        "Resume keeps failing, relisting",
                        error=str(e),
                        failures=self._resume_failures,
                    )
                    self.stats.resume_fallbacks += 1
                    self._relist()
                    continue
                lost = e.error_class in LOST_CLASSES
            self.state = WatchState.BACKOFF
            delay = backoff_delay(self._backoff, self._attempt)
            self._attempt += 1
            probe = self._probe if lost else None
            if await backoff_sleep(delay, probe=probe, seen_down=not self._woke_in_vain):
                # The peer is back: retry at once, and from the short delays again if that try
                # comes too early (a server still starting). Until a stream works again, only a
                # probe that fails and then succeeds counts as the peer coming back.
                log.info("Peer reachable again, reconnecting", after_failures=self._attempt)
                self.stats.probe_wakeups += 1
                self._attempt = 0
                self._woke_in_vain = True

    def _resume_keeps_failing(self, e: MeshApiError) -> bool:
        """Count a failed resume that the peer answered with an error a relist may cure and
        that delivered nothing; True once there were RESUME_FAILURE_LIMIT of them in a row."""
        if self._received or e.error_class not in RESUME_FALLBACK_CLASSES or self.revision == 0:
            return False
        self._resume_failures += 1
        return self._resume_failures >= self._resume_failure_limit

    def _relist(self) -> None:
        self.revision, self.epoch = 0, ""
        self._resume_failures = 0
        self.stats.relists += 1

    def _note_error(self, e: MeshApiError) -> None:
        self.stats.last_error = str(e)
        self.stats.last_error_class = str(e.error_class)

    async def _stream_once(self) -> None:
        self.state = WatchState.CONNECTING
        self._initial = True
        self._received = False
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
        self.last_batch_at = self._clock()
        self._received = True
        self._resume_failures = 0
        self._woke_in_vain = False
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
