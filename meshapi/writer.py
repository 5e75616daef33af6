"""Every write meshapi makes goes through one FIFO writer (Cilium's syncstore pattern).

Concurrent writes are drained together into batched txns. Within a batch the operations on one key
are coalesced in queue order (the last one wins), so a txn never names a key twice (etcd refuses
that) and a key's put-then-delete stays a delete. A kind's sync canary is queued behind every write
queued before it and lands in a txn of its own after them, so a watcher that sees the canary has
already seen every record the source meant to publish: a half-written cell can never shrink a
peer's backend set.

Failures: an unreachable etcd (`StoreUnavailable`) is retried with backoff, order kept. A batch
etcd refuses as such (`StoreRejected`) is split in halves until the write that causes it stands
alone; only that caller's future fails (`WriteRejected`), every other write lands. Records meshapi
itself owns (cell config) are re-asserted after the store was wiped; canaries are not: after a
wipe, `meshapi.resync` decides when each kind is complete again.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from meshapi.etcd_adapter import StoreRejected, StoreUnavailable
from meshcore.backoff import Backoff, sleep
from meshcore.model import Kind, SyncCanary, encode_record, synced_key

log = structlog.get_logger("meshapi.writer")

MAX_BATCH_OPS = 1000
# Below etcd's 1.5 MiB request limit with room for keys and framing; a single larger write still
# goes alone (and etcd may refuse it: then only its caller fails).
MAX_BATCH_BYTES = 1024 * 1024
RETRY_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
"""Waits between tries of a txn etcd could not take (the last repeats), without jitter: the
writer is the only one writing to its etcd."""


class WriteStore(Protocol):
    async def write(
        self, *, puts: Sequence[tuple[str, bytes]] = (), deletes: Sequence[str] = ()
    ) -> int: ...


class WriteRejected(StoreRejected):
    """etcd refused this write on its own (not a batch it travelled in); retrying cannot help."""


@dataclass
class _Op:
    """One caller's write: its key operations in order (value None: delete)."""

    changes: list[tuple[str, bytes | None]]
    done: asyncio.Future[int]
    canary: bool = False

    @property
    def size(self) -> int:
        return sum(len(k) + (len(v) if v is not None else 0) for k, v in self.changes)


@dataclass
class WriterStats:
    txns: int = 0
    ops: int = 0
    canaries: int = 0
    failures: int = 0  # unavailable: retried
    rejected_batches: int = 0  # refused batches that were split
    rejected_writes: int = 0  # writes failed for good (their caller was told)
    coalesced: int = 0  # key operations folded into a later one of the same batch
    synced_kinds: set[Kind] = field(default_factory=set)


def coalesce(ops: Sequence[_Op]) -> tuple[list[tuple[str, bytes]], list[str], int]:
    """The puts and deletes that leave etcd as applying `ops` in order would; each key once.
    Also returns how many key operations were folded into a later one."""
    last: dict[str, bytes | None] = {}
    total = 0
    for op in ops:
        for key, value in op.changes:
            total += 1
            last.pop(key, None)  # re-insert: keeps the order of the last operations
            last[key] = value
    puts = [(k, v) for k, v in last.items() if v is not None]
    deletes = [k for k, v in last.items() if v is None]
    return puts, deletes, total - len(last)


