"""The one module that talks to etcd (etcd3aio). Everything else sees `KvStore`, a narrow API.

Translates etcd3aio's types and errors at the edge: a compacted watch (which etcd3aio reports as a
canceled response and then waits forever) becomes `Compacted`; an unreachable etcd becomes
`StoreUnavailable`. Ranges are read in pages sized by bytes, not keys (a record may be up to
1 MiB), so a large cell never builds one huge response and one record always fits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import etcd3aio
import grpc

PAGE_SIZE = 2000
"""Most keys in one range page (small records)."""
FIRST_PAGE = 32
"""Keys in the first page, before the size of a key is known (32 of etcd's largest values fit)."""
PAGE_BYTES = 4 * 1024 * 1024
"""Target size of one range page: the next page's key limit follows the bytes per key so far."""
MAX_RECEIVE_BYTES = 64 * 1024 * 1024
"""The etcd client's receive limit (gRPC's default is 4 MiB): far above one page and above etcd's
largest value (its 1.5 MiB request limit), so a page shrunk to one key always fits."""
# A txn must stay below etcd's 1.5 MiB request limit and its default 128 operations per txn.
MAX_TXN_OPS = 128


class StoreError(Exception):
    """Base of the store errors."""


class StoreUnavailable(StoreError):
    """etcd could not be reached (retriable)."""


class StoreRejected(StoreError):
    """etcd refused the request itself (permanent: the same request fails again), e.g. a
    duplicate key in one txn or a request over etcd's size limit."""


# gRPC statuses with which etcd refuses a request as such; anything else may pass on a retry.
REJECTED_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


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

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        max_receive_bytes: int = MAX_RECEIVE_BYTES,
    ) -> None:
        self._endpoints = list(endpoints)
        self._timeout = timeout
        self._max_receive = max_receive_bytes
        self._page_bytes = min(PAGE_BYTES, max_receive_bytes // 4)
        self._client: Any = None

    async def connect(self) -> None:
        client = etcd3aio.Etcd3Client(
            self._endpoints,
            watch_reconnect_backoff_seconds=0.1,
            watch_max_reconnect_backoff_seconds=2.0,
        )
        # etcd3aio has no parameter for channel options; its connection manager holds the list
        # it passes to grpc.aio (receive limit: see MAX_RECEIVE_BYTES).
        client._manager.grpc_options.append(("grpc.max_receive_message_length", self._max_receive))
        self._client = client
        await client.connect()

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
        """Every key under prefix at `revision` (0: now), read in pages at one revision.

        A page asks for as many keys as fit PAGE_BYTES at the bytes per key seen so far (the
        first one for FIRST_PAGE keys); a page that still exceeds the receive limit
        (RESOURCE_EXHAUSTED) is asked again with half the keys, down to one key, which always
        fits (etcd's values stay below its 1.5 MiB request limit).
        """
        out: list[KeyValue] = []
        start = prefix.encode()
        end = _range_end(prefix)
        at = revision
        limit = FIRST_PAGE
        seen_bytes = seen_keys = 0
        while True:
            try:
                resp = await self._c.kv.get(
                    start, end, revision=at, limit=limit, timeout=self._timeout
                )
            except etcd3aio.EtcdError as e:
                if "compacted" in str(e):
                    raise Compacted(0) from e
                raise StoreUnavailable(f"etcd range {prefix}: {e}") from e
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.OUT_OF_RANGE:
                    raise Compacted(0) from e
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and limit > 1:
                    limit = max(1, limit // 2)
                    continue
                raise StoreUnavailable(f"etcd range {prefix}: {e.details()}") from e
            if at == 0:
                at = int(resp.header.revision)
            for kv in resp.kvs:
                value = bytes(kv.value)
                seen_bytes += len(kv.key) + len(value)
                out.append(KeyValue(kv.key.decode(), value, int(kv.mod_revision)))
            seen_keys += len(resp.kvs)
            if not resp.more or not resp.kvs:
                return out, at
            limit = max(1, min(PAGE_SIZE, self._page_bytes * seen_keys // max(seen_bytes, 1)))
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
            except grpc.aio.AioRpcError as e:
                if e.code() in REJECTED_CODES:
                    raise StoreRejected(f"etcd refused the txn: {e.details()}") from e
                raise StoreUnavailable(f"etcd txn: {e.details() or e.code().name}") from e
            except (etcd3aio.EtcdError, TimeoutError) as e:
                raise StoreUnavailable(f"etcd txn: {e or 'timed out'}") from e
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
