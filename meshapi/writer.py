"""Every write meshapi makes goes through one FIFO writer (Cilium's syncstore pattern).

Concurrent writes are drained together into batched txns. A kind's sync canary is queued behind
every write queued before it and lands in a txn of its own after them, so a watcher that sees the
canary has already seen every record the source meant to publish: a half-written cell can never
shrink a peer's backend set. Records meshapi itself owns (cell config, canaries) are re-asserted
after the store was wiped.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from meshapi.etcd_adapter import StoreError
from meshcore.model import Kind, SyncCanary, encode_record, synced_key

log = structlog.get_logger("meshapi.writer")

MAX_BATCH_OPS = 1000


class WriteStore(Protocol):
    async def write(
        self, *, puts: Sequence[tuple[str, bytes]] = (), deletes: Sequence[str] = ()
    ) -> int: ...


@dataclass
class _Op:
    puts: Sequence[tuple[str, bytes]]
    deletes: Sequence[str]
    done: asyncio.Future[int]
    canary: bool = False


@dataclass
class WriterStats:
    txns: int = 0
    ops: int = 0
    canaries: int = 0
    failures: int = 0
    synced_kinds: set[Kind] = field(default_factory=set)


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
        """Queue a write and wait until it has landed; returns its revision."""
        return await self.submit(puts=puts, deletes=deletes)

    def submit(
        self, *, puts: Sequence[tuple[str, bytes]] = (), deletes: Sequence[str] = ()
    ) -> asyncio.Future[int]:
        """Queue a write without waiting (a source's bulk sync); the future gives its revision."""
        return self._enqueue(puts, deletes, canary=False)

    def _enqueue(
        self, puts: Sequence[tuple[str, bytes]], deletes: Sequence[str], *, canary: bool
    ) -> asyncio.Future[int]:
        op = _Op(list(puts), list(deletes), asyncio.get_running_loop().create_future(), canary)
        self._pending.append(op)
        self._wakeup.set()
        return op.done

    def own(self, key: str, value: bytes) -> asyncio.Future[int]:
        """Write a record meshapi owns; it is written again after a store reset."""
        self._owned[key] = value
        return self.submit(puts=[(key, value)])

    def mark_synced(self, kind: Kind) -> asyncio.Future[int]:
        """Queue kind's canary behind every write queued so far."""
        key = synced_key(self._cell, kind)
        value = encode_record(SyncCanary(cell=self._cell, kind=kind, timestamp=time.time()))
        self._owned[key] = value
        self.stats.synced_kinds.add(kind)
        return self._enqueue([(key, value)], [], canary=True)

    def reassert_owned(self) -> asyncio.Future[int]:
        """Write every owned record again (after the store was wiped)."""
        return self.submit(puts=list(self._owned.items()))

    async def run(self) -> None:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._land(self._next_batch())

    def _next_batch(self) -> list[_Op]:
        """The oldest pending ops up to the batch limit; a canary always travels alone, after
        everything queued before it."""
        ops = [self._pending.popleft()]
        count = len(ops[0].puts) + len(ops[0].deletes)
        while (
            not ops[0].canary
            and self._pending
            and not self._pending[0].canary
            and count < MAX_BATCH_OPS
        ):
            op = self._pending.popleft()
            ops.append(op)
            count += len(op.puts) + len(op.deletes)
        return ops

    async def _land(self, ops: list[_Op]) -> None:
        puts = [p for op in ops for p in op.puts]
        deletes = [d for op in ops for d in op.deletes]
        delay = 0.1
        while True:
            try:
                revision = await self._store.write(puts=puts, deletes=deletes)
                break
            except StoreError as e:  # unavailable or rejected for now: retry, keep the order
                self.stats.failures += 1
                log.warning("Write failed, retrying", error=str(e), ops=len(puts) + len(deletes))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self.stats.txns += 1
        self.stats.ops += len(puts) + len(deletes)
        for op in ops:
            if op.canary:
                self.stats.canaries += 1
            if not op.done.done():
                op.done.set_result(revision)
