"""The one module that talks to etcd (etcd3aio). Everything else sees `KvStore`, a narrow API.

Translates etcd3aio's types and errors at the edge: a compacted watch (which etcd3aio reports as a
canceled response and then waits forever) becomes `Compacted`; an unreachable etcd becomes
`StoreUnavailable`. Ranges are read in pages so a large cell never builds one huge response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import etcd3aio
import grpc

PAGE_SIZE = 2000
# A txn must stay below etcd's 1.5 MiB request limit and its default 128 operations per txn.
MAX_TXN_OPS = 128


class StoreError(Exception):
    """Base of the store errors."""


class StoreUnavailable(StoreError):
    """etcd could not be reached (retriable)."""


class Compacted(StoreError):
    """The requested revision is older than etcd's compaction point (relist)."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted; oldest available is {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """One change: `value` is None for a delete."""

    key: str
    value: bytes | None
    mod_revision: int


@dataclass(frozen=True, slots=True)
class StoreBatch:
    """Every event of one watch response and the revision the store has reached."""

    events: tuple[StoreEvent, ...]
    revision: int


def _range_end(prefix: str) -> bytes:
    return etcd3aio.prefix_range_end(prefix.encode())


class EtcdStore:
    """`KvStore` on a real etcd. Create, `await connect()`, use, `await close()`."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 5.0) -> None:
        self._endpoints = list(endpoints)
        self._timeout = timeout
        self._client: Any = None

    async def connect(self) -> None:
        self._client = etcd3aio.Etcd3Client(
            self._endpoints,
            watch_reconnect_backoff_seconds=0.1,
            watch_max_reconnect_backoff_seconds=2.0,
        )
        await self._client.connect()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def _c(self) -> Any:
        if self._client is None:
            raise StoreUnavailable("etcd client is not connected")
        return self._client

    async def current_revision(self) -> int:
        try:
            resp = await self._c.kv.get("cellmesh/", count_only=True, timeout=self._timeout)
        except (etcd3aio.EtcdError, grpc.aio.AioRpcError) as e:
            raise StoreUnavailable(f"etcd at {','.join(self._endpoints)}: {e}") from e
        return int(resp.header.revision)

    async def get(self, key: str) -> KeyValue | None:
        try:
            resp = await self._c.kv.get(key, timeout=self._timeout)
        except (etcd3aio.EtcdError, grpc.aio.AioRpcError) as e:
            raise StoreUnavailable(f"etcd get {key}: {e}") from e
        for kv in resp.kvs:
            return KeyValue(kv.key.decode(), bytes(kv.value), int(kv.mod_revision))
        return None

    async def list_prefix(self, prefix: str, *, revision: int = 0) -> tuple[list[KeyValue], int]:
        """Every key under prefix at `revision` (0: now), read in pages at one revision."""
        out: list[KeyValue] = []
        start = prefix.encode()
        end = _range_end(prefix)
        at = revision
        while True:
            try:
                resp = await self._c.kv.get(
                    start, end, revision=at, limit=PAGE_SIZE, timeout=self._timeout
                )
            except etcd3aio.EtcdError as e:
                if "compacted" in str(e):
                    raise Compacted(0) from e
                raise StoreUnavailable(f"etcd range {prefix}: {e}") from e
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.OUT_OF_RANGE:
                    raise Compacted(0) from e
                raise StoreUnavailable(f"etcd range {prefix}: {e.details()}") from e
            if at == 0:
                at = int(resp.header.revision)
            out.extend(
                KeyValue(kv.key.decode(), bytes(kv.value), int(kv.mod_revision)) for kv in resp.kvs
            )
            if not resp.more or not resp.kvs:
                return out, at
            start = resp.kvs[-1].key + b"\x00"

    async def watch_prefix(self, prefix: str, *, start_revision: int) -> AsyncIterator[StoreBatch]:
        """Changes under prefix from start_revision on; raises Compacted when that is gone."""
        try:
            stream = self._c.watch.watch(
                prefix, _range_end(prefix), start_revision=start_revision, progress_notify=True
            )
            async for resp in stream:
                if resp.compact_revision > 0 or resp.canceled:
                    raise Compacted(int(resp.compact_revision))
                if resp.created and not resp.events:
                    continue
                events = tuple(
                    StoreEvent(
                        ev.kv.key.decode(),
                        None if ev.type == 1 else bytes(ev.kv.value),
                        int(ev.kv.mod_revision),
                    )
                    for ev in resp.events
                )
                yield StoreBatch(events, int(resp.header.revision))
        except (etcd3aio.EtcdError, grpc.aio.AioRpcError) as e:
            raise StoreUnavailable(f"etcd watch {prefix}: {e}") from e

    async def write(
        self, *, puts: Sequence[tuple[str, bytes]] = (), deletes: Sequence[str] = ()
    ) -> int:
        """Apply puts and deletes in as few txns as the limits allow; returns the last revision.

        Puts and deletes of whole values are idempotent, so etcd3aio's unary retries are safe.
        """
        kv = self._c.kv
        ops = [kv.txn_op_put(k, v) for k, v in puts] + [kv.txn_op_delete(k) for k in deletes]
        revision = 0
        for i in range(0, len(ops), MAX_TXN_OPS):
            try:
                resp = await kv.txn([], ops[i : i + MAX_TXN_OPS], timeout=self._timeout)
            except (etcd3aio.EtcdError, grpc.aio.AioRpcError) as e:
                raise StoreUnavailable(f"etcd txn: {e}") from e
            revision = int(resp.header.revision)
        if not ops:
            revision = await self.current_revision()
        return revision

    async def put_if_absent(self, key: str, value: bytes) -> bytes:
        """Create key unless it exists; returns the value that is stored afterwards."""
        kv = self._c.kv
        try:
            resp = await kv.txn(
                [kv.txn_compare_create_revision(key, 0)],
                [kv.txn_op_put(key, value)],
                [kv.txn_op_get(key)],
                timeout=self._timeout,
            )
        except (etcd3aio.EtcdError, grpc.aio.AioRpcError) as e:
            raise StoreUnavailable(f"etcd txn {key}: {e}") from e
        if resp.succeeded:
            return value
        return bytes(resp.responses[0].response_range.kvs[0].value)

    async def compact(self, revision: int) -> None:
        try:
            await self._c.kv.compact(revision, physical=True, timeout=self._timeout)
        except (etcd3aio.EtcdError, grpc.aio.AioRpcError) as e:
            raise StoreUnavailable(f"etcd compact: {e}") from e
