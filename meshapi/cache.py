"""The cell's watch cache: one etcd watch in, many gRPC watch streams out.

Flow: etcd list (revision S) -> validated full state -> views (full, export) -> batches with the
revision they reach -> bounded per-view history -> subscribers. A batch is serialized once per
(view, kinds) and the same bytes go to every watcher. Records that fail validation are counted,
logged once per key and skipped (the key keeps its last good value). When etcd compacts past the
cache, the cache relists and publishes the difference as ordinary events, so watchers never notice.

A watcher resumes from a revision: from the history when it still covers it, else by reading the
store at that revision and sending the difference of the two views; when neither can answer
(compacted, or another store epoch), `ResumeUnavailable` (`meshcore.errors`, the class the
client gets back) tells the client to relist. An unreachable etcd is retried with
`meshcore.backoff`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from meshapi.etcd_adapter import Compacted, KeyValue, StoreBatch, StoreUnavailable
from meshapi.views import Item, View, ViewEvent, ViewName, diff_views, view_of
from meshcore.backoff import Backoff, sleep
from meshcore.errors import ResumeUnavailable, Retriable
from meshcore.model import (
    PREFIX,
    Kind,
    RecordError,
    decode_record,
    endpoint_service_key,
    kind_of_key,
)
from meshcore.wire import pb

log = structlog.get_logger("meshapi.cache")

EPOCH_KEY = "cellmesh/meta/epoch"
LISTING_CHUNK = 1000
LISTING_CHUNK_BYTES = 4 * 1024 * 1024
"""A listing batch ends at LISTING_CHUNK events or once it holds this many bytes of keys and
values, whichever comes first (a record may be up to 1 MiB; an agent receives at most 64 MiB per
message). A batch always holds at least one event, so every record fits."""
SUBSCRIBER_QUEUE = 10_000
RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0)
"""Waits between tries to reach etcd (the last repeats), without jitter: one process, one etcd."""


class WatcherTooSlow(Retriable):
    """The watcher fell too far behind; it should resume from its last revision."""


class KvStore(Protocol):
    """What the cache needs from etcd."""

    async def list_prefix(
        self, prefix: str, *, revision: int = 0
    ) -> tuple[list[KeyValue], int]: ...
    def watch_prefix(self, prefix: str, *, start_revision: int) -> AsyncIterator[StoreBatch]: ...
    async def put_if_absent(self, key: str, value: bytes) -> bytes: ...
    async def get(self, key: str) -> KeyValue | None: ...


def encode_batch(events: Iterable[ViewEvent], *, revision: int, synced: bool, epoch: str) -> bytes:
    msg = pb.WatchBatch(revision=revision, synced=synced, epoch=epoch)
    for ev in events:
        if ev.item is None:
            msg.events.add(type=pb.Event.DELETE, key=ev.key)
        else:
            msg.events.add(
                type=pb.Event.PUT,
                key=ev.key,
                value=ev.item.value,
                mod_revision=ev.item.mod_revision,
            )
    return msg.SerializeToString()


def listing_chunks(events: Sequence[ViewEvent]) -> list[Sequence[ViewEvent]]:
    """Split a listing into batches bounded by LISTING_CHUNK events and LISTING_CHUNK_BYTES
    (at least one event each; one empty batch for an empty listing)."""
    chunks: list[Sequence[ViewEvent]] = []
    start = size = 0
    for i, ev in enumerate(events):
        weight = len(ev.key) + (len(ev.item.value) if ev.item is not None else 0)
        if i > start and (i - start >= LISTING_CHUNK or size + weight > LISTING_CHUNK_BYTES):
            chunks.append(events[start:i])
            start, size = i, 0
        size += weight
    chunks.append(events[start:])
    return chunks


@dataclass
class PublishedBatch:
    """One change of a view, with its serializations memoized per kinds filter."""

    revision: int
    events: tuple[ViewEvent, ...]
    epoch: str
    _encoded: dict[frozenset[Kind], tuple[bytes, int] | None] = field(default_factory=dict)

    def encoded(self, kinds: frozenset[Kind]) -> tuple[bytes, int] | None:
        """(bytes, event count) for watchers of `kinds`, None when nothing is for them.
        Serialized once, however many watchers receive it."""
        if kinds not in self._encoded:
            events = [ev for ev in self.events if ev.kind in kinds]
            self._encoded[kinds] = (
                (
                    encode_batch(events, revision=self.revision, synced=False, epoch=self.epoch),
                    len(events),
                )
                if events
                else None
            )
        return self._encoded[kinds]


@dataclass(eq=False)
class Subscription:
    view: ViewName
    kinds: frozenset[Kind]
    queue: asyncio.Queue[PublishedBatch | Exception] = field(
        default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE)
    )


@dataclass
class CacheStats:
    events_in: int = 0
    batches_published: int = 0
    relists: int = 0
    resumes_from_history: int = 0
    resumes_from_store: int = 0
    resumes_refused: int = 0
    slow_watchers_dropped: int = 0
    batches_sent: int = 0
    events_sent: int = 0
    bad_records: Counter[str] = field(default_factory=Counter)


class WatchCache:
    """Owns the in-memory state of a cell's records and fans changes out to watchers."""

    def __init__(self, store: KvStore, *, history_events: int = 100_000) -> None:
        self._store = store
        self._history_limit = history_events
        self.full: dict[str, Item] = {}
        self._endpoints_of: dict[str, set[str]] = {}
        self.views = {name: View(name) for name in ViewName}
        self._history: dict[ViewName, deque[PublishedBatch]] = {n: deque() for n in ViewName}
        self._history_count: dict[ViewName, int] = dict.fromkeys(ViewName, 0)
        self._history_start: dict[ViewName, int] = dict.fromkeys(ViewName, 0)
        self._subscribers: set[Subscription] = set()
        self.revision = 0
        self.epoch = ""
        self.synced = asyncio.Event()
        self.connected = False
        self.bad_keys: dict[str, str] = {}
        self.stats = CacheStats()
        self._watch_task: asyncio.Task[None] | None = None
        self.on_reset: list[Callable[[], object]] = []
        self.before_reset: dict[str, Item] = {}  # what the store held before its last wipe
        self._revision_waiters: list[tuple[int, asyncio.Future[None]]] = []

    # ---- feeding from etcd -------------------------------------------------------------

    async def run(self) -> None:
        """List, then watch forever; relist on compaction, retry with backoff on outages."""
        backoff = Backoff(RETRY_DELAYS, jitter=0.0)
        while True:
            try:
                await self._ensure_epoch()
                await self._relist()
                self.connected = True
                backoff.reset()
                self._watch_task = asyncio.create_task(self._watch())
                try:
                    await asyncio.wait({self._watch_task})
                finally:
                    self._watch_task.cancel()
                if not self._watch_task.cancelled():
                    self._watch_task.result()
            except Compacted as e:
                log.warning("Watch compacted, relisting", compact_revision=e.compact_revision)
            except StoreUnavailable as e:
                self.connected = False
                delay = backoff.next_delay()
                log.warning("Store unavailable, retrying", error=str(e), delay=delay)
                await sleep(delay)

    async def _watch(self) -> None:
        async for batch in self._store.watch_prefix(PREFIX, start_revision=self.revision + 1):
            self._ingest(batch)

    async def check_epoch(self) -> bool:
        """True when the store still holds our epoch. Otherwise the store was wiped: the watch is
        restarted, and `run` takes a new epoch, relists, and tells every watcher to relist."""
        kv = await self._store.get(EPOCH_KEY)
        if kv is not None and kv.value.decode() == self.epoch:
            return True
        if self._watch_task is not None:
            self._watch_task.cancel()
        return False

    async def _ensure_epoch(self) -> None:
        fresh = secrets.token_hex(8).encode()
        if not self.epoch:
            self.epoch = (await self._store.put_if_absent(EPOCH_KEY, fresh)).decode()
            return
        kv = await self._store.get(EPOCH_KEY)
        if kv is not None and kv.value.decode() == self.epoch:
            return
        new = (await self._store.put_if_absent(EPOCH_KEY, fresh)).decode()
        log.warning("Store was reset, new epoch", old_epoch=self.epoch, epoch=new)
        self.epoch = new
        self.before_reset = dict(self.full)  # for the on_reset callbacks (meshapi.recovery)
        for name in ViewName:
            self._history[name].clear()
            self._history_count[name] = 0
        await self._relist(force_revision=True)
        for name in ViewName:
            self._history_start[name] = self.revision
        for sub in list(self._subscribers):
            self._end(sub, ResumeUnavailable("store was reset"))
        for callback in self.on_reset:
            callback()

    async def _relist(self, *, force_revision: bool = False) -> None:
        kvs, revision = await self._store.list_prefix(PREFIX)
        self.stats.relists += 1
        seen: set[str] = set()
        changes: list[tuple[str, Item | None]] = []
        for kv in kvs:
            seen.add(kv.key)
            old = self.full.get(kv.key)
            if old is not None and old.value == kv.value:
                continue  # unchanged: no event, no re-validation
            item = self._decode(kv.key, kv.value, kv.mod_revision)
            if item is not None:
                changes.append((kv.key, item))
        changes.extend((key, None) for key in self.full.keys() - seen)
        first = not self.synced.is_set()
        self._apply(changes, revision, force_revision=force_revision)
        if first:
            for name in ViewName:
                self._history_start[name] = revision
            self.synced.set()
            log.info("Cache synced", revision=revision, records=len(self.full))

    def _ingest(self, batch: StoreBatch) -> None:
        changes: list[tuple[str, Item | None]] = []
        for ev in batch.events:
            self.stats.events_in += 1
            if ev.value is None:
                changes.append((ev.key, None))
                self.bad_keys.pop(ev.key, None)
            elif (item := self._decode(ev.key, ev.value, ev.mod_revision)) is not None:
                changes.append((ev.key, item))
        self._apply(changes, batch.revision)

    def _decode(self, key: str, value: bytes, mod_revision: int) -> Item | None:
        try:
            record = decode_record(key, value)
            kind = kind_of_key(key)
        except RecordError as e:
            try:
                label = str(kind_of_key(key))
            except RecordError:
                label = "unknown"
            self.stats.bad_records[label] += 1
            if self.bad_keys.get(key) != e.reason:
                log.warning("Bad record skipped", key=key, reason=e.reason)
            self.bad_keys[key] = e.reason
            return None
        self.bad_keys.pop(key, None)
        return Item(key, kind, value, mod_revision, record)

    def _apply(
        self,
        changes: Sequence[tuple[str, Item | None]],
        revision: int,
        *,
        force_revision: bool = False,
    ) -> None:
        out: dict[ViewName, list[ViewEvent]] = {name: [] for name in ViewName}
        for key, item in changes:
            kind = item.kind if item is not None else kind_of_key(key)
            if item is None:
                if self.full.pop(key, None) is None:
                    continue
            else:
                self.full[key] = item
            if kind is Kind.ENDPOINT:
                self._index_endpoint(key, present=item is not None)
            related = self._endpoints_of.get(key, ()) if kind is Kind.SERVICE else ()
            for name, view in self.views.items():
                out[name].extend(view.reconsider(key, self.full, related))
        if revision > self.revision or force_revision:
            self.revision = revision
            self._wake_revision_waiters()
        for name, events in out.items():
            if events:
                self._publish(name, PublishedBatch(revision, tuple(events), self.epoch))

    async def wait_revision(self, revision: int, *, timeout: float = 10.0) -> None:
        """Return once the cache has reached revision (read-your-writes for the admin API)."""
        if self.revision >= revision:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._revision_waiters.append((revision, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._revision_waiters = [(r, f) for r, f in self._revision_waiters if f is not fut]

    def _wake_revision_waiters(self) -> None:
        for revision, fut in self._revision_waiters:
            if revision <= self.revision and not fut.done():
                fut.set_result(None)

    def _index_endpoint(self, key: str, *, present: bool) -> None:
        service_key = endpoint_service_key(key)
        if present:
            self._endpoints_of.setdefault(service_key, set()).add(key)
        elif (keys := self._endpoints_of.get(service_key)) is not None:
            keys.discard(key)
            if not keys:
                del self._endpoints_of[service_key]

    def _publish(self, name: ViewName, batch: PublishedBatch) -> None:
        self.stats.batches_published += 1
        history = self._history[name]
        history.append(batch)
        self._history_count[name] += len(batch.events)
        while self._history_count[name] > self._history_limit and len(history) > 1:
            dropped = history.popleft()
            self._history_count[name] -= len(dropped.events)
            self._history_start[name] = dropped.revision
        for sub in list(self._subscribers):
            if sub.view is name:
                try:
                    sub.queue.put_nowait(batch)
                except asyncio.QueueFull:
                    self.stats.slow_watchers_dropped += 1
                    self._end(sub, WatcherTooSlow("watcher fell behind; resume"))

    def _end(self, sub: Subscription, reason: Exception) -> None:
        self._subscribers.discard(sub)
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(reason)

    # ---- serving watchers --------------------------------------------------------------

    async def stream(
        self,
        *,
        view: ViewName,
        kinds: frozenset[Kind],
        resume_revision: int = 0,
        resume_epoch: str = "",
    ) -> AsyncIterator[bytes]:
        """The serialized batches of one watch: listing (or resume), then live changes."""
        await self.synced.wait()
        sub = Subscription(view, kinds)
        self._subscribers.add(sub)  # from here on, every change is queued for this watcher
        try:
            at = self.revision
            initial = await self._initial_events(view, kinds, resume_revision, resume_epoch, at)
            chunks = listing_chunks(initial)
            for i, chunk in enumerate(chunks):
                self.stats.batches_sent += 1
                self.stats.events_sent += len(chunk)
                last = i == len(chunks) - 1
                yield encode_batch(chunk, revision=at, synced=last, epoch=self.epoch)
            while True:
                batch = await sub.queue.get()
                if isinstance(batch, Exception):
                    raise batch
                if batch.revision <= at:
                    continue
                encoded = batch.encoded(kinds)
                if encoded is not None:
                    self.stats.batches_sent += 1
                    self.stats.events_sent += encoded[1]
                    yield encoded[0]
        finally:
            self._subscribers.discard(sub)

    async def _initial_events(
        self, view: ViewName, kinds: frozenset[Kind], resume: int, epoch: str, at: int
    ) -> list[ViewEvent]:
        items = self.views[view].items
        if resume == 0:
            return [ViewEvent(k, it.kind, it) for k, it in items.items() if it.kind in kinds]
        if epoch != self.epoch or resume > at:
            self.stats.resumes_refused += 1
            raise ResumeUnavailable(
                f"revision {resume} of epoch {epoch or '?'} is not in this store "
                f"(epoch {self.epoch}, revision {at})"
            )
        if resume >= self._history_start[view]:
            self.stats.resumes_from_history += 1
            return [
                ev
                for batch in self._history[view]
                if batch.revision > resume
                for ev in batch.events
                if ev.kind in kinds
            ]
        snapshot = dict(items)
        try:
            kvs, _ = await self._store.list_prefix(PREFIX, revision=resume)
        except Compacted as e:
            self.stats.resumes_refused += 1
            raise ResumeUnavailable(f"revision {resume} was compacted") from e
        self.stats.resumes_from_store += 1
        old_full: dict[str, Item] = {}
        for kv in kvs:
            try:
                old_full[kv.key] = Item(
                    kv.key, kind_of_key(kv.key), kv.value, kv.mod_revision,
                    decode_record(kv.key, kv.value),
                )  # fmt: skip
            except RecordError:
                continue
        old = view_of(view, old_full)
        return [ev for ev in diff_views(old, snapshot) if ev.kind in kinds]