class RecordWriter:
    """FIFO, batched writer. `run()` must be running for writes to land."""

    def __init__(self, store: WriteStore, *, cell: str) -> None:
        self._store = store
        self._cell = cell
        self._pending: deque[_Op] = deque()
        self._wakeup = asyncio.Event()
        self._owned: dict[str, bytes] = {}
        self.stats = WriterStats()

    async def write(
        self, *, puts: Sequence[tuple[str, bytes]] = (), deletes: Sequence[str] = ()
    ) -> int:
        """Queue a write and wait until it has landed; returns its revision. Within one call
        the puts apply before the deletes. Raises `WriteRejected` when etcd refuses it."""
        return await self.submit(puts=puts, deletes=deletes)

    def submit(
        self, *, puts: Sequence[tuple[str, bytes]] = (), deletes: Sequence[str] = ()
    ) -> asyncio.Future[int]:
        """Queue a write without waiting (a source's bulk sync); the future gives its revision."""
        changes: list[tuple[str, bytes | None]] = [(k, v) for k, v in puts]
        changes.extend((k, None) for k in deletes)
        return self._enqueue(changes, canary=False)

    def _enqueue(
        self, changes: list[tuple[str, bytes | None]], *, canary: bool
    ) -> asyncio.Future[int]:
        op = _Op(changes, asyncio.get_running_loop().create_future(), canary)
        # Nobody may await a fire-and-forget write (heartbeat): retrieve its error so that
        # asyncio does not warn; the writer has logged it.
        op.done.add_done_callback(_consume_error)
        self._pending.append(op)
        self._wakeup.set()
        return op.done

    def own(self, key: str, value: bytes) -> asyncio.Future[int]:
        """Write a record meshapi owns; it is written again after a store reset."""
        self._owned[key] = value
        return self.submit(puts=[(key, value)])

    def owned(self, key: str) -> bytes | None:
        """The value of a record meshapi owns (also while it is being written again)."""
        return self._owned.get(key)

    def mark_synced(self, kind: Kind) -> asyncio.Future[int]:
        """Queue kind's canary behind every write queued so far."""
        key = synced_key(self._cell, kind)
        value = encode_record(SyncCanary(cell=self._cell, kind=kind, timestamp=time.time()))
        self.stats.synced_kinds.add(kind)
        return self._enqueue([(key, value)], canary=True)

    def reassert_owned(self) -> asyncio.Future[int]:
        """Write every owned record again (after the store was wiped). The canaries are gone
        with the store: they are written again only once their kinds are complete."""
        self.stats.synced_kinds.clear()
        return self.submit(puts=list(self._owned.items()))

    async def run(self) -> None:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._land(self._next_batch())

    def _next_batch(self) -> list[_Op]:
        """The oldest pending ops up to the batch limits; a canary always travels alone, after
        everything queued before it."""
        ops = [self._pending.popleft()]
        count, size = len(ops[0].changes), ops[0].size
        while (
            not ops[0].canary
            and self._pending
            and not self._pending[0].canary
            and count + len(self._pending[0].changes) <= MAX_BATCH_OPS
            and size + self._pending[0].size <= MAX_BATCH_BYTES
        ):
            op = self._pending.popleft()
            ops.append(op)
            count += len(op.changes)
            size += op.size
        return ops

    async def _land(self, ops: list[_Op]) -> None:
        """Land ops in order; a refused batch is split until the refused write stands alone."""
        try:
            revision = await self._write_retrying(ops)
        except StoreRejected as e:
            if len(ops) == 1:
                self._reject(ops[0], e)
                return
            self.stats.rejected_batches += 1
            half = len(ops) // 2
            log.warning("Batch refused by etcd, splitting it", error=str(e), writes=len(ops))
            await self._land(ops[:half])
            await self._land(ops[half:])
            return
        for op in ops:
            if op.canary:
                self.stats.canaries += 1
            if not op.done.done():
                op.done.set_result(revision)

    async def _write_retrying(self, ops: Sequence[_Op]) -> int:
        puts, deletes, folded = coalesce(ops)
        backoff = Backoff(RETRY_DELAYS, jitter=0.0)
        while True:
            try:
                revision = await self._store.write(puts=puts, deletes=deletes)
                break
            except StoreUnavailable as e:  # etcd away for now: retry, keep the order
                self.stats.failures += 1
                log.warning("Write failed, retrying", error=str(e), ops=len(puts) + len(deletes))
                await sleep(backoff.next_delay())
        self.stats.txns += 1
        self.stats.ops += len(puts) + len(deletes)
        self.stats.coalesced += folded
        return revision

    def _reject(self, op: _Op, e: StoreRejected) -> None:
        self.stats.rejected_writes += 1
        keys = [k for k, _ in op.changes]
        shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        log.error("Write refused by etcd, its caller is told", error=str(e), keys=shown)
        if op.canary:
            ((key, _),) = op.changes
            self.stats.synced_kinds.discard(Kind(key.rsplit("/", 1)[-1]))
        if not op.done.done():
            op.done.set_exception(WriteRejected(f"etcd refused the write of {shown}: {e}"))


def _consume_error(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled():
        fut.exception()
